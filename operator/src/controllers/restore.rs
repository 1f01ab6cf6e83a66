//! The EtcdRestore controller. One step per reconcile, each idempotent, its progress in status:
//!
//! 1. **Pending**: pick the backup (by name, or the newest matching `latest`), or fail naming why.
//! 2. **Verifying**: a Job runs `etcd-backup-sidecar fetch` into a fresh claim: download, unpack,
//!    check etcd's trailer, the manifest and the recorded sha256. The cluster is not touched; a bad
//!    archive fails the restore here.
//! 3. **Restoring**: the cluster is held (annotation), its member pods are deleted (claims are kept),
//!    and a new seed member starts from the verified snapshot, restored by the etcd image's `etcdutl
//!    snapshot restore --bump-revision --mark-compacted` under a new cluster ID.
//! 4. **Growing**: the hold is lifted and the cluster controller grows the seed to `spec.size` as
//!    usual; once it is Available, the old members' claims and the snapshot claim are deleted.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolumeClaim, Pod},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType},
};
use ouroboros_crds::{
    BackupPhase, BackupReference, EtcdBackup, EtcdCluster, EtcdRestore, EtcdRestoreStatus, EtcdVersion,
    RestorePhase, restore::BackupObject, retention::ENCRYPTED_SUFFIX,
};
use serde_json::json;

use super::{encryption, kube_err};
use crate::{
    context::Context,
    controllers::cluster::{
        apply,
        decide::ordinal,
        resources::{self, DATA_MOUNT, Images, InitialClusterState, LABEL_CLUSTER},
    },
    failpoints,
};

/// Annotation on an EtcdCluster while a restore owns it: the cluster controller changes nothing.
pub const RESTORE_HOLD: &str = "etcd.ouroboros.dev/restore-in-progress";
/// Revisions added on restore, so every revision after it exceeds any a client saw before (etcd's
/// documentation suggests this order of magnitude).
pub const BUMP_REVISION: u64 = 1_000_000_000;
const MANAGER: &str = "ouroboros-operator-restore";
/// How often a restore looks at what it waits for (the fetch Job, the seed pod): restores are rare,
/// someone is waiting for this one, and every poll costs one GET.
const POLL: Duration = Duration::from_millis(500);
/// The pause after a step whose result the restore controller does not watch (the cluster's hold).
const STEP: Duration = Duration::from_millis(100);

/// Why an EtcdRestore reconcile failed: a Kubernetes call, retried with backoff.
pub type Error = super::KubeCallError;

/// The backup to restore, as the Verifying Job needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The EtcdBackup's name.
    pub name: String,
    /// Its archive location.
    pub location: String,
    /// Its recorded sha256.
    pub sha256: Option<String>,
    /// Its revision (unknown for `source.object` until the archive is read).
    pub revision: Option<i64>,
    /// When it completed (RFC 3339), when known.
    pub completed: Option<String>,
    /// Raw snapshot size, to size the snapshot claim (0 when unknown).
    pub raw_size: i64,
    /// The destination the EtcdBackup (or `source.object`) named, if any (else the cluster's).
    pub destination: Option<ouroboros_crds::BackupDestination>,
    /// Known to be age-encrypted (its EtcdBackup says so, or the object is named `.age`). The fetch
    /// reads the archive itself to decide; this only lets a missing key be named before it runs.
    pub encrypted: bool,
}

impl Chosen {
    fn describe(&self) -> String {
        match self.revision {
            Some(r) => format!("{} ({}, revision {r})", self.location, self.name),
            None => format!("{} ({})", self.location, self.name),
        }
    }
}

/// The archive `source.object` names, as a location URL the fetch understands.
pub fn object_location(o: &BackupObject) -> Result<String, String> {
    let key = o.key.trim_start_matches('/');
    if key.is_empty() || key.split('/').any(|p| p == "..") {
        return Err(format!(
            "source.object.key {:?} must name an archive, without '..'",
            o.key
        ));
    }
    match (&o.destination.s3, &o.destination.volume) {
        (Some(s3), None) => Ok(format!("s3://{}/{key}", s3.bucket)),
        (None, Some(v)) => Ok(format!(
            "file://{}/{}/{key}",
            resources::BACKUP_MOUNT,
            v.claim_name
        )),
        _ => Err("source.object.destination must set exactly one of s3 or volume".into()),
    }
}

/// Which backups of a cluster's name are its own, for `latest` and automatic recovery: a cluster that
/// was deleted and created again under the same name is a different database, and its old backups
/// must never be restored over the new one by a rule that only compares revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lineage {
    /// Backups recorded with one of these EtcdCluster UIDs: the cluster's own, and the one of the
    /// cluster its data was restored from (a restore bumps revisions far past the source's, so both
    /// compare by revision).
    Uids(Vec<String>),
    /// The cluster has no history of its own (it was created for this restore and never formed):
    /// the backups of whichever cluster of that name completed a backup last.
    NewestOfName,
}

impl Lineage {
    /// The lineage a restore into `cluster` draws `latest` from, given every EtcdBackup in its
    /// namespace: its own, unless it has no history yet (created for this restore, never formed).
    pub fn of(cluster: &EtcdCluster, backups: &[EtcdBackup]) -> Lineage {
        let status = cluster.status.as_ref();
        let fresh = status.is_none_or(|s| s.cluster_id.is_none() && s.restored_from.is_none());
        if fresh {
            return Lineage::NewestOfName;
        }
        Lineage::own(cluster, backups)
    }

    /// The cluster's own lineage, never another cluster's: what automatic recovery restores from,
    /// since it acts without anyone choosing.
    pub fn own(cluster: &EtcdCluster, backups: &[EtcdBackup]) -> Lineage {
        let ancestor = cluster
            .status
            .as_ref()
            .and_then(|s| s.restored_from.as_ref())
            .and_then(|from| {
                backups
                    .iter()
                    .find(|b| b.status.as_ref().and_then(|s| s.location.as_deref()) == Some(&from.location))
                    .and_then(|b| b.status.as_ref()?.cluster_uid.clone())
            });
        Lineage::Uids(cluster.uid().into_iter().chain(ancestor).collect())
    }

    fn describe(&self) -> String {
        match self {
            Lineage::Uids(uids) => format!("of its lineage (uid {})", uids.join(" or ")),
            Lineage::NewestOfName => "of the cluster that was backed up last under this name".into(),
        }
    }
}

/// The newest Succeeded backup of `cluster`'s lineage (what automatic recovery restores).
pub fn choose_latest(cluster: &str, lineage: &Lineage, backups: &[EtcdBackup]) -> Result<Chosen, String> {
    newest(cluster, lineage, backups, None, None).map(chosen)
}

