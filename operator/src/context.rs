//! State shared by every reconcile: the client, event recorder, metrics and configuration.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::{
    cli::Args,
    etcd::{EtcdClients, EtcdOps},
    metrics::Metrics,
};

/// Operator configuration that reconciles read.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Default repository of etcd images.
    pub etcd_image_repository: String,
    /// Tag format of that repository's images.
    pub etcd_image_tag_format: String,
    /// Image of the backup sidecar.
    pub backup_sidecar_image: String,
}

impl From<&Args> for OperatorConfig {
    fn from(a: &Args) -> Self {
        Self {
            etcd_image_repository: a.etcd_image_repository.clone(),
            etcd_image_tag_format: a.etcd_image_tag_format.clone(),
            backup_sidecar_image: a.backup_sidecar_image.clone(),
        }
    }
}

/// Everything a reconcile needs besides the object itself.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events on the objects we manage.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Configuration.
    pub config: OperatorConfig,
    /// etcd access, with cached connections.
    pub etcd: Arc<dyn EtcdOps>,
    /// Member sidecars, over mutual TLS with the operator's sidecar CA (which also issues each
    /// cluster's sidecar certificate).
    pub sidecar: crate::sidecar::SidecarClient,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The images member pods run, from the operator's configuration.
    pub fn images(&self) -> crate::vocabulary::Images {
        crate::vocabulary::Images {
            etcd_repository: self.config.etcd_image_repository.clone(),
            etcd_tag_format: self.config.etcd_image_tag_format.clone(),
            sidecar: self.config.backup_sidecar_image.clone(),
        }
    }

    /// Builds the shared context; `instance` distinguishes replicas in Events (the pod name).
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        config: OperatorConfig,
        sidecar: crate::sidecar::SidecarClient,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.to_owned(),
            instance,
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            recorder,
            metrics,
            config,
            etcd: EtcdClients::new(),
            sidecar,
        }
    }

    /// Publishes an Event on `regarding` (optionally naming a `related` object, which also keeps
    /// Events about different members from being folded together). A failure is logged, never
    /// returned: an Event is a report, and losing one must not fail the reconcile.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: related,
        };
        if let Err(e) = self.recorder.publish(&ev, regarding).await {
            tracing::warn!(error = %e, reason, "publishing an Event failed");
        }
    }
}
