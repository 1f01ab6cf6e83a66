//! Builders of the Kubernetes objects a cluster owns: pure functions from the cluster (and a member
//! name) to objects, applied by server-side apply.
//!
//! Names: the headless Service is `<cluster>` and gives each member `<member>.<cluster>.<ns>.svc`; the
//! client Service is `<cluster>-client`; member pods are `<cluster>-<ordinal>` with PVC `<member>-data`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{PersistentVolumeClaim, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Resource, ResourceExt};
use ouroboros_crds::{AntiAffinityMode, EtcdCluster, EtcdVersion, VolumeDestination};
use serde_json::json;

/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;
/// etcd's metrics and health port.
pub const METRICS_PORT: u16 = 2381;
/// The backup sidecar's container in a member pod.
pub const SIDECAR_CONTAINER: &str = "backup-sidecar";
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

/// On self-hosted member pods: the first port of the member's port block.
pub const ANNOTATION_PORT_BASE: &str = "etcd.ouroboros.dev/port-base";
/// On self-hosted member pods: the member's peer URL, which names the member before etcd knows it.
pub const ANNOTATION_PEER_URL: &str = "etcd.ouroboros.dev/peer-url";

/// On self-hosted clusters: the lowest ordinal a new member may get, written before each member pod.
pub const ANNOTATION_NEXT_ORDINAL: &str = "etcd.ouroboros.dev/next-ordinal";

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
    fn flag(self) -> &'static str {
        match self {
            InitialClusterState::New => "new",
            InitialClusterState::Existing => "existing",
        }
    }
}

/// Images and defaults from the operator's configuration.
#[derive(Clone, Debug)]
pub struct Images {
    /// Default etcd repository (`<repo>:v<version>`).
    pub etcd_repository: String,
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

pub fn owner(cluster: &EtcdCluster) -> OwnerReference {
    // An object fetched from the API always has a uid; an empty one would be refused by the server.
    cluster.controller_owner_ref(&()).unwrap_or_default()
}

fn selector_labels(cluster: &EtcdCluster) -> serde_json::Value {
    json!({ LABEL_CLUSTER: cluster.name_any() })
}

/// The headless Service that gives members stable DNS names. Not-ready addresses are published
/// because a member must resolve its peers before it can become ready.
pub fn headless_service(cluster: &EtcdCluster) -> Service {
    from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": cluster.name_any(), "namespace": cluster.namespace(),
                     "labels": cluster_labels(cluster), "ownerReferences": [owner(cluster)]},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector_labels(cluster),
            // Named target ports: self-hosted members listen on their own port blocks.
            "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client"},
                      {"name": "peer", "port": PEER_PORT, "targetPort": "peer"}]
        }
    }))
}

/// The Service clients use: ready voting members only; for self-hosted clusters, every voting
/// member, ready or not.
///
/// Why self-hosted differs: readiness reaches the Service through the kubelet's status updates,
/// which go through the API server, which stores them in this etcd through this Service. If the
/// API server restarts while members' readiness flips, the Service can be left with no ready
/// voter, the API server with no etcd, and nothing able to fix it (seen in the kuberception e2e).
/// Bootkube's etcd-service tolerated unready endpoints for the same reason. A voter that does not
/// answer only costs the client a retry.
pub fn client_service(cluster: &EtcdCluster) -> Service {
    let mut selector = selector_labels(cluster);
    selector[LABEL_VOTER] = "true".into();
    let self_hosted = cluster.spec.self_hosted.as_ref();
    let cluster_ip = self_hosted.and_then(|s| s.client_service_ip.clone());
    from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": client_service_name(cluster), "namespace": cluster.namespace(),
                     "labels": cluster_labels(cluster), "ownerReferences": [owner(cluster)]},
        "spec": {
            "clusterIP": cluster_ip,
            "publishNotReadyAddresses": self_hosted.is_some(),
            "selector": selector,
            "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client"}]
        }
    }))
}

/// A PodDisruptionBudget that keeps a quorum of the desired size running during voluntary
/// disruptions (drains).
pub fn pod_disruption_budget(cluster: &EtcdCluster) -> PodDisruptionBudget {
    let size = cluster.spec.size.max(1);
    let quorum = size / 2 + 1;
    from_json(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": cluster.name_any(), "namespace": cluster.namespace(),
                     "labels": cluster_labels(cluster), "ownerReferences": [owner(cluster)]},
        "spec": {"minAvailable": quorum, "selector": {"matchLabels": selector_labels(cluster)}}
    }))
}

/// The data PVC of a member, when storage asks for one. It records the member's version: a member
/// never changes version (upgrades add new members), and a member restarted on its claim after every
/// pod is gone must run the version its data was written by.
pub fn member_pvc(
    cluster: &EtcdCluster,
    member: &str,
    version: EtcdVersion,
) -> Option<PersistentVolumeClaim> {
    let pvc = cluster.spec.storage.persistent_volume_claim.as_ref()?;
    let mut labels = cluster_labels(cluster);
    labels.insert(LABEL_MEMBER.to_owned(), member.to_owned());
    labels.insert(LABEL_VERSION.to_owned(), version.to_string());
    Some(from_json(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc_name(member), "namespace": cluster.namespace(),
                     "labels": labels, "ownerReferences": [owner(cluster)],
                     "annotations": {ANNOTATION_DATA_UID: UNPRIVILEGED_ID.to_string()}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": pvc.storage_class_name,
            "resources": {"requests": {"storage": pvc.size}}
        }
    })))
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

