//! Where a self-hosted member runs. Its peer URL carries its node's address and its data stays on that
//! node, so the operator chooses the node before the member exists, instead of leaving it to the
//! scheduler. Pure: nodes and pods in, a placement or the reason there is none out.

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::ResourceExt;
use ouroboros_crds::EtcdCluster;

use crate::vocabulary::{PORT_SLOT_STRIDE, Placement, Ports, ports_of};

/// Chooses a node and a port block for a new self-hosted member: a Ready, schedulable node that
/// matches `spec.pod.nodeSelector` and whose taints `spec.pod.tolerations` tolerate, with the fewest
/// members of this cluster (then by name); the lowest port slot no pod or member of the cluster uses.
/// `member_peer_ports` are the peer ports in the membership (members whose pods are gone keep theirs).
pub fn choose(
    cluster: &EtcdCluster,
    nodes: &[Node],
    pods: &[Pod],
    member_peer_ports: &[u16],
) -> Result<Placement, String> {
    let pod_spec = &cluster.spec.pod;
    let base = cluster
        .spec
        .self_hosted
        .as_ref()
        .and_then(|s| u16::try_from(s.base_port).ok())
        .unwrap_or(Ports::POD_NETWORK.client);
    let eligible: Vec<(&Node, String)> = nodes
        .iter()
        .filter(|n| is_ready(n) && !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false))
        .filter(|n| {
            let labels = n.labels();
            pod_spec
                .node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| pod_spec.tolerations.iter().any(|tol| tolerates(tol, t)))
        })
        .filter_map(|n| internal_ip(n).map(|ip| (n, ip)))
        .collect();
    let on = |node: &str| {
        pods.iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .count()
    };
    let Some((node, ip)) = eligible
        .into_iter()
        .min_by_key(|(n, _)| (on(&n.name_any()), n.name_any()))
    else {
        return Err(format!(
            "no Ready node with an InternalIP matches spec.pod.nodeSelector {:?} and tolerations",
            pod_spec.node_selector
        ));
    };
    let used: Vec<u16> = pods
        .iter()
        .map(|p| ports_of(p).client)
        .chain(member_peer_ports.iter().map(|p| p.saturating_sub(1)))
        .filter_map(|client| client.checked_sub(base))
        .map(|offset| offset / PORT_SLOT_STRIDE)
        .collect();
    let slot = (0u16..).find(|s| !used.contains(s)).unwrap_or(0);
    let first = base
        .checked_add(slot.saturating_mul(PORT_SLOT_STRIDE))
        .filter(|p| p.checked_add(PORT_SLOT_STRIDE).is_some())
        .ok_or_else(|| format!("no free port block above spec.selfHosted.basePort {base}"))?;
    Ok(Placement {
        node: node.name_any(),
        ip,
        ports: Ports::block(first),
    })
}

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn internal_ip(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

/// Kubernetes' toleration rule: same key (or an empty key with `Exists`), the value when `Equal`,
/// and the same effect unless the toleration names none.
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match tol.key.as_deref() {
        None | Some("") => tol.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match tol.operator.as_deref() {
        Some("Exists") => true,
        _ => tol.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    };
    effect_ok && key_ok && value_ok
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A self-hosted cluster of 3; `extra` adds fields to its spec.
    fn cluster(extra: serde_json::Value) -> EtcdCluster {
        let mut spec = json!({"size": 3, "selfHosted": {"basePort": 2379}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": "etcd.ouroboros.dev/v1alpha1",
            "kind": "EtcdCluster",
            "metadata": {"name": "c", "namespace": "kube-system"},
            "spec": spec,
        }))
        .unwrap()
    }

    /// A Ready node labelled role=cp; `spec` is its NodeSpec.
    fn node(name: &str, ip: &str, spec: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"role": "cp"}},
            "spec": spec,
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": ip}],
            },
        }))
        .unwrap()
    }

    fn pod_on(node: &str, base: u16) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {"etcd.ouroboros.dev/port-base": base.to_string()}},
            "spec": {"nodeName": node, "containers": []},
        }))
        .unwrap()
    }

    #[test]
    fn the_first_member_gets_the_first_block_on_the_first_node() {
        let p = choose(
            &cluster(json!({})),
            &[node("b", "10.0.0.2", json!({})), node("a", "10.0.0.1", json!({}))],
            &[],
            &[],
        )
        .unwrap();
        assert_eq!((p.node.as_str(), p.ip.as_str()), ("a", "10.0.0.1"));
        assert_eq!(p.ports, Ports::block(2379));
        assert_eq!(p.ports.peer, 2380);
    }

    #[test]
    fn members_spread_over_nodes_and_never_share_a_port_block() {
        let nodes = [node("a", "10.0.0.1", json!({})), node("b", "10.0.0.2", json!({}))];
        let p = choose(&cluster(json!({})), &nodes, &[pod_on("a", 2379)], &[]).unwrap();
        assert_eq!((p.node.as_str(), p.ports.client), ("b", 2389));
        // One node: the next free block, skipping one a member without a pod still holds.
        let p = choose(&cluster(json!({})), &nodes[..1], &[pod_on("a", 2379)], &[2390]).unwrap();
        assert_eq!(p.ports.client, 2399);
        // A freed block is reused.
        let p = choose(&cluster(json!({})), &nodes[..1], &[pod_on("a", 2389)], &[]).unwrap();
        assert_eq!(p.ports.client, 2379);
    }

    #[test]
    fn nodes_must_be_ready_selected_and_tolerated() {
        let mut not_ready = node("a", "10.0.0.1", json!({}));
        not_ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        let tainted = node(
            "b",
            "10.0.0.2",
            json!({"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}),
        );
        let cordoned = node("c", "10.0.0.3", json!({"unschedulable": true}));
        let err = choose(
            &cluster(json!({})),
            &[not_ready.clone(), tainted.clone(), cordoned],
            &[],
            &[],
        )
        .unwrap_err();
        assert!(err.contains("no Ready node"), "{err}");
        let tolerant = cluster(json!({"pod": {
            "nodeSelector": {"role": "cp"},
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
        }}));
        assert_eq!(
            choose(&tolerant, &[not_ready, tainted.clone()], &[], &[])
                .unwrap()
                .node,
            "b"
        );
        let elsewhere = cluster(json!({"pod": {"nodeSelector": {"role": "worker"}}}));
        assert!(choose(&elsewhere, &[node("d", "10.0.0.4", json!({}))], &[], &[]).is_err());
    }
}
