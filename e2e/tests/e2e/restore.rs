//! Disaster recovery on the real cluster: a corrupted archive is refused with the old cluster intact;
//! then every member is destroyed (pods and claims) and an EtcdRestore brings back exactly the
//! backed-up keys, with revisions above any seen before and old revisions reported as compacted.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context as _, ensure};
use etcd_client::{GetOptions, WatchOptions};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use ouroboros_crds::{
    EtcdBackup, EtcdBackupStatus, EtcdCluster, EtcdRestore, EtcdRestoreStatus, RestorePhase,
};
use ouroboros_e2e::{
    TestNamespace, backup_succeeded, client, env, etcd_at,
    etcd_cluster::{self, converged},
    member_uids, minio_secret, restore_finished, s3, wait_for,
};

async fn backup(c: &Client, ns: &str, name: &str) -> anyhow::Result<EtcdBackupStatus> {
    backup_succeeded(c, ns, "r", name).await
}

async fn restore(c: &Client, ns: &str, name: &str, backup: &str) -> anyhow::Result<EtcdRestoreStatus> {
    let r: EtcdRestore = serde_norway::from_str(&format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {{name: {name}}}\nspec: {{clusterName: r, source: {{backupName: {backup}}}}}\n"
    ))?;
    let api: Api<EtcdRestore> = Api::namespaced(c.clone(), ns);
    api.create(&PostParams::default(), &r).await?;
    restore_finished(c, ns, name, Duration::from_secs(360)).await
}

/// A client of `cluster`'s etcd, through its client Service, once it answers.
async fn etcd(c: &Client, ns: &str, cluster: &str) -> anyhow::Result<etcd_client::Client> {
    etcd_at(&etcd_cluster::client_endpoint(c, ns, cluster).await?).await
}

