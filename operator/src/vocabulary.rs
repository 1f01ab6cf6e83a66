//! The project's vocabulary: the names, labels, annotations, ports and paths every controller (and
//! the checkpointer) agrees on, and the pure functions that derive one name from another. It depends
//! on no controller, so no controller imports another for a name.
//!
//! Names: the headless Service is `<cluster>` and gives each member `<member>.<cluster>.<ns>.svc`; the
//! client Service is `<cluster>-client`; member pods are `<cluster>-<ordinal>` with PVC `<member>-data`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use ouroboros_crds::{EtcdCluster, EtcdVersion, VolumeDestination};

/// Annotation on an EtcdCluster while a restore owns it: the cluster controller changes nothing.
pub const RESTORE_HOLD: &str = "etcd.ouroboros.dev/restore-in-progress";
/// Revisions added on restore, so every revision after it exceeds any a client saw before (etcd's
/// documentation suggests this order of magnitude).
pub const BUMP_REVISION: u64 = 1_000_000_000;

/// Annotation on an EtcdCluster naming the EtcdBackup that holds its backup slot: one backup of a
/// cluster runs at a time, and the slot is taken by a merge patch carrying the cluster's
/// `resourceVersion`, so two backups that both saw it free cannot both take it. A holder that has
/// finished (or is gone) leaves the slot free for the next.
pub const ANNOTATION_BACKUP_SLOT: &str = "etcd.ouroboros.dev/backup-slot";

/// Label on EtcdBackups the schedule created.
pub const LABEL_SCHEDULED: &str = "etcd.ouroboros.dev/scheduled";

/// Member `<cluster>-<ordinal>`'s ordinal, if the name has that shape.
pub fn ordinal(cluster: &str, name: &str) -> Option<u32> {
    name.strip_prefix(cluster)?.strip_prefix('-')?.parse().ok()
}

/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;
/// etcd's metrics and health port.
pub const METRICS_PORT: u16 = 2381;
/// The backup sidecar's container in a member pod.
pub const SIDECAR_CONTAINER: &str = "backup-sidecar";
/// The etcd container of a member pod (and of a drill).
pub const ETCD_CONTAINER: &str = "etcd";
/// The backup sidecar's port.
pub const SIDECAR_PORT: u16 = 8090;
/// Where the data volume is mounted; etcd's data dir is `data/` inside it.
pub const DATA_MOUNT: &str = "/var/lib/etcd";

/// Label with the cluster name, on every owned object.
pub const LABEL_CLUSTER: &str = "etcd.ouroboros.dev/cluster";
/// Label with the member name, on pods and PVCs.
pub const LABEL_MEMBER: &str = "etcd.ouroboros.dev/member";
/// Label with the etcd version a member pod runs.
pub const LABEL_VERSION: &str = "etcd.ouroboros.dev/version";
/// Label `"true"` on pods whose member votes. The client Service selects on it: a learner refuses
/// most client requests, so clients (an API server above all) must not be sent to one.
pub const LABEL_VOTER: &str = "etcd.ouroboros.dev/voter";

/// Label `"true"` on self-hosted member pods: the checkpointer on their node keeps a static-pod copy
/// of each, which the kubelet runs without an API server (see `crate::checkpointer`).
pub const LABEL_CHECKPOINT: &str = "etcd.ouroboros.dev/checkpoint";

/// Where self-hosted members get the `member-lock` binary, copied from the sidecar image.
pub const MEMBER_LOCK_DIR: &str = "/ouroboros";
/// In the member's data volume, beside etcd's `data/`: the lock that lets one copy of a self-hosted
/// member (API pod or static-pod checkpoint) run etcd at a time.
pub const MEMBER_LOCK_FILE: &str = "/var/lib/etcd/member.lock";

/// On member pods: the etcd flags `spec.etcd` gave the member when its pod was built, one per line.
/// A member whose pod records other flags than the spec gives now is rolled.
pub const ANNOTATION_SETTINGS: &str = "etcd.ouroboros.dev/settings";

/// On member pods: the digest of everything else the pod was built from that a user or an operator
/// upgrade can change (`spec.pod`, the etcd repository and tag format, the sidecar image and its
/// resources, the backup claim), [`crate::objects::template_digest`]. A member whose pod records
/// another digest than the spec and the operator give now is rolled, one at a time.
pub const ANNOTATION_TEMPLATE: &str = "etcd.ouroboros.dev/template";

/// On an EtcdCluster: the revision the operator last compacted its history to (NOSPACE recovery).
pub const ANNOTATION_COMPACTED_REVISION: &str = "etcd.ouroboros.dev/compacted-revision";

