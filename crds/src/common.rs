//! Types shared by more than one resource: where backups live, and the condition vocabulary.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Client-side encryption of backup archives with [age](https://age-encryption.org): archives are
/// encrypted as they stream, before they leave the member, so the store only ever holds ciphertext;
/// `age -d -i identity.txt archive.tar.gz.age | tar xz` opens one by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupEncryption {
    /// Secret in the same namespace. Backups read its `recipient` key: one or more age X25519 public
    /// keys (`age1...`, one a line, `#` comments allowed), as `age-keygen -y` prints them. Restores
    /// read its `identity` key: the age secret key file (`AGE-SECRET-KEY-1...`, as `age-keygen`
    /// writes it). A Secret with only `recipient` lets members back up without being able to read
    /// any backup; a restore then names a Secret with the `identity` in `EtcdRestore.spec.encryption`.
    #[x_kube(validation = Rule::new("self != ''").message("secretName must not be empty"))]
    #[schemars(length(max = 253))]
    pub secret_name: String,
}

/// Where backup archives are stored. Exactly one of `s3` or `volume` must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.s3) != has(self.volume)").message("set exactly one of s3 or volume"))]
pub struct BackupDestination {
    /// S3 or an S3-compatible object store (MinIO, Ceph RGW, ...), written with multipart uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A directory on a PersistentVolumeClaim mounted by the backup sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeDestination>,
}

/// An S3 bucket and key prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Bucket name. The bucket must already exist; the operator never creates buckets.
    #[x_kube(validation = Rule::new("self.size() >= 3 && self.size() <= 63").message("bucket names are 3 to 63 characters"))]
    pub bucket: String,
    /// Key prefix under which this cluster's archives are written, for example `prod/etcd-main/`.
    /// The operator appends the cluster's namespace and name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Endpoint URL for S3-compatible stores, for example `http://minio.storage:9000`. Empty means AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("endpoint must be an http:// or https:// URL"))]
    pub endpoint: Option<String>,
    /// Region of the bucket. S3-compatible stores usually accept any value.
    #[serde(default = "default_region")]
    pub region: String,
    /// Address the bucket as `endpoint/bucket/key` instead of `bucket.endpoint/key`. Most S3-compatible
    /// stores (MinIO included) need this.
    #[serde(default)]
    pub force_path_style: bool,
    /// Name of a Secret in the cluster's namespace with keys `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (optionally `AWS_SESSION_TOKEN`). When unset, the default AWS credential
    /// chain of the sidecar's pod is used, in the AWS SDK's order: environment, web identity, shared
    /// profile, and only when none of those gives credentials, the instance metadata service. The
    /// region is always the destination's own (`region`, `us-east-1` by default), so the metadata
    /// service is never asked for a region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// A directory on a PersistentVolumeClaim. A claim named here is mounted by every member pod of the
/// cluster, so on a multi-node cluster it must support ReadWriteMany (or all members must share a
/// node). The default claim `<cluster>-backups` is mounted by no member: each backup to it is written
/// by a short-lived writer pod `<backup>-writer`, which reaches the member over the network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDestination {
    /// Name of the PersistentVolumeClaim in the cluster's namespace.
    #[x_kube(validation = Rule::new("self != ''").message("claimName must not be empty"))]
    pub claim_name: String,
    /// Directory inside the volume, relative to its root. Created when missing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('..')").message("path must be relative and must not contain '..'"))]
    pub path: String,
}

/// Points at one stored backup: what `status.lastSuccessfulBackup` and restores refer to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupReference {
    /// Name of the EtcdBackup object that produced the archive.
    pub name: String,
    /// Where the archive is, as a URL: `s3://bucket/key` or `file:///backups/<claim>/<path>`.
    pub location: String,
    /// The etcd revision captured in the snapshot.
    pub revision: i64,
    /// When the backup completed (RFC 3339).
    pub completion_time: String,
}

/// Condition types the operator sets. Each is documented in `docs/api.md`.
pub mod condition_types {
    /// A quorum of members is healthy and the cluster serves requests.
    pub const AVAILABLE: &str = "Available";
    /// The operator is changing the cluster: creating, scaling, replacing, upgrading or restoring.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs attention: an unhealthy member, an invalid spec, a refused change.
    pub const DEGRADED: &str = "Degraded";
    /// Scheduled backups are succeeding and recent enough.
    pub const BACKUP_HEALTHY: &str = "BackupHealthy";
    /// The newest backup a restore drill reached a verdict on was verified (`False` when it failed
    /// its drill: the archive does not restore to what was backed up).
    pub const BACKUPS_VERIFIED: &str = "BackupsVerified";
    /// A majority of members is gone; the operator changes nothing until told what to do.
    pub const QUORUM_LOST: &str = "QuorumLost";
    /// A member reports an etcd alarm (NOSPACE, CORRUPT); the message names it and what to do.
    pub const ALARM: &str = "Alarm";
    /// A member's database is above 80 % of its quota, before NOSPACE stops writes.
    pub const DATABASE_NEAR_QUOTA: &str = "DatabaseNearQuota";
    /// A compaction, defragmentation or alarm disarm the operator runs, or why it waits.
    pub const MAINTENANCE: &str = "Maintenance";
    /// With `spec.tls`: every certificate its Secrets hold can be used by members (parses, valid
    /// now, signed by a CA of its `ca.crt`, names every member, and a roll onto it keeps every
    /// member able to talk to the others). While `False`, members stay on the certificates they
    /// run; the message names the Secret and what is wrong.
    pub const CERTIFICATES_VALID: &str = "CertificatesValid";
    /// With `spec.tls`: a certificate its Secrets hold ends within 30 days.
    pub const CERTIFICATES_EXPIRING: &str = "CertificatesExpiring";
    /// Every member pod runs what the spec and the operator give now: the etcd version, the
    /// `spec.etcd` settings, the pod template (`spec.pod`, images, sidecar) and the certificates.
    /// While `False`, the message names each outdated member and what is outdated; members are
    /// restarted onto it on their own data, one at a time, while every member is healthy.
    pub const MEMBERS_UP_TO_DATE: &str = "MembersUpToDate";
    /// The temporary boot member of a self-hosted cluster has been removed.
    pub const BOOT_MEMBER_REMOVED: &str = "BootMemberRemoved";
    /// On EtcdBackup and EtcdRestore: `True` once it succeeded; `False` while it runs (the reason is
    /// its phase) and when it failed. What GitOps tools (Argo CD, Flux's kstatus) read as done.
    pub const READY: &str = "Ready";
    /// On EtcdBackup and EtcdRestore: `True` when it failed and will not be retried (the message
    /// says why); `False` otherwise. What kstatus reads as failed, rather than still in progress.
    pub const STALLED: &str = "Stalled";
    /// On EtcdBackup and EtcdRestore: `True` while it runs (the reason is its phase), `False` once
    /// it succeeded or failed. What kstatus reads as still in progress.
    pub const RECONCILING: &str = "Reconciling";
}
