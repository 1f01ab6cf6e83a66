//! Continuous backups (#23): how a chain of delta chunks is named in the store, and which chunks
//! take a full backup to a chosen revision. One home for both, because the operator (planning a
//! restore, retention) and the sidecar (writing and replaying chunks) must agree on them.
//!
//! A chunk holds the events of whole revisions `first..=last` that followed the full backup
//! `backup`, and is written in one request, so it is complete or absent. Every revision of etcd
//! holds at least one event (a write that changes nothing does not advance the revision), so a
//! chain whose revisions run without a hole from the backup's revision + 1 is provably complete,
//! and any hole is data that was never backed up.

/// Prefix of every chunk object.
pub const CHUNK_PREFIX: &str = "delta-";
/// Suffix of every chunk object (the body is zstd-compressed).
pub const CHUNK_SUFFIX: &str = ".zst";

/// A chunk's object name, parsed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkName {
    /// The full backup (EtcdBackup name) the chain extends.
    pub backup: String,
    /// Its first revision.
    pub first: u64,
    /// Its last revision (`>= first`).
    pub last: u64,
}

impl ChunkName {
    /// The object name: `delta-<backup>-<first>-<last>.zst`, revisions zero-padded to 20 digits
    /// so that names sort in revision order.
    pub fn object(&self) -> String {
        format!(
            "{CHUNK_PREFIX}{}-{:020}-{:020}{CHUNK_SUFFIX}",
            self.backup, self.first, self.last
        )
    }

    /// Reads an object name written by [`ChunkName::object`]; anything else is `None`.
    pub fn parse(name: &str) -> Option<ChunkName> {
        let rest = name.strip_prefix(CHUNK_PREFIX)?.strip_suffix(CHUNK_SUFFIX)?;
        let (rest, last) = rest.rsplit_once('-')?;
        let (backup, first) = rest.rsplit_once('-')?;
        let revision = |s: &str| (s.len() == 20).then(|| s.parse::<u64>().ok()).flatten();
        let (first, last) = (revision(first)?, revision(last)?);
        (!backup.is_empty() && first <= last).then(|| ChunkName {
            backup: backup.to_owned(),
            first,
            last,
        })
    }
}

/// Why a chain cannot take its backup to the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Revisions between two stored chunks are in none of them.
    #[error(
        "the delta chain of backup {backup} misses revisions {from}..={to}: no stored chunk holds them, \
         so nothing at or after revision {from} can be restored from this chain"
    )]
    Gap {
        /// The backup.
        backup: String,
        /// First missing revision.
        from: u64,
        /// Last missing revision.
        to: u64,
    },
    /// The target is older than the full backup: another (older) backup is what reaches it.
    #[error(
        "revision {target} is before backup {backup} (revision {base}): restore an older backup to reach it"
    )]
    BeforeBase {
        /// The backup.
        backup: String,
        /// Its revision.
        base: u64,
        /// The revision asked for.
        target: u64,
    },
    /// The chain stops before the target.
    #[error(
        "the delta chain of backup {backup} reaches revision {end}, not the target {target}: later \
         revisions were never backed up"
    )]
    Short {
        /// The backup.
        backup: String,
        /// The chain's last revision.
        end: u64,
        /// The revision asked for.
        target: u64,
    },
}

/// The chunks to replay, in order, and the revision they reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Chunks in replay order; the last one may go past `end` (replay stops at `end`).
    pub chunks: Vec<ChunkName>,
    /// The revision the replay reaches: the target, or the chain's end.
    pub end: u64,
}

/// The revision a chain continues from a full backup at `revision`. A snapshot of a store nobody
/// wrote to reads 0 (no key holds a revision; `etcdutl snapshot status` says 0 too), but etcd is
/// then at revision 1, which no event ever carries: its first change is revision 2.
pub fn effective_base(revision: u64) -> u64 {
    revision.max(1)
}

