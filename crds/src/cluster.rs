//! `EtcdCluster`: the desired etcd cluster and what the operator observed of it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, ResourceRequirements, Toleration},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition},
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{BackupDestination, BackupReference};

/// The etcd version new clusters get when `spec.version` is omitted.
pub const DEFAULT_ETCD_VERSION: &str = "3.6.16";

/// An etcd cluster run by the operator: one Pod per member, grown one learner at a time.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "etcd.ouroboros.dev",
    version = "v1alpha1",
    kind = "EtcdCluster",
    namespaced,
    doc = "An etcd cluster run by the Ouroboros operator: a seed member grown one learner at a time to spec.size, kept healthy, upgraded, backed up and restored.",
    status = "EtcdClusterStatus",
    shortname = "etcd",
    category = "ouroboros",
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size","description":"Desired number of members"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyMembers","description":"Members that are healthy voters"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.currentVersion","description":"Lowest etcd version running"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"date","jsonPath":".status.lastSuccessfulBackup.completionTime","description":"When the newest successful backup completed"}"#,
    printcolumn = r#"{"name":"Backups","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"BackupHealthy\")].reason","description":"BackupHealthy reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
// Field rules on optional fields only run when the field is on both sides of an update, so adding or
// removing one is caught here. Members would keep their old scheme while the operator dialled the new
// one, and read that as lost quorum.
#[x_kube(validation = Rule::new("has(self.tls) == has(oldSelf.tls)").message("spec.tls cannot be added to or removed from an existing cluster; back up and restore into a new cluster with the TLS you want"))]
#[x_kube(validation = Rule::new("has(self.selfHosted) == has(oldSelf.selfHosted)").message("spec.selfHosted cannot be added to or removed from an existing cluster; back up and restore into a new cluster instead"))]
pub struct EtcdClusterSpec {
    /// Number of voting members. The operator starts one seed member and adds the rest one at a time,
    /// each first as a learner. Odd sizes tolerate the same failures as the next even size with less
    /// write latency: 3 tolerates 1 failure, 5 tolerates 2.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 9").message("size must be between 1 and 9"))]
    pub size: i32,

    /// etcd version, `3.MINOR.PATCH`. Changing it upgrades one member at a time, followers first and
    /// the leader last. Downgrades and skipping a minor version are refused with a condition.
    #[serde(default = "default_version")]
    #[schemars(regex(pattern = crate::version::VERSION_PATTERN))]
    pub version: String,

    /// Image repository of the etcd image; its tag is given by `imageTagFormat`. Images with
    /// nothing but `/usr/local/bin/etcd`, `etcdctl` and `etcdutl` work (the etcd project's and
    /// registry.k8s.io/etcd are such): what the operator runs inside an etcd container comes from
    /// its own sidecar image. Empty uses the operator's `--etcd-image-repository` (default
    /// `localhost/ouroboros/etcd`) with the operator's `--etcd-image-tag-format`. Changing it
    /// restarts members one at a time on their data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,

    /// Tag of the etcd image, `{version}` standing for `version`: `v{version}` as the etcd project
    /// tags (`gcr.io/etcd-development/etcd`, `quay.io/coreos/etcd`; the default with a
    /// `repository`), `{version}-0` as `registry.k8s.io/etcd` does. Without a `repository` it
    /// defaults to the operator's `--etcd-image-tag-format`. Changing it restarts members one at a
    /// time on their data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::version::TAG_FORMAT_PATTERN), length(max = 100))]
    pub image_tag_format: Option<String>,

    /// Where members keep their data. Immutable after creation: moving data between volume kinds is
    /// a restore, not an edit.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable after creation; back up and restore into a new cluster instead"))]
    pub storage: StorageSpec,

    /// Scheduling and resources of member pods.
    #[serde(default)]
    pub pod: PodPolicy,

    /// TLS for peer and client traffic. Without it, members talk plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Scheduled backups. Without it, only on-demand `EtcdBackup` objects take backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPolicy>,

    /// What the operator does when a majority of members is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySpec>,

    /// Self-hosted mode: join a temporary boot etcd (as bootkube runs) and take over from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("selfHosted is immutable after creation"))]
    pub self_hosted: Option<SelfHostedSpec>,

    /// etcd's own settings (quota, compaction, raft timing, corruption checks). A change is rolled
    /// out one member at a time.
    #[serde(default)]
    pub etcd: crate::EtcdSettings,

