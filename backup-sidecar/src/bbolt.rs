//! The etcd revision of a snapshot, read from its bbolt bytes as they stream past.
//!
//! etcd's snapshot stream carries no revision, and a separate read before or after would not be the
//! snapshot's own. The store's revision is the highest main revision among the `key` bucket's keys
//! (`8-byte main BE ‖ '_' ‖ 8-byte sub BE`, `t` appended for tombstones), or the `meta` bucket's
//! `finishedCompactRev` when a compaction removed the newest tombstone.
//!
//! bbolt's `WriteTo` writes the snapshot transaction's meta as page 0 and then copies the file while
//! writers go on, so pages that were already free may hold *newer* data by the time they are copied.
//! Only pages reachable from page 0's root count. So each page-aligned block is summarised by its
//! index (branch children, bucket roots, highest revision key) and the tree is walked at the end.
//! Garbage in stale blocks is tolerated: it is only ever reached if the tree points at it, and then it
//! is not garbage.

use std::collections::HashMap;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
/// Bytes of overflowed pages buffered at once; a larger page is left unparsed (an error if reachable).
const MAX_BUFFERED: usize = 64 << 20;

/// Why the revision could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    /// The stream did not start with a valid bbolt meta page.
    #[error("the snapshot does not start with a bbolt meta page")]
    NotBbolt,
    /// The tree points at a page the scanner could not read.
    #[error("page {0} of the snapshot could not be read (truncated or larger than the scanner buffers)")]
    UnreadablePage(u64),
    /// The `key` bucket is missing.
    #[error("the snapshot has no `key` bucket: not an etcd database")]
    NoKeyBucket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BucketRoot {
    Page(u64),
    Inline(Box<Node>),
}

/// What one page says that matters here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    children: Vec<u64>,
    buckets: Vec<(Vec<u8>, BucketRoot)>,
    max_revision: Option<u64>,
    finished_compact: Option<u64>,
    scheduled_compact: Option<u64>,
}

#[derive(Debug)]
struct Pending {
    index: u64,
    needed: usize,
    bytes: Vec<u8>,
}

/// Feed it the snapshot bytes in order; ask for the revision at the end.
#[derive(Debug, Default)]
pub struct RevisionScanner {
    page_size: usize,
    root: u64,
    high_water: u64,
    /// Bytes of the current, not yet complete block.
    block: Vec<u8>,
    next_index: u64,
    pending: Vec<Pending>,
    buffered: usize,
    index: PageIndex,
    not_bbolt: bool,
}

/// What the walk needs of every page, kept small because there is an entry per page: a bit for "seen
/// as a live branch or leaf", the highest revision of plain leaves in a dense vector, and full nodes
/// only for the few pages with children, buckets or the compaction mark. About 8 bytes per page (2 MiB
/// per GiB of 4 KiB pages) where a map of nodes took about 100.
#[derive(Debug, Default)]
struct PageIndex {
    seen: Vec<u64>,
    revisions: Vec<u64>,
    rich: HashMap<u64, Node>,
    count: usize,
}

/// A page as the walk sees it.
#[derive(Debug, Clone, Copy)]
enum PageRef<'a> {
    /// A leaf with only (possibly) revision keys.
    Plain(Option<u64>),
    /// Anything else.
    Rich(&'a Node),
}

impl PageIndex {
    fn insert(&mut self, id: u64, node: Node) {
        let Ok(i) = usize::try_from(id) else { return };
        if self.seen.len() <= i / 64 {
            self.seen.resize(i / 64 + 1, 0);
        }
        if self.seen[i / 64] & (1 << (i % 64)) == 0 {
            self.count += 1;
        }
        self.seen[i / 64] |= 1 << (i % 64);
        let plain = node.children.is_empty()
            && node.buckets.is_empty()
            && node.finished_compact.is_none()
            && node.scheduled_compact.is_none();
        if plain {
            if let Some(rev) = node.max_revision {
                if self.revisions.len() <= i {
                    self.revisions.resize(i + 1, 0);
                }
                // Revision 0 is never a key's revision, so it can stand for "none".
                self.revisions[i] = rev;
            }
            self.rich.remove(&id);
        } else {
            self.rich.insert(id, node);
        }
    }

