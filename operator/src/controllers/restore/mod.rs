//! The EtcdRestore controller. One step per reconcile, each idempotent, its progress in status:
//!
//! 1. **Pending**: pick the backup (by name, or the newest matching `latest`), or fail naming why.
//! 2. **Verifying**: a Job runs `etcd-backup-sidecar fetch` into a fresh claim: download, unpack,
//!    check etcd's trailer, the manifest and the recorded sha256; one Job and claim per restored
//!    member, spread as the members will be. The cluster is not touched; a bad archive fails the
//!    restore here. A restore to a point of a continuous backup's delta chain (`source.revision`,
//!    `source.time`, or the chain's end for a cluster with `spec.backup.continuous`) has one Job
//!    that also checks the chain whole up to the point and replays it on the snapshot with the
//!    cluster's own etcd (`fetch --chain-of`); a hole or a damaged chunk fails it here too. Its
//!    one seed is grown by the cluster controller.
//! 3. **Restoring**: the cluster is held (annotation), its member pods are deleted (claims are kept),
//!    and new members start from the verified snapshot, restored by the etcd image's `etcdutl
//!    snapshot restore --bump-revision --mark-compacted` under a new cluster ID, each from its own
//!    verified copy. From S3, all of `spec.size` restore and start together (etcd's own
//!    disaster-recovery procedure); from a `file` archive, one seed.
//! 4. **Growing**: the hold is lifted and the cluster controller grows the restored members to
//!    `spec.size` as usual (nothing to grow after a parallel restore); once it is Available, the old
//!    members' claims and the snapshot claim are deleted.

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
    BackupEncryption, BackupReference, EtcdBackup, EtcdCluster, EtcdRestore, EtcdRestoreStatus, EtcdVersion,
    RestorePhase,
};
use serde_json::json;

use super::{
    KubeCallError, ReportedError, delete_if_present, encryption, kube_err, outcome::with_outcome_conditions,
};
use crate::{
    backup_source::{
        Chosen, Lineage, check_base, choose, point_target, recorded_choice, restore_awaits_drill,
        restores_along_chain,
    },
    cluster_writes,
    context::Context,
    failpoints,
    vocabulary::{self, BUMP_REVISION, LABEL_CLUSTER, RESTORE_HOLD},
};

mod objects;
mod plan;

const MANAGER: &str = "ouroboros-operator-restore";
/// How often a restore looks at what it waits for (the fetch Job, the seed pod): restores are rare,
/// someone is waiting for this one, and every poll costs one GET.
const POLL: Duration = Duration::from_millis(500);
/// How often a `latest` restore looks again while the newest backup's drill runs.
const DRILL_WAIT: Duration = Duration::from_secs(3);
/// The pause after a step whose result the restore controller does not watch (the cluster's hold).
const STEP: Duration = Duration::from_millis(100);

/// Why an EtcdRestore reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes call failed; retried with backoff.
    #[error(transparent)]
    Kube(#[from] KubeCallError),
    /// An object could not be built (a programming error: nothing was sent).
    #[error(transparent)]
    Build(#[from] crate::objects::BuildError),
}

impl ReportedError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(e) => e.metric_label(),
            Error::Build(_) => "build",
        }
    }
    fn is_permanent(&self) -> bool {
        matches!(self, Error::Build(_))
    }
}