    /// What the operator does to keep the database small: defragmentation by threshold. NOSPACE is
    /// recovered from whatever this says.
    #[serde(default)]
    pub maintenance: crate::MaintenanceSpec,

    /// Stop all changes to this cluster. Status is still reported.
    #[serde(default)]
    pub paused: bool,
}

fn default_version() -> String {
    DEFAULT_ETCD_VERSION.to_owned()
}

/// Member data volumes. Set exactly one of `emptyDir` or `persistentVolumeClaim`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.emptyDir) != has(self.persistentVolumeClaim)").message("set exactly one of emptyDir or persistentVolumeClaim"))]
pub struct StorageSpec {
    /// Data lives as long as the pod. A member whose pod is deleted is replaced by a fresh member that
    /// copies the data from the others; losing a majority at once loses the data (restore a backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirStorage>,
    /// One PersistentVolumeClaim per member, kept until the member has left the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimStorage>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            empty_dir: Some(EmptyDirStorage::default()),
            persistent_volume_claim: None,
        }
    }
}

/// An emptyDir data volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirStorage {
    /// `Memory` puts the data on tmpfs: fast, and lost when the node reboots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<StorageMedium>,
    /// Upper bound on the volume's size, for example `4Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

/// Backing medium of an emptyDir.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum StorageMedium {
    /// tmpfs.
    Memory,
}

/// A PersistentVolumeClaim per member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimStorage {
    /// StorageClass of the claims. Empty uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Requested size of each claim, for example `8Gi`. etcd's default quota is 2 GiB; leave room for
    /// the WAL and snapshots.
    pub size: Quantity,
    /// How long the node of a member's pod may stay lost (its kubelet silent, so the Node's `Ready`
    /// condition is `Unknown`) while the member does not answer, before the member is replaced by a
    /// new one on another node, as a duration such as `10m` (the default) or `1h`. Until then the
    /// member waits to come back on its own data, which is on that node when the storage is local.
    /// A member is replaced only while the others keep quorum and never while its peers follow it as
    /// leader, and its claim is not deleted: it is annotated `etcd.ouroboros.dev/retired` and kept for
    /// you to delete once the node's copy of the data is no longer wanted. A node that reports
    /// `NotReady` itself (its kubelet runs) is not lost, nor is a deleted Node object: such members
    /// wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub replace_after_node_lost: Option<String>,
}

/// Scheduling and resources of member pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodPolicy {
    /// Resources of the etcd container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels a member pod's node must have, for example to pin members to control-plane nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of member pods, for example for the control-plane taint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of member pods. When set it replaces the operator's anti-affinity entirely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How strongly members are spread across nodes when `affinity` is not set.
    #[serde(default)]
    pub anti_affinity: AntiAffinityMode,
    /// PriorityClass of member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra labels on member pods. The operator's own labels win on conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on member pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Pod anti-affinity between members of one cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AntiAffinityMode {
    /// Spread members across nodes when possible (the default).
    #[default]
    Preferred,
    /// Never put two members on one node; members stay Pending when nodes run out.
    Required,
    /// No anti-affinity (single-node test clusters).
    None,
}

/// TLS Secrets, each of type `kubernetes.io/tls` with `tls.crt`, `tls.key` and `ca.crt`. Members
/// mount copies the operator makes once it accepted what they hold (docs/runbooks.md, Rotating
/// certificates).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Certificate members present to each other; it must be valid for every member's peer DNS name
    /// (`*.<cluster>.<namespace>.svc`) and is also used as a client certificate between peers.
    pub peer_secret: String,
    /// Certificate members serve to clients; valid for the member names and the client Service.
    pub server_secret: String,
    /// Client certificate the operator and the backup sidecars use to talk to members.
    pub operator_client_secret: String,
}

