//! Writes more than one controller makes: server-side apply with the operator's field manager, the
//! sidecars' certificate (the cluster controller and the restore's seed both need it before a member
//! pod), and the record of a member ordinal as taken.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use ouroboros_crds::EtcdCluster;

use crate::{context::Context, objects, sidecar_pki, vocabulary};

/// Why a shared write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A Kubernetes write failed.
    #[error("{action} {kind} {name}: {source}")]
    Kube {
        /// What was attempted.
        action: &'static str,
        /// Object kind.
        kind: &'static str,
        /// Object name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The sidecars' server certificate could not be made.
    #[error("issuing the certificate in Secret {name}: {source}")]
    IssueSidecarCertificate {
        /// The Secret.
        name: String,
        /// Cause.
        #[source]
        source: sidecar_pki::PkiError,
    },
    /// An object could not be built.
    #[error(transparent)]
    Build(#[from] objects::BuildError),
}

/// What a failed Kubernetes call on `kind` `name` becomes.
pub fn kube_failed(
    action: &'static str,
    kind: &'static str,
    name: impl Into<String>,
) -> impl FnOnce(kube::Error) -> WriteError {
    let name = name.into();
    move |source| WriteError::Kube {
        action,
        kind,
        name,
        source,
    }
}

pub(crate) fn ssa() -> PatchParams {
    PatchParams::apply(crate::FIELD_MANAGER).force()
}

pub(crate) async fn apply<K>(api: &Api<K>, obj: &K, kind: &'static str) -> Result<(), WriteError>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &ssa(), &Patch::Apply(obj))
        .await
        .map(drop)
        .map_err(kube_failed("applying", kind, name))
}

/// The Secret with the cluster's sidecar server certificate, issued from the operator's CA when it
/// is missing, due for renewal or from another CA (see `sidecar_pki`). Member pods mount it, so it
/// exists before any of them is created: the cluster controller and the restore's seed both call
/// this first. A renewed Secret reaches running sidecars through the kubelet, with no restart.
pub async fn ensure_sidecar_tls(ctx: &Context, cluster: &EtcdCluster) -> Result<(), WriteError> {
    let ns = cluster.namespace().unwrap_or_default();
    let name = sidecar_pki::server_secret_name(&cluster.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets
        .get_opt(&name)
        .await
        .map_err(kube_failed("reading", "Secret", name.clone()))?;
    let now = jiff::Timestamp::now();
    let uid = cluster.uid().unwrap_or_default();
    let Some(problem) = sidecar_pki::server_secret_problem(existing.as_ref(), ctx.sidecar.ca(), &uid, now)
    else {
        return Ok(());
    };
    let issued = match sidecar_pki::server_secret(
        ctx.sidecar.ca(),
        &ns,
        &cluster.name_any(),
        vocabulary::cluster_labels(cluster),
        objects::owner(cluster),
        now,
    ) {
        Ok(secret) => apply(&secrets, &secret, "Secret").await,
        Err(source) => Err(WriteError::IssueSidecarCertificate {
            name: name.clone(),
            source,
        }),
    };
    if let Err(e) = issued {
        if existing.is_none() {
            // No member pod can start without it.
            return Err(e);
        }
        // The certificate serves backups only: a renewal that fails must not stop the members'
        // care. It is said, and tried again on the next reconcile, well before the old one expires.
        tracing::warn!(secret = %name, namespace = %ns, error = %e, "renewing the sidecars' certificate failed");
        ctx.publish(
            &cluster.object_ref(&()),
            EventType::Warning,
            "SidecarCertificateNotRenewed",
            format!(
                "Secret {name} ({problem}) could not be reissued: {e}; backups keep the current certificate"
            ),
            None,
        )
        .await;
        return Ok(());
    }
    tracing::info!(secret = %name, namespace = %ns, why = problem, "issued the sidecars' certificate");
    Ok(())
}

/// Records member `name`'s ordinal as taken before its claim or pod exists (the cluster controller's
/// members and the restore's seed alike), so names never repeat: patches
/// `etcd.ouroboros.dev/next-ordinal` past it unless it is already past it.
pub async fn record_ordinal_taken(
    ctx: &Context,
    cluster: &EtcdCluster,
    name: &str,
) -> Result<(), kube::Error> {
    let Some(ordinal) = vocabulary::ordinal(&cluster.name_any(), name) else {
        return Ok(());
    };
    if vocabulary::ordinal_floor(cluster) > ordinal {
        return Ok(());
    }
    annotate_cluster(ctx, cluster, &vocabulary::ordinal_taken_patch(ordinal)).await
}

/// Merge-patches `patch` (annotations the operator keeps as its own records) onto the cluster.
pub async fn annotate_cluster(
    ctx: &Context,
    cluster: &EtcdCluster,
    patch: &serde_json::Value,
) -> Result<(), kube::Error> {
    Api::<EtcdCluster>::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default())
        .patch(&cluster.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

/// Server-side applies `status` (the status object's fields) as `manager`, onto `obj` only: the
/// object it was computed from, not another of the same name. A controller's cache can still hold an
/// object deleted and created again under its name (seen on three nodes: an operator that outlived
/// its API server's etcd wrote a deleted EtcdCluster's status, cluster ID and all, onto the new one
/// of the same name, which then counted as bootstrapped and waited for ever instead of starting).
/// So the object is read afresh first: another UID means nothing is written (the new object gets a
/// reconcile of its own), and the write carries that read's resourceVersion, so an object replaced
/// between the read and the write refuses it (409 Conflict) instead of taking it. A conflict (any
/// change in between, another controller's status field say) is read and tried again, a few times.
pub async fn apply_status_of<K>(
    api: &Api<K>,
    obj: &K,
    manager: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    const ATTEMPTS: usize = 3;
    let name = obj.name_any();
    let mut attempt = 1;
    loop {
        let Some(current) = api.get_opt(&name).await? else {
            tracing::debug!(%name, "not writing status: the object is gone");
            return Ok(());
        };
        if current.meta().uid != obj.meta().uid {
            tracing::info!(
                %name,
                reconciled = ?obj.meta().uid,
                current = ?current.meta().uid,
                "not writing status: the object was replaced by another of the same name"
            );
            return Ok(());
        }
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": {"resourceVersion": current.meta().resource_version},
            "status": status,
        });
        match api
            .patch_status(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => attempt += 1,
            result => return result.map(drop),
        }
    }
}
