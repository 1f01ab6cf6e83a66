use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Volume, VolumeMount};
use ouroboros_crds::EtcdCluster;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;
use crate::{
    objects::self_hosted_member_pod,
    vocabulary::{Images, InitialClusterState, LABEL_CLUSTER, Placement, Ports},
};

/// The self-hosted cluster `kube-system/kube-etcd` with this spec.
fn kube_etcd(spec: serde_json::Value) -> EtcdCluster {
    serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": "kube-etcd", "namespace": "kube-system", "uid": "1234abcd-0000"},
        "spec": spec,
    }))
    .unwrap()
}

fn self_hosted() -> EtcdCluster {
    kube_etcd(json!({
        "size": 3,
        "selfHosted": {"bootMemberClientEndpoint": "http://10.0.0.1:12379", "hostDataDir": "/var/lib/etcd-members"},
    }))
}

fn tls() -> EtcdCluster {
    kube_etcd(json!({
        "size": 3,
        "selfHosted": {"bootMemberClientEndpoint": "https://10.0.0.1:12379"},
        "tls": {"peerSecret": "peer", "serverSecret": "server", "operatorClientSecret": "client"},
    }))
}

/// A member pod as the API server stores it: built by the operator, then given a node, a uid and
/// the service-account token volume by admission.
fn member_pod(cluster: &EtcdCluster) -> Pod {
    let images = Images {
        etcd_repository: "localhost/ouroboros/etcd".into(),
        etcd_tag_format: "v{version}".into(),
        sidecar: "localhost/ouroboros/etcd-backup-sidecar:1".into(),
    };
    let placement = Placement {
        node: "node1".into(),
        ip: "10.0.0.1".into(),
        ports: Ports::block(2379),
    };
    let mut pod = self_hosted_member_pod(
        cluster,
        &images,
        "kube-etcd-0",
        "3.6.16".parse().unwrap(),
        InitialClusterState::Existing,
        "kube-etcd-0=http://10.0.0.1:2380",
        &placement,
    )
    .unwrap();
    pod.metadata.uid = Some("pod-uid".into());
    let spec = pod.spec.as_mut().unwrap();
    spec.service_account_name = Some("default".into());
    spec.volumes.get_or_insert_default().push(
        serde_json::from_value(json!({"name": "kube-api-access-x", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}}]}}))
        .unwrap(),
    );
    for c in &mut spec.containers {
        c.volume_mounts.get_or_insert_default().push(VolumeMount {
            name: "kube-api-access-x".into(),
            mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            ..VolumeMount::default()
        });
    }
    pod
}

fn volume<'a>(pod: &'a Pod, name: &str) -> Option<&'a Volume> {
    pod.spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
}

#[test]
fn a_checkpoint_runs_the_same_etcd_on_the_same_host_data_without_the_api() {
    let pod = member_pod(&self_hosted());
    let c = checkpoint(&pod, Path::new("/var/lib/ouroboros/checkpoint-secrets")).unwrap();
    assert_eq!(
        file_name(&pod),
        "ouroboros-checkpoint-kube-system_kube-etcd-0.json"
    );
    assert!(c.secrets.is_empty());
    let meta = &c.pod.metadata;
    assert_eq!(meta.name.as_deref(), Some("kube-etcd-0-checkpoint"));
    assert_eq!(meta.namespace.as_deref(), Some("kube-system"));
    let labels = meta.labels.clone().unwrap();
    assert_eq!(labels[LABEL_CHECKPOINT_OF], "kube-etcd-0");
    // Mirror pods must never be taken for members (or selected by the client Service).
    assert!(!labels.contains_key(LABEL_CLUSTER) && !labels.contains_key(LABEL_CHECKPOINT));
    assert!(meta.owner_references.is_none() && meta.uid.is_none());

    let spec = c.pod.spec.unwrap();
    let original = pod.spec.unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert!(spec.node_name.is_none() && spec.service_account_name.is_none());
    assert_eq!(spec.automount_service_account_token, Some(false));
    // etcd exactly as in the member pod (same flags, same lock), minus the API token.
    assert_eq!(spec.containers.len(), 1);
    let (etcd, original_etcd) = (&spec.containers[0], &original.containers[0]);
    assert_eq!(etcd.name, "etcd");
    assert_eq!(etcd.command, original_etcd.command);
    assert_eq!(etcd.args, original_etcd.args);
    assert!(
        original_etcd.ports.is_some() && etcd.ports.is_none(),
        "host ports would clash"
    );
    let mounts: Vec<&str> = etcd
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(mounts, ["data", "member-lock"]);
    assert_eq!(spec.init_containers, original.init_containers);
    let with_spec = pod_with(spec.clone());
    let data = volume(&with_spec, "data").unwrap();
    assert_eq!(
        data.host_path.as_ref().unwrap().path,
        "/var/lib/etcd-members/kube-system-kube-etcd-0"
    );
    let names: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["data", "member-lock"]);
}

