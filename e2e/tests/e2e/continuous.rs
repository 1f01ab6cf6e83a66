//! Continuous backups on the real cluster: after a full backup one member's sidecar follows the
//! history into delta chunks in MinIO. The chain, replayed on the full backup (downloaded,
//! restored with etcdutl, replayed on a local etcd), holds every write the writer had acknowledged
//! once the recovery point passed it — also across the loss of the following member's pod. A gap
//! made on purpose (writes compacted away before they were stored) closes the chain with a full
//! backup and an Event, and a new chain starts from it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use etcd_client::{CompactionOptions, GetOptions};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use ouroboros_backup_sidecar::{
    delta::point::{PointRequest, PrivateEtcd, Reached, Target, to_point},
    store::{S3Config, Store},
};
use ouroboros_crds::{ContinuousStatus, EtcdCluster};
use ouroboros_e2e::{
    TestNamespace, backup_succeeded, client, env, etcd_at,
    etcd_cluster::{self, converged},
    etcd_tool, events_with_reason, minio_secret, s3, wait_for,
    writer::Writer,
};

const CLUSTER: &str = "c";

fn manifest() -> anyhow::Result<String> {
    Ok(format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: {CLUSTER}}}\n\
         spec:\n  size: 3\n  pod: {{antiAffinity: None}}\n  backup:\n    schedule: '0 0 1 1 *'\n    drills: false\n\
         \x20   continuous: {{period: 2s}}\n\
         \x20   destination: {{s3: {{bucket: {}, prefix: e2e/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
        env("OUROBOROS_S3_BUCKET")?,
        env("OUROBOROS_S3_ENDPOINT")?
    ))
}

async fn continuous(c: &Client, ns: &str) -> anyhow::Result<Option<ContinuousStatus>> {
    etcd_cluster::continuous(c, ns, CLUSTER).await
}

/// Waits until the chain of `backup` has stored `revision` and its recovery point is past `after`.
async fn stored_past(
    c: &Client,
    ns: &str,
    backup: &str,
    revision: i64,
    after: jiff::Timestamp,
) -> anyhow::Result<ContinuousStatus> {
    wait_for(
        &format!("the chain of {backup} to store revision {revision} and a recovery point after {after}"),
        Duration::from_secs(120),
        || async move {
            let s = continuous(c, ns).await?;
            Ok(s.filter(|s| {
                s.backup == backup
                    && s.stored_revision >= revision
                    && s.recovery_point
                        .as_deref()
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                        .is_some_and(|t| t > after)
            }))
        },
    )
    .await
}

async fn revision_of(endpoint: &str) -> anyhow::Result<i64> {
    let mut e = etcd_at(endpoint).await?;
    let r = e.get("\0", None).await?;
    Ok(r.header().context("no header")?.revision())
}

/// Downloads the full backup `backup` (at `location`), takes it to the end of its chain in MinIO
/// with the code a restore runs (`etcd-backup-sidecar replay`), and starts a local etcd on the
/// result; returns it with the point reached.
async fn replay_chain(
    ns: &str,
    backup: &str,
    location: &str,
    base: u64,
    dir: &Path,
) -> anyhow::Result<(PrivateEtcd, Reached)> {
    let bucket = s3::bucket()?;
    let archive = dir.join("base.tar.gz");
    s3::download(location.trim_start_matches(&format!("s3://{bucket}/")), &archive)?;
    let st = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .status()?;
    ensure!(st.success(), "tar xzf {archive:?} failed");
    let store = Store::s3(S3Config {
        bucket,
        prefix: format!("e2e/{ns}/{CLUSTER}/"),
        endpoint: Some(env("OUROBOROS_S3_ENDPOINT")?),
        region: "us-east-1".into(),
        force_path_style: true,
        credentials: Some((env("AWS_ACCESS_KEY_ID")?, env("AWS_SECRET_ACCESS_KEY")?, None)),
    })
    .await;
    let (snapshot, out, bin) = (
        dir.join("snapshot.db"),
        dir.join("at-the-end.db"),
        etcd_tool("etcd"),
    );
    let reached = to_point(&PointRequest {
        snapshot: &snapshot,
        out: &out,
        backup,
        base,
        store: &store,
        target: Target::End,
        etcd_bin_dir: bin.parent().context("no etcd directory")?,
        scratch: &dir.join("scratch"),
    })
    .await?;
    let etcd = PrivateEtcd::start(
        &out,
        &dir.join("restored"),
        bin.parent().context("no etcd directory")?,
        &[],
    )
    .await?;
    Ok((etcd, reached))
}

/// Every key `<prefix>/<seq>` for `seq < acked` reads back with its value from `endpoint`.
async fn holds_every_write(etcd: &PrivateEtcd, prefix: &str, acked: u64) -> anyhow::Result<()> {
    let mut c = etcd.client().await?;
    let r = c
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await?;
    let found: std::collections::HashMap<String, String> = r
        .kvs()
        .iter()
        .map(|kv| Ok((kv.key_str()?.to_owned(), kv.value_str()?.to_owned())))
        .collect::<anyhow::Result<_>>()?;
    let lost: Vec<u64> = (0..acked)
        .filter(|seq| found.get(&format!("{prefix}/{seq:08}")) != Some(&format!("value-{seq}")))
        .collect();
    ensure!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes of {prefix} are not in the replayed chain, first {:?}",
        lost.len(),
        lost.first()
    );
    Ok(())
}