/// Scheduled backups and their retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.continuous) || !has(self.encryption)").message("continuous backups of an encrypted cluster are not supported yet (their chunks would be stored unencrypted): remove spec.backup.continuous or spec.backup.encryption"))]
pub struct BackupPolicy {
    /// Cron schedule in the five-field form (`minute hour day-of-month month day-of-week`), in UTC, for
    /// example `0 */6 * * *`. A schedule the operator cannot parse sets `BackupHealthy=False` with the
    /// reason.
    #[x_kube(validation = Rule::new("self.matches('^ *[^ ]+( +[^ ]+){4} *$')").message("schedule must have five fields: minute hour day-of-month month day-of-week"))]
    #[schemars(length(max = 128))]
    pub schedule: String,
    /// Where archives go. Empty uses a directory on the PVC `<cluster>-backups`, which the operator
    /// creates (same class and size as a member's data claim) for clusters with PVC storage and keeps
    /// when the cluster is deleted; each backup to it is written by a writer pod `<backup>-writer`
    /// that mounts it, so members on different nodes need not share it. Member pods mount a volume
    /// named here when they are created, so changing it applies to members started afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// Which stored backups to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    /// gzip level, 1 (fastest, the default) to 9 (smallest); 0 stores the snapshot uncompressed (still
    /// a .tar.gz that `tar xzf` reads), for nodes short of CPU or data that does not compress.
    #[serde(default = "default_compression_level")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 9").message("compressionLevel must be between 0 and 9"))]
    pub compression_level: i32,
    /// How archives are compressed (gzip unless set). `compressionLevel` applies to either codec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Resources of the backup sidecar container in every member pod (and of a backup's writer
    /// pod), in place of the default: requests 10m CPU and 32Mi, a 256Mi memory limit, no CPU
    /// limit. A CPU limit makes every backup slower and leaves more of the node to etcd while it
    /// runs (docs/benchmarks.md measures both). Applies to member pods started afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Encrypt every archive of this cluster with age before it leaves the member (off when unset).
    /// Encrypted archives are named `.tar.gz.age`; restores and automatic recovery decrypt them
    /// with the same Secret's `identity` unless the EtcdRestore names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::BackupEncryption>,
    /// Drill every backup of this cluster whose EtcdBackup does not say (`spec.drill`): restore it
    /// into scratch space and compare etcd's hash of it with the member's. On unless set to `false`,
    /// for clusters where drill Jobs cannot run; then `latest` restores and automatic recovery need
    /// `allowUnverified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drills: Option<bool>,
    /// Continuous backups (off when unset): after each full backup, one member's sidecar (a
    /// follower where possible) follows etcd's history and stores every revision in delta chunks
    /// beside the backup, so the recovery point stays about `period` old instead of a schedule
    /// interval. Needs a destination the members' sidecars write themselves (S3, or a volume the
    /// members mount). `status.continuous` shows the chain and its recovery point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous: Option<ContinuousBackup>,
}

/// How continuous backups store the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContinuousBackup {
    /// How often new revisions are stored, for example `10s` (the default) or `1m`: the recovery
    /// point stays about this old. At least `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub period: Option<String>,
    /// A chunk is stored as soon as it holds this many bytes, whatever the period (16 MiB by
    /// default): what bounds the sidecar's memory under a burst of writes. 1 MiB to 256 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1048576 && self <= 268435456").message("maxBytes must be between 1048576 (1 MiB) and 268435456 (256 MiB)"))]
    pub max_bytes: Option<i64>,
}

fn default_compression_level() -> i32 {
    1
}

/// How archives are compressed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    /// `gzip` (the default: `.tar.gz`, which every tool reads) or `zstd` (`.tar.zst`, which GNU
    /// `tar --zstd -xf` reads; about half the CPU of gzip per backup, so a backup
    /// competes less with etcd for the member's cores). Restores, drills and automatic recovery
    /// read either, whatever is set now. Needs sidecars of an operator that knows zstd.
    #[serde(default)]
    pub codec: crate::sidecar::Codec,
}

/// Which backups to keep. The newest successful backup is never deleted, whatever the policy says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Keep at most this many successful backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxCount must be at least 1"))]
    pub max_count: Option<i32>,
    /// Delete backups older than this, as a duration such as `72h`, `7d` or `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub max_age: Option<String>,
}

/// Quorum-loss handling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverySpec {
    /// `Manual` (the default) sets `QuorumLost` and waits for an `EtcdRestore`. `Automatic` restores
    /// from the newest verified backup and records the data-loss window.
    #[serde(default)]
    pub policy: RecoveryPolicy,
    /// With `Automatic`: how long quorum must stay lost before the restore starts, as a duration such
    /// as `5m` (the default) or `1h`. Members that come back within it (a node reboot) lose nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub grace_period: Option<String>,
    /// With `Automatic`: restore the newest backup even when no drill verified it (for clusters
    /// whose drills are off or cannot run). Backups whose drill failed are never used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unverified: bool,
}