#[tokio::test]
async fn restore_after_losing_every_member_brings_back_exactly_the_backup() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "restore").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: r}}\nspec:\n  size: 3\n  pod: {{antiAffinity: None}}\n  storage: {{persistentVolumeClaim: {{size: 1Gi}}}}\n  backup:\n    schedule: '0 0 1 1 *'\n    compression: {{codec: zstd}}\n    destination: {{s3: {{bucket: {}, prefix: e2e-restore/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        etcd_cluster::create(&c, &ns, &yaml).await?;
        etcd_cluster::wait(&c, &ns, "r", "3 members", Duration::from_secs(180), converged(3, "3.6.16")).await?;
        let mut e = etcd(&c, &ns, "r").await?;
        for i in 0..50 {
            e.put(format!("/r/{i:03}"), format!("v{i}"), None).await?;
        }

        // A corrupted archive is refused, and the cluster is not touched.
        // This cluster's archives are zstd (the others' gzip): every step below reads them.
        let b0 = backup(&c, &ns, "b0").await?;
        ensure!(b0.location.as_deref().is_some_and(|l| l.ends_with(".tar.zst")), "location {:?}", b0.location);
        let key = b0.location.clone().unwrap().trim_start_matches(&format!("s3://{}/", s3::bucket()?)).to_owned();
        let tmp = std::env::temp_dir().join(format!("ouroboros-{ns}-b0.tar.gz"));
        s3::download(&key, &tmp)?;
        let mut bytes = std::fs::read(&tmp)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&tmp, &bytes)?;
        s3::upload(&key, &tmp)?;
        let before = member_uids(&c, &ns, "r").await?;
        let s = restore(&c, &ns, "from-corrupted", "b0").await?;
        ensure!(s.phase == Some(RestorePhase::Failed), "a corrupted archive restored");
        let reason = s.reason.unwrap_or_default();
        ensure!(reason.contains("did not verify") && reason.contains("not touched"), "reason: {reason}");
        ensure!(member_uids(&c, &ns, "r").await? == before, "the old cluster's pods changed");
        let cl = Api::<EtcdCluster>::namespaced(c.clone(), &ns).get("r").await?;
        ensure!(!cl.annotations().contains_key("etcd.ouroboros.dev/restore-in-progress"), "cluster left held");

        // The real backup, then more writes that the restore must not bring back.
        let b1 = backup(&c, &ns, "b1").await?;
        let mut last_revision = 0;
        for i in 50..100 {
            let resp = e.put(format!("/r/{i:03}"), format!("v{i}"), None).await?;
            last_revision = resp.header().map_or(0, |h| h.revision());
        }
        ensure!(last_revision > b1.revision.unwrap_or(0), "writes after the backup did not move the revision");

        // Every member is destroyed: claims and pods.
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
        for p in pvcs.list(&ListParams::default().labels("etcd.ouroboros.dev/cluster=r")).await?.items {
            if p.name_any().ends_with("-data") {
                pvcs.delete(&p.name_any(), &DeleteParams::default()).await?;
            }
        }
        let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
        pods.delete_collection(&DeleteParams::default().grace_period(0), &ListParams::default().labels("etcd.ouroboros.dev/cluster=r"))
            .await?;
        etcd_cluster::wait(&c, &ns, "r", "QuorumLost", Duration::from_secs(120), |_, s| {
            s.phase == Some(ouroboros_crds::ClusterPhase::QuorumLost)
        })
        .await?;

        let s = restore(&c, &ns, "from-b1", "b1").await?;
        ensure!(s.phase == Some(RestorePhase::Succeeded), "restore failed: {:?}", s.reason);
        let st = etcd_cluster::wait(&c, &ns, "r", "3 restored members", Duration::from_secs(180), converged(3, "3.6.16")).await?;
        ensure!(st.restored_from.as_ref().is_some_and(|r| r.name == "b1"), "restoredFrom: {:?}", st.restored_from);
        // From S3 all three restore and start together, as etcd's disaster-recovery procedure does:
        // every member of the restored cluster is one of them (none was grown as a learner).
        ensure!(s.restored_members.len() == 3, "restored members: {:?}", s.restored_members);
        let running: Vec<&str> = st.members.iter().map(|m| m.name.as_str()).collect();
        ensure!(
            running.iter().all(|m| s.restored_members.iter().any(|r| r == m)),
            "members {running:?} are not the restored ones {:?}",
            s.restored_members
        );

        let mut e = etcd(&c, &ns, "r").await?;
        let got = e.get("/r/", Some(GetOptions::new().with_prefix())).await?;
        let keys: Vec<String> = got.kvs().iter().map(|kv| kv.key_str().unwrap_or_default().to_owned()).collect();
        let want: Vec<String> = (0..50).map(|i| format!("/r/{i:03}")).collect();
        ensure!(keys == want, "restored keys differ: {} keys, first {:?}, last {:?}", keys.len(), keys.first(), keys.last());
        let resp = e.put("/r/after", "x", None).await?;
        let now = resp.header().map_or(0, |h| h.revision());
        ensure!(now > last_revision, "revision after the restore ({now}) is not above the last one before ({last_revision})");

        // A watch from a revision clients saw before the disaster is told it was compacted.
        let mut stream = e.watch("/r/", Some(WatchOptions::new().with_prefix().with_start_revision(last_revision))).await?;
        // The first answer confirms the watch; the next says it was compacted (never events).
        let compacted = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = stream.message().await?.context("the watch closed without an answer")?;
                ensure!(m.events().is_empty(), "an old-revision watch got stale events: {:?}", m.events());
                if m.compact_revision() > 0 || m.canceled() {
                    return Ok::<_, anyhow::Error>(m.compact_revision());
                }
            }
        })
        .await??;
        ensure!(compacted > last_revision, "compacted at {compacted}, not above the old revision {last_revision}");

        // The cluster is deleted outright, and its EtcdBackup objects with it; a restore that names the
        // archive in its store, with a template, brings it back under its name.
        Api::<EtcdCluster>::namespaced(c.clone(), &ns).delete("r", &DeleteParams::default()).await?;
        let b1_key = b1.location.clone().unwrap().trim_start_matches(&format!("s3://{}/", s3::bucket()?)).to_owned();
        Api::<EtcdBackup>::namespaced(c.clone(), &ns).delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
        let clusters: Api<EtcdCluster> = Api::namespaced(c.clone(), &ns);
        wait_for("the cluster to be gone", Duration::from_secs(120), || {
            let clusters = clusters.clone();
            async move { Ok(clusters.get_opt("r").await?.is_none().then_some(())) }
        })
        .await?;
        let r: EtcdRestore = serde_norway::from_str(&format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {{name: recreate}}\n\
             spec:\n  clusterName: r\n  source: {{object: {{destination: {{s3: {{bucket: {}, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}, key: '{}'}}}}\n  clusterTemplate:\n    size: 1\n    backup:\n      schedule: '0 0 1 1 *'\n      destination: {{s3: {{bucket: {}, prefix: e2e-restore/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?,
            b1_key,
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        ))?;
        let restores: Api<EtcdRestore> = Api::namespaced(c.clone(), &ns);
        restores.create(&PostParams::default(), &r).await?;
        let s = restore_finished(&c, &ns, "recreate", Duration::from_secs(300)).await?;
        ensure!(s.phase == Some(RestorePhase::Succeeded), "recreating restore failed: {:?}", s.reason);
        // No EtcdBackup described the archive: the revision came from its verified manifest.
        ensure!(s.restored_revision == b1.revision, "restored revision {:?}, the archive's is {:?}", s.restored_revision, b1.revision);
        etcd_cluster::wait(&c, &ns, "r", "the recreated member", Duration::from_secs(120), converged(1, "3.6.16")).await?;
        let mut e = etcd(&c, &ns, "r").await?;
        let n = e.get("/r/", Some(GetOptions::new().with_prefix().with_count_only())).await?.count();
        ensure!(n == 50, "the recreated cluster holds {n} keys, not the 50 backed up");
        Ok(())
    })
    .await
}

/// `spec.recovery.policy: Automatic`: every member is lost (emptyDir data goes with the pods); after
/// the grace period the operator restores the newest backup by itself and records what was lost.
#[tokio::test]
async fn automatic_recovery_restores_the_newest_backup_after_the_grace_period() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "autorecover").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: r}}\nspec:\n  size: 3\n  pod: {{antiAffinity: None}}\n  recovery: {{policy: Automatic, gracePeriod: 20s}}\n  backup:\n    schedule: '0 0 1 1 *'\n    destination: {{s3: {{bucket: {}, prefix: e2e-autorecover/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        etcd_cluster::create(&c, &ns, &yaml).await?;
        etcd_cluster::wait(&c, &ns, "r", "3 members", Duration::from_secs(180), converged(3, "3.6.16")).await?;
        let mut e = etcd(&c, &ns, "r").await?;
        for i in 0..30 {
            e.put(format!("/a/{i:03}"), format!("v{i}"), None).await?;
        }
        let b = backup(&c, &ns, "b").await?;
        let backed_up = b.revision.unwrap_or(0);
        for i in 30..50 {
            e.put(format!("/a/{i:03}"), "after the backup", None).await?;
        }
        // The operator records the newest revision at most once a minute; wait for one past the backup.
        let seen = etcd_cluster::wait(&c, &ns, "r", "a revision past the backup recorded", Duration::from_secs(150), move |_, s| {
            s.last_seen_revision.is_some_and(|r| r > backed_up)
        })
        .await?
        .last_seen_revision
        .unwrap_or(0);

        // Every member goes at once, data and all.
        let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
        let lost_at = std::time::Instant::now();
        pods.delete_collection(&DeleteParams::default().grace_period(0), &ListParams::default().labels("etcd.ouroboros.dev/cluster=r"))
            .await?;
        let st = etcd_cluster::wait(&c, &ns, "r", "an automatic restore", Duration::from_secs(120), |_, s| {
            s.automatic_recovery.is_some()
        })
        .await?;
        let record = st.automatic_recovery.clone().context("no record")?;
        let waited = lost_at.elapsed();
        ensure!(waited >= Duration::from_secs(20), "the restore started {waited:?} after the loss, inside the grace period");
        ensure!(record.backup_name == "b" && record.backup_revision == backed_up, "restored from: {record:?}");
        ensure!(record.last_seen_revision == Some(seen), "last seen: {record:?}, status said {seen}");
        ensure!(record.revisions_lost == Some(seen - backed_up), "revisions lost: {record:?}");

        let restores: Api<EtcdRestore> = Api::namespaced(c.clone(), &ns);
        let s = restore_finished(&c, &ns, &record.restore_name, Duration::from_secs(360)).await?;
        ensure!(s.phase == Some(RestorePhase::Succeeded), "automatic restore failed: {:?}", s.reason);
        let st = etcd_cluster::wait(&c, &ns, "r", "3 restored members", Duration::from_secs(180), converged(3, "3.6.16")).await?;
        ensure!(st.restored_from.as_ref().is_some_and(|r| r.name == "b"), "restoredFrom: {:?}", st.restored_from);
        let quorum = st.conditions.iter().find(|c| c.type_ == "QuorumLost").context("no QuorumLost condition")?;
        ensure!(quorum.status == "False", "QuorumLost still {}: {}", quorum.status, quorum.message);

        let mut e = etcd(&c, &ns, "r").await?;
        let got = e.get("/a/", Some(GetOptions::new().with_prefix())).await?;
        let keys: Vec<String> = got.kvs().iter().map(|kv| kv.key_str().unwrap_or_default().to_owned()).collect();
        let want: Vec<String> = (0..30).map(|i| format!("/a/{i:03}")).collect();
        ensure!(keys == want, "restored {} keys, want the 30 backed up", keys.len());
        // Exactly one restore answered the loss.
        let all = restores.list(&ListParams::default()).await?;
        ensure!(all.items.len() == 1, "{} EtcdRestores were created", all.items.len());
        Ok(())
    })
    .await
}

/// `latest` follows the cluster's lineage, and two restores created together never both run: a
/// cluster `l` is backed up at a high revision, deleted and created again under the same name, backed
/// up at a low revision; two EtcdRestores with `latest: true` are then created back to back. Exactly
/// one runs, from the new cluster's backup (not the old cluster's higher revision); the other fails
/// naming it and changes nothing.
#[tokio::test]
async fn latest_keeps_to_the_lineage_and_two_restores_never_both_run() -> anyhow::Result<()> {
    use ouroboros_crds::EtcdBackup;
    let c = client().await?;
    TestNamespace::create(&c, "lineage").await?.run(|c, ns| async move {
        let yaml = "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: l}\nspec:\n  size: 1\n  storage: {persistentVolumeClaim: {size: 1Gi}}\n";

        // The first cluster named `l`: 40 writes, backed up.
        let first = etcd_cluster::create(&c, &ns, yaml).await?;
        etcd_cluster::wait(&c, &ns, "l", "1 member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        let mut e = etcd(&c, &ns, "l").await?;
        for i in 0..40 {
            e.put(format!("/gen1/{i:02}"), "x", None).await?;
        }
        let gen1 = backup_succeeded(&c, &ns, "l", "gen1").await?;
        ensure!(
            gen1.cluster_uid == first.uid() && gen1.cluster_id.is_some(),
            "gen1 records no lineage: uid {:?}, cluster ID {:?}",
            gen1.cluster_uid,
            gen1.cluster_id
        );

        // Deleted; once its member's claim is gone, a new cluster of the same name.
        Api::<EtcdCluster>::namespaced(c.clone(), &ns).delete("l", &DeleteParams::default()).await?;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
        wait_for("the first l's data claim to be gone", Duration::from_secs(120), || {
            let claims = claims.clone();
            async move {
                let left = claims.list(&ListParams::default()).await?.items;
                Ok((!left.iter().any(|p| p.name_any().ends_with("-data"))).then_some(()))
            }
        })
        .await?;
        let second = etcd_cluster::create(&c, &ns, yaml).await?;
        etcd_cluster::wait(&c, &ns, "l", "1 member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        let mut e = etcd(&c, &ns, "l").await?;
        e.put("/gen2/only", "x", None).await?;
        let gen2 = backup_succeeded(&c, &ns, "l", "gen2").await?;
        ensure!(
            gen2.revision.unwrap_or(0) < gen1.revision.unwrap_or(0),
            "the test needs the old cluster's backup at the higher revision: gen1 {:?}, gen2 {:?}",
            gen1.revision,
            gen2.revision
        );
        ensure!(gen2.cluster_uid == second.uid(), "gen2 cluster uid {:?}", gen2.cluster_uid);

        // Two restores at once.
        let api: Api<EtcdRestore> = Api::namespaced(c.clone(), &ns);
        for name in ["race-a", "race-b"] {
            let r: EtcdRestore = serde_norway::from_str(&format!(
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {{name: {name}}}\nspec: {{clusterName: l, source: {{latest: true}}}}\n"
            ))?;
            api.create(&PostParams::default(), &r).await?;
        }
        let a = restore_finished(&c, &ns, "race-a", Duration::from_secs(360)).await?;
        let b = restore_finished(&c, &ns, "race-b", Duration::from_secs(360)).await?;
        let outcomes = [("race-a", &a), ("race-b", &b)];
        let won: Vec<_> = outcomes.iter().filter(|(_, s)| s.phase == Some(RestorePhase::Succeeded)).collect();
        ensure!(
            won.len() == 1,
            "exactly one restore must run: race-a {:?} ({:?}), race-b {:?} ({:?})",
            a.phase, a.reason, b.phase, b.reason
        );
        let (winner, w) = won[0];
        let (_, lost) = outcomes.iter().find(|(n, _)| n != winner).context("the other restore")?;
        let reason = lost.reason.clone().unwrap_or_default();
        ensure!(
            lost.phase == Some(RestorePhase::Failed) && reason.contains(&format!("EtcdRestore {winner}")) && reason.contains("did not touch"),
            "the losing restore's reason does not name the winner: {reason}"
        );
        ensure!(w.backup_name.as_deref() == Some("gen2"), "latest chose {:?}, not this cluster's gen2", w.backup_name);

        // The cluster holds the new cluster's data only.
        etcd_cluster::wait(&c, &ns, "l", "1 restored member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        let mut e = etcd(&c, &ns, "l").await?;
        let gen2_keys = e.get("/gen2/", Some(GetOptions::new().with_prefix())).await?.kvs().len();
        let gen1_keys = e.get("/gen1/", Some(GetOptions::new().with_prefix())).await?.kvs().len();
        ensure!((gen1_keys, gen2_keys) == (0, 1), "after the restore: {gen1_keys} gen1 keys, {gen2_keys} gen2 keys");
        let backups = Api::<EtcdBackup>::namespaced(c.clone(), &ns).list(&ListParams::default()).await?;
        ensure!(backups.items.len() == 2, "unexpected backups: {}", backups.items.len());
        Ok(())
    })
    .await
}

/// The claimRef that keeps a local volume from every claim while a test needs a node full.
const RESERVED_FOR: &str = "reserved-by-e2e";

/// Reserves every Available local volume except one on `keep_on` (pre-bound to a claim that never
/// exists, which the scheduler will not bind anything else to); returns the names reserved. When it
/// fails part way, what it reserved is handed back before the error is returned.
async fn reserve_all_volumes_but_one(c: &Client, ns: &str, keep_on: &str) -> anyhow::Result<Vec<String>> {
    let mut reserved = Vec::new();
    match reserve_into(c, ns, keep_on, &mut reserved).await {
        Ok(()) => Ok(reserved),
        Err(e) => {
            release_volumes(c, &reserved).await?;
            Err(e)
        }
    }
}

async fn reserve_into(c: &Client, ns: &str, keep_on: &str, reserved: &mut Vec<String>) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::api::{Patch, PatchParams};
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    let mut kept = false;
    for pv in pvs
        .list(&ListParams::default().labels("ouroboros.dev/e2e=true"))
        .await?
        .items
    {
        let available = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available")
            && pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none());
        if !available {
            continue;
        }
        if !kept && node_of_volume(&pv).as_deref() == Some(keep_on) {
            kept = true;
            continue;
        }
        let patch = serde_json::json!({"spec": {"claimRef": {"namespace": ns, "name": RESERVED_FOR}}});
        pvs.patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        reserved.push(pv.name_any());
    }
    ensure!(kept, "no Available local volume on {keep_on} for the snapshot");
    Ok(())
}

/// Hands back the volumes `reserve_all_volumes_but_one` took (only those still pre-bound by it).
async fn release_volumes(c: &Client, names: &[String]) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::api::{Patch, PatchParams};
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    for name in names {
        let Some(pv) = pvs.get_opt(name).await? else {
            continue;
        };
        let ours = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.name.as_deref())
            == Some(RESERVED_FOR);
        if ours {
            let patch = serde_json::json!([{"op": "remove", "path": "/spec/claimRef"}]);
            pvs.patch(
                name,
                &PatchParams::default(),
                &Patch::<()>::Json(serde_json::from_value(patch)?),
            )
            .await?;
        }
    }
    Ok(())
}

