//! Restores to a point of a continuous backup's delta chain, on the real cluster. Under a writer, a
//! full backup and then continuous deltas; every member is destroyed (pods and claims) while the
//! writer runs. Then, from what is left in MinIO:
//! - a restore to the end of the chain holds every write acknowledged more than one period (and
//!   the second a chunk's flush may take) before the disaster;
//! - a restore to a chosen revision holds exactly the writes up to it and none after;
//! - a restore to a chosen time (in a pause between two writers) holds exactly the writes before it;
//! - with a chunk of the chain removed, a restore is refused with a reason naming the hole before
//!   the cluster is touched.
//!
//! One member: the point is the chain and the replay; restoring and growing several members is the
//! restore tests' subject.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, ensure};
use etcd_client::GetOptions;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use ouroboros_crds::{ContinuousStatus, EtcdRestore, EtcdRestoreStatus, RestorePhase};
use ouroboros_e2e::{
    TestNamespace, backup_succeeded, client, env, etcd_at,
    etcd_cluster::{self, converged},
    member_uids, minio_secret, restore_finished, s3, wait_for,
    writer::Writer,
};

const CLUSTER: &str = "p";
/// `spec.backup.continuous.period`.
const PERIOD: Duration = Duration::from_secs(2);

fn manifest() -> anyhow::Result<String> {
    Ok(format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: {CLUSTER}}}\n\
         spec:\n  size: 1\n  storage: {{persistentVolumeClaim: {{size: 1Gi}}}}\n\
         \x20 backup:\n    schedule: '0 0 1 1 *'\n    drills: false\n    continuous: {{period: {}s}}\n\
         \x20   destination: {{s3: {{bucket: {}, prefix: e2e-pitr/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
        PERIOD.as_secs(),
        s3::bucket()?,
        env("OUROBOROS_S3_ENDPOINT")?
    ))
}

async fn continuous(c: &Client, ns: &str) -> anyhow::Result<Option<ContinuousStatus>> {
    etcd_cluster::continuous(c, ns, CLUSTER).await
}

/// Creates an EtcdRestore of the cluster with `source` (YAML flow mapping) and waits for its end.
async fn restore(c: &Client, ns: &str, name: &str, source: &str) -> anyhow::Result<EtcdRestoreStatus> {
    let r: EtcdRestore = serde_norway::from_str(&format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {{name: {name}}}\n\
         spec: {{clusterName: {CLUSTER}, source: {source}}}\n"
    ))?;
    Api::<EtcdRestore>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &r)
        .await?;
    restore_finished(c, ns, name, Duration::from_secs(360)).await
}

/// Waits for a restore to succeed and the cluster to serve it; returns a client.
async fn restored(
    c: &Client,
    ns: &str,
    name: &str,
    source: &str,
) -> anyhow::Result<(EtcdRestoreStatus, etcd_client::Client)> {
    let s = restore(c, ns, name, source).await?;
    ensure!(
        s.phase == Some(RestorePhase::Succeeded),
        "restore {name} did not succeed: {:?}",
        s.reason
    );
    etcd_cluster::wait(
        c,
        ns,
        CLUSTER,
        "the restored member",
        Duration::from_secs(180),
        converged(1, "3.6.16"),
    )
    .await?;
    let e = etcd_at(&etcd_cluster::client_endpoint(c, ns, CLUSTER).await?).await?;
    Ok((s, e))
}

/// The writer's keys under `prefix` that `e` holds, as sequence numbers with the revision that
/// wrote each (their values checked).
async fn revisions(e: &mut etcd_client::Client, prefix: &str) -> anyhow::Result<BTreeMap<u64, i64>> {
    let r = e
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await?;
    r.kvs()
        .iter()
        .map(|kv| {
            let seq: u64 = kv.key_str()?.trim_start_matches(&format!("{prefix}/")).parse()?;
            ensure!(
                kv.value_str()? == format!("value-{seq}"),
                "{prefix}/{seq} holds {:?}",
                kv.value_str()
            );
            Ok((seq, kv.mod_revision()))
        })
        .collect()
}