/// One pass for one EtcdRestore.
#[tracing::instrument(skip_all, fields(namespace = %r.namespace().unwrap_or_default(), name = %r.name_any()))]
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
    let status = with_outcome_conditions(status, r.metadata.generation);
    let status = serde_json::to_value(&status)
        .map_err(|e| kube_err("writing EtcdRestore status")(kube::Error::SerdeError(e)))?;
    crate::cluster_writes::apply_status_of(&api, r, crate::FIELD_MANAGER, status)
        .await
        .map_err(kube_err("writing EtcdRestore status"))?;
    Ok(())
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
                return Err(Error::Kube(KubeCallError {
                    action: "creating the EtcdCluster from clusterTemplate",
                    source: e,
                }));
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
    let lineage = Lineage::of(&cluster, &backups.items);
    if let Some(why) = restore_awaits_drill(r, &lineage, &backups.items) {
        // Doubt means wait: the newest backup may verify in a moment, and it holds more data.
        if status.reason.as_deref() == Some(why.as_str()) {
            return Ok(Action::requeue(DRILL_WAIT));
        }
        let status = EtcdRestoreStatus {
            phase: Some(RestorePhase::Pending),
            reason: Some(why),
            ..status
        };
        write_status(ctx, r, &status).await?;
        return Ok(Action::requeue(DRILL_WAIT));
    }
    match choose(r, &lineage, &backups.items) {
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
            let point_target = point_target(&r.spec.source, restores_along_chain(&cluster));
            if let Some(why) = point_target.as_ref().and_then(|t| check_base(&chosen, t).err()) {
                let why = format!("{why}; the cluster was not touched");
                return advance(ctx, r, status, RestorePhase::Failed, why).await;
            }
            let along = point_target
                .as_ref()
                .map(|t| format!(" and taking it to {} ", t.describe()))
                .unwrap_or_else(|| " ".to_owned());
            let reason = format!(
                "verifying {}{along}before touching the cluster",
                chosen.describe()
            );
            let status = EtcdRestoreStatus {
                source: Some(chosen.location.clone()),
                restored_revision: chosen.revision,
                backup_name: (src_is_backup(r)).then(|| chosen.name.clone()),
                point_target,
                ..status
            };
            advance(ctx, r, status, RestorePhase::Verifying, reason).await
        }
    }
}

