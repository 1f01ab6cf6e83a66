//! The local cluster really runs pods: an etcd pod from the locally built image becomes Ready, answers
//! `etcdctl endpoint health` through its pod IP (from the host) and through its headless-service DNS
//! name (from another pod), and data on its PVC survives deleting the pod.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use ouroboros_e2e::{TestNamespace, client, etcd_image, etcd_tool, wait_for};

fn etcd_pod(ns: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "smoke-etcd", "labels": {"app": "smoke-etcd"}},
        "spec": {
            "hostname": "smoke-etcd", "subdomain": "smoke",
            "containers": [{
                "name": "etcd", "image": etcd_image(), "imagePullPolicy": "Never",
                "command": ["/usr/local/bin/etcd", "--name", "smoke", "--data-dir", "/var/lib/etcd/data",
                    "--listen-client-urls", "http://0.0.0.0:2379",
                    "--advertise-client-urls", format!("http://smoke-etcd.smoke.{ns}.svc:2379")],
                "readinessProbe": {"httpGet": {"path": "/health", "port": 2379}, "periodSeconds": 1},
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/etcd"}]
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "smoke-data"}}]
        }
    }))?)
}

async fn ready_pod_ip(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    wait_for(&format!("pod {name} Ready"), Duration::from_secs(90), || async {
        let p = pods.get(name).await?;
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(if ready { status.pod_ip } else { None })
    })
    .await
}

fn etcdctl(endpoint: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(etcd_tool("etcdctl"))
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .context("running etcdctl")?;
    ensure!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn node_is_ready() -> anyhow::Result<()> {
    let c = client().await?;
    let nodes = Api::<Node>::all(c).list(&Default::default()).await?;
    ensure!(!nodes.items.is_empty(), "the cluster has no nodes");
    for n in nodes {
        let ready = n
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ensure!(ready, "node {:?} is not Ready", n.metadata.name);
    }
    Ok(())
}

#[tokio::test]
async fn etcd_pod_is_reachable_by_ip_and_dns_and_keeps_pvc_data() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "smoke").await?.run(smoke).await
}

async fn smoke(c: Client, ns: String) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "smoke"},
        "spec": {"clusterIP": "None", "selector": {"app": "smoke-etcd"}, "publishNotReadyAddresses": true,
                 "ports": [{"name": "client", "port": 2379}]}
    }))?;
    Api::<Service>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await?;
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "smoke-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &pvc)
        .await?;
    pods.create(&PostParams::default(), &etcd_pod(&ns)?).await?;

    let ip = ready_pod_ip(&pods, "smoke-etcd").await?;
    let by_ip = format!("http://{ip}:2379");
    let health = etcdctl(&by_ip, &["endpoint", "health"])?;
    ensure!(
        health.contains("is healthy"),
        "unexpected health output: {health}"
    );
    etcdctl(&by_ip, &["put", "smoke-key", "survives-pod-delete"])?;

    // From another pod, by the member's DNS name and by the headless Service name.
    let fqdn = format!("http://smoke-etcd.smoke.{ns}.svc.cluster.local:2379");
    let svc_name = format!("http://smoke.{ns}.svc:2379");
    let client_pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "smoke-client"},
        // One etcdctl per container: the etcd image has no shell (as upstream's).
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "health", "image": etcd_image(), "imagePullPolicy": "Never",
            "command": ["etcdctl", "--endpoints", fqdn, "endpoint", "health"]
        }, {
            "name": "get", "image": etcd_image(), "imagePullPolicy": "Never",
            "command": ["etcdctl", "--endpoints", svc_name, "get", "smoke-key", "--print-value-only"]
        }]}
    }))?;
    pods.create(&PostParams::default(), &client_pod).await?;
    let phase = wait_for("smoke-client to finish", Duration::from_secs(60), || async {
        let phase = pods.get("smoke-client").await?.status.and_then(|s| s.phase);
        Ok(phase.filter(|p| p == "Succeeded" || p == "Failed"))
    })
    .await?;
    let mut logs = String::new();
    for container in ["health", "get"] {
        let params = kube::api::LogParams {
            container: Some(container.into()),
            ..Default::default()
        };
        logs += &pods.logs("smoke-client", &params).await?;
    }
    ensure!(phase == "Succeeded", "client pod {phase}: {logs}");
    ensure!(
        logs.contains(&format!("{fqdn} is healthy")),
        "no health line for {fqdn} in: {logs}"
    );
    ensure!(
        logs.contains("survives-pod-delete"),
        "value not read through {svc_name}: {logs}"
    );

    // Delete the member pod and start it again on the same claim: the key must still be there.
    pods.delete(
        "smoke-etcd",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    wait_for("smoke-etcd to be gone", Duration::from_secs(60), || async {
        Ok(pods.get_opt("smoke-etcd").await?.is_none().then_some(()))
    })
    .await?;
    pods.create(&PostParams::default(), &etcd_pod(&ns)?).await?;
    let ip = ready_pod_ip(&pods, "smoke-etcd").await?;
    let value = etcdctl(
        &format!("http://{ip}:2379"),
        &["get", "smoke-key", "--print-value-only"],
    )?;
    ensure!(
        value.trim() == "survives-pod-delete",
        "after pod delete the key reads {value:?}"
    );
    Ok(())
}
