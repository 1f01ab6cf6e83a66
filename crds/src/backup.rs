//! `EtcdBackup`: one snapshot of one cluster, taken on demand or by the schedule.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::BackupDestination;

/// A request for one backup and, once taken, the record of it. Deleting the object does not delete the
/// archive; retention does that.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "etcd.ouroboros.dev",
    version = "v1alpha1",
    kind = "EtcdBackup",
    namespaced,
    doc = "One snapshot of an EtcdCluster, streamed by a member's backup sidecar into a verified tar.gz in S3 or on a volume.",
    status = "EtcdBackupStatus",
    shortname = "etcdbackup",
    category = "ouroboros",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size","description":"Compressed size"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("an EtcdBackup's spec cannot change; create a new EtcdBackup"))]
pub struct EtcdBackupSpec {
    /// Name of the EtcdCluster in this namespace to back up.
    #[x_kube(validation = Rule::new("self != ''").message("clusterName must not be empty"))]
    pub cluster_name: String,
    /// Where to write the archive. Empty uses the cluster's `spec.backup.destination`, and failing
    /// that the PVC `<cluster>-backups` that clusters with PVC storage get (written by a writer pod
    /// `<backup>-writer`, as members do not mount it). Any other volume destination must be the one
    /// the member pods mount (the cluster's), since pods cannot gain a volume later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// Encrypt this archive with age. Empty uses the cluster's `spec.backup.encryption`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::BackupEncryption>,
}

/// The record of a backup. Written by the operator and the sidecar that took it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupStatus {
    /// Where the backup is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// Why it is in this phase, in words (the failure for `Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The archive, as `s3://bucket/key` or `file:///backups/<claim>/<path>/<namespace>/<cluster>/<file>`
    /// (the path inside the claim follows `/backups/<claim>/`). Set only once it is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Bytes of the snapshot as etcd sent it (database plus its sha256 trailer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_size: Option<i64>,
    /// Bytes of the stored tar.gz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_size: Option<i64>,
    /// The compressed size, readable (`12.5MiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// sha256 of the snapshot, hex; the same digest etcd appended to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// etcd revision captured in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// etcd version of the member the snapshot came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// The EtcdCluster's `metadata.uid` when the backup started. `latest` and automatic recovery only
    /// consider backups of the cluster's own lineage: this UID, or the one it was restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_uid: Option<String>,
    /// etcd's cluster ID (hex) of the member the snapshot came from, as its manifest records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Name of the member (pod) the snapshot came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The writer pod writing the archive to the default backup claim `<cluster>-backups` (which
    /// members do not mount); empty when the member's own sidecar writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_pod: Option<String>,
    /// When the snapshot started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When a running backup is declared failed (RFC 3339): ten minutes plus five per GiB of the
    /// member's database when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// When the backup reached `Succeeded` or `Failed` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Set on backups the schedule created, so retention can tell them from on-demand ones.
    #[serde(default)]
    pub scheduled: bool,
    /// The archive is encrypted with age: restoring it needs the identity (secret key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// etcd's `HashKV` of the keyspace at `revision`, as the member reported it right after the
    /// snapshot, from the manifest: what a restore drill compares the restored data against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_hash: Option<i64>,
    /// The compaction revision `kvHash` was computed with; a restored copy's hash is comparable only
    /// when computed with the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_hash_compact_revision: Option<i64>,
    /// Why a completed backup has no `kvHash`, from the manifest (the member did not answer, or a
    /// compaction ran between the snapshot and the hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_hash_unavailable: Option<String>,
}

/// Lifecycle of a backup. `Succeeded` and `Failed` are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum BackupPhase {
    /// Accepted; waiting for a healthy member or for another backup of the cluster to finish.
    Pending,
    /// A sidecar is streaming the snapshot to storage.
    Running,
    /// The archive is stored and verified.
    Succeeded,
    /// No usable archive exists; `reason` says why.
    Failed,
}

impl BackupPhase {
    /// Whether the backup will never change phase again.
    pub fn is_terminal(self) -> bool {
        match self {
            BackupPhase::Pending | BackupPhase::Running => false,
            BackupPhase::Succeeded | BackupPhase::Failed => true,
        }
    }
}
