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

    let pods: Api<Pod> = Api::namespaced(c, NS);
    let lp = ListParams::default().labels("app.kubernetes.io/name=etcd-operator");
    // Another test may have just replaced a replica: take one that is Ready.
    let pod = wait_for("a Ready operator pod", Duration::from_secs(60), || {
        let (pods, lp) = (pods.clone(), lp.clone());
        async move {
            Ok(pods.list(&lp).await?.items.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            }))
        }
    })
    .await?;
    let ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .context("operator pod has no IP")?;

    let (code, body) = curl(&format!("http://{ip}:8080/readyz"))?;
    ensure!(code == 200, "/readyz answered {code}: {body}");
    let (code, _) = curl(&format!("http://{ip}:8080/healthz"))?;
    ensure!(code == 200, "/healthz answered {code}");
    // Every replica says whether it leads; the leader also reports its reconciles.
    let (code, metrics) = curl(&format!("http://{ip}:8080/metrics"))?;
    ensure!(code == 200, "/metrics answered {code}");
    ensure!(metrics.contains("# TYPE ouroboros_leader gauge"), "{metrics}");
    if metrics.lines().any(|l| l.trim() == "ouroboros_leader 1") {
        ensure!(
            metrics.contains("# TYPE ouroboros_reconcile_duration_seconds histogram"),
            "{metrics}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_standby_replica_takes_over_when_the_leader_goes() -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::DeleteParams;
    let c = client().await?;
    let leases: Api<Lease> = Api::namespaced(c.clone(), NS);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    let first = wait_for("a lease holder", Duration::from_secs(60), || {
        let leases = leases.clone();
        async move { Ok(holder(leases.get("ouroboros-etcd-operator").await?)) }
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    ensure!(
        pods.get_opt(&first).await?.is_some(),
        "the lease holder {first} is not a running operator pod"
    );
    let started = std::time::Instant::now();
    pods.delete(&first, &DeleteParams::default()).await?;
    let second = wait_for(
        "another replica to hold the lease",
        Duration::from_secs(60),
        || {
            let leases = leases.clone();
            let first = first.clone();
            async move { Ok(holder(leases.get("ouroboros-etcd-operator").await?).filter(|h| *h != first)) }
        },
    )
    .await?;
    eprintln!(
        "leadership moved from {first} to {second} in {:?}",
        started.elapsed()
    );
    // The new leader reconciles: a new cluster gets its seed.
    ouroboros_e2e::TestNamespace::create(&c, "failover")
        .await?
        .run(|c, ns| async move {
            ouroboros_e2e::etcd_cluster::create(
                &c,
                &ns,
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: f}\nspec: {size: 1, pod: {antiAffinity: None}}\n",
            )
            .await?;
            ouroboros_e2e::etcd_cluster::wait(
                &c,
                &ns,
                "f",
                "the new leader to create the cluster",
                Duration::from_secs(120),
                ouroboros_e2e::etcd_cluster::converged(1, "3.6.16"),
            )
            .await?;
            Ok(())
        })
        .await
}
