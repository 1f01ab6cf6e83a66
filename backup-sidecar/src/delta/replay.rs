//! Replays a chain on a private etcd restored from the chain's full backup without a revision
//! bump: each stored revision becomes one transaction, so revision `n` of the source is revision
//! `n` again, and the result is checked revision by revision. Anything else (an expired lease
//! deleting keys, a write from elsewhere) shows as a revision out of step and stops the replay.
//!
//! One revision can hold any number of events (a range delete, a lease expiring with its keys),
//! and a revision cannot be split: the private etcd runs with [`REPLAY_ETCD_FLAGS`], far above
//! etcd's defaults of 128 operations and 1.5 MiB per transaction.

use std::collections::{HashMap, HashSet};

use etcd_client::{Client, LeaseGrantOptions, PutOptions, Txn, TxnOp};

use super::format::{Chunk, EventKind};

/// Flags the private replay etcd must run with: a revision of any size replays as one
/// transaction, and the database may grow to etcd's largest supported size (the cluster's own
/// quota may be above the 2 GiB default, and the replay keeps the chain's history). It syncs
/// nothing to disk: it is scratch, thrown away whatever happens, and its result is read through
/// its snapshot API, which serves what it committed; one fsync per replayed revision was most of
/// the replay's time (docs/benchmarks.md).
pub const REPLAY_ETCD_FLAGS: [&str; 4] = [
    "--max-txn-ops=10000000",
    "--max-request-bytes=1073741824",
    "--quota-backend-bytes=8589934592",
    "--unsafe-no-fsync",
];

/// Leases with a granted TTL up to this are kept alive while the replay runs: the private etcd
/// counts their TTL from its start, and one expiring would delete keys mid-replay. Longer ones
/// (Kubernetes' event leases: an hour) outlast any replay; should one not, the revision check
/// stops the replay rather than let a deletion through.
const KEEP_ALIVE_UP_TO_SECS: i64 = 600;
/// The TTL given to a lease the sidecar found already gone when it wrote the chunk.
const UNKNOWN_TTL_SECS: i64 = 60;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// An etcd request failed.
    #[error("{action} on the replay etcd: {source}")]
    Etcd {
        /// What was asked.
        action: &'static str,
        /// The cause.
        source: etcd_client::Error,
    },
    /// The private etcd is not where the chain starts or went out of step.
    #[error("replay out of step: {0}")]
    OutOfStep(String),
}

fn etcd(action: &'static str) -> impl FnOnce(etcd_client::Error) -> ReplayError {
    move |source| ReplayError::Etcd { action, source }
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The revision reached (the target).
    pub revision: u64,
    /// When the last replayed revision was seen by the sidecar (Unix ms), if any was replayed.
    pub seen_ms: Option<i64>,
    /// Revisions applied.
    pub applied: u64,
}

