//! Do no harm: members come back on their own data, an alarm is not lost quorum, and automatic
//! recovery never restores an old backup over data that still exists. Each test keeps a writer of
//! sequential keys running through the disruption and checks that every acknowledged write is still
//! there afterwards.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};
use ouroboros_crds::{ClusterPhase, EtcdClusterStatus, EtcdRestore, condition_types};
use ouroboros_e2e::{
    TestNamespace, backup_succeeded, client, container_restarts, etcd_at,
    etcd_cluster::{self, converged},
    events_with_reason, kill_container, minio_secret, s3, wait_for,
    writer::Writer,
};

const V: &str = "3.6.16";
const T: Duration = Duration::from_secs(180);
const SELECTOR: &str = "etcd.ouroboros.dev/cluster=d";

/// A 3-member cluster `d` with automatic recovery after `grace` and S3 backups; on claims when `pvc`.
fn manifest(pvc: bool, grace: &str) -> anyhow::Result<String> {
    Ok(format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: d}}\nspec:\n  size: 3\n  \
         pod: {{antiAffinity: None}}\n{}  recovery: {{policy: Automatic, gracePeriod: {grace}}}\n  backup:\n    \
         schedule: '0 0 1 1 *'\n    destination: {{s3: {{bucket: {}, prefix: e2e-durability/, endpoint: '{}', \
         forcePathStyle: true, credentialsSecret: minio}}}}\n",
        if pvc {
            "  storage: {persistentVolumeClaim: {size: 1Gi}}\n"
        } else {
            ""
        },
        s3::bucket()?,
        ouroboros_e2e::env("OUROBOROS_S3_ENDPOINT")?
    ))
}

/// An alarm request aimed at one member.
fn for_member(id: u64) -> AlarmOptions {
    let mut o = AlarmOptions::new();
    o.with_member(id);
    o
}

async fn status(c: &Client, ns: &str) -> anyhow::Result<EtcdClusterStatus> {
    Ok(Api::<ouroboros_crds::EtcdCluster>::namespaced(c.clone(), ns)
        .get("d")
        .await?
        .status
        .unwrap_or_default())
}

