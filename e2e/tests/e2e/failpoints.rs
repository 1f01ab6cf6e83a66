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
    TestNamespace, client, etcd_at,
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

/// Runs `test` in a fresh namespace with the operator built with failpoints and `failpoints` armed,
/// then puts the production operator back whatever happened.
async fn with_failpoints<F, Fut>(failpoints: &str, prefix: &str, test: F) -> anyhow::Result<()>
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let c = client().await?;
    set_operator("-failpoints", Some(failpoints))?;
    let result = TestNamespace::create(&c, prefix).await?.run(test).await;
    set_operator("", None).context("restoring the operator")?;
    result
}

#[tokio::test]
async fn operator_killed_between_membership_steps_converges() -> anyhow::Result<()> {
    with_failpoints(FAILPOINTS, "failpoints", |c, ns| async move {
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
    .await
}

/// Every step of a restore survives an operator crash right after it: the hold, deleting the old
/// pods, creating the seed pod, lifting the hold, and deleting the old claims. The restore still
/// succeeds with exactly the backed-up keys and one seed.
const RESTORE_FAILPOINTS: &str = "restore-after-fetch-job,restore-after-hold,restore-after-old-pods-deleted,\
                                  restore-after-seed-pod,restore-after-hold-lifted,restore-after-old-claims-deleted";

#[tokio::test]
async fn operator_killed_at_every_restore_step_still_restores() -> anyhow::Result<()> {
    use etcd_client::GetOptions;
    use kube::api::PostParams;
    use ouroboros_crds::{EtcdRestore, RestorePhase};
    use ouroboros_e2e::{backup_succeeded, restore_finished};

    with_failpoints(RESTORE_FAILPOINTS, "fp-restore", |c, ns| async move {
            let before = operator_restarts(&c).await?;
            let t = Duration::from_secs(300);
            etcd_cluster::create(
                &c,
                &ns,
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: fr}\nspec: {size: 2, pod: {antiAffinity: None}, storage: {persistentVolumeClaim: {size: 1Gi}}}\n",
            )
            .await?;
            etcd_cluster::wait(&c, &ns, "fr", "2 members", t, converged(2, "3.6.16")).await?;
            let mut e = etcd_at(&etcd_cluster::client_endpoint(&c, &ns, "fr").await?).await?;
            for i in 0..20 {
                e.put(format!("/fr/{i:02}"), "kept", None).await?;
            }
            backup_succeeded(&c, &ns, "fr", "b").await?;
            for i in 20..30 {
                e.put(format!("/fr/{i:02}"), "after the backup", None).await?;
            }
            drop(e);

            let r: EtcdRestore = serde_norway::from_str(
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {name: r}\nspec: {clusterName: fr, source: {backupName: b}}\n",
            )?;
            let restores: Api<EtcdRestore> = Api::namespaced(c.clone(), &ns);
            restores.create(&PostParams::default(), &r).await?;
            let s = restore_finished(&c, &ns, "r", Duration::from_secs(600)).await?;
            ensure!(s.phase == Some(RestorePhase::Succeeded), "restore failed: {:?}", s.reason);
            let st = etcd_cluster::wait(&c, &ns, "fr", "2 restored members", t, converged(2, "3.6.16")).await?;
            // One seed: the restored members are the seed and one learner grown from it, both new.
            let names: Vec<&str> = st.members.iter().map(|m| m.name.as_str()).collect();
            ensure!(!names.contains(&"fr-0") && !names.contains(&"fr-1"), "old members survived: {names:?}");
            let mut e = etcd_at(&etcd_cluster::client_endpoint(&c, &ns, "fr").await?).await?;
            let n = e.get("/fr/", Some(GetOptions::new().with_prefix().with_count_only())).await?.count();
            ensure!(n == 20, "restored {n} keys, want the 20 backed up");
            let cl = Api::<EtcdCluster>::namespaced(c.clone(), &ns).get("fr").await?;
            ensure!(
                !cl.metadata.annotations.unwrap_or_default().contains_key("etcd.ouroboros.dev/restore-in-progress"),
                "the cluster was left held"
            );
            let claims = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(c.clone(), &ns)
                .list(&ListParams::default())
                .await?;
            // The restored members' claims remain (and the default backup claim); the old members' and
            // the snapshot's are deleted (possibly still terminating while the fetch pod goes).
            let left: Vec<String> = claims
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name.clone())
                .filter(|n| n.ends_with("-data") || n.ends_with("-snapshot"))
                .collect();
            let mut want: Vec<String> = names.iter().map(|m| format!("{m}-data")).collect();
            want.sort();
            ensure!(left == want, "claims left after the restore: {left:?}, want {want:?}");
            let restarts = operator_restarts(&c).await? - before;
            eprintln!("restore through {restarts} operator restarts");
            ensure!(restarts >= 3, "only {restarts} operator restarts: the restore failpoints did not fire");
            Ok(())
    })
    .await
}
