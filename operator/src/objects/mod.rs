//! Builders of the Kubernetes objects the operator makes: pure functions from the cluster (and a
//! member name) to typed objects, one file per kind. A builder that cannot make its object returns
//! [`BuildError`]; nothing empty is ever sent in its place.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use ouroboros_crds::EtcdCluster;
use serde_json::json;

use crate::vocabulary::LABEL_CLUSTER;

mod backup_writer;
mod claims;
mod drill_job;
mod etcd_settings;
mod fetch;
mod member_pod;
mod security;
mod services;
#[cfg(test)]
mod tests;

pub use backup_writer::{BackupWriter, backup_writer_pod};
pub use claims::{default_backup_pvc, member_pvc};
pub use drill_job::{
    CHECK_CONTAINER, Drill, ETCD_CONTAINER, LABEL_DRILL_OF, RESTORE_CONTAINER, drill_job, drill_job_name,
};
pub use etcd_settings::{legacy_pod_current, recorded_quota, settings_annotation, settings_args};
pub use fetch::{FETCH_CONTAINER, FetchContainer, FetchTarget, fetch_container};
pub(crate) use member_pod::{copy_helper, spread_by};
pub use member_pod::{
    initial_cluster, member_pod, pod_images_current, self_hosted_member_pod, template_digest,
};
pub use security::{restricted_container_security, restricted_pod_security, run_as_root};
pub use services::{client_service, headless_service, pod_disruption_budget};

/// A builder's JSON did not make the typed object: a programming error, reported and never sent.
#[derive(Debug, thiserror::Error)]
#[error("building {kind}: {source}")]
pub struct BuildError {
    /// The kind being built.
    pub kind: &'static str,
    /// Cause.
    #[source]
    pub source: serde_json::Error,
}

pub fn owner(cluster: &EtcdCluster) -> OwnerReference {
    // An object fetched from the API always has a uid; an empty one would be refused by the server.
    cluster.controller_owner_ref(&()).unwrap_or_default()
}

pub(crate) fn selector_labels(cluster: &EtcdCluster) -> serde_json::Value {
    json!({ LABEL_CLUSTER: cluster.name_any() })
}

/// Converts builder JSON into the typed object `kind`.
pub(crate) fn to_object<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    v: serde_json::Value,
) -> Result<T, BuildError> {
    serde_json::from_value(strip_nulls(v)).map_err(|source| BuildError { kind, source })
}

/// Drops `null`s so optional fields are omitted rather than sent as null. Empty maps stay: `emptyDir: {}`
/// is how a volume says which kind it is.
pub(crate) fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, strip_nulls(v)))
                .filter(|(_, v)| !v.is_null())
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
