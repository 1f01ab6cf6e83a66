//! The restore drill of a Succeeded backup, as part of the EtcdBackup controller: observe (the
//! cluster, its other backups, the attempt's Job and pod) → [`drill_plan::drill_step`] → apply that
//! one step → status (`drill`, `verified`, `verifiedTime`, `verificationReason`), an Event and the
//! drill metrics. The Job (see [`objects::drill_job`]) touches nothing but the store.

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::{controller::Action, events::EventType},
};
use ouroboros_crds::{
    BackupPhase, DrillPhase, EtcdBackup, EtcdBackupStatus, EtcdCluster, EtcdVersion,
    sidecar::{DrillOutcome, DrillVerdict},
};

use super::{
    Error,
    drill_plan::{self, DrillJob, DrillPod, DrillStep, DrillView, Ended},
    event, labels, write_status,
};
use crate::{
    backup_source,
    context::Context,
    controllers::{delete_if_present, encryption, kube_err},
    metrics::DrillLabels,
    objects::{self, CHECK_CONTAINER, Drill, ETCD_CONTAINER, FETCH_CONTAINER, RESTORE_CONTAINER},
    vocabulary::{ANNOTATION_DRILL_REQUEST, LABEL_CLUSTER},
};

/// Whether backup `b` of `cluster` is to be drilled: its own `spec.drill`, else the cluster's
/// `spec.backup.drills`, else yes.
pub fn wanted(b: &EtcdBackup, cluster: Option<&EtcdCluster>) -> bool {
    b.spec
        .drill
        .or_else(|| cluster?.spec.backup.as_ref()?.drills)
        .unwrap_or(true)
}

/// The drill-request annotation has a value no drill answered yet, and no attempt is under way (one
/// that is ends first; its verdict is then replaced).
pub fn requested_again(b: &EtcdBackup) -> bool {
    let status = b.status.as_ref();
    let asked = b.annotations().get(ANNOTATION_DRILL_REQUEST);
    asked.is_some()
        && asked != status.and_then(|s| s.drill_request.as_ref())
        && status.and_then(|s| s.drill) != Some(DrillPhase::Running)
}

/// Starts the drill over for the request in the annotation: the earlier verdict no longer stands.
pub async fn again(b: &EtcdBackup, ctx: &Context) -> Result<Action, Error> {
    let asked = b.annotations().get(ANNOTATION_DRILL_REQUEST).cloned();
    let status = EtcdBackupStatus {
        drill: Some(DrillPhase::Pending),
        drill_request: asked.clone(),
        drill_attempts: Some(0),
        drill_job: None,
        drill_start_time: None,
        verified: None,
        verified_time: None,
        verification_reason: Some(format!(
            "drill asked for again ({ANNOTATION_DRILL_REQUEST}: {})",
            asked.unwrap_or_default()
        )),
        ..b.status.clone().unwrap_or_default()
    };
    write_status(ctx, b, &status).await?;
    Ok(Action::requeue(Duration::from_millis(200)))
}

fn ended(state: Option<&k8s_openapi::api::core::v1::ContainerState>) -> Option<Ended> {
    let t = state?.terminated.as_ref()?;
    Some(Ended {
        exit_code: t.exit_code,
        reason: t.reason.clone(),
        message: t.message.clone(),
    })
}

