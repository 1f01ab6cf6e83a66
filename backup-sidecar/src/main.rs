//! `etcd-backup-sidecar`: runs beside each etcd member and takes backups of it when the operator asks
//! (see `api`): snapshot → verified tar.gz → S3 or a directory, manifest last.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use ouroboros_backup_sidecar::{
    api::{Api, ClientTls, router, serve},
    fetch::{Location, fetch},
    store::{S3Config, Store},
    tls::{RELOAD_EVERY, ReloadingConfig},
};

/// The backup sidecar of an Ouroboros etcd member. Without a subcommand it serves the operator's
/// API; `fetch` downloads and verifies one backup for a restore.
#[derive(Debug, Parser)]
#[command(name = "etcd-backup-sidecar", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the sidecar's API (HTTPS).
    #[arg(long, env = "OUROBOROS_SIDECAR_ADDR", default_value = "0.0.0.0:8090")]
    listen: SocketAddr,
    /// Directory with the API's server certificate (`tls.crt`, `tls.key`) and the CA bundle that
    /// callers' certificates must chain to (`ca.crt`): the cluster's `<cluster>-sidecar-tls` Secret,
    /// which the operator issues. The API is never served without it.
    #[arg(long, env = "OUROBOROS_SIDECAR_API_TLS_DIR")]
    api_tls_dir: Option<std::path::PathBuf>,
    /// Client URL of the member this sidecar backs up.
    #[arg(
        long,
        env = "OUROBOROS_ETCD_ENDPOINT",
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoint: String,
    /// Directory with `tls.crt`, `tls.key` and `ca.crt` of a client certificate, for members that
    /// require client-certificate TLS.
    #[arg(long, env = "OUROBOROS_ETCD_TLS_DIR")]
    tls_dir: Option<std::path::PathBuf>,
    /// Name the member's certificate is checked against (its DNS name), with `--tls-dir`.
    #[arg(long, env = "OUROBOROS_ETCD_TLS_SERVER_NAME", requires = "tls_dir")]
    tls_server_name: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Download an archive, verify it against etcd's trailer, its manifest and `--sha256`, and leave
    /// `snapshot.db` and `manifest.json` in `--out`. Exits non-zero, with the reason on stderr and in
    /// the container's termination message, when anything does not check out: 2 when the archive
    /// itself is at fault (damaged, incomplete, not what was recorded), 1 when it was not read.
    Fetch(FetchArgs),
    /// The last step of a restore drill: wait for etcd started alone on the restored archive, and
    /// compare its revision and its `HashKV` at `--revision` with what the backup recorded. The
    /// verdict (JSON) goes to stdout and the container's termination message; the exit code is 0
    /// whenever a verdict was reached, whatever it is.
    DrillCheck(DrillCheckArgs),
    /// Take a fetched full backup's `--snapshot` to a point of its delta chain (continuous
    /// backups): the chain is checked whole up to the point first (a hole or a damaged chunk is
    /// refused before anything is written), replayed on a private etcd, and the snapshot at the
    /// point written to `--out`. The point reached (JSON) goes to stdout and the termination
    /// message.
    Replay(ReplayArgs),
}

/// How to reach an S3 store; credentials come from the AWS environment.
#[derive(Debug, clap::Args)]
struct S3Args {
    /// S3 endpoint for S3-compatible stores.
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Path-style S3 addressing.
    #[arg(long)]
    force_path_style: bool,
}

impl S3Args {
    async fn store(&self, bucket: String, prefix: String) -> Store {
        Store::s3(S3Config {
            bucket,
            prefix,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            force_path_style: self.force_path_style,
            credentials: None,
        })
        .await
    }
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The full backup's snapshot.
    #[arg(long)]
    snapshot: std::path::PathBuf,
    /// Where the snapshot at the point goes (may be `--snapshot`).
    #[arg(long)]
    out: std::path::PathBuf,
    /// The full backup (EtcdBackup name) the chain extends.
    #[arg(long)]
    backup: String,
    /// Its revision.
    #[arg(long)]
    base_revision: u64,
    /// The store holding the chain: `s3://bucket/prefix/` or `file:///dir/` (the backup's
    /// location without its name).
    #[arg(long)]
    chain: String,
    #[command(flatten)]
    point: PointArgs,
    /// Scratch space for the private etcd (emptied first).
    #[arg(long)]
    scratch: std::path::PathBuf,
    #[command(flatten)]
    s3: S3Args,
}

#[derive(Debug, clap::Args)]
struct FetchArgs {
    /// The archive, as an EtcdBackup's `status.location` shows it.
    #[arg(long)]
    location: String,
    /// Directory for the verified files.
    #[arg(long)]
    out: std::path::PathBuf,
    /// sha256 recorded when the backup was taken.
    #[arg(long)]
    sha256: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// An age identity file (`AGE-SECRET-KEY-1...` lines) to decrypt an encrypted archive with.
    #[arg(long)]
    identity_file: Option<std::path::PathBuf>,
    /// Then take the snapshot along this backup's delta chain (continuous backups), stored beside
    /// the archive: the verified snapshot is replaced by the one at the point, and the point
    /// reached is added to the report.
    #[arg(long, requires = "base_revision")]
    chain_of: Option<String>,
    /// The backup's revision, where its chain starts.
    #[arg(long, requires = "chain_of")]
    base_revision: Option<u64>,
    #[command(flatten)]
    point: PointArgs,
}