/// What to do when quorum is lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RecoveryPolicy {
    /// Report and wait for a human.
    #[default]
    Manual,
    /// Restore from the newest verified backup without asking.
    Automatic,
}

/// Joining a temporary boot etcd and taking over from it.
///
/// Self-hosted members run on the host network, so an API server on the host reaches them without
/// cluster networking or DNS, and keep their data in a host directory, so a member survives a reboot of
/// its node. The operator places each member on a node itself (a Ready node matching
/// `spec.pod.nodeSelector`) and gives it its own block of four ports from `basePort` (client, peer,
/// metrics, backup sidecar), so several members can share a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfHostedSpec {
    /// Client URL of the boot etcd member, for example `https://10.0.0.10:12379`. The boot cluster
    /// must have exactly one member. The operator joins its first member to it as a learner, grows the
    /// self-hosted members to `spec.size`, and removes the boot member once every self-hosted member is
    /// a healthy voter and leadership has moved to one of them. Empty starts a fresh self-hosted cluster.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[x_kube(validation = Rule::new("self == '' || self.startsWith('http://') || self.startsWith('https://')").message("bootMemberClientEndpoint must be an http:// or https:// URL"))]
    pub boot_member_client_endpoint: String,
    /// Secret (`tls.crt`, `tls.key`, `ca.crt`) for talking to the boot member over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_member_client_tls_secret: Option<String>,
    /// Host directory for member data, used instead of `storage`. Each member gets the subdirectory
    /// `<namespace>-<member>`. It stays on the node when the member is removed (member names are never
    /// reused, so it is never mistaken for a new member's); delete it by hand to reclaim the space.
    #[serde(default = "default_host_data_dir")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('..')").message("hostDataDir must be an absolute path without '..'"))]
    pub host_data_dir: String,
    /// First port of the member port blocks: member slot `n` uses `basePort + 10n` (client),
    /// `+1` (peer), `+2` (metrics and health) and `+3` (backup sidecar).
    #[serde(default = "default_base_port")]
    #[x_kube(validation = Rule::new("self >= 1024 && self <= 65000").message("basePort must be between 1024 and 65000"))]
    pub base_port: i32,
    /// ClusterIP of the client Service `<cluster>-client`, chosen in advance (bootkube used the 15th
    /// address of the service range). An API server started with
    /// `--etcd-servers=<boot URL>,http://<this IP>:2379` keeps serving when the boot member is removed:
    /// the Service routes only to voting members. Set at creation; a Service's ClusterIP cannot change.
    #[serde(rename = "clientServiceIP", default, skip_serializing_if = "Option::is_none")]
    pub client_service_ip: Option<String>,
}

fn default_host_data_dir() -> String {
    "/var/lib/ouroboros-etcd".to_owned()
}

fn default_base_port() -> i32 {
    2379
}

/// What the operator observed, written only by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterStatus {
    /// Coarse lifecycle state; the conditions say why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of members in the etcd membership, learners included.
    #[serde(default)]
    pub size: i32,
    /// Members that are healthy voters.
    #[serde(default)]
    pub ready_members: i32,
    /// Every member, as etcd and Kubernetes report it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// etcd's cluster ID, hex. It changes only when the cluster is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Lowest etcd version any member runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Client URLs of the members, for clients that do not use the Service (self-hosted API servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_endpoints: Vec<String>,
    /// `Available`, `Progressing`, `Degraded`, `BackupHealthy`, `QuorumLost`, `Alarm` (a member reports
    /// an etcd alarm: NOSPACE or CORRUPT, named with the remedy), `DatabaseNearQuota` (a member's
    /// database is above 80 % of `spec.etcd.quotaBackendBytes`), `Maintenance` (a compaction,
    /// defragmentation or alarm disarm the operator runs or waits to run), `CertificatesValid` and
    /// `CertificatesExpiring` (with `spec.tls`: a certificate members could not use, naming the
    /// Secret and the fault; one ending within 30 days), `MembersUpToDate` (`False` names the
    /// members whose pods run another version, `spec.etcd` settings, pod template or certificates
    /// than the spec gives now; they are restarted onto it one at a time), `BootMemberRemoved`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The newest backup that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<BackupReference>,
    /// When the last scheduled backup was started (RFC 3339); used to catch up missed schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_backup_time: Option<String>,
    /// The backup this cluster was last restored from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<BackupReference>,
    /// The newest revision a member reported, recorded at most once a minute (the start of a
    /// data-loss window should quorum be lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_revision: Option<i64>,
    /// When `lastSeenRevision` was recorded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_revision_time: Option<String>,
    /// The last restore `spec.recovery.policy: Automatic` started, and the data it could not bring back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_recovery: Option<AutomaticRecovery>,
    /// Continuous backups (`spec.backup.continuous`): the chain being written and its recovery point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous: Option<ContinuousStatus>,
}