fn succeeded_with_location(b: &EtcdBackup) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| s.phase == Some(BackupPhase::Succeeded) && s.location.is_some())
}

fn uid_of(b: &EtcdBackup) -> Option<&str> {
    b.status.as_ref()?.cluster_uid.as_deref()
}

fn newest<'a>(
    cluster: &str,
    lineage: &Lineage,
    backups: &'a [EtcdBackup],
    not_after: Option<jiff::Timestamp>,
    max_revision: Option<i64>,
) -> Result<&'a EtcdBackup, String> {
    let of_name: Vec<&EtcdBackup> = backups
        .iter()
        .filter(|b| b.spec.cluster_name == cluster && succeeded_with_location(b))
        .collect();
    let last_completed_uid = of_name
        .iter()
        .max_by_key(|b| b.status.as_ref().and_then(|s| s.completion_time.clone()))
        .map(|b| uid_of(b));
    let ours = |b: &EtcdBackup| match lineage {
        Lineage::Uids(uids) => uid_of(b).is_some_and(|u| uids.iter().any(|x| x == u)),
        Lineage::NewestOfName => last_completed_uid == Some(uid_of(b)),
    };
    let (mine, others): (Vec<&EtcdBackup>, Vec<&EtcdBackup>) = of_name.into_iter().partition(|b| ours(b));
    mine.into_iter()
        .filter(|b| {
            let s = b.status.as_ref();
            let completed = s
                .and_then(|s| s.completion_time.as_deref())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let revision = s.and_then(|s| s.revision).unwrap_or(0);
            not_after.is_none_or(|n| completed.is_some_and(|c| c <= n))
                && max_revision.is_none_or(|m| revision <= m)
        })
        .max_by_key(|b| {
            let s = b.status.as_ref();
            (
                s.and_then(|s| s.revision).unwrap_or(0),
                s.and_then(|s| s.completion_time.clone()),
            )
        })
        .ok_or_else(|| {
            let mut why = format!(
                "no Succeeded EtcdBackup of {cluster} {} matches the source",
                lineage.describe()
            );
            if !others.is_empty() {
                let names: Vec<String> = others.iter().take(3).map(|b| b.name_any()).collect();
                why.push_str(&format!(
                    "; {} backup(s) of an earlier cluster of that name, or without a recorded lineage, were \
                     not considered ({}{}): name one in source.backupName to restore it deliberately",
                    others.len(),
                    names.join(", "),
                    if others.len() > 3 { ", ..." } else { "" }
                ));
            }
            why
        })
}

fn chosen(b: &EtcdBackup) -> Chosen {
    let s = b.status.clone().unwrap_or_default();
    Chosen {
        name: b.name_any(),
        location: s.location.unwrap_or_default(),
        sha256: s.sha256,
        revision: s.revision,
        completed: s.completion_time,
        raw_size: s.raw_size.unwrap_or(0),
        destination: b.spec.destination.clone(),
        encrypted: s.encrypted,
    }
}

/// The backup this restore chose when it started (recorded in its status as `source`), found again
/// among `backups`: `latest` must not switch archives between polls because a newer backup appeared.
pub fn recorded_choice(
    restore: &EtcdRestore,
    recorded: Option<&str>,
    lineage: &Lineage,
    backups: &[EtcdBackup],
) -> Result<Chosen, String> {
    let Some(location) = recorded else {
        return choose(restore, lineage, backups);
    };
    if restore.spec.source.object.is_some() {
        // The object names its archive itself; nothing is chosen.
        return choose(restore, lineage, backups);
    }
    backups
        .iter()
        .find(|b| b.status.as_ref().and_then(|s| s.location.as_deref()) == Some(location))
        .map(chosen)
        .ok_or_else(|| format!("the EtcdBackup chosen when this restore started ({location}) is gone"))
}

/// Picks the backup the source names among `backups` (pure): `backupName` and `object` exactly as
/// named, `latest` only within the target cluster's `lineage`.
pub fn choose(restore: &EtcdRestore, lineage: &Lineage, backups: &[EtcdBackup]) -> Result<Chosen, String> {
    let src = &restore.spec.source;
    if let Some(name) = &src.backup_name {
        let b = backups
            .iter()
            .find(|b| b.name_any() == *name)
            .ok_or_else(|| format!("EtcdBackup {name} does not exist"))?;
        if b.status.as_ref().and_then(|s| s.phase) != Some(BackupPhase::Succeeded) {
            return Err(format!(
                "EtcdBackup {name} has not succeeded; only complete backups restore"
            ));
        }
        if b.status.as_ref().and_then(|s| s.location.as_ref()).is_none() {
            return Err(format!("EtcdBackup {name} has no location"));
        }
        return Ok(chosen(b));
    }
    if src.latest == Some(true) {
        let not_after = match &src.not_after {
            Some(t) => Some(
                t.parse::<jiff::Timestamp>()
                    .map_err(|e| format!("source.notAfter {t:?} is not an RFC 3339 time: {e}"))?,
            ),
            None => None,
        };
        return newest(
            &restore.spec.cluster_name,
            lineage,
            backups,
            not_after,
            src.max_revision,
        )
        .map(chosen);
    }
    let Some(object) = &src.object else {
        return Err("the source names no backup: set backupName, object or latest".into());
    };
    Ok(Chosen {
        name: "source.object".into(),
        location: object_location(object)?,
        sha256: None,
        revision: None,
        completed: None,
        raw_size: 0,
        destination: Some(object.destination.clone()),
        encrypted: object.key.ends_with(ENCRYPTED_SUFFIX),
    })
}

/// One pass for one EtcdRestore.
pub async fn reconcile(r: Arc<EtcdRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile("etcdrestore");
    let status = r.status.clone().unwrap_or_default();
    match status.phase {
        None | Some(RestorePhase::Pending) => pending(&r, &ctx).await,
        Some(RestorePhase::Verifying) => verifying(&r, &ctx, status).await,
        Some(RestorePhase::Restoring) => restoring(&r, &ctx, status).await,
        Some(RestorePhase::Growing) => growing(&r, &ctx, status).await,
        Some(RestorePhase::Succeeded) | Some(RestorePhase::Failed) => Ok(Action::await_change()),
    }
}