/// Walks the chain of `backup` (taken at `base_revision`) through `stored` (chunk names of any
/// backup; the others are ignored) up to `target`, or to the chain's end without one.
///
/// At each step the next revision must be the first of a chunk, or inside one (a chunk rewritten
/// with other bounds after a restart overlaps the old one: replay skips what it already applied).
/// A hole is refused whether or not later chunks exist above it: with no target, a hole followed
/// by more chunks means the end of the chain is not reachable, which must not pass for "the end".
pub fn chain_to(
    backup: &str,
    base_revision: u64,
    stored: &[ChunkName],
    target: Option<u64>,
) -> Result<Chain, ChainError> {
    let base_revision = effective_base(base_revision);
    if let Some(target) = target.filter(|&t| t < base_revision) {
        return Err(ChainError::BeforeBase {
            backup: backup.to_owned(),
            base: base_revision,
            target,
        });
    }
    let mut mine: Vec<&ChunkName> = stored.iter().filter(|c| c.backup == backup).collect();
    mine.sort();
    let mut next = base_revision + 1;
    let mut chunks = Vec::new();
    let done = |next: u64| target.is_some_and(|t| next > t);
    while !done(next) {
        // The chunk reaching furthest among those that hold `next`.
        let Some(chunk) = mine
            .iter()
            .filter(|c| c.first <= next && next <= c.last)
            .max_by_key(|c| c.last)
        else {
            let later = mine.iter().map(|c| c.first).filter(|&f| f > next).min();
            return match (later, target) {
                (Some(first), _) => Err(ChainError::Gap {
                    backup: backup.to_owned(),
                    from: next,
                    to: first - 1,
                }),
                (None, Some(target)) => Err(ChainError::Short {
                    backup: backup.to_owned(),
                    end: next - 1,
                    target,
                }),
                (None, None) => Ok(Chain {
                    chunks,
                    end: next - 1,
                }),
            };
        };
        chunks.push((*chunk).clone());
        next = chunk.last + 1;
    }
    Ok(Chain {
        end: target.unwrap_or(next - 1),
        chunks,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(backup: &str, first: u64, last: u64) -> ChunkName {
        ChunkName {
            backup: backup.into(),
            first,
            last,
        }
    }

    #[test]
    fn names_round_trip_and_sort_by_revision() {
        let a = c("nightly-2", 9, 120);
        assert_eq!(
            a.object(),
            "delta-nightly-2-00000000000000000009-00000000000000000120.zst"
        );
        assert_eq!(ChunkName::parse(&a.object()), Some(a.clone()));
        let b = c("nightly-2", 121, 1000);
        assert!(a.object() < b.object());
        for bad in [
            "delta-x-1-2.zst",
            "delta--00000000000000000001-00000000000000000002.zst",
            "delta-x-00000000000000000003-00000000000000000002.zst",
            "delta-x-00000000000000000001-00000000000000000002.tar.gz",
            "20261206T233612Z-r00000000000000000130-manual-1.manifest.json",
        ] {
            assert_eq!(ChunkName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_contiguous_chain_reaches_its_end_or_the_target() {
        let stored = [c("b", 11, 20), c("b", 21, 21), c("b", 22, 40), c("other", 41, 50)];
        let all = chain_to("b", 10, &stored, None).unwrap();
        assert_eq!((all.chunks.len(), all.end), (3, 40));
        let to = chain_to("b", 10, &stored, Some(21)).unwrap();
        assert_eq!(to.chunks, vec![c("b", 11, 20), c("b", 21, 21)]);
        assert_eq!(to.end, 21);
        // Inside a chunk: it is replayed up to the target only.
        let mid = chain_to("b", 10, &stored, Some(30)).unwrap();
        assert_eq!((mid.chunks.last().unwrap(), mid.end), (&c("b", 22, 40), 30));
        // The base itself: nothing to replay.
        assert_eq!(chain_to("b", 10, &stored, Some(10)).unwrap().chunks, vec![]);
        // No chunks yet: the chain ends at the backup.
        assert_eq!(chain_to("b", 10, &[], None).unwrap().end, 10);
    }

    #[test]
    fn a_missing_chunk_is_a_gap_below_any_target_and_before_the_end() {
        let stored = [c("b", 11, 20), c("b", 31, 40)];
        let gap = ChainError::Gap {
            backup: "b".into(),
            from: 21,
            to: 30,
        };
        assert_eq!(chain_to("b", 10, &stored, None), Err(gap.clone()));
        assert_eq!(chain_to("b", 10, &stored, Some(35)), Err(gap));
        // Below the hole the chain is whole.
        assert_eq!(chain_to("b", 10, &stored, Some(20)).unwrap().end, 20);
        // A chain whose first chunk is missing.
        assert!(matches!(
            chain_to("b", 10, &stored[1..], None),
            Err(ChainError::Gap { from: 11, to: 30, .. })
        ));
        assert!(gap_message_names_the_range(
            &chain_to("b", 10, &stored, None).unwrap_err()
        ));
    }

    fn gap_message_names_the_range(e: &ChainError) -> bool {
        e.to_string().contains("21..=30")
    }

    #[test]
    fn a_target_before_the_backup_is_refused() {
        assert!(matches!(
            chain_to("b", 10, &[c("b", 11, 20)], Some(9)),
            Err(ChainError::BeforeBase {
                base: 10,
                target: 9,
                ..
            })
        ));
    }

    #[test]
    fn a_target_past_the_end_is_refused() {
        let stored = [c("b", 11, 20)];
        assert_eq!(
            chain_to("b", 10, &stored, Some(25)),
            Err(ChainError::Short {
                backup: "b".into(),
                end: 20,
                target: 25
            })
        );
    }

    #[test]
    fn overlapping_chunks_after_a_restart_are_walked_furthest_first() {
        // 11..=30 was rewritten as 11..=25 and 26..=40 by a sidecar that resumed.
        let stored = [c("b", 11, 25), c("b", 11, 30), c("b", 26, 40), c("b", 41, 41)];
        let chain = chain_to("b", 10, &stored, None).unwrap();
        assert_eq!(chain.chunks, vec![c("b", 11, 30), c("b", 26, 40), c("b", 41, 41)]);
        assert_eq!(chain.end, 41);
    }

    #[test]
    fn a_backup_of_an_empty_store_reads_revision_0_and_its_chain_starts_at_2() {
        assert_eq!(chain_to("b", 0, &[], None).unwrap().end, 1);
        let chain = chain_to("b", 0, &[c("b", 2, 9)], None).unwrap();
        assert_eq!((chain.end, chain.chunks.len()), (9, 1));
    }
}