/// On member pods: when the operator last started to defragment the member (RFC 3339).
pub const ANNOTATION_DEFRAGMENTED_AT: &str = "etcd.ouroboros.dev/defragmented-at";
/// On member pods: when the last defragmentation the operator started on the member ended well
/// (RFC 3339). One started since and not ended may still run in etcd: see
/// [`crate::controllers::defragmenting`].
pub const ANNOTATION_DEFRAGMENTATION_ENDED_AT: &str = "etcd.ouroboros.dev/defragmentation-ended-at";
/// On member pods: the member's revision when the operator last defragmented it. Under NOSPACE a
/// member defragmented at or after the recorded compaction is not defragmented again for it.
pub const ANNOTATION_DEFRAGMENTED_REVISION: &str = "etcd.ouroboros.dev/defragmented-revision";

/// On member pods of TLS clusters: the digest of the certificates in `spec.tls`'s Secrets when the
/// pod was built. A member whose pod records another digest is restarted onto the current ones.
pub const ANNOTATION_CERTIFICATES_DIGEST: &str = "etcd.ouroboros.dev/certificates-digest";

/// On self-hosted member pods: the first port of the member's port block.
pub const ANNOTATION_PORT_BASE: &str = "etcd.ouroboros.dev/port-base";
/// On self-hosted member pods: the member's peer URL, which names the member before etcd knows it.
pub const ANNOTATION_PEER_URL: &str = "etcd.ouroboros.dev/peer-url";

/// On self-hosted clusters: the lowest ordinal a new member may get, written before each member pod.
pub const ANNOTATION_NEXT_ORDINAL: &str = "etcd.ouroboros.dev/next-ordinal";

/// On a member's claim whose member was removed while its node was lost: the member and why. The data
/// may still be on that node, so the claim is kept for a human to delete; it is no member's data any
/// more, and its name (its ordinal) is never given to a new member.
pub const ANNOTATION_RETIRED: &str = "etcd.ouroboros.dev/retired";

/// The UID of another EtcdCluster that owns this object, if one does: a claim left by a deleted cluster
/// of the same name, not yet garbage-collected. A new cluster never adopts it, or it would start on the
/// old cluster's data.
pub fn foreign_owner(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    cluster: &EtcdCluster,
) -> Option<String> {
    let ours = cluster.metadata.uid.as_deref()?;
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "EtcdCluster" && o.uid != ours)
        .map(|o| o.uid.clone())
}

/// The lowest ordinal a new member of `cluster` may take: one past every ordinal ever recorded.
pub fn ordinal_floor(cluster: &EtcdCluster) -> u32 {
    cluster
        .annotations()
        .get(ANNOTATION_NEXT_ORDINAL)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The merge patch that records `ordinal` as taken.
pub fn ordinal_taken_patch(ordinal: u32) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {ANNOTATION_NEXT_ORDINAL: (ordinal + 1).to_string()}}})
}

/// The ports one member listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// Client (gRPC and HTTP API).
    pub client: u16,
    /// Peer (raft).
    pub peer: u16,
    /// Metrics and health, plain HTTP.
    pub metrics: u16,
    /// The backup sidecar.
    pub sidecar: u16,
}

impl Ports {
    /// Members on the pod network each have their own IP and use etcd's usual ports.
    pub const POD_NETWORK: Ports = Ports {
        client: CLIENT_PORT,
        peer: PEER_PORT,
        metrics: METRICS_PORT,
        sidecar: SIDECAR_PORT,
    };

    /// The block starting at `base` (self-hosted members share their node's network).
    pub fn block(base: u16) -> Ports {
        Ports {
            client: base,
            peer: base + 1,
            metrics: base + 2,
            sidecar: base + 3,
        }
    }
}

/// Port blocks of self-hosted members are this far apart.
pub const PORT_SLOT_STRIDE: u16 = 10;

/// The ports a member pod listens on: its annotated block, or the pod-network ports.
pub fn ports_of(pod: &Pod) -> Ports {
    pod.annotations()
        .get(ANNOTATION_PORT_BASE)
        .and_then(|b| b.parse().ok())
        .map_or(Ports::POD_NETWORK, Ports::block)
}

/// Where a self-hosted member runs: the node the operator chose, its address, and the member's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Node name.
    pub node: String,
    /// The node's InternalIP, which the member advertises.
    pub ip: String,
    /// The member's port block.
    pub ports: Ports,
}

impl Placement {
    /// `scheme://ip:peer`.
    pub fn peer_url(&self, cluster: &EtcdCluster) -> String {
        format!("{}://{}:{}", scheme(cluster), self.ip, self.ports.peer)
    }

    /// `scheme://ip:client`.
    pub fn client_url(&self, cluster: &EtcdCluster) -> String {
        format!("{}://{}:{}", scheme(cluster), self.ip, self.ports.client)
    }
}

