//! The cluster's Services and its PodDisruptionBudget.

use k8s_openapi::api::{core::v1::Service, policy::v1::PodDisruptionBudget};
use kube::ResourceExt;
use ouroboros_crds::EtcdCluster;
use serde_json::json;

use super::{BuildError, owner, selector_labels, to_object};
use crate::vocabulary::{CLIENT_PORT, LABEL_VOTER, PEER_PORT, client_service_name, cluster_labels};

/// The headless Service that gives members stable DNS names. Not-ready addresses are published
/// because a member must resolve its peers before it can become ready.
pub fn headless_service(cluster: &EtcdCluster) -> Result<Service, BuildError> {
    to_object(
        "Service",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": cluster.name_any(), "namespace": cluster.namespace(),
                         "labels": cluster_labels(cluster), "ownerReferences": [owner(cluster)]},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": selector_labels(cluster),
                // Named target ports: self-hosted members listen on their own port blocks.
                "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client"},
                          {"name": "peer", "port": PEER_PORT, "targetPort": "peer"}]
            }
        }),
    )
}

/// The Service clients use: ready voting members only; for self-hosted clusters, every voting
/// member, ready or not.
///
/// Why self-hosted differs: readiness reaches the Service through the kubelet's status updates,
/// which go through the API server, which stores them in this etcd through this Service. If the
/// API server restarts while members' readiness flips, the Service can be left with no ready
/// voter, the API server with no etcd, and nothing able to fix it (seen in the kuberception e2e).
/// Bootkube's etcd-service tolerated unready endpoints for the same reason. A voter that does not
/// answer only costs the client a retry.
pub fn client_service(cluster: &EtcdCluster) -> Result<Service, BuildError> {
    let mut selector = selector_labels(cluster);
    selector[LABEL_VOTER] = "true".into();
    let self_hosted = cluster.spec.self_hosted.as_ref();
    let cluster_ip = self_hosted.and_then(|s| s.client_service_ip.clone());
    to_object(
        "Service",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": client_service_name(cluster), "namespace": cluster.namespace(),
                         "labels": cluster_labels(cluster), "ownerReferences": [owner(cluster)]},
            "spec": {
                "clusterIP": cluster_ip,
                "publishNotReadyAddresses": self_hosted.is_some(),
                "selector": selector,
                "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client"}]
            }
        }),
    )
}

/// A PodDisruptionBudget that keeps a quorum of the desired size running during voluntary
/// disruptions (drains).
pub fn pod_disruption_budget(cluster: &EtcdCluster) -> Result<PodDisruptionBudget, BuildError> {
    let size = cluster.spec.size.max(1);
    let quorum = size / 2 + 1;
    to_object(
        "PodDisruptionBudget",
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": cluster.name_any(), "namespace": cluster.namespace(),
                         "labels": cluster_labels(cluster), "ownerReferences": [owner(cluster)]},
            "spec": {"minAvailable": quorum, "selector": {"matchLabels": selector_labels(cluster)}}
        }),
    )
}
