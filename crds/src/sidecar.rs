//! The wire protocol between the operator and the backup sidecar, and the backup manifest format.
//! Shared here so both sides compile against one definition.

use serde::{Deserialize, Serialize};

/// The name (DNS SAN) in the operator's client certificate: the one identity a sidecar obeys. The
/// CA that signs it also signs every sidecar's server certificate, so a certificate for any other
/// name (a sidecar's own, or one made for another component) is authenticated but not authorised.
pub const OPERATOR_IDENTITY: &str = "operator.sidecar.etcd.ouroboros.dev";

/// The name (DNS SAN) in the server certificate of every sidecar of cluster `cluster` in
/// `namespace`. The operator checks it whatever address it dials, so a pod of another cluster
/// cannot pass for this cluster's sidecar and receive its store credentials.
pub fn server_identity(namespace: &str, cluster: &str) -> String {
    format!("{cluster}.{namespace}.sidecar.etcd.ouroboros.dev")
}

/// The Secret, beside the cluster, with its sidecars' server certificate (`tls.crt`, `tls.key`)
/// and the CA bundle they trust for callers (`ca.crt`).
pub fn server_secret_name(cluster: &str) -> String {
    format!("{cluster}-sidecar-tls")
}

/// What a backup contains, written into the archive and (with the compressed size) beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Manifest format version.
    pub format_version: u32,
    /// EtcdCluster name.
    pub cluster_name: String,
    /// etcd cluster ID, hex.
    pub cluster_id: String,
    /// The EtcdCluster's `metadata.uid` when the backup was taken: with the name, it tells this
    /// cluster's backups from those of an older cluster that had the same name. Absent in archives
    /// made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_uid: Option<String>,
    /// Member the snapshot came from.
    pub member: String,
    /// etcd version of that member.
    pub etcd_version: String,
    /// The snapshot's own revision, read from its bytes.
    pub revision: u64,
    /// sha256 of the database, hex (etcd's trailer).
    pub sha256: String,
    /// Bytes of the snapshot entry (database plus trailer).
    pub raw_size: u64,
    /// Bytes of the stored archive; absent inside the archive itself, which cannot know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_size: Option<u64>,
    /// The archive is age-encrypted (named `.tar.gz.age` or `.tar.zst.age`). Absent (false) in older manifests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// Archive object key or path, relative to the destination; absent inside the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// When the snapshot started (RFC 3339).
    pub start_time: String,
    /// When the archive was complete (RFC 3339).
    pub end_time: String,
    /// etcd's hash of the keyspace at the snapshot's revision (`HashKV`), as the member reported it
    /// right after sending the snapshot. A restore drill recomputes it on the restored data: equal
    /// hashes show the archive holds exactly what the member had. Absent in archives made before it
    /// was recorded, and when it could not be taken (`kvHashUnavailable` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_hash: Option<RecordedHash>,
    /// Why `kvHash` is absent from a backup that recorded it: the member failed to answer, or a
    /// compaction ran between the snapshot and the hash, so the member's hash is not of the data the
    /// snapshot holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_hash_unavailable: Option<String>,
}

/// The point of a delta chain a restore's snapshot was taken to (continuous backups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PointReached {
    /// Its revision.
    pub revision: u64,
    /// When the sidecar saw that revision (Unix ms); absent when it is the full backup's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_ms: Option<i64>,
    /// Revisions replayed on the full backup.
    pub applied: u64,
    /// Chunks read.
    pub chunks: usize,
    /// The chain's last stored revision: what a restore to this point leaves out is after it.
    pub chain_end: u64,
    /// When the sidecar saw `chain_end` (Unix ms), when the chain has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_end_seen_ms: Option<i64>,
}

/// What a restore's fetch verified, as its termination message: the archive's manifest and, when
/// it took the snapshot along a delta chain, the point reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchReport {
    /// The archive's manifest.
    #[serde(flatten)]
    pub manifest: Manifest,
    /// The point of the chain the snapshot now holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<PointReached>,
}

