//! `EtcdBackup`: one snapshot of one cluster, taken on demand or by the schedule.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
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
    doc = "One snapshot of an EtcdCluster, streamed by a member's backup sidecar into a verified tar.gz (or tar.zst) in S3 or on a volume.",
    status = "EtcdBackupStatus",
    shortname = "etcdbackup",
    category = "ouroboros",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size","description":"Compressed size"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Verified","type":"string","jsonPath":".status.drill","description":"Restore drill: Verified, Failed, Inconclusive, or Pending/Running"}"#,
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
    /// Prove the archive restores once it is stored: a drill Job downloads and verifies it as a
    /// restore would, restores it with `etcdutl` into scratch space, starts etcd on it alone and
    /// compares etcd's `HashKV` at the backup's revision with the hash the member reported (see
    /// `status.drill`). Empty uses the cluster's `spec.backup.drills` (on by default); `latest`
    /// restores and automatic recovery choose only verified backups unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<bool>,
}

/// The record of a backup. Written by the operator and the sidecar that took it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
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
    /// Bytes of the stored archive.
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
    /// Where the restore drill of this backup is: `Pending` (waiting to run), `Running`, or its
    /// result, `Verified`, `Failed` (the archive does not restore to what was backed up) or
    /// `Inconclusive` (the drill could not reach a verdict, say the store was unreachable). Empty
    /// when no drill was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillPhase>,
    /// `true` once a drill restored the archive and found the recorded data in it; `false` when a
    /// drill showed it does not restore (a damaged archive, a different hash). Empty until then.
    /// Only verified backups are chosen by `latest` and automatic recovery (unless told otherwise),
    /// and retention never deletes the newest verified one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// When the drill reached its verdict (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_time: Option<String>,
    /// What the drill found, in words: the revision and hash it checked, or why it failed or could
    /// not decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_reason: Option<String>,
    /// The drill Job of the attempt under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_job: Option<String>,
    /// Drill attempts made: an attempt that could not decide is retried a few times, then the
    /// drill stays `Inconclusive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_attempts: Option<i32>,
    /// When the drill attempt under way started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_start_time: Option<String>,
    /// The value of the annotation `etcd.ouroboros.dev/drill-request` the latest drill answered:
    /// setting the annotation to a new value drills the backup again (to find an archive damaged in
    /// the store since), whatever `spec.drill` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_request: Option<String>,
    /// While the snapshot streams: how much of it the sidecar has read from etcd, of the size etcd
    /// announced. Recorded at most every 10 seconds; gone once the backup succeeded or failed
    /// (`rawSize` then says what was read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<BackupProgress>,
    /// `Ready`, `Reconciling` and `Stalled`, derived from the phase for tools that read conditions
    /// (Flux's kstatus, Argo CD health checks): while it runs `Reconciling=True` (reason: the
    /// phase); once it succeeded `Ready=True`; once it failed `Stalled=True`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// How far a running backup's snapshot has streamed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupProgress {
    /// Bytes of the snapshot read from etcd so far.
    pub bytes_streamed: i64,
    /// The snapshot's size as etcd announced it with its first message (database plus its sha256
    /// trailer); absent until it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Both, readable: `512.0MiB of 1.0GiB (50%)`.
    pub summary: String,
    /// When this was recorded (RFC 3339).
    pub update_time: String,
}

/// Where a backup's restore drill is. `Verified`, `Failed` and `Inconclusive` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DrillPhase {
    /// Asked for; waits for the backup slot of the cluster to be free.
    Pending,
    /// The drill Job runs.
    Running,
    /// The archive restored, and etcd on it reported the recorded revision and hash.
    Verified,
    /// The archive does not restore to what was backed up: `verificationReason` says how.
    Failed,
    /// No verdict could be reached (the store was unreachable, the drill ran out of time): the
    /// backup is neither proven nor disproven.
    Inconclusive,
}

impl DrillPhase {
    /// Whether the drill has reached its last word.
    pub fn is_final(self) -> bool {
        match self {
            DrillPhase::Pending | DrillPhase::Running => false,
            DrillPhase::Verified | DrillPhase::Failed | DrillPhase::Inconclusive => true,
        }
    }
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
