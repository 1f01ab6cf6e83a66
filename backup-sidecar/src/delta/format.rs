//! The body of a delta chunk: the events of whole, consecutive revisions, and the leases their
//! puts name, in a small binary layout with a SHA-256 of everything before it, compressed with
//! zstd (with its frame checksum). A chunk that does not decode, whose checksum differs, whose
//! revisions are not consecutive or differ from its name's is refused as damaged: replay never
//! applies a part of one.

use sha2::{Digest, Sha256};

use ouroboros_crds::delta::ChunkName;

const MAGIC: &[u8; 8] = b"ODELTA01";
/// A decoded chunk larger than this is refused (the writer bounds chunks far below it).
const MAX_DECODED: usize = 1 << 30;

/// Why a chunk body was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// zstd failed.
    #[error("decompressing delta chunk {name}: {source}")]
    Decompress {
        /// Object name.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The layout or a check is wrong.
    #[error("delta chunk {name} is damaged: {why}")]
    Damaged {
        /// Object name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// zstd failed to compress (out of memory).
    #[error("compressing a delta chunk: {0}")]
    Compress(std::io::Error),
}

/// A put or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// One event, with the key-value as etcd reported it (a delete carries the key and its revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
    /// The lease of a put (0 for none).
    pub lease: i64,
    /// The key's create revision (0 for a delete).
    pub create_revision: i64,
    /// The key's version after the event (0 for a delete).
    pub version: i64,
}

/// Every event of one revision (one etcd transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// The revision.
    pub revision: u64,
    /// When the sidecar received it (Unix milliseconds): etcd does not record commit times, and
    /// a watching follower hears of a commit within a heartbeat or so.
    pub seen_ms: i64,
    /// The events, in etcd's order.
    pub events: Vec<Event>,
}

/// A lease that a put of this chunk names, with the TTL it was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Lease ID.
    pub id: i64,
    /// Granted TTL in seconds (0 when the lease was already gone when the sidecar asked: its
    /// keys' deletions follow in the chain).
    pub granted_ttl: i64,
}

/// A chunk's content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// Leases named by puts, each once.
    pub leases: Vec<Lease>,
    /// Consecutive revisions.
    pub revisions: Vec<Revision>,
}

impl Chunk {
    /// The name of this chunk in the chain of `backup`, or `None` when it holds no revision.
    pub fn name(&self, backup: &str) -> Option<ChunkName> {
        Some(ChunkName {
            backup: backup.to_owned(),
            first: self.revisions.first()?.revision,
            last: self.revisions.last()?.revision,
        })
    }

    /// The compressed body.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, self.leases.len());
        for l in &self.leases {
            out.extend_from_slice(&l.id.to_be_bytes());
            out.extend_from_slice(&l.granted_ttl.to_be_bytes());
        }
        put_u32(&mut out, self.revisions.len());
        for r in &self.revisions {
            out.extend_from_slice(&r.revision.to_be_bytes());
            out.extend_from_slice(&r.seen_ms.to_be_bytes());
            put_u32(&mut out, r.events.len());
            for e in &r.events {
                out.push(match e.kind {
                    EventKind::Put => 0,
                    EventKind::Delete => 1,
                });
                put_bytes(&mut out, &e.key);
                put_bytes(&mut out, &e.value);
                for n in [e.lease, e.create_revision, e.version] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
            }
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        let mut z = zstd::bulk::Compressor::new(3).map_err(FormatError::Compress)?;
        z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
            .map_err(FormatError::Compress)?;
        z.compress(&out).map_err(FormatError::Compress)
    }

    /// How many bytes [`Chunk::encode`] writes before compression: what bounds a chunk.
    pub fn encoded_len(&self) -> usize {
        let leases = self.leases.len() * LEASE_LEN;
        let revisions: usize = self.revisions.iter().map(revision_len).sum();
        MAGIC.len() + 8 + leases + revisions + 32
    }

    /// Reads the body of the object `name`, checking it against the name.
    pub fn decode(name: &ChunkName, body: &[u8]) -> Result<Chunk, FormatError> {
        let object = name.object();
        let raw = zstd::bulk::decompress(body, MAX_DECODED).map_err(|source| FormatError::Decompress {
            name: object.clone(),
            source,
        })?;
        let damaged = |why: String| FormatError::Damaged {
            name: object.clone(),
            why,
        };
        let (content, sum) = raw
            .split_at_checked(raw.len().saturating_sub(32))
            .filter(|(c, _)| c.len() >= MAGIC.len())
            .ok_or_else(|| damaged("shorter than its header".into()))?;
        if Sha256::digest(content).as_slice() != sum {
            return Err(damaged("its SHA-256 does not match its content".into()));
        }
        let chunk = parse(content).ok_or_else(|| damaged("its layout is cut short or unknown".into()))?;
        let revisions: Vec<u64> = chunk.revisions.iter().map(|r| r.revision).collect();
        if revisions.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(damaged("its revisions are not consecutive".into()));
        }
        if chunk.revisions.iter().any(|r| r.events.is_empty()) {
            return Err(damaged("a revision holds no event".into()));
        }
        if revisions.first() != Some(&name.first) || revisions.last() != Some(&name.last) {
            return Err(damaged(format!(
                "it holds revisions {:?}..={:?}, its name says {}..={}",
                revisions.first(),
                revisions.last(),
                name.first,
                name.last
            )));
        }
        Ok(chunk)
    }
}

