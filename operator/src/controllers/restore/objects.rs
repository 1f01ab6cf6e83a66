//! What a restore creates: the snapshot claim, the fetch Job that verifies the archive into it, and
//! the seed member's pod that restores from it. Pure builders returning typed objects; a build that
//! fails is an error, never an empty object sent in its place.

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Container, PersistentVolumeClaim, Pod, Volume},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Resource, ResourceExt};
use ouroboros_crds::{EtcdCluster, EtcdRestore, EtcdVersion};
use serde_json::json;

use crate::{
    backup_source::Chosen,
    objects::{self, BuildError, FetchTarget, to_object},
    vocabulary::{self, BUMP_REVISION, DATA_MOUNT, Images, InitialClusterState},
};

/// The claim verified copy `copy` of the snapshot is fetched into (restored member `copy`
/// restores from it).
pub fn snapshot_claim_name(r: &EtcdRestore, copy: u32) -> String {
    match copy {
        0 => format!("{}-snapshot", r.name_any()),
        n => format!("{}-snapshot-{n}", r.name_any()),
    }
}

/// The Job that fetches and verifies copy `copy` of the archive.
pub fn fetch_job_name(r: &EtcdRestore, copy: u32) -> String {
    match copy {
        0 => format!("{}-fetch", r.name_any()),
        n => format!("{}-fetch-{n}", r.name_any()),
    }
}

/// Labels the fetch pods of a restore that spreads its copies, to spread them by.
const LABEL_FETCH_OF: &str = "etcd.ouroboros.dev/restore-fetch";
/// The static helper that restores a member's data once (`backup-sidecar/member-lock`).
const RESTORE_ONCE: &str = "restore-once";

/// The restore as the controlling owner of what it creates (deleted with it).
fn owner(r: &EtcdRestore) -> Result<OwnerReference, BuildError> {
    r.controller_owner_ref(&()).ok_or(BuildError {
        kind: "OwnerReference",
        source: serde::de::Error::custom("the EtcdRestore has no uid (it was not read from the API server)"),
    })
}

/// Room for the snapshot with some slack, at least 1Gi; when its size is unknown (`source.object`),
/// as much as a member's claim, which no snapshot of a member can outgrow. Taken along a delta
/// chain (`along_chain`), three times that: the fetched snapshot, the private etcd's data that
/// replays the chain on it, and the snapshot at the point.
pub fn snapshot_claim_size(raw_size: i64, cluster: &EtcdCluster, along_chain: bool) -> String {
    let member_claim = cluster.spec.storage.persistent_volume_claim.as_ref();
    let times = if along_chain { 3 } else { 1 };
    let gib = |bytes: u64| format!("{}Gi", bytes.div_ceil(1 << 30).max(1));
    match (raw_size, member_claim) {
        (0, Some(p)) if along_chain => match quantity_bytes(&p.size.0) {
            Some(b) => gib(b.saturating_mul(times)),
            None => p.size.0.clone(),
        },
        (0, Some(p)) => p.size.0.clone(),
        (0, None) => format!("{}Gi", 8 * times),
        (raw, _) => gib(u64::try_from(raw).unwrap_or(0) * 12 * times / 10),
    }
}

/// Bytes of a storage quantity such as `10Gi`, `1.5Gi`, `500M` or `1073741824` (the forms a claim
/// size takes); `None` for anything else.
fn quantity_bytes(q: &str) -> Option<u64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let unit: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    let bytes = number.parse::<f64>().ok()? * unit;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes.ceil() as u64)
}

/// The snapshot claim, in the member claims' storage class.
pub fn snapshot_claim(
    r: &EtcdRestore,
    cluster: &EtcdCluster,
    chosen: &Chosen,
    copy: u32,
    along_chain: bool,
) -> Result<PersistentVolumeClaim, BuildError> {
    let class = cluster
        .spec
        .storage
        .persistent_volume_claim
        .as_ref()
        .and_then(|p| p.storage_class_name.clone());
    to_object(
        "PersistentVolumeClaim",
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": snapshot_claim_name(r, copy), "namespace": r.namespace(), "ownerReferences": [owner(r)?]},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": snapshot_claim_size(chosen.raw_size, cluster, along_chain)}}}
        }),
    )
}

/// One verified copy of the archive to fetch.
#[derive(Clone, Copy, Debug)]
pub struct FetchCopy<'a> {
    /// The archive.
    pub chosen: &'a Chosen,
    /// A Secret whose identity decrypts it.
    pub identity_secret: Option<&'a str>,
    /// The sidecar image.
    pub image: &'a str,
    /// Which copy (restored member `copy` restores from it).
    pub copy: u32,
    /// Several copies are fetched: each lands where its member will run, so the fetch pods are
    /// scheduled as members are (their node selector, tolerations and node affinity) and spread
    /// across nodes as members are. On node-local storage a claim binds where its first pod runs,
    /// and the member that mounts it later must run there too.
    pub spread: bool,
    /// Take the verified snapshot along the backup's delta chain to a point.
    pub point: Option<FetchPoint<'a>>,
}

