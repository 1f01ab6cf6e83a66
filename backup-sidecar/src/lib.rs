//! The backup sidecar's pipeline pieces: verifying etcd's snapshot trailer and reading the snapshot's
//! own revision as the bytes stream past. The archive writer, the stores and the HTTP API that the
//! operator calls are the rest of the backup issue.

pub mod api;
pub mod archive;
pub mod bbolt;
pub mod pipeline;
pub mod store;
pub mod verify;