fn scratch(ns: &str, tag: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("ouroboros-{ns}-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[tokio::test]
async fn a_followed_chain_holds_every_acknowledged_write_and_a_gap_closes_it() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "continuous").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        etcd_cluster::create(&c, &ns, &manifest()?).await?;
        etcd_cluster::wait(&c, &ns, CLUSTER, "3 members", Duration::from_secs(180), converged(3, "3.6.16")).await?;
        let endpoint = etcd_cluster::client_endpoint(&c, &ns, CLUSTER).await?;
        let s = continuous(&c, &ns).await?.context("no status.continuous")?;
        ensure!(s.message.as_deref().is_some_and(|m| m.contains("first full backup")), "before a backup: {s:?}");

        // A full backup under a writer, then the chain follows.
        let writer = Writer::start(&endpoint, "first").await?;
        let full = backup_succeeded(&c, &ns, CLUSTER, "full-1").await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (acked, _) = writer.stop_and_verify().await?;
        let (stopped, wrote_to) = (jiff::Timestamp::now(), revision_of(&endpoint).await?);
        let s = stored_past(&c, &ns, "full-1", wrote_to, stopped).await?;
        let follower = s.member.clone().context("no following member")?;
        println!("chain of full-1 (revision {:?}): {s:?}, {acked} writes acknowledged", full.revision);

        let base = u64::try_from(full.revision.context("no revision")?)?;
        let location = full.location.clone().context("no location")?;
        let dir = scratch(&ns, "first")?;
        let (local, reached) = replay_chain(&ns, "full-1", &location, base, &dir).await?;
        ensure!(reached.revision >= u64::try_from(wrote_to)?, "the chain reaches {reached:?}, the writer wrote to {wrote_to}");
        holds_every_write(&local, "first", acked).await?;
        println!("replayed the chain from {base}: {reached:?}; all {acked} acknowledged writes present");
        drop(local);

        // The following member's pod is deleted mid-write: the chain goes on (the same member once
        // its pod is back, or another) without a hole.
        let writer = Writer::start(&endpoint, "second").await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns)
            .delete(&follower, &DeleteParams::default())
            .await?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let (acked2, _) = writer.stop_and_verify().await?;
        let (stopped, wrote_to) = (jiff::Timestamp::now(), revision_of(&endpoint).await?);
        let s = stored_past(&c, &ns, "full-1", wrote_to, stopped).await?;
        let dir = scratch(&ns, "second")?;
        let (local, reached) = replay_chain(&ns, "full-1", &location, base, &dir).await?;
        holds_every_write(&local, "first", acked).await?;
        holds_every_write(&local, "second", acked2).await?;
        println!("after deleting {follower}'s pod: {s:?}; the chain to {reached:?} holds all {acked2} later writes too");
        drop(local);

        // A gap on purpose: with a period too long to store them, writes are made and compacted
        // away, and the follow is cut (its pod deleted) before it stored them.
        let clusters = Api::<EtcdCluster>::namespaced(c.clone(), &ns);
        let period = |p: &str| serde_json::json!({"spec": {"backup": {"continuous": {"period": p}}}});
        clusters.patch(CLUSTER, &PatchParams::default(), &Patch::Merge(period("1h"))).await?;
        // The spec change is a new generation: the next pass asks the follower again with it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = continuous(&c, &ns).await?.and_then(|s| s.member).context("no following member")?;
        let mut e = etcd_at(&endpoint).await?;
        for i in 0..50 {
            e.put(format!("gap/{i:03}"), "lost-to-compaction", None).await?;
        }
        let now = revision_of(&endpoint).await?;
        e.compact(now, Some(CompactionOptions::new().with_physical())).await?;
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns)
            .delete(&s, &DeleteParams::default())
            .await?;
        let closing = format!("{CLUSTER}-chain-after-full-1");
        wait_for("the chain to close with an Event", Duration::from_secs(180), || async {
            let e = events_with_reason(&c, &ns, "ContinuousChainClosed").await?;
            Ok((!e.is_empty()).then_some(e))
        })
        .await?;
        clusters.patch(CLUSTER, &PatchParams::default(), &Patch::Merge(period("2s"))).await?;
        let next = wait_for("a new chain after the closing backup", Duration::from_secs(180), || async {
            Ok(continuous(&c, &ns).await?.filter(|s| s.backup == closing && s.member.is_some() && s.message.is_none()))
        })
        .await?;
        ensure!(next.base_revision >= now, "the new chain starts at {}, before the compaction at {now}", next.base_revision);
        println!("a gap (compacted at {now}) closed the chain of full-1; the next follows {closing}: {next:?}");
        Ok(())
    })
    .await
}
