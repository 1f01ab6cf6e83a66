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

use ouroboros_crds::delta::{Chain, ChainError, ChunkName, chain_to};

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
    /// The same, for a full backup known to have completed at or before the instant (the operator
    /// chooses it so): a chain first seen after it leaves the backup itself as the point, where
    /// [`Target::Time`] refuses (the backup might hold later writes).
    TimeAfterBase(i64),
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

/// The point reached (shared with the operator, which reads it from a restore's fetch).
pub use ouroboros_crds::sidecar::PointReached as Reached;

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

/// Makes the snapshot at `req.target`. The scratch directory is removed afterwards, whatever the
/// outcome.
pub async fn to_point(req: &PointRequest<'_>) -> Result<Reached, PointError> {
    let req = &PointRequest {
        base: ouroboros_crds::delta::effective_base(req.base),
        ..*req
    };
    // `scratch` is emptied: the input and the output must not live in it.
    for (what, path) in [("--snapshot", req.snapshot), ("--out", req.out)] {
        if path.starts_with(req.scratch) {
            return Err(step("checking the paths")(format!(
                "{what} {} is inside the scratch directory {}, which is emptied",
                path.display(),
                req.scratch.display()
            )));
        }
    }
    // 1. The chain, whole up to the point, before anything is written.
    let names: Vec<ChunkName> = req
        .store
        .list()
        .await?
        .iter()
        .filter_map(|n| ChunkName::parse(n))
        .collect();
    let whole = chain_to(req.backup, req.base, &names, None);
    let (chain, hole) = match (req.target, &whole) {
        (Target::Revision(r), _) => (chain_to(req.backup, req.base, &names, Some(r))?, None),
        (Target::End, _) => (whole.clone()?, None),
        (Target::Time(_) | Target::TimeAfterBase(_), Ok(w)) => (w.clone(), None),
        // A hole above a time's point does not matter: the part of the chain before it is read,
        // and the point is refused if it may lie in the hole (see `in_scratch`).
        (Target::Time(_) | Target::TimeAfterBase(_), Err(ChainError::Gap { from, .. }))
            if *from > req.base + 1 =>
        {
            (
                chain_to(req.backup, req.base, &names, Some(from - 1))?,
                whole.clone().err(),
            )
        }
        (Target::Time(_) | Target::TimeAfterBase(_), Err(e)) => return Err(e.clone().into()),
    };
    let chain_end = whole.map_or(chain.end, |w| w.end);
    let result = in_scratch(req, &chain, hole).await;
    let _ = tokio::fs::remove_dir_all(req.scratch).await;
    let (revision, seen_ms, applied, last_seen_ms) = result?;
    Ok(Reached {
        revision,
        seen_ms,
        applied,
        chunks: chain.chunks.len(),
        chain_end,
        // Known when the chunks read reach the chain's end (a target below it reads fewer).
        chain_end_seen_ms: last_seen_ms.filter(|_| chain.end == chain_end),
    })
}

