//! Takes a full backup's snapshot to a chosen point of its chain: what `etcd-backup-sidecar
//! replay` does in a restore before the members are restored from the result.
//!
//! The chain is checked whole before anything starts (a hole below the target, a damaged chunk:
//! refused, nothing written); then the snapshot is restored without a revision bump into scratch
//! space, a private etcd is started on it with [`REPLAY_ETCD_FLAGS`], the chain is replayed up to
//! the point, and that etcd's snapshot is written to `out`, its revision read back from its bytes.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use ouroboros_crds::delta::{ChainError, ChunkName, chain_to};

use super::{
    format::{Chunk, FormatError},
    replay::{KeepAlive, REPLAY_ETCD_FLAGS, ReplayError, replay},
};
use crate::store::{Store, StoreError};

/// How long the private etcd may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where to take the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The chain's last stored revision.
    End,
    /// Exactly this revision.
    Revision(u64),
    /// The last revision the sidecar saw at or before this instant (Unix ms).
    Time(i64),
}

/// What to take where.
#[derive(Debug)]
pub struct PointRequest<'a> {
    /// The full backup's snapshot (as `fetch` leaves it).
    pub snapshot: &'a Path,
    /// Where the snapshot at the point is written.
    pub out: &'a Path,
    /// The full backup (EtcdBackup name) and its revision.
    pub backup: &'a str,
    /// Its revision.
    pub base: u64,
    /// The store holding the chain (the backup's destination).
    pub store: &'a Store,
    /// The point.
    pub target: Target,
    /// Directory with the `etcd` and `etcdutl` binaries.
    pub etcd_bin_dir: &'a Path,
    /// Scratch space (emptied first).
    pub scratch: &'a Path,
}

/// The point reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reached {
    /// Its revision.
    pub revision: u64,
    /// When the sidecar saw that revision (Unix ms); absent when it is the backup's own.
    pub seen_ms: Option<i64>,
    /// Revisions replayed.
    pub applied: u64,
    /// Chunks read.
    pub chunks: usize,
    /// The chain's last stored revision: what a restore to this point leaves out is after it.
    pub chain_end: u64,
}

/// Why no snapshot at the point was made.
#[derive(Debug, thiserror::Error)]
pub enum PointError {
    /// The chain cannot reach the point.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Listing or reading the store failed.
    #[error("reading the chain: {0}")]
    Store(#[from] StoreError),
    /// A chunk is damaged.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Replaying failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// A step around the private etcd failed.
    #[error("{action}: {detail}")]
    Step {
        /// What was attempted.
        action: &'static str,
        /// What went wrong.
        detail: String,
    },
}

fn step(action: &'static str) -> impl FnOnce(String) -> PointError {
    move |detail| PointError::Step { action, detail }
}

/// Makes the snapshot at `req.target`.
pub async fn to_point(req: &PointRequest<'_>) -> Result<Reached, PointError> {
    // 1. The chain, whole and undamaged up to the point, before anything is started.
    let names: Vec<ChunkName> = req
        .store
        .list()
        .await?
        .iter()
        .filter_map(|n| ChunkName::parse(n))
        .collect();
    let whole = chain_to(req.backup, req.base, &names, None);
    let chain = match req.target {
        Target::Revision(r) => chain_to(req.backup, req.base, &names, Some(r))?,
        Target::End | Target::Time(_) => whole.clone()?,
    };
    let chain_end = whole.map_or(chain.end, |w| w.end);
    let mut chunks = Vec::with_capacity(chain.chunks.len());
    for name in &chain.chunks {
        let body = req.store.get_small(&name.object()).await?;
        chunks.push(Chunk::decode(name, &body)?);
    }
    let end = match req.target {
        Target::Time(ms) => chunks
            .iter()
            .flat_map(|c| &c.revisions)
            .take_while(|r| r.seen_ms <= ms)
            .map(|r| r.revision)
            .last()
            .unwrap_or(req.base),
        Target::End | Target::Revision(_) => chain.end,
    };

    // 2. The snapshot restored as it was taken, a private etcd on it.
    let etcd = PrivateEtcd::start(req.snapshot, req.scratch, req.etcd_bin_dir, &REPLAY_ETCD_FLAGS).await?;
    let endpoint = etcd.endpoint.clone();
    let result = replay_and_snapshot(req, &endpoint, chunks, end).await;
    etcd.stop().await;
    let (revision, seen_ms, applied) = result?;
    Ok(Reached {
        revision,
        seen_ms,
        applied,
        chunks: chain.chunks.len(),
        chain_end,
    })
}

/// An etcd of its own on a snapshot restored as it was taken (no revision bump), on loopback
/// ports; killed when dropped.
#[derive(Debug)]
pub struct PrivateEtcd {
    child: tokio::process::Child,
    /// Its client URL.
    pub endpoint: String,
}

impl PrivateEtcd {
    /// Restores `snapshot` into `scratch` (emptied first) with `etcdutl` from `bin_dir` and starts
    /// `etcd` on it with `flags`.
    pub async fn start(
        snapshot: &Path,
        scratch: &Path,
        bin_dir: &Path,
        flags: &[&str],
    ) -> Result<Self, PointError> {
        let _ = tokio::fs::remove_dir_all(scratch).await;
        tokio::fs::create_dir_all(scratch)
            .await
            .map_err(|e| step("creating the scratch directory")(e.to_string()))?;
        let data = scratch.join("data");
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let peer = format!("http://127.0.0.1:{peer_port}");
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let restored = tokio::process::Command::new(bin_dir.join("etcdutl"))
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", "replay", "--initial-cluster", &format!("replay={peer}")])
            .args(["--initial-advertise-peer-urls", &peer])
            .output()
            .await
            .map_err(|e| step("running etcdutl snapshot restore")(e.to_string()))?;
        if !restored.status.success() {
            return Err(step("etcdutl snapshot restore")(
                String::from_utf8_lossy(&restored.stderr).into_owned(),
            ));
        }
        let child = tokio::process::Command::new(bin_dir.join("etcd"))
            .args(["--name", "replay", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("replay={peer}")])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| step("starting the replay etcd")(e.to_string()))?;
        Ok(Self { child, endpoint })
    }