/// Where along a chain to stop, and the etcd that replays it.
#[derive(Debug, clap::Args)]
struct PointArgs {
    /// Stop at exactly this revision (default: the chain's end).
    #[arg(long, conflicts_with = "to_time")]
    to_revision: Option<u64>,
    /// Stop at the last revision seen at or before this time (RFC 3339).
    #[arg(long)]
    to_time: Option<jiff::Timestamp>,
    /// With `--to-time`: the full backup completed at or before that time (the operator chooses it
    /// so), so a chain first seen after it leaves the backup itself as the point; without it that
    /// is refused, since the backup might hold later writes.
    #[arg(long, requires = "to_time")]
    base_completed_by_time: bool,
    /// Directory with `etcd` and `etcdutl`.
    #[arg(long, default_value = "/usr/local/bin")]
    etcd_bin_dir: std::path::PathBuf,
}

impl PointArgs {
    fn target(&self) -> ouroboros_backup_sidecar::delta::point::Target {
        use ouroboros_backup_sidecar::delta::point::Target;
        match (self.to_revision, self.to_time) {
            (Some(r), _) => Target::Revision(r),
            (None, Some(t)) if self.base_completed_by_time => Target::TimeAfterBase(t.as_millisecond()),
            (None, Some(t)) => Target::Time(t.as_millisecond()),
            (None, None) => Target::End,
        }
    }
}

#[derive(Debug, clap::Args)]
struct DrillCheckArgs {
    /// Client URL of the drill's etcd.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
    /// The backup's revision.
    #[arg(long)]
    revision: u64,
    /// The hash the member reported at `--revision` (with `--compact-revision`).
    #[arg(long, requires = "compact_revision")]
    kv_hash: Option<u32>,
    /// The compaction revision that hash was computed with (0: never compacted).
    #[arg(long, requires = "kv_hash")]
    compact_revision: Option<u64>,
    /// How long to wait for etcd to answer.
    #[arg(long, default_value_t = 120)]
    wait_seconds: u64,
}

/// Where Kubernetes reads a container's termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// The exit code of a fetch that found the archive itself at fault (as opposed to not reaching it):
/// a drill tells a damaged archive from an unreachable store by it.
const EXIT_DAMAGED: i32 = 2;

fn termination_message(message: &str) {
    if std::path::Path::new(TERMINATION_LOG).exists() {
        let _ = std::fs::write(TERMINATION_LOG, message);
    }
}

async fn drill_check(args: DrillCheckArgs) -> anyhow::Result<()> {
    let revision = args.revision;
    let expected = ouroboros_backup_sidecar::drill::Expected {
        revision,
        hash: args
            .kv_hash
            .zip(args.compact_revision)
            .map(|(hash, compact_revision)| ouroboros_crds::sidecar::RecordedHash {
                hash,
                revision,
                compact_revision,
            }),
    };
    let wait = std::time::Duration::from_secs(args.wait_seconds);
    let verdict = ouroboros_backup_sidecar::drill::check(&args.endpoint, expected, wait).await;
    let json = serde_json::to_string(&verdict)?;
    termination_message(&json);
    println!("{json}");
    Ok(())
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Fetch(args) => fetch_command(args).await,
        Command::DrillCheck(args) => drill_check(args).await,
        Command::Replay(args) => replay_command(args).await,
    }
}

/// The store a chain URL names (`s3://bucket/prefix/` or `file:///dir/`).
async fn chain_store(url: &str, s3: &S3Args) -> anyhow::Result<Store> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "{url:?} names no bucket");
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        return Ok(s3.store(bucket.to_owned(), prefix).await);
    }
    match url.strip_prefix("file://") {
        Some(dir) if dir.starts_with('/') => Ok(Store::Dir(dir.into())),
        _ => anyhow::bail!("{url:?}: a chain is s3://<bucket>/<prefix>/ or file:///<dir>/"),
    }
}

async fn replay_command(args: ReplayArgs) -> anyhow::Result<()> {
    use ouroboros_backup_sidecar::delta::point::{PointRequest, to_point};
    let target = args.point.target();
    let result = async {
        let store = chain_store(&args.chain, &args.s3).await?;
        let req = PointRequest {
            snapshot: &args.snapshot,
            out: &args.out,
            backup: &args.backup,
            base: args.base_revision,
            store: &store,
            target,
            etcd_bin_dir: &args.point.etcd_bin_dir,
            scratch: &args.scratch,
        };
        Ok::<_, anyhow::Error>(to_point(&req).await?)
    }
    .await;
    match result {
        Ok(reached) => {
            let json = serde_json::to_string(&reached)?;
            termination_message(&json);
            println!("{json}");
            Ok(())
        }
        Err(e) => {
            let message = format!("replaying the chain of {}: {e:#}", args.backup);
            termination_message(&message);
            anyhow::bail!(message)
        }
    }
}