/// The writer's keys under `prefix` that `e` holds, as sequence numbers.
async fn seqs(e: &mut etcd_client::Client, prefix: &str) -> anyhow::Result<BTreeSet<u64>> {
    Ok(revisions(e, prefix).await?.into_keys().collect())
}

#[tokio::test]
async fn restores_reach_the_end_a_revision_or_a_time_of_the_chain_and_a_broken_chain_touches_nothing()
-> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "pitr").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        etcd_cluster::create(&c, &ns, &manifest()?).await?;
        etcd_cluster::wait(&c, &ns, CLUSTER, "1 member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        let endpoint = etcd_cluster::client_endpoint(&c, &ns, CLUSTER).await?;
        let full = backup_succeeded(&c, &ns, CLUSTER, "full-1").await?;
        let base = full.revision.context("no revision")?;
        // Revisions are timed by when the follow receives them: it must be running before the
        // writes the time target is about.
        wait_for("the follow of full-1", Duration::from_secs(120), || async {
            Ok(continuous(&c, &ns).await?.filter(|s| s.backup == "full-1" && s.member.is_some() && s.recovery_point.is_some()))
        })
        .await?;

        // Writer a, a pause with the time target in its middle, then writer b until the disaster.
        let a = Writer::start(&endpoint, "a").await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (acked_a, _) = a.stop_and_verify().await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let time_target = jiff::Timestamp::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut e = etcd_at(&endpoint).await?;
        let written_a = revisions(&mut e, "a").await?;
        ensure!(written_a.len() as u64 == acked_a, "{} keys of a for {acked_a} acknowledged", written_a.len());
        let (&mid_seq, &revision_target) = written_a.iter().nth(written_a.len() / 2).context("writer a wrote nothing")?;
        ensure!(revision_target > base, "writer a's middle write ({revision_target}) is not after the backup ({base})");
        let b = Writer::start(&endpoint, "b").await?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let s = continuous(&c, &ns).await?.context("no status.continuous")?;
        ensure!(s.backup == "full-1" && s.stored_revision > revision_target, "the chain before the disaster: {s:?}");

        // Every member destroyed at once, claims and pods, while b writes.
        let disaster = SystemTime::now();
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
        for p in pvcs.list(&ListParams::default().labels(&format!("etcd.ouroboros.dev/cluster={CLUSTER}"))).await?.items {
            if p.name_any().ends_with("-data") {
                pvcs.delete(&p.name_any(), &DeleteParams::default()).await?;
            }
        }
        Api::<Pod>::namespaced(c.clone(), &ns)
            .delete_collection(
                &DeleteParams::default().grace_period(0),
                &ListParams::default().labels(&format!("etcd.ouroboros.dev/cluster={CLUSTER}")),
            )
            .await?;
        // What must survive: every write b had acknowledged one period (and a second for the
        // chunk's flush) before the disaster.
        b.abort();
        let must_hold_b = b.acked_by(disaster - PERIOD - Duration::from_secs(1));
        let acked_b = b.acked();
        println!("full-1 at {base}; a wrote {acked_a} (revision target {revision_target}, a/{mid_seq:08}); b {acked_b}, {must_hold_b} of them a period before the disaster");

        // 1. To the end of the chain: the backup by name, on a cluster with continuous backups.
        let (s, mut e) = restored(&c, &ns, "to-the-end", "{backupName: full-1}").await?;
        let point = s.point.clone().context("no status.point after a restore along the chain")?;
        ensure!(point.revisions_left_out == 0 && point.revision == point.chain_end, "a restore to the end left revisions out: {point:?}");
        ensure!(point.applied > 0 && point.revision > revision_target, "the end of the chain is not past writer a: {point:?}");
        let got_a = seqs(&mut e, "a").await?;
        ensure!(got_a == (0..acked_a).collect(), "to the end: a has {} of {acked_a} writes", got_a.len());
        let got_b = seqs(&mut e, "b").await?;
        let lost: Vec<u64> = (0..must_hold_b).filter(|q| !got_b.contains(q)).collect();
        ensure!(lost.is_empty(), "to the end: {} of b's {must_hold_b} writes acknowledged a period before the disaster are lost, first b/{:08}", lost.len(), lost[0]);
        // The one write in flight when the writer stopped may have been committed unacknowledged.
        ensure!(got_b.iter().all(|q| *q <= acked_b), "to the end: b holds writes it never sent: {:?}", got_b.last());
        println!("to the end: {point:?}; all {acked_a} of a and {} of b's {acked_b} ({must_hold_b} required): {:?}", got_b.len(), s.reason);

        // 2. To a revision: exactly the writes at or below it.
        let source = format!("{{latest: true, allowUnverified: true, revision: {revision_target}}}");
        let (s, mut e) = restored(&c, &ns, "to-a-revision", &source).await?;
        ensure!(s.backup_name.as_deref() == Some("full-1"), "to a revision, from {:?}", s.backup_name);
        ensure!(s.point.as_ref().map(|p| p.revision) == Some(revision_target), "point {:?}", s.point);
        let want: BTreeSet<u64> = written_a.iter().filter(|(_, r)| **r <= revision_target).map(|(q, _)| *q).collect();
        let got_a = seqs(&mut e, "a").await?;
        ensure!(got_a == want, "to revision {revision_target}: a has {} writes, {} expected (up to a/{mid_seq:08})", got_a.len(), want.len());
        ensure!(seqs(&mut e, "b").await?.is_empty(), "to revision {revision_target}: writes of b came back");
        println!("to revision {revision_target}: exactly the {} writes up to it: {:?}", want.len(), s.point);

        // 3. To a time in the pause: all of a, none of b.
        let source = format!("{{latest: true, allowUnverified: true, time: '{time_target}'}}");
        let (s, mut e) = restored(&c, &ns, "to-a-time", &source).await?;
        let point = s.point.clone().context("no status.point")?;
        let seen = point.time.as_deref().context("no point time")?.parse::<jiff::Timestamp>()?;
        ensure!(seen <= time_target, "the point at {time_target} was seen at {seen}");
        let got_a = seqs(&mut e, "a").await?;
        ensure!(got_a == (0..acked_a).collect(), "to {time_target}: a has {} of {acked_a} writes", got_a.len());
        ensure!(seqs(&mut e, "b").await?.is_empty(), "to {time_target}: writes of b came back");
        println!("to {time_target}: all {acked_a} writes of a, none of b: {point:?}");

        // 4. A chunk removed: the restore is refused before the cluster is touched.
        let prefix = format!("e2e-pitr/{ns}/{CLUSTER}/delta-full-1-");
        let chunks = s3::keys(&prefix)?;
        ensure!(chunks.len() >= 2, "the chain of full-1 has {} chunks", chunks.len());
        s3::delete(&chunks[0])?;
        let before = member_uids(&c, &ns, CLUSTER).await?;
        let s = restore(&c, &ns, "broken-chain", "{backupName: full-1}").await?;
        let reason = s.reason.unwrap_or_default();
        ensure!(s.phase == Some(RestorePhase::Failed), "a broken chain restored: {reason}");
        // A backup of an untouched store reads revision 0; its chain starts at etcd's revision 2.
        let first = u64::try_from(base)?.max(1) + 1;
        ensure!(reason.contains(&format!("misses revisions {first}..")) && reason.contains("not touched"), "reason: {reason}");
        ensure!(member_uids(&c, &ns, CLUSTER).await? == before, "the cluster's pods changed");
        println!("without {}: refused, {reason}", chunks[0]);
        Ok(())
    })
    .await
}
