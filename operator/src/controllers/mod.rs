//! The three controllers: EtcdCluster, EtcdBackup, EtcdRestore. Each runs its own watch; `run_all`
//! drives them together until shutdown and reports when each watch has synced.

use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{Controller, controller::Action, reflector, watcher},
};
use ouroboros_crds::{EtcdBackup, EtcdCluster, EtcdRestore};
use serde::de::DeserializeOwned;

use crate::{context::Context, http::Readiness};

pub mod backup;
pub mod cluster;
pub mod encryption;
pub mod outcome;
pub mod restore;

/// Number of watches `/readyz` waits for.
pub const WATCH_COUNT: usize = 3;

/// Runs every controller until `shutdown` resolves.
pub async fn run_all(
    ctx: Arc<Context>,
    readiness: Arc<Readiness>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let api = |ns: &Option<String>| -> (Api<EtcdCluster>, Api<EtcdBackup>, Api<EtcdRestore>) {
        match ns {
            Some(ns) => (
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
            ),
            None => (
                Api::all(ctx.client.clone()),
                Api::all(ctx.client.clone()),
                Api::all(ctx.client.clone()),
            ),
        }
    };
    let (clusters, backups, restores) = api(&namespace);
    let (pods, pvcs): (Api<Pod>, Api<PersistentVolumeClaim>) = match &namespace {
        Some(ns) => (
            Api::namespaced(ctx.client.clone(), ns),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    // Only our pods and claims: the label keeps the cache small in a busy cluster.
    let ours = watcher::Config::default().labels(crate::vocabulary::LABEL_CLUSTER);
    let all = || watcher::Config::default().any_semantic();
    // A backup finishing changes its cluster's BackupHealthy condition and may free the schedule.
    let backup_of_cluster = |b: EtcdBackup| {
        Some(reflector::ObjectRef::<EtcdCluster>::new(&b.spec.cluster_name).within(&b.namespace()?))
    };
    let clusters = Controller::new(clusters, all())
        .owns(pods, ours.clone())
        .owns(pvcs, ours)
        .watches(backups.clone(), all(), backup_of_cluster);
    tokio::spawn(forget_deleted_clusters(ctx.clone(), clusters.store()));
    tokio::join!(
        drive(
            "etcdcluster",
            clusters,
            ctx.clone(),
            readiness.clone(),
            shutdown.clone(),
            cluster::reconcile
        ),
        drive(
            "etcdbackup",
            Controller::new(backups, all()),
            ctx.clone(),
            readiness.clone(),
            shutdown.clone(),
            backup::reconcile
        ),
        drive(
            "etcdrestore",
            Controller::new(restores, all()),
            ctx.clone(),
            readiness.clone(),
            shutdown,
            restore::reconcile
        ),
    );
}

/// Removes the metric series of clusters that no longer exist, once a minute: clusters are deleted
/// without the operator being told (their objects go by owner references), and a deleted cluster's
/// series would otherwise stay, and its alerts (no recent backup, certificates expiring) fire, until
/// the operator restarts.
async fn forget_deleted_clusters(ctx: Arc<Context>, store: reflector::Store<EtcdCluster>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        // Only over a synced store: an empty one before the first list would forget every cluster.
        // A short wait, as in `drive`: a long one on the store's readiness may never be woken.
        let synced = tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await;
        if !matches!(synced, Ok(Ok(()))) {
            continue;
        }
        let live = store
            .state()
            .iter()
            .map(|c| crate::controllers::cluster::metrics_key(c))
            .collect();
        ctx.metrics.forget_clusters_except(&live);
    }
}

/// One controller loop with shared error policy and result reporting.
async fn drive<K, F, Fut, E>(
    name: &'static str,
    controller: Controller<K>,
    ctx: Arc<Context>,
    readiness: Arc<Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<Context>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + ReportedError + Send + Sync + 'static,
{
    let store = controller.store();
    tokio::spawn(async move {
        // The store's readiness is a oneshot receiver that keeps only the last waker, and the
        // controller itself waits on it too, so a single long wait here may never be woken. Polling
        // again every 200 ms re-registers and sees the value once the controller has stored it.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    tracing::info!(controller = name, "watch synced");
                    readiness.watch_synced();
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            move |obj: Arc<K>, err: &E, ctx: Arc<Context>| error_policy(name, obj, err, ctx),
            ctx,
        )
        .for_each(move |res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(controller = name, object = %obj, "reconciled"),
                Err(e) => tracing::warn!(controller = name, error = %e, "reconcile failed"),
            }
        })
        .map(|()| tracing::info!(controller = name, "stopped"))
        .await;
}

/// A Kubernetes call of the backup or restore controller failed. Both only call Kubernetes, and such a
/// failure is transient: the reconcile is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct KubeCallError {
    /// What was attempted.
    pub action: &'static str,
    /// Cause.
    #[source]
    pub source: kube::Error,
}

