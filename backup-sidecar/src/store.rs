//! Where archives go: a directory (on a PVC) or an S3 bucket. An archive is uploaded as it is produced
//! (S3: multipart, 8 MiB parts; directory: a temporary file renamed when complete), and the manifest is
//! written last: a backup exists only once its manifest does. A failed upload is aborted, so nothing
//! left behind can be taken for a complete backup.

use std::path::{Path, PathBuf};

use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region, SharedHttpClient},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use tokio::io::AsyncWriteExt;

const MARKER_SUFFIX: &str = ".uploading";

/// The media type of an archive, by its name (an encrypted one is age's, whatever it holds).
fn content_type(name: &str) -> &'static str {
    if name.ends_with(ouroboros_crds::retention::ENCRYPTED_SUFFIX) {
        "application/octet-stream"
    } else if name.ends_with(ouroboros_crds::sidecar::Codec::Zstd.suffix()) {
        "application/zstd"
    } else {
        "application/gzip"
    }
}

/// The object that names an open multipart upload of `name`.
fn upload_marker(name: &str) -> String {
    format!(".{name}{MARKER_SUFFIX}")
}

async fn delete_marker(client: &Client, bucket: &str, key: &str) {
    if let Err(e) = client.delete_object().bucket(bucket).key(key).send().await {
        // Harmless: the next prune removes it.
        tracing::warn!(%bucket, %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e), "deleting an upload marker failed");
    }
}

/// An I/O error of `action` on `path`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { action, path, source }
}

/// Makes the fully written temporary `file` at `tmp` the object `dest`: synced, renamed, and the
/// directory synced, so that after a crash the object is complete or absent and, once this
/// returns, there.
async fn commit_file(file: tokio::fs::File, tmp: &Path, dest: &Path) -> Result<(), StoreError> {
    file.sync_all().await.map_err(io_error("syncing", tmp))?;
    drop(file);
    tokio::fs::rename(tmp, dest)
        .await
        .map_err(io_error("renaming", tmp))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let parent = tokio::fs::File::open(dir)
        .await
        .map_err(io_error("opening", dir))?;
    parent.sync_all().await.map_err(io_error("syncing", dir))
}

/// Bytes per S3 part (S3 requires at least 5 MiB for every part but the last).
pub const PART_SIZE: usize = 8 << 20;
/// A part's buffer: a part is sent once it holds `PART_SIZE`, so the largest write (a compressed
/// chunk) fits beside it without the buffer ever reallocating.
const PART_BUFFER: usize = PART_SIZE + (2 << 20);

/// Why storing failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
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
    /// An S3 request failed.
    #[error("S3 {action} s3://{bucket}/{key}: {message}")]
    S3 {
        /// What was attempted.
        action: &'static str,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// The error, with the service's code when there is one.
        message: String,
    },
}

/// S3 connection settings.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    /// Bucket.
    pub bucket: String,
    /// Key prefix (ends with `/` or is empty).
    pub prefix: String,
    /// Endpoint for S3-compatible stores.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// Static credentials; `None` uses the default AWS chain.
    pub credentials: Option<(String, String, Option<String>)>,
}

/// A destination.
#[derive(Clone, Debug)]
pub enum Store {
    /// A directory.
    Dir(PathBuf),
    /// An S3 bucket.
    S3 {
        /// Client.
        client: Client,
        /// Settings.
        config: S3Config,
    },
}

pub(crate) fn s3_error<E: std::fmt::Display>(
    action: &'static str,
    bucket: &str,
    key: &str,
    e: E,
) -> StoreError {
    StoreError::S3 {
        action,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        message: e.to_string(),
    }
}

pub(crate) fn sdk_error<
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
>(
    action: &'static str,
    bucket: &str,
    key: &str,
    e: aws_sdk_s3::error::SdkError<E>,
) -> StoreError {
    // The service's code and message say what to fix ("NoSuchBucket", "InvalidAccessKeyId", ...);
    // dispatch and timeout errors carry their own cause.
    let message = match e.as_service_error() {
        Some(se) => format!("{}: {}", se.code().unwrap_or("error"), se.message().unwrap_or("")),
        None => format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)),
    };
    s3_error(action, bucket, key, message)
}

