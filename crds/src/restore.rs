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
    printcolumn = r#"{"name":"Point","type":"integer","jsonPath":".status.point.revision"}"#,
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
/// `maxRevision` narrow `latest`. `revision` or `time` restores a point of a continuous backup's
/// delta chain; without them a backup whose cluster has `spec.backup.continuous` is restored to
/// the end of its chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.backupName) ? 1 : 0) + (has(self.object) ? 1 : 0) + (has(self.latest) && self.latest ? 1 : 0) == 1").message("set exactly one of backupName, object or latest"))]
#[x_kube(validation = Rule::new("!(has(self.notAfter) || has(self.maxRevision)) || (has(self.latest) && self.latest)").message("notAfter and maxRevision only apply with latest: true"))]
#[x_kube(validation = Rule::new("!has(self.allowUnverified) || (has(self.latest) && self.latest)").message("allowUnverified only applies with latest: true"))]
#[x_kube(validation = Rule::new("!(has(self.revision) && has(self.time))").message("set at most one of revision and time"))]
#[x_kube(validation = Rule::new("!(has(self.revision) || has(self.time)) || !has(self.object)").message("revision and time restore a point of a backup's delta chain, which source.object does not name: use backupName or latest"))]
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
    /// Restore exactly this revision: a full backup at or below it (with `latest`, the newest one)
    /// taken along its continuous-backup delta chain to this revision. A chain that does not reach
    /// it, or has a hole below it, fails the restore before the cluster is touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("revision must be at least 1"))]
    pub revision: Option<i64>,
    /// Restore the last revision the continuous backup saw at or before this time (RFC 3339): a
    /// full backup completed at or before it (with `latest`, the newest one) taken along its delta
    /// chain. Times are when the following sidecar received each change, within a second or so of
    /// the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$')").message("time must be an RFC 3339 time, like 2026-12-07T03:00:00Z"))]
    #[schemars(length(max = 64))]
    pub time: Option<String>,
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
    /// sha256 of the archive's snapshot every verified copy holds (the copies must agree on it);
    /// a restore to a point of a delta chain restores the snapshot made from it.
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
    /// Decided when the restore starts: the backup is taken along its continuous-backup delta
    /// chain to this point (neither field set: to the chain's end). Absent: the archive is
    /// restored as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_target: Option<PointTarget>,
    /// The point of the continuous-backup delta chain restored, and what the chain held after it.
    /// Absent when no chain was taken (the archive was restored as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<RestoredPoint>,
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

/// Where along its delta chain a restore takes its backup: a revision, a time, or (neither) the
/// chain's end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointTarget {
    /// Exactly this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The last revision seen at or before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl PointTarget {
    /// The point, in words.
    pub fn describe(&self) -> String {
        match (self.revision, &self.time) {
            (Some(r), _) => format!("revision {r}"),
            (None, Some(t)) => format!("the last revision seen at or before {t}"),
            (None, None) => "the end of its delta chain".to_owned(),
        }
    }
}

/// The point a restore took its backup to along the delta chain, and its data-loss window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoredPoint {
    /// The revision restored (before the restore's revision bump).
    pub revision: i64,
    /// When the following sidecar saw that revision (RFC 3339); absent when it is the full
    /// backup's own revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Revisions replayed on the full backup.
    pub applied: i64,
    /// The chain's last stored revision when the restore read it.
    pub chain_end: i64,
    /// When the sidecar saw `chainEnd` (RFC 3339), when the chunks read reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_end_time: Option<String>,
    /// Revisions the chain holds after the point, left out by the target chosen. Writes after
    /// `chainEnd` were never stored: with the recovery point in the cluster's status, that is the
    /// whole data-loss window.
    pub revisions_left_out: i64,
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