/// The drill pod's containers, as the verdict needs them.
fn drill_pod(p: &Pod) -> DrillPod {
    let status = p.status.clone().unwrap_or_default();
    let init = status.init_container_statuses.unwrap_or_default();
    let main = status.container_statuses.unwrap_or_default();
    let of = |list: &[k8s_openapi::api::core::v1::ContainerStatus], name: &str| {
        list.iter().find(|c| c.name == name).cloned()
    };
    let etcd = of(&init, ETCD_CONTAINER);
    DrillPod {
        fetch: of(&init, FETCH_CONTAINER).and_then(|c| ended(c.state.as_ref())),
        restore: of(&init, RESTORE_CONTAINER).and_then(|c| ended(c.state.as_ref())),
        check: of(&main, CHECK_CONTAINER).and_then(|c| ended(c.state.as_ref())),
        etcd_last: etcd.and_then(|c| ended(c.last_state.as_ref()).or_else(|| ended(c.state.as_ref()))),
        unschedulable: super::super::unscheduled_message(p).filter(|_| {
            p.metadata.creation_timestamp.as_ref().is_some_and(|t| {
                jiff::Timestamp::now().duration_since(t.0)
                    >= jiff::SignedDuration::try_from(drill_plan::UNSCHEDULABLE_GRACE).unwrap_or_default()
            })
        }),
        failed: (status.phase.as_deref() == Some("Failed")).then(|| {
            [status.reason, status.message]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ")
        }),
    }
}

async fn observe_job(ctx: &Context, ns: &str, name: &str) -> Result<Option<DrillJob>, Error> {
    let Some(job) = Api::<Job>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(kube_err("reading the drill Job"))?
    else {
        return Ok(None);
    };
    let pods = super::super::pods_of_job(&ctx.client, &job)
        .await
        .map_err(kube_err("listing the drill Job's pods"))?;
    let failed = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.message.clone().or_else(|| c.reason.clone()).unwrap_or_default());
    Ok(Some(DrillJob {
        pod: pods.first().map(drill_pod),
        failed,
    }))
}

/// Another backup of the cluster that has not finished, whose drill runs, or whose drill waits and
/// is of a newer backup: a drill not yet holding the slot lets each go first, so backups are never
/// starved by drills, drills of one cluster run one at a time, and the newest backup (the one
/// `latest` restores wait for) is drilled first.
fn busy_with(b: &EtcdBackup, all: &[EtcdBackup]) -> Option<String> {
    let order = |o: &EtcdBackup| {
        let s = o.status.as_ref();
        (
            s.and_then(|s| s.revision).unwrap_or(0),
            s.and_then(|s| s.completion_time.clone()),
        )
    };
    let others = all
        .iter()
        .filter(|o| o.uid() != b.uid() && o.spec.cluster_name == b.spec.cluster_name);
    for o in others {
        let s = o.status.as_ref();
        if !s.and_then(|s| s.phase).is_some_and(BackupPhase::is_terminal) {
            return Some(format!("backup {} of the cluster has not finished", o.name_any()));
        }
        match s.and_then(|s| s.drill) {
            Some(DrillPhase::Running) => return Some(format!("the drill of backup {} runs", o.name_any())),
            Some(DrillPhase::Pending) if order(o) > order(b) => {
                return Some(format!(
                    "the drill of the newer backup {} goes first",
                    o.name_any()
                ));
            }
            Some(_) | None => {}
        }
    }
    None
}

/// A member of the backup's cluster that may be defragmenting now (see
/// [`crate::controllers::defragmenting`]): the drill would compete with it for its node's disk.
async fn defragmenting_member(
    ctx: &Context,
    b: &EtcdBackup,
    now: jiff::Timestamp,
) -> Result<Option<String>, Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={}", b.spec.cluster_name)))
        .await
        .map_err(kube_err("listing the cluster's member pods"))?;
    Ok(pods
        .items
        .iter()
        .find(|p| crate::controllers::defragmenting(p, now))
        .map(|p| format!("member {} is being defragmented", p.name_any())))
}

fn started(status: &EtcdBackupStatus) -> Option<jiff::Timestamp> {
    status.drill_start_time.as_deref()?.parse().ok()
}

