//! Restore drills on the real cluster: a scheduled backup is restored by its drill Job (etcdutl and
//! etcd alone on the archive, no access to the cluster) and marked verified; an archive damaged in
//! MinIO after it was verified fails the drill asked for again, and a `latest` restore then skips it
//! for the previous verified backup; retention keeps the newest verified backup when every newer
//! one is unverified.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use ouroboros_crds::{BackupPhase, DrillPhase, EtcdBackup, EtcdBackupStatus, EtcdCluster, EtcdRestore};
use ouroboros_e2e::{
    TestNamespace, backup_finished, client, env, etcd_at,
    etcd_cluster::{self, converged},
    events_with_reason, minio_secret, operator_metrics, restore_finished, s3, wait_for,
};

const CLUSTER: &str = "d";

/// Waits for the drill of backup `name` to reach its verdict.
async fn drilled(c: &Client, ns: &str, name: &str) -> anyhow::Result<EtcdBackupStatus> {
    let api: Api<EtcdBackup> = Api::namespaced(c.clone(), ns);
    wait_for(&format!("the drill of {name}"), Duration::from_secs(240), || {
        let api = api.clone();
        async move {
            let s = api.get(name).await?.status.unwrap_or_default();
            Ok(s.drill.filter(|d| d.is_final()).map(|_| s))
        }
    })
    .await
}

async fn backup(c: &Client, ns: &str, name: &str, drill: bool) -> anyhow::Result<EtcdBackupStatus> {
    let b: EtcdBackup = serde_norway::from_str(&format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {{name: {name}}}\nspec: {{clusterName: {CLUSTER}, drill: {drill}}}\n"
    ))?;
    Api::<EtcdBackup>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &b)
        .await?;
    let s = backup_finished(c, ns, name, Duration::from_secs(180)).await?;
    ensure!(
        s.phase == Some(BackupPhase::Succeeded),
        "backup {name} failed: {:?}",
        s.reason
    );
    Ok(s)
}

/// The object key of a backup's archive.
fn key_of(s: &EtcdBackupStatus) -> anyhow::Result<String> {
    let location = s.location.clone().context("no location")?;
    Ok(location
        .strip_prefix(&format!("s3://{}/", s3::bucket()?))
        .context("location outside the bucket")?
        .to_owned())
}