/// A `HashKV` answer, with what it was computed over: the hash depends on both revisions, so a
/// restored copy matches it only when its own answer names the same two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedHash {
    /// The hash (CRC-32C over the keys and values of the revisions it covers).
    pub hash: u32,
    /// The revision it was computed at: the snapshot's.
    pub revision: u64,
    /// The compaction revision it was computed with: revisions at or below it count only where
    /// they are a key's newest. 0 when the store was never compacted (etcd answers -1 then).
    pub compact_revision: u64,
}

/// What the check at the end of a restore drill found, as the drill's `check` container writes it to
/// its termination message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillVerdict {
    /// The verdict.
    pub outcome: DrillOutcome,
    /// What was checked, or what did not match, in words.
    pub reason: String,
}

/// A restore drill's verdict on one archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrillOutcome {
    /// etcd on the restored data serves the backup's revision with the recorded hash.
    Verified,
    /// The restored data is not what was backed up.
    Failed,
    /// Nothing could be concluded (etcd did not start in time, hashes not comparable).
    Inconclusive,
}

impl DrillOutcome {
    /// Every verdict.
    pub const ALL: [DrillOutcome; 3] = [
        DrillOutcome::Verified,
        DrillOutcome::Failed,
        DrillOutcome::Inconclusive,
    ];

    /// Its name, as metrics label it.
    pub fn label(self) -> &'static str {
        match self {
            DrillOutcome::Verified => "Verified",
            DrillOutcome::Failed => "Failed",
            DrillOutcome::Inconclusive => "Inconclusive",
        }
    }
}

/// Where a job writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobDestination {
    /// An S3 bucket.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix (ends with `/` or is empty).
        prefix: String,
        /// Endpoint for S3-compatible stores.
        endpoint: Option<String>,
        /// Region.
        region: String,
        /// Path-style addressing.
        force_path_style: bool,
        /// Static credentials (access key, secret, session token); none uses the default chain.
        credentials: Option<(String, String, Option<String>)>,
    },
    /// A directory in the sidecar's filesystem (a mounted PVC).
    Dir {
        /// The directory.
        path: String,
    },
}

/// A backup the operator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// A sidecar older than a field refuses a request that uses it, rather than ignoring it (a job
// asking for encryption must never be stored in the clear).
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Job {
    /// Unique ID (the EtcdBackup's UID).
    pub id: String,
    /// The EtcdBackup's name.
    pub name: String,
    /// The EtcdCluster's name.
    pub cluster_name: String,
    /// The EtcdCluster's `metadata.uid`, recorded in the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_uid: Option<String>,
    /// This member's name.
    pub member: String,
    /// Destination.
    pub destination: JobDestination,
    /// Compression level 0 to 9 (gzip: 0 stores; zstd: 0 and 1 are zstd's level 1).
    pub compression_level: u32,
    /// The codec. Left out for gzip, so a sidecar from before codecs takes gzip jobs, and refuses
    /// zstd ones rather than writing gzip under a zstd name.
    #[serde(default, skip_serializing_if = "Codec::is_gzip")]
    pub codec: Codec,
    /// Encrypt the archive to these age recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<JobEncryption>,
}

/// How an archive is compressed: independent frames of 1 MiB each, so two cores compress two at
/// once and standard tools read the whole as one stream (`tar xzf`, `tar --zstd -xf`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// gzip members (`.tar.gz`): every tool reads it.
    #[default]
    Gzip,
    /// zstd frames (`.tar.zst`): about half the CPU of gzip per backup.
    Zstd,
}

impl Codec {
    /// Whether this is the default, gzip.
    pub fn is_gzip(&self) -> bool {
        *self == Codec::Gzip
    }

    /// The archive's name suffix (before any `.age`).
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::Gzip => crate::retention::ARCHIVE_SUFFIXES[0],
            Codec::Zstd => crate::retention::ARCHIVE_SUFFIXES[1],
        }
    }
}

