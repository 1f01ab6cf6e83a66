//! Fetching a backup for a restore: download the archive, unpack it, and verify it before anyone may
//! use it. The snapshot must hash to etcd's own trailer, to the manifest's sha256, and (when the
//! caller knows it) to the sha256 recorded when the backup was taken. Only then are `snapshot.db` and
//! `manifest.json` renamed into place; a failure leaves nothing in the output directory that could be
//! taken for a verified snapshot.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
};

use aws_sdk_s3::primitives::ByteStream;

use crate::{
    archive::{MANIFEST_ENTRY, Manifest, SNAPSHOT_ENTRY},
    store::{Store, StoreError},
    verify::{TrailerVerifier, VerifyError},
};

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Reading the archive from the store failed (missing object, credentials, network).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The archive is not a readable tar.gz (truncated or corrupted).
    #[error("the archive is damaged: {0}")]
    Damaged(String),
    /// The archive lacks the snapshot or the manifest.
    #[error("the archive has no {0} entry")]
    Missing(&'static str),
    /// The snapshot does not match etcd's trailer.
    #[error(transparent)]
    Trailer(#[from] VerifyError),
    /// The snapshot, the manifest and the expected digest disagree.
    #[error("sha256 mismatch: {0}")]
    Mismatch(String),
    /// The archive is encrypted and no identity was given.
    #[error(
        "the archive is age-encrypted and no identity was given: name a Secret whose `identity` key holds \
         its age secret key in the EtcdRestore's spec.encryption (or the cluster's spec.backup.encryption)"
    )]
    NoIdentity,
    /// The archive is encrypted to none of the identities given (a key was rotated, or the wrong
    /// Secret is named): the archive itself may be sound.
    #[error(
        "decrypting the archive: it is encrypted to none of the age identities given; name the Secret whose \
         `identity` matches the recipient it was encrypted to"
    )]
    WrongKey,
    /// The archive could not be decrypted with the identities given.
    #[error("decrypting the archive: {0}")]
    Decrypt(String),
}