async fn write_status(ctx: &Context, r: &EtcdRestore, status: &EtcdRestoreStatus) -> Result<(), Error> {
    let api: Api<EtcdRestore> = Api::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": EtcdRestore::api_version(&()), "kind": EtcdRestore::kind(&()), "status": status});
    api.patch_status(
        &r.name_any(),
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
    .map_err(kube_err("writing EtcdRestore status"))
}

async fn advance(
    ctx: &Context,
    r: &EtcdRestore,
    status: EtcdRestoreStatus,
    phase: RestorePhase,
    reason: String,
) -> Result<Action, Error> {
    let terminal = matches!(phase, RestorePhase::Succeeded | RestorePhase::Failed);
    let status = EtcdRestoreStatus {
        phase: Some(phase),
        reason: Some(reason.clone()),
        completion_time: terminal.then(|| jiff::Timestamp::now().to_string()),
        ..status
    };
    write_status(ctx, r, &status).await?;
    let type_ = if phase == RestorePhase::Failed {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.publish(
        &r.object_ref(&()),
        type_,
        &format!("Restore{phase:?}"),
        reason,
        None,
    )
    .await;
    Ok(if terminal {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(1))
    })
}

fn src_is_backup(r: &EtcdRestore) -> bool {
    r.spec.source.object.is_none()
}

fn names(r: &EtcdRestore) -> (String, String) {
    (
        format!("{}-snapshot", r.name_any()),
        format!("{}-fetch", r.name_any()),
    )
}

fn owned_by(r: &EtcdRestore) -> serde_json::Value {
    json!([{"apiVersion": EtcdRestore::api_version(&()), "kind": "EtcdRestore", "name": r.name_any(),
            "uid": r.uid().unwrap_or_default(), "controller": true, "blockOwnerDeletion": true}])
}

async fn pending(r: &EtcdRestore, ctx: &Context) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let status = EtcdRestoreStatus {
        start_time: Some(jiff::Timestamp::now().to_string()),
        ..r.status.clone().unwrap_or_default()
    };
    let cluster = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&r.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?;
    let cluster = if let Some(existing) = cluster {
        existing
    } else {
        let Some(template) = &r.spec.cluster_template else {
            return advance(
                ctx,
                r,
                status,
                RestorePhase::Failed,
                format!(
                    "EtcdCluster {ns}/{} does not exist; create it, or give spec.clusterTemplate",
                    r.spec.cluster_name
                ),
            )
            .await;
        };
        // Created already held, so the cluster controller never starts an empty seed in it.
        let new = json!({
            "apiVersion": EtcdCluster::api_version(&()), "kind": "EtcdCluster",
            "metadata": {"name": r.spec.cluster_name, "namespace": ns,
                         "annotations": {RESTORE_HOLD: r.name_any()}},
            "spec": template,
        });
        let new: EtcdCluster = match serde_json::from_value(new) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("spec.clusterTemplate is not an EtcdCluster spec: {e}");
                return advance(ctx, r, status, RestorePhase::Failed, why).await;
            }
        };
        match Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
            .create(&PostParams::default(), &new)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // The API server's validation (schema and CEL) says what is wrong with the template.
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                let why = format!("spec.clusterTemplate was refused: {}", s.message);
                return advance(ctx, r, status, RestorePhase::Failed, why).await;
            }
            Err(e) => {
                return Err(Error {
                    action: "creating the EtcdCluster from clusterTemplate",
                    source: e,
                });
            }
        }
        ctx.publish(
            &r.object_ref(&()),
            EventType::Normal,
            "ClusterCreated",
            format!(
                "created EtcdCluster {} from spec.clusterTemplate, held for the restore",
                r.spec.cluster_name
            ),
            None,
        )
        .await;
        // Nothing this restore watches changes when the cluster appears: it goes on at once.
        new
    };
    if cluster.spec.self_hosted.is_some() {
        let why = "restoring a self-hosted cluster in place is not supported: its members run on the host \
                   network and the API server stores its data in them; follow the self-hosted runbook \
                   (docs/self-hosted.md), which restores with a temporary API server; the cluster was not touched";
        return advance(ctx, r, status, RestorePhase::Failed, why.into()).await;
    }
    let backups = Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing EtcdBackups"))?;
    match choose(r, &Lineage::of(&cluster, &backups.items), &backups.items) {
        Err(why) => {
            advance(
                ctx,
                r,
                status,
                RestorePhase::Failed,
                format!("{why}; the cluster was not touched"),
            )
            .await
        }
        Ok(chosen) => {
            let status = EtcdRestoreStatus {
                source: Some(chosen.location.clone()),
                restored_revision: chosen.revision,
                backup_name: (src_is_backup(r)).then(|| chosen.name.clone()),
                ..status
            };
            let reason = format!("verifying {} before touching the cluster", chosen.describe());
            advance(ctx, r, status, RestorePhase::Verifying, reason).await
        }
    }
}

async fn verifying(r: &EtcdRestore, ctx: &Context, status: EtcdRestoreStatus) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let (claim, job_name) = names(r);
    let backups = Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing EtcdBackups"))?;
    let cluster = match target(ctx, r, &status).await? {
        Ok(c) => c,
        Err(action) => return Ok(action),
    };
    let lineage = Lineage::of(&cluster, &backups.items);
    let chosen = match recorded_choice(r, status.source.as_deref(), &lineage, &backups.items) {
        Ok(c) => c,
        Err(why) => {
            return advance(
                ctx,
                r,
                status,
                RestorePhase::Failed,
                format!("{why}; the cluster was not touched"),
            )
            .await;
        }
    };
    let decryption = encryption::for_restore(r, Some(&cluster));
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(job) = jobs
        .get_opt(&job_name)
        .await
        .map_err(kube_err("reading the fetch Job"))?
    else {
        // A key that is missing is named now, rather than by a fetch pod that cannot mount it. An
        // archive not known to be encrypted needs no identity (a Secret may hold only the public
        // key); one is mounted if there is one, since the fetch decides from the archive itself.
        let identity = match (&decryption, chosen.encrypted) {
            (None, false) => None,
            (None, true) => {
                let why = format!(
                    "{} is age-encrypted and no Secret holds its identity: set spec.encryption.secretName \
                     (or the cluster's spec.backup.encryption) to a Secret with an `{}` key; the cluster was not touched",
                    chosen.describe(),
                    encryption::IDENTITY_KEY
                );
                return advance(ctx, r, status, RestorePhase::Failed, why).await;
            }
            (Some(e), encrypted) => {
                match encryption::read_key(&ctx.client, &ns, &e.secret_name, encryption::IDENTITY_KEY).await?
                {
                    Ok(_) => Some(e.secret_name.as_str()),
                    Err(_) if !encrypted => None,
                    Err(why) => {
                        let why = format!("{why}, which decrypts the archive; the cluster was not touched");
                        return advance(ctx, r, status, RestorePhase::Failed, why).await;
                    }
                }
            }
        };
        create_fetch(ctx, r, &cluster, &chosen, identity, &claim, &job_name).await?;
        failpoints::hit("restore-after-fetch-job");
        return Ok(Action::requeue(POLL));
    };
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("job-name={job_name}")))
        .await
        .map_err(kube_err("listing the fetch Job's pods"))?;
    match fetch_outcome(&job.status.unwrap_or_default(), &pods.items) {
        FetchOutcome::Running => Ok(Action::requeue(POLL)),
        FetchOutcome::Verified(message) => {
            // The fetch leaves the verified manifest as its termination message: the revision of an
            // archive no EtcdBackup describes.
            let manifest =
                message.and_then(|m| serde_json::from_str::<ouroboros_crds::sidecar::Manifest>(&m).ok());
            let status = EtcdRestoreStatus {
                restored_revision: status
                    .restored_revision
                    .or_else(|| manifest.and_then(|m| i64::try_from(m.revision).ok())),
                ..status
            };
            let reason = format!(
                "{} verified; restoring a new seed member from it",
                chosen.location
            );
            advance(ctx, r, status, RestorePhase::Restoring, reason).await
        }
        FetchOutcome::Refused(message) => {
            let mut why = message.unwrap_or_else(|| format!("Job {job_name} failed"));
            if let Some(e) = decryption.filter(|_| why.contains("decrypting")) {
                why.push_str(&format!(
                    " (the identity came from key `{}` of Secret {ns}/{})",
                    encryption::IDENTITY_KEY,
                    e.secret_name
                ));
            }
            advance(
                ctx,
                r,
                status,
                RestorePhase::Failed,
                format!("the archive did not verify: {why}; the cluster was not touched"),
            )
            .await
        }
    }
}

