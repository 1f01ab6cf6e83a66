//! Leader election on a `coordination.k8s.io` Lease, so that of several operator replicas exactly one
//! changes clusters. The others wait, ready to take over.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};

use crate::http::Readiness;

/// The Lease's name.
pub const LEASE_NAME: &str = "ouroboros-etcd-operator";
/// Seconds a lock is valid after its last renewal.
const LEASE_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
const GRACE_SECONDS: u64 = 5;

/// Why leader election could not run.
#[derive(Debug, thiserror::Error)]
#[error("leader election on Lease {namespace}/{LEASE_NAME}: {source}")]
pub struct LeaderError {
    namespace: String,
    #[source]
    source: LeaseManagerError,
}

/// This replica's hold on the Lease.
#[derive(Debug)]
pub struct Leadership {
    channel: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Resolves if the Lease is lost (not renewed in time, or taken).
    pub async fn lost(&mut self) {
        loop {
            if self.channel.changed().await.is_err() || !*self.channel.borrow_and_update() {
                return;
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once instead of after it expires.
    pub async fn release(self) {
        // Closing the channel makes the manager's task release the Lease and finish.
        drop(self.channel);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released leadership"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease failed; it will expire"),
            Err(e) => tracing::warn!(error = %e, "the lease task failed; the Lease will expire"),
        }
    }
}

/// Resolves once this replica holds the Lease.
pub async fn wait_for_leadership(
    client: Client,
    namespace: &str,
    identity: &str,
    readiness: &Readiness,
) -> Result<Leadership, LeaderError> {
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await
        .map_err(|source| LeaderError {
            namespace: namespace.to_owned(),
            source,
        })?;
    let (mut channel, task) = manager.watch().await;
    readiness.set_standby(true);
    tracing::info!(identity, namespace, lease = LEASE_NAME, "waiting for leadership");
    while !*channel.borrow_and_update() {
        if channel.changed().await.is_err() {
            break;
        }
    }
    readiness.set_standby(false);
    tracing::info!(identity, "acquired leadership");
    Ok(Leadership { channel, task })
}