/// The delta chain of continuous backups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContinuousStatus {
    /// The full backup (EtcdBackup) the chain extends.
    pub backup: String,
    /// Its revision: the chain holds the revisions after it.
    pub base_revision: i64,
    /// The member whose sidecar follows the history; absent while none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The newest revision stored, in the full backup or a chunk.
    pub stored_revision: i64,
    /// Every write acknowledged before this time is stored (RFC 3339): the recovery point, also
    /// the metric `ouroboros_backup_recovery_point_timestamp_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<String>,
    /// Chunks the current follow stored.
    #[serde(default)]
    pub chunks: i64,
    /// Why the chain is not being extended right now (closed at a gap in etcd's history, no
    /// member to follow from, a destination sidecars cannot write); absent while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An automatic restore after a loss of quorum, and its data-loss window: everything written after
/// `backupRevision` is gone, which is at least `lastSeenRevision - backupRevision` revisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutomaticRecovery {
    /// The EtcdRestore started (in the cluster's namespace).
    pub restore_name: String,
    /// When quorum was lost: the `QuorumLost` condition's transition (RFC 3339).
    pub quorum_lost_time: String,
    /// When the restore was started (RFC 3339).
    pub start_time: String,
    /// The EtcdBackup restored: the newest that succeeded.
    pub backup_name: String,
    /// Its revision: the end of the restored history.
    pub backup_revision: i64,
    /// When it completed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_time: Option<String>,
    /// The newest revision seen before the loss, if any was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_revision: Option<i64>,
    /// When it was seen (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_time: Option<String>,
    /// `lastSeenRevision - backupRevision`: revisions written after the backup, lost (a lower bound,
    /// since writes after the last record are not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revisions_lost: Option<i64>,
    /// The cluster takes continuous backups: the restore replays the backup's delta chain to its
    /// end, so the loss is what the chain had not stored (the restore's `status.point` says where
    /// it ended) and `revisionsLost` is not set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub along_chain: bool,
}

/// Coarse lifecycle state of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ClusterPhase {
    /// The seed member is starting.
    Creating,
    /// Healthy, at the desired size and version.
    Running,
    /// Adding, promoting, removing or replacing a member.
    Scaling,
    /// Rolling members to a new version.
    Upgrading,
    /// Quorum holds but something is wrong; see the `Degraded` condition.
    Degraded,
    /// A majority of members is lost; no membership change is made.
    QuorumLost,
    /// Being rebuilt from a backup by an `EtcdRestore`.
    Restoring,
    /// `spec.paused` is set.
    Paused,
    /// Self-hosted: growing on the boot etcd and taking over from it.
    Pivoting,
    /// Rolling new `spec.etcd` settings out, compacting, defragmenting or clearing an alarm.
    Maintaining,
}

/// One member as etcd and Kubernetes report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name, which is also its pod's name.
    pub name: String,
    /// etcd member ID, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// URL peers reach it on.
    #[serde(rename = "peerURL", default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
    /// URL clients reach it on.
    #[serde(rename = "clientURL", default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
    /// A learner receives the log but does not vote.
    #[serde(default)]
    pub is_learner: bool,
    /// The current raft leader.
    #[serde(default)]
    pub is_leader: bool,
    /// etcd version the member reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The member answered a status request in time and reports no errors.
    #[serde(default)]
    pub healthy: bool,
    /// Size of its database file in bytes, as it last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size_bytes: Option<i64>,
    /// Bytes of that file in use; the rest is free space a defragmentation gives back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size_in_use_bytes: Option<i64>,
}