/// Applies `chunks` (in chain order, as [`ouroboros_crds::delta::chain_to`] lists them) to `etcd`,
/// which must stand at `base`, up to revision `end`; revisions at or below the current one (from
/// overlapping chunks) are skipped. `keeper` (started on the same etcd before) must run until the
/// result is snapshotted: a lease expiring after the replay would still delete keys.
pub async fn replay(
    etcd_client: &mut Client,
    keeper: &KeepAlive,
    chunks: impl IntoIterator<Item = Chunk>,
    base: u64,
    end: u64,
) -> Result<Replayed, ReplayError> {
    let mut current = current_revision(etcd_client).await?;
    if current != base {
        return Err(ReplayError::OutOfStep(format!(
            "the replay etcd stands at revision {current}, the chain starts after {base}"
        )));
    }
    let mut leases: HashSet<i64> = etcd_client
        .leases()
        .await
        .map_err(etcd("listing leases"))?
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    let mut out = Replayed {
        revision: current,
        seen_ms: None,
        applied: 0,
    };
    for chunk in chunks {
        let ttls: HashMap<i64, i64> = chunk.leases.iter().map(|l| (l.id, l.granted_ttl)).collect();
        for r in &chunk.revisions {
            if r.revision <= current {
                continue;
            }
            if r.revision > end {
                break;
            }
            if r.revision != current + 1 {
                return Err(ReplayError::OutOfStep(format!(
                    "revision {} follows {current}: the chain has a hole",
                    r.revision
                )));
            }
            let mut ops = Vec::with_capacity(r.events.len());
            for e in &r.events {
                match e.kind {
                    EventKind::Put => {
                        let mut opts = PutOptions::new();
                        if e.lease != 0 {
                            if leases.insert(e.lease) {
                                let ttl = ttls.get(&e.lease).copied().filter(|&t| t > 0);
                                let ttl = ttl.unwrap_or(UNKNOWN_TTL_SECS);
                                etcd_client
                                    .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(e.lease)))
                                    .await
                                    .map_err(etcd("granting a lease"))?;
                                keeper.add(e.lease, ttl).await;
                            }
                            opts = opts.with_lease(e.lease);
                        }
                        ops.push(TxnOp::put(e.key.clone(), e.value.clone(), Some(opts)));
                    }
                    EventKind::Delete => ops.push(TxnOp::delete(e.key.clone(), None)),
                }
            }
            let resp = etcd_client
                .txn(Txn::new().and_then(ops))
                .await
                .map_err(etcd("applying a revision"))?;
            let now = resp.header().map(|h| h.revision()).unwrap_or_default();
            if u64::try_from(now).ok() != Some(r.revision) {
                return Err(ReplayError::OutOfStep(format!(
                    "applying revision {} left the replay etcd at {now}: something else wrote to it, \
                     or a lease expired",
                    r.revision
                )));
            }
            current = r.revision;
            out = Replayed {
                revision: current,
                seen_ms: Some(r.seen_ms),
                applied: out.applied + 1,
            };
        }
    }
    if current != end {
        return Err(ReplayError::OutOfStep(format!(
            "the chunks reached revision {current}, not {end}"
        )));
    }
    let now = current_revision(etcd_client).await?;
    if now != end {
        return Err(ReplayError::OutOfStep(format!(
            "the replay etcd moved to revision {now} after the replay ended at {end}"
        )));
    }
    Ok(out)
}

async fn current_revision(c: &mut Client) -> Result<u64, ReplayError> {
    let r = c.get("\0", None).await.map_err(etcd("reading the revision"))?;
    Ok(r.header()
        .and_then(|h| u64::try_from(h.revision()).ok())
        .unwrap_or_default())
}

/// Keeps the short leases of the private etcd alive from before the replay until its result is
/// snapshotted.
#[derive(Debug)]
pub struct KeepAlive {
    add: tokio::sync::mpsc::Sender<i64>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// Starts keeping the leases `c` has now alive.
    pub async fn start(c: &mut Client) -> Result<KeepAlive, ReplayError> {
        let existing = c.leases().await.map_err(etcd("listing leases"))?;
        let mut short = Vec::new();
        for id in existing.leases().iter().map(|l| l.id()) {
            let ttl = c
                .lease_time_to_live(id, None)
                .await
                .map_err(etcd("reading a lease's TTL"))?
                .granted_ttl();
            if ttl <= KEEP_ALIVE_UP_TO_SECS {
                short.push(id);
            }
        }
        let (add, mut added) = tokio::sync::mpsc::channel(64);
        let mut client = c.clone();
        let task = tokio::spawn(async move {
            let mut keepers = Vec::new();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            let mut ids = short;
            loop {
                tokio::select! {
                    id = added.recv() => match id {
                        Some(id) => ids.push(id),
                        None => return,
                    },
                    _ = tick.tick() => {
                        for id in ids.drain(..) {
                            if let Ok(k) = client.lease_keep_alive(id).await {
                                keepers.push(k);
                            }
                        }
                        for (keeper, stream) in &mut keepers {
                            if keeper.keep_alive().await.is_ok() {
                                let _ = stream.message().await;
                            }
                        }
                    }
                }
            }
        });
        Ok(KeepAlive { add, task })
    }

    async fn add(&self, id: i64, ttl: i64) {
        if ttl <= KEEP_ALIVE_UP_TO_SECS {
            let _ = self.add.send(id).await;
        }
    }

    /// Stops; the leases count down from their last renewal.
    pub async fn stop(self) {
        drop(self.add);
        let _ = self.task.await;
    }
}