impl ReportedError for KubeCallError {
    fn metric_label(&self) -> &'static str {
        "kubernetes"
    }
    fn is_permanent(&self) -> bool {
        false
    }
}

/// Wraps a failed Kubernetes call with what it was for.
pub fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> KubeCallError {
    move |source| KubeCallError { action, source }
}

/// A deletion's result: done, or already gone (404 is success), or the failure to retry.
pub fn delete_if_present<T>(
    result: Result<T, kube::Error>,
    action: &'static str,
) -> Result<(), KubeCallError> {
    done_unless_other_than(404, result, action)
}

/// The pods of this very Job, selected by its uid: a namesake's pods (an earlier Job of that name,
/// deleted in the background, whose pods go after it) still carry `job-name` and an outcome that is
/// not this Job's. A Job not read from the API server (no uid) has none.
pub async fn pods_of_job(
    client: &kube::Client,
    job: &k8s_openapi::api::batch::v1::Job,
) -> Result<Vec<Pod>, kube::Error> {
    let (Some(ns), Some(uid)) = (job.metadata.namespace.as_deref(), job.metadata.uid.as_deref()) else {
        return Ok(Vec::new());
    };
    let selector = format!("batch.kubernetes.io/controller-uid={uid}");
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?
        .items)
}

/// The scheduler's word on a pod it has not placed yet (its `PodScheduled=False` message), so a
/// controller waiting on the pod can say why instead of waiting silently.
pub fn unscheduled_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
        })
}

/// The RFC 3339 time the operator recorded in `pod`'s annotation `key`, if it is there and reads.
pub fn annotated_time(pod: &Pod, key: &str) -> Option<jiff::Timestamp> {
    pod.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// Whether the member of `pod` may be defragmenting now: the operator recorded a start within
/// [`crate::etcd::MAINTENANCE_TIMEOUT`] and no end since. A call that timed out or failed may still
/// run in etcd, so only a recorded end, or the bound, says it is over. A restore drill waits while
/// any member of its cluster may be (it would compete with that member for its node's disk).
pub fn defragmenting(pod: &Pod, now: jiff::Timestamp) -> bool {
    use crate::vocabulary::{ANNOTATION_DEFRAGMENTATION_ENDED_AT, ANNOTATION_DEFRAGMENTED_AT};
    let Some(started) = annotated_time(pod, ANNOTATION_DEFRAGMENTED_AT) else {
        return false;
    };
    let ended = annotated_time(pod, ANNOTATION_DEFRAGMENTATION_ENDED_AT).is_some_and(|e| e >= started);
    let bound = jiff::SignedDuration::try_from(crate::etcd::MAINTENANCE_TIMEOUT).unwrap_or_default();
    !ended && now.duration_since(started) < bound
}

/// The result of a create or a conditional patch, where 409 Conflict means done for now (the object
/// exists, or changed since it was read), as an error only for other failures.
pub fn conflict_is_done<T>(
    result: Result<T, kube::Error>,
    action: &'static str,
) -> Result<(), KubeCallError> {
    done_unless_other_than(409, result, action)
}

/// Success, or the API's refusal with status `code` (which the caller counts as done), else the
/// failure to retry.
fn done_unless_other_than<T>(
    code: u16,
    result: Result<T, kube::Error>,
    action: &'static str,
) -> Result<(), KubeCallError> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == code => Ok(()),
        Err(source) => Err(KubeCallError { action, source }),
    }
}

/// Errors that can say whether retrying may help, and name themselves for metrics.
pub trait ReportedError {
    /// A short, fixed name of the failed action (a metric label).
    fn metric_label(&self) -> &'static str;
    /// Whether the same input will keep failing; such errors wait for a change instead of retrying.
    fn is_permanent(&self) -> bool;
}

fn error_policy<K: Resource, E: std::error::Error + ReportedError>(
    name: &'static str,
    obj: Arc<K>,
    err: &E,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::FailureLabels {
            controller: name,
            error: err.metric_label(),
        })
        .inc();
    tracing::warn!(controller = name, object = %obj.name_any(), error = %err, "reconcile error");
    if err.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(10))
    }
}