/// Takes the unprivileged settings off a member pod whose data was written by root: it runs as
/// members did before, until a replacement or a restore gives it a new claim.
pub fn run_as_root(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        spec.security_context = None;
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.security_context = None;
        }
    }
}

/// The pod-level half of Kubernetes' `restricted` Pod Security profile, for every pod the operator
/// runs off the host network: non-root, volumes owned by the pod's group, the runtime's default
/// seccomp filter.
pub fn restricted_pod_security() -> serde_json::Value {
    json!({
        "runAsNonRoot": true, "runAsUser": UNPRIVILEGED_ID, "runAsGroup": UNPRIVILEGED_ID,
        "fsGroup": UNPRIVILEGED_ID,
        // A volume whose top directory already has the group is not walked again on every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

/// The container-level half: no privilege escalation, no capabilities, a read-only root filesystem
/// (etcd writes only its data volume; the sidecar only its backup volume and the network).
pub fn restricted_container_security() -> serde_json::Value {
    json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}})
}

/// Where the sidecar mounts its API certificate (`<cluster>-sidecar-tls`).
pub const SIDECAR_API_TLS_MOUNT: &str = "/etc/ouroboros/sidecar-api-tls";

/// Where the sidecar mounts a backup claim: `/backups/<claim>`.
pub const BACKUP_MOUNT: &str = "/backups";

/// The default backup claim's name.
pub fn default_backup_claim(cluster: &EtcdCluster) -> String {
    format!("{}-backups", cluster.name_any())
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

/// The default backup claim, when this cluster uses it. It has no owner: backups outlive the cluster.
pub fn default_backup_pvc(cluster: &EtcdCluster) -> Option<PersistentVolumeClaim> {
    let pvc = cluster.spec.storage.persistent_volume_claim.as_ref()?;
    let claim = backup_volume(cluster)?.claim_name;
    if claim != default_backup_claim(cluster) {
        return None;
    }
    Some(from_json(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": cluster.namespace(), "labels": cluster_labels(cluster)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": pvc.storage_class_name,
            "resources": {"requests": {"storage": pvc.size}}
        }
    })))
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

/// The image of an etcd version for this cluster.
pub fn etcd_image(cluster: &EtcdCluster, images: &Images, version: EtcdVersion) -> String {
    let repo = cluster
        .spec
        .repository
        .as_deref()
        .filter(|r| !r.is_empty())
        .unwrap_or(&images.etcd_repository);
    format!("{repo}:v{version}")
}