/// A self-hosted member's data directory on its node.
pub fn host_data_dir(cluster: &EtcdCluster, member: &str) -> Option<String> {
    let sh = cluster.spec.self_hosted.as_ref()?;
    Some(format!(
        "{}/{}-{member}",
        sh.host_data_dir.trim_end_matches('/'),
        cluster.namespace().unwrap_or_default()
    ))
}

/// How a member pod starts etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialClusterState {
    /// The seed: a brand-new one-member cluster.
    New,
    /// Joining the existing cluster as the learner just added.
    Existing,
}

impl InitialClusterState {
    pub fn flag(self) -> &'static str {
        match self {
            InitialClusterState::New => "new",
            InitialClusterState::Existing => "existing",
        }
    }
}

/// Images and defaults from the operator's configuration.
#[derive(Clone, Debug)]
pub struct Images {
    /// Default etcd repository, for clusters that name none.
    pub etcd_repository: String,
    /// The tag of the default repository's images, `{version}` standing for the etcd version
    /// (`v{version}` for the etcd project's, `{version}-0` for registry.k8s.io/etcd).
    pub etcd_tag_format: String,
    /// The backup sidecar image.
    pub sidecar: String,
}

/// The member's DNS name: `<member>.<cluster>.<ns>.svc`.
pub fn member_host(cluster: &EtcdCluster, member: &str) -> String {
    format!(
        "{member}.{}.{}.svc",
        cluster.name_any(),
        cluster.namespace().unwrap_or_default()
    )
}

/// The name a member's server certificate is checked against when the member at `ip` is dialled:
/// its DNS name, or for a self-hosted member (on its node's network) the node's address, its `ip`.
pub fn member_tls_name(cluster: &EtcdCluster, member: &str, ip: &str) -> String {
    if cluster.spec.self_hosted.is_some() {
        ip.to_owned()
    } else {
        member_host(cluster, member)
    }
}

/// `https` with `spec.tls`, else `http`.
pub fn scheme(cluster: &EtcdCluster) -> &'static str {
    if cluster.spec.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// The member's peer URL.
pub fn peer_url(cluster: &EtcdCluster, member: &str) -> String {
    format!(
        "{}://{}:{PEER_PORT}",
        scheme(cluster),
        member_host(cluster, member)
    )
}

/// The member's client URL (what etcd advertises; the operator itself dials pod IPs).
pub fn client_url(cluster: &EtcdCluster, member: &str) -> String {
    format!(
        "{}://{}:{CLIENT_PORT}",
        scheme(cluster),
        member_host(cluster, member)
    )
}

/// Where the peer and server certificates are mounted in member pods.
pub const TLS_MOUNT: &str = "/etc/etcd/tls";

/// The member name a peer URL was built from (its first DNS label), if it has our shape.
pub fn member_name_from_peer_url(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split([':', '/']).next()?;
    let name = host.split('.').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// The host (an IPv6 literal without its brackets) and the port of a URL such as
/// `http://10.0.0.1:2380`; `None` without a scheme.
pub fn url_host_port(url: &str) -> Option<(&str, Option<u16>)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()),
        _ => (authority, None),
    };
    Some((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// The PVC of a member.
pub fn pvc_name(member: &str) -> String {
    format!("{member}-data")
}

/// The client Service's name.
pub fn client_service_name(cluster: &EtcdCluster) -> String {
    format!("{}-client", cluster.name_any())
}

/// Labels every object of the cluster carries (and selects on).
pub fn cluster_labels(cluster: &EtcdCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "etcd".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            crate::FIELD_MANAGER.to_owned(),
        ),
        (LABEL_CLUSTER.to_owned(), cluster.name_any()),
    ])
}

/// A label selector string for the cluster's objects.
pub fn cluster_selector(cluster: &EtcdCluster) -> String {
    format!("{LABEL_CLUSTER}={}", cluster.name_any())
}

/// The members' readiness check: etcd's health with a serializable read (no quorum needed), not
/// failing on a NOSPACE alarm.
pub const READINESS_PATH: &str = "/health?serializable=true&exclude=NOSPACE";

/// The user and group that members, restores and fetch Jobs run as: any unprivileged ID serves,
/// since the images need no user of their own, and the data volumes are given this group
/// (`fsGroup`) so the member can write them.
pub const UNPRIVILEGED_ID: i64 = 65532;

/// On a member's data claim: the user its data is written as. Claims made before members ran
/// unprivileged lack it; their data is root's, and members on them keep running as root
/// ([`run_as_root`]), since storage that does not apply `fsGroup` (hostPath-backed volumes, NFS)
/// would leave an unprivileged etcd unable to open its own data.
pub const ANNOTATION_DATA_UID: &str = "etcd.ouroboros.dev/data-uid";

/// Whether `claim` holds data written by root (made before members ran unprivileged).
pub fn written_by_root(claim: &PersistentVolumeClaim) -> bool {
    claim.annotations().get(ANNOTATION_DATA_UID).is_none()
}