async fn verifying(r: &EtcdRestore, ctx: &Context, status: EtcdRestoreStatus) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let cluster = match target(ctx, r, &status).await? {
        Ok(c) => c,
        Err(action) => return Ok(action),
    };
    let decryption = encryption::for_restore(r, Some(&cluster));
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // One verified copy per restored member, each fetched and checked on its own, all before
    // anything is touched (see `restored_count`). A snapshot taken along a delta chain is made
    // once: copies replayed apart in time could reach different ends of a chain that still grows,
    // and their bytes differ even at one revision. Its one seed is grown by the cluster controller.
    let copies = if status.point_target.is_some() {
        1
    } else {
        restored_count(&cluster, &status)
    };
    let mut outcomes = Vec::new();
    let mut unscheduled = None;
    let mut nodes = Vec::new();
    for copy in 0..copies {
        let job_name = objects::fetch_job_name(r, copy);
        let Some(job) = jobs
            .get_opt(&job_name)
            .await
            .map_err(kube_err("reading a fetch Job"))?
        else {
            // The backup is looked up once, before its fetches exist, as recorded when the restore
            // started; polls of the running fetches read nothing else.
            let (chosen, identity) =
                match archive_to_fetch(ctx, r, &cluster, &status, decryption.as_ref()).await? {
                    Ok(found) => found,
                    Err(why) => return advance(ctx, r, status, RestorePhase::Failed, why).await,
                };
            // The chain is replayed by the etcd the members run.
            let along = status.point_target.as_ref().map(|t| {
                let base = check_base(&chosen, t)?;
                let version = cluster
                    .spec
                    .version
                    .parse::<EtcdVersion>()
                    .map_err(|e| format!("spec.version: {e}"))?;
                Ok::<_, String>((t, base, vocabulary::etcd_image(&cluster, &ctx.images(), version)))
            });
            let along = match along.transpose() {
                Ok(a) => a,
                Err(why) => {
                    let why = format!("{why}; the cluster was not touched");
                    return advance(ctx, r, status, RestorePhase::Failed, why).await;
                }
            };
            let point = along
                .as_ref()
                .map(|(target, base_revision, image)| objects::FetchPoint {
                    target,
                    base_revision: *base_revision,
                    etcd_image: image,
                });
            for copy in 0..copies {
                let f = objects::FetchCopy {
                    chosen: &chosen,
                    identity_secret: identity.as_deref(),
                    image: &ctx.config.backup_sidecar_image,
                    copy,
                    spread: copies > 1,
                    point,
                };
                create_fetch(ctx, r, &cluster, f).await?;
            }
            failpoints::hit("restore-after-fetch-job");
            return Ok(Action::requeue(POLL));
        };
        let pods = super::pods_of_job(&ctx.client, &job)
            .await
            .map_err(kube_err("listing a fetch Job's pods"))?;
        if unscheduled.is_none() {
            unscheduled = pods
                .iter()
                .find_map(super::unscheduled_message)
                .map(|why| (job_name.clone(), why));
        }
        nodes.push(
            pods.iter()
                .find_map(|p| p.spec.as_ref()?.node_name.clone())
                .unwrap_or_default(),
        );
        outcomes.push((job_name, fetch_outcome(&job.status.unwrap_or_default(), &pods)));
    }
    let messages: Vec<Option<String>> = outcomes
        .iter()
        .map(|(_, o)| match o {
            FetchOutcome::Verified(m) => m.clone(),
            FetchOutcome::Running | FetchOutcome::Refused(_) => None,
        })
        .collect();
    match all_copies(outcomes) {
        (_, FetchOutcome::Running) => match unscheduled {
            Some((job, why)) => {
                let reason = format!(
                    "fetch {job} is not scheduled yet: {}. Each restored member's copy of the archive \
                     is fetched where that member will run, spread as the members are; the cluster \
                     was not touched",
                    why.trim_end_matches('.')
                );
                report_waiting(ctx, r, status, "FetchUnschedulable", reason.clone(), reason).await
            }
            None => Ok(Action::requeue(POLL)),
        },
        (_, FetchOutcome::Verified(_)) if members_must_spread(&cluster) && shared_node(&nodes).is_some() => {
            // The scheduler does not count a finished fetch pod against a later one, so a copy
            // scheduled late can share a node with another; the members that mount them could then
            // never both run there.
            let (a, b, node) = shared_node(&nodes).unwrap_or_default();
            let why = format!(
                "copies {a} and {b} of the snapshot were fetched on one node, {node}, and spec.pod.antiAffinity \
                 Required keeps their members apart; restore again (a new EtcdRestore) to fetch them anew; \
                 the cluster was not touched"
            );
            advance(ctx, r, status, RestorePhase::Failed, why).await
        }
        (_, FetchOutcome::Verified(_)) => {
            // Every copy leaves its verified manifest as its termination message; copies fetched
            // apart in time must be of one snapshot (an object can be overwritten in between).
            let manifest = match copies_agree(&messages) {
                Ok(m) => m,
                Err(why) => {
                    let why = format!("{why}; the cluster was not touched");
                    return advance(ctx, r, status, RestorePhase::Failed, why).await;
                }
            };
            let reached = match (&status.point_target, plan::reached_point(&messages)) {
                (None, _) => None,
                (Some(_), Ok(p)) => Some(p),
                (Some(_), Err(why)) => {
                    let why = format!("{why}; the cluster was not touched");
                    return advance(ctx, r, status, RestorePhase::Failed, why).await;
                }
            };
            let source = status.source.clone().unwrap_or_else(|| "the archive".to_owned());
            let reason = match &reached {
                Some(p) => format!(
                    "{source} verified and taken along its delta chain: {}; restoring the new members from it",
                    plan::describe_point(p)
                ),
                None => format!("{source} verified; restoring the new members from it"),
            };
            let status = EtcdRestoreStatus {
                restored_revision: reached.as_ref().map(|p| p.revision).or(status
                    .restored_revision
                    .or_else(|| manifest.as_ref().and_then(|m| i64::try_from(m.revision).ok()))),
                snapshot_sha256: manifest.map(|m| m.sha256),
                copies: Some(copies),
                point: reached,
                ..status
            };
            advance(ctx, r, status, RestorePhase::Restoring, reason).await
        }
        (job_name, FetchOutcome::Refused(message)) => {
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

/// Whether members may never share a node (the operator's own spreading, required).
fn members_must_spread(cluster: &EtcdCluster) -> bool {
    cluster.spec.pod.affinity.is_none()
        && cluster.spec.pod.anti_affinity == ouroboros_crds::AntiAffinityMode::Required
}

/// Two copies fetched on one node (their indexes and the node), if any; copies not placed yet
/// (an empty name) share nothing.
pub fn shared_node(nodes: &[String]) -> Option<(usize, usize, String)> {
    nodes.iter().enumerate().find_map(|(i, a)| {
        (!a.is_empty())
            .then(|| nodes.iter().enumerate().skip(i + 1).find(|(_, b)| *b == a))
            .flatten()
            .map(|(j, _)| (i, j, a.clone()))
    })
}

/// The manifest every verified copy reported (its termination message), or why the copies cannot
/// be used together. One copy may have left no message (its pod is gone): nothing to compare. Two
/// or more must all have one, with one sha256 and one revision: members restored from different
/// snapshots would serve different data under one cluster ID.
pub fn copies_agree(
    messages: &[Option<String>],
) -> Result<Option<ouroboros_crds::sidecar::Manifest>, String> {
    let parse = |m: &Option<String>| {
        m.as_deref()
            .and_then(|m| serde_json::from_str::<ouroboros_crds::sidecar::Manifest>(m).ok())
    };
    if messages.len() <= 1 {
        return Ok(messages.first().and_then(parse));
    }
    let manifests: Vec<_> = messages.iter().map(parse).collect();
    let Some(Some(first)) = manifests.first() else {
        return Err("the first verified copy left no manifest to compare the others with".into());
    };
    for (i, m) in manifests.iter().enumerate().skip(1) {
        match m {
            Some(m) if m.sha256 == first.sha256 && m.revision == first.revision => {}
            Some(m) => {
                return Err(format!(
                    "the verified copies differ: copy 0 is revision {} (sha256 {}), copy {i} revision {} \
                     (sha256 {}); the archive changed while it was fetched",
                    first.revision, first.sha256, m.revision, m.sha256
                ));
            }
            None => {
                return Err(format!(
                    "verified copy {i} left no manifest to compare with copy 0"
                ));
            }
        }
    }
    Ok(Some(first.clone()))
}

/// Where the copies are, together: refused when any copy was refused (named by its Job), verified
/// (with the first copy's message) only when every copy verified, else running.
pub fn all_copies(outcomes: Vec<(String, FetchOutcome)>) -> (String, FetchOutcome) {
    if let Some(refused) = outcomes
        .iter()
        .find(|(_, o)| matches!(o, FetchOutcome::Refused(_)))
    {
        return refused.clone();
    }
    if !outcomes.is_empty()
        && outcomes
            .iter()
            .all(|(_, o)| matches!(o, FetchOutcome::Verified(_)))
    {
        return outcomes
            .into_iter()
            .next()
            .unwrap_or_else(|| (String::new(), FetchOutcome::Running));
    }
    (String::new(), FetchOutcome::Running)
}

/// The archive this restore chose when it started, and the Secret whose identity a fetch mounts
/// (`decryption`: where the restore's key is, [`encryption::for_restore`]); or why neither can be
/// had (the message says the cluster was not touched, which holds when the caller has not touched
/// it yet).
async fn archive_to_fetch(
    ctx: &Context,
    r: &EtcdRestore,
    cluster: &EtcdCluster,
    status: &EtcdRestoreStatus,
    decryption: Option<&BackupEncryption>,
) -> Result<Result<(Chosen, Option<String>), String>, Error> {
    let ns = r.namespace().unwrap_or_default();
    let backups = Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing EtcdBackups"))?;
    let lineage = Lineage::of(cluster, &backups.items);
    let chosen = match recorded_choice(r, status.source.as_deref(), &lineage, &backups.items) {
        Ok(c) => c,
        Err(why) => return Ok(Err(format!("{why}; the cluster was not touched"))),
    };
    // A key that is missing is named now, rather than by a fetch pod that cannot mount it. An
    // archive not known to be encrypted needs no identity (a Secret may hold only the public
    // key); one is mounted if there is one, since the fetch decides from the archive itself.
    let key = match decryption {
        Some(e) => Some(
            encryption::read_key(&ctx.client, &ns, &e.secret_name, encryption::IDENTITY_KEY)
                .await?
                .map(drop),
        ),
        None => None,
    };
    Ok(plan::fetch_identity(decryption, key, &chosen).map(|identity| (chosen, identity)))
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
    // A point restore's init containers copy etcd out of the cluster's etcd image: one that fails
    // (no etcdutl in a custom image) is named, not reported as an archive that did not verify.
    let init_failed = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.init_container_statuses.as_ref())
        .flatten()
        .find_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then(|| {
                let why = t.message.as_deref().map(str::trim).filter(|m| !m.is_empty());
                format!(
                    "its {} container ({}) exited {}: {}",
                    c.name,
                    c.image,
                    t.exit_code,
                    why.or(t.reason.as_deref()).unwrap_or("no message")
                )
            })
        });
    if let Some(why) = init_failed {
        return FetchOutcome::Refused(Some(why));
    }
    let exited = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == crate::objects::FETCH_CONTAINER)
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

