//! Command-line flags (each also settable from the environment, for the Deployment).

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

/// The Ouroboros etcd operator.
#[derive(Debug, Clone, Parser)]
#[command(name = "etcd-operator", version, about)]
pub struct Args {
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "OUROBOROS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "OUROBOROS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Watch only this namespace. Empty watches every namespace.
    #[arg(long, env = "OUROBOROS_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,

    /// Repository of etcd images; members run `<repository>:v<version>` unless a cluster overrides it.
    #[arg(
        long,
        env = "OUROBOROS_ETCD_IMAGE_REPOSITORY",
        default_value = "localhost/ouroboros/etcd"
    )]
    pub etcd_image_repository: String,

    /// Image of the backup sidecar added to every member pod.
    #[arg(long, env = "OUROBOROS_BACKUP_SIDECAR_IMAGE", default_value = concat!("localhost/ouroboros/etcd-backup-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub backup_sidecar_image: String,

    /// Run controllers only while holding a Lease, so several replicas are safe. Off only for running
    /// one operator by hand.
    #[arg(long, env = "OUROBOROS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ouroboros-system")]
    pub lease_namespace: String,

    /// Seconds to wait for the CRDs to be established before giving up at start.
    #[arg(long, env = "OUROBOROS_CRD_WAIT_SECONDS", default_value_t = 120)]
    pub crd_wait_seconds: u64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let a = Args::try_parse_from(["etcd-operator"]).expect("defaults parse");
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(a.http_addr.port(), 8080);
    }

    #[test]
    fn json_logs_by_flag() {
        let a = Args::try_parse_from(["etcd-operator", "--log-format", "json"]).expect("parses");
        assert_eq!(a.log_format, LogFormat::Json);
        assert!(Args::try_parse_from(["etcd-operator", "--log-format", "xml"]).is_err());
    }
}