/// Where the fetch Job is. The Job's own status lags its pod's by a second or more (the Job
/// controller batches pod updates), and someone is waiting for this restore, so a fetch container
/// that has exited decides first; the Job's status covers a pod that is already gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Still downloading and verifying.
    Running,
    /// The archive verified; the termination message (the manifest), when there is one.
    Verified(Option<String>),
    /// The archive was refused; the termination message says why.
    Refused(Option<String>),
}

/// Decides [`FetchOutcome`] from the Job's status and its pods (there is one: `backoffLimit` is 0).
pub fn fetch_outcome(job: &k8s_openapi::api::batch::v1::JobStatus, pods: &[Pod]) -> FetchOutcome {
    let exited = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == FETCH_CONTAINER)
        .find_map(|c| c.state.as_ref()?.terminated.clone());
    let message = exited
        .as_ref()
        .and_then(|t| t.message.as_deref())
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    match exited {
        Some(t) if t.exit_code == 0 => FetchOutcome::Verified(message),
        Some(_) => FetchOutcome::Refused(message),
        None if job.succeeded.unwrap_or(0) > 0 => FetchOutcome::Verified(None),
        None if job.failed.unwrap_or(0) > 0 => FetchOutcome::Refused(None),
        None => FetchOutcome::Running,
    }
}

/// The fetch Job's container.
const FETCH_CONTAINER: &str = "fetch";

async fn create_fetch(
    ctx: &Context,
    r: &EtcdRestore,
    cluster: &EtcdCluster,
    chosen: &Chosen,
    identity_secret: Option<&str>,
    claim: &str,
    job_name: &str,
) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    // Room for the snapshot with some slack, at least 1Gi; when its size is unknown (source.object),
    // as much as a member's claim, which no snapshot of a member can outgrow.
    let member_claim = cluster.spec.storage.persistent_volume_claim.as_ref();
    let size = match (chosen.raw_size, member_claim) {
        (0, Some(p)) => p.size.0.clone(),
        (0, None) => "8Gi".to_owned(),
        (raw, _) => {
            let gib = (u64::try_from(raw).unwrap_or(0) * 12 / 10)
                .div_ceil(1 << 30)
                .max(1);
            format!("{gib}Gi")
        }
    };
    let class = member_claim.and_then(|p| p.storage_class_name.clone());
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": ns, "ownerReferences": owned_by(r)},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                 "resources": {"requests": {"storage": size}}}
    }))
    .unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if pvcs
        .get_opt(claim)
        .await
        .map_err(kube_err("reading the snapshot claim"))?
        .is_none()
    {
        pvcs.create(&PostParams::default(), &pvc)
            .await
            .map_err(kube_err("creating the snapshot claim"))?;
    }
    let mut args = vec![
        "fetch".to_owned(),
        format!("--location={}", chosen.location),
        "--out=/snapshot".to_owned(),
    ];
    if let Some(sha) = &chosen.sha256 {
        args.push(format!("--sha256={sha}"));
    }
    let mut env = Vec::new();
    let mut volumes = vec![json!({"name": "snapshot", "persistentVolumeClaim": {"claimName": claim}})];
    let mut mounts = vec![json!({"name": "snapshot", "mountPath": "/snapshot"})];
    let dest = chosen
        .destination
        .clone()
        .or_else(|| cluster.spec.backup.as_ref().and_then(|p| p.destination.clone()));
    if let Some(s3) = dest
        .as_ref()
        .and_then(|d| d.s3.clone())
        .filter(|_| chosen.location.starts_with("s3://"))
    {
        if let Some(ep) = &s3.endpoint {
            args.push(format!("--endpoint={ep}"));
        }
        args.push(format!("--region={}", s3.region));
        if s3.force_path_style {
            args.push("--force-path-style".into());
        }
        if let Some(secret) = &s3.credentials_secret {
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                env.push(json!({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}));
            }
        }
    }
    if let Some(secret) = identity_secret {
        // Only the identity is mounted, read-only, in the fetch container alone.
        volumes.push(
            json!({"name": "identity", "secret": {"secretName": secret, "defaultMode": 0o400,
            "items": [{"key": encryption::IDENTITY_KEY, "path": "identity"}]}}),
        );
        mounts.push(json!({"name": "identity", "mountPath": "/identity", "readOnly": true}));
        args.push("--identity-file=/identity/identity".to_owned());
    }
    let volume = dest
        .as_ref()
        .and_then(|d| d.volume.clone())
        .or_else(|| resources::backup_volume(cluster));
    if let Some(v) = volume.filter(|_| chosen.location.starts_with("file://")) {
        volumes.push(json!({"name": "backups", "persistentVolumeClaim": {"claimName": v.claim_name, "readOnly": true}}));
        mounts.push(json!({"name": "backups", "mountPath": format!("{}/{}", resources::BACKUP_MOUNT, v.claim_name), "readOnly": true}));
    }
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name, "namespace": ns, "ownerReferences": owned_by(r)},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "securityContext": resources::restricted_pod_security(),
                "containers": [{
                    "name": FETCH_CONTAINER, "image": ctx.config.backup_sidecar_image, "imagePullPolicy": "IfNotPresent",
                    "args": args, "env": env, "volumeMounts": mounts,
                    "securityContext": resources::restricted_container_security(),
                    "terminationMessagePolicy": "FallbackToLogsOnError"
                }],
                "volumes": volumes
            }}
        }
    }))
    .unwrap_or_default();
    Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await
        .map(drop)
        .or_else(|e| match e {
            kube::Error::Api(s) if s.code == 409 => Ok(()),
            e => Err(e),
        })
        .map_err(kube_err("creating the fetch Job"))
}