/// The encoded size of a lease.
pub const LEASE_LEN: usize = 16;
/// The encoded size of a revision without its events.
pub const REVISION_HEADER_LEN: usize = 20;

/// The encoded size of one event.
pub fn event_len(e: &Event) -> usize {
    1 + 8 + e.key.len() + e.value.len() + 24
}

/// The encoded size of one revision.
pub fn revision_len(r: &Revision) -> usize {
    REVISION_HEADER_LEN + r.events.iter().map(event_len).sum::<usize>()
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

/// A cursor over the decompressed content; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()?;
        Some(self.take(n)?.to_vec())
    }
}

fn parse(content: &[u8]) -> Option<Chunk> {
    let mut r = Reader(content);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    // Counts are checked against what is left, so a damaged count cannot make a huge allocation.
    let n = r.u32()?;
    let mut leases = Vec::with_capacity(n.min(r.0.len() / 16));
    for _ in 0..n {
        leases.push(Lease {
            id: r.i64()?,
            granted_ttl: r.i64()?,
        });
    }
    let n = r.u32()?;
    let mut revisions = Vec::with_capacity(n.min(r.0.len() / 20));
    for _ in 0..n {
        let revision = u64::try_from(r.i64()?).ok()?;
        let seen_ms = r.i64()?;
        let m = r.u32()?;
        let mut events = Vec::with_capacity(m.min(r.0.len() / 33));
        for _ in 0..m {
            let kind = match r.take(1)? {
                [0] => EventKind::Put,
                [1] => EventKind::Delete,
                _ => return None,
            };
            events.push(Event {
                kind,
                key: r.bytes()?,
                value: r.bytes()?,
                lease: r.i64()?,
                create_revision: r.i64()?,
                version: r.i64()?,
            });
        }
        revisions.push(Revision {
            revision,
            seen_ms,
            events,
        });
    }
    r.0.is_empty().then_some(Chunk { leases, revisions })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put(key: &str, value: &str, lease: i64) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.into(),
            value: value.into(),
            lease,
            create_revision: 5,
            version: 2,
        }
    }

    fn sample() -> Chunk {
        let delete = Event {
            kind: EventKind::Delete,
            key: b"gone".to_vec(),
            value: vec![],
            lease: 0,
            create_revision: 0,
            version: 0,
        };
        Chunk {
            leases: vec![Lease {
                id: 0x7a3b,
                granted_ttl: 3600,
            }],
            revisions: vec![
                Revision {
                    revision: 41,
                    seen_ms: 1_700_000_000_000,
                    events: vec![put("a", "1", 0), put("b", "", 0x7a3b)],
                },
                Revision {
                    revision: 42,
                    seen_ms: 1_700_000_000_100,
                    events: vec![delete],
                },
            ],
        }
    }

    #[test]
    fn a_chunk_reads_back_as_written() {
        let chunk = sample();
        let name = chunk.name("base").unwrap();
        assert_eq!((name.first, name.last), (41, 42));
        let body = chunk.encode().unwrap();
        assert_eq!(Chunk::decode(&name, &body).unwrap(), chunk);
        assert!(chunk.encoded_len() >= 8 + 8 + 16 + 2 * 20 + 32);
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let chunk = sample();
        let name = chunk.name("base").unwrap();
        let body = chunk.encode().unwrap();
        for i in 0..body.len() {
            let mut bad = body.clone();
            bad[i] ^= 0x40;
            assert!(Chunk::decode(&name, &bad).is_err(), "a flipped byte {i} passed");
        }
        assert!(Chunk::decode(&name, &body[..body.len() - 1]).is_err());
        // A body under another chunk's name.
        let other = ChunkName { last: 43, ..name };
        assert!(matches!(
            Chunk::decode(&other, &body),
            Err(FormatError::Damaged { .. })
        ));
    }

    #[test]
    fn revisions_must_be_consecutive_and_hold_events() {
        let mut holed = sample();
        holed.revisions[1].revision = 43;
        let name = holed.name("base").unwrap();
        let e = Chunk::decode(&name, &holed.encode().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not consecutive"), "{e}");
        let mut empty = sample();
        empty.revisions[1].events.clear();
        let name = empty.name("base").unwrap();
        let e = Chunk::decode(&name, &empty.encode().unwrap()).unwrap_err();
        assert!(e.to_string().contains("no event"), "{e}");
    }
}
