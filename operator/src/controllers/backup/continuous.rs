//! Continuous backups (#23), as part of the cluster's reconcile: observe (the newest full
//! backup, its destination, the members that may follow, what the chosen one's sidecar says) →
//! decide ([`continuous_plan::next_step`], pure) → carry out that one step → `status.continuous`,
//! `BackupHealthy` and the recovery-point metric.

use std::time::Duration;

use jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    api::{ObjectMeta, PostParams},
    runtime::events::EventType,
};
use ouroboros_crds::{EtcdBackup, EtcdBackupSpec, EtcdCluster, EtcdClusterStatus};

use super::continuous_plan::{self as plan, Base, Candidate, Closing, Seen, Step, View};
use crate::{
    context::Context,
    controllers::{KubeCallError, kube_err},
    metrics::ClusterLabels,
    vocabulary::LABEL_CLUSTER,
};

/// Observes, decides, applies one step and records it in `status`; returns when to look again.
pub async fn run(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &mut EtcdClusterStatus,
    now: Timestamp,
) -> Result<Option<Duration>, KubeCallError> {
    let view = observe(ctx, cluster, status).await?;
    let step = plan::next_step(&view, &cluster.name_any());
    if !matches!(step, Step::Off { end_on: None }) {
        tracing::info!(cluster = %cluster.name_any(), step = ?step, "continuous backups");
    }
    apply(ctx, cluster, &step).await?;
    status.continuous = plan::status_after(&view, &step);
    let key = ClusterLabels::new(&cluster.namespace().unwrap_or_default(), &cluster.name_any());
    let policy = view.policy.clone().and_then(Result::ok);
    let point = status
        .continuous
        .as_ref()
        .and_then(|c| c.recovery_point.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok());
    ctx.metrics
        .record_continuous(&key, policy.map(|p| (p.period.as_secs_f64(), point)));
    if let (Some(p), Some(c), Some(base)) = (policy, &status.continuous, &view.base)
        && let Some(why) = plan::behind(&p, c, base, now)
    {
        mark_unhealthy(status, cluster.metadata.generation, &why, now);
    }
    Ok(policy.map(|p| p.period.max(Duration::from_secs(5))))
}

/// `BackupHealthy` False with the recovery point's reason, unless it is already False for another.
fn mark_unhealthy(status: &mut EtcdClusterStatus, generation: Option<i64>, why: &str, now: Timestamp) {
    use ouroboros_crds::condition_types as ct;
    let already_false = status
        .conditions
        .iter()
        .any(|c| c.type_ == ct::BACKUP_HEALTHY && c.status == "False");
    if !already_false {
        crate::controllers::cluster::status::set_condition(
            &mut status.conditions,
            ct::BACKUP_HEALTHY,
            false,
            "RecoveryPointBehind",
            why.to_owned(),
            generation,
            now,
        );
    }
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
    let Some(spec) = spec else {
        return Ok(View {
            policy: None,
            base: None,
            destination: None,
            recorded,
            candidates,
            seen: None,
            closing: None,
        });
    };
    let base = status.last_successful_backup.as_ref().map(|b| Base {
        name: b.name.clone(),
        revision: u64::try_from(b.revision).unwrap_or_default(),
        completed: b.completion_time.parse().ok(),
    });
    let backups: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let destination = match &base {
        None => None,
        Some(base) => match backups.get_opt(&base.name).await.map_err(kube_err("reading the base EtcdBackup"))? {
            None => Some(Err(format!(
                "EtcdBackup {} (the newest full backup) is gone; the next full backup starts a chain",
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
        closing,
    })
}

async fn apply(ctx: &Context, cluster: &EtcdCluster, step: &Step) -> Result<(), KubeCallError> {
    match step {
        Step::Off { end_on } => {
            if let Some(c) = end_on
                && let Err(e) = ctx.sidecar.end_follow(&c.addr).await
            {
                tracing::warn!(member = %c.member, error = %e, "ending a follow failed; it ends with its pod");
            }
            Ok(())
        }
        Step::Wait(_) | Step::Record(_) => Ok(()),
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
                }
                Err(e) => {
                    tracing::warn!(member = %to.member, error = %e, "asking a sidecar to follow failed");
                }
            }
            Ok(())
        }
        Step::CloseChain { name, why } => close_chain(ctx, cluster, name, why).await,
    }
}

/// Creates the full backup that starts a new chain after a gap (once: it is named after the chain).
async fn close_chain(
    ctx: &Context,
    cluster: &EtcdCluster,
    name: &str,
    why: &str,
) -> Result<(), KubeCallError> {
    let ns = cluster.namespace().unwrap_or_default();
    let backup = EtcdBackup {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.clone()),
            labels: Some([(LABEL_CLUSTER.to_owned(), cluster.name_any())].into()),
            ..Default::default()
        },
        spec: EtcdBackupSpec {
            cluster_name: cluster.name_any(),
            destination: None,
            encryption: None,
            drill: None,
        },
        status: None,
    };
    match Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &backup)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
        Err(e) => return Err(kube_err("creating the chain-closing EtcdBackup")(e)),
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
