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

/// The claim the verified snapshot is fetched into.
pub fn snapshot_claim_name(r: &EtcdRestore) -> String {
    format!("{}-snapshot", r.name_any())
}

/// The Job that fetches and verifies the archive.
pub fn fetch_job_name(r: &EtcdRestore) -> String {
    format!("{}-fetch", r.name_any())
}

/// The restore as the controlling owner of what it creates (deleted with it).
fn owner(r: &EtcdRestore) -> Result<OwnerReference, BuildError> {
    r.controller_owner_ref(&()).ok_or(BuildError {
        kind: "OwnerReference",
        source: serde::de::Error::custom("the EtcdRestore has no uid (it was not read from the API server)"),
    })
}

/// Room for the snapshot with some slack, at least 1Gi; when its size is unknown (`source.object`),
/// as much as a member's claim, which no snapshot of a member can outgrow.
pub fn snapshot_claim_size(raw_size: i64, cluster: &EtcdCluster) -> String {
    let member_claim = cluster.spec.storage.persistent_volume_claim.as_ref();
    match (raw_size, member_claim) {
        (0, Some(p)) => p.size.0.clone(),
        (0, None) => "8Gi".to_owned(),
        (raw, _) => {
            let gib = (u64::try_from(raw).unwrap_or(0) * 12 / 10)
                .div_ceil(1 << 30)
                .max(1);
            format!("{gib}Gi")
        }
    }
}

/// The snapshot claim, in the member claims' storage class.
pub fn snapshot_claim(
    r: &EtcdRestore,
    cluster: &EtcdCluster,
    chosen: &Chosen,
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
            "metadata": {"name": snapshot_claim_name(r), "namespace": r.namespace(), "ownerReferences": [owner(r)?]},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": snapshot_claim_size(chosen.raw_size, cluster)}}}
        }),
    )
}

/// The Job that runs `etcd-backup-sidecar fetch` into the snapshot claim (see
/// [`objects::fetch_container`]).
pub fn fetch_job(
    r: &EtcdRestore,
    cluster: &EtcdCluster,
    chosen: &Chosen,
    identity_secret: Option<&str>,
    image: &str,
) -> Result<Job, BuildError> {
    let fetch = objects::fetch_container(
        cluster,
        FetchTarget {
            chosen,
            identity_secret,
            image,
            out_volume: "snapshot",
            out_dir: "/snapshot",
            unless_exists: None,
        },
    );
    let mut volumes =
        vec![json!({"name": "snapshot", "persistentVolumeClaim": {"claimName": snapshot_claim_name(r)}})];
    volumes.extend(fetch.volumes);
    to_object(
        "Job",
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": fetch_job_name(r), "namespace": r.namespace(), "ownerReferences": [owner(r)?]},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "securityContext": objects::restricted_pod_security(),
                    "containers": [fetch.container],
                    "volumes": volumes
                }}
            }
        }),
    )
}

/// Where a restored member's init container finds the verified snapshot.
#[derive(Clone, Copy, Debug)]
pub enum SnapshotFrom<'a> {
    /// The verified snapshot's claim, mounted read-only (on node-local storage this ties the pod to
    /// that claim's node, so only a restore of one seed uses it).
    Claim(&'a str),
    /// The member fetches the archive itself into its own data volume, checked as the verifying
    /// fetch checked it (etcd's trailer, the manifest, the recorded sha256), so every member of a
    /// parallel restore is placed wherever its own claim is.
    Store {
        /// The archive.
        chosen: &'a Chosen,
        /// A Secret whose identity decrypts it.
        identity_secret: Option<&'a str>,
    },
}

/// Where a member's own fetch mounts its data volume (the etcd container mounts it at
/// [`DATA_MOUNT`]); the snapshot lands at the volume's root, beside the `data` directory.
const FETCH_MOUNT: &str = "/restore";

/// A restored member's pod: a new member whose init containers restore the verified snapshot into
/// its data directory with the whole restored membership `members` (only when that directory is
/// still empty, so a pod that starts again does not restore twice, nor need the store to start).
pub fn restored_member_pod(
    cluster: &EtcdCluster,
    images: &Images,
    member: &str,
    members: &[String],
    version: EtcdVersion,
    token: &str,
    from: SnapshotFrom<'_>,
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
    let (snapshot, cleanup) = match from {
        SnapshotFrom::Claim(_) => ("/snapshot/snapshot.db".to_owned(), String::new()),
        // The copy is removed once restored: the member's claim then holds only its data.
        SnapshotFrom::Store { .. } => (
            format!("{DATA_MOUNT}/snapshot.db"),
            format!("; rm -f {DATA_MOUNT}/snapshot.db {DATA_MOUNT}/manifest.json"),
        ),
    };
    let script = format!(
        "set -e; if [ -d {DATA_MOUNT}/data/member ]; then echo 'data already restored'{cleanup}; exit 0; fi; \
         rm -rf {DATA_MOUNT}/data; \
         etcdutl snapshot restore {snapshot} --data-dir {DATA_MOUNT}/data --name {member} \
         --initial-cluster {initial} --initial-advertise-peer-urls {peer} --initial-cluster-token {token} \
         --bump-revision {BUMP_REVISION} --mark-compacted{cleanup}"
    );
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
    let mut mounts = vec![json!({"name": "data", "mountPath": DATA_MOUNT})];
    let mut init = Vec::new();
    match from {
        SnapshotFrom::Claim(claim) => {
            mounts.push(json!({"name": "snapshot", "mountPath": "/snapshot", "readOnly": true}));
            let vol: Volume = to_object(
                "Volume",
                json!({"name": "snapshot", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}),
            )?;
            spec.volumes.get_or_insert_with(Vec::new).push(vol);
        }
        SnapshotFrom::Store {
            chosen,
            identity_secret,
        } => {
            let done = format!("{FETCH_MOUNT}/data");
            let fetch = objects::fetch_container(
                cluster,
                FetchTarget {
                    chosen,
                    identity_secret,
                    image: &images.sidecar,
                    out_volume: "data",
                    out_dir: FETCH_MOUNT,
                    unless_exists: Some(&done),
                },
            );
            init.push(to_object::<Container>("Container", fetch.container)?);
            for v in fetch.volumes {
                spec.volumes
                    .get_or_insert_with(Vec::new)
                    .push(to_object("Volume", v)?);
            }
        }
    }
    init.push(to_object(
        "Container",
        json!({
            "name": "restore", "image": etcd_image, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script],
            "securityContext": security,
            "volumeMounts": mounts
        }),
    )?);
    spec.init_containers = Some(init);
    Ok(pod)
}