/// The HTTP client of the S3 store and of the AWS credential chain: hyper 1 and rustls with ring,
/// the workspace's one TLS stack, trusting the system's root certificates. It is the SDK's own
/// default client (`default-https-client`, which would compile aws-lc-rs instead) with ring for the
/// cryptography, proxy settings from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`)
/// included. The endpoint's scheme decides: `https` for AWS, plain `http` for a local MinIO.
pub fn http_client() -> SharedHttpClient {
    use aws_smithy_http_client::{
        Builder, Connector,
        proxy::ProxyConfig,
        tls::{Provider, rustls_provider::CryptoMode},
    };
    // As aws-smithy-runtime builds its default client (`build_with_connector_fn` is doc(hidden) in
    // aws-smithy-http-client 1.5; `build_https` would take no proxy settings). Connectors are
    // cached per connector settings, so connections are pooled across requests.
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut conn = Connector::builder().tls_provider(Provider::Rustls(CryptoMode::Ring));
        conn.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            conn.set_sleep_impl(components.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    })
}

impl Store {
    /// An S3 store; without static credentials the default AWS chain is used.
    ///
    /// The region is always known (the destination's, `us-east-1` by default), so the default chain
    /// is loaded with it and never asks the instance metadata service for one. That service is asked
    /// for credentials only when nothing earlier in the chain (environment, web identity, profile)
    /// gives them, as the AWS SDK documents.
    pub async fn s3(config: S3Config) -> Self {
        let region = Region::new(if config.region.is_empty() {
            "us-east-1".to_owned()
        } else {
            config.region.clone()
        });
        let http = http_client();
        let mut b = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http.clone())
            .region(region.clone())
            .force_path_style(config.force_path_style);
        if let Some(ep) = &config.endpoint {
            b = b.endpoint_url(ep.clone());
        }
        match &config.credentials {
            Some((key, secret, token)) => {
                b = b.credentials_provider(Credentials::new(
                    key,
                    secret,
                    token.clone(),
                    None,
                    "ouroboros-secret",
                ));
            }
            None => {
                let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .http_client(http)
                    .region(region)
                    .load()
                    .await;
                if let Some(p) = shared.credentials_provider() {
                    b = b.credentials_provider(p);
                }
            }
        }
        Store::S3 {
            client: Client::from_conf(b.build()),
            config,
        }
    }

    /// Where `name` is, as a location URL for status (`s3://bucket/key` or `file://path`).
    pub fn location(&self, name: &str) -> String {
        match self {
            Store::Dir(d) => format!("file://{}", d.join(name).display()),
            Store::S3 { config, .. } => format!("s3://{}/{}{name}", config.bucket, config.prefix),
        }
    }

    /// Starts writing the archive `name`.
    pub async fn begin(&self, name: &str) -> Result<Upload, StoreError> {
        match self {
            Store::Dir(dir) => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|source| StoreError::Io {
                        action: "creating",
                        path: dir.display().to_string(),
                        source,
                    })?;
                let tmp = dir.join(format!(".{name}.partial"));
                let file = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|source| StoreError::Io {
                        action: "creating",
                        path: tmp.display().to_string(),
                        source,
                    })?;
                Ok(Upload::Dir {
                    file,
                    tmp,
                    dest: dir.join(name),
                })
            }
            Store::S3 { client, config } => {
                let key = format!("{}{name}", config.prefix);
                // Some S3-compatible stores (MinIO) list multipart uploads only by exact key, so the
                // key is written down first: a sidecar killed mid-upload leaves a marker that names
                // the upload for `remove_incomplete` to abort.
                self.put_small(&upload_marker(name), Vec::new()).await?;
                let out = client
                    .create_multipart_upload()
                    .bucket(&config.bucket)
                    .key(&key)
                    .content_type(content_type(name))
                    .send()
                    .await
                    .map_err(|e| sdk_error("create multipart upload", &config.bucket, &key, e))?;
                let upload_id = out.upload_id().unwrap_or_default().to_owned();
                Ok(Upload::S3 {
                    client: client.clone(),
                    bucket: config.bucket.clone(),
                    marker: format!("{}{}", config.prefix, upload_marker(name)),
                    key,
                    upload_id,
                    parts: Vec::new(),
                    buf: Vec::with_capacity(PART_BUFFER),
                    in_flight: None,
                })
            }
        }
    }

    /// Writes a small object (a manifest, a delta chunk) in one request: complete or absent.
    pub async fn put_small(&self, name: &str, body: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Dir(dir) => {
                // Its own temporary file: two writers of the same name (two sidecars following
                // one chain for a moment) must not write into one file; the rename is atomic.
                static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Sidecars are all pid 1 in their pods: the clock tells them apart.
                let unique = format!("{}-{n}", jiff::Timestamp::now().as_nanosecond());
                let tmp = dir.join(format!(".{name}.{unique}.partial"));
                let mut f = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(io_error("creating", &tmp))?;
                f.write_all(&body).await.map_err(io_error("writing", &tmp))?;
                commit_file(f, &tmp, &dir.join(name)).await
            }
            Store::S3 { client, config } => {
                let key = format!("{}{name}", config.prefix);
                client
                    .put_object()
                    .bucket(&config.bucket)
                    .key(&key)
                    .content_type("application/json")
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| sdk_error("put", &config.bucket, &key, e))
            }
        }
    }
}

