//! Continuous backups (#23), as part of the cluster's reconcile: observe (the newest full
//! backup, its destination, the members that may follow, what the chosen one's sidecar says) →
//! decide ([`continuous_plan::next_step`], pure) → carry out that one step → `status.continuous`,
//! `BackupHealthy` and the recovery-point metric.

use std::time::Duration;

use jiff::Timestamp;
use kube::{Api, Resource, ResourceExt, runtime::events::EventType};
use ouroboros_crds::{ContinuousStatus, EtcdBackup, EtcdCluster, EtcdClusterStatus};

use super::continuous_plan::{self as plan, Base, Candidate, Closing, Seen, Step, View};
use crate::{
    context::Context,
    controllers::{KubeCallError, kube_err},
    metrics::ClusterLabels,
};

/// Observes, decides, applies one step and records it in `status`; returns when to look again.
/// A failure is reported in `status.continuous.message` and the log, never returned: continuous
/// backups are an addition, and the rest of the cluster's pass (automatic recovery above all) must
/// not wait on them.
pub async fn run(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &mut EtcdClusterStatus,
    now: Timestamp,
) -> Option<Duration> {
    let policy = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.continuous.as_ref())
        .and_then(|c| plan::policy(c).ok());
    let wake = policy.map(|p| p.period.max(Duration::from_secs(5)));
    let view = match observe(ctx, cluster, status).await {
        Ok(view) => view,
        Err(e) => {
            tracing::warn!(cluster = %cluster.name_any(), error = %e, "observing continuous backups failed");
            if let Some(c) = status.continuous.as_mut() {
                c.message = Some(format!("observing continuous backups failed: {e}"));
            }
            // The recovery point recorded still says how far behind it is.
            if let (Some(p), Some(c), Some(base)) = (policy, &status.continuous, &newest_backup(cluster))
                && let Some(why) = plan::behind(&p, c, base, now)
            {
                mark_unhealthy(cluster, status, &why, now);
            }
            return wake;
        }
    };
    let step = plan::next_step(&view, &cluster.name_any());
    if !matches!(step, Step::Off { end_on: None }) {
        tracing::info!(cluster = %cluster.name_any(), step = ?step, "continuous backups");
    }
    let mut stray_failed = None;
    for stray in plan::strays(&view, &step) {
        if let Err(e) = ctx.sidecar.end_follow(&stray.addr).await {
            tracing::warn!(member = %stray.member, error = %e, "ending another member's follow failed; asked again next pass");
            stray_failed = Some(format!(
                "ending the follow of {} failed: {e}; asked again",
                stray.member
            ));
        }
    }
    let failed = match apply(ctx, cluster, &step).await {
        Ok(failed) => failed,
        Err(e) => Some(e.to_string()),
    };
    status.continuous = match (&step, failed.or(stray_failed)) {
        // Turning off: the status stays until every follow has been ended, so the next pass
        // still looks for them.
        (Step::Off { .. }, Some(why)) => view.recorded.clone().map(|r| ContinuousStatus {
            message: Some(why),
            ..r
        }),
        (_, failed) => plan::status_after(&view, &step).map(|c| ContinuousStatus {
            message: failed.or(c.message.clone()),
            ..c
        }),
    };
    let key = ClusterLabels::new(&cluster.namespace().unwrap_or_default(), &cluster.name_any());
    // Without a confirmed recovery point yet, the full backup is the newest stored state.
    let point = status
        .continuous
        .as_ref()
        .and_then(|c| c.recovery_point.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| view.base.as_ref().and_then(|b| b.completed));
    ctx.metrics
        .record_continuous(&key, policy.map(|p| (p.period.as_secs_f64(), point)));
    if let (Some(p), Some(c), Some(base)) = (policy, &status.continuous, &view.base)
        && let Some(why) = plan::behind(&p, c, base, now)
    {
        mark_unhealthy(cluster, status, &why, now);
    }
    wake
}

