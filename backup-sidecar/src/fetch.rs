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
use tokio::io::AsyncWriteExt;

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
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.display().to_string();
    move |source| FetchError::Io { action, path, source }
}

impl Store {
    /// Downloads `name` into the local file `to`.
    pub async fn download(&self, name: &str, to: &Path) -> Result<u64, FetchError> {
        let mut file = tokio::fs::File::create(to).await.map_err(io("creating", to))?;
        let mut total = 0u64;
        match self {
            Store::Dir(dir) => {
                let from = dir.join(name);
                let mut src = tokio::fs::File::open(&from).await.map_err(|source| {
                    FetchError::Store(StoreError::Io {
                        action: "opening",
                        path: from.display().to_string(),
                        source,
                    })
                })?;
                total = tokio::io::copy(&mut src, &mut file)
                    .await
                    .map_err(io("copying to", to))?;
            }
            Store::S3 { client, config } => {
                let key = format!("{}{name}", config.prefix);
                let out = client
                    .get_object()
                    .bucket(&config.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| crate::store::sdk_error("get", &config.bucket, &key, e))?;
                let mut body: ByteStream = out.body;
                while let Some(chunk) = body.try_next().await.map_err(|e| {
                    FetchError::Store(StoreError::S3 {
                        action: "get",
                        bucket: config.bucket.clone(),
                        key: key.clone(),
                        message: e.to_string(),
                    })
                })? {
                    total += chunk.len() as u64;
                    file.write_all(&chunk).await.map_err(io("writing", to))?;
                }
            }
        }
        file.sync_all().await.map_err(io("syncing", to))?;
        Ok(total)
    }
}

/// Unpacks and verifies a downloaded archive into `out_dir` (blocking: call from a blocking task).
/// Nothing named `SNAPSHOT_ENTRY` appears in `out_dir` unless every check passed.
pub fn unpack_and_verify(
    archive: &Path,
    out_dir: &Path,
    expected_sha256: Option<&str>,
) -> Result<Manifest, FetchError> {
    let snapshot_tmp = out_dir.join(format!(".{SNAPSHOT_ENTRY}.partial"));
    let result = unpack(archive, &snapshot_tmp).and_then(|(digest, manifest)| {
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

/// Writes the snapshot entry to `snapshot_tmp` and returns its verified trailer digest and the manifest.
fn unpack(archive: &Path, snapshot_tmp: &Path) -> Result<(String, Manifest), FetchError> {
    let file = std::fs::File::open(archive).map_err(io("opening", archive))?;
    // Archives are concatenated gzip members: a single-member decoder would stop after the first MiB.
    let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)));
    let mut manifest: Option<Manifest> = None;
    let mut digest: Option<String> = None;
    let damaged = |e: std::io::Error| FetchError::Damaged(e.to_string());
    for entry in tar.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path: PathBuf = entry.path().map_err(damaged)?.into_owned();
        match path.to_str() {
            Some(SNAPSHOT_ENTRY) => {
                let mut out = std::fs::File::create(snapshot_tmp).map_err(io("creating", snapshot_tmp))?;
                let mut verifier = TrailerVerifier::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = entry.read(&mut buf).map_err(damaged)?;
                    if n == 0 {
                        break;
                    }
                    verifier.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(io("writing", snapshot_tmp))?;
                }
                out.sync_all().map_err(io("syncing", snapshot_tmp))?;
                digest = Some(verifier.finish()?);
            }
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
    // tar stops at its end-of-archive block, before the last gzip member's CRC and size are read:
    // draining the decoder checks them, so damage anywhere in the file is refused.
    std::io::copy(&mut tar.into_inner(), &mut std::io::sink()).map_err(damaged)?;
    let digest = digest.ok_or(FetchError::Missing(SNAPSHOT_ENTRY))?;
    let manifest = manifest.ok_or(FetchError::Missing(MANIFEST_ENTRY))?;
    Ok((digest, manifest))
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
pub async fn fetch(
    store: &Store,
    name: &str,
    out_dir: &Path,
    expected_sha256: Option<&str>,
) -> Result<Manifest, FetchError> {
    tokio::fs::create_dir_all(out_dir)
        .await
        .map_err(io("creating", out_dir))?;
    let archive = out_dir.join(".archive.tar.gz.partial");
    let result = match store.download(name, &archive).await {
        Ok(_) => {
            let (a, o, e) = (
                archive.clone(),
                out_dir.to_path_buf(),
                expected_sha256.map(str::to_owned),
            );
            tokio::task::spawn_blocking(move || unpack_and_verify(&a, &o, e.as_deref()))
                .await
                .map_err(|e| FetchError::Damaged(format!("the unpacking task failed: {e}")))?
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&archive).await;
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