#[tokio::test]
async fn drills_verify_backups_and_restores_and_retention_follow_their_verdicts() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "drill").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        // One scheduled backup soon (the next minute but one), then none for an hour; retention
        // keeps one backup besides the newest verified one.
        let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
        let minute = (now.minute() + 2) % 60;
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: {CLUSTER}}}\nspec:\n  size: 1\n  backup:\n    schedule: '{minute} * * * *'\n    retention: {{maxCount: 1}}\n    destination: {{s3: {{bucket: {}, prefix: e2e-drill/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        etcd_cluster::create(&c, &ns, &yaml).await?;
        etcd_cluster::wait(&c, &ns, CLUSTER, "1 member", Duration::from_secs(120), converged(1, "3.6.16")).await?;
        let endpoint = etcd_cluster::client_endpoint(&c, &ns, CLUSTER).await?;
        let mut etcd = etcd_at(&endpoint).await?;
        for i in 0..200 {
            etcd.put(format!("/drill/key-{i:04}"), vec![b'x'; 512], None).await?;
        }
        etcd.delete("/drill/key-0000", None).await?;
        etcd.put("/drill/marker", "before-the-scheduled-backup", None).await?;

        // The scheduled backup is drilled and verified.
        let backups: Api<EtcdBackup> = Api::namespaced(c.clone(), &ns);
        let scheduled = wait_for("the scheduled backup", Duration::from_secs(200), || {
            let backups = backups.clone();
            async move {
                let list = backups.list(&ListParams::default().labels("etcd.ouroboros.dev/scheduled=true")).await?;
                Ok(list.items.into_iter().find_map(|b| b.metadata.name))
            }
        })
        .await?;
        let s = drilled(&c, &ns, &scheduled).await?;
        ensure!(
            s.drill == Some(DrillPhase::Verified) && s.verified == Some(true) && s.verified_time.is_some(),
            "the scheduled backup was not verified: {s:?}"
        );
        let reason = s.verification_reason.clone().unwrap_or_default();
        let hash = s.kv_hash.context("no kvHash recorded")?;
        ensure!(reason.contains(&format!("hash {hash}")), "the verdict does not name the hash: {reason}");
        println!("{scheduled}: {reason}");
        // The drill's Job goes once its verdict is recorded (it is deleted right after).
        let jobs = Api::<Job>::namespaced(c.clone(), &ns);
        let drill_of = format!("etcd.ouroboros.dev/drill-of={scheduled}");
        wait_for("the drill Job deleted", Duration::from_secs(30), || {
            let (jobs, drill_of) = (jobs.clone(), drill_of.clone());
            async move { Ok(jobs.list(&ListParams::default().labels(&drill_of)).await?.items.is_empty().then_some(())) }
        })
        .await?;
        let clusters: Api<EtcdCluster> = Api::namespaced(c.clone(), &ns);
        wait_for("BackupsVerified=True", Duration::from_secs(60), || {
            let clusters = clusters.clone();
            async move {
                let cluster = clusters.get(CLUSTER).await?;
                Ok(etcd_cluster::condition(&cluster, "BackupsVerified").filter(|(s, r, _)| s == "True" && r == "Verified"))
            }
        })
        .await?;

        // A newer backup verifies too; then its archive is damaged in the store (bytes flipped in
        // the middle) and its drill asked for again: it fails, says why, and is marked.
        etcd.put("/drill/marker", "after-the-scheduled-backup", None).await?;
        let victim = backup(&c, &ns, "victim", true).await?;
        let v = drilled(&c, &ns, "victim").await?;
        ensure!(v.verified == Some(true), "victim was not verified: {v:?}");
        let key = key_of(&victim)?;
        let dir = std::env::temp_dir().join(format!("ouroboros-{ns}"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("victim.tar.gz");
        s3::download(&key, &file)?;
        let mut bytes = std::fs::read(&file)?;
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0xff;
        }
        std::fs::write(&file, &bytes)?;
        s3::upload(&key, &file)?;
        backups
            .patch(
                "victim",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"etcd.ouroboros.dev/drill-request": "after-damage"}}})),
            )
            .await?;
        let v = wait_for("the second drill of victim", Duration::from_secs(240), || {
            let backups = backups.clone();
            async move {
                let s = backups.get("victim").await?.status.unwrap_or_default();
                Ok((s.drill_request.as_deref() == Some("after-damage") && s.drill.is_some_and(|d| d.is_final())).then_some(s))
            }
        })
        .await?;
        ensure!(v.drill == Some(DrillPhase::Failed) && v.verified == Some(false), "the damaged archive passed its drill: {v:?}");
        let why = v.verification_reason.clone().unwrap_or_default();
        ensure!(why.contains("does not verify"), "the failure does not say the archive is damaged: {why}");
        println!("victim after damage: {why}");
        ensure!(!events_with_reason(&c, &ns, "DrillFailed").await?.is_empty(), "no DrillFailed Event");
        wait_for("BackupsVerified=False", Duration::from_secs(60), || {
            let clusters = clusters.clone();
            let scheduled = scheduled.clone();
            async move {
                let cluster = clusters.get(CLUSTER).await?;
                Ok(etcd_cluster::condition(&cluster, "BackupsVerified")
                    .filter(|(s, r, m)| s == "False" && r == "DrillFailed" && m.contains(&format!("use {scheduled}"))))
            }
        })
        .await?;
        let metrics = operator_metrics()?;
        for outcome in ["Verified", "Failed"] {
            let series = format!("ouroboros_backup_drills_total{{namespace=\"{ns}\",name=\"{CLUSTER}\",outcome=\"{outcome}\"}}");
            ensure!(metrics.lines().any(|l| l.starts_with(&series)), "no {series} in the metrics");
        }

        // A latest restore skips the damaged backup for the previous verified one.
        let r: EtcdRestore = serde_norway::from_str(&format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {{name: back}}\nspec: {{clusterName: {CLUSTER}, source: {{latest: true}}}}\n"
        ))?;
        Api::<EtcdRestore>::namespaced(c.clone(), &ns).create(&PostParams::default(), &r).await?;
        let rs = restore_finished(&c, &ns, "back", Duration::from_secs(300)).await?;
        ensure!(rs.backup_name.as_deref() == Some(scheduled.as_str()), "latest chose {:?}, not the verified {scheduled}: {:?}", rs.backup_name, rs.reason);
        ensure!(rs.phase == Some(ouroboros_crds::RestorePhase::Succeeded), "the restore failed: {:?}", rs.reason);
        let mut etcd = etcd_at(&etcd_cluster::client_endpoint(&c, &ns, CLUSTER).await?).await?;
        let marker = etcd.get("/drill/marker", None).await?;
        let value = marker.kvs().first().map(|kv| kv.value_str().unwrap_or_default().to_owned());
        ensure!(value.as_deref() == Some("before-the-scheduled-backup"), "the restored marker is {value:?}");
        let keys = etcd.get("/drill/key-", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await?;
        ensure!(keys.count() == 199, "{} keys restored, 199 were backed up", keys.count());

        // Retention (one backup kept) keeps the newest verified backup when newer ones are not:
        // after an undrilled backup, the damaged one goes and the verified one stays.
        let unproven = backup(&c, &ns, "unproven", false).await?;
        ensure!(unproven.drill.is_none() && unproven.verified.is_none(), "an undrilled backup has a drill: {unproven:?}");
        let kept = s3::keys(&format!("e2e-drill/{ns}/{CLUSTER}/"))?;
        let scheduled_status = backups.get(&scheduled).await?.status.unwrap_or_default();
        ensure!(kept.contains(&key_of(&scheduled_status)?), "retention deleted the newest verified backup: {kept:?}");
        ensure!(kept.contains(&key_of(&unproven)?), "retention deleted the newest backup: {kept:?}");
        ensure!(!kept.contains(&key), "retention kept the damaged archive: {kept:?}");
        ensure!(backups.get_opt("victim").await?.is_none(), "the damaged backup's EtcdBackup is still there");
        println!("retention kept {kept:?}");
        Ok(())
    })
    .await
}
