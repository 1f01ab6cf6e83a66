//! A backup's writer pod: the backup sidecar alone, with the default backup claim, writing one backup
//! of a member it reaches over the network. Members do not mount that claim: a ReadWriteOnce claim
//! cannot be mounted by members on different nodes (docs/design/backups.md).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};
use ouroboros_crds::{EtcdBackup, EtcdCluster};
use serde_json::json;

use super::{
    BuildError,
    member_pod::{SidecarParts, sidecar_container},
    restricted_container_security, restricted_pod_security, run_as_root, to_object,
};
use crate::vocabulary::*;

/// What a writer pod is made for.
#[derive(Clone, Debug)]
pub struct BackupWriter<'a> {
    /// The EtcdBackup it writes; it owns the pod, so the pod goes with it.
    pub backup: &'a EtcdBackup,
    /// The member it backs up.
    pub member: &'a str,
    /// That member's pod IP.
    pub member_ip: &'a str,
    /// That member's ports.
    pub member_ports: Ports,
    /// How long the pod may run at most (`activeDeadlineSeconds`), so a writer the operator
    /// never deleted ends anyway.
    pub active_deadline: Duration,
    /// Runs as root, as the member does: the claim may hold backups its root sidecars wrote.
    pub as_root: bool,
}

/// The writer pod `<backup>-writer` of a backup to the default claim of `cluster`.
pub fn backup_writer_pod(
    cluster: &EtcdCluster,
    images: &Images,
    w: &BackupWriter<'_>,
) -> Result<Pod, BuildError> {
    let claim = default_backup_claim(cluster);
    let tls_name = member_tls_name(cluster, w.member, w.member_ip);
    let endpoint = format!("{}://{}:{}", scheme(cluster), w.member_ip, w.member_ports.client);
    let mut sidecar = SidecarParts::new(cluster, SIDECAR_PORT, &endpoint, &tls_name);
    sidecar
        .volumes
        .push(json!({"name": "backups", "persistentVolumeClaim": {"claimName": claim}}));
    // Where a member's sidecar mounts a backup claim, so archive locations are the same whoever
    // writes them, and restores and retention read them unchanged.
    sidecar
        .mounts
        .push(json!({"name": "backups", "mountPath": format!("{BACKUP_MOUNT}/{claim}")}));
    let mut container = sidecar_container(cluster, images, SIDECAR_PORT, sidecar.args, sidecar.mounts);
    container["securityContext"] = restricted_container_security();
    let backup = w.backup;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": backup_writer_name(&backup.name_any()),
            "namespace": backup.namespace(),
            // Without the cluster label: no Service, PDB, anti-affinity term or observation of the
            // cluster's members picks it up.
            "labels": {
                "app.kubernetes.io/name": "etcd-backup-writer",
                "app.kubernetes.io/managed-by": crate::FIELD_MANAGER,
                LABEL_BACKUP_WRITER_OF: cluster.name_any(),
            },
            "annotations": {ANNOTATION_WRITER_MEMBER: w.member},
            "ownerReferences": [backup.controller_owner_ref(&())],
        },
        "spec": {
            // One backup, then it is deleted: a crashed sidecar has lost its job anyway.
            "restartPolicy": "Never",
            "enableServiceLinks": false,
            "activeDeadlineSeconds": w.active_deadline.as_secs(),
            // The claim was first bound for a member, so its volume sits where members may run.
            "nodeSelector": cluster.spec.pod.node_selector,
            "tolerations": cluster.spec.pod.tolerations,
            "priorityClassName": cluster.spec.pod.priority_class_name,
            "securityContext": restricted_pod_security(),
            "containers": [container],
            "volumes": sidecar.volumes,
        }
    });
    let mut pod: Pod = to_object("Pod", pod)?;
    if w.as_root {
        run_as_root(&mut pod);
    }
    Ok(pod)
}
