//! The EtcdBackup controller. It observes and logs only, until its lifecycle is implemented.

use std::sync::Arc;

use kube::{ResourceExt, runtime::controller::Action};
use ouroboros_crds::EtcdBackup;

use super::ReportedError;
use crate::context::Context;

/// Why a EtcdBackup reconcile failed.
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
pub async fn reconcile(obj: Arc<EtcdBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile("etcdbackup");
    tracing::info!(
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        generation = obj.metadata.generation.unwrap_or_default(),
        "observed EtcdBackup"
    );
    Ok(Action::await_change())
}