async fn set_hold(ctx: &Context, ns: &str, cluster: &str, value: Option<&str>) -> Result<(), Error> {
    set_hold_at(ctx, ns, cluster, value, None).await
}

/// Sets (or lifts) the hold, and when `resource_version` is given only on the cluster as it was read:
/// a merge patch that carries `metadata.resourceVersion` is refused with 409 Conflict if the object
/// changed since, so two restores that both saw no hold cannot both take it.
async fn set_hold_at(
    ctx: &Context,
    ns: &str,
    cluster: &str,
    value: Option<&str>,
    resource_version: Option<&str>,
) -> Result<(), Error> {
    let patch = match resource_version {
        Some(rv) => json!({"metadata": {"resourceVersion": rv, "annotations": {RESTORE_HOLD: value}}}),
        None => json!({"metadata": {"annotations": {RESTORE_HOLD: value}}}),
    };
    Api::<EtcdCluster>::namespaced(ctx.client.clone(), ns)
        .patch(cluster, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(kube_err("annotating the EtcdCluster"))
}

/// The seed's pod: a new member whose init container restores the verified snapshot into its data
/// directory (only when that directory is still empty, so a restarted pod does not restore twice).
pub fn seed_pod(
    cluster: &EtcdCluster,
    images: &Images,
    seed: &str,
    version: EtcdVersion,
    claim: &str,
    token: &str,
) -> Pod {
    let mut pod = resources::member_pod(
        cluster,
        images,
        seed,
        version,
        InitialClusterState::New,
        &[seed.to_owned()],
    );
    let peer = resources::peer_url(cluster, seed);
    let script = format!(
        "set -e; if [ -d {DATA_MOUNT}/data/member ]; then echo 'data already restored'; exit 0; fi; \
         rm -rf {DATA_MOUNT}/data; \
         etcdutl snapshot restore /snapshot/snapshot.db --data-dir {DATA_MOUNT}/data --name {seed} \
         --initial-cluster {seed}={peer} --initial-advertise-peer-urls {peer} --initial-cluster-token {token} \
         --bump-revision {BUMP_REVISION} --mark-compacted"
    );
    let etcd_image = resources::etcd_image(cluster, images, version);
    if let Some(spec) = pod.spec.as_mut() {
        // The restore runs as the member does: restricted when the member is.
        let security = spec
            .security_context
            .is_some()
            .then(resources::restricted_container_security);
        let init: k8s_openapi::api::core::v1::Container = serde_json::from_value(json!({
            "name": "restore", "image": etcd_image, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script],
            "securityContext": security,
            "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT},
                             {"name": "snapshot", "mountPath": "/snapshot", "readOnly": true}]
        }))
        .unwrap_or_default();
        spec.init_containers = Some(vec![init]);
        let vol: k8s_openapi::api::core::v1::Volume = serde_json::from_value(
            json!({"name": "snapshot", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}),
        )
        .unwrap_or_default();
        spec.volumes.get_or_insert_with(Vec::new).push(vol);
    }
    pod
}

/// The cluster being restored; when it was deleted mid-restore, the restore is failed and the
/// returned `Err` is the action to return.
async fn target(
    ctx: &Context,
    r: &EtcdRestore,
    status: &EtcdRestoreStatus,
) -> Result<Result<EtcdCluster, Action>, Error> {
    let found = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default())
        .get_opt(&r.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?;
    match found {
        Some(c) => Ok(Ok(c)),
        None => advance(
            ctx,
            r,
            status.clone(),
            RestorePhase::Failed,
            "the EtcdCluster was deleted".into(),
        )
        .await
        .map(Err),
    }
}

