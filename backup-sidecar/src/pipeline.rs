//! One backup, end to end: etcd's snapshot stream → trailer check and revision scan → tar → parallel
//! gzip or zstd → store, all overlapping, with bounded channels between the stages so memory does not grow
//! with the database. Any failure aborts the upload; the manifest is written only after the archive is
//! complete, so nothing incomplete ever looks like a backup.

use std::io::Write as _;

use etcd_client::Client;
use ouroboros_crds::{
    retention::{ENCRYPTED_SUFFIX, StoredName, archive_name},
    sidecar::RecordedHash,
};
use tokio::sync::{mpsc, watch};

use crate::{
    archive::{Codec, FORMAT_VERSION, Manifest, ParallelCompressor, TarStream},
    bbolt::{RevisionError, RevisionScanner, SnapshotRevisions},
    store::{Store, StoreError},
    verify::{TRAILER, TrailerVerifier, VerifyError},
};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct Request {
    /// The EtcdBackup's name; part of the object names.
    pub name: String,
    /// The EtcdCluster's name.
    pub cluster_name: String,
    /// The EtcdCluster's `metadata.uid`, recorded in the manifest.
    pub cluster_uid: Option<String>,
    /// Stops the backup (its cluster was deleted, the sidecar is shutting down): the upload is
    /// aborted and nothing is committed.
    pub cancel: Cancel,
    /// The member (pod) the snapshot comes from.
    pub member: String,
    /// Compression level, 0 to 9 (gzip's 0 stores).
    pub compression_level: u32,
    /// The codec.
    pub codec: Codec,
    /// Compression threads.
    pub workers: usize,
    /// Encrypt the archive to these age recipients; `None` stores it unencrypted.
    pub encrypt_to: Option<Vec<age::x25519::Recipient>>,
    /// How far it is, for the API to report while it runs.
    pub progress: std::sync::Arc<Progress>,
}

/// How much of the snapshot a running backup has read from etcd, of the size etcd announced with
/// its first message. Written by the backup, read by the API's state requests.
#[derive(Debug, Default)]
pub struct Progress {
    streamed: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Bytes read so far, and the expected total once etcd announced it.
    pub fn read(&self) -> (u64, Option<u64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.total.load(Relaxed);
        (self.streamed.load(Relaxed), (total > 0).then_some(total))
    }

    fn announce(&self, total: u64) {
        self.total.store(total, std::sync::atomic::Ordering::Relaxed);
    }

    fn add(&self, bytes: usize) {
        self.streamed
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A way to stop a running backup, with the reason it reports.
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<Option<String>>);

/// The sending side of [`Cancel`].
#[derive(Debug)]
pub struct Canceller(watch::Sender<Option<String>>);

impl Cancel {
    /// A cancel and the handle that fires it.
    pub fn new() -> (Canceller, Cancel) {
        let (tx, rx) = watch::channel(None);
        (Canceller(tx), Cancel(rx))
    }

    /// A backup nobody stops.
    pub fn never() -> Cancel {
        Cancel::new().1
    }