    /// A client, once it answers.
    pub async fn client(&self) -> Result<etcd_client::Client, PointError> {
        connect(&self.endpoint).await
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn replay_and_snapshot(
    req: &PointRequest<'_>,
    endpoint: &str,
    chunks: Vec<Chunk>,
    end: u64,
) -> Result<(u64, Option<i64>, u64), PointError> {
    let mut client = connect(endpoint).await?;
    let keeper = KeepAlive::start(&mut client).await?;
    // The keeper runs until the snapshot is taken: a lease expiring before would delete keys.
    let outcome = async {
        let replayed = replay(&mut client, &keeper, chunks, req.base, end).await?;
        let revision = write_snapshot(&mut client, req.out).await?;
        Ok::<_, PointError>((replayed, revision))
    }
    .await;
    keeper.stop().await;
    let (replayed, revision) = outcome?;
    if revision != end {
        return Err(step("checking the snapshot")(format!(
            "it holds revision {revision}, the replay reached {end}"
        )));
    }
    Ok((end, replayed.seen_ms, replayed.applied))
}

async fn connect(endpoint: &str) -> Result<etcd_client::Client, PointError> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let last = match etcd_client::Client::connect([endpoint], None).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => return Ok(c),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() > deadline {
            return Err(step("waiting for the replay etcd")(last));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Streams the etcd's snapshot to `out` (through a temporary file) and returns its revision, read
/// from its bytes.
async fn write_snapshot(client: &mut etcd_client::Client, out: &Path) -> Result<u64, PointError> {
    use tokio::io::AsyncWriteExt as _;
    let tmp: PathBuf = out.with_extension("partial");
    let io = |action: &'static str| move |e: std::io::Error| step(action)(e.to_string());
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(io("creating the snapshot"))?;
    let mut scanner = crate::bbolt::RevisionScanner::new();
    let mut stream = client
        .snapshot()
        .await
        .map_err(|e| step("asking for the snapshot")(e.to_string()))?;
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|e| step("reading the snapshot")(e.to_string()))?
    {
        scanner.feed(msg.blob());
        file.write_all(msg.blob())
            .await
            .map_err(io("writing the snapshot"))?;
    }
    file.sync_all().await.map_err(io("syncing the snapshot"))?;
    drop(file);
    let revision = scanner
        .revision()
        .map_err(|e| step("reading the snapshot's revision")(e.to_string()))?;
    tokio::fs::rename(&tmp, out)
        .await
        .map_err(io("renaming the snapshot"))?;
    Ok(revision)
}

fn free_port() -> Result<u16, PointError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| step("finding a free port")(e.to_string()))
}