    fn get(&self, id: u64) -> Option<PageRef<'_>> {
        let i = usize::try_from(id).ok()?;
        if self.seen.get(i / 64)? & (1 << (i % 64)) == 0 {
            return None;
        }
        Some(match self.rich.get(&id) {
            Some(n) => PageRef::Rich(n),
            None => PageRef::Plain(self.revisions.get(i).copied().filter(|r| *r != 0)),
        })
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The main revision of a `key` bucket key, if it has that shape.
fn revision_of_key(k: &[u8]) -> Option<u64> {
    let shaped = (k.len() == 17 || (k.len() == 18 && k[17] == b't')) && k[8] == b'_';
    shaped.then(|| u64::from_be_bytes(k[..8].try_into().unwrap_or_default()))
}

/// Parses a page image (header and elements) into a node; `None` when it is not a branch or leaf.
fn parse_page(page: &[u8]) -> Option<Node> {
    let flags = u16_at(page, 8)?;
    let count = usize::from(u16_at(page, 10)?);
    let mut node = Node::default();
    for i in 0..count {
        let e = PAGE_HEADER + i * ELEMENT;
        match flags {
            BRANCH => node.children.push(u64_at(page, e + 8)?),
            LEAF => {
                let eflags = u32_at(page, e)?;
                let pos = u32_at(page, e + 4)? as usize;
                let ksize = u32_at(page, e + 8)? as usize;
                let vsize = u32_at(page, e + 12)? as usize;
                let key = page.get(e + pos..e + pos + ksize)?;
                let value = page.get(e + pos + ksize..e + pos + ksize + vsize)?;
                if eflags & BUCKET_LEAF != 0 {
                    let root = u64_at(value, 0)?;
                    let bucket = if root == 0 {
                        BucketRoot::Inline(Box::new(parse_page(value.get(16..)?).unwrap_or_default()))
                    } else {
                        BucketRoot::Page(root)
                    };
                    node.buckets.push((key.to_vec(), bucket));
                } else if key == b"finishedCompactRev" {
                    node.finished_compact = revision_of_key(value);
                } else if key == b"scheduledCompactRev" {
                    node.scheduled_compact = revision_of_key(value);
                } else if let Some(rev) = revision_of_key(key) {
                    node.max_revision = Some(node.max_revision.map_or(rev, |m| m.max(rev)));
                }
            }
            _ => return None,
        }
    }
    Some(node)
}

impl RevisionScanner {
    /// A scanner expecting the first byte of a snapshot next.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes the next bytes of the snapshot. The sha256 trailer may be fed too: it is shorter than
    /// a page and never completes a block.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.page_size == 0 {
                // Page 0's header and meta tell the page size.
                let want = (PAGE_HEADER + 12).saturating_sub(self.block.len());
                let take = want.min(data.len());
                self.block.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.block.len() < PAGE_HEADER + 12 {
                    continue;
                }
                let ok = u32_at(&self.block, 16) == Some(MAGIC) && u16_at(&self.block, 8) == Some(META);
                let size = u32_at(&self.block, 24).unwrap_or(0) as usize;
                if !ok || !(512..=1 << 20).contains(&size) {
                    self.not_bbolt = true;
                    return;
                }
                self.page_size = size;
                continue;
            }
            let take = (self.page_size - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == self.page_size {
                let block = std::mem::take(&mut self.block);
                self.block.reserve(self.page_size);
                self.on_block(block);
            }
        }
    }

    fn on_block(&mut self, block: Vec<u8>) {
        let index = self.next_index;
        self.next_index += 1;
        if index == 0 {
            self.root = u64_at(&block, 32).unwrap_or(0);
            self.high_water = u64_at(&block, 56).unwrap_or(0);
        }
        // Continue the overflowed pages that are waiting for this block.
        let mut done = Vec::new();
        for (i, p) in self.pending.iter_mut().enumerate() {
            p.bytes.extend_from_slice(&block);
            if p.bytes.len() >= p.needed {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let p = self.pending.swap_remove(i);
            self.buffered -= p.needed;
            if let Some(node) = parse_page(&p.bytes) {
                self.index.insert(p.index, node);
            }
        }
        // This block as a page of its own. Its id must be its index, or it is not a live page.
        if index < 2 || u64_at(&block, 0) != Some(index) {
            return;
        }
        let flags = u16_at(&block, 8).unwrap_or(0);
        if flags != BRANCH && flags != LEAF {
            return;
        }
        let overflow = u32_at(&block, 12).unwrap_or(0) as usize;
        if overflow == 0 {
            if let Some(node) = parse_page(&block) {
                self.index.insert(index, node);
            }
            return;
        }
        let needed = (overflow + 1).saturating_mul(self.page_size);
        if self.buffered + needed > MAX_BUFFERED {
            // Left out: if the tree reaches it, `revision` reports it as unreadable.
            return;
        }
        self.buffered += needed;
        self.pending.push(Pending {
            index,
            needed,
            bytes: block,
        });
    }

    fn page(&self, id: u64) -> Result<PageRef<'_>, RevisionError> {
        self.index.get(id).ok_or(RevisionError::UnreadablePage(id))
    }

    /// Every leaf of the tree rooted at `root`, depth first.
    fn leaves<'a>(&'a self, root: &'a BucketRoot) -> Result<Vec<PageRef<'a>>, RevisionError> {
        let mut out = Vec::new();
        let mut stack = vec![match root {
            BucketRoot::Inline(n) => PageRef::Rich(n.as_ref()),
            BucketRoot::Page(id) => self.page(*id)?,
        }];
        let mut guard = 0usize;
        while let Some(p) = stack.pop() {
            guard += 1;
            if guard > self.index.count + 1 {
                // A cycle can only come from a corrupt file.
                return Err(RevisionError::UnreadablePage(0));
            }
            match p {
                PageRef::Rich(n) if !n.children.is_empty() => {
                    for c in &n.children {
                        stack.push(self.page(*c)?);
                    }
                }
                leaf => out.push(leaf),
            }
        }
        Ok(out)
    }

    /// The snapshot's revision, once every byte has been fed.
    pub fn revision(&self) -> Result<u64, RevisionError> {
        self.revisions().map(|r| r.revision)
    }

    /// The snapshot's revision and compaction marks, once every byte has been fed.
    pub fn revisions(&self) -> Result<SnapshotRevisions, RevisionError> {
        if self.not_bbolt || self.page_size == 0 || self.next_index == 0 {
            return Err(RevisionError::NotBbolt);
        }
        if self.next_index < self.high_water {
            return Err(RevisionError::UnreadablePage(self.next_index));
        }
        let top = BucketRoot::Page(self.root);
        let mut key_bucket = None;
        let mut meta_bucket = None;
        for leaf in self.leaves(&top)? {
            let PageRef::Rich(leaf) = leaf else { continue };
            for (name, root) in &leaf.buckets {
                match name.as_slice() {
                    b"key" => key_bucket = Some(root),
                    b"meta" => meta_bucket = Some(root),
                    _ => {}
                }
            }
        }
        let key_bucket = key_bucket.ok_or(RevisionError::NoKeyBucket)?;
        let from_keys = self
            .leaves(key_bucket)?
            .iter()
            .filter_map(|p| match p {
                PageRef::Plain(rev) => *rev,
                PageRef::Rich(n) => n.max_revision,
            })
            .max();
        let meta: Vec<&Node> = match meta_bucket {
            Some(m) => self
                .leaves(m)?
                .into_iter()
                .filter_map(|p| match p {
                    PageRef::Plain(_) => None,
                    PageRef::Rich(n) => Some(n),
                })
                .collect(),
            None => Vec::new(),
        };
        let finished = meta.iter().filter_map(|n| n.finished_compact).max();
        let scheduled = meta.iter().filter_map(|n| n.scheduled_compact).max();
        Ok(SnapshotRevisions {
            // An empty store has no revision key; `etcdutl snapshot status` reports 0 for it, and so
            // do we.
            revision: from_keys.max(finished).unwrap_or(0),
            finished_compact: finished.unwrap_or(0),
            scheduled_compact: scheduled.unwrap_or(0),
        })
    }
}

