//! Retention after a backup succeeded: the cluster's rules applied to its destination by the sidecar
//! (when this backup went there), then to the EtcdBackup objects. A failure is reported and retried
//! with the next backup; it never fails the backup that triggered it.

use kube::{Api, Resource, ResourceExt, api::ListParams, runtime::events::EventType};
use ouroboros_crds::{BackupPhase, EtcdBackup, EtcdCluster, retention::Rules, sidecar::PruneRequest};

use super::{Error, destination::resolve};
use crate::{
    context::Context,
    controllers::{delete_if_present, kube_err},
    sidecar::SidecarAddr,
    vocabulary::LABEL_SCHEDULED,
};

/// Failed scheduled backups kept as history; older ones are deleted with retention.
pub const FAILED_KEPT: usize = 3;

/// Applies the cluster's retention to its backup destination (when this backup went there) and then
/// to the EtcdBackup objects: those whose archive was deleted, and failed scheduled ones beyond the
/// newest few. A failure is reported and retried with the next backup; it never fails this one.
pub async fn apply_retention(ctx: &Context, b: &EtcdBackup, addr: &SidecarAddr) -> Result<(), Error> {
    let ns = b.namespace().unwrap_or_default();
    let Some(cluster) = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?
    else {
        return Ok(());
    };
    let Some(policy) = cluster.spec.backup.as_ref() else {
        return Ok(());
    };
    let backups: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let all = backups
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing EtcdBackups"))?;
    let mut deleted_locations = Vec::new();
    if let (Some(retention), None) = (&policy.retention, &b.spec.destination) {
        let rules = match Rules::new(retention.max_count, retention.max_age.as_deref()) {
            Ok(r) => r,
            // The cluster's BackupHealthy condition already says what is wrong.
            Err(_) => return Ok(()),
        };
        let destination = match resolve(ctx, b, &cluster).await? {
            Ok(r) => r.destination,
            Err(_) => return Ok(()),
        };
        let req = PruneRequest {
            destination,
            max_count: rules.max_count.and_then(|n| u32::try_from(n).ok()),
            max_age_seconds: rules.max_age.map(|a| a.as_secs()),
            keep_backups: newest_verified(&b.spec.cluster_name, &all.items)
                .into_iter()
                .collect(),
        };
        match ctx.sidecar.prune(addr, &req).await {
            Ok(out) => {
                if !out.deleted.is_empty() || out.leftovers_removed > 0 {
                    ctx.publish(
                        &cluster.object_ref(&()),
                        EventType::Normal,
                        "RetentionApplied",
                        format!(
                            "deleted {} backup(s) by retention and {} leftover(s) of interrupted backups; {} kept",
                            out.deleted.len(),
                            out.leftovers_removed,
                            out.kept
                        ),
                        None,
                    )
                    .await;
                }
                deleted_locations = out.deleted;
            }
            Err(e) => {
                ctx.publish(
                    &cluster.object_ref(&()),
                    EventType::Warning,
                    "RetentionFailed",
                    format!("applying retention through {}: {e}", addr.addr),
                    None,
                )
                .await;
            }
        }
    }
    for o in doomed(b, &all.items, &deleted_locations) {
        delete_if_present(
            backups.delete(&o.name_any(), &Default::default()).await,
            "deleting an EtcdBackup by retention",
        )?;
    }
    Ok(())
}

/// The newest backup of `cluster` a restore drill verified: retention keeps it whatever its rules
/// say, so newer backups that are not (yet) verified never push out the last proven one.
pub fn newest_verified(cluster: &str, all: &[EtcdBackup]) -> Option<String> {
    all.iter()
        .filter(|o| {
            o.spec.cluster_name == cluster && o.status.as_ref().and_then(|s| s.verified) == Some(true)
        })
        .max_by_key(|o| {
            let s = o.status.as_ref();
            (
                s.and_then(|s| s.revision).unwrap_or(0),
                s.and_then(|s| s.completion_time.clone()),
            )
        })
        .map(|o| o.name_any())
}

/// The EtcdBackups retention deletes besides `b`: those whose archive the sidecar deleted, and failed
/// scheduled ones beyond the newest [`FAILED_KEPT`].
pub fn doomed<'a>(
    b: &EtcdBackup,
    all: &'a [EtcdBackup],
    deleted_locations: &[String],
) -> Vec<&'a EtcdBackup> {
    let mine: Vec<&EtcdBackup> = all
        .iter()
        .filter(|o| o.spec.cluster_name == b.spec.cluster_name && o.uid() != b.uid())
        .collect();
    let mut failed: Vec<&&EtcdBackup> = mine
        .iter()
        .filter(|o| {
            o.labels().get(LABEL_SCHEDULED).is_some_and(|v| v == "true")
                && o.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Failed)
        })
        .collect();
    failed.sort_by_key(|o| std::cmp::Reverse(o.metadata.creation_timestamp.clone()));
    mine.iter()
        .filter(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.location.as_ref())
                .is_some_and(|l| deleted_locations.contains(l))
        })
        .chain(failed.into_iter().skip(FAILED_KEPT))
        .copied()
        .collect()
}
