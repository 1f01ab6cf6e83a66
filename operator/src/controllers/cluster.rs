//! The EtcdCluster controller. It observes and logs only, until its lifecycle is implemented.

use std::sync::Arc;

use kube::{ResourceExt, runtime::controller::Action};
use ouroboros_crds::EtcdCluster;

use super::ReportedError;
use crate::context::Context;

/// Why a EtcdCluster reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {}

impl ReportedError for Error {
    fn metric_label(&self) -> &'static str {
        match *self {}
    }
    fn is_permanent(&self) -> bool {
        match *self {}
    }
}

/// Logs what was observed; changes nothing.
pub async fn reconcile(obj: Arc<EtcdCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile("etcdcluster");
    tracing::info!(
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        generation = obj.metadata.generation.unwrap_or_default(),
        "observed EtcdCluster"
    );
    Ok(Action::await_change())
}
