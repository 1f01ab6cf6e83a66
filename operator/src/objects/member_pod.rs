//! Member pods: on the pod network, or self-hosted on a node's network.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use ouroboros_crds::{AntiAffinityMode, EtcdCluster, EtcdVersion};
use serde_json::json;

use super::{
    BuildError, owner, restricted_container_security, restricted_pod_security, selector_labels, to_object,
};
use crate::vocabulary::*;

/// The `--initial-cluster` value: `name=peerURL` for every member given.
pub fn initial_cluster(cluster: &EtcdCluster, members: &[String]) -> String {
    members
        .iter()
        .map(|m| format!("{m}={}", peer_url(cluster, m)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Bumped when the operator builds member pods differently in a way that must reach running members
/// (a probe, a mount, an environment variable), so that an upgraded operator rolls them.
const TEMPLATE_REVISION: u32 = 1;

/// The digest of what a member pod is built from, besides its identity, its etcd version (upgrades
/// roll members their own way), its `spec.etcd` settings ([`ANNOTATION_SETTINGS`]) and its
/// certificates (which have their own record): `spec.pod`, the etcd image repository and tag
/// format, the sidecar image and resources, the backup claim members mount, and
/// [`TEMPLATE_REVISION`]. Recorded on each pod as [`ANNOTATION_TEMPLATE`]; a pod recording another
/// is restarted onto the new template, one member at a time.
pub fn template_digest(cluster: &EtcdCluster, images: &Images) -> String {
    use sha2::Digest as _;
    let spec = &cluster.spec;
    let inputs = json!({
        "revision": TEMPLATE_REVISION,
        "pod": spec.pod,
        "etcdImage": etcd_image_pattern(cluster, images),
        "sidecarImage": images.sidecar,
        "sidecarResources": spec.backup.as_ref().and_then(|b| b.resources.as_ref()),
        "backupClaim": member_backup_volume(cluster).map(|d| d.claim_name),
    });
    let digest = sha2::Sha256::digest(inputs.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a member pod built before the template record runs the images it would be built with now:
/// its etcd container the image of its `version`, its sidecar the operator's sidecar image. What
/// can be seen of such a pod; the rest of its template is taken to be current.
pub fn pod_images_current(pod: &Pod, cluster: &EtcdCluster, images: &Images, version: EtcdVersion) -> bool {
    let image = |name: &str| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .and_then(|c| c.image.clone())
    };
    image(ETCD_CONTAINER).is_some_and(|i| i == etcd_image(cluster, images, version))
        && image(SIDECAR_CONTAINER).is_some_and(|i| i == images.sidecar)
}

/// A member pod. `initial_members` are the names in `--initial-cluster` (the member itself included).
pub fn member_pod(
    cluster: &EtcdCluster,
    images: &Images,
    member: &str,
    version: EtcdVersion,
    state: InitialClusterState,
    initial_members: &[String],
) -> Result<Pod, BuildError> {
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
) -> Result<Pod, BuildError> {
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
) -> Result<Pod, BuildError> {
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
    let settings = super::etcd_settings::settings_args(&spec.etcd, version);
    args.extend(settings.iter().cloned());
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
    let mut sidecar = SidecarParts::new(
        cluster,
        ports.sidecar,
        &format!("{sch}://127.0.0.1:{}", ports.client),
        &tls_name,
    );
    sidecar.mounts.insert(
        0,
        json!({"name": "data", "mountPath": DATA_MOUNT, "readOnly": true}),
    );
    volumes.append(&mut sidecar.volumes);
    // The default backup claim is mounted by writer pods, never by members (docs/design/backups.md).
    if let Some(dest) = member_backup_volume(cluster) {
        volumes.push(json!({"name": "backups", "persistentVolumeClaim": {"claimName": dest.claim_name}}));
        sidecar
            .mounts
            .push(json!({"name": "backups", "mountPath": format!("{BACKUP_MOUNT}/{}", dest.claim_name)}));
    }
    let affinity = spec
        .pod
        .affinity
        .clone()
        .map(|a| json!(a))
        .or_else(|| anti_affinity(cluster));
    let mut annotations = spec.pod.annotations.clone();
    annotations.insert(
        ANNOTATION_SETTINGS.to_owned(),
        super::etcd_settings::settings_annotation(&settings),
    );
    annotations.insert(ANNOTATION_TEMPLATE.to_owned(), template_digest(cluster, images));
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
        init_containers.push(copy_helper(images, "member-lock"));
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
                    "name": ETCD_CONTAINER,
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
                    "volumeMounts": etcd_mounts,
                    // etcd's last words when it exits in error (its log's tail) go into the pod's
                    // status: how the operator learns that etcd refused its data at start.
                    "terminationMessagePolicy": "FallbackToLogsOnError"
                },
                sidecar_container(cluster, images, ports.sidecar, sidecar.args, sidecar.mounts)
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
    to_object("Pod", pod)
}

/// What a backup sidecar needs to serve the operator and reach its member: its arguments, and the
/// volumes and mounts of its certificates. Member sidecars and backup writers share it, so a writer
/// reaches its member exactly as the member's own sidecar does.
pub(crate) struct SidecarParts {
    /// The sidecar's arguments.
    pub args: Vec<String>,
    /// The pod's volumes for them.
    pub volumes: Vec<serde_json::Value>,
    /// The sidecar's mounts of those volumes.
    pub mounts: Vec<serde_json::Value>,
}

impl SidecarParts {
    /// A sidecar listening on `port` that backs up the member at `endpoint`, whose certificate (on TLS
    /// clusters) is checked against `tls_name`.
    pub fn new(cluster: &EtcdCluster, port: u16, endpoint: &str, tls_name: &str) -> SidecarParts {
        // The sidecar's API is served to the operator alone, over mutual TLS with the certificate the
        // operator issued for this cluster's sidecars (docs/security.md).
        let mut mounts =
            vec![json!({"name": "sidecar-api-tls", "mountPath": SIDECAR_API_TLS_MOUNT, "readOnly": true})];
        let mut volumes = vec![json!({"name": "sidecar-api-tls", "secret": {
            "secretName": ouroboros_crds::sidecar::server_secret_name(&cluster.name_any()), "defaultMode": 0o400}})];
        let mut args = vec![
            format!("--listen=0.0.0.0:{port}"),
            format!("--etcd-endpoint={endpoint}"),
            format!("--api-tls-dir={SIDECAR_API_TLS_MOUNT}"),
        ];
        if let Some(tls) = &cluster.spec.tls {
            // The sidecar dials its member as the operator's client, checking the member's
            // certificate against the member's name.
            volumes.push(json!({"name": "client-tls", "secret": {"secretName": tls.operator_client_secret, "defaultMode": 0o400}}));
            mounts.push(
                json!({"name": "client-tls", "mountPath": format!("{TLS_MOUNT}/client"), "readOnly": true}),
            );
            args.extend([
                format!("--tls-dir={TLS_MOUNT}/client"),
                format!("--tls-server-name={tls_name}"),
            ]);
        }
        SidecarParts {
            args,
            volumes,
            mounts,
        }
    }
}

/// The backup sidecar's resources unless `spec.backup.resources` says otherwise: little requested
/// (it idles between backups), memory bounded (its peak is measured at 41–59 MiB, whatever the
/// database size), CPU not limited (a limit slows every backup; see docs/benchmarks.md for what it
/// buys the writers).
fn default_sidecar_resources() -> serde_json::Value {
    json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}})
}

