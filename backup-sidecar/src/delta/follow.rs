//! Follows etcd's history from the revision after a full backup and stores it as chunks.
//!
//! etcd never splits one revision's events over two watch responses (unless fragments are asked
//! for, which they are not), so every chunk holds whole revisions. The position is the events'
//! revisions, never a response header (during catch-up a header is the store's current revision).
//! A chunk is written when a progress notification says every revision up to the followed
//! member's current one has arrived (asked for every `period`), or as soon as the chunk reaches its
//! byte bound: so memory holds at most about one bound plus one watch response. A compacted start
//! or a revision missing from the stream ends the follow with [`FollowError::Gap`]: the chain is
//! closed there and never bridged.
//!
//! The recovery point is claimed from the cluster's side, not the member's: every period the time
//! is taken and then a linearizable read asks the cluster for its newest revision (a follower may
//! lag behind writes the leader already acknowledged; a read through ReadIndex cannot). That time
//! becomes the recovery point only once a chunk up to that revision is stored: every write
//! acknowledged before it has a revision at or below the one read.

use std::collections::HashSet;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;

use super::format::{Chunk, Event, EventKind, Lease, Revision};
use crate::store::{Store, StoreError};

/// A watch response may carry up to 1,000 revisions while catching up; etcd's default request
/// bound is 1.5 MiB per revision, far past the client's default 4 MiB decoding bound.
const MAX_WATCH_MESSAGE: usize = 256 << 20;
/// How long one chunk's PUT or one lease lookup may take before the follow ends (and is resumed).
const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The history cannot continue the chain: revisions from `from` on are not in it.
    #[error("the history from revision {from} cannot be followed: {why}; the chain ends at {stored}")]
    Gap {
        /// The first revision that cannot be had.
        from: u64,
        /// The chain's last stored revision.
        stored: u64,
        /// What happened.
        why: String,
    },
    /// The watch, the store or etcd went silent for too long without an error (a connection that
    /// hangs): following may resume from the stored position.
    #[error("nothing answered for {0:?}")]
    Silent(std::time::Duration),
    /// etcd failed (a connection lost); following may resume from the stored position.
    #[error("{action}: {source}")]
    Etcd {
        /// What was asked.
        action: &'static str,
        /// The cause.
        source: etcd_client::Error,
    },
    /// A chunk could not be stored; following may resume from the stored position.
    #[error("storing chunk {name}: {source}")]
    Store {
        /// Object name.
        name: String,
        /// The cause.
        source: StoreError,
    },
    /// A chunk could not be encoded.
    #[error(transparent)]
    Format(#[from] super::format::FormatError),
}

fn etcd(action: &'static str) -> impl FnOnce(etcd_client::Error) -> FollowError {
    move |source| FollowError::Etcd { action, source }
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct FollowSettings {
    /// The full backup (EtcdBackup name) the chain extends.
    pub backup: String,
    /// The last revision already stored: the full backup's, or the chain's last chunk's.
    pub stored: u64,
    /// How often a chunk is written (when there is anything new).
    pub period: std::time::Duration,
    /// A chunk is written once it holds this many bytes (before compression), whatever the period.
    pub max_bytes: usize,
}

/// Where the follow stands, for the operator to read.
pub type Position = ouroboros_crds::sidecar::FollowPosition;

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Follows until an error; `position` is updated after every stored chunk and confirmation.
pub async fn follow(
    etcd_client: &Client,
    store: &Store,
    settings: &FollowSettings,
    position: &watch::Sender<Position>,
) -> Result<std::convert::Infallible, FollowError> {
    let mut leases_client = etcd_client.clone();
    let mut watch_client = etcd_client
        .watch_client()
        .max_decoding_message_size(MAX_WATCH_MESSAGE);
    let from = settings.stored + 1;
    let options = WatchOptions::new()
        .with_all_keys()
        .with_start_revision(i64::try_from(from).unwrap_or(i64::MAX))
        .with_progress_notify();
    let mut stream = watch_client
        .watch("", Some(options))
        .await
        .map_err(etcd("starting the watch"))?;
    position.send_modify(|p| p.stored_revision = settings.stored);
    let mut buffer = Buffer::new(settings.stored);
    let mut tick = tokio::time::interval(settings.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut created = false;
    // A recovery point not confirmed yet: the time taken and the cluster's revision read after it.
    let mut pending: Option<(i64, u64)> = None;
    // etcd answers every progress request of a synced watch, and an unsynced one sends events:
    // this long without anything means the stream hangs.
    let silent_after = (settings.period * 3).max(std::time::Duration::from_secs(30));
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            // Always armed, so that a watch that never even confirms its creation is noticed.
            _ = tick.tick() => {
                if last_heard.elapsed() > silent_after {
                    return Err(FollowError::Silent(last_heard.elapsed()));
                }
                if !created {
                    continue;
                }
                if pending.is_none() {
                    let asked = now_ms();
                    // A member cut off from the leader cannot answer a linearizable read: bounded,
                    // so a partition ends the follow rather than freezing it.
                    let read = tokio::time::timeout(silent_after, leases_client.get("\0", None))
                        .await
                        .map_err(|_| FollowError::Silent(silent_after))?
                        .map_err(etcd("reading the cluster's revision"))?;
                    // Without the revision nothing can be claimed (0 would claim at once).
                    let revision = read
                        .header()
                        .and_then(|h| u64::try_from(h.revision()).ok())
                        .filter(|r| *r > 0)
                        .ok_or_else(|| FollowError::Etcd {
                            action: "reading the cluster's revision",
                            source: etcd_client::Error::InvalidArgs("the answer carries no revision".into()),
                        })?;
                    if revision <= buffer.stored {
                        // Nothing was committed after what is stored: the claim holds now. etcd
                        // sends no progress for a watch that starts after its current revision
                        // (an idle cluster right after its backup), so waiting for one would
                        // never claim, and the silence would end the follow over and over.
                        last_heard = tokio::time::Instant::now();
                        position.send_modify(|p| p.recovery_point_ms = p.recovery_point_ms.max(asked));
                        continue;
                    }
                    pending = Some((asked, revision));
                }
                // Dropped while the watch catches up, so asked again every period.
                stream.request_progress().await.map_err(etcd("asking for progress"))?;
            }
            message = stream.message() => {
                last_heard = tokio::time::Instant::now();
                let resp = message
                    .map_err(etcd("reading the watch"))?
                    .ok_or_else(|| FollowError::Etcd {
                        action: "reading the watch",
                        source: etcd_client::Error::WatchError("the watch stream ended".into()),
                    })?;
                if resp.compact_revision() > 0 {
                    // What arrived before is whole and contiguous: stored, it makes the gap smaller.
                    let _ = store_chunk(store, settings, &mut buffer, position).await;
                    return Err(FollowError::Gap {
                        from: buffer.next,
                        stored: buffer.stored,
                        why: format!("etcd compacted its history up to revision {}", resp.compact_revision()),
                    });
                }
                if resp.canceled() {
                    // Not a gap (that is a compaction, above): permissions, a member shutting down.
                    return Err(FollowError::Etcd {
                        action: "watching",
                        source: etcd_client::Error::WatchError(format!("etcd cancelled the watch: {}", resp.cancel_reason())),
                    });
                }
                if resp.created() {
                    created = true;
                    continue;
                }
                if resp.events().is_empty() {
                    // Progress: every revision up to the member's current one has arrived.
                    store_chunk(store, settings, &mut buffer, position).await?;
                } else {
                    buffer.add(resp.events(), &mut leases_client).await?;
                    if buffer.bytes >= settings.max_bytes {
                        store_chunk(store, settings, &mut buffer, position).await?;
                    }
                }
                if let Some((asked, revision)) = pending
                    && buffer.stored >= revision
                {
                    pending = None;
                    position.send_modify(|p| p.recovery_point_ms = p.recovery_point_ms.max(asked));
                }
            }
        }
    }
}

