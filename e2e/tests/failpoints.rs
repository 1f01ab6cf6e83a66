//! Restart-proof membership changes: an operator built with failpoints exits right after `member add`
//! (before the pod exists), right after `member promote`, and right after `member remove` (before the
//! pod is deleted). The next run, in a restarted container or on the other replica, must converge with
//! no stray member or pod and no acknowledged write lost.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use ouroboros_crds::EtcdCluster;
use ouroboros_e2e::{
    TestNamespace, client,
    etcd_cluster::{self, converged},
    kubectl,
    writer::Writer,
};

const NS: &str = "ouroboros-system";
const FAILPOINTS: &str = "after-member-add,after-promote,after-member-remove";

fn set_operator(image_suffix: &str, failpoints: Option<&str>) -> anyhow::Result<()> {
    let image = format!(
        "operator=localhost/ouroboros/etcd-operator:{}{image_suffix}",
        env!("CARGO_PKG_VERSION")
    );
    let out = kubectl(&["-n", NS, "set", "image", "deployment/etcd-operator", &image])?;
    ensure!(out.success, "set image: {}", out.stderr);
    let env = match failpoints {
        Some(f) => format!("OUROBOROS_FAILPOINTS={f}"),
        None => "OUROBOROS_FAILPOINTS-".to_owned(),
    };
    let out = kubectl(&["-n", NS, "set", "env", "deployment/etcd-operator", &env])?;
    ensure!(out.success, "set env: {}", out.stderr);
    let out = kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/etcd-operator",
        "--timeout=120s",
    ])?;
    ensure!(out.success, "rollout: {}", out.stderr);
    Ok(())
}

async fn operator_restarts(c: &kube::Client) -> anyhow::Result<i32> {
    let pods = Api::<Pod>::namespaced(c.clone(), NS)
        .list(&ListParams::default().labels("app.kubernetes.io/name=etcd-operator"))
        .await?;
    Ok(pods
        .items
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum())
}

#[tokio::test]
async fn operator_killed_between_membership_steps_converges() -> anyhow::Result<()> {
    let c = client().await?;
    set_operator("-failpoints", Some(FAILPOINTS))?;
    let result = TestNamespace::create(&c, "failpoints")
        .await?
        .run(|c, ns| async move {
            let t = Duration::from_secs(300);
            etcd_cluster::create(
                &c,
                &ns,
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: fp}\nspec: {size: 1, pod: {antiAffinity: None}}\n",
            )
            .await?;
            etcd_cluster::wait(&c, &ns, "fp", "the seed", t, converged(1, "3.6.16")).await?;
            let writer = Writer::start(&etcd_cluster::client_endpoint(&c, &ns, "fp").await?, "failpoints").await?;
            let api: Api<EtcdCluster> = Api::namespaced(c.clone(), &ns);
            for size in [3, 1] {
                api.patch("fp", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"size": size}})))
                    .await?;
                etcd_cluster::wait(&c, &ns, "fp", &format!("{size} members despite crashes"), t, converged(size, "3.6.16"))
                    .await?;
                // No stray pods: exactly one pod per member.
                let pods = Api::<Pod>::namespaced(c.clone(), &ns).list(&ListParams::default()).await?;
                let live: Vec<String> = pods
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                ensure!(live.len() == size, "{} live pods for {size} members: {live:?}", live.len());
            }
            let (acked, _) = writer.stop_and_verify().await?;
            eprintln!("failpoints: {acked} writes acknowledged and verified");
            let restarts = operator_restarts(&c).await?;
            ensure!(restarts >= 1, "no operator container restarted: the failpoints never fired");
            eprintln!("operator restarts while converging: {restarts}");
            Ok(())
        })
        .await;
    // Put the production operator back whatever happened.
    set_operator("", None).context("restoring the operator")?;
    result
}