impl Store {
    /// Reads a small object (a delta chunk) whole.
    pub async fn get_small(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        match self {
            Store::Dir(dir) => {
                let path = dir.join(name);
                tokio::fs::read(&path).await.map_err(io_error("reading", &path))
            }
            Store::S3 { client, config } => {
                let key = format!("{}{name}", config.prefix);
                let got = client
                    .get_object()
                    .bucket(&config.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| sdk_error("get", &config.bucket, &key, e))?;
                let body = got
                    .body
                    .collect()
                    .await
                    .map_err(|e| s3_error("get", &config.bucket, &key, e))?;
                Ok(body.into_bytes().to_vec())
            }
        }
    }
}

impl Store {
    /// Names of the complete objects in the destination (the directory's files, or the keys under the
    /// prefix with the prefix removed). Temporary files are left out.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names = self.list_all().await?;
        names.retain(|n| !n.starts_with('.'));
        Ok(names)
    }

    /// Like `list`, with the hidden names (partial files, upload markers) too.
    async fn list_all(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Dir(dir) => {
                let io = |source| StoreError::Io {
                    action: "listing",
                    path: dir.display().to_string(),
                    source,
                };
                let mut out = Vec::new();
                let mut entries = match tokio::fs::read_dir(dir).await {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(io(e)),
                };
                while let Some(e) = entries.next_entry().await.map_err(io)? {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
                Ok(out)
            }
            Store::S3 { client, config } => {
                let mut out = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(&config.bucket)
                    .prefix(&config.prefix)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| sdk_error("list", &config.bucket, &config.prefix, e))?;
                    for o in page.contents() {
                        if let Some(name) = o.key().and_then(|k| k.strip_prefix(config.prefix.as_str())) {
                            // Only this cluster's own level: a nested "directory" is somebody else's.
                            if !name.contains('/') {
                                out.push(name.to_owned());
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Deletes `name`; deleting what is already gone succeeds.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self {
            Store::Dir(dir) => {
                let path = dir.join(name);
                match tokio::fs::remove_file(&path).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
                        action: "deleting",
                        path: path.display().to_string(),
                        source: e,
                    }),
                    _ => Ok(()),
                }
            }
            Store::S3 { client, config } => {
                let key = format!("{}{name}", config.prefix);
                client
                    .delete_object()
                    .bucket(&config.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| sdk_error("delete", &config.bucket, &key, e))
            }
        }
    }

    /// Removes what interrupted backups left: incomplete multipart uploads under the prefix, or
    /// partial files in the directory. Only call this while no backup of the cluster is running.
    pub async fn remove_incomplete(&self) -> Result<u32, StoreError> {
        let mut removed = 0;
        match self {
            Store::Dir(dir) => {
                let mut entries = match tokio::fs::read_dir(dir).await {
                    Ok(e) => e,
                    Err(_) => return Ok(0),
                };
                while let Ok(Some(e)) = entries.next_entry().await {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && name.ends_with(".partial") {
                        self.delete(&name).await?;
                        removed += 1;
                    }
                }
            }
            Store::S3 { client, config } => {
                // Every open upload under the prefix (AWS lists them by prefix), and every upload a
                // marker names (MinIO lists them only by exact key).
                let markers: Vec<String> = self
                    .list_all()
                    .await?
                    .into_iter()
                    .filter_map(|n| {
                        n.strip_prefix('.')?
                            .strip_suffix(MARKER_SUFFIX)
                            .map(str::to_owned)
                    })
                    .collect();
                let mut prefixes = vec![config.prefix.clone()];
                prefixes.extend(markers.iter().map(|n| format!("{}{n}", config.prefix)));
                let mut seen = std::collections::HashSet::new();
                for prefix in &prefixes {
                    let out = client
                        .list_multipart_uploads()
                        .bucket(&config.bucket)
                        .prefix(prefix)
                        .send()
                        .await
                        .map_err(|e| sdk_error("list multipart uploads", &config.bucket, prefix, e))?;
                    for u in out.uploads() {
                        let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                            continue;
                        };
                        if !seen.insert(id.to_owned()) {
                            continue;
                        }
                        client
                            .abort_multipart_upload()
                            .bucket(&config.bucket)
                            .key(key)
                            .upload_id(id)
                            .send()
                            .await
                            .map_err(|e| sdk_error("abort multipart upload", &config.bucket, key, e))?;
                        removed += 1;
                    }
                }
                for name in &markers {
                    self.delete(&upload_marker(name)).await?;
                }
            }
        }
        Ok(removed)
    }
}