fn pod_with(spec: PodSpec) -> Pod {
    Pod {
        spec: Some(spec),
        ..Pod::default()
    }
}

#[test]
fn tls_secrets_become_host_directories_the_checkpointer_fills() {
    let pod = member_pod(&tls());
    let c = checkpoint(&pod, Path::new("/var/lib/cs")).unwrap();
    assert_eq!(
        c.secrets,
        [
            SecretCopy {
                secret: "peer".into(),
                dir: "/var/lib/cs/kube-system_kube-etcd-0/peer-tls".into()
            },
            SecretCopy {
                secret: "server".into(),
                dir: "/var/lib/cs/kube-system_kube-etcd-0/server-tls".into()
            },
        ]
    );
    let peer = volume(&c.pod, "peer-tls").unwrap();
    assert!(peer.secret.is_none());
    assert_eq!(
        peer.host_path.as_ref().unwrap().path,
        "/var/lib/cs/kube-system_kube-etcd-0/peer-tls"
    );
    // The operator's client certificate is the sidecar's, which the checkpoint does not run.
    assert!(volume(&c.pod, "client-tls").is_none());
}

#[test]
fn a_volume_a_static_pod_cannot_have_is_refused_by_name() {
    let mut pod = member_pod(&self_hosted());
    let spec = pod.spec.as_mut().unwrap();
    spec.volumes.as_mut().unwrap()[0] = serde_json::from_value(
        json!({"name": "data", "persistentVolumeClaim": {"claimName": "kube-etcd-0-data"}}),
    )
    .unwrap();
    let err = checkpoint(&pod, Path::new("/x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pod kube-system/kube-etcd-0: volume data (persistentVolumeClaim) cannot be used by a static pod"
    );
    let mut no_etcd = member_pod(&self_hosted());
    no_etcd.spec.as_mut().unwrap().containers.remove(0);
    assert!(matches!(
        checkpoint(&no_etcd, Path::new("/x")),
        Err(CheckpointError::ReadPod {
            what: "etcd container",
            ..
        })
    ));
}

#[test]
fn pods_being_deleted_or_finished_lose_their_checkpoint() {
    let running = member_pod(&self_hosted());
    assert!(wants_checkpoint(&running));
    let mut deleting = running.clone();
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-11-22T10:00:00Z".parse().unwrap(),
    ));
    assert!(!wants_checkpoint(&deleting));
    let mut failed = running.clone();
    failed.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
    assert!(!wants_checkpoint(&failed));
    let mut pending = running;
    pending.status = Some(serde_json::from_value(json!({"phase": "Pending"})).unwrap());
    assert!(wants_checkpoint(&pending));
}

#[test]
fn plan_writes_new_and_changed_files_and_removes_the_rest_but_never_rewrites_the_same() {
    let files = |entries: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(f, c)| ((*f).to_owned(), c.as_bytes().to_vec()))
            .collect()
    };
    let present = files(&[("a.json", "1"), ("b.json", "old"), ("gone.json", "x")]);
    let wanted = files(&[("a.json", "1"), ("b.json", "new"), ("c.json", "3")]);
    let none = BTreeSet::new();
    assert_eq!(
        plan(&present, &wanted, &none),
        [
            Change::Write {
                file: "b.json".into(),
                content: b"new".to_vec()
            },
            Change::Write {
                file: "c.json".into(),
                content: b"3".to_vec()
            },
            Change::Remove {
                file: "gone.json".into()
            },
        ]
    );
    assert!(plan(&wanted, &wanted, &none).is_empty());
    // Nothing listed (every member pod gone from this node): every checkpoint goes.
    assert_eq!(plan(&present, &BTreeMap::new(), &none).len(), 3);
}

#[test]
fn a_live_pod_that_cannot_be_copied_now_keeps_its_old_checkpoint() {
    let present = BTreeMap::from([
        ("live.json".to_owned(), b"old".to_vec()),
        ("gone.json".to_owned(), b"x".to_vec()),
    ]);
    let keep = BTreeSet::from(["live.json".to_owned()]);
    assert_eq!(
        plan(&present, &BTreeMap::new(), &keep),
        [Change::Remove {
            file: "gone.json".into()
        }]
    );
    assert_eq!(
        file_name(&member_pod(&self_hosted())),
        "ouroboros-checkpoint-kube-system_kube-etcd-0.json"
    );
}

#[test]
fn the_checkpoint_file_is_a_pod_the_kubelet_can_read() {
    let c = checkpoint(&member_pod(&self_hosted()), Path::new("/x")).unwrap();
    let text = serde_json::to_string(&c.pod).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["apiVersion"], "v1");
    assert_eq!(back["kind"], "Pod");
    assert!(back.get("status").is_none());
}