/// Takes the verified snapshot in `out` along the chain of `backup` (stored beside the archive at
/// `location`) to the point `point` names, in place; scratch space is beside it.
async fn along_chain(
    location: &str,
    out: &std::path::Path,
    backup: &str,
    base: u64,
    point: &PointArgs,
    s3: &S3Args,
) -> anyhow::Result<ouroboros_backup_sidecar::delta::point::Reached> {
    use ouroboros_backup_sidecar::delta::point::{PointRequest, to_point};
    let (dir, _) = location
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("{location:?} has no directory for a chain"))?;
    let store = chain_store(&format!("{dir}/"), s3).await?;
    let snapshot = out.join("snapshot.db");
    let req = PointRequest {
        snapshot: &snapshot,
        out: &snapshot,
        backup,
        base,
        store: &store,
        target: point.target(),
        etcd_bin_dir: &point.etcd_bin_dir,
        scratch: &out.join(".point"),
    };
    to_point(&req)
        .await
        .with_context(|| format!("taking backup {backup} along its delta chain"))
}

async fn fetch_command(args: FetchArgs) -> anyhow::Result<()> {
    let FetchArgs {
        location,
        out,
        sha256,
        s3,
        identity_file,
        chain_of,
        base_revision,
        point,
    } = args;
    let result = async {
        let identities = match &identity_file {
            Some(f) => ouroboros_backup_sidecar::crypt::identities(f)?,
            None => Vec::new(),
        };
        let (store, name) = match location.parse::<Location>().map_err(anyhow::Error::msg)? {
            Location::File { dir, name } => (Store::Dir(dir), name),
            Location::S3 { bucket, key } => (s3.store(bucket, String::new()).await, key),
        };
        let manifest = fetch(&store, &name, &out, sha256.as_deref(), &identities).await?;
        let point = match chain_of.zip(base_revision) {
            Some((backup, base)) => {
                // The chain continues the snapshot's own revision, or it is another backup's.
                anyhow::ensure!(
                    manifest.revision == base,
                    "the archive's snapshot is at revision {}, not {base} where the chain of {backup} starts",
                    manifest.revision
                );
                Some(along_chain(&location, &out, &backup, base, &point, &s3).await?)
            }
            None => None,
        };
        Ok::<_, anyhow::Error>(ouroboros_crds::sidecar::FetchReport { manifest, point })
    }
    .await;
    match result {
        Ok(report) => {
            let json = serde_json::to_string(&report)?;
            // The restore reads the revision from the termination message when no EtcdBackup names it.
            termination_message(&json);
            println!("{json}");
            Ok(())
        }
        Err(e) => {
            let message = format!("{location}: {e:#}");
            termination_message(&message);
            let damaged = e
                .downcast_ref::<ouroboros_backup_sidecar::fetch::FetchError>()
                .is_some_and(|f| f.is_damage());
            if damaged {
                eprintln!("Error: {message}");
                std::process::exit(EXIT_DAMAGED);
            }
            anyhow::bail!(message)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The workspace compiles rustls with ring only; installing it explicitly keeps it the provider
    // should a dependency ever enable another one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    if let Some(command) = args.command {
        return run_command(command).await;
    }
    let tls = match &args.tls_dir {
        None => None,
        Some(dir) => {
            let read = |f: &str| {
                std::fs::read(dir.join(f))
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.join(f).display()))
            };
            Some(ClientTls {
                ca: read("ca.crt")?,
                cert: read("tls.crt")?,
                key: read("tls.key")?,
                server_name: args.tls_server_name.clone(),
            })
        }
    };
    let Some(api_tls_dir) = &args.api_tls_dir else {
        anyhow::bail!("--api-tls-dir is required: the API is served to the operator over mutual TLS only");
    };
    let api_tls = ReloadingConfig::load(api_tls_dir, RELOAD_EVERY)?;
    let api = Api::new(args.etcd_endpoint.clone(), tls.map(std::sync::Arc::new));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %args.listen, etcd = %args.etcd_endpoint, "backup sidecar serving (mutual TLS)");
    serve(
        listener,
        std::sync::Arc::new(api_tls),
        router(api.clone()),
        async {
            // The kubelet stops containers with SIGTERM; without this the pod waits out its grace period.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        },
    )
    .await;
    // The pod is going away (its cluster was deleted, or its member is restarted): a running backup
    // cannot finish, so its upload is aborted rather than left half-written.
    api.stop_all("the member's pod is shutting down", SHUTDOWN_WAIT)
        .await;
    Ok(())
}

/// How long a stopping sidecar waits for running backups to abort their uploads; well inside the
/// pod's termination grace period.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