/// The age recipients a job encrypts to, and where the operator read them (for error messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobEncryption {
    /// The Secret's `recipient` text: age X25519 public keys, one a line, `#` comments allowed.
    pub recipients: String,
    /// `namespace/name` of the Secret.
    pub secret: String,
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum JobState {
    /// Streaming.
    Running {
        /// Snapshot bytes read from etcd so far (absent from sidecars that predate it).
        #[serde(default, rename = "bytesStreamed", skip_serializing_if = "Option::is_none")]
        bytes_streamed: Option<u64>,
        /// The snapshot's size as etcd announced it with its first message.
        #[serde(default, rename = "totalBytes", skip_serializing_if = "Option::is_none")]
        total_bytes: Option<u64>,
    },
    /// Stored and verified.
    Succeeded {
        /// The manifest.
        manifest: Box<Manifest>,
        /// The archive's location.
        location: String,
    },
    /// Failed; nothing was committed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Retention for one destination: the operator asks a sidecar to apply it after a scheduled backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PruneRequest {
    /// The destination (the cluster's prefix or directory).
    pub destination: JobDestination,
    /// Keep at most this many backups.
    pub max_count: Option<u32>,
    /// Delete backups older than this many seconds.
    pub max_age_seconds: Option<i64>,
    /// Backups (EtcdBackup names, as archive names carry them) never deleted whatever the rules say:
    /// the newest one a restore drill verified. Left out when empty, so a sidecar that predates it
    /// still prunes; one that predates it refuses a request that has it (unknown fields are refused),
    /// and then nothing is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_backups: Vec<String>,
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneOutcome {
    /// Backups deleted, as the archive locations their EtcdBackup objects show.
    pub deleted: Vec<String>,
    /// Backups kept.
    pub kept: u32,
    /// Leftovers of interrupted backups removed: incomplete multipart uploads, partial files, archives
    /// without a manifest.
    pub leftovers_removed: u32,
    /// Delta chunks removed with the chains of the backups deleted (or of backups already gone).
    #[serde(default)]
    pub chunks_removed: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_outcome_labels_are_the_verdicts_names() {
        // The metric label was the variant's name before it had its own function; dashboards and
        // alerts match on it.
        for outcome in DrillOutcome::ALL {
            assert_eq!(outcome.label(), format!("{outcome:?}"));
        }
    }
}

/// `PUT /v1/continuous`: follow the member's history after a full backup, as a chain of delta
/// chunks in `destination` (see [`crate::delta`]). A sidecar follows one chain at a time; a
/// request for another chain ends the current one first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowRequest {
    /// The full backup (EtcdBackup name) the chain extends.
    pub backup: String,
    /// The full backup's revision. The sidecar continues after the chunks already stored for it
    /// (by an earlier follow, here or on another member), and ends at once with `gap` when those
    /// have a hole.
    pub stored: u64,
    /// How often a chunk is written when there is anything new.
    pub period_seconds: u64,
    /// A chunk is written once it holds this many bytes, whatever the period.
    pub max_bytes: u64,
    /// Where the chain goes: the full backup's destination.
    pub destination: JobDestination,
}

/// Where a follow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowPosition {
    /// The last revision stored in a chunk (or the full backup's).
    pub stored_revision: u64,
    /// Every write committed before this instant (Unix ms) is stored: the recovery point. 0 until
    /// the first confirmation.
    pub recovery_point_ms: i64,
    /// Chunks written by this follow.
    pub chunks: u64,
    /// Their bytes, compressed.
    pub bytes: u64,
}

/// `GET /v1/continuous`: the follow this sidecar runs or ran last (404: none since it started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowState {
    /// What was asked.
    pub request: FollowRequest,
    /// How far it got.
    pub position: FollowPosition,
    /// Why it ended; absent while it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// It ended at a gap in etcd's history (compacted): the chain cannot be continued, only closed
    /// by a new full backup.
    #[serde(default)]
    pub gap: bool,
}