impl FetchError {
    /// Whether the archive itself is shown not to check out (damaged, incomplete, or different from
    /// what was recorded), as opposed to not being read at all (the store, the disk, the key).
    pub fn is_damage(&self) -> bool {
        match self {
            FetchError::Damaged(_)
            | FetchError::Missing(_)
            | FetchError::Trailer(_)
            | FetchError::Mismatch(_)
            | FetchError::Decrypt(_) => true,
            FetchError::Store(_) | FetchError::Io { .. } | FetchError::NoIdentity | FetchError::WrongKey => {
                false
            }
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.display().to_string();
    move |source| FetchError::Io { action, path, source }
}

/// Unpacks and verifies an archive read from `archive` into `out_dir` (blocking: call from a
/// blocking task). Nothing named `SNAPSHOT_ENTRY` appears in `out_dir` unless every check passed.
pub fn unpack_and_verify(
    archive: impl Read,
    out_dir: &Path,
    expected_sha256: Option<&str>,
    identities: &[age::x25519::Identity],
) -> Result<Manifest, FetchError> {
    let snapshot_tmp = out_dir.join(format!(".{SNAPSHOT_ENTRY}.partial"));
    let result = unpack(archive, &snapshot_tmp, identities).and_then(|(digest, manifest)| {
        if manifest.sha256 != digest {
            return Err(FetchError::Mismatch(format!(
                "the snapshot hashes to {digest}, its manifest says {}",
                manifest.sha256
            )));
        }
        if let Some(want) = expected_sha256.filter(|w| *w != digest) {
            return Err(FetchError::Mismatch(format!(
                "the snapshot hashes to {digest}, the backup recorded {want}"
            )));
        }
        Ok(manifest)
    });
    let manifest = match result {
        Ok(manifest) => manifest,
        Err(e) => {
            let _ = std::fs::remove_file(&snapshot_tmp);
            return Err(e);
        }
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| FetchError::Damaged(e.to_string()))?;
    let manifest_path = out_dir.join(MANIFEST_ENTRY);
    std::fs::write(&manifest_path, json).map_err(io("writing", &manifest_path))?;
    let snapshot = out_dir.join(SNAPSHOT_ENTRY);
    std::fs::rename(&snapshot_tmp, &snapshot).map_err(io("renaming", &snapshot_tmp))?;
    Ok(manifest)
}

/// Bytes handed from the decompressing thread to the hashing and writing one at a time.
const BLOCK: usize = 1 << 20;

/// Writes the snapshot entry to `snapshot_tmp` and returns its verified trailer digest and the manifest.
fn unpack(
    archive: impl Read,
    snapshot_tmp: &Path,
    identities: &[age::x25519::Identity],
) -> Result<(String, Manifest), FetchError> {
    let damaged = |e: std::io::Error| FetchError::Damaged(e.to_string());
    // Encrypted or not is read from the archive itself, not its name: a renamed object still opens.
    let (encrypted, input) =
        crate::crypt::sniff(std::io::BufReader::with_capacity(BLOCK, archive)).map_err(damaged)?;
    let plain: Box<dyn Read> = if encrypted {
        if identities.is_empty() {
            return Err(FetchError::NoIdentity);
        }
        let decrypt = |e: age::DecryptError| match e {
            age::DecryptError::NoMatchingKeys => FetchError::WrongKey,
            e => FetchError::Decrypt(e.to_string()),
        };
        let reader = age::Decryptor::new_buffered(input)
            .map_err(decrypt)?
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(decrypt)?;
        Box::new(std::io::BufReader::with_capacity(BLOCK, reader))
    } else {
        Box::new(input)
    };
    // The codec is told by the stream's first bytes, whatever the archive's name says. Archives are
    // concatenated gzip members or zstd frames: a single-member decoder would stop after the first
    // MiB; both decoders here read on to the end.
    let mut plain = plain;
    let mut head = [0u8; 4];
    let n = read_full(&mut plain, &mut head).map_err(damaged)?;
    let plain = std::io::Cursor::new(head[..n].to_vec()).chain(plain);
    let decompressed: Box<dyn Read> = if head[..n] == ZSTD_MAGIC {
        Box::new(zstd::stream::read::Decoder::new(plain).map_err(damaged)?)
    } else {
        Box::new(flate2::read::MultiGzDecoder::new(plain))
    };
    let mut tar = tar::Archive::new(decompressed);
    let mut manifest: Option<Manifest> = None;
    let mut digest: Option<String> = None;
    for entry in tar.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path: PathBuf = entry.path().map_err(damaged)?.into_owned();
        match path.to_str() {
            Some(SNAPSHOT_ENTRY) => digest = Some(write_verified(&mut entry, snapshot_tmp)?),
            Some(MANIFEST_ENTRY) => {
                let mut s = String::new();
                entry.read_to_string(&mut s).map_err(damaged)?;
                manifest = Some(
                    serde_json::from_str(&s).map_err(|e| FetchError::Damaged(format!("manifest: {e}")))?,
                );
            }
            _ => {}
        }
    }
    // tar stops at its end-of-archive block, before the last gzip member's CRC and size (or zstd
    // frame's checksum) are read: draining the decoder checks them, so damage anywhere in the file
    // is refused.
    std::io::copy(&mut tar.into_inner(), &mut std::io::sink()).map_err(damaged)?;
    let digest = digest.ok_or(FetchError::Missing(SNAPSHOT_ENTRY))?;
    let manifest = manifest.ok_or(FetchError::Missing(MANIFEST_ENTRY))?;
    Ok((digest, manifest))
}

/// How a zstd frame begins.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Reads as many bytes as fit in `buf` (fewer only at the end).
pub(crate) fn read_full(from: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies `from` into a new file at `path` and returns the database's digest once etcd's trailer
/// matches. Hashing and writing run on a second thread, beside the decompression that `from` does,
/// with two blocks in flight and their buffers reused.
fn write_verified(from: &mut impl Read, path: &Path) -> Result<String, FetchError> {
    let (to_writer, blocks) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    let (give_back, returned) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<String, FetchError> {
            let mut out = std::fs::File::create(path).map_err(io("creating", path))?;
            let mut verifier = TrailerVerifier::new();
            for block in blocks {
                verifier.update(&block);
                out.write_all(&block).map_err(io("writing", path))?;
                let _ = give_back.try_send(block);
            }
            out.sync_all().map_err(io("syncing", path))?;
            Ok(verifier.finish()?)
        });
        let read = loop {
            let mut block = returned.try_recv().unwrap_or_default();
            block.resize(BLOCK, 0);
            match read_full(from, &mut block) {
                Ok(0) => break Ok(()),
                Ok(n) => block.truncate(n),
                Err(e) => break Err(FetchError::Damaged(e.to_string())),
            }
            // A closed channel means the writer failed; its error is the one reported.
            if to_writer.send(block).is_err() {
                break Ok(());
            }
        };
        drop(to_writer);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(FetchError::Damaged("the writing thread panicked".into())));
        read.and(written)
    })
}

