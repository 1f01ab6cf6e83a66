//! Follows etcd's history from the revision after a full backup and stores it as chunks.
//!
//! etcd never splits one revision's events over two watch responses (unless fragments are asked
//! for, which they are not), so every chunk holds whole revisions. The position is the events'
//! revisions, never a response header (during catch-up a header is the store's current revision).
//! A chunk is written when a progress notification says every revision up to the store's current
//! one has arrived, asked for every `period`, or as soon as the chunk reaches its byte bound: so
//! memory holds at most about one bound plus one watch response. A compacted start or a revision
//! missing from the stream ends the follow with [`FollowError::Gap`]: the chain is closed there
//! and never bridged.

use std::collections::HashSet;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;

use super::format::{Chunk, Event, EventKind, Lease, Revision};
use crate::store::{Store, StoreError};

/// A watch response may carry up to 1,000 revisions while catching up; etcd's default request
/// bound is 1.5 MiB per revision, far past the client's default 4 MiB decoding bound.
const MAX_WATCH_MESSAGE: usize = 256 << 20;

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
    // The earliest progress request not answered yet: etcd drops requests while the watch catches
    // up, so one is sent every period until an answer comes.
    let mut asked_ms: Option<i64> = None;
    loop {
        tokio::select! {
            _ = tick.tick(), if created => {
                stream.request_progress().await.map_err(etcd("asking for progress"))?;
                asked_ms.get_or_insert_with(now_ms);
            }
            message = stream.message() => {
                let resp = message
                    .map_err(etcd("reading the watch"))?
                    .ok_or_else(|| FollowError::Etcd {
                        action: "reading the watch",
                        source: etcd_client::Error::WatchError("the watch stream ended".into()),
                    })?;
                if resp.compact_revision() > 0 {
                    return Err(FollowError::Gap {
                        from: buffer.next,
                        stored: buffer.stored,
                        why: format!("etcd compacted its history up to revision {}", resp.compact_revision()),
                    });
                }
                if resp.canceled() {
                    return Err(FollowError::Gap {
                        from: buffer.next,
                        stored: buffer.stored,
                        why: format!("etcd cancelled the watch ({})", resp.cancel_reason()),
                    });
                }
                if resp.created() {
                    created = true;
                    continue;
                }
                if resp.events().is_empty() {
                    // Progress: every revision up to the store's current one has arrived.
                    if !buffer.chunk.revisions.is_empty() {
                        store_chunk(store, settings, &mut buffer, position).await?;
                    }
                    if let Some(asked) = asked_ms.take() {
                        position.send_modify(|p| p.recovery_point_ms = p.recovery_point_ms.max(asked));
                    }
                    continue;
                }
                buffer.add(resp.events(), &mut leases_client).await?;
                if buffer.chunk.encoded_len() >= settings.max_bytes {
                    store_chunk(store, settings, &mut buffer, position).await?;
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
    store
        .put_small(&name.object(), body)
        .await
        .map_err(|source| FollowError::Store {
            name: name.object(),
            source,
        })?;
    buffer.stored = name.last;
    buffer.chunk = Chunk::default();
    buffer.leases.clear();
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
                self.next = revision + 1;
            }
            let kind = match e.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            };
            if kind == EventKind::Put && kv.lease() != 0 && self.leases.insert(kv.lease()) {
                let granted_ttl = leases
                    .lease_time_to_live(kv.lease(), None)
                    .await
                    .map_err(etcd("reading a lease's TTL"))?
                    .granted_ttl();
                self.chunk.leases.push(Lease {
                    id: kv.lease(),
                    granted_ttl,
                });
            }
            if let Some(r) = self.chunk.revisions.last_mut() {
                r.events.push(Event {
                    kind,
                    key: kv.key().to_vec(),
                    value: kv.value().to_vec(),
                    lease: kv.lease(),
                    create_revision: kv.create_revision(),
                    version: kv.version(),
                });
            }
        }
        Ok(())
    }
}