/// A point of a delta chain a fetch takes its snapshot to.
#[derive(Clone, Copy, Debug)]
pub struct FetchPoint<'a> {
    /// The point.
    pub target: &'a ouroboros_crds::PointTarget,
    /// The backup's revision, where its chain starts.
    pub base_revision: u64,
    /// The cluster's etcd image: its `etcd` and `etcdutl` replay the chain (the sidecar image has
    /// no etcd, and a replay must run the version the members run).
    pub etcd_image: &'a str,
}

/// Where the fetch finds `etcd` and `etcdutl` when it replays a chain.
const ETCD_TOOLS: &str = "/etcd-tools";

/// Hands the fetch container the etcd image's binaries: upstream etcd images have no shell or
/// `cp`, so the sidecar image's static busybox is copied first and does the copying there.
fn etcd_tool_copiers(sidecar_image: &str, etcd_image: &str) -> [serde_json::Value; 2] {
    let mount = json!([{"name": "etcd-tools", "mountPath": ETCD_TOOLS}]);
    let security = objects::restricted_container_security();
    [
        json!({"name": "busybox", "image": sidecar_image, "imagePullPolicy": "IfNotPresent",
               "command": ["/bin/cp", "/bin/busybox", format!("{ETCD_TOOLS}/busybox")],
               "securityContext": security, "volumeMounts": mount,
               "terminationMessagePolicy": "FallbackToLogsOnError"}),
        json!({"name": "etcd-tools", "image": etcd_image, "terminationMessagePolicy": "FallbackToLogsOnError", "imagePullPolicy": "IfNotPresent",
               "command": [format!("{ETCD_TOOLS}/busybox"), "cp", "/usr/local/bin/etcd", "/usr/local/bin/etcdutl", format!("{ETCD_TOOLS}/")],
               "securityContext": security, "volumeMounts": mount}),
    ]
}

/// The Job that runs `etcd-backup-sidecar fetch` into a snapshot claim (see
/// [`objects::fetch_container`]).
pub fn fetch_job(r: &EtcdRestore, cluster: &EtcdCluster, f: FetchCopy<'_>) -> Result<Job, BuildError> {
    let fetch = objects::fetch_container(
        cluster,
        FetchTarget {
            chosen: f.chosen,
            identity_secret: f.identity_secret,
            image: f.image,
            out_volume: "snapshot",
            out_dir: "/snapshot",
        },
    );
    let mut volumes = vec![
        json!({"name": "snapshot", "persistentVolumeClaim": {"claimName": snapshot_claim_name(r, f.copy)}}),
    ];
    volumes.extend(fetch.volumes);
    let mut container = fetch.container;
    let mut init = Vec::new();
    if let Some(p) = f.point {
        let mut args = vec![
            format!("--chain-of={}", f.chosen.name),
            format!("--base-revision={}", p.base_revision),
            format!("--etcd-bin-dir={ETCD_TOOLS}"),
        ];
        if let Some(rev) = p.target.revision {
            args.push(format!("--to-revision={rev}"));
        } else if let Some(t) = &p.target.time {
            // The base was chosen completed by then (`backup_source::check_base`).
            args.push(format!("--to-time={t}"));
            args.push("--base-completed-by-time".to_owned());
        }
        let missing = || BuildError {
            kind: "Job",
            source: serde::de::Error::custom("the fetch container has no args or mounts"),
        };
        container["args"]
            .as_array_mut()
            .ok_or_else(missing)?
            .extend(args.into_iter().map(serde_json::Value::from));
        container["volumeMounts"]
            .as_array_mut()
            .ok_or_else(missing)?
            .push(json!({"name": "etcd-tools", "mountPath": ETCD_TOOLS, "readOnly": true}));
        init.extend(etcd_tool_copiers(f.image, p.etcd_image));
        volumes.push(json!({"name": "etcd-tools", "emptyDir": {}}));
    }
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "securityContext": objects::restricted_pod_security(),
        "initContainers": init,
        "containers": [container],
        "volumes": volumes
    });
    let mut labels = json!({});
    // Where the copy lands its member restores from it (a claim on node-local storage binds where
    // its first pod runs): several copies, and the one copy of a point restore (from S3, so nothing
    // ties it to a node), are placed as members are. A copy from a `file` archive runs where the
    // archive's claim is, as before.
    if f.spread || f.point.is_some() {
        let pod = &cluster.spec.pod;
        let mut affinity = json!({});
        if f.spread {
            let mine = json!({LABEL_FETCH_OF: r.name_any()});
            // A user's own affinity replaces the operator's spreading of members; its node part
            // still says where members may run, and the copies are then spread by preference.
            let mode = match pod.affinity {
                Some(_) => ouroboros_crds::AntiAffinityMode::Preferred,
                None => pod.anti_affinity,
            };
            affinity = objects::spread_by(mode, &mine).unwrap_or_else(|| json!({}));
            labels = mine;
        }
        if let Some(node) = pod.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()) {
            affinity["nodeAffinity"] = json!(node);
        }
        pod_spec["affinity"] = affinity;
        pod_spec["nodeSelector"] = json!(pod.node_selector);
        pod_spec["tolerations"] = json!(pod.tolerations);
    }
    to_object(
        "Job",
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": fetch_job_name(r, f.copy), "namespace": r.namespace(), "ownerReferences": [owner(r)?]},
            "spec": {
                "backoffLimit": 0,
                "template": {"metadata": {"labels": labels}, "spec": pod_spec}
            }
        }),
    )
}