/// One drill pass for the Succeeded backup `b`.
pub async fn reconcile(b: &EtcdBackup, ctx: &Context) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let status = b.status.clone().unwrap_or_default();
    let cluster = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?;
    let version = cluster.as_ref().map(|c| c.spec.version.parse::<EtcdVersion>());
    let cannot_build = match &version {
        None => {
            Some("its EtcdCluster is gone, and with it the store and etcd version to drill with".to_owned())
        }
        Some(Err(e)) => Some(format!("the cluster's spec.version: {e}")),
        Some(Ok(_)) => None,
    };
    let all = Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing EtcdBackups"))?;
    let job = match &status.drill_job {
        Some(name) => observe_job(ctx, &ns, name).await?,
        None => None,
    };
    let timeout = drill_plan::drill_timeout(status.raw_size.unwrap_or(0));
    let now = jiff::Timestamp::now();
    let overdue = started(&status)
        .is_some_and(|t| now.duration_since(t) > jiff::SignedDuration::try_from(timeout).unwrap_or_default());
    let phase = status.drill.unwrap_or(DrillPhase::Pending);
    let busy = busy_with(b, &all.items);
    // Only a drill about to start needs the members' pods.
    let defragmenting = if phase == DrillPhase::Pending && cluster.is_some() {
        defragmenting_member(ctx, b, now).await?
    } else {
        None
    };
    let slot = cluster
        .as_ref()
        .map(|c| super::plan::slot_of(c, super::plan::SlotUser::Drill(&b.name_any()), &all.items, now));
    let view = DrillView {
        phase,
        attempts: status
            .drill_attempts
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0),
        cannot_build,
        busy,
        defragmenting,
        slot,
        job,
        overdue,
    };
    match drill_plan::drill_step(&view) {
        DrillStep::Wait(why, secs) => {
            if view.phase == DrillPhase::Pending
                && status.verification_reason.as_deref() != Some(why.as_str())
            {
                let status = EtcdBackupStatus {
                    drill: Some(DrillPhase::Pending),
                    verification_reason: Some(why),
                    ..status
                };
                write_status(ctx, b, &status).await?;
            }
            Ok(Action::requeue(Duration::from_secs(secs.max(1))))
        }
        DrillStep::TakeSlot { cluster_version } => {
            let holder = super::plan::drill_holder(&b.name_any(), now);
            super::take_slot(ctx, b, &holder, &cluster_version).await
        }
        DrillStep::Start => match (&cluster, version) {
            (Some(cluster), Some(Ok(version))) => {
                start(ctx, b, cluster, version, view.attempts + 1, timeout).await
            }
            // `cannot_build` covers these; the plan concluded before Start.
            _ => Ok(Action::requeue(Duration::from_secs(5))),
        },
        DrillStep::Retry(why) => {
            delete_job(ctx, b).await?;
            let attempts = view.attempts;
            let status = EtcdBackupStatus {
                drill: Some(DrillPhase::Pending),
                drill_job: None,
                drill_start_time: None,
                verification_reason: Some(format!(
                    "attempt {attempts} could not decide: {why}; trying again"
                )),
                ..status
            };
            write_status(ctx, b, &status).await?;
            event(
                ctx,
                b,
                EventType::Warning,
                "DrillRetrying",
                format!("restore drill attempt {attempts} could not decide: {why}"),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(30)))
        }
        DrillStep::Conclude(verdict) => conclude(ctx, b, status, verdict).await,
    }
}