async fn restoring(r: &EtcdRestore, ctx: &Context, status: EtcdRestoreStatus) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = &r.spec.cluster_name;
    let cluster = match target(ctx, r, &status).await? {
        Ok(c) => c,
        Err(action) => return Ok(action),
    };
    match cluster.annotations().get(RESTORE_HOLD) {
        Some(holder) if *holder != r.name_any() => {
            let why = format!("EtcdRestore {holder} is restoring this cluster; this one did not touch it");
            return advance(ctx, r, status, RestorePhase::Failed, why).await;
        }
        Some(_) => {}
        None => {
            // A restore that already lifted its hold is still growing the cluster it restored; its
            // status says Growing before it lifts the hold, so reading the cluster first and the
            // restores second cannot miss it. Others still in Restoring without a hold are not a
            // reason to fail: two restores that both failed on seeing each other would leave none
            // running; the hold below decides which one runs.
            let others = Api::<EtcdRestore>::namespaced(ctx.client.clone(), &ns)
                .list(&ListParams::default())
                .await
                .map_err(kube_err("listing EtcdRestores"))?;
            if let Some(other) = others.items.iter().find(|o| {
                o.name_any() != r.name_any()
                    && o.spec.cluster_name == *name
                    && o.status.as_ref().and_then(|s| s.phase) == Some(RestorePhase::Growing)
            }) {
                let why = format!(
                    "EtcdRestore {} is restoring this cluster; this one did not touch it",
                    other.name_any()
                );
                return advance(ctx, r, status, RestorePhase::Failed, why).await;
            }
            // Atomic: taken only on the cluster as read here. A restore that lost the race sees the
            // other's hold at its next look and fails naming it.
            match set_hold_at(
                ctx,
                &ns,
                name,
                Some(&r.name_any()),
                cluster.resource_version().as_deref(),
            )
            .await
            {
                Ok(()) => failpoints::hit("restore-after-hold"),
                Err(e) if matches!(&e.source, kube::Error::Api(s) if s.code == 409) => {}
                Err(e) => return Err(e),
            }
            return Ok(Action::requeue(STEP));
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let members = pods
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}")))
        .await
        .map_err(kube_err("listing member pods"))?;
    // The seed's name is chosen once, past every ordinal in use by pods or claims (old claims stay).
    let seed = match &status.seed_member {
        Some(s) => s.clone(),
        None => {
            let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
                .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}")))
                .await
                .map_err(kube_err("listing claims"))?;
            let highest = members
                .items
                .iter()
                .map(|p| p.name_any())
                .chain(
                    claims
                        .items
                        .iter()
                        .map(|c| c.name_any().trim_end_matches("-data").to_owned()),
                )
                .filter_map(|n| ordinal(name, &n))
                .max();
            let next = highest
                .map_or(0, |h| h + 1)
                .max(resources::ordinal_floor(&cluster));
            let seed = format!("{name}-{next}");
            // Recorded before the seed exists, like every member name: names never repeat.
            crate::controllers::cluster::apply::record_ordinal_taken(ctx, &cluster, &seed)
                .await
                .map_err(kube_err("recording the seed's ordinal on the EtcdCluster"))?;
            let status = EtcdRestoreStatus {
                seed_member: Some(seed),
                ..status
            };
            write_status(ctx, r, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    };
    let old: Vec<String> = members
        .items
        .iter()
        .map(|p| p.name_any())
        .filter(|n| *n != seed)
        .collect();
    if !old.is_empty() {
        for p in &old {
            match pods.delete(p, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(Error {
                        action: "deleting an old member pod",
                        source: e,
                    });
                }
            }
        }
        failpoints::hit("restore-after-old-pods-deleted");
        ctx.publish(
            &r.object_ref(&()),
            EventType::Normal,
            "OldMembersStopped",
            format!(
                "stopped {} (their claims are kept until the restored cluster is Available)",
                old.join(", ")
            ),
            None,
        )
        .await;
        return Ok(Action::requeue(POLL));
    }
    let (claim, _) = names(r);
    let Some(seed_pod_now) = pods
        .get_opt(&seed)
        .await
        .map_err(kube_err("reading the seed pod"))?
    else {
        let version: EtcdVersion = match cluster.spec.version.parse() {
            Ok(v) => v,
            Err(e) => {
                return advance(ctx, r, status, RestorePhase::Failed, format!("spec.version: {e}")).await;
            }
        };
        if let Some(pvc) = resources::member_pvc(&cluster, &seed, version) {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            if pvcs
                .get_opt(&seed_pvc_name(&seed))
                .await
                .map_err(kube_err("reading the seed claim"))?
                .is_none()
            {
                pvcs.create(&PostParams::default(), &pvc)
                    .await
                    .map_err(kube_err("creating the seed claim"))?;
            }
        }
        let images = Images {
            etcd_repository: ctx.config.etcd_image_repository.clone(),
            sidecar: ctx.config.backup_sidecar_image.clone(),
        };
        let token = format!(
            "{name}-restore-{}",
            r.uid().unwrap_or_default().split('-').next().unwrap_or_default()
        );
        // The seed pod mounts its sidecar's certificate; without the Secret it would sit in
        // ContainerCreating, so it is made (or renewed) first, by the one code that issues it.
        if let Err(e) = apply::ensure_sidecar_tls(ctx, &cluster).await {
            let why = format!("waiting for the sidecars' certificate before starting the seed: {e}");
            let status = EtcdRestoreStatus {
                reason: Some(why),
                ..status
            };
            write_status(ctx, r, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        let pod = seed_pod(&cluster, &images, &seed, version, &claim, &token);
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(Error {
                    action: "creating the seed pod",
                    source: e,
                });
            }
        }
        failpoints::hit("restore-after-seed-pod");
        return Ok(Action::requeue(POLL));
    };
    let ready = seed_pod_now
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return Ok(Action::requeue(POLL));
    }
    // Growing is recorded before the hold is lifted (by `growing`): a restart in between must not come
    // back here, where pods other than the seed count as old members, once the cluster grows again.
    let reason = format!(
        "seed {seed} runs the restored data; growing to {} members",
        cluster.spec.size
    );
    advance(ctx, r, status, RestorePhase::Growing, reason).await
}

fn seed_pvc_name(seed: &str) -> String {
    resources::pvc_name(seed)
}