/// Where the sidecar mounts its API certificate (`<cluster>-sidecar-tls`).
pub const SIDECAR_API_TLS_MOUNT: &str = "/etc/ouroboros/sidecar-api-tls";

/// Where the sidecar mounts a backup claim: `/backups/<claim>`.
pub const BACKUP_MOUNT: &str = "/backups";

/// The default backup claim's name.
pub fn default_backup_claim(cluster: &EtcdCluster) -> String {
    format!("{}-backups", cluster.name_any())
}

/// Label on a backup's writer pod naming its cluster. The writer deliberately lacks
/// [`LABEL_CLUSTER`], so the cluster's Services, PodDisruptionBudget, anti-affinity and observation
/// never take it for a member.
pub const LABEL_BACKUP_WRITER_OF: &str = "etcd.ouroboros.dev/backup-writer-of";

/// On an EtcdBackup: a new value asks for its restore drill to run again (see
/// `status.drillRequest`), say to find out whether its archive was damaged in the store since.
pub const ANNOTATION_DRILL_REQUEST: &str = "etcd.ouroboros.dev/drill-request";

/// On a backup's writer pod: the member its sidecar backs up (its `--etcd-endpoint`).
pub const ANNOTATION_WRITER_MEMBER: &str = "etcd.ouroboros.dev/backup-writer-member";

/// The writer pod of EtcdBackup `backup`: it writes backups to the default backup claim, which
/// members do not mount.
pub fn backup_writer_name(backup: &str) -> String {
    format!("{backup}-writer")
}

/// Whether backups to `dest` are written by a writer pod rather than by a member's sidecar: the
/// default claim (a ReadWriteOnce claim of the data claims' class) is mounted by no member, since
/// members on different nodes cannot all mount it (a claim named like it is treated alike).
pub fn written_by_writer(cluster: &EtcdCluster, dest: &VolumeDestination) -> bool {
    dest.claim_name == default_backup_claim(cluster)
}

/// The backup volume member pods mount: the cluster's volume destination unless it is the default
/// claim, which writer pods mount instead ([`written_by_writer`]).
pub fn member_backup_volume(cluster: &EtcdCluster) -> Option<VolumeDestination> {
    backup_volume(cluster).filter(|d| !written_by_writer(cluster, d))
}

/// The volume destination backups of this cluster use when none is named: `spec.backup.destination`
/// when it is a volume; the default claim `<cluster>-backups` when no destination is configured and
/// the data is on PVCs (it has the data claims' class and size); otherwise none (S3 is configured, or
/// the data is on emptyDir, where a default backup volume would be lost with the pod).
pub fn backup_volume(cluster: &EtcdCluster) -> Option<VolumeDestination> {
    match cluster.spec.backup.as_ref().and_then(|p| p.destination.as_ref()) {
        Some(d) => d.volume.clone(),
        None => cluster
            .spec
            .storage
            .persistent_volume_claim
            .as_ref()
            .map(|_| VolumeDestination {
                claim_name: default_backup_claim(cluster),
                path: String::new(),
            }),
    }
}

/// The directory in the sidecar for a volume destination: `/backups/<claim>/<path>/<ns>/<cluster>`.
pub fn backup_dir(cluster: &EtcdCluster, dest: &VolumeDestination) -> String {
    let mut dir = format!("{BACKUP_MOUNT}/{}", dest.claim_name);
    let path = dest.path.trim_matches('/');
    if !path.is_empty() {
        dir.push('/');
        dir.push_str(path);
    }
    format!(
        "{dir}/{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// The tag format of the etcd project's images, which clusters naming a repository of their own
/// use unless they set `spec.imageTagFormat`.
pub const ETCD_PROJECT_TAG_FORMAT: &str = "v{version}";

/// The image of an etcd version for this cluster: its own repository and tag format, or the
/// operator's. A cluster's repository goes with the cluster's tag format (the etcd project's when
/// it sets none), never with the operator's, which belongs to the operator's repository.
pub fn etcd_image(cluster: &EtcdCluster, images: &Images, version: EtcdVersion) -> String {
    etcd_image_pattern(cluster, images).replace("{version}", &version.to_string())
}

/// The etcd image of this cluster with `{version}` standing for the version (see [`etcd_image`]).
pub fn etcd_image_pattern(cluster: &EtcdCluster, images: &Images) -> String {
    let spec = &cluster.spec;
    let format = spec.image_tag_format.as_deref().filter(|f| !f.is_empty());
    let (repo, format) = match spec.repository.as_deref().filter(|r| !r.is_empty()) {
        Some(repo) => (repo, format.unwrap_or(ETCD_PROJECT_TAG_FORMAT)),
        None => (
            images.etcd_repository.as_str(),
            format.unwrap_or(&images.etcd_tag_format),
        ),
    };
    format!("{repo}:{format}")
}
