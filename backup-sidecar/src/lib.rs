//! The backup sidecar: the streaming pipeline (snapshot → trailer check and revision scan → tar →
//! parallel gzip → store), the stores, retention in the store, and the HTTP API the operator calls.

pub mod api;
pub mod archive;
pub mod bbolt;
pub mod crypt;
pub mod delta;
pub mod drill;
pub mod fetch;
pub mod pipeline;
pub mod prune;
pub mod store;
pub mod tls;
pub mod verify;
