//! Continuous backups (#23): after a full backup, one sidecar follows etcd's history and stores
//! it as chunks of whole revisions ([`follow`]); a restore replays a chain on a private etcd
//! restored from the full backup ([`replay`]); [`point`] makes a full backup's snapshot at a chosen
//! point of its chain. How chunks are named and which of them a restore
//! needs is in [`ouroboros_crds::delta`], shared with the operator.

pub mod follow;
pub mod format;
pub mod point;
pub mod replay;
