//! `EtcdRestore`: rebuild a cluster from a stored backup.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{cluster::EtcdClusterSpec, common::BackupDestination};

/// Rebuilds `clusterName` from a backup. The archive is downloaded and verified before the existing
/// cluster is touched; the old members' volumes are kept until the restored cluster is Available.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "etcd.ouroboros.dev",
    version = "v1alpha1",
    kind = "EtcdRestore",
    namespaced,
    doc = "Rebuilds an EtcdCluster from a verified backup without touching the old data until the archive is checked.",
    status = "EtcdRestoreStatus",
    shortname = "etcdrestore",
    category = "ouroboros",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.source"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("an EtcdRestore's spec cannot change; create a new EtcdRestore"))]
pub struct EtcdRestoreSpec {
    /// Name of the EtcdCluster in this namespace to restore into.
    #[x_kube(validation = Rule::new("self != ''").message("clusterName must not be empty"))]
    pub cluster_name: String,
    /// Which backup to restore.
    pub source: RestoreSource,
    /// Spec of the cluster to create when `clusterName` does not exist yet: an EtcdCluster spec,
    /// validated as one when the EtcdRestore is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cluster_template_schema")]
    pub cluster_template: Option<Box<EtcdClusterSpec>>,
    /// The Secret whose `identity` key (an age secret key) decrypts an encrypted archive. Empty
    /// uses the cluster's (or the template's) `spec.backup.encryption`. A missing Secret or key, or
    /// an identity the archive was not encrypted to, fails the restore before the cluster is
    /// touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::BackupEncryption>,
}

// The template is an EtcdClusterSpec and is validated as one at admission: the same types, patterns
// and CEL rules, less the transition rules (`oldSelf`), which only mean something on an update of an
// EtcdCluster. A bad template is refused when the EtcdRestore is created, not when it runs.
fn cluster_template_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<EtcdClusterSpec>();
    if let Some(object) = schema.as_object_mut() {
        let mut whole = serde_json::Value::Object(std::mem::take(object));
        drop_transition_rules(&mut whole);
        if let serde_json::Value::Object(cleaned) = whole {
            *object = cleaned;
        }
        object.insert(
            "description".into(),
            "Spec of the cluster to create when `clusterName` does not exist yet: an EtcdCluster spec, \
             validated as one when the EtcdRestore is created."
                .into(),
        );
    }
    schema
}

/// Removes every CEL rule that compares with `oldSelf` from a schema and its subschemas.
fn drop_transition_rules(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            let emptied = object
                .get_mut("x-kubernetes-validations")
                .and_then(|r| r.as_array_mut())
                .is_some_and(|rules| {
                    rules.retain(|r| {
                        !r.get("rule")
                            .and_then(|r| r.as_str())
                            .is_some_and(|r| r.contains("oldSelf"))
                    });
                    rules.is_empty()
                });
            if emptied {
                object.remove("x-kubernetes-validations");
            }
            object.values_mut().for_each(drop_transition_rules);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_transition_rules),
        _ => {}
    }
}

/// A backup to restore. Set exactly one of `backupName`, `object`, `latest`; `notAfter` and
/// `maxRevision` narrow `latest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.backupName) ? 1 : 0) + (has(self.object) ? 1 : 0) + (has(self.latest) && self.latest ? 1 : 0) == 1").message("set exactly one of backupName, object or latest"))]
#[x_kube(validation = Rule::new("!(has(self.notAfter) || has(self.maxRevision)) || (has(self.latest) && self.latest)").message("notAfter and maxRevision only apply with latest: true"))]
#[x_kube(validation = Rule::new("!has(self.allowUnverified) || (has(self.latest) && self.latest)").message("allowUnverified only applies with latest: true"))]
pub struct RestoreSource {
    /// Name of a Succeeded EtcdBackup in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// An archive named by its store and key, for backups whose EtcdBackup object is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<BackupObject>,
    /// The newest Succeeded backup of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,
    /// With `latest`: the newest backup completed at or before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// With `latest`: the newest backup whose revision is at or below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_revision: Option<i64>,
    /// With `latest`: also consider backups no drill verified (their drill is off, did not decide,
    /// or is still running). Without it, `latest` takes the newest backup whose drill verified it,
    /// and waits while a newer one's drill runs. Backups whose drill failed are never chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unverified: Option<bool>,
}

/// One archive in a store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupObject {
    /// The store.
    pub destination: BackupDestination,
    /// The archive's key (S3) or path (volume), as the backup's `status.location` shows it after the
    /// bucket or claim.
    pub key: String,
}

/// Progress of a restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdRestoreStatus {
    /// Where the restore is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// Why it is in this phase, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The archive chosen, as a location URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The EtcdBackup chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// The first member restored from the snapshot (chosen once, past every ordinal in use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_member: Option<String>,
    /// Every member restored from the snapshot, started together as one new cluster. From an S3
    /// archive that is `spec.size` members, each fetching and checking the archive itself; from a
    /// `file` archive (a claim on one node) it is one seed the cluster controller grows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored_members: Vec<String>,
    /// sha256 of the snapshot every verified copy holds (the copies must agree on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_sha256: Option<String>,
    /// How many verified copies of the snapshot were fetched (one per restored member), recorded
    /// when verification ends: the members restored are exactly these, whatever `spec.size` says
    /// later. Absent in a status written before copies existed: one seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<u32>,
    /// Revision of the restored snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_revision: Option<i64>,
    /// When the restore started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it reached `Succeeded` or `Failed` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// `Ready`, `Reconciling` and `Stalled`, derived from the phase for tools that read conditions
    /// (Flux's kstatus, Argo CD health checks): while it runs `Reconciling=True` (reason: the
    /// phase); once it succeeded `Ready=True`; once it failed `Stalled=True`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Lifecycle of a restore. `Succeeded` and `Failed` are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RestorePhase {
    /// Accepted, not started.
    Pending,
    /// Downloading the archive and checking its manifest and sha256. The old cluster is untouched.
    Verifying,
    /// Stopping old members and restoring new ones from the snapshot (all of them together, or one
    /// seed).
    Restoring,
    /// Growing the restored cluster to its size.
    Growing,
    /// The restored cluster is Available.
    Succeeded,
    /// The restore stopped; `reason` says why and whether the old cluster was touched.
    Failed,
}