/// No EtcdRestore exists in the namespace: nothing restored over the cluster.
async fn no_restore(c: &Client, ns: &str) -> anyhow::Result<()> {
    let restores = Api::<EtcdRestore>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await?;
    ensure!(
        restores.items.is_empty(),
        "an EtcdRestore was created over intact data: {:?}",
        restores
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Deletes every member pod at once and waits until each member has a new pod (another UID) that is
/// Ready: only after that can the status and etcd describe the members after the event.
async fn delete_every_pod_and_wait(c: &Client, ns: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    let before = pods.list(&ListParams::default().labels(SELECTOR)).await?.items;
    let old: Vec<(String, String)> = before
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    pods.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default().labels(SELECTOR),
    )
    .await?;
    wait_for("every member back in a new, Ready pod", T, || {
        let (pods, old) = (pods.clone(), old.clone());
        async move {
            for (name, uid) in &old {
                let Some(p) = pods.get_opt(name).await? else {
                    return Ok(None);
                };
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if p.uid().as_ref() == Some(uid) || !ready {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await
}

#[tokio::test]
async fn every_pod_deleted_at_once_comes_back_on_its_claims_without_a_restore() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "allpods").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        etcd_cluster::create(&c, &ns, &manifest(true, "20s")?).await?;
        etcd_cluster::wait(&c, &ns, "d", "3 members", T, converged(3, V)).await?;
        // A backup exists, so automatic recovery would have something to restore if it misread this.
        backup_succeeded(&c, &ns, "d", "b").await?;
        let endpoint = etcd_cluster::client_endpoint(&c, &ns, "d").await?;
        let before = etcd_cluster::identity(&endpoint).await?;
        let writer = Writer::start(&endpoint, "/allpods").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;

        let lost_at = Instant::now();
        delete_every_pod_and_wait(&c, &ns).await?;
        etcd_cluster::wait(&c, &ns, "d", "3 members back on their claims", T, converged(3, V)).await?;
        let back_in = lost_at.elapsed();
        // Past the grace period too: recovery must never fire while the claims hold the data.
        tokio::time::sleep(Duration::from_secs(25).saturating_sub(back_in)).await;
        let (acked, failed) = writer.stop_and_verify().await?;
        println!("every pod deleted at once -> every member in a new Ready pod and Running after {back_in:?}; {acked} writes acknowledged, {failed} failed attempts, 0 lost");

        let after = etcd_cluster::identity(&endpoint).await?;
        ensure!(after.0 == before.0, "cluster ID {:x} -> {:x}", before.0, after.0);
        ensure!(after.1 == before.1, "members {:x?} -> {:x?}: replaced, not restarted", before.1, after.1);
        no_restore(&c, &ns).await?;
        ensure!(status(&c, &ns).await?.automatic_recovery.is_none(), "automatic recovery recorded a restore");
        let restarted = events_with_reason(&c, &ns, "MemberRestarted").await?;
        ensure!(!restarted.is_empty(), "no MemberRestarted Event");
        ensure!(events_with_reason(&c, &ns, "MemberRemoved").await?.is_empty(), "a member was removed");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_nospace_alarm_on_every_member_is_not_quorum_loss() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "nospace")
        .await?
        .run(|c, ns| async move {
            minio_secret(&c, &ns).await?;
            etcd_cluster::create(&c, &ns, &manifest(false, "10s")?).await?;
            etcd_cluster::wait(&c, &ns, "d", "3 members", T, converged(3, V)).await?;
            let mut e = etcd_at(&etcd_cluster::client_endpoint(&c, &ns, "d").await?).await?;
            e.put("/before-backup", "1", None).await?;
            backup_succeeded(&c, &ns, "d", "b").await?;
            e.put("/after-backup", "kept", None).await?;

            // NOSPACE on every member, through etcd's Maintenance Alarm API.
            let members = e.member_list().await?;
            // Condition times are whole seconds.
            let raised_at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())?;
            for m in members.members() {
                e.alarm(
                    AlarmAction::Activate,
                    AlarmType::Nospace,
                    Some(for_member(m.id())),
                )
                .await?;
            }
            // Never QuorumLost and never a restore, while the operator clears the alarm by itself
            // (the database is small: compacting and disarming is all it takes), for three times
            // the grace period.
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                let s = status(&c, &ns).await?;
                let lost = s
                    .conditions
                    .iter()
                    .find(|c| c.type_ == condition_types::QUORUM_LOST);
                ensure!(
                    lost.is_none_or(|l| l.status == "False"),
                    "an alarm read as lost quorum: {lost:?}"
                );
                ensure!(
                    s.phase != Some(ClusterPhase::QuorumLost),
                    "phase QuorumLost under an alarm"
                );
                no_restore(&c, &ns).await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            // The operator's own record that it disarmed (one Event series for all three), then a
            // status written since: a status from before the alarm also reads Alarm=False (the
            // operator looks at a converged cluster every 30 s, and the loop above may end before it
            // has looked).
            ouroboros_e2e::wait_for(
                "the operator to disarm the alarms",
                Duration::from_secs(90),
                || {
                    let c = c.clone();
                    let ns = ns.clone();
                    async move {
                        let disarmed = events_with_reason(&c, &ns, "AlarmDisarmed").await?;
                        Ok((!disarmed.is_empty()).then_some(()))
                    }
                },
            )
            .await?;
            etcd_cluster::wait(
                &c,
                &ns,
                "d",
                "the alarm cleared in status",
                Duration::from_secs(60),
                |_, s| {
                    s.phase == Some(ClusterPhase::Running)
                        && s.conditions.iter().any(|c| {
                            c.type_ == condition_types::ALARM
                                && c.status == "False"
                                && c.reason == "NoAlarm"
                                && c.last_transition_time.0 >= raised_at
                        })
                },
            )
            .await?;
            let alarm = events_with_reason(&c, &ns, "EtcdAlarm").await?;
            ensure!(
                alarm
                    .iter()
                    .any(|m| m.contains("NOSPACE") && m.contains("not lost quorum")),
                "no EtcdAlarm Event naming NOSPACE: {alarm:?}"
            );
            let got = e.get("/after-backup", None).await?;
            ensure!(
                got.kvs().first().map(|kv| kv.value()) == Some(&b"kept"[..]),
                "the write after the backup is gone"
            );
            e.put("/after-alarm", "1", None).await?;
            Ok(())
        })
        .await
}

/// The project's chaos run on a claim-backed cluster under a writer: SIGKILLs of member containers,
/// the operator's leader pod deleted, one member's claim lost, and every pod at once. Every
/// acknowledged write must be readable at the end. Prints the figures docs/reliability.md records.
#[tokio::test]
async fn chaos_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "chaos")
        .await?
        .run(|c, ns| async move {
            minio_secret(&c, &ns).await?;
            etcd_cluster::create(&c, &ns, &manifest(true, "20s")?).await?;
            etcd_cluster::wait(&c, &ns, "d", "3 members", T, converged(3, V)).await?;
            let endpoint = etcd_cluster::client_endpoint(&c, &ns, "d").await?;
            let writer = Writer::start(&endpoint, "/chaos").await?;
            let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
            let started = Instant::now();
            let mut kills = 0;

            // 1. SIGKILLs: each member's etcd twice, one at a time, the cluster healthy in between.
            for round in 0..2 {
                let names: Vec<String> = pods
                    .list(&ListParams::default().labels(SELECTOR))
                    .await?
                    .items
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect();
                for victim in names {
                    let before = container_restarts(&pods, &victim, "etcd").await?;
                    kill_container(&c, &ns, &victim, "etcd").await?;
                    kills += 1;
                    wait_for(&format!("{victim}'s etcd restarted"), T, || {
                        let (pods, victim) = (pods.clone(), victim.clone());
                        async move {
                            Ok((container_restarts(&pods, &victim, "etcd").await? > before).then_some(()))
                        }
                    })
                    .await?;
                    etcd_cluster::wait(
                        &c,
                        &ns,
                        "d",
                        &format!("healthy after kill {round}/{victim}"),
                        T,
                        converged(3, V),
                    )
                    .await?;
                }
            }
            // 2. The operator's leader pod is deleted; the other replica takes over.
            let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
                Api::namespaced(c.clone(), "ouroboros-system");
            let holder = leases
                .get("ouroboros-etcd-operator")
                .await?
                .spec
                .and_then(|s| s.holder_identity)
                .context("no operator leader")?;
            Api::<Pod>::namespaced(c.clone(), "ouroboros-system")
                .delete(&holder, &DeleteParams::default())
                .await?;
            // 3. One member loses its claim (and so its data): it is replaced from the majority.
            let before_loss = status(&c, &ns).await?;
            let follower = before_loss
                .members
                .iter()
                .find(|m| !m.is_leader)
                .context("no follower")?;
            let (victim, victim_id) = (follower.name.clone(), follower.id.clone());
            Api::<PersistentVolumeClaim>::namespaced(c.clone(), &ns)
                .delete(&format!("{victim}-data"), &DeleteParams::default())
                .await?;
            pods.delete(&victim, &DeleteParams::default().grace_period(0))
                .await?;
            // By member ID: once the old pod and claim are gone, the replacement may get the same
            // name (ordinals are recorded only for self-hosted clusters).
            let conv = converged(3, V);
            etcd_cluster::wait(&c, &ns, "d", "the lost member replaced", T, move |cl, s| {
                conv(cl, s) && !s.members.iter().any(|m| m.id == victim_id)
            })
            .await?;
            // 4. Every pod at once.
            let ids = etcd_cluster::identity(&endpoint).await?;
            delete_every_pod_and_wait(&c, &ns).await?;
            etcd_cluster::wait(&c, &ns, "d", "3 members after every pod went", T, converged(3, V)).await?;
            let after = etcd_cluster::identity(&endpoint).await?;
            ensure!(
                after == ids,
                "every pod at once replaced members or the cluster: {ids:x?} -> {after:x?}"
            );

            let (acked, failed) = writer.stop_and_verify().await?;
            no_restore(&c, &ns).await?;
            println!(
                "chaos: {kills} SIGKILLs, operator leader deleted, 1 claim lost, every pod deleted once; \
             {acked} writes acknowledged, {failed} failed attempts, 0 lost, {:?}",
                started.elapsed()
            );
            Ok(())
        })
        .await
}