async fn store_chunk(
    store: &Store,
    settings: &FollowSettings,
    buffer: &mut Buffer,
    position: &watch::Sender<Position>,
) -> Result<(), FollowError> {
    let Some(name) = buffer.chunk.name(&settings.backup) else {
        return Ok(());
    };
    let body = buffer.chunk.encode()?;
    let len = body.len() as u64;
    // A store that hangs must end the follow (it resumes from what is stored), not freeze it.
    tokio::time::timeout(STORE_TIMEOUT, store.put_small(&name.object(), body))
        .await
        .map_err(|_| FollowError::Silent(STORE_TIMEOUT))?
        .map_err(|source| FollowError::Store {
            name: name.object(),
            source,
        })?;
    buffer.stored = name.last;
    buffer.chunk = Chunk::default();
    buffer.leases.clear();
    buffer.bytes = 0;
    position.send_modify(|p| {
        p.stored_revision = name.last;
        p.chunks += 1;
        p.bytes += len;
    });
    Ok(())
}

/// The revisions received and not stored yet.
struct Buffer {
    chunk: Chunk,
    /// Leases already recorded in `chunk`.
    leases: HashSet<i64>,
    /// `chunk`'s encoded size, kept as events arrive (measuring it each time would cost the square).
    bytes: usize,
    /// The next revision expected.
    next: u64,
    /// The last revision stored.
    stored: u64,
}

impl Buffer {
    fn new(stored: u64) -> Self {
        Buffer {
            chunk: Chunk::default(),
            leases: HashSet::new(),
            bytes: 0,
            next: stored + 1,
            stored,
        }
    }

    /// Adds one response's events, grouped by revision, checking that no revision is skipped.
    async fn add(&mut self, events: &[etcd_client::Event], leases: &mut Client) -> Result<(), FollowError> {
        let seen_ms = now_ms();
        for e in events {
            let Some(kv) = e.kv() else { continue };
            let revision = u64::try_from(kv.mod_revision()).unwrap_or_default();
            let open = self.chunk.revisions.last().map(|r| r.revision);
            if open != Some(revision) {
                if revision != self.next {
                    return Err(FollowError::Gap {
                        from: self.next,
                        stored: self.stored,
                        why: format!("the watch went from revision {} to {revision}", self.next - 1),
                    });
                }
                self.chunk.revisions.push(Revision {
                    revision,
                    seen_ms,
                    events: Vec::new(),
                });
                self.bytes += super::format::REVISION_HEADER_LEN;
                self.next = revision + 1;
            }
            let kind = match e.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            };
            if kind == EventKind::Put && kv.lease() != 0 && self.leases.insert(kv.lease()) {
                let granted_ttl =
                    tokio::time::timeout(STORE_TIMEOUT, leases.lease_time_to_live(kv.lease(), None))
                        .await
                        .map_err(|_| FollowError::Silent(STORE_TIMEOUT))?
                        .map_err(etcd("reading a lease's TTL"))?
                        .granted_ttl();
                self.chunk.leases.push(Lease {
                    id: kv.lease(),
                    granted_ttl,
                });
                self.bytes += super::format::LEASE_LEN;
            }
            if let Some(r) = self.chunk.revisions.last_mut() {
                let event = Event {
                    kind,
                    key: kv.key().to_vec(),
                    value: kv.value().to_vec(),
                    lease: kv.lease(),
                    create_revision: kv.create_revision(),
                    version: kv.version(),
                };
                self.bytes += super::format::event_len(&event);
                r.events.push(event);
            }
        }
        Ok(())
    }
}