async fn growing(r: &EtcdRestore, ctx: &Context, status: EtcdRestoreStatus) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = &r.spec.cluster_name;
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let cluster = match target(ctx, r, &status).await? {
        Ok(c) => c,
        Err(action) => return Ok(action),
    };
    if cluster.annotations().get(RESTORE_HOLD) == Some(&r.name_any()) {
        set_hold(ctx, &ns, name, None).await?;
        failpoints::hit("restore-after-hold-lifted");
        return Ok(Action::requeue(STEP));
    }
    let cs = cluster.status.clone().unwrap_or_default();
    let size = usize::try_from(cluster.spec.size).unwrap_or(0);
    let done = cs.phase == Some(ouroboros_crds::ClusterPhase::Running)
        && cs.members.len() == size
        && cs.members.iter().all(|m| m.healthy && !m.is_learner);
    if !done {
        return Ok(Action::requeue(Duration::from_secs(3)));
    }
    // The old members' claims, kept until now.
    let current: Vec<String> = cs.members.iter().map(|m| resources::pvc_name(&m.name)).collect();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claims = pvcs
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}")))
        .await
        .map_err(kube_err("listing claims"))?;
    for c in claims.items.iter().filter(|c| {
        let n = c.name_any();
        n.ends_with("-data") && !current.contains(&n)
    }) {
        let _ = pvcs.delete(&c.name_any(), &DeleteParams::default()).await;
    }
    failpoints::hit("restore-after-old-claims-deleted");
    let (claim, job) = names(r);
    let _ = Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .delete(&job, &DeleteParams::background())
        .await;
    let _ = pvcs.delete(&claim, &DeleteParams::default()).await;
    let reference = BackupReference {
        name: status.backup_name.clone().unwrap_or_default(),
        location: status.source.clone().unwrap_or_default(),
        revision: status.restored_revision.unwrap_or(0),
        completion_time: jiff::Timestamp::now().to_string(),
    };
    let patch = json!({"apiVersion": EtcdCluster::api_version(&()), "kind": EtcdCluster::kind(&()),
                       "status": {"restoredFrom": reference}});
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(kube_err("recording the restore on the EtcdCluster"))?;
    let reason = format!(
        "{name} is Available with {size} members, restored from {} at revision {} (revisions bumped by {BUMP_REVISION})",
        reference.location, reference.revision
    );
    advance(ctx, r, status, RestorePhase::Succeeded, reason).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn restore(source: &str) -> EtcdRestore {
        serde_yaml::from_str(&format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {{name: r, namespace: ns}}\nspec: {{clusterName: main, source: {source}}}\n"
        ))
        .unwrap()
    }

    fn backup(name: &str, cluster: &str, phase: BackupPhase, revision: i64, completed: &str) -> EtcdBackup {
        let mut b: EtcdBackup = serde_yaml::from_str(&format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{clusterName: {cluster}}}\n"
        ))
        .unwrap();
        b.status = Some(ouroboros_crds::EtcdBackupStatus {
            phase: Some(phase),
            location: (phase == BackupPhase::Succeeded).then(|| format!("s3://b/{name}.tar.gz")),
            sha256: Some("ab".repeat(32)),
            revision: Some(revision),
            completion_time: Some(completed.into()),
            cluster_uid: Some("u1".into()),
            ..Default::default()
        });
        b
    }

    /// The lineage of the cluster every `all()` backup came from.
    fn mine() -> Lineage {
        Lineage::Uids(vec!["u1".into()])
    }

    fn all() -> Vec<EtcdBackup> {
        vec![
            backup("old", "main", BackupPhase::Succeeded, 100, "2026-11-20T00:00:00Z"),
            backup(
                "newer",
                "main",
                BackupPhase::Succeeded,
                500,
                "2026-11-21T00:00:00Z",
            ),
            backup("failed", "main", BackupPhase::Failed, 900, "2026-11-21T06:00:00Z"),
            backup(
                "other",
                "elsewhere",
                BackupPhase::Succeeded,
                9000,
                "2026-11-21T07:00:00Z",
            ),
        ]
    }

    fn fetch_pod(state: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "r-fetch-x"},
            "status": {"containerStatuses": [{"name": "fetch", "image": "i", "imageID": "", "ready": false,
                                              "restartCount": 0, "state": state}]}
        }))
        .unwrap()
    }

    #[test]
    fn the_fetch_containers_exit_decides_before_the_job_status_catches_up() {
        use k8s_openapi::api::batch::v1::JobStatus;
        let idle = JobStatus::default();
        let running = fetch_pod(json!({"running": {}}));
        assert_eq!(fetch_outcome(&idle, &[]), FetchOutcome::Running);
        assert_eq!(fetch_outcome(&idle, &[running]), FetchOutcome::Running);
        let ok = fetch_pod(json!({"terminated": {"exitCode": 0, "message": " {\"revision\": 7}\n"}}));
        assert_eq!(
            fetch_outcome(&idle, &[ok]),
            FetchOutcome::Verified(Some(r#"{"revision": 7}"#.into()))
        );
        let refused = fetch_pod(json!({"terminated": {"exitCode": 1, "message": "sha256 mismatch"}}));
        assert_eq!(
            fetch_outcome(&idle, &[refused]),
            FetchOutcome::Refused(Some("sha256 mismatch".into()))
        );
        // A crash leaves no message; the exit code still refuses.
        let crashed = fetch_pod(json!({"terminated": {"exitCode": 137, "message": "  "}}));
        assert_eq!(fetch_outcome(&idle, &[crashed]), FetchOutcome::Refused(None));
        // The pod is gone (garbage-collected): the Job's status decides.
        let succeeded = JobStatus {
            succeeded: Some(1),
            ..JobStatus::default()
        };
        let failed = JobStatus {
            failed: Some(1),
            ..JobStatus::default()
        };
        assert_eq!(fetch_outcome(&succeeded, &[]), FetchOutcome::Verified(None));
        assert_eq!(fetch_outcome(&failed, &[]), FetchOutcome::Refused(None));
    }

    #[test]
    fn a_started_restore_keeps_the_backup_it_recorded() {
        // `latest` chose "newer"; a newest backup appearing later does not switch the archive.
        let r = restore("{latest: true}");
        let first = choose(&r, &mine(), &all()).unwrap();
        let mut more = all();
        more.push(backup(
            "newest",
            "main",
            BackupPhase::Succeeded,
            9999,
            "2026-11-23T00:00:00Z",
        ));
        assert_eq!(choose(&r, &mine(), &more).unwrap().name, "newest");
        assert_eq!(
            recorded_choice(&r, Some(&first.location), &mine(), &more)
                .unwrap()
                .name,
            first.name
        );
        // Gone since: the restore fails rather than restore something else.
        let gone: Vec<EtcdBackup> = more.into_iter().filter(|b| b.name_any() != first.name).collect();
        assert!(recorded_choice(&r, Some(&first.location), &mine(), &gone).is_err());
        // Nothing recorded yet: the source decides.
        assert_eq!(
            recorded_choice(&r, None, &mine(), &all()).unwrap().name,
            first.name
        );
    }

    #[test]
    fn a_named_backup_must_exist_and_have_succeeded() {
        let c = choose(&restore("{backupName: old}"), &mine(), &all()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.revision, c.location.as_str()),
            ("old", Some(100), "s3://b/old.tar.gz")
        );
        assert!(
            choose(&restore("{backupName: failed}"), &mine(), &all())
                .unwrap_err()
                .contains("has not succeeded")
        );
        assert!(
            choose(&restore("{backupName: nope}"), &mine(), &all())
                .unwrap_err()
                .contains("does not exist")
        );
    }

    #[test]
    fn latest_takes_the_newest_success_of_this_cluster_within_the_bounds() {
        assert_eq!(
            choose(&restore("{latest: true}"), &mine(), &all()).unwrap().name,
            "newer"
        );
        let bounded = restore("{latest: true, notAfter: '2026-11-20T12:00:00Z'}");
        assert_eq!(choose(&bounded, &mine(), &all()).unwrap().name, "old");
        assert_eq!(
            choose(&restore("{latest: true, maxRevision: 499}"), &mine(), &all())
                .unwrap()
                .name,
            "old"
        );
        assert!(choose(&restore("{latest: true, maxRevision: 1}"), &mine(), &all()).is_err());
        assert!(
            choose(&restore("{latest: true, notAfter: yesterday}"), &mine(), &all())
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    #[test]
    fn an_object_source_names_the_archive_in_its_store() {
        let s3 = choose(
            &restore("{object: {destination: {s3: {bucket: bk, prefix: p/}}, key: p/ns/main/x.tar.gz}}"),
            &mine(),
            &[],
        )
        .unwrap();
        assert_eq!(s3.location, "s3://bk/p/ns/main/x.tar.gz");
        assert_eq!((s3.revision, s3.sha256), (None, None));
        assert!(
            s3.destination.unwrap().s3.is_some(),
            "credentials come from the object's store"
        );
        let vol = choose(
            &restore("{object: {destination: {volume: {claimName: keep}}, key: /ns/main/x.tar.gz}}"),
            &mine(),
            &[],
        )
        .unwrap();
        assert_eq!(vol.location, "file:///backups/keep/ns/main/x.tar.gz");
        for bad in [
            "{object: {destination: {volume: {claimName: keep}}, key: ../../etc/passwd}}",
            "{object: {destination: {volume: {claimName: keep}}, key: ''}}",
            "{object: {destination: {}, key: x.tar.gz}}",
        ] {
            assert!(choose(&restore(bad), &mine(), &[]).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn latest_skips_successes_without_a_location() {
        let mut backups = all();
        backups[1].status.as_mut().unwrap().location = None;
        assert_eq!(
            choose(&restore("{latest: true}"), &mine(), &backups)
                .unwrap()
                .name,
            "old"
        );
        assert_eq!(choose_latest("main", &mine(), &all()).unwrap().name, "newer");
        assert!(choose_latest("nothing", &mine(), &all()).is_err());
    }

    /// A backup of `main` taken from the cluster with `uid`.
    fn of_uid(name: &str, uid: Option<&str>, revision: i64, completed: &str) -> EtcdBackup {
        let mut b = backup(name, "main", BackupPhase::Succeeded, revision, completed);
        b.status.as_mut().unwrap().cluster_uid = uid.map(Into::into);
        b
    }

    #[test]
    fn latest_and_recovery_never_cross_into_an_earlier_cluster_of_the_same_name() {
        // An earlier `main` (uid u0) reached revision 9999; this one (u1) is at 500.
        let mut backups = all();
        backups.push(of_uid("earlier", Some("u0"), 9999, "2026-11-19T00:00:00Z"));
        backups.push(of_uid("unrecorded", None, 8888, "2026-11-19T06:00:00Z"));
        assert_eq!(choose_latest("main", &mine(), &backups).unwrap().name, "newer");
        assert_eq!(
            choose(&restore("{latest: true}"), &mine(), &backups)
                .unwrap()
                .name,
            "newer"
        );
        // Named explicitly, an earlier cluster's backup is restored: the user chose it.
        assert_eq!(
            choose(&restore("{backupName: earlier}"), &mine(), &backups)
                .unwrap()
                .name,
            "earlier"
        );
        // Only other lineages: refused, naming what was skipped and how to use it anyway.
        let only_earlier = vec![backups[4].clone(), backups[5].clone()];
        let why = choose_latest("main", &mine(), &only_earlier).unwrap_err();
        for part in [
            "lineage (uid u1)",
            "2 backup(s)",
            "earlier",
            "unrecorded",
            "backupName",
        ] {
            assert!(why.contains(part), "{part:?} missing from: {why}");
        }
        // Restored from the earlier cluster: its backups are this cluster's history too.
        let both = Lineage::Uids(vec!["u1".into(), "u0".into()]);
        assert_eq!(choose_latest("main", &both, &backups).unwrap().name, "earlier");
    }

    #[test]
    fn a_cluster_with_no_history_takes_the_lineage_that_backed_up_last() {
        // u0 backed up last (though u1 reached a higher revision): u0's newest is restored.
        let backups = vec![
            of_uid("u1-high", Some("u1"), 9000, "2026-11-20T00:00:00Z"),
            of_uid("u0-low", Some("u0"), 10, "2026-11-21T00:00:00Z"),
            of_uid("u0-lower", Some("u0"), 5, "2026-11-20T12:00:00Z"),
        ];
        assert_eq!(
            choose(&restore("{latest: true}"), &Lineage::NewestOfName, &backups)
                .unwrap()
                .name,
            "u0-low"
        );
    }

    #[test]
    fn the_lineage_of_a_cluster_is_its_uid_and_the_one_it_was_restored_from() {
        let mut c: EtcdCluster = serde_yaml::from_str(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: main, namespace: ns, uid: u2}\nspec: {size: 1}\n",
        )
        .unwrap();
        let backups = vec![of_uid("earlier", Some("u0"), 9, "2026-11-19T00:00:00Z")];
        // Created for a restore, never formed: no history of its own...
        assert_eq!(Lineage::of(&c, &backups), Lineage::NewestOfName);
        // ...but automatic recovery never takes another cluster's data.
        assert_eq!(Lineage::own(&c, &backups), Lineage::Uids(vec!["u2".into()]));
        c.status = Some(ouroboros_crds::EtcdClusterStatus {
            cluster_id: Some("abc".into()),
            ..Default::default()
        });
        assert_eq!(Lineage::of(&c, &backups), Lineage::Uids(vec!["u2".into()]));
        c.status.as_mut().unwrap().restored_from = Some(ouroboros_crds::BackupReference {
            name: "earlier".into(),
            location: "s3://b/earlier.tar.gz".into(),
            revision: 9,
            completion_time: "2026-11-19T00:00:00Z".into(),
        });
        assert_eq!(
            Lineage::of(&c, &backups),
            Lineage::Uids(vec!["u2".into(), "u0".into()])
        );
    }

    #[test]
    fn the_seed_restores_once_with_a_bumped_revision_and_new_identity() {
        let cluster: EtcdCluster = serde_yaml::from_str(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: main, namespace: ns, uid: u}\nspec: {size: 3}\n",
        )
        .unwrap();
        let images = Images {
            etcd_repository: "etcd".into(),
            sidecar: "sidecar:1".into(),
        };
        let pod = seed_pod(
            &cluster,
            &images,
            "main-3",
            "3.6.16".parse().unwrap(),
            "r-snapshot",
            "main-restore-1",
        );
        let spec = pod.spec.unwrap();
        let init = &spec.init_containers.unwrap()[0];
        let script = init.command.clone().unwrap().join(" ");
        for part in [
            "if [ -d /var/lib/etcd/data/member ]",
            "etcdutl snapshot restore /snapshot/snapshot.db",
            "--bump-revision 1000000000 --mark-compacted",
            "--initial-cluster-token main-restore-1",
            "--name main-3",
        ] {
            assert!(script.contains(part), "{part} missing from {script}");
        }
        assert_eq!(init.image.as_deref(), Some("etcd:v3.6.16"));
        let snapshot = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "snapshot")
            .unwrap();
        assert_eq!(snapshot.persistent_volume_claim.unwrap().claim_name, "r-snapshot");
    }
}