/// What a snapshot says about its revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRevisions {
    /// The store's revision.
    pub revision: u64,
    /// The last compaction that finished (`finishedCompactRev`), 0 for none.
    pub finished_compact: u64,
    /// The last compaction scheduled (`scheduledCompactRev`), 0 for none. Above `finished_compact`
    /// when the snapshot was taken mid-compaction: etcd started on it finishes that compaction.
    pub scheduled_compact: u64,
}

impl SnapshotRevisions {
    /// The compaction revision etcd started on this snapshot works with: a scheduled compaction
    /// that had not finished is resumed at start.
    pub fn effective_compact(&self) -> u64 {
        self.finished_compact.max(self.scheduled_compact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_have_one_shape() {
        let mut k = 42u64.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend(0u64.to_be_bytes());
        assert_eq!(revision_of_key(&k), Some(42));
        k.push(b't');
        assert_eq!(revision_of_key(&k), Some(42));
        assert_eq!(revision_of_key(b"consistent_index"), None);
        assert_eq!(revision_of_key(b"abcdefgh-ijklmnop"), None);
    }

    #[test]
    fn the_page_index_keeps_plain_leaves_small_and_rich_pages_whole() {
        let mut idx = PageIndex::default();
        idx.insert(
            70,
            Node {
                max_revision: Some(9),
                ..Node::default()
            },
        );
        idx.insert(3, Node::default());
        let branch = Node {
            children: vec![3, 70],
            ..Node::default()
        };
        idx.insert(200, branch.clone());
        assert!(matches!(idx.get(70), Some(PageRef::Plain(Some(9)))));
        assert!(matches!(idx.get(3), Some(PageRef::Plain(None))));
        assert!(matches!(idx.get(200), Some(PageRef::Rich(n)) if *n == branch));
        assert!(
            idx.get(4).is_none() && idx.get(10_000).is_none(),
            "unseen pages are unreadable"
        );
        assert_eq!((idx.count, idx.rich.len()), (3, 1));
    }

    #[test]
    fn garbage_is_not_bbolt() {
        let mut s = RevisionScanner::new();
        s.feed(&[0u8; 8192]);
        assert_eq!(s.revision(), Err(RevisionError::NotBbolt));
    }

    #[test]
    fn nothing_fed_is_an_error() {
        assert_eq!(RevisionScanner::new().revision(), Err(RevisionError::NotBbolt));
    }
}