    /// Resolves with the reason once the backup is stopped; never while it is not.
    async fn fired(&mut self) -> String {
        loop {
            if let Some(reason) = self.0.borrow_and_update().clone() {
                return reason;
            }
            if self.0.changed().await.is_err() {
                // The canceller is gone without firing: nothing can stop this backup any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Canceller {
    /// Stops the backup, giving `reason`.
    pub fn cancel(&self, reason: impl Into<String>) {
        self.0.send_replace(Some(reason.into()));
    }
}

/// A stored backup.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The manifest written beside the archive.
    pub manifest: Manifest,
    /// The archive's location URL.
    pub location: String,
    /// The manifest's name in the store.
    pub manifest_name: String,
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The member did not answer.
    #[error("etcd status from the member: {0}")]
    Status(#[source] etcd_client::Error),
    /// The snapshot stream failed (the member died or was cut off mid-stream).
    #[error("etcd snapshot stream after {bytes} bytes: {source}")]
    Stream {
        /// Bytes received before the failure.
        bytes: u64,
        /// Cause.
        #[source]
        source: etcd_client::Error,
    },
    /// The snapshot was empty.
    #[error("etcd sent an empty snapshot")]
    Empty,
    /// The trailer did not match.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The revision could not be read from the snapshot.
    #[error(transparent)]
    Revision(#[from] RevisionError),
    /// Compressing or archiving failed.
    #[error("archiving: {0}")]
    Archive(#[source] std::io::Error),
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stopped on request before it completed.
    #[error("stopped: {0}; the upload was aborted and nothing was committed")]
    Cancelled(String),
}

/// Feeds a `Write` into a channel, for the compressor thread.
struct ChannelWriter(mpsc::Sender<Vec<u8>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(buf.to_vec())
            .map_err(|_| std::io::Error::other("the uploader stopped"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes handed to the uploader at a time when encrypting: age writes 64 KiB chunks, and one
/// channel message per chunk would cost more than it carries.
const ENCRYPTED_BLOCK: usize = 1 << 20;

/// Where the compressed archive goes: straight to the uploader, or through age first.
enum Sink {
    Plain(ChannelWriter),
    Encrypted(age::stream::StreamWriter<std::io::BufWriter<ChannelWriter>>),
}

impl Sink {
    fn new(out: ChannelWriter, encrypt_to: Option<&[age::x25519::Recipient]>) -> std::io::Result<Self> {
        let Some(recipients) = encrypt_to else {
            return Ok(Sink::Plain(out));
        };
        let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| std::io::Error::other(format!("age: {e}")))?;
        let buffered = std::io::BufWriter::with_capacity(ENCRYPTED_BLOCK, out);
        Ok(Sink::Encrypted(encryptor.wrap_output(buffered)?))
    }

    /// Writes what is left: age's last chunk, which an archive cut off without it fails to decrypt.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(_) => Ok(()),
            Sink::Encrypted(w) => w.finish()?.flush(),
        }
    }
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Encrypted(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Encrypted(w) => w.flush(),
        }
    }
}

enum ToCompressor {
    Start(u64),
    Data(Vec<u8>),
    Finish(Vec<u8>),
}

/// The compressor thread: tar and compress (and encrypt) everything it is sent until `Finish`.
fn compress(
    mut rx: mpsc::Receiver<ToCompressor>,
    out: mpsc::Sender<Vec<u8>>,
    codec: Codec,
    level: u32,
    workers: usize,
    encrypt_to: Option<Vec<age::x25519::Recipient>>,
) -> std::io::Result<()> {
    let mtime = jiff::Timestamp::now().as_second().max(0) as u64;
    let Some(ToCompressor::Start(size)) = rx.blocking_recv() else {
        return Err(std::io::Error::other(
            "backup aborted before the snapshot started",
        ));
    };
    let sink = Sink::new(ChannelWriter(out), encrypt_to.as_deref())?;
    let mut tar = TarStream::start(ParallelCompressor::new(sink, codec, level, workers)?, size, mtime)?;
    loop {
        match rx.blocking_recv() {
            Some(ToCompressor::Data(d)) => tar.snapshot_bytes(&d)?,
            Some(ToCompressor::Finish(manifest)) => {
                return tar.finish(&manifest, mtime)?.finish()?.finish();
            }
            Some(ToCompressor::Start(_)) | None => return Err(std::io::Error::other("backup aborted")),
        }
    }
}

/// The manifest's object name: sorts by time, then by zero-padded revision.
pub fn manifest_name(start: jiff::Timestamp, revision: u64, backup: &str) -> String {
    StoredName {
        time: start,
        revision,
        backup: backup.to_owned(),
    }
    .manifest()
}

/// How long the member may take to hash its keyspace: it reads the whole key bucket, seconds per GiB.
/// Past it the backup goes on without a hash, well within the operator's backup deadline.
const HASH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The member's `HashKV` at the snapshot's revision, asked right after the snapshot, or why it is not
/// a hash of the snapshot's data. Never fails the backup: an archive without a hash is still a
/// backup, only one a drill cannot compare.
async fn record_hash(etcd: &mut Client, snapshot: SnapshotRevisions) -> Result<RecordedHash, String> {
    if snapshot.revision == 0 {
        // HashKV at 0 means "the current revision", which need not be the snapshot's.
        return Err("the snapshot is of an empty store (revision 0): nothing to hash".into());
    }
    let revision = i64::try_from(snapshot.revision).map_err(|e| e.to_string())?;
    match hash_of_snapshot(ask_hash(etcd, revision).await?, snapshot) {
        Err(why) if snapshot.effective_compact() == snapshot.revision => {
            // etcd answers HashKV at a compaction's own revision from the hash it kept when that
            // compaction finished, computed with the compaction before (seen on 3.6.16). An idle
            // cluster compacted by the periodic policy is in exactly this case. The current
            // revision's hash is computed afresh, and it is the snapshot's while nothing was written.
            let now = ask_hash(etcd, 0).await?;
            if now.revision == snapshot.revision {
                hash_of_snapshot(now, snapshot)
            } else {
                Err(why)
            }
        }
        decided => decided,
    }
}

/// `HashKV` at `revision`, with the revisions it was computed over.
pub(crate) async fn ask_hash(etcd: &mut Client, revision: i64) -> Result<RecordedHash, String> {
    let answer = etcd
        .hash_kv(revision)
        .await
        .map_err(|e| format!("the member did not hash revision {revision}: {e}"))?;
    // etcd before 3.6 does not say which revision it hashed: the one asked for.
    let hashed = Some(answer.hash_revision())
        .filter(|r| *r > 0)
        .unwrap_or(revision);
    Ok(RecordedHash {
        hash: answer.hash(),
        revision: u64::try_from(hashed).unwrap_or(0),
        compact_revision: u64::try_from(answer.compact_version()).unwrap_or(0),
    })
}

/// `recorded` when it was computed with the compaction the snapshot's data carries; etcd started on
/// the snapshot hashes with that one (resuming a compaction that had not finished).
fn hash_of_snapshot(recorded: RecordedHash, snapshot: SnapshotRevisions) -> Result<RecordedHash, String> {
    let expected = snapshot.effective_compact();
    if recorded.revision != snapshot.revision {
        Err(format!(
            "the member hashed revision {}, not the snapshot's {}",
            recorded.revision, snapshot.revision
        ))
    } else if recorded.compact_revision == expected {
        Ok(recorded)
    } else {
        Err(format!(
            "the member hashed revision {} with compaction at {}, but the snapshot holds compaction at \
             {expected}: a compaction ran between the snapshot and the hash",
            recorded.revision, recorded.compact_revision
        ))
    }
}

/// Takes a backup from `etcd` (a client to exactly one member) into `store`.
pub async fn run(etcd: &mut Client, store: &Store, req: &Request) -> Result<Outcome, PipelineError> {
    let start = jiff::Timestamp::now();
    let status = etcd.status().await.map_err(PipelineError::Status)?;
    let cluster_id = status
        .header()
        .map(|h| format!("{:x}", h.cluster_id()))
        .unwrap_or_default();
    let etcd_version = status.version().to_owned();
    let encrypted = req.encrypt_to.is_some();
    let mut archive_name = archive_name(start, &req.name, req.codec.suffix());
    if encrypted {
        archive_name.push_str(ENCRYPTED_SUFFIX);
    }
    let mut upload = store.begin(&archive_name).await?;

    let (to_compressor, from_feeder) = mpsc::channel::<ToCompressor>(64);
    let (to_uploader, mut from_compressor) = mpsc::channel::<Vec<u8>>(2);
    let (codec, level, workers, encrypt_to) = (
        req.codec,
        req.compression_level,
        req.workers,
        req.encrypt_to.clone(),
    );
    let compressor = tokio::task::spawn_blocking(move || {
        compress(from_feeder, to_uploader, codec, level, workers, encrypt_to)
    });

    let mut cancel = req.cancel.clone();
    let progress = req.progress.clone();
    let feeder = async move {
        let mut stream = etcd
            .snapshot()
            .await
            .map_err(|source| PipelineError::Stream { bytes: 0, source })?;
        let mut verifier = TrailerVerifier::new();
        let mut scanner = RevisionScanner::new();
        let mut started = false;
        loop {
            // Biased: a stop is seen before the next message, however fast the stream is.
            let msg = tokio::select! {
                biased;
                reason = cancel.fired() => return Err(PipelineError::Cancelled(reason)),
                msg = stream.message() => msg.map_err(|source| PipelineError::Stream {
                    bytes: verifier.total(),
                    source,
                })?,
            };
            let Some(msg) = msg else { break };
            let blob = msg.blob().to_vec();
            if !started {
                // The first message tells the database size: everything sent plus what remains.
                let size = msg.remaining_bytes() + blob.len() as u64 + TRAILER as u64;
                progress.announce(size);
                started = true;
                if to_compressor.send(ToCompressor::Start(size)).await.is_err() {
                    break;
                }
            }
            verifier.update(&blob);
            scanner.feed(&blob);
            progress.add(blob.len());
            if to_compressor.send(ToCompressor::Data(blob)).await.is_err() {
                break;
            }
        }
        if !started {
            return Err(PipelineError::Empty);
        }
        let raw_size = verifier.total();
        let sha256 = verifier.finish()?;
        let revisions = scanner.revisions()?;
        let revision = revisions.revision;
        // A stop during the hash is a stop of the backup: nothing is committed after it.
        let hashed = tokio::select! {
            biased;
            reason = cancel.fired() => return Err(PipelineError::Cancelled(reason)),
            hashed = tokio::time::timeout(HASH_TIMEOUT, record_hash(etcd, revisions)) => hashed,
        };
        let (kv_hash, kv_hash_unavailable) = match hashed {
            Ok(Ok(h)) => (Some(h), None),
            Ok(Err(why)) => (None, Some(why)),
            Err(_) => (
                None,
                Some(format!("the member did not hash within {HASH_TIMEOUT:?}")),
            ),
        };
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            cluster_name: req.cluster_name.clone(),
            cluster_id,
            cluster_uid: req.cluster_uid.clone(),
            member: req.member.clone(),
            etcd_version,
            revision,
            sha256,
            raw_size,
            compressed_size: None,
            encrypted,
            archive: None,
            start_time: start.to_string(),
            end_time: jiff::Timestamp::now().to_string(),
            kv_hash,
            kv_hash_unavailable,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| PipelineError::Archive(e.into()))?;
        // A closed channel here means the compressor failed; its own error is reported below.
        let _ = to_compressor.send(ToCompressor::Finish(json)).await;
        Ok::<_, PipelineError>(manifest)
    };
    let uploader = async {
        let mut size = 0u64;
        while let Some(block) = from_compressor.recv().await {
            size += block.len() as u64;
            upload.write(&block).await?;
        }
        Ok::<_, StoreError>(size)
    };
    let (fed, uploaded) = tokio::join!(feeder, uploader);
    let compressed = compressor
        .await
        .map_err(|e| PipelineError::Archive(std::io::Error::other(e)));
    let manifest = match (fed, uploaded, compressed) {
        (Ok(m), Ok(size), Ok(Ok(()))) => Manifest {
            compressed_size: Some(size),
            ..m
        },
        (fed, uploaded, compressed) => {
            upload.abort().await;
            // The first real cause, in pipeline order.
            fed?;
            compressed?.map_err(PipelineError::Archive)?;
            uploaded?;
            return Err(PipelineError::Archive(std::io::Error::other("backup stopped")));
        }
    };
    upload.complete().await?;
    let manifest = Manifest {
        archive: Some(archive_name.clone()),
        ..manifest
    };
    let name = manifest_name(start, manifest.revision, &req.name);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| PipelineError::Archive(e.into()))?;
    store.put_small(&name, json).await?;
    Ok(Outcome {
        location: store.location(&archive_name),
        manifest,
        manifest_name: name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_sort_by_time_then_revision() {
        let t: jiff::Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let a = manifest_name(t, 9, "b");
        let b = manifest_name(t, 10, "b");
        assert!(a < b, "{a} !< {b}");
        assert_eq!(a, "20261121T100000Z-r00000000000000000009-b.manifest.json");
    }

    #[test]
    fn a_hash_counts_only_when_computed_with_the_snapshots_compaction() {
        let hash = |compact_revision| RecordedHash {
            hash: 7,
            revision: 100,
            compact_revision,
        };
        let snapshot = |finished_compact, scheduled_compact| SnapshotRevisions {
            revision: 100,
            finished_compact,
            scheduled_compact,
        };
        assert_eq!(
            hash_of_snapshot(hash(0), snapshot(0, 0)),
            Ok(hash(0)),
            "never compacted"
        );
        assert_eq!(hash_of_snapshot(hash(40), snapshot(40, 40)), Ok(hash(40)));
        // Taken mid-compaction: etcd started on the snapshot finishes it, and so hashes with it.
        assert_eq!(hash_of_snapshot(hash(60), snapshot(40, 60)), Ok(hash(60)));
        let other = RecordedHash {
            revision: 101,
            ..hash(40)
        };
        assert!(
            hash_of_snapshot(other, snapshot(40, 40)).is_err(),
            "another revision's hash"
        );
        let later = hash_of_snapshot(hash(90), snapshot(40, 40)).unwrap_err();
        assert!(
            later.contains("compaction at 90") && later.contains("compaction at 40"),
            "{later}"
        );
    }
}