/// The `--initial-cluster` value: `name=peerURL` for every member given.
pub fn initial_cluster(cluster: &EtcdCluster, members: &[String]) -> String {
    members
        .iter()
        .map(|m| format!("{m}={}", peer_url(cluster, m)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A member pod. `initial_members` are the names in `--initial-cluster` (the member itself included).
pub fn member_pod(
    cluster: &EtcdCluster,
    images: &Images,
    member: &str,
    version: EtcdVersion,
    state: InitialClusterState,
    initial_members: &[String],
) -> Pod {
    build_member_pod(
        cluster,
        images,
        member,
        version,
        state,
        &initial_cluster(cluster, initial_members),
        None,
    )
}

/// A self-hosted member pod: on the host network of the node in `placement`, with its data in a host
/// directory. `initial_cluster` is the whole `--initial-cluster` value (the boot member's URL is not
/// one of ours).
pub fn self_hosted_member_pod(
    cluster: &EtcdCluster,
    images: &Images,
    member: &str,
    version: EtcdVersion,
    state: InitialClusterState,
    initial_cluster: &str,
    placement: &Placement,
) -> Pod {
    build_member_pod(
        cluster,
        images,
        member,
        version,
        state,
        initial_cluster,
        Some(placement),
    )
}

fn build_member_pod(
    cluster: &EtcdCluster,
    images: &Images,
    member: &str,
    version: EtcdVersion,
    state: InitialClusterState,
    initial_cluster: &str,
    placement: Option<&Placement>,
) -> Pod {
    let spec = &cluster.spec;
    let ports = placement.map_or(Ports::POD_NETWORK, |p| p.ports);
    let (peer_url, client_url, tls_name) = match placement {
        Some(p) => (p.peer_url(cluster), p.client_url(cluster), p.ip.clone()),
        None => (
            peer_url(cluster, member),
            client_url(cluster, member),
            member_host(cluster, member),
        ),
    };
    let mut labels = spec.pod.labels.clone();
    labels.extend(cluster_labels(cluster));
    labels.insert(LABEL_MEMBER.to_owned(), member.to_owned());
    labels.insert(LABEL_VERSION.to_owned(), version.to_string());
    // A seed votes from its first start; a joining member is a learner until promoted.
    labels.insert(
        LABEL_VOTER.to_owned(),
        (state == InitialClusterState::New).to_string(),
    );
    let token = format!(
        "{}-{}",
        cluster.name_any(),
        cluster
            .uid()
            .unwrap_or_default()
            .split('-')
            .next()
            .unwrap_or_default()
    );
    let sch = scheme(cluster);
    let mut args = vec![
        format!("--name={member}"),
        format!("--data-dir={DATA_MOUNT}/data"),
        format!("--listen-peer-urls={sch}://0.0.0.0:{}", ports.peer),
        format!("--listen-client-urls={sch}://0.0.0.0:{}", ports.client),
        format!("--listen-metrics-urls=http://0.0.0.0:{}", ports.metrics),
        format!("--advertise-client-urls={client_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--initial-cluster-state={}", state.flag()),
        format!("--initial-cluster-token={token}"),
        // Learners are added one at a time and promoted by the operator; etcd's own check is kept.
        "--strict-reconfig-check=true".to_owned(),
    ];
    let mut volumes = Vec::new();
    let mut etcd_mounts = vec![json!({"name": "data", "mountPath": DATA_MOUNT})];
    if let Some(tls) = &spec.tls {
        // Metrics and health stay plain HTTP on their own port, so probes need no certificates.
        args.extend([
            format!("--peer-cert-file={TLS_MOUNT}/peer/tls.crt"),
            format!("--peer-key-file={TLS_MOUNT}/peer/tls.key"),
            format!("--peer-trusted-ca-file={TLS_MOUNT}/peer/ca.crt"),
            "--peer-client-cert-auth=true".to_owned(),
            format!("--cert-file={TLS_MOUNT}/server/tls.crt"),
            format!("--key-file={TLS_MOUNT}/server/tls.key"),
            format!("--trusted-ca-file={TLS_MOUNT}/server/ca.crt"),
            "--client-cert-auth=true".to_owned(),
        ]);
        for (volume, secret) in [("peer-tls", &tls.peer_secret), ("server-tls", &tls.server_secret)] {
            volumes.push(json!({"name": volume, "secret": {"secretName": secret, "defaultMode": 0o400}}));
            let dir = volume.trim_end_matches("-tls");
            etcd_mounts
                .push(json!({"name": volume, "mountPath": format!("{TLS_MOUNT}/{dir}"), "readOnly": true}));
        }
    }
    let data_volume = match (
        host_data_dir(cluster, member),
        &spec.storage.persistent_volume_claim,
    ) {
        (Some(dir), _) => json!({"name": "data", "hostPath": {"path": dir, "type": "DirectoryOrCreate"}}),
        (None, Some(_)) => json!({"name": "data", "persistentVolumeClaim": {"claimName": pvc_name(member)}}),
        (None, None) => {
            let e = spec.storage.empty_dir.clone().unwrap_or_default();
            json!({"name": "data", "emptyDir": {"medium": e.medium.map(|_| "Memory"), "sizeLimit": e.size_limit}})
        }
    };
    // The sidecar's API is served to the operator alone, over mutual TLS with the certificate the
    // operator issued for this cluster's sidecars (docs/security.md).
    let mut sidecar_mounts = vec![
        json!({"name": "data", "mountPath": DATA_MOUNT, "readOnly": true}),
        json!({"name": "sidecar-api-tls", "mountPath": SIDECAR_API_TLS_MOUNT, "readOnly": true}),
    ];
    volumes.push(json!({"name": "sidecar-api-tls", "secret": {
        "secretName": ouroboros_crds::sidecar::server_secret_name(&cluster.name_any()), "defaultMode": 0o400}}));
    let mut sidecar_args = vec![
        format!("--listen=0.0.0.0:{}", ports.sidecar),
        format!("--etcd-endpoint={sch}://127.0.0.1:{}", ports.client),
        format!("--api-tls-dir={SIDECAR_API_TLS_MOUNT}"),
    ];
    if let Some(tls) = &spec.tls {
        // The sidecar dials its own member over loopback as the operator's client, checking the
        // member's certificate against the member's DNS name.
        volumes.push(json!({"name": "client-tls", "secret": {"secretName": tls.operator_client_secret, "defaultMode": 0o400}}));
        sidecar_mounts.push(
            json!({"name": "client-tls", "mountPath": format!("{TLS_MOUNT}/client"), "readOnly": true}),
        );
        sidecar_args.extend([
            format!("--tls-dir={TLS_MOUNT}/client"),
            format!("--tls-server-name={tls_name}"),
        ]);
    }
    if let Some(dest) = backup_volume(cluster) {
        volumes.push(json!({"name": "backups", "persistentVolumeClaim": {"claimName": dest.claim_name}}));
        sidecar_mounts
            .push(json!({"name": "backups", "mountPath": format!("{BACKUP_MOUNT}/{}", dest.claim_name)}));
    }
    let affinity = spec
        .pod
        .affinity
        .clone()
        .map(|a| json!(a))
        .or_else(|| anti_affinity(cluster));
    let mut annotations = spec.pod.annotations.clone();
    let mut pod_spec = json!({
        "hostname": member,
        "subdomain": cluster.name_any(),
        "affinity": affinity,
    });
    let mut command = vec!["/usr/local/bin/etcd".to_owned()];
    let mut init_containers = Vec::new();
    if placement.is_some() {
        // Two copies of this member may exist on its node (this pod and its static-pod checkpoint);
        // etcd runs under a lock in the member's host directory so that only one of them runs it.
        // The lock binary comes from our own image because etcd images may have no shell at all.
        command = vec![
            format!("{MEMBER_LOCK_DIR}/member-lock"),
            MEMBER_LOCK_FILE.to_owned(),
            "/usr/local/bin/etcd".to_owned(),
        ];
        init_containers.push(json!({
            "name": "member-lock",
            "image": images.sidecar,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/cp", "/usr/local/bin/member-lock", format!("{MEMBER_LOCK_DIR}/member-lock")],
            "volumeMounts": [{"name": "member-lock", "mountPath": MEMBER_LOCK_DIR}]
        }));
        etcd_mounts.push(json!({"name": "member-lock", "mountPath": MEMBER_LOCK_DIR, "readOnly": true}));
        volumes.push(json!({"name": "member-lock", "emptyDir": {}}));
        labels.insert(LABEL_CHECKPOINT.to_owned(), "true".to_owned());
    }
    if let Some(p) = placement {
        annotations.insert(ANNOTATION_PORT_BASE.to_owned(), p.ports.client.to_string());
        annotations.insert(ANNOTATION_PEER_URL.to_owned(), peer_url.clone());
        // The operator has placed the member: its URL carries the node's address, and its data stays
        // on that node. The host network lets an API server on the host reach it without cluster DNS.
        pod_spec = json!({
            "nodeName": p.node,
            "hostNetwork": true,
            "dnsPolicy": "ClusterFirstWithHostNet",
        });
    }
    let mut pod: serde_json::Value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": member, "namespace": cluster.namespace(),
            "labels": labels, "annotations": annotations,
            "ownerReferences": [owner(cluster)]
        },
        "spec": {
            "restartPolicy": "Always",
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 30,
            "nodeSelector": spec.pod.node_selector,
            "tolerations": spec.pod.tolerations,
            "priorityClassName": spec.pod.priority_class_name,
            "initContainers": (!init_containers.is_empty()).then_some(init_containers),
            "containers": [
                {
                    "name": "etcd",
                    "image": etcd_image(cluster, images, version),
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "args": args,
                    "ports": [
                        {"name": "client", "containerPort": ports.client},
                        {"name": "peer", "containerPort": ports.peer},
                        {"name": "metrics", "containerPort": ports.metrics}
                    ],
                    // Serializable health needs no quorum, so a learner or a partitioned member
                    // still reports its own state. Probed every second: a new or restored member
                    // counts as started only once Ready, and a 2 s period cost a restore up to 2 s;
                    // five failures still give about 5 s before a member leaves its Services.
                    // NOSPACE is excluded: under it etcd still serves reads, deletes and compaction,
                    // the very requests that clear it, and a member that left its Services over it
                    // would be out of reach of that remedy.
                    "readinessProbe": {"httpGet": {"path": READINESS_PATH, "port": ports.metrics},
                                       "periodSeconds": 1, "failureThreshold": 5},
                    "livenessProbe": {"httpGet": {"path": "/livez", "port": ports.metrics},
                                      "initialDelaySeconds": 15, "periodSeconds": 10, "failureThreshold": 6},
                    "resources": spec.pod.resources,
                    "volumeMounts": etcd_mounts
                },
                {
                    "name": SIDECAR_CONTAINER,
                    "image": images.sidecar,
                    "imagePullPolicy": "IfNotPresent",
                    "args": sidecar_args,
                    // glibc gives each compression thread its own malloc arena, which keeps freed
                    // chunks, and after the first S3 part buffer is freed it raises its mmap
                    // threshold so later part buffers come from (and stay in) the heap. Two arenas
                    // and a fixed 4 MiB threshold (10 MiB part buffers are mapped and unmapped, 1 MiB
                    // chunks are reused from the heap) hold the sidecar's peak memory down
                    // (measured: see docs/benchmarks.md; e2e/bench/backup.sh sets the same).
                    "env": [{"name": "MALLOC_ARENA_MAX", "value": "2"},
                            {"name": "MALLOC_MMAP_THRESHOLD_", "value": "4194304"}],
                    "ports": [{"name": "sidecar", "containerPort": ports.sidecar}],
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                    "volumeMounts": sidecar_mounts
                }
            ],
            "volumes": std::iter::once(data_volume).chain(volumes).collect::<Vec<_>>()
        }
    });
    if placement.is_none() {
        // Off the host network a member needs nothing of the node: it runs in the `restricted`
        // profile. Self-hosted members keep root: their data is a host directory the kubelet
        // creates as root, and hostPath is outside that profile anyway (docs/security.md).
        pod_spec["securityContext"] = restricted_pod_security();
        for c in pod["spec"]["containers"].as_array_mut().into_iter().flatten() {
            c["securityContext"] = restricted_container_security();
        }
    }
    if let (Some(spec), Some(extra)) = (pod["spec"].as_object_mut(), pod_spec.as_object()) {
        spec.extend(extra.clone());
    }
    from_json(pod)
}

