//! The EtcdCluster controller: observe → decide (pure) → apply one step → status.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, Resource, ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use ouroboros_crds::{EtcdCluster, condition_types as ct};

use crate::{context::Context, controllers::ReportedError, member_access, metrics::MemberLabels};

pub mod apply;
pub mod backups;
pub mod decide;
pub mod maintenance;
pub mod observe;
pub mod placement;
pub mod recovery;
pub mod status;

/// Why an EtcdCluster reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the cluster's state failed.
    #[error("observing: {0}")]
    Observe(#[from] observe::ObserveError),
    /// Carrying out the step failed.
    #[error("applying: {0}")]
    Apply(#[from] apply::ApplyError),
    /// Observing or creating scheduled backups failed.
    #[error("scheduled backups: {0}")]
    Backups(#[from] backups::BackupsError),
    /// Reading backups and restores, or starting the automatic restore, failed.
    #[error("automatic recovery: {action}: {source}")]
    Recovery {
        /// What was attempted.
        action: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// An object could not be built (a programming error: nothing was sent).
    #[error(transparent)]
    Build(#[from] crate::objects::BuildError),
    /// Writing status failed.
    #[error("writing status of {name}: {source}")]
    PatchStatus {
        /// Cluster name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

impl ReportedError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Observe(_) => "observe",
            Error::Apply(apply::ApplyError::Etcd(_)) => "apply_etcd",
            Error::Apply(_) => "apply_kubernetes",
            Error::Backups(_) => "scheduled_backups",
            Error::Recovery { .. } => "automatic_recovery",
            Error::Build(_) => "build",
            Error::PatchStatus { .. } => "patch_status",
        }
    }
    fn is_permanent(&self) -> bool {
        match self {
            Error::Observe(observe::ObserveError::Version(_)) | Error::Build(_) => true,
            Error::Observe(_)
            | Error::Apply(_)
            | Error::Backups(_)
            | Error::Recovery { .. }
            | Error::PatchStatus { .. } => false,
        }
    }
}

/// One pass of the pipeline for one cluster.
#[tracing::instrument(skip_all, fields(namespace = %cluster.namespace().unwrap_or_default(), name = %cluster.name_any()))]
pub async fn reconcile(cluster: Arc<EtcdCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile("etcdcluster");
    let name = cluster.name_any();
    let now = jiff::Timestamp::now();
    let held_by = decide::held_by(&cluster);
    // Objects that hold no data are kept under a restore's hold (its seed needs them), not when the
    // user paused (see `HeldBy`).
    if held_by != Some(decide::HeldBy::User) {
        apply::ensure_cluster_objects(&ctx, &cluster).await?;
    }
    let obs = match observe::observe(&ctx.client, ctx.etcd.as_ref(), &cluster, &ctx.images(), now).await {
        Ok(obs) => obs,
        // Nothing can be started without the certificates; say exactly what is missing and retry,
        // since creating the Secret is the fix and does not change the EtcdCluster.
        Err(observe::ObserveError::TlsSecret(member_access::TlsSecretError(problem))) => {
            report_blocked(&ctx, &cluster, "TLSSecretInvalid", &problem, now).await?;
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
        // An old object may hold a version the schema now refuses (`3.06.16`): name the field and the
        // fix, and touch nothing until the spec changes.
        Err(observe::ObserveError::Version(v)) => {
            let problem = format!(
                "spec.version {v:?} is not an etcd version of the form 3.6.16 (no leading zeros, no suffix); \
                 set spec.version to a released version; nothing was changed"
            );
            report_blocked(&ctx, &cluster, "VersionInvalid", &problem, now).await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };
    let decision = decide::next_step(&obs.observed);
    tracing::info!(cluster = %name, namespace = %cluster.namespace().unwrap_or_default(), step = ?decision.step, "reconcile");

    let applied = apply::apply_step(&ctx, &cluster, &obs, &decision.step).await;
    if obs.observed.desired.held_by.is_none() {
        apply::sync_voter_labels(&ctx, &cluster, &obs).await?;
        apply::record_templates(&ctx, &cluster, &obs).await?;
    }
    let mut status = status::compute(&cluster, &obs, &decision, now);
    let wake = backups::run(&ctx, &cluster, &mut status, now).await?;
    let continuous_wake = crate::controllers::backup::continuous::run(&ctx, &cluster, &mut status, now).await;
    let recovery_wake = recovery::run(&ctx, &cluster, &mut status, &decision.step, now).await?;
    for (type_, when, reason) in WARN_ONCE {
        warn_once(&ctx, &cluster, &status, type_, when, reason).await;
    }
    report_degraded(&ctx, &cluster, &status).await;
    record_member_metrics(&ctx, &cluster, &status);
    record_certificate_metrics(&ctx, &cluster, &obs);
    record_pod_metrics(&ctx, &cluster, &obs);
    record_backup_metrics(&ctx, &cluster, &status, now);
    write_status(&ctx, &cluster, &status).await?;
    applied?;
    let requeue = [wake, continuous_wake, recovery_wake]
        .into_iter()
        .flatten()
        .fold(requeue_secs(&decision.step), Duration::min);
    Ok(Action::requeue(requeue))
}

/// Server-side applies the cluster's status with the operator's field manager.
async fn write_status(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &ouroboros_crds::EtcdClusterStatus,
) -> Result<(), Error> {
    let name = cluster.name_any();
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let status = serde_json::to_value(status).map_err(|e| Error::PatchStatus {
        name: name.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    crate::cluster_writes::apply_status_of(&api, cluster, crate::FIELD_MANAGER, status)
        .await
        .map_err(|source| Error::PatchStatus { name, source })
}

/// Records that the cluster cannot progress until the user fixes something outside the spec.
async fn report_blocked(
    ctx: &Context,
    cluster: &EtcdCluster,
    reason: &str,
    problem: &str,
    now: jiff::Timestamp,
) -> Result<(), Error> {
    let mut status = cluster.status.clone().unwrap_or_default();
    let first_time = !status
        .conditions
        .iter()
        .any(|c| c.type_ == ct::DEGRADED && c.reason == reason && c.message == problem);
    let generation = cluster.metadata.generation;
    status::set_condition(
        &mut status.conditions,
        ct::DEGRADED,
        true,
        reason,
        problem.to_owned(),
        generation,
        now,
    );
    status::set_condition(
        &mut status.conditions,
        ct::PROGRESSING,
        false,
        "Blocked",
        problem.to_owned(),
        generation,
        now,
    );
    status.observed_generation = generation;
    write_status(ctx, cluster, &status).await?;
    if first_time {
        ctx.publish(
            &cluster.object_ref(&()),
            EventType::Warning,
            reason,
            problem.to_owned(),
            None,
        )
        .await;
    }
    Ok(())
}

/// How soon to look again: quickly while something is moving, slowly once converged.
fn requeue_secs(step: &decide::Step) -> Duration {
    use decide::Step;
    let secs = match step {
        Step::Converged | Step::Held(_) => 30,
        Step::NoQuorum { .. } | Step::BootInvalid { .. } => 10,
        Step::WaitForBoot { .. } => 5,
        Step::WaitForMembers { .. } => 2,
        // A caught-up learner is promoted at the next look, and the next member waits for that
        // promotion: each second of polling slack is paid once per member grown.
        Step::WaitForLearner { .. }
        | Step::CreateSeed { .. }
        | Step::DeleteOrphanPod { .. }
        | Step::CreateMemberPod { .. }
        | Step::RestartMember { .. }
        | Step::DeleteTerminatedPod { .. }
        | Step::RemoveMember { .. }
        | Step::PromoteLearner { .. }
        | Step::AddLearner { .. }
        | Step::MoveLeader { .. }
        | Step::RemoveBootMember { .. }
        | Step::RestartWithSettings { .. }
        | Step::Compact { .. }
        | Step::Defragment { .. }
        | Step::DisarmAlarm { .. } => 1,
        Step::MaintenanceBlocked { .. } => 10,
    };
    Duration::from_secs(secs)
}

/// Conditions a person must act on, the status that means so, and the reason of the Warning Event
/// each gets when it first appears or changes (not one per reconcile).
const WARN_ONCE: [(&str, &str, &str); 3] = [
    (ct::ALARM, "True", "EtcdAlarm"),
    (ct::CERTIFICATES_VALID, "False", "CertificateInvalid"),
    (ct::CERTIFICATES_EXPIRING, "True", "CertificatesExpiring"),
];

async fn warn_once(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &ouroboros_crds::EtcdClusterStatus,
    type_: &str,
    when: &str,
    reason: &str,
) {
    let Some(c) = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == when)
    else {
        return;
    };
    if already_reported(cluster, type_, &c.reason, &c.message) {
        return;
    }
    ctx.publish(
        &cluster.object_ref(&()),
        EventType::Warning,
        reason,
        c.message.clone(),
        None,
    )
    .await;
}

/// `Degraded` reasons a person must act on: each gets one Warning Event when it first appears or
/// changes, not one per reconcile.
const DEGRADED_WARNINGS: [&str; 2] = ["VersionChangeRefused", status::IMAGE_PULL_FAILED];

async fn report_degraded(ctx: &Context, cluster: &EtcdCluster, status: &ouroboros_crds::EtcdClusterStatus) {
    let Some(c) = status.conditions.iter().find(|c| {
        c.type_ == ct::DEGRADED && c.status == "True" && DEGRADED_WARNINGS.contains(&c.reason.as_str())
    }) else {
        return;
    };
    if already_reported(cluster, ct::DEGRADED, &c.reason, &c.message) {
        return;
    }
    ctx.publish(
        &cluster.object_ref(&()),
        EventType::Warning,
        &c.reason,
        c.message.clone(),
        None,
    )
    .await;
}

/// The status before this pass already carried this condition with this reason and message, so its
/// Warning Event went out then: Events go out once per change, not once per reconcile.
pub(super) fn already_reported(cluster: &EtcdCluster, type_: &str, reason: &str, message: &str) -> bool {
    cluster.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.reason == reason && c.message == message)
    })
}

fn record_certificate_metrics(ctx: &Context, cluster: &EtcdCluster, obs: &observe::Observation) {
    let key = metrics_key(cluster);
    for leaf in obs.certificates.iter().flat_map(|r| &r.leaves) {
        ctx.metrics
            .record_certificate_expiry(&key, &leaf.secret, leaf.purpose.label(), leaf.not_after);
    }
}

/// How the cluster's metrics name it: `namespace/name`.
pub(crate) fn metrics_key(cluster: &EtcdCluster) -> crate::metrics::ClusterLabels {
    crate::metrics::ClusterLabels::new(&cluster.namespace().unwrap_or_default(), &cluster.name_any())
}

/// What each member's pod records: its last defragmentation, and the quota its etcd runs with.
fn record_pod_metrics(ctx: &Context, cluster: &EtcdCluster, obs: &observe::Observation) {
    let key = metrics_key(cluster);
    for pod in &obs.pods {
        let ended =
            crate::controllers::annotated_time(pod, crate::vocabulary::ANNOTATION_DEFRAGMENTATION_ENDED_AT);
        if let Some(at) = ended {
            ctx.metrics.record_last_defragmentation(&key, &pod.name_any(), at);
        }
    }
    for pod in &obs.observed.pods {
        ctx.metrics.record_quota(&key, &pod.name, pod.quota_bytes);
    }
}

/// What alerts on stale backups compare: the newest successful backup in status (so an operator
/// that restarted since reports it) and the schedule's interval.
fn record_backup_metrics(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &ouroboros_crds::EtcdClusterStatus,
    now: jiff::Timestamp,
) {
    let key = metrics_key(cluster);
    let completed = status
        .last_successful_backup
        .as_ref()
        .and_then(|b| b.completion_time.parse::<jiff::Timestamp>().ok());
    if let Some(at) = completed {
        ctx.metrics.record_last_backup(&key, at);
    }
    let interval = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| crate::cron_schedule::parse("spec.backup.schedule", &b.schedule).ok())
        .and_then(|cron| crate::cron_schedule::interval_after(&cron, now))
        .map(|d| d.as_secs_f64());
    ctx.metrics.record_backup_schedule(&key, interval);
    if cluster.spec.backup.is_some() {
        // Failure counters exist at 0 before the first failure: `increase()` sees a series appear
        // at its first value, so a counter born at 1 would never show its first failure.
        let m = &ctx.metrics.backups;
        drop(m.failures.get_or_create(&key));
        drop(m.drills.get_or_create(&crate::metrics::DrillLabels {
            cluster: key.clone(),
            outcome: ouroboros_crds::sidecar::DrillOutcome::Failed.label(),
        }));
    }
}

fn record_member_metrics(ctx: &Context, cluster: &EtcdCluster, status: &ouroboros_crds::EtcdClusterStatus) {
    let key = metrics_key(cluster);
    let count = |f: &dyn Fn(&ouroboros_crds::MemberStatus) -> bool| {
        status.members.iter().filter(|m| f(m)).count() as i64
    };
    for (state, n) in [
        ("healthy", count(&|m| m.healthy && !m.is_learner)),
        ("unhealthy", count(&|m| !m.healthy)),
        ("learner", count(&|m| m.is_learner)),
    ] {
        ctx.metrics
            .members
            .get_or_create(&MemberLabels {
                cluster: key.clone(),
                state,
            })
            .set(n);
    }
    ctx.metrics
        .record_cluster(&key, status.members.iter().map(|m| m.name.as_str()));
    let quorum_lost = status
        .conditions
        .iter()
        .any(|c| c.type_ == ouroboros_crds::condition_types::QUORUM_LOST && c.status == "True");
    ctx.metrics
        .quorum_lost
        .get_or_create(&key)
        .set(i64::from(quorum_lost));
    for m in &status.members {
        if let (Some(size), Some(in_use)) = (m.db_size_bytes, m.db_size_in_use_bytes) {
            ctx.metrics.record_database(&key, &m.name, size, in_use);
        }
    }
}