/// A restored member's pod: a new member whose init container restores its verified copy of the
/// snapshot (mounted read-only from `claim`) into its data directory with the whole restored
/// membership `members` (only when that directory is still empty, so a pod that starts again does
/// not restore twice).
pub fn restored_member_pod(
    cluster: &EtcdCluster,
    images: &Images,
    member: &str,
    members: &[String],
    version: EtcdVersion,
    token: &str,
    claim: &str,
) -> Result<Pod, BuildError> {
    let mut pod = objects::member_pod(
        cluster,
        images,
        member,
        version,
        InitialClusterState::New,
        members,
    )?;
    let peer = vocabulary::peer_url(cluster, member);
    let initial = objects::initial_cluster(cluster, members);
    // No shell: upstream etcd images have none. `restore-once` skips a directory already restored
    // (the pod started again) and renames the restored directory into place only when etcdutl
    // succeeded, so a restore killed halfway starts over (backup-sidecar/member-lock).
    let data = format!("{DATA_MOUNT}/data");
    let restore = [
        format!("{}/{RESTORE_ONCE}", vocabulary::MEMBER_LOCK_DIR),
        data,
        "/usr/local/bin/etcdutl".to_owned(),
        "snapshot".to_owned(),
        "restore".to_owned(),
        "/snapshot/snapshot.db".to_owned(),
        "--name".to_owned(),
        member.to_owned(),
        "--initial-cluster".to_owned(),
        initial,
        "--initial-advertise-peer-urls".to_owned(),
        peer,
        "--initial-cluster-token".to_owned(),
        token.to_owned(),
        "--bump-revision".to_owned(),
        BUMP_REVISION.to_string(),
        "--mark-compacted".to_owned(),
    ];
    let etcd_image = vocabulary::etcd_image(cluster, images, version);
    let spec = pod.spec.as_mut().ok_or(BuildError {
        kind: "Pod",
        source: serde::de::Error::custom("the member pod has no spec"),
    })?;
    // The restore runs as the member does: restricted when the member is.
    let security = spec
        .security_context
        .is_some()
        .then(objects::restricted_container_security);
    let mut copy = objects::copy_helper(images, RESTORE_ONCE);
    copy["securityContext"] = json!(security);
    let copy: Container = to_object("Container", copy)?;
    let init: Container = to_object(
        "Container",
        json!({
            "name": "restore", "image": etcd_image, "imagePullPolicy": "IfNotPresent",
            "command": restore,
            "securityContext": security,
            // restore-once and etcdutl say why on stderr; the failing-member reason quotes it.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT},
                             {"name": "snapshot", "mountPath": "/snapshot", "readOnly": true},
                             {"name": RESTORE_ONCE, "mountPath": vocabulary::MEMBER_LOCK_DIR, "readOnly": true}]
        }),
    )?;
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .extend([copy, init]);
    // etcd's initial corruption check asks every peer for its hash before serving, waiting up to a
    // request timeout (about 7 s) for each; restored members all start at the same moment and none
    // answers yet, so each stalled about 16 s (measured, docs/benchmarks.md). Their copies were each
    // verified against one digest, so there is nothing for the check to find. The periodic checks
    // and the operator's own hash comparisons still run.
    for c in spec
        .containers
        .iter_mut()
        .filter(|c| c.name == vocabulary::ETCD_CONTAINER)
    {
        for arg in c.command.iter_mut().chain(c.args.iter_mut()).flatten() {
            *arg = arg
                .replace("InitialCorruptCheck=true", "InitialCorruptCheck=false")
                .replace(
                    "--experimental-initial-corrupt-check=true",
                    "--experimental-initial-corrupt-check=false",
                );
        }
    }
    let snapshot: Volume = to_object(
        "Volume",
        json!({"name": "snapshot", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}),
    )?;
    let helper: Volume = to_object("Volume", json!({"name": RESTORE_ONCE, "emptyDir": {}}))?;
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend([snapshot, helper]);
    Ok(pod)
}