fn anti_affinity(cluster: &EtcdCluster) -> Option<serde_json::Value> {
    let term = json!({"labelSelector": {"matchLabels": selector_labels(cluster)}, "topologyKey": "kubernetes.io/hostname"});
    match cluster.spec.pod.anti_affinity {
        AntiAffinityMode::None => None,
        AntiAffinityMode::Required => {
            Some(json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}))
        }
        AntiAffinityMode::Preferred => Some(json!({"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
        }})),
    }
}

/// Converts builder JSON into a typed object. The JSON is ours and always matches the type, so a
/// failure is a programming error caught by the builder tests.
fn from_json<T: serde::de::DeserializeOwned + Default>(v: serde_json::Value) -> T {
    match serde_json::from_value(strip_nulls(v)) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "builder produced an invalid object");
            T::default()
        }
    }
}

/// Drops `null`s so optional fields are omitted rather than sent as null. Empty maps stay: `emptyDir: {}`
/// is how a volume says which kind it is.
fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, strip_nulls(v)))
                .filter(|(_, v)| !v.is_null())
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> EtcdCluster {
        let mut c: EtcdCluster = serde_yaml::from_str(yaml).unwrap();
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("1234abcd-0000".into());
        c
    }

    #[test]
    fn a_claim_of_a_deleted_namesake_is_foreign() {
        let c = cluster(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: c}\nspec: {size: 1}\n",
        );
        let owned_by = |uid: &str, kind: &str| {
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(
                serde_json::json!({
                    "name": "c-0-data",
                    "ownerReferences": [{"apiVersion": "v1", "kind": kind, "name": "c", "uid": uid}],
                }),
            )
            .unwrap()
        };
        assert_eq!(foreign_owner(&owned_by("1234abcd-0000", "EtcdCluster"), &c), None);
        assert_eq!(
            foreign_owner(&owned_by("old-uid", "EtcdCluster"), &c).as_deref(),
            Some("old-uid")
        );
        assert_eq!(foreign_owner(&owned_by("x", "StatefulSet"), &c), None);
        assert_eq!(foreign_owner(&Default::default(), &c), None);
    }

    fn images() -> Images {
        Images {
            etcd_repository: "localhost/ouroboros/etcd".into(),
            sidecar: "sidecar:1".into(),
        }
    }

    const MINIMAL: &str =
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: c}\nspec: {size: 3}\n";

    #[test]
    fn url_hosts_and_ports() {
        assert_eq!(
            url_host_port("http://10.0.0.1:2380"),
            Some(("10.0.0.1", Some(2380)))
        );
        assert_eq!(
            url_host_port("https://[fd00::1]:2379/"),
            Some(("fd00::1", Some(2379)))
        );
        assert_eq!(url_host_port("http://c-0.c.ns.svc"), Some(("c-0.c.ns.svc", None)));
        assert_eq!(url_host_port("10.0.0.1:2380"), None);
    }

    #[test]
    fn names_and_urls() {
        let c = cluster(MINIMAL);
        assert_eq!(peer_url(&c, "c-1"), "http://c-1.c.ns.svc:2380");
        assert_eq!(
            member_name_from_peer_url("http://c-1.c.ns.svc:2380").as_deref(),
            Some("c-1")
        );
        assert_eq!(
            member_name_from_peer_url("https://10.0.0.1:2380").as_deref(),
            Some("10")
        );
        assert_eq!(member_name_from_peer_url("nonsense"), None);
        assert_eq!(
            initial_cluster(&c, &["c-0".into(), "c-1".into()]),
            "c-0=http://c-0.c.ns.svc:2380,c-1=http://c-1.c.ns.svc:2380"
        );
    }

    #[test]
    fn self_hosted_pods_run_on_their_node_network_with_their_own_ports_and_host_data() {
        let c = cluster(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: c}\nspec: {size: 3, selfHosted: {bootMemberClientEndpoint: 'http://127.0.0.1:22379', hostDataDir: /var/lib/x/}}\n",
        );
        let placement = Placement {
            node: "node1".into(),
            ip: "10.0.0.1".into(),
            ports: Ports::block(2389),
        };
        let v = "3.6.16".parse().unwrap();
        let p = self_hosted_member_pod(
            &c,
            &images(),
            "c-1",
            v,
            InitialClusterState::Existing,
            "boot=http://127.0.0.1:22380,c-1=http://10.0.0.1:2390",
            &placement,
        );
        assert_eq!(ports_of(&p), Ports::block(2389));
        assert_eq!(p.annotations()[ANNOTATION_PEER_URL], "http://10.0.0.1:2390");
        assert_eq!(p.labels()[LABEL_CHECKPOINT], "true");
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node1"));
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        // Placed by the operator: no scheduler hints that could contradict nodeName.
        assert!(spec.affinity.is_none() && spec.hostname.is_none());
        // A host directory and the host network: outside the restricted profile, left as root.
        assert!(spec.security_context.is_none());
        let args = spec.containers[0].args.clone().unwrap();
        for want in [
            "--listen-client-urls=http://0.0.0.0:2389",
            "--listen-peer-urls=http://0.0.0.0:2390",
            "--listen-metrics-urls=http://0.0.0.0:2391",
            "--advertise-client-urls=http://10.0.0.1:2389",
            "--initial-advertise-peer-urls=http://10.0.0.1:2390",
            "--initial-cluster=boot=http://127.0.0.1:22380,c-1=http://10.0.0.1:2390",
            "--initial-cluster-state=existing",
        ] {
            assert!(args.contains(&want.to_owned()), "{want} not in {args:?}");
        }
        let probe = spec.containers[0]
            .readiness_probe
            .clone()
            .unwrap()
            .http_get
            .unwrap();
        assert_eq!(
            probe.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2391)
        );
        assert_eq!(probe.path.as_deref(), Some(READINESS_PATH));
        let sidecar = spec.containers[1].args.clone().unwrap();
        assert!(
            sidecar.contains(&"--listen=0.0.0.0:2392".to_owned()),
            "{sidecar:?}"
        );
        assert!(
            sidecar.contains(&"--etcd-endpoint=http://127.0.0.1:2389".to_owned()),
            "{sidecar:?}"
        );
        // etcd runs under the member lock, from the binary the init container copies in.
        assert_eq!(
            spec.containers[0].command.clone().unwrap(),
            [
                "/ouroboros/member-lock",
                "/var/lib/etcd/member.lock",
                "/usr/local/bin/etcd"
            ]
        );
        let init = &spec.init_containers.clone().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some(images().sidecar.as_str()));
        let volumes = spec.volumes.unwrap();
        let data = volumes[0].host_path.clone().unwrap();
        assert_eq!(data.path, "/var/lib/x/ns-c-1");
        assert!(
            volumes
                .iter()
                .any(|v| v.name == "member-lock" && v.empty_dir.is_some())
        );
        // Pods on the pod network keep the usual ports.
        let ordinary = member_pod(
            &cluster(MINIMAL),
            &images(),
            "c-0",
            v,
            InitialClusterState::New,
            &["c-0".into()],
        );
        assert_eq!(ports_of(&ordinary), Ports::POD_NETWORK);
        // Only self-hosted members have a second copy to exclude.
        let ordinary_spec = ordinary.spec.clone().unwrap();
        assert!(ordinary_spec.init_containers.is_none());
        assert_eq!(
            ordinary_spec.containers[0].command.clone().unwrap(),
            ["/usr/local/bin/etcd"]
        );
        assert!(!ordinary.labels().contains_key(LABEL_CHECKPOINT));
    }

    #[test]
    fn members_on_data_written_by_root_keep_root_and_new_claims_are_marked() {
        let c = cluster(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: c}\nspec: {size: 1, storage: {persistentVolumeClaim: {size: 1Gi}}}\n",
        );
        let v = "3.6.16".parse().unwrap();
        let new_claim = member_pvc(&c, "c-0", v).unwrap();
        assert!(
            !written_by_root(&new_claim),
            "a claim this version makes is written unprivileged"
        );
        let mut old_claim = new_claim.clone();
        old_claim.metadata.annotations = None;
        assert!(
            written_by_root(&old_claim),
            "a claim without the mark holds root's data"
        );
        let mut p = member_pod(&c, &images(), "c-0", v, InitialClusterState::New, &["c-0".into()]);
        assert!(p.spec.as_ref().unwrap().security_context.is_some());
        run_as_root(&mut p);
        let spec = p.spec.unwrap();
        assert!(spec.security_context.is_none());
        assert!(spec.containers.iter().all(|c| c.security_context.is_none()));
    }

    #[test]
    fn seed_pod_starts_a_new_cluster_with_emptydir_and_sidecar() {
        let c = cluster(MINIMAL);
        let v = "3.6.16".parse().unwrap();
        let p = member_pod(&c, &images(), "c-0", v, InitialClusterState::New, &["c-0".into()]);
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("c-0"));
        assert_eq!(spec.subdomain.as_deref(), Some("c"));
        let etcd = &spec.containers[0];
        assert_eq!(etcd.image.as_deref(), Some("localhost/ouroboros/etcd:v3.6.16"));
        let args = etcd.args.clone().unwrap();
        assert!(
            args.contains(&"--initial-cluster-state=new".to_owned()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--initial-cluster=c-0=http://c-0.c.ns.svc:2380".to_owned()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--initial-cluster-token=c-1234abcd".to_owned()),
            "{args:?}"
        );
        assert_eq!(spec.containers[1].name, "backup-sidecar");
        // The sidecar's API is served with the certificate the operator issues for the cluster.
        let sidecar = &spec.containers[1];
        assert!(
            sidecar
                .args
                .clone()
                .unwrap()
                .contains(&format!("--api-tls-dir={SIDECAR_API_TLS_MOUNT}")),
            "{:?}",
            sidecar.args
        );
        let mount = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == SIDECAR_API_TLS_MOUNT)
            .expect("the sidecar does not mount its API certificate");
        assert_eq!(mount.read_only, Some(true));
        let volumes = spec.volumes.unwrap();
        let api_tls = volumes.iter().find(|v| v.name == mount.name).unwrap();
        assert_eq!(
            api_tls.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("c-sidecar-tls")
        );
        // etcd itself never sees it.
        assert!(
            spec.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != mount.name)
        );
        // The restricted Pod Security profile, for the pod and every container.
        let pod_security = spec.security_context.clone().expect("no pod securityContext");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.run_as_user, Some(UNPRIVILEGED_ID));
        assert_eq!(pod_security.fs_group, Some(UNPRIVILEGED_ID));
        assert_eq!(
            pod_security.seccomp_profile.map(|p| p.type_),
            Some("RuntimeDefault".to_owned())
        );
        for c in &spec.containers {
            let s = c.security_context.clone().unwrap_or_default();
            assert_eq!(s.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(s.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(
                s.capabilities.and_then(|c| c.drop),
                Some(vec!["ALL".to_owned()]),
                "{}",
                c.name
            );
        }
        assert!(volumes[0].empty_dir.is_some());
        let labels = p.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_VERSION], "3.6.16");
        assert_eq!(labels[LABEL_MEMBER], "c-0");
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "EtcdCluster");
        assert_eq!(owner.controller, Some(true));
        // Preferred anti-affinity is the default.
        assert!(
            spec.affinity
                .unwrap()
                .pod_anti_affinity
                .unwrap()
                .preferred_during_scheduling_ignored_during_execution
                .is_some()
        );
    }

    #[test]
    fn pvc_storage_gives_each_member_a_claim() {
        let c = cluster(
            &format!(
                "{MINIMAL}  storage: {{persistentVolumeClaim: {{size: 2Gi, storageClassName: fast}}}}\n"
            )
            .replace("spec: {size: 3}\n", "spec:\n  size: 3\n"),
        );
        let v = "3.6.16".parse().unwrap();
        let pvc = member_pvc(&c, "c-2", v).unwrap();
        assert_eq!(pvc.metadata.name.as_deref(), Some("c-2-data"));
        assert_eq!(pvc.labels()[LABEL_MEMBER], "c-2");
        assert_eq!(pvc.labels()[LABEL_VERSION], "3.6.16");
        let spec = pvc.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        let p = member_pod(
            &c,
            &images(),
            "c-2",
            v,
            InitialClusterState::Existing,
            &["c-0".into(), "c-2".into()],
        );
        let vol = &p.spec.unwrap().volumes.unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "c-2-data"
        );
        assert!(member_pvc(&cluster(MINIMAL), "c-0", v).is_none());
    }

    fn sidecar_backup_mount(p: &Pod) -> Option<(String, String)> {
        let spec = p.spec.clone().unwrap();
        let mount = spec.containers[1]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.name == "backups")?;
        let claim = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "backups")?
            .persistent_volume_claim?
            .claim_name;
        Some((claim, mount.mount_path))
    }

    #[test]
    fn backups_default_to_a_claim_beside_pvc_data_and_to_none_otherwise() {
        let v = "3.6.16".parse().unwrap();
        let pod =
            |c: &EtcdCluster| member_pod(c, &images(), "c-0", v, InitialClusterState::New, &["c-0".into()]);
        let pvc_data =
            "spec:\n  size: 3\n  storage: {persistentVolumeClaim: {size: 2Gi, storageClassName: fast}}\n";
        let with =
            |extra: &str| cluster(&MINIMAL.replace("spec: {size: 3}\n", &format!("{pvc_data}{extra}")));

        let c = with("");
        let claim = default_backup_pvc(&c).unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("c-backups"));
        assert!(
            claim.metadata.owner_references.is_none(),
            "backups must outlive the cluster"
        );
        assert_eq!(claim.spec.unwrap().storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            sidecar_backup_mount(&pod(&c)),
            Some(("c-backups".into(), "/backups/c-backups".into()))
        );
        assert_eq!(
            backup_dir(&c, &backup_volume(&c).unwrap()),
            "/backups/c-backups/ns/c"
        );

        let named = with(
            "  backup: {schedule: '0 * * * *', destination: {volume: {claimName: shared, path: etcd/}}}\n",
        );
        assert!(default_backup_pvc(&named).is_none());
        assert_eq!(
            sidecar_backup_mount(&pod(&named)),
            Some(("shared".into(), "/backups/shared".into()))
        );
        assert_eq!(
            backup_dir(&named, &backup_volume(&named).unwrap()),
            "/backups/shared/etcd/ns/c"
        );

        let s3 = with("  backup: {schedule: '0 * * * *', destination: {s3: {bucket: bkt}}}\n");
        assert!(default_backup_pvc(&s3).is_none());
        assert_eq!(sidecar_backup_mount(&pod(&s3)), None);

        let empty_dir = cluster(MINIMAL);
        assert!(backup_volume(&empty_dir).is_none());
        assert_eq!(sidecar_backup_mount(&pod(&empty_dir)), None);
    }

    #[test]
    fn pdb_keeps_quorum() {
        let c = cluster(MINIMAL);
        let pdb = pod_disruption_budget(&c);
        assert_eq!(
            pdb.spec.unwrap().min_available,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
        );
    }

    #[test]
    fn repository_override_and_required_anti_affinity() {
        let c = cluster(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: c}\nspec: {size: 1, repository: my.registry/etcd, pod: {antiAffinity: Required}}\n",
        );
        assert_eq!(
            etcd_image(&c, &images(), "3.5.35".parse().unwrap()),
            "my.registry/etcd:v3.5.35"
        );
        let p = member_pod(
            &c,
            &images(),
            "c-0",
            "3.5.35".parse().unwrap(),
            InitialClusterState::New,
            &["c-0".into()],
        );
        assert!(
            p.spec
                .unwrap()
                .affinity
                .unwrap()
                .pod_anti_affinity
                .unwrap()
                .required_during_scheduling_ignored_during_execution
                .is_some()
        );
    }

    #[test]
    fn tls_members_use_https_and_mount_their_certificates() {
        let c = cluster(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: c}\nspec: {size: 1, tls: {peerSecret: p, serverSecret: s, operatorClientSecret: o}}\n",
        );
        assert_eq!(peer_url(&c, "c-0"), "https://c-0.c.ns.svc:2380");
        let p = member_pod(
            &c,
            &images(),
            "c-0",
            "3.6.16".parse().unwrap(),
            InitialClusterState::New,
            &["c-0".into()],
        );
        let spec = p.spec.unwrap();
        let args = spec.containers[0].args.clone().unwrap();
        for flag in [
            "--listen-client-urls=https://0.0.0.0:2379",
            "--listen-metrics-urls=http://0.0.0.0:2381",
            "--client-cert-auth=true",
            "--peer-client-cert-auth=true",
            "--initial-cluster=c-0=https://c-0.c.ns.svc:2380",
        ] {
            assert!(args.contains(&flag.to_owned()), "{flag} missing from {args:?}");
        }
        let volumes = spec.volumes.unwrap();
        let secret = |n: &str| {
            volumes
                .iter()
                .find(|v| v.name == n)
                .and_then(|v| v.secret.clone())
                .and_then(|s| s.secret_name)
        };
        assert_eq!(secret("peer-tls").as_deref(), Some("p"));
        assert_eq!(secret("server-tls").as_deref(), Some("s"));
        // The client certificate (spec.tls.operatorClientSecret) is for the backup sidecar alone: the
        // etcd container never sees it, and the sidecar reads it read-only.
        assert_eq!(secret("client-tls").as_deref(), Some("o"));
        let mounts = |i: usize| spec.containers[i].volume_mounts.clone().unwrap_or_default();
        assert!(
            mounts(0).iter().all(|m| m.name != "client-tls"),
            "etcd mounts the client certificate"
        );
        let m = mounts(1)
            .into_iter()
            .find(|m| m.name == "client-tls")
            .expect("sidecar lacks it");
        assert_eq!(m.read_only, Some(true));
        let sidecar_args = spec.containers[1].args.clone().unwrap_or_default();
        assert!(
            sidecar_args.contains(&"--etcd-endpoint=https://127.0.0.1:2379".to_owned()),
            "{sidecar_args:?}"
        );
        assert!(
            sidecar_args.contains(&"--tls-server-name=c-0.c.ns.svc".to_owned()),
            "{sidecar_args:?}"
        );
    }

    #[test]
    fn services_select_the_cluster() {
        let c = cluster(MINIMAL);
        let h = headless_service(&c).spec.unwrap();
        assert_eq!(h.cluster_ip.as_deref(), Some("None"));
        assert_eq!(h.publish_not_ready_addresses, Some(true));
        let s = client_service(&c);
        assert_eq!(s.metadata.name.as_deref(), Some("c-client"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.selector.unwrap()[LABEL_CLUSTER], "c");
        // Ordinary clients only reach ready members.
        assert_eq!(spec.publish_not_ready_addresses, Some(false));
        let self_hosted = cluster(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: c}\nspec: {size: 3, selfHosted: {bootMemberClientEndpoint: 'http://127.0.0.1:22379'}}\n",
        );
        // The API server's etcd must not depend on readiness that only the API server can record.
        let spec = client_service(&self_hosted).spec.unwrap();
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap()[LABEL_VOTER], "true");
    }
}
