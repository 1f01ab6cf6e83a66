//! The EtcdCluster controller: observe → decide (pure) → apply one step → status.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use ouroboros_crds::{EtcdCluster, condition_types as ct};

use crate::{context::Context, controllers::ReportedError, metrics::MemberLabels};

pub mod apply;
pub mod decide;
pub mod observe;
pub mod resources;
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
            Error::PatchStatus { .. } => "patch_status",
        }
    }
    fn is_permanent(&self) -> bool {
        match self {
            Error::Observe(observe::ObserveError::Version(_)) => true,
            Error::Observe(_) | Error::Apply(_) | Error::PatchStatus { .. } => false,
        }
    }
}

/// One pass of the pipeline for one cluster.
pub async fn reconcile(cluster: Arc<EtcdCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile("etcdcluster");
    let name = cluster.name_any();
    let now = jiff::Timestamp::now();
    if !cluster.spec.paused {
        apply::ensure_cluster_objects(&ctx, &cluster).await?;
    }
    let obs = match observe::observe(&ctx.client, ctx.etcd.as_ref(), &cluster, now).await {
        Ok(obs) => obs,
        // Nothing can be started without the certificates; say exactly what is missing and retry,
        // since creating the Secret is the fix and does not change the EtcdCluster.
        Err(observe::ObserveError::TlsSecret(problem)) => {
            report_blocked(&ctx, &cluster, "TLSSecretInvalid", &problem, now).await?;
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
        Err(e) => return Err(e.into()),
    };
    let decision = decide::next_step(&obs.observed);
    tracing::info!(cluster = %name, namespace = %cluster.namespace().unwrap_or_default(), step = ?decision.step, "reconcile");

    let applied = apply::apply_step(&ctx, &cluster, &obs, &decision.step).await;
    report_refusal(&ctx, &cluster, decision.version_refusal.as_deref()).await;
    let status = status::compute(&cluster, &obs, &decision, now);
    record_member_metrics(&ctx, &cluster, &status);
    write_status(&ctx, &cluster, &status).await?;
    applied?;
    Ok(requeue_after(&decision.step))
}

/// Server-side applies the cluster's status with the operator's field manager.
async fn write_status(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &ouroboros_crds::EtcdClusterStatus,
) -> Result<(), Error> {
    let name = cluster.name_any();
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": EtcdCluster::api_version(&()),
        "kind": EtcdCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
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
fn requeue_after(step: &decide::Step) -> Action {
    use decide::Step;
    let secs = match step {
        Step::Converged | Step::Paused => 30,
        Step::NoQuorum { .. } => 10,
        Step::WaitForMembers { .. } | Step::WaitForLearner { .. } => 2,
        Step::CreateSeed { .. }
        | Step::DeleteOrphanPod { .. }
        | Step::CreateMemberPod { .. }
        | Step::RemoveMember { .. }
        | Step::PromoteLearner { .. }
        | Step::AddLearner { .. }
        | Step::MoveLeader { .. } => 1,
    };
    Action::requeue(Duration::from_secs(secs))
}

/// A refused version change gets one Warning Event when it first appears, not one per reconcile.
async fn report_refusal(ctx: &Context, cluster: &EtcdCluster, refusal: Option<&str>) {
    let Some(refusal) = refusal else { return };
    let already = cluster.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == ct::DEGRADED && c.reason == "VersionChangeRefused" && c.message == refusal)
    });
    if already {
        return;
    }
    ctx.publish(
        &cluster.object_ref(&()),
        EventType::Warning,
        "VersionChangeRefused",
        refusal.to_owned(),
        None,
    )
    .await;
}

fn record_member_metrics(ctx: &Context, cluster: &EtcdCluster, status: &ouroboros_crds::EtcdClusterStatus) {
    let key = format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    );
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
}