/// The backup sidecar container of `cluster`, serving on `port`.
pub(crate) fn sidecar_container(
    cluster: &EtcdCluster,
    images: &Images,
    port: u16,
    args: Vec<String>,
    mounts: Vec<serde_json::Value>,
) -> serde_json::Value {
    let resources = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.resources.as_ref())
        .map_or_else(default_sidecar_resources, |r| json!(r));
    json!({
        "name": SIDECAR_CONTAINER,
        "image": images.sidecar,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        // glibc gives each compression thread its own malloc arena, which keeps freed
        // chunks, and after the first S3 part buffer is freed it raises its mmap
        // threshold so later part buffers come from (and stay in) the heap. Two arenas
        // and a fixed 4 MiB threshold (10 MiB part buffers are mapped and unmapped, 1 MiB
        // chunks are reused from the heap) hold the sidecar's peak memory down
        // (measured: see docs/benchmarks.md; e2e/bench/backup.sh sets the same).
        "env": [{"name": "MALLOC_ARENA_MAX", "value": "2"},
                {"name": "MALLOC_MMAP_THRESHOLD_", "value": "4194304"}],
        "ports": [{"name": "sidecar", "containerPort": port}],
        "resources": resources,
        "volumeMounts": mounts
    })
}

fn anti_affinity(cluster: &EtcdCluster) -> Option<serde_json::Value> {
    spread_by(cluster.spec.pod.anti_affinity, &selector_labels(cluster))
}

/// Pod anti-affinity that spreads the pods matching `labels` across nodes as `mode` says.
pub(crate) fn spread_by(mode: AntiAffinityMode, labels: &serde_json::Value) -> Option<serde_json::Value> {
    let term = json!({"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"});
    match mode {
        AntiAffinityMode::None => None,
        AntiAffinityMode::Required => {
            Some(json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}))
        }
        AntiAffinityMode::Preferred => Some(json!({"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
        }})),
    }
}

/// An init container copying the static helper `binary` (`backup-sidecar/member-lock`) from the
/// sidecar image into an emptyDir volume of the same name, which the container that runs it mounts
/// read-only at [`MEMBER_LOCK_DIR`]: etcd images may have no shell and no libc (the upstream ones
/// have neither), so what the operator runs inside an etcd container comes from its own image.
pub(crate) fn copy_helper(images: &Images, binary: &str) -> serde_json::Value {
    json!({
        "name": binary,
        "image": images.sidecar,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/cp", format!("/usr/local/bin/{binary}"), format!("{MEMBER_LOCK_DIR}/{binary}")],
        "volumeMounts": [{"name": binary, "mountPath": MEMBER_LOCK_DIR}]
    })
}
