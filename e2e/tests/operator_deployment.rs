//! The operator deployed from deploy/ runs, passes its probes, serves metrics and sees our resources.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, api::ListParams};
use ouroboros_e2e::{client, wait_for};

const NS: &str = "ouroboros-system";

fn curl(url: &str) -> anyhow::Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "5", url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

#[tokio::test]
async fn operator_is_ready_and_serves_metrics() -> anyhow::Result<()> {
    let c = client().await?;
    let deploy = Api::<Deployment>::namespaced(c.clone(), NS)
        .get("etcd-operator")
        .await?;
    let available = deploy.status.and_then(|s| s.available_replicas).unwrap_or(0);
    ensure!(available >= 1, "etcd-operator has no available replica");

    let pods = Api::<Pod>::namespaced(c, NS)
        .list(&ListParams::default().labels("app.kubernetes.io/name=etcd-operator"))
        .await?;
    let pod = pods
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .context("no operator pod")?;
    let ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .context("operator pod has no IP")?;

    let (code, body) = curl(&format!("http://{ip}:8080/readyz"))?;
    ensure!(code == 200, "/readyz answered {code}: {body}");
    let (code, _) = curl(&format!("http://{ip}:8080/healthz"))?;
    ensure!(code == 200, "/healthz answered {code}");
    // Every controller has reconciled at least once by the time it is ready and objects exist, but an
    // empty cluster has nothing to reconcile, so only ask for the metric families to be present.
    let metrics = wait_for("metrics", Duration::from_secs(10), || {
        let url = format!("http://{ip}:8080/metrics");
        async move {
            let (code, body) = curl(&url)?;
            Ok((code == 200 && body.contains("ouroboros_reconciles")).then_some(body))
        }
    })
    .await?;
    ensure!(
        metrics.contains("# TYPE ouroboros_reconcile_duration_seconds histogram"),
        "{metrics}"
    );
    Ok(())
}