fn node_of_volume(pv: &k8s_openapi::api::core::v1::PersistentVolume) -> Option<String> {
    pv.spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms
        .first()?
        .match_expressions
        .as_ref()?
        .first()?
        .values
        .as_ref()?
        .first()
        .cloned()
}

/// On node-local storage the seed runs where the verified snapshot's claim is, and needs a second
/// volume there. With that node full, the restore must say so (quoting the scheduler) and wait with
/// nothing undone; once a volume frees, the seed starts and the restore brings the data back.
#[tokio::test]
async fn a_seed_with_no_room_on_the_snapshots_node_waits_saying_why_then_restores() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::PersistentVolume;
    let c = client().await?;
    TestNamespace::create(&c, "seed-room").await?.run(|c, ns| async move {
        let yaml = "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: r}\nspec:\n  size: 1\n  storage: {persistentVolumeClaim: {size: 1Gi}}\n";
        etcd_cluster::create(&c, &ns, yaml).await?;
        etcd_cluster::wait(&c, &ns, "r", "1 member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        let mut e = etcd(&c, &ns, "r").await?;
        e.put("/kept", "yes", None).await?;
        backup(&c, &ns, "b").await?;
        // The fetch mounts the backups claim (file destination), so the snapshot lands on its node.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
        let backups_pv = claims.get("r-backups").await?.spec.and_then(|s| s.volume_name).context("r-backups is not bound")?;
        let node = node_of_volume(&Api::<PersistentVolume>::all(c.clone()).get(&backups_pv).await?)
            .context("the backups volume has no node")?;
        let reserved = reserve_all_volumes_but_one(&c, &ns, &node).await?;
        let outcome = async {
            let r: EtcdRestore = serde_norway::from_str(
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {name: full}\nspec: {clusterName: r, source: {backupName: b}}\n",
            )?;
            let api: Api<EtcdRestore> = Api::namespaced(c.clone(), &ns);
            api.create(&PostParams::default(), &r).await?;
            let why = wait_for("the restore to say its seed cannot be placed", Duration::from_secs(240), || {
                let api = api.clone();
                async move {
                    let s = api.get("full").await?.status.unwrap_or_default();
                    ensure!(s.phase != Some(RestorePhase::Failed), "the restore failed: {:?}", s.reason);
                    Ok(s.reason.filter(|r| r.contains("is not scheduled yet")))
                }
            })
            .await?;
            ensure!(why.contains("full-snapshot") && why.contains("persistent volumes"), "the reason does not name the claim and the scheduler's cause: {why}");
            let warned = ouroboros_e2e::events_with_reason(&c, &ns, "SeedUnschedulable").await?;
            ensure!(!warned.is_empty(), "no SeedUnschedulable event");
            ensure!(claims.get_opt("r-0-data").await?.is_some(), "the old member's claim was not kept while the seed waits");
            eprintln!("while the node is full: {why}");
            release_volumes(&c, &reserved).await?;
            let s = restore_finished(&c, &ns, "full", Duration::from_secs(300)).await?;
            ensure!(s.phase == Some(RestorePhase::Succeeded), "after a volume freed: {:?} ({:?})", s.phase, s.reason);
            let mut e = etcd(&c, &ns, "r").await?;
            let got = e.get("/kept", None).await?;
            ensure!(got.kvs().first().map(|kv| kv.value()) == Some(b"yes".as_slice()), "the restored cluster lost /kept");
            Ok(())
        }
        .await;
        // Always handed back: later tests need the pool.
        release_volumes(&c, &reserved).await?;
        outcome
    })
    .await
}