/// `BackupHealthy` False with the recovery point's reason, unless it is already False for another.
/// The scheduled backups' pass set it first (to True when they are fine), so the transition time
/// is carried over from the last recorded status while the recovery point stays behind.
fn mark_unhealthy(cluster: &EtcdCluster, status: &mut EtcdClusterStatus, why: &str, now: Timestamp) {
    use ouroboros_crds::condition_types as ct;
    const REASON: &str = "RecoveryPointBehind";
    let already_false = status
        .conditions
        .iter()
        .any(|c| c.type_ == ct::BACKUP_HEALTHY && c.status == "False" && c.reason != REASON);
    if already_false {
        return;
    }
    let since = cluster
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == ct::BACKUP_HEALTHY))
        .filter(|c| c.status == "False" && c.reason == REASON)
        .and_then(|c| Timestamp::from_second(c.last_transition_time.0.as_second()).ok())
        .unwrap_or(now);
    status.conditions.retain(|c| c.type_ != ct::BACKUP_HEALTHY);
    crate::controllers::cluster::status::set_condition(
        &mut status.conditions,
        ct::BACKUP_HEALTHY,
        false,
        REASON,
        why.to_owned(),
        cluster.metadata.generation,
        since,
    );
}

/// The newest full backup, as the cluster's recorded status has it: written by the backup
/// controller under its own field manager, the status computed in this pass leaves it out.
fn newest_backup(cluster: &EtcdCluster) -> Option<Base> {
    let b = cluster.status.as_ref()?.last_successful_backup.as_ref()?;
    Some(Base {
        name: b.name.clone(),
        revision: u64::try_from(b.revision).unwrap_or_default(),
        completed: b.completion_time.parse().ok(),
    })
}

async fn observe(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &EtcdClusterStatus,
) -> Result<View, KubeCallError> {
    let ns = cluster.namespace().unwrap_or_default();
    let spec = cluster.spec.backup.as_ref().and_then(|b| b.continuous.as_ref());
    let recorded = status.continuous.clone();
    let mut candidates = Vec::new();
    for member in super::plan::member_candidates(cluster) {
        if let Some(pod) = super::member_pod_of(ctx, &ns, &cluster.name_any(), &member).await?
            && pod.sidecar_serves_tls
        {
            candidates.push(Candidate {
                member,
                addr: super::sidecar_addr(&pod),
            });
        }
    }
    // Every follow but the recorded one, while continuous backups are on and on the pass that
    // turns them off (the status is cleared only once every follow was ended); clusters that never
    // had them are not asked.
    let mut running_elsewhere = Vec::new();
    let asked = spec.is_some() || recorded.is_some();
    for c in candidates.iter().filter(|_| asked) {
        let recorded_here = recorded.as_ref().and_then(|r| r.member.as_ref()) == Some(&c.member);
        if !recorded_here
            && let Ok(Some(s)) = ctx.sidecar.follow_state(&c.addr).await
            && s.ended.is_none()
        {
            running_elsewhere.push(c.clone());
        }
    }
    let Some(spec) = spec else {
        return Ok(View {
            policy: None,
            base: None,
            destination: None,
            recorded,
            running_elsewhere,
            candidates,
            seen: None,
            closing: None,
        });
    };
    let base = newest_backup(cluster);
    let backups: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let destination = match &base {
        None => None,
        Some(base) => match backups.get_opt(&base.name).await.map_err(kube_err("reading the base EtcdBackup"))? {
            None => Some(Err(format!(
                "EtcdBackup {} (the newest full backup) is gone; the next full backup starts a chain",
                base.name
            ))),
            Some(b) if b.status.as_ref().is_some_and(|s| s.encrypted) => Some(Err(format!(
                "backup {} is encrypted, and continuous backups of encrypted backups are not supported yet \
                 (their chunks would be stored unencrypted); the next unencrypted full backup starts a chain",
                base.name
            ))),
            Some(b) => Some(
                super::destination::resolve(ctx, &b, cluster)
                    .await?
                    .and_then(|r| match r.by_writer {
                        false => Ok(r.destination),
                        true => Err(format!(
                            "continuous backups need a destination the members' sidecars write themselves; backup {} \
                             went to the default claim, which members do not mount: set spec.backup.destination to \
                             an s3 destination",
                            b.name_any()
                        )),
                    }),
            ),
        },
    };
    let seen = match recorded
        .as_ref()
        .and_then(|r| r.member.as_ref())
        .and_then(|m| candidates.iter().find(|c| &c.member == m))
    {
        None => None,
        Some(c) => Some(match ctx.sidecar.follow_state(&c.addr).await {
            Ok(Some(s)) => Seen::State(Box::new(s)),
            Ok(None) => Seen::Nothing,
            Err(e) => Seen::Unreachable(e.to_string()),
        }),
    };
    let closing = match &base {
        None => None,
        Some(base) => backups
            .get_opt(&plan::closing_name(&cluster.name_any(), &base.name))
            .await
            .map_err(kube_err("reading the chain-closing EtcdBackup"))?
            .map(|b| Closing {
                name: b.name_any(),
                phase: b.status.and_then(|s| s.phase),
            }),
    };
    Ok(View {
        policy: Some(plan::policy(spec)),
        base,
        destination,
        recorded,
        candidates,
        seen,
        running_elsewhere,
        closing,
    })
}

