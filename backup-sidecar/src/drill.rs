//! The check at the end of a restore drill. The drill Job has restored the archive with `etcdutl
//! snapshot restore` (no `--bump-revision`, no `--mark-compacted`, so the revisions are the
//! member's) and started etcd on it with no peers and no auto-compaction; this asks that etcd for
//! its revision and its `HashKV` at the backup's revision, and compares them with what the member
//! reported when the backup was taken. The comparison is a pure function, tested case by case.

use std::time::Duration;

use etcd_client::Client;
use ouroboros_crds::sidecar::{DrillOutcome, DrillVerdict, RecordedHash};

/// What the backup recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The snapshot's revision.
    pub revision: u64,
    /// The member's hash at that revision, when one was recorded.
    pub hash: Option<RecordedHash>,
}

/// What etcd on the restored data reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Its current revision.
    pub revision: u64,
    /// Its `HashKV` at the expected revision (absent when no hash was recorded to compare with).
    pub hash: Option<RecordedHash>,
}

fn verdict(outcome: DrillOutcome, reason: String) -> DrillVerdict {
    DrillVerdict { outcome, reason }
}

/// The verdict on `observed` against `expected`.
pub fn judge(expected: Expected, observed: Observed) -> DrillVerdict {
    let rev = expected.revision;
    // Above it is fine: etcd revokes the leases that expire after it starts (their keys' deletions
    // are new revisions), and the hash at the backup's own revision is unchanged by them.
    if observed.revision < rev {
        return verdict(
            DrillOutcome::Failed,
            format!(
                "etcd on the restored archive is at revision {}, below the backup's recorded revision {rev}",
                observed.revision
            ),
        );
    }
    let Some(want) = expected.hash else {
        return verdict(
            DrillOutcome::Verified,
            format!(
                "restored, and etcd serves revision {rev}; no hash was recorded when the backup was taken, \
                 so the keys themselves were not compared"
            ),
        );
    };
    let Some(got) = observed.hash else {
        return verdict(
            DrillOutcome::Inconclusive,
            format!("etcd on the restored archive did not hash revision {rev}"),
        );
    };
    if got.revision != want.revision || got.compact_revision != want.compact_revision {
        // Hashes computed over different revision ranges say nothing about each other.
        return verdict(
            DrillOutcome::Inconclusive,
            format!(
                "the restored copy hashed revision {} with compaction at {}, the member revision {} with \
                 compaction at {}: the hashes are not comparable",
                got.revision, got.compact_revision, want.revision, want.compact_revision
            ),
        );
    }
    if got.hash != want.hash {
        return verdict(
            DrillOutcome::Failed,
            format!(
                "the restored keyspace at revision {rev} hashes to {}, the member's hashed to {}: the archive \
                 does not hold the data that was backed up",
                got.hash, want.hash
            ),
        );
    }
    verdict(
        DrillOutcome::Verified,
        format!(
            "restored, and etcd on it serves revision {rev} with the member's hash {} (compaction at {})",
            want.hash, want.compact_revision
        ),
    )
}

/// Waits up to `wait` for etcd at `endpoint` to answer, then judges it.
pub async fn check(endpoint: &str, expected: Expected, wait: Duration) -> DrillVerdict {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let last = match observe(endpoint, expected).await {
            Ok(observed) => return judge(expected, observed),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return verdict(
                DrillOutcome::Inconclusive,
                format!(
                    "etcd on the restored archive did not answer within {}s: {last}",
                    wait.as_secs()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn observe(endpoint: &str, expected: Expected) -> Result<Observed, String> {
    let mut etcd = Client::connect([endpoint], None)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let status = etcd.status().await.map_err(|e| format!("status: {e}"))?;
    let revision = status
        .header()
        .map(|h| u64::try_from(h.revision()).unwrap_or(0))
        .unwrap_or(0);
    let hash = match expected.hash {
        Some(want) => {
            let at = i64::try_from(want.revision).map_err(|e| e.to_string())?;
            Some(crate::pipeline::ask_hash(&mut etcd, at).await?)
        }
        None => None,
    };
    Ok(Observed { revision, hash })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: RecordedHash = RecordedHash {
        hash: 7,
        revision: 40,
        compact_revision: 30,
    };

    fn expected() -> Expected {
        Expected {
            revision: 40,
            hash: Some(HASH),
        }
    }

    #[test]
    fn the_same_revision_and_hash_verify() {
        let v = judge(
            expected(),
            Observed {
                revision: 40,
                hash: Some(HASH),
            },
        );
        assert_eq!(v.outcome, DrillOutcome::Verified, "{}", v.reason);
    }

    #[test]
    fn a_different_hash_fails() {
        let hash = Some(RecordedHash { hash: 8, ..HASH });
        let v = judge(expected(), Observed { revision: 40, hash });
        assert_eq!(v.outcome, DrillOutcome::Failed, "{}", v.reason);
    }

    #[test]
    fn a_lower_revision_fails_before_any_hash_and_a_higher_one_is_expired_leases() {
        let at = |revision| {
            judge(
                expected(),
                Observed {
                    revision,
                    hash: Some(HASH),
                },
            )
            .outcome
        };
        assert_eq!(at(39), DrillOutcome::Failed);
        assert_eq!(at(41), DrillOutcome::Verified);
    }

    #[test]
    fn hashes_over_different_compactions_decide_nothing() {
        let hash = Some(RecordedHash {
            hash: 8,
            compact_revision: 31,
            ..HASH
        });
        let v = judge(expected(), Observed { revision: 40, hash });
        assert_eq!(v.outcome, DrillOutcome::Inconclusive, "{}", v.reason);
    }

    #[test]
    fn without_a_recorded_hash_the_revision_is_what_is_checked() {
        let expected = Expected {
            revision: 40,
            hash: None,
        };
        let v = judge(
            expected,
            Observed {
                revision: 40,
                hash: None,
            },
        );
        assert_eq!(v.outcome, DrillOutcome::Verified, "{}", v.reason);
        assert!(v.reason.contains("no hash was recorded"), "{}", v.reason);
        let v = judge(
            expected,
            Observed {
                revision: 39,
                hash: None,
            },
        );
        assert_eq!(v.outcome, DrillOutcome::Failed, "{}", v.reason);
    }
}
