//! The security settings of the pods the operator runs.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::vocabulary::UNPRIVILEGED_ID;

/// Takes the unprivileged settings off a member pod whose data was written by root: it runs as
/// members did before, until a replacement or a restore gives it a new claim.
pub fn run_as_root(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        spec.security_context = None;
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.security_context = None;
        }
    }
}

/// The pod-level half of Kubernetes' `restricted` Pod Security profile, for every pod the operator
/// runs off the host network: non-root, volumes owned by the pod's group, the runtime's default
/// seccomp filter.
pub fn restricted_pod_security() -> serde_json::Value {
    json!({
        "runAsNonRoot": true, "runAsUser": UNPRIVILEGED_ID, "runAsGroup": UNPRIVILEGED_ID,
        "fsGroup": UNPRIVILEGED_ID,
        // A volume whose top directory already has the group is not walked again on every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

/// The container-level half: no privilege escalation, no capabilities, a read-only root filesystem
/// (etcd writes only its data volume; the sidecar only its backup volume and the network).
pub fn restricted_container_security() -> serde_json::Value {
    json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}})
}