async fn start(
    ctx: &Context,
    b: &EtcdBackup,
    cluster: &EtcdCluster,
    version: EtcdVersion,
    attempt: u32,
    timeout: Duration,
) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let status = b.status.clone().unwrap_or_default();
    let chosen = backup_source::chosen(b);
    // An archive not known to be encrypted needs no identity; one is mounted if there is one, since
    // the fetch decides from the archive itself (as a restore's does).
    let identity = match encryption::for_backup(b, cluster) {
        Some(e) => {
            match encryption::read_key(&ctx.client, &ns, &e.secret_name, encryption::IDENTITY_KEY).await? {
                Ok(_) => Some(e.secret_name.clone()),
                Err(why) if chosen.encrypted => {
                    let verdict = DrillVerdict {
                        outcome: DrillOutcome::Inconclusive,
                        reason: format!("{why}, which the drill decrypts the archive with"),
                    };
                    return conclude(ctx, b, status, verdict).await;
                }
                Err(_) => None,
            }
        }
        None => None,
    };
    let revision = status.revision.and_then(|r| u64::try_from(r).ok()).unwrap_or(0);
    let hash = status.kv_hash.and_then(|h| u32::try_from(h).ok()).zip(
        status
            .kv_hash_compact_revision
            .and_then(|c| u64::try_from(c).ok()),
    );
    let drill = Drill {
        backup: b,
        chosen: &chosen,
        identity_secret: identity.as_deref(),
        version,
        attempt,
        request: status.drill_request.as_deref(),
        revision,
        hash,
        deadline: timeout,
    };
    let job = match objects::drill_job(cluster, &ctx.images(), &drill) {
        Ok(job) => job,
        Err(e) => {
            let verdict = DrillVerdict {
                outcome: DrillOutcome::Inconclusive,
                reason: format!("{e}: no drill Job could be made"),
            };
            return conclude(ctx, b, status, verdict).await;
        }
    };
    let name = job.name_any();
    super::super::conflict_is_done(
        Api::<Job>::namespaced(ctx.client.clone(), &ns)
            .create(&Default::default(), &job)
            .await,
        "creating the drill Job",
    )?;
    let status = EtcdBackupStatus {
        drill: Some(DrillPhase::Running),
        drill_job: Some(name.clone()),
        drill_attempts: i32::try_from(attempt).ok(),
        drill_start_time: Some(jiff::Timestamp::now().to_string()),
        verification_reason: Some(format!(
            "drill Job {name} restores revision {revision} into scratch space and compares its hash"
        )),
        ..status
    };
    write_status(ctx, b, &status).await?;
    event(
        ctx,
        b,
        EventType::Normal,
        "DrillStarted",
        format!("restore drill attempt {attempt} started as Job {name}"),
    )
    .await;
    Ok(Action::requeue(Duration::from_secs(3)))
}

async fn delete_job(ctx: &Context, b: &EtcdBackup) -> Result<(), Error> {
    let Some(name) = b.status.as_ref().and_then(|s| s.drill_job.clone()) else {
        return Ok(());
    };
    delete_if_present(
        Api::<Job>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
            .delete(&name, &DeleteParams::background())
            .await,
        "deleting the drill Job",
    )
}

async fn conclude(
    ctx: &Context,
    b: &EtcdBackup,
    status: EtcdBackupStatus,
    verdict: DrillVerdict,
) -> Result<Action, Error> {
    let (phase, verified) = match verdict.outcome {
        DrillOutcome::Verified => (DrillPhase::Verified, Some(true)),
        DrillOutcome::Failed => (DrillPhase::Failed, Some(false)),
        DrillOutcome::Inconclusive => (DrillPhase::Inconclusive, None),
    };
    let now = jiff::Timestamp::now();
    let status = EtcdBackupStatus {
        drill: Some(phase),
        verified,
        verified_time: Some(now.to_string()),
        verification_reason: Some(verdict.reason.clone()),
        drill_job: None,
        ..status
    };
    write_status(ctx, b, &status).await?;
    // After the verdict is recorded: a Job left behind by a failed delete is gone within the hour
    // (ttlSecondsAfterFinished) or with its backup.
    delete_job(ctx, b).await?;
    let m = &ctx.metrics.backups;
    let cluster = labels(b);
    m.drills
        .get_or_create(&DrillLabels {
            cluster,
            outcome: verdict.outcome.label(),
        })
        .inc();
    let (type_, reason) = match verdict.outcome {
        DrillOutcome::Verified => {
            m.last_verified
                .get_or_create(&labels(b))
                .set(now.as_millisecond() as f64 / 1000.0);
            (EventType::Normal, "BackupVerified")
        }
        DrillOutcome::Failed => (EventType::Warning, "DrillFailed"),
        DrillOutcome::Inconclusive => (EventType::Warning, "DrillInconclusive"),
    };
    event(ctx, b, type_, reason, verdict.reason).await;
    Ok(Action::await_change())
}
