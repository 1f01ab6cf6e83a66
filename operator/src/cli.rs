//! Command-line flags (each also settable from the environment, for the Deployment).

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

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

    /// Repository of etcd images; members run `<repository>:<tag>` unless a cluster names its own.
    #[arg(
        long,
        env = "OUROBOROS_ETCD_IMAGE_REPOSITORY",
        default_value = "localhost/ouroboros/etcd"
    )]
    pub etcd_image_repository: String,

    /// Tag of that repository's images, `{version}` standing for the etcd version: `v{version}` as
    /// the etcd project tags (gcr.io/etcd-development/etcd, quay.io/coreos/etcd), `{version}-0` as
    /// registry.k8s.io/etcd does.
    #[arg(long, env = "OUROBOROS_ETCD_IMAGE_TAG_FORMAT", default_value = "v{version}", value_parser = parse_tag_format)]
    pub etcd_image_tag_format: String,

    /// Image of the backup sidecar added to every member pod.
    #[arg(long, env = "OUROBOROS_BACKUP_SIDECAR_IMAGE", default_value = concat!("localhost/ouroboros/etcd-backup-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub backup_sidecar_image: String,

    /// Run controllers only while holding a Lease, so several replicas are safe. Off only for running
    /// one operator by hand.
    #[arg(long, env = "OUROBOROS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// The operator's own namespace: the leader-election Lease and the sidecar CA's Secret are kept here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ouroboros-system")]
    pub lease_namespace: String,

    /// Seconds to wait for the CRDs to be established before giving up at start.
    #[arg(long, env = "OUROBOROS_CRD_WAIT_SECONDS", default_value_t = 120)]
    pub crd_wait_seconds: u64,

    /// Without a subcommand the operator runs its controllers.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-shot tasks.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// For installers: take the cluster's etcd over from a temporary boot etcd. Waits for the
    /// EtcdCluster CRD, creates the self-hosted EtcdCluster, waits until the boot member has been
    /// removed, and prints `--etcd-servers=<self-hosted client URLs>` for the API server. Exit codes:
    /// 0 done, 3 the CRD never appeared, 4 a different EtcdCluster has the name, 5 the operator
    /// refused the boot cluster, 6 timed out (progress so far on stderr), 1 anything else.
    Handover(HandoverArgs),
    /// Keeps a static-pod copy of each self-hosted member pod of this node in the kubelet's
    /// static-pod directory, so that the members start again after a power cycle without an API
    /// server. Runs as a DaemonSet (deploy/self-hosted); needs no CRDs and no leader election.
    Checkpointer(CheckpointerArgs),
}

/// Flags of `etcd-operator checkpointer`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointerArgs {
    /// This node's name (from the downward API in the DaemonSet).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The kubelet's static-pod directory (its `staticPodPath`), as mounted in this container.
    #[arg(
        long,
        env = "OUROBOROS_STATIC_POD_DIR",
        default_value = "/etc/kubernetes/manifests"
    )]
    pub static_pod_dir: std::path::PathBuf,
    /// Host directory for copies of the Secrets members mount (static pods cannot reference
    /// Secrets). Must be the same path inside this container and on the host.
    #[arg(
        long,
        env = "OUROBOROS_CHECKPOINT_SECRETS_DIR",
        default_value = "/var/lib/ouroboros/checkpoint-secrets"
    )]
    pub secrets_dir: std::path::PathBuf,
    /// Seconds between passes.
    #[arg(long, default_value_t = 5)]
    pub interval_seconds: u64,
}

/// Flags of `etcd-operator handover`.
#[derive(Debug, Clone, clap::Args)]
pub struct HandoverArgs {
    /// Client URL of the boot etcd member, as the operator's pods reach it.
    #[arg(long)]
    pub boot_endpoint: String,
    /// Name of the EtcdCluster to create.
    #[arg(long, default_value = "kube-etcd")]
    pub name: String,
    /// Its namespace.
    #[arg(long, default_value = "kube-system")]
    pub namespace: String,
    /// Self-hosted members to grow to before the boot member is removed.
    #[arg(long, default_value_t = 3)]
    pub size: i32,
    /// etcd version of the members (should match the boot etcd's).
    #[arg(long, default_value = ouroboros_crds::cluster::DEFAULT_ETCD_VERSION)]
    pub version: String,
    /// Host directory for member data.
    #[arg(long)]
    pub host_data_dir: Option<String>,
    /// First port of the member port blocks.
    #[arg(long)]
    pub base_port: Option<i32>,
    /// ClusterIP for the client Service, when the API server was started with it in `--etcd-servers`.
    #[arg(long)]
    pub client_service_ip: Option<String>,
    /// Node labels members must run on, `key=value`; repeatable.
    #[arg(long = "node-selector", value_parser = parse_label)]
    pub node_selector: Vec<(String, String)>,
    /// Tolerate the `node-role.kubernetes.io/control-plane` taint.
    #[arg(long)]
    pub tolerate_control_plane: bool,
    /// Seconds to wait for the CRD and then for the pivot.
    #[arg(long, default_value_t = 900)]
    pub timeout_seconds: u64,
}

fn parse_tag_format(s: &str) -> Result<String, String> {
    if ouroboros_crds::version::valid_tag_format(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an image tag format: it needs {{version}} once and otherwise letters, digits, '_', '.' and '-' (as `v{{version}}` or `{{version}}-0`)"
        ))
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
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
    fn handover_takes_its_own_flags() {
        let a = Args::try_parse_from([
            "etcd-operator",
            "handover",
            "--boot-endpoint",
            "http://10.0.0.1:12379",
            "--node-selector",
            "role=cp",
        ])
        .expect("parses");
        let Some(Command::Handover(h)) = a.command else {
            panic!("no handover");
        };
        assert_eq!(h.name, "kube-etcd");
        assert_eq!(h.node_selector, vec![("role".to_owned(), "cp".to_owned())]);
        assert!(Args::try_parse_from(["etcd-operator", "handover"]).is_err());
        assert!(
            Args::try_parse_from([
                "etcd-operator",
                "handover",
                "--boot-endpoint",
                "x",
                "--node-selector",
                "nolabel"
            ])
            .is_err()
        );
    }

    #[test]
    fn json_logs_by_flag() {
        let a = Args::try_parse_from(["etcd-operator", "--log-format", "json"]).expect("parses");
        assert_eq!(a.log_format, LogFormat::Json);
        assert!(Args::try_parse_from(["etcd-operator", "--log-format", "xml"]).is_err());
    }
}
