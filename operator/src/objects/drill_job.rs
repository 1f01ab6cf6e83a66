//! The restore drill of one backup: a Job whose pod fetches and verifies the archive exactly as a
//! restore does, restores it with `etcdutl snapshot restore` into scratch space (no
//! `--bump-revision`, no `--mark-compacted`: the revisions stay the member's, so the hash compares),
//! runs etcd on it alone (a native sidecar container, no peers, no auto-compaction, on the pod's own
//! loopback), and checks it with `etcd-backup-sidecar drill-check`, whose verdict is the check
//! container's termination message. Nothing in it reaches the live cluster: only the store.
//!
//! Each step is a container of its own, so the etcd image is used as it is published (no shell).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::{Resource, ResourceExt};
use ouroboros_crds::{EtcdBackup, EtcdCluster, EtcdVersion};
use serde_json::json;

use super::{BuildError, FetchTarget, fetch_container, restricted_container_security, to_object};
use crate::{
    backup_source::Chosen,
    vocabulary::{self, Images, LABEL_CLUSTER},
};

/// The container that restores the snapshot with etcdutl.
pub const RESTORE_CONTAINER: &str = "restore";
/// The etcd started on the restored data.
pub use crate::vocabulary::ETCD_CONTAINER;
/// The container whose termination message is the verdict.
pub const CHECK_CONTAINER: &str = "check";
/// Labels a drill Job (and its pod) with the backup it drills.
pub const LABEL_DRILL_OF: &str = "etcd.ouroboros.dev/drill-of";

const SCRATCH: &str = "/scratch";
const PEER: &str = "http://127.0.0.1:2380";
const CLIENT: &str = "http://127.0.0.1:2379";
/// etcd's largest supported quota; the drill's etcd only reads, but a database above its quota
/// would raise NOSPACE on start.
const MAX_QUOTA: u64 = 8 << 30;

/// One drill attempt of one backup.
#[derive(Debug, Clone)]
pub struct Drill<'a> {
    /// The backup.
    pub backup: &'a EtcdBackup,
    /// Its archive.
    pub chosen: &'a Chosen,
    /// A Secret whose `identity` decrypts it.
    pub identity_secret: Option<&'a str>,
    /// The etcd whose `etcdutl` and `etcd` restore and serve it: the cluster's.
    pub version: EtcdVersion,
    /// Which attempt this is (1 for the first), in the Job's name.
    pub attempt: u32,
    /// The drill request it answers (the annotation's value), if any, also in the Job's name.
    pub request: Option<&'a str>,
    /// The backup's revision.
    pub revision: u64,
    /// The hash the member reported (hash, compaction revision), when one was recorded.
    pub hash: Option<(u32, u64)>,
    /// `activeDeadlineSeconds`: past it the pod is stopped.
    pub deadline: Duration,
}

/// The Job of attempt `attempt` of the drill of `backup` for `request`: a new name per attempt and
/// per request, so a Job of an earlier attempt or of the drill before a request (both deleted in the
/// background once read) never stands for the next one. Attempts start at 1 again for each request,
/// hence a short stable hash of the request's value in the name.
pub fn drill_job_name(backup: &str, request: Option<&str>, attempt: u32) -> String {
    match request {
        None => format!("{backup}-drill-{attempt}"),
        Some(r) => {
            // FNV-1a: stable across builds, which std's hasher does not promise.
            let h = r.bytes().fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            format!("{backup}-drill-{:06x}-{attempt}", h & 0x00ff_ffff)
        }
    }
}

/// Scratch space for the snapshot and the restored copy of it (each about the raw size), with room
/// for etcd's WAL: twice the raw size plus 512Mi.
fn scratch_mib(raw_size: i64) -> u64 {
    (u64::try_from(raw_size).unwrap_or(0) * 2).div_ceil(1 << 20) + 512
}

/// Memory for a container that maps the database (etcdutl and etcd do): its size plus 256Mi.
fn mapped_mib(raw_size: i64) -> u64 {
    u64::try_from(raw_size).unwrap_or(0).div_ceil(1 << 20) + 256
}