/// Carries out `step`; a sidecar that refused or did not answer is the returned message (for
/// `status.continuous.message`), a failed Kubernetes call the error.
async fn apply(ctx: &Context, cluster: &EtcdCluster, step: &Step) -> Result<Option<String>, KubeCallError> {
    match step {
        Step::Off { end_on } => {
            if let Some(c) = end_on
                && let Err(e) = ctx.sidecar.end_follow(&c.addr).await
            {
                tracing::warn!(member = %c.member, error = %e, "ending a follow failed; asked again next pass");
                return Ok(Some(format!(
                    "ending the follow of {} failed: {e}; asked again",
                    c.member
                )));
            }
            Ok(None)
        }
        Step::Wait(_) | Step::Record(_) => Ok(None),
        Step::Follow { to, request, end_on } => {
            if let Some(c) = end_on
                && let Err(e) = ctx.sidecar.end_follow(&c.addr).await
            {
                // Two followers write the same history: harmless overlap, ended when it answers.
                tracing::warn!(member = %c.member, error = %e, "ending the previous follow failed");
            }
            match ctx.sidecar.follow(&to.addr, request).await {
                Ok(_) => {
                    tracing::info!(member = %to.member, backup = %request.backup, "asked to follow the history");
                    Ok(None)
                }
                Err(e) => {
                    tracing::warn!(member = %to.member, error = %e, "asking a sidecar to follow failed");
                    Ok(Some(format!(
                        "asking the sidecar of {} to follow the history failed: {e}",
                        to.member
                    )))
                }
            }
        }
        Step::CloseChain { name, why } => close_chain(ctx, cluster, name, why).await.map(|()| None),
    }
}

/// Creates the full backup that starts a new chain after a gap (once: it is named after the chain).
async fn close_chain(
    ctx: &Context,
    cluster: &EtcdCluster,
    name: &str,
    why: &str,
) -> Result<(), KubeCallError> {
    let created = crate::controllers::cluster::backups::create_backup(&ctx.client, cluster, name, false)
        .await
        .map_err(kube_err("creating the chain-closing EtcdBackup"))?;
    if !created {
        return Ok(());
    }
    ctx.publish(
        &cluster.object_ref(&()),
        EventType::Warning,
        "ContinuousChainClosed",
        format!("{why}; created EtcdBackup {name}, a full backup that starts the next chain"),
        None,
    )
    .await;
    Ok(())
}
