//! The Ouroboros etcd operator as a library: the binary in `main.rs` only wires these together, so
//! every piece can be tested on its own.

pub mod backup_source;
pub mod certificate_copies;
pub mod certificates;
pub mod checkpointer;
pub mod cli;
pub mod cluster_writes;
pub mod context;
pub mod controllers;
pub mod crds_ready;
pub mod cron_schedule;
pub mod etcd;
#[cfg(test)]
pub mod etcd_fake;
pub mod failpoints;
pub mod handover;
pub mod http;
pub mod leader;
pub mod member_access;
pub mod metrics;
pub mod objects;
pub mod sidecar;
pub mod sidecar_pki;
pub mod telemetry;
pub mod vocabulary;

/// The one field manager every server-side apply of the operator uses.
pub const FIELD_MANAGER: &str = "ouroboros-operator";