/// A `Read` over the chunks a download sends; a download error reads as an error, never as the end
/// of the archive, so a cut-off download cannot pass for a short but complete one.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Where an archive is, as its location URL says (`s3://bucket/key` or `file:///dir/archive`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An S3 object.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// A file.
    File {
        /// Its directory.
        dir: PathBuf,
        /// Its name.
        name: String,
    },
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
                    Ok(Location::S3 {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                    })
                }
                _ => Err(format!("{url:?} is not s3://<bucket>/<key>")),
            };
        }
        if let Some(path) = url.strip_prefix("file://") {
            let path = Path::new(path);
            return match (path.is_absolute(), path.parent(), path.file_name()) {
                (true, Some(dir), Some(name)) => Ok(Location::File {
                    dir: dir.to_path_buf(),
                    name: name.to_string_lossy().into_owned(),
                }),
                _ => Err(format!("{url:?} is not file:///<absolute path>")),
            };
        }
        Err(format!("{url:?}: a location starts with s3:// or file://"))
    }
}

/// Downloads `name` from `store` and leaves a verified `snapshot.db` and `manifest.json` in `out_dir`.
/// The archive is unpacked as it arrives, with no copy of it on disk.
pub async fn fetch(
    store: &Store,
    name: &str,
    out_dir: &Path,
    expected_sha256: Option<&str>,
    identities: &[age::x25519::Identity],
) -> Result<Manifest, FetchError> {
    let ids = identities.to_vec();
    tokio::fs::create_dir_all(out_dir)
        .await
        .map_err(io("creating", out_dir))?;
    let (out, expected) = (out_dir.to_path_buf(), expected_sha256.map(str::to_owned));
    let joined = |r: Result<Result<Manifest, FetchError>, tokio::task::JoinError>| {
        r.map_err(|e| FetchError::Damaged(format!("the unpacking task failed: {e}")))?
    };
    match store {
        Store::Dir(dir) => {
            let from = dir.join(name);
            let file = std::fs::File::open(&from).map_err(|source| {
                FetchError::Store(StoreError::Io {
                    action: "opening",
                    path: from.display().to_string(),
                    source,
                })
            })?;
            joined(
                tokio::task::spawn_blocking(move || unpack_and_verify(file, &out, expected.as_deref(), &ids))
                    .await,
            )
        }
        Store::S3 { client, config } => {
            let key = format!("{}{name}", config.prefix);
            let got = client
                .get_object()
                .bucket(&config.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| crate::store::sdk_error("get", &config.bucket, &key, e))?;
            let (chunks, rx) = tokio::sync::mpsc::channel(16);
            let unpacker = tokio::task::spawn_blocking(move || {
                let reader = ChunkReader {
                    chunks: rx,
                    current: bytes::Bytes::new(),
                };
                unpack_and_verify(reader, &out, expected.as_deref(), &ids)
            });
            let mut body: ByteStream = got.body;
            let downloaded = loop {
                match body.try_next().await {
                    Ok(Some(chunk)) => {
                        // A closed channel means the unpacker stopped; its error is the one reported.
                        if chunks.send(Ok(chunk)).await.is_err() {
                            break Ok(());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        let _ = chunks.send(Err(e.to_string())).await;
                        break Err(FetchError::Store(crate::store::s3_error(
                            "get",
                            &config.bucket,
                            &key,
                            e,
                        )));
                    }
                }
            };
            drop(chunks);
            let unpacked = joined(unpacker.await);
            downloaded?;
            unpacked
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A complete gzip archive of a `len`-byte database, as the pipeline writes it.
    fn archive(len: usize) -> (Vec<u8>, String) {
        archive_with(crate::archive::Codec::Gzip, len)
    }

    fn archive_with(codec: crate::archive::Codec, len: usize) -> (Vec<u8>, String) {
        use sha2::{Digest, Sha256};
        let db: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let digest = hex::encode(Sha256::digest(&db));
        let mut snapshot = db;
        snapshot.extend_from_slice(&Sha256::digest(&snapshot));
        let manifest = Manifest {
            format_version: crate::archive::FORMAT_VERSION,
            sha256: digest.clone(),
            raw_size: snapshot.len() as u64,
            ..Manifest::default()
        };
        let gz = crate::archive::ParallelCompressor::new(Vec::new(), codec, 1, 2).unwrap();
        let mut tar = crate::archive::TarStream::start(gz, snapshot.len() as u64, 0).unwrap();
        tar.snapshot_bytes(&snapshot).unwrap();
        let json = serde_json::to_vec(&manifest).unwrap();
        (tar.finish(&json, 0).unwrap().finish().unwrap(), digest)
    }

    fn chunks(parts: Vec<Result<bytes::Bytes, String>>) -> ChunkReader {
        let (tx, rx) = tokio::sync::mpsc::channel(parts.len().max(1));
        for p in parts {
            tx.try_send(p).unwrap();
        }
        ChunkReader {
            chunks: rx,
            current: bytes::Bytes::new(),
        }
    }

    fn out_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ouroboros-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_archive_arriving_in_pieces_verifies_and_a_cut_off_download_leaves_nothing() {
        let (bytes, digest) = archive(3 * (1 << 20) + 4321);
        let pieces = |upto: usize| {
            bytes[..upto]
                .chunks(64 << 10)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>()
        };
        let dir = out_dir("whole");
        let m = unpack_and_verify(chunks(pieces(bytes.len())), &dir, Some(&digest), &[]).unwrap();
        assert_eq!(m.sha256, digest);
        assert!(dir.join(SNAPSHOT_ENTRY).exists());

        // The store fails half-way: an error, never a short archive taken for a whole one.
        let mut cut = pieces(bytes.len() / 2);
        cut.push(Err("connection reset".into()));
        let dir = out_dir("cut");
        let err = unpack_and_verify(chunks(cut), &dir, None, &[]).unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "something was left");

        // The stream simply ends early.
        let dir = out_dir("short");
        let err = unpack_and_verify(chunks(pieces(bytes.len() - 100)), &dir, None, &[]).unwrap_err();
        assert!(matches!(err, FetchError::Damaged(_)), "{err}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "something was left");
    }

    #[test]
    fn a_zstd_archive_verifies_and_damage_anywhere_in_it_is_refused() {
        let (bytes, digest) = archive_with(crate::archive::Codec::Zstd, 2 * (1 << 20) + 99);
        let whole = || vec![Ok(bytes::Bytes::copy_from_slice(&bytes))];
        let dir = out_dir("zstd");
        let m = unpack_and_verify(chunks(whole()), &dir, Some(&digest), &[]).unwrap();
        assert_eq!(m.sha256, digest);
        // One byte flipped in each place: the first frame, the middle, the last frame's checksum.
        for at in [100, bytes.len() / 2, bytes.len() - 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let dir = out_dir("zstd-bad");
            let err = unpack_and_verify(chunks(vec![Ok(bad.into())]), &dir, None, &[]).unwrap_err();
            assert!(err.is_damage(), "at {at}: {err}");
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "something was left");
        }
    }

    #[test]
    fn locations_parse_as_status_writes_them() {
        assert_eq!(
            "s3://etcd-backups/prod/ns/main/20261121T000000Z-b.tar.gz".parse(),
            Ok(Location::S3 {
                bucket: "etcd-backups".into(),
                key: "prod/ns/main/20261121T000000Z-b.tar.gz".into()
            })
        );
        assert_eq!(
            "file:///backups/main-backups/ns/main/x.tar.gz".parse(),
            Ok(Location::File {
                dir: "/backups/main-backups/ns/main".into(),
                name: "x.tar.gz".into()
            })
        );
        for bad in [
            "s3://bucket",
            "s3:///key",
            "s3://b/dir/",
            "file://relative/x",
            "http://x/y",
            "",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad}");
        }
    }
}