/// Creates the snapshot claim and the fetch Job of copy `f`.
async fn create_fetch(
    ctx: &Context,
    r: &EtcdRestore,
    cluster: &EtcdCluster,
    f: objects::FetchCopy<'_>,
) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    let pvc = objects::snapshot_claim(r, cluster, f.chosen, f.copy, f.point.is_some())?;
    let job = objects::fetch_job(r, cluster, f)?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if pvcs
        .get_opt(&pvc.name_any())
        .await
        .map_err(kube_err("reading a snapshot claim"))?
        .is_none()
    {
        pvcs.create(&PostParams::default(), &pvc)
            .await
            .map_err(kube_err("creating a snapshot claim"))?;
    }
    Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await
        .map(drop)
        .or_else(|e| match e {
            kube::Error::Api(s) if s.code == 409 => Ok(()),
            e => Err(e),
        })
        .map_err(kube_err("creating a fetch Job"))?;
    Ok(())
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
        .map_err(kube_err("annotating the EtcdCluster"))?;
    Ok(())
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

/// Reads what the Restoring phase looks at (see [`plan::RestoringView`]).
async fn observe_restoring(
    ctx: &Context,
    r: &EtcdRestore,
    cluster: &EtcdCluster,
    status: &EtcdRestoreStatus,
) -> Result<plan::RestoringView, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = &r.spec.cluster_name;
    let selector = ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}"));
    let holder = cluster.annotations().get(RESTORE_HOLD).cloned();
    // Each poll (every POLL while the seed starts) reads only what the plan can still use: the other
    // restores matter only while nobody holds the cluster, the claims only until the seed is named.
    // The restores are read after the cluster (the caller read it): a restore in Growing has lifted
    // its hold only after recording Growing, so this order cannot miss it.
    let growing_other = match &holder {
        Some(_) => None,
        None => Api::<EtcdRestore>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(kube_err("listing EtcdRestores"))?
            .items
            .iter()
            .find(|o| {
                o.name_any() != r.name_any()
                    && o.spec.cluster_name == *name
                    && o.status.as_ref().and_then(|s| s.phase) == Some(RestorePhase::Growing)
            })
            .map(|o| o.name_any()),
    };
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&selector)
        .await
        .map_err(kube_err("listing member pods"))?;
    let members = restored_members(status);
    let claims = if members.is_empty() {
        Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .list(&selector)
            .await
            .map_err(kube_err("listing claims"))?
            .items
            .iter()
            .map(|c| c.name_any())
            .collect()
    } else {
        Vec::new()
    };
    let member_pods = members
        .iter()
        .map(|m| match pods.items.iter().find(|p| p.name_any() == *m) {
            None => plan::MemberPod::Absent,
            Some(p) if is_ready(p) => plan::MemberPod::Ready,
            Some(p) => match (super::unscheduled_message(p), init_failure(p)) {
                (Some(why), _) => plan::MemberPod::Unschedulable(why),
                (None, Some(why)) => plan::MemberPod::Failing(why),
                (None, None) => plan::MemberPod::Starting,
            },
        })
        .collect();
    Ok(plan::RestoringView {
        restore: r.name_any(),
        cluster: name.clone(),
        holder,
        growing_other,
        // Exactly the copies verified, whatever `spec.size` says now.
        restored_count: status.copies.unwrap_or(1),
        members,
        pods: pods.items.iter().map(|p| p.name_any()).collect(),
        claims,
        ordinal_floor: vocabulary::ordinal_floor(cluster),
        member_pods,
    })
}

