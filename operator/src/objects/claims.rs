//! Claims: a member's data claim and the default backup claim.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use ouroboros_crds::{EtcdCluster, EtcdVersion};
use serde_json::json;

use super::{BuildError, owner, to_object};
use crate::vocabulary::{
    ANNOTATION_DATA_UID, LABEL_MEMBER, LABEL_VERSION, UNPRIVILEGED_ID, backup_volume, cluster_labels,
    default_backup_claim, pvc_name,
};

/// The data PVC of a member, when storage asks for one. It records the member's version: a member
/// never changes version (upgrades add new members), and a member restarted on its claim after every
/// pod is gone must run the version its data was written by.
pub fn member_pvc(
    cluster: &EtcdCluster,
    member: &str,
    version: EtcdVersion,
) -> Option<Result<PersistentVolumeClaim, BuildError>> {
    let pvc = cluster.spec.storage.persistent_volume_claim.as_ref()?;
    let mut labels = cluster_labels(cluster);
    labels.insert(LABEL_MEMBER.to_owned(), member.to_owned());
    labels.insert(LABEL_VERSION.to_owned(), version.to_string());
    Some(to_object(
        "PersistentVolumeClaim",
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": pvc_name(member), "namespace": cluster.namespace(),
                         "labels": labels, "ownerReferences": [owner(cluster)],
                         "annotations": {ANNOTATION_DATA_UID: UNPRIVILEGED_ID.to_string()}},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": pvc.storage_class_name,
                "resources": {"requests": {"storage": pvc.size}}
            }
        }),
    ))
}

/// The default backup claim, when this cluster uses it. It has no owner: backups outlive the cluster.
pub fn default_backup_pvc(cluster: &EtcdCluster) -> Option<Result<PersistentVolumeClaim, BuildError>> {
    let pvc = cluster.spec.storage.persistent_volume_claim.as_ref()?;
    let claim = backup_volume(cluster)?.claim_name;
    if claim != default_backup_claim(cluster) {
        return None;
    }
    Some(to_object(
        "PersistentVolumeClaim",
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": cluster.namespace(), "labels": cluster_labels(cluster)},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": pvc.storage_class_name,
                "resources": {"requests": {"storage": pvc.size}}
            }
        }),
    ))
}