/// An archive being written.
#[derive(Debug)]
pub enum Upload {
    /// To a temporary file.
    Dir {
        /// Open temporary file.
        file: tokio::fs::File,
        /// Its path.
        tmp: PathBuf,
        /// Final path.
        dest: PathBuf,
    },
    /// A multipart upload.
    S3 {
        /// Client.
        client: Client,
        /// Bucket.
        bucket: String,
        /// Key of the marker that names this upload while it is open.
        marker: String,
        /// Key.
        key: String,
        /// Upload ID.
        upload_id: String,
        /// Parts done.
        parts: Vec<CompletedPart>,
        /// Bytes not yet sent.
        buf: Vec<u8>,
        /// The part being sent while `buf` fills, so compression does not wait for the store.
        in_flight: Option<tokio::task::JoinHandle<Result<CompletedPart, StoreError>>>,
    },
}

impl Upload {
    /// Waits for the part in flight, if any, and records it.
    async fn settle(&mut self) -> Result<(), StoreError> {
        let Upload::S3 {
            parts,
            in_flight,
            key,
            bucket,
            ..
        } = self
        else {
            return Ok(());
        };
        if let Some(task) = in_flight.take() {
            let part = task.await.map_err(|e| {
                s3_error("upload part", bucket, key, format!("the upload task failed: {e}"))
            })??;
            parts.push(part);
        }
        Ok(())
    }

    /// Starts sending `buf` as the next part, after the previous one is done: one part in flight.
    async fn send_part(&mut self) -> Result<(), StoreError> {
        self.settle().await?;
        let Upload::S3 {
            client,
            bucket,
            key,
            upload_id,
            parts,
            buf,
            in_flight,
            ..
        } = self
        else {
            return Ok(());
        };
        let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
        let body = std::mem::replace(buf, Vec::with_capacity(PART_BUFFER));
        let request = client
            .upload_part()
            .bucket(bucket.as_str())
            .key(key.as_str())
            .upload_id(upload_id.as_str())
            .part_number(number)
            .body(ByteStream::from(body))
            // The payload is not hashed into the signature: the SDK's CRC32 checksum still protects
            // every part (and TLS, where the endpoint uses it), and a second sha256 pass over every
            // byte on a 2-core node costs more than the snapshot itself (docs/benchmarks.md).
            .customize()
            .disable_payload_signing();
        let (bucket, key) = (bucket.clone(), key.clone());
        *in_flight = Some(tokio::spawn(async move {
            let out = request
                .send()
                .await
                .map_err(|e| sdk_error("upload part", &bucket, &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build())
        }));
        Ok(())
    }

    /// Appends archive bytes.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        match self {
            Upload::Dir { file, tmp, .. } => file.write_all(data).await.map_err(|source| StoreError::Io {
                action: "writing",
                path: tmp.display().to_string(),
                source,
            }),
            Upload::S3 { buf, .. } => {
                buf.extend_from_slice(data);
                if buf.len() >= PART_SIZE {
                    self.send_part().await?;
                }
                Ok(())
            }
        }
    }

    /// Makes the archive visible under its final name.
    pub async fn complete(mut self) -> Result<(), StoreError> {
        if let Upload::S3 {
            buf,
            parts,
            in_flight,
            ..
        } = &self
            && (!buf.is_empty() || (parts.is_empty() && in_flight.is_none()))
        {
            self.send_part().await?;
        }
        self.settle().await?;
        match self {
            Upload::Dir { file, tmp, dest } => commit_file(file, &tmp, &dest).await,
            Upload::S3 {
                client,
                bucket,
                marker,
                key,
                upload_id,
                parts,
                ..
            } => {
                client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await
                    .map_err(|e| sdk_error("complete multipart upload", &bucket, &key, e))?;
                delete_marker(&client, &bucket, &marker).await;
                Ok(())
            }
        }
    }

    /// Throws the partial archive away.
    pub async fn abort(self) {
        match self {
            Upload::Dir { file, tmp, .. } => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            Upload::S3 {
                client,
                bucket,
                marker,
                key,
                upload_id,
                in_flight,
                ..
            } => {
                if let Some(task) = in_flight {
                    task.abort();
                    let _ = task.await;
                }
                delete_marker(&client, &bucket, &marker).await;
                if let Err(e) = client
                    .abort_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    tracing::warn!(%bucket, %key, error = %aws_sdk_s3::error::DisplayErrorContext(&e), "aborting the multipart upload failed");
                }
            }
        }
    }
}