/// Which verified copy of the snapshot restored member `member` restores from: its place among
/// `members`.
fn copy_of(members: &[String], member: &str) -> u32 {
    let i = members.iter().position(|m| m == member).unwrap_or(0);
    u32::try_from(i).unwrap_or(0)
}

/// The members this restore recorded (one seed in a status written before members were a list).
fn restored_members(status: &EtcdRestoreStatus) -> Vec<String> {
    match (&status.restored_members[..], &status.seed_member) {
        ([], Some(seed)) => vec![seed.clone()],
        (members, _) => members.to_vec(),
    }
}

/// How many copies of the snapshot Verifying fetches, one per member to restore (recorded in
/// `status.copies` once all verified, and from then on the number of members restored). From S3 one copy per
/// member is fetched and checked at once (spread as the members will be), so all of `spec.size`
/// restore and start together (etcd's own disaster-recovery procedure; no member pays a snapshot
/// transfer to join). A `file` archive lives on one claim, which node-local storage ties to one
/// node, so every copy would land there: one seed restores, and the cluster controller grows it.
fn restored_count(cluster: &EtcdCluster, status: &EtcdRestoreStatus) -> u32 {
    let from_s3 = status.source.as_deref().is_some_and(|s| s.starts_with("s3://"));
    if from_s3 {
        u32::try_from(cluster.spec.size).unwrap_or(1).max(1)
    } else {
        1
    }
}