/// Downloads and checks every chunk (kept compressed on disk, so memory holds one at a time),
/// finds the point's revision, and replays up to it on a private etcd. Returns the revision
/// reached, when it was seen, how many revisions were applied, and when the last revision read was
/// seen.
async fn in_scratch(
    req: &PointRequest<'_>,
    chain: &Chain,
    hole: Option<ChainError>,
) -> Result<(u64, Option<i64>, u64, Option<i64>), PointError> {
    let _ = tokio::fs::remove_dir_all(req.scratch).await;
    let chunk_dir = req.scratch.join("chunks");
    tokio::fs::create_dir_all(&chunk_dir)
        .await
        .map_err(|e| step("creating the scratch directory")(e.to_string()))?;
    let mut seen: Vec<(u64, i64)> = Vec::new();
    for name in &chain.chunks {
        let body = req.store.get_small(&name.object()).await?;
        let chunk = Chunk::decode(name, &body)?;
        // Overlapping chunks (a follow resumed elsewhere) repeat revisions: each counts once.
        let last = seen.last().map_or(req.base, |(r, _)| *r);
        seen.extend(
            chunk
                .revisions
                .iter()
                .filter(|r| r.revision > last)
                .map(|r| (r.revision, r.seen_ms)),
        );
        tokio::fs::write(chunk_dir.join(name.object()), body)
            .await
            .map_err(|e| step("keeping a chunk in scratch space")(e.to_string()))?;
    }
    if let (Target::Time(ms) | Target::TimeAfterBase(ms), Some(hole)) = (req.target, hole) {
        // Every revision before the hole was seen by then: the point may be in the hole or after.
        if seen.last().is_none_or(|(_, at)| *at <= ms) {
            return Err(hole.into());
        }
    }
    let end = match req.target {
        Target::TimeAfterBase(ms) if seen.first().is_some_and(|(_, first)| *first > ms) => req.base,
        Target::Time(ms) | Target::TimeAfterBase(ms) => match seen.first() {
            Some((_, first)) if *first > ms => {
                return Err(step("choosing the revision at the time")(format!(
                    "the chain's first revision was seen after {}; backup {} itself may hold writes \
                     made after that time: restore an older backup",
                    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string()),
                    req.backup
                )));
            }
            _ => seen
                .iter()
                .take_while(|(_, at)| *at <= ms)
                .last()
                .map_or(req.base, |(r, _)| *r),
        },
        Target::End | Target::Revision(_) => chain.end,
    };
    if end == req.base {
        // Nothing to replay (no chunk is stored yet, or the chain starts after the time): the full
        // backup is the point, as it is.
        if req.snapshot != req.out {
            tokio::fs::copy(req.snapshot, req.out)
                .await
                .map_err(|e| step("copying the snapshot")(e.to_string()))?;
        }
        return Ok((req.base, None, 0, None));
    }
    let etcd = PrivateEtcd::start(
        req.snapshot,
        &req.scratch.join("etcd"),
        req.etcd_bin_dir,
        &REPLAY_ETCD_FLAGS,
    )
    .await?;
    // Decoded again one at a time as the replay goes; they were checked above, so a failure here
    // leaves a hole that the replay refuses.
    let chunks = chain
        .chunks
        .iter()
        .filter_map(|name| Chunk::decode(name, &std::fs::read(chunk_dir.join(name.object())).ok()?).ok());
    let result = replay_and_snapshot(req, &etcd, chunks, end).await;
    etcd.stop().await;
    let last_seen_ms = seen.last().map(|(_, at)| *at);
    result.map(|(revision, seen_ms, applied)| (revision, seen_ms, applied, last_seen_ms))
}

/// An etcd of its own on a snapshot restored as it was taken (no revision bump), on loopback
/// ports; killed when dropped.
#[derive(Debug)]
pub struct PrivateEtcd {
    child: tokio::process::Child,
    /// Its client URL.
    pub endpoint: String,
    /// Its log, quoted when it does not come up.
    log: PathBuf,
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
        let log = scratch.join("etcd.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| step("creating the etcd log")(e.to_string()))?;
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
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| step("starting the replay etcd")(e.to_string()))?;
        Ok(Self { child, endpoint, log })
    }

    /// A client, once it answers; the end of etcd's log says why when it does not.
    pub async fn client(&self) -> Result<etcd_client::Client, PointError> {
        connect(&self.endpoint).await.map_err(|e| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            step("waiting for the replay etcd")(format!("{e}; its log ends with:\n{tail}"))
        })
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn replay_and_snapshot(
    req: &PointRequest<'_>,
    etcd: &PrivateEtcd,
    chunks: impl IntoIterator<Item = Chunk>,
    end: u64,
) -> Result<(u64, Option<i64>, u64), PointError> {
    let mut client = etcd.client().await?;
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

/// A client of `endpoint` once it answers, or the last error after [`START_TIMEOUT`].
async fn connect(endpoint: &str) -> Result<etcd_client::Client, String> {
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
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Streams the etcd's snapshot to `out` (through a temporary file) and returns its revision, read
/// from its bytes.
async fn write_snapshot(client: &mut etcd_client::Client, out: &Path) -> Result<u64, PointError> {
    let tmp: PathBuf = out.with_extension("partial");
    let written = stream_snapshot(client, &tmp).await;
    match written {
        Ok(revision) => {
            tokio::fs::rename(&tmp, out)
                .await
                .map_err(|e| step("renaming the snapshot")(e.to_string()))?;
            Ok(revision)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

async fn stream_snapshot(client: &mut etcd_client::Client, to: &Path) -> Result<u64, PointError> {
    use tokio::io::AsyncWriteExt as _;
    let io = |action: &'static str| move |e: std::io::Error| step(action)(e.to_string());
    let mut file = tokio::fs::File::create(to)
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
    scanner
        .revision()
        .map_err(|e| step("reading the snapshot's revision")(e.to_string()))
}

fn free_port() -> Result<u16, PointError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| step("finding a free port")(e.to_string()))
}