/// The drill Job, owned by the backup (deleted with it).
pub fn drill_job(cluster: &EtcdCluster, images: &Images, drill: &Drill<'_>) -> Result<Job, BuildError> {
    let b = drill.backup;
    let owner = b.controller_owner_ref(&()).ok_or(BuildError {
        kind: "OwnerReference",
        source: serde::de::Error::custom("the EtcdBackup has no uid (it was not read from the API server)"),
    })?;
    let raw = drill.chosen.raw_size;
    let fetch = fetch_container(
        cluster,
        FetchTarget {
            chosen: drill.chosen,
            identity_secret: drill.identity_secret,
            image: &images.sidecar,
            out_volume: "scratch",
            out_dir: SCRATCH,
        },
    );
    let etcd_image = vocabulary::etcd_image(cluster, images, drill.version);
    let data = format!("{SCRATCH}/data");
    let scratch_mount = json!([{"name": "scratch", "mountPath": SCRATCH}]);
    let mapped = format!("{}Mi", mapped_mib(raw));
    let bounded = |memory: &str, cpu: &str| json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": memory}});
    let restore = json!({
        "name": RESTORE_CONTAINER, "image": etcd_image, "imagePullPolicy": "IfNotPresent",
        // Full paths: etcd images set no useful PATH when they have no shell (upstream ones).
        "command": ["/usr/local/bin/etcdutl", "snapshot", "restore", format!("{SCRATCH}/snapshot.db"),
                    "--data-dir", data, "--name", "drill",
                    "--initial-cluster", format!("drill={PEER}"), "--initial-advertise-peer-urls", PEER],
        "volumeMounts": scratch_mount, "resources": bounded(&mapped, "1"),
        "securityContext": restricted_container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    let quota = (u64::try_from(raw).unwrap_or(0) * 2).clamp(2 << 30, MAX_QUOTA);
    let scratch_size = format!("{}Mi", scratch_mib(raw));
    // The scratch space is asked for, so the scheduler puts the drill where it fits instead of the
    // kubelet evicting it half way (its emptyDir's sizeLimit is the cap). On etcd, the native
    // sidecar: it runs for the pod's life, so its requests count for the whole pod.
    let mut etcd_resources = bounded(&mapped, "1");
    etcd_resources["requests"]["ephemeral-storage"] = json!(scratch_size);
    let etcd = json!({
        "name": ETCD_CONTAINER, "image": etcd_image, "imagePullPolicy": "IfNotPresent",
        // A native sidecar: started before the check, stopped once it ends, so the Job completes.
        "restartPolicy": "Always",
        "command": ["/usr/local/bin/etcd", "--name", "drill", "--data-dir", data,
                    "--listen-client-urls", CLIENT, "--advertise-client-urls", CLIENT,
                    "--listen-peer-urls", PEER, "--initial-advertise-peer-urls", PEER,
                    "--initial-cluster", format!("drill={PEER}"),
                    // Nothing may compact the copy before it is hashed.
                    "--auto-compaction-retention=0",
                    format!("--quota-backend-bytes={quota}")],
        "volumeMounts": scratch_mount, "resources": etcd_resources,
        "securityContext": restricted_container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    let mut check_args = vec![
        "drill-check".to_owned(),
        format!("--endpoint={CLIENT}"),
        format!("--revision={}", drill.revision),
    ];
    if let Some((hash, compact)) = drill.hash {
        check_args.push(format!("--kv-hash={hash}"));
        check_args.push(format!("--compact-revision={compact}"));
    }
    let check = json!({
        "name": CHECK_CONTAINER, "image": images.sidecar, "imagePullPolicy": "IfNotPresent",
        "args": check_args, "resources": bounded("64Mi", "500m"),
        "securityContext": restricted_container_security()
    });
    let mut fetch_container = fetch.container;
    fetch_container["resources"] = bounded("256Mi", "1");
    let mut volumes = vec![json!({"name": "scratch", "emptyDir": {"sizeLimit": scratch_size}})];
    volumes.extend(fetch.volumes);
    let job_labels = json!({LABEL_CLUSTER: b.spec.cluster_name, LABEL_DRILL_OF: b.name_any()});
    // The pod must not carry the cluster label: the cluster's Services, PodDisruptionBudget and
    // anti-affinity select its members by that label alone, so a drill pod carrying it would be a
    // client endpoint that refuses connections, count toward the budget's quorum, and keep a member
    // off the drill's node. A Job is selected by none of them.
    let pod_labels = json!({LABEL_DRILL_OF: b.name_any()});
    to_object(
        "Job",
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": drill_job_name(&b.name_any(), drill.request, drill.attempt), "namespace": b.namespace(),
                         "labels": job_labels, "ownerReferences": [owner]},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": drill.deadline.as_secs().max(60),
                // A backstop: the operator deletes the Job once it has read the verdict.
                "ttlSecondsAfterFinished": 3600,
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": super::restricted_pod_security(),
                        // Nothing in the pod talks to the API server.
                        "automountServiceAccountToken": false,
                        "initContainers": [fetch_container, restore, etcd],
                        "containers": [check],
                        "volumes": volumes
                    }
                }
            }
        }),
    )
}