/// Why a pod's restore fails, once the kubelet has had to restart an init container for it: the
/// container's termination message (the fetch writes its reason there), else the kubelet's reason.
fn init_failure(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .filter(|c| c.restart_count > 0)
        .find_map(|c| {
            let last = c.last_state.as_ref()?.terminated.as_ref()?;
            (last.exit_code != 0).then(|| {
                let why = last
                    .message
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .or(last.reason.as_deref())
                    .unwrap_or("no message");
                format!("its {} container exited {}: {why}", c.name, last.exit_code)
            })
        })
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn restoring(r: &EtcdRestore, ctx: &Context, status: EtcdRestoreStatus) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = &r.spec.cluster_name;
    let cluster = match target(ctx, r, &status).await? {
        Ok(c) => c,
        Err(action) => return Ok(action),
    };
    let view = observe_restoring(ctx, r, &cluster, &status).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match plan::next_restoring_step(&view) {
        plan::RestoringStep::HeldByOther(holder) => {
            let why = format!("EtcdRestore {holder} is restoring this cluster; this one did not touch it");
            advance(ctx, r, status, RestorePhase::Failed, why).await
        }
        plan::RestoringStep::TakeHold => {
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
                Err(Error::Kube(e)) if matches!(&e.source, kube::Error::Api(s) if s.code == 409) => {}
                Err(e) => return Err(e),
            }
            Ok(Action::requeue(STEP))
        }
        plan::RestoringStep::ChooseMembers(members) => {
            // Recorded before the members exist, like every member name: names never repeat. The
            // highest ordinal covers the others.
            if let Some(last) = members.last() {
                cluster_writes::record_ordinal_taken(ctx, &cluster, last)
                    .await
                    .map_err(kube_err(
                        "recording the restored members' ordinals on the EtcdCluster",
                    ))?;
            }
            let status = EtcdRestoreStatus {
                seed_member: members.first().cloned(),
                restored_members: members,
                ..status
            };
            write_status(ctx, r, &status).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        plan::RestoringStep::StopOldMembers(old) => {
            for p in &old {
                delete_if_present(
                    pods.delete(p, &DeleteParams::default()).await,
                    "deleting an old member pod",
                )?;
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
            Ok(Action::requeue(POLL))
        }
        plan::RestoringStep::StartMembers(absent) => {
            let members = restored_members(&status);
            start_members(ctx, r, &cluster, status, &members, &absent).await
        }
        plan::RestoringStep::WaitForMembers => Ok(Action::requeue(POLL)),
        plan::RestoringStep::MemberUnschedulable { member, why } => {
            let why = why.trim_end_matches('.');
            let claim = objects::snapshot_claim_name(r, copy_of(&restored_members(&status), &member));
            let reason = format!(
                "restored member {member} is not scheduled yet: {why}. It mounts its verified copy of the \
                 snapshot, claim {claim} (node-local storage ties it to that claim's node), and its own \
                 data claim; it starts once a node can hold both. The old members are stopped, their \
                 claims kept"
            );
            let event = format!("{member} is not scheduled yet: {why}");
            report_waiting(ctx, r, status, "SeedUnschedulable", reason, event).await
        }
        plan::RestoringStep::MemberFailing { member, why } => {
            let reason = format!(
                "restored member {member} cannot restore: {why}. The kubelet retries it; nothing is undone \
                 (the old members are stopped, their claims kept). If this does not pass, delete this \
                 EtcdRestore (its copies go with it) and the annotation etcd.ouroboros.dev/restore-in-progress \
                 on the EtcdCluster, then restore again"
            );
            let event = format!("{member} cannot restore: {why}");
            report_waiting(ctx, r, status, "RestoredMemberFailing", reason, event).await
        }
        plan::RestoringStep::Grow(members) => {
            // Growing is recorded before the hold is lifted (by `growing`): a restart in between must
            // not come back here, where pods other than the restored members count as old members,
            // once the cluster grows again.
            let reason = format!(
                "{} run the restored data; {} {} members",
                members.join(", "),
                if members.len() as i64 >= i64::from(cluster.spec.size) {
                    "waiting for the cluster to be Available with"
                } else {
                    "growing to"
                },
                cluster.spec.size
            );
            advance(ctx, r, status, RestorePhase::Growing, reason).await
        }
    }
}

/// Says in status (and once in a Warning Event) why the restore waits, and polls on.
async fn report_waiting(
    ctx: &Context,
    r: &EtcdRestore,
    status: EtcdRestoreStatus,
    event_reason: &str,
    reason: String,
    event: String,
) -> Result<Action, Error> {
    if status.reason.as_deref() != Some(reason.as_str()) {
        ctx.publish(&r.object_ref(&()), EventType::Warning, event_reason, event, None)
            .await;
        let status = EtcdRestoreStatus {
            reason: Some(reason),
            ..status
        };
        write_status(ctx, r, &status).await?;
    }
    Ok(Action::requeue(POLL))
}

/// Creates the claims (when storage asks for them) and pods of the `absent` restored members, each
/// of which restores the verified snapshot before etcd starts, with all of `members` as the initial
/// cluster.
async fn start_members(
    ctx: &Context,
    r: &EtcdRestore,
    cluster: &EtcdCluster,
    status: EtcdRestoreStatus,
    members: &[String],
    absent: &[String],
) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let version: EtcdVersion = match cluster.spec.version.parse() {
        Ok(v) => v,
        Err(e) => {
            return advance(ctx, r, status, RestorePhase::Failed, format!("spec.version: {e}")).await;
        }
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for member in absent {
        let Some(pvc) = crate::objects::member_pvc(cluster, member, version).transpose()? else {
            continue;
        };
        let exists = pvcs
            .get_opt(&vocabulary::pvc_name(member))
            .await
            .map_err(kube_err("reading a restored member's claim"))?
            .is_some();
        if !exists {
            pvcs.create(&PostParams::default(), &pvc)
                .await
                .map_err(kube_err("creating a restored member's claim"))?;
        }
    }
    let token = format!(
        "{}-restore-{}",
        r.spec.cluster_name,
        r.uid().unwrap_or_default().split('-').next().unwrap_or_default()
    );
    // The pods mount their sidecars' certificate; without the Secret they would sit in
    // ContainerCreating, so it is made (or renewed) first, by the one code that issues it.
    if let Err(e) = cluster_writes::ensure_sidecar_tls(ctx, cluster).await {
        let why = format!("waiting for the sidecars' certificate before starting the restored members: {e}");
        let status = EtcdRestoreStatus {
            reason: Some(why),
            ..status
        };
        write_status(ctx, r, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    for member in absent {
        // Member i restores from copy i, verified before anything was touched.
        let copy = copy_of(members, member);
        let claim = objects::snapshot_claim_name(r, copy);
        let mut pod =
            objects::restored_member_pod(cluster, &ctx.images(), member, members, version, &token, &claim)?;
        if let Err(e) = crate::certificate_copies::mount_accepted(&ctx.client, cluster, &mut pod).await {
            let status = EtcdRestoreStatus {
                reason: Some(format!(
                    "waiting for the certificates of spec.tls before starting the restored members: {e}"
                )),
                ..status
            };
            write_status(ctx, r, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        match Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(Error::Kube(KubeCallError {
                    action: "creating a restored member's pod",
                    source: e,
                }));
            }
        }
        failpoints::hit("restore-after-seed-pod");
    }
    Ok(Action::requeue(POLL))
}

async fn growing(r: &EtcdRestore, ctx: &Context, status: EtcdRestoreStatus) -> Result<Action, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = &r.spec.cluster_name;
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let cluster = match target(ctx, r, &status).await? {
        Ok(c) => c,
        Err(action) => return Ok(action),
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claims = pvcs
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}")))
        .await
        .map_err(kube_err("listing claims"))?;
    let view = plan::GrowingView {
        held_by_me: cluster.annotations().get(RESTORE_HOLD) == Some(&r.name_any()),
        cluster: cluster.status.clone().unwrap_or_default(),
        size: usize::try_from(cluster.spec.size).unwrap_or(0),
        // A retired claim (its member was replaced while its node was lost) is kept for a human,
        // whatever the restore: its node may still hold that copy of the data.
        claims: claims
            .items
            .iter()
            .filter(|c| {
                !c.annotations()
                    .contains_key(crate::vocabulary::ANNOTATION_RETIRED)
            })
            .map(|c| c.name_any())
            .collect(),
    };
    let stale_claims = match plan::next_growing_step(&view) {
        plan::GrowingStep::LiftHold => {
            set_hold(ctx, &ns, name, None).await?;
            failpoints::hit("restore-after-hold-lifted");
            return Ok(Action::requeue(STEP));
        }
        // Someone waits for this restore, and a poll costs one GET and one LIST.
        plan::GrowingStep::WaitForCluster => return Ok(Action::requeue(Duration::from_secs(1))),
        plan::GrowingStep::Finish { stale_claims } => stale_claims,
    };
    // The old members' claims, kept until now; then the fetch Job and the snapshot claim. A deletion
    // that fails is retried (Succeeded is final, so nothing would come back for it).
    for claim in &stale_claims {
        delete_if_present(
            pvcs.delete(claim, &DeleteParams::default()).await,
            "deleting an old member's claim",
        )?;
    }
    failpoints::hit("restore-after-old-claims-deleted");
    let copies = status
        .copies
        .unwrap_or(1)
        .max(u32::try_from(restored_members(&status).len()).unwrap_or(1));
    for copy in 0..copies {
        delete_if_present(
            Api::<Job>::namespaced(ctx.client.clone(), &ns)
                .delete(&objects::fetch_job_name(r, copy), &DeleteParams::background())
                .await,
            "deleting a fetch Job",
        )?;
        delete_if_present(
            pvcs.delete(&objects::snapshot_claim_name(r, copy), &DeleteParams::default())
                .await,
            "deleting a snapshot claim",
        )?;
    }
    let reference = BackupReference {
        name: status.backup_name.clone().unwrap_or_default(),
        location: status.source.clone().unwrap_or_default(),
        revision: status.restored_revision.unwrap_or(0),
        completion_time: jiff::Timestamp::now().to_string(),
    };
    crate::cluster_writes::apply_status_of(&api, &cluster, MANAGER, json!({"restoredFrom": reference}))
        .await
        .map_err(kube_err("recording the restore on the EtcdCluster"))?;
    let along = status
        .point
        .as_ref()
        .map(|p| format!(" taken along its delta chain to {}", plan::describe_point(p)))
        .unwrap_or_else(|| format!(" at revision {}", reference.revision));
    let reason = format!(
        "{name} is Available with {} members, restored from {}{along} (revisions bumped by {BUMP_REVISION})",
        view.size, reference.location
    );
    advance(ctx, r, status, RestorePhase::Succeeded, reason).await
}

#[cfg(test)]
mod tests;
