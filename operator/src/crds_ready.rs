//! Waiting for the CRDs at start: a controller whose CRD is missing would only log watch errors.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt,
    runtime::wait::{await_condition, conditions},
};
use ouroboros_crds::{EtcdBackup, EtcdCluster, EtcdRestore};

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum CrdWaitError {
    /// A CRD did not become established in time.
    #[error("CRD {name} was not established within {seconds}s; install it with `kubectl apply -k deploy/`")]
    NotEstablished {
        /// The CRD's name.
        name: String,
        /// How long we waited.
        seconds: u64,
    },
    /// Watching the CRD failed.
    #[error("watching CRD {name} failed: {source}")]
    Watch {
        /// The CRD's name.
        name: String,
        /// The watch error.
        #[source]
        source: kube::runtime::wait::Error,
    },
}

/// Names of the CRDs this operator serves.
pub fn crd_names() -> [String; 3] {
    [
        EtcdCluster::crd_name().to_owned(),
        EtcdBackup::crd_name().to_owned(),
        EtcdRestore::crd_name().to_owned(),
    ]
}

/// Resolves once every CRD is established, or fails after `timeout`.
pub async fn wait_for_crds(client: Client, timeout: Duration) -> Result<(), CrdWaitError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for name in crd_names() {
        let wait = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => tracing::info!(crd = %name, "CRD established"),
            Ok(Err(source)) => return Err(CrdWaitError::Watch { name, source }),
            Err(_) => {
                return Err(CrdWaitError::NotEstablished {
                    name,
                    seconds: timeout.as_secs(),
                });
            }
        }
    }
    Ok(())
}
