//! Backups interrupted on the real cluster: the sidecar killed mid-upload and the member's etcd killed
//! mid-stream each fail the EtcdBackup with a reason, never leave a manifest (so nothing passes for a
//! backup), and the next successful backup clears the open multipart upload they left.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context as _, ensure};
use kube::{Api, Client, api::PostParams};
use ouroboros_crds::{BackupPhase, EtcdBackup, EtcdBackupStatus};
use ouroboros_e2e::{
    TestNamespace, backup_finished, client, env,
    etcd_cluster::{self, converged},
    fill_etcd, kill_container, minio_secret, s3, wait_for,
};

async fn start_backup(c: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let b: EtcdBackup = serde_norway::from_str(&format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {{name: {name}}}\nspec: {{clusterName: f}}\n"
    ))?;
    Api::<EtcdBackup>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &b)
        .await?;
    Ok(())
}

async fn status(c: &Client, ns: &str, name: &str) -> anyhow::Result<EtcdBackupStatus> {
    Ok(Api::<EtcdBackup>::namespaced(c.clone(), ns)
        .get(name)
        .await?
        .status
        .unwrap_or_default())
}

/// Waits until the backup is Running and its upload has begun (its marker is in the store); returns
/// the member it runs on.
async fn uploading(c: &Client, ns: &str, name: &str, prefix: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("{name} to be uploading"),
        Duration::from_secs(120),
        || async move {
            let s = status(c, ns, name).await?;
            ensure!(
                s.phase != Some(BackupPhase::Succeeded),
                "{name} finished before it could be interrupted"
            );
            let marker = format!("-{name}.tar.gz.uploading");
            let begun = s3::keys(prefix)?.iter().any(|k| k.ends_with(&marker));
            Ok((s.phase == Some(BackupPhase::Running) && begun)
                .then_some(s.member)
                .flatten())
        },
    )
    .await
}

#[tokio::test]
async fn interrupted_backups_fail_clearly_and_leave_nothing() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "bfaults").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        // Level 9 over incompressible data keeps the backup running long enough to interrupt it.
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: f}}\nspec:\n  size: 3\n  pod: {{antiAffinity: None}}\n  backup:\n    schedule: '0 0 1 1 *'\n    compressionLevel: 9\n    retention: {{maxCount: 10}}\n    destination: {{s3: {{bucket: {}, prefix: e2e-faults/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        etcd_cluster::create(&c, &ns, &yaml).await?;
        etcd_cluster::wait(&c, &ns, "f", "3 members", Duration::from_secs(180), converged(3, "3.6.16")).await?;
        fill_etcd(&etcd_cluster::client_endpoint(&c, &ns, "f").await?, 300).await?;
        let prefix = format!("e2e-faults/{ns}/f/");

        // The sidecar is killed while its multipart upload is open.
        start_backup(&c, &ns, "killed-sidecar").await?;
        let member = uploading(&c, &ns, "killed-sidecar", &prefix).await?;
        kill_container(&c, &ns, &member, "backup-sidecar").await?;
        let s = backup_finished(&c, &ns, "killed-sidecar", Duration::from_secs(300)).await?;
        ensure!(s.phase == Some(BackupPhase::Failed), "a backup whose sidecar died succeeded");
        let reason = s.reason.clone().unwrap_or_default();
        ensure!(reason.contains("restarted") && reason.contains("nothing was committed"), "reason: {reason}");
        ensure!(s.location.is_none(), "a failed backup has a location");
        let keys = s3::keys(&prefix)?;
        ensure!(!keys.iter().any(|k| k.contains("killed-sidecar") && k.ends_with(".manifest.json")), "a manifest exists: {keys:?}");
        let open_key = keys
            .iter()
            .find(|k| k.ends_with("-killed-sidecar.tar.gz.uploading"))
            .map(|k| k.replacen(".uploading", "", 1).replacen(&format!("{prefix}."), &prefix, 1))
            .context("the killed sidecar's upload marker is gone before any cleanup")?;
        ensure!(s3::open_uploads(&open_key)? == 1, "the killed upload is not open in the store; the test proves nothing");

        // The member's etcd dies while the snapshot streams.
        etcd_cluster::wait(&c, &ns, "f", "3 healthy members", Duration::from_secs(120), converged(3, "3.6.16")).await?;
        start_backup(&c, &ns, "member-died").await?;
        let member = uploading(&c, &ns, "member-died", &prefix).await?;
        kill_container(&c, &ns, &member, "etcd").await?;
        let s = backup_finished(&c, &ns, "member-died", Duration::from_secs(300)).await?;
        ensure!(s.phase == Some(BackupPhase::Failed), "a backup whose member died succeeded");
        let reason = s.reason.clone().unwrap_or_default();
        ensure!(reason.to_lowercase().contains("snapshot") || reason.contains("stream"), "reason: {reason}");
        ensure!(!s3::keys(&prefix)?.iter().any(|k| k.contains("member-died")), "the member-died backup left objects");

        // The next backup succeeds, and retention clears what the killed sidecar left.
        etcd_cluster::wait(&c, &ns, "f", "3 healthy members", Duration::from_secs(120), converged(3, "3.6.16")).await?;
        start_backup(&c, &ns, "after").await?;
        let s = backup_finished(&c, &ns, "after", Duration::from_secs(300)).await?;
        ensure!(s.phase == Some(BackupPhase::Succeeded), "the backup after the faults failed: {:?}", s.reason);
        let keys = s3::keys(&prefix)?;
        ensure!(keys.len() == 2 && keys.iter().all(|k| k.contains("-after")), "store after cleanup: {keys:?}");
        ensure!(s3::open_uploads(&open_key)? == 0, "the killed sidecar's multipart upload is still open");
        Ok(())
    })
    .await
}

/// An EtcdBackup naming a cluster that does not exist fails after a bounded wait, with a reason
/// naming the field, instead of staying Pending forever.
#[tokio::test]
async fn a_backup_of_a_missing_cluster_fails_with_a_reason() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "nocluster")
        .await?
        .run(|c, ns| async move {
            // No cluster `f` in this namespace.
            start_backup(&c, &ns, "orphan").await?;
            let s = backup_finished(&c, &ns, "orphan", Duration::from_secs(150)).await?;
            ensure!(s.phase == Some(BackupPhase::Failed), "phase {:?}", s.phase);
            let reason = s.reason.unwrap_or_default();
            ensure!(
                reason.contains("does not exist") && reason.contains("spec.clusterName"),
                "reason: {reason}"
            );
            Ok(())
        })
        .await
}

/// Deleting a cluster while its backup uploads fails the backup with a reason, and the upload is
/// aborted: no manifest, no marker and no open multipart upload are left in the store.
#[tokio::test]
async fn deleting_the_cluster_fails_its_backup_and_aborts_the_upload() -> anyhow::Result<()> {
    use kube::api::DeleteParams;
    use ouroboros_crds::EtcdCluster;
    let c = client().await?;
    TestNamespace::create(&c, "bdelete").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: f}}\nspec:\n  size: 1\n  backup:\n    schedule: '0 0 1 1 *'\n    compressionLevel: 9\n    destination: {{s3: {{bucket: {}, prefix: e2e-delete/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        etcd_cluster::create(&c, &ns, &yaml).await?;
        etcd_cluster::wait(&c, &ns, "f", "1 member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        fill_etcd(&etcd_cluster::client_endpoint(&c, &ns, "f").await?, 200).await?;
        let prefix = format!("e2e-delete/{ns}/f/");

        start_backup(&c, &ns, "orphaned").await?;
        uploading(&c, &ns, "orphaned", &prefix).await?;
        let open_key = s3::keys(&prefix)?
            .iter()
            .find(|k| k.ends_with("-orphaned.tar.gz.uploading"))
            .map(|k| k.replacen(".uploading", "", 1).replacen(&format!("{prefix}."), &prefix, 1))
            .context("no upload marker while uploading")?;
        ensure!(s3::open_uploads(&open_key)? == 1, "the upload is not open in the store; the test proves nothing");
        Api::<EtcdCluster>::namespaced(c.clone(), &ns).delete("f", &DeleteParams::default()).await?;

        let s = backup_finished(&c, &ns, "orphaned", Duration::from_secs(120)).await?;
        let reason = s.reason.clone().unwrap_or_default();
        ensure!(s.phase == Some(BackupPhase::Failed), "the backup of a deleted cluster ended {:?}: {reason}", s.phase);
        ensure!(reason.contains("deleted") && reason.contains("nothing was committed"), "reason: {reason}");
        wait_for("the orphaned upload to be aborted", Duration::from_secs(60), || {
            let (prefix, open_key) = (prefix.clone(), open_key.clone());
            async move {
                let keys = s3::keys(&prefix)?;
                Ok((keys.is_empty() && s3::open_uploads(&open_key)? == 0).then_some(()))
            }
        })
        .await?;
        Ok(())
    })
    .await
}

/// A running backup shows how far its snapshot has streamed (#24), throttled to one status write per
/// 10 s, and the record is gone once it succeeded. The sidecar's CPU is limited and the data is
/// compressible, so deflate keeps the backup running for tens of seconds.
#[tokio::test]
async fn a_running_backup_reports_its_progress() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "bprogress").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: f}}\nspec:\n  size: 1\n  backup:\n    schedule: '0 0 1 1 *'\n    compressionLevel: 9\n    resources: {{limits: {{cpu: 100m, memory: 256Mi}}, requests: {{cpu: 10m, memory: 32Mi}}}}\n    destination: {{s3: {{bucket: {}, prefix: e2e-progress/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        etcd_cluster::create(&c, &ns, &yaml).await?;
        etcd_cluster::wait(&c, &ns, "f", "1 member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        // 48 MiB of words from a small vocabulary: deflate works on every byte.
        let mut e = ouroboros_e2e::etcd_at(&etcd_cluster::client_endpoint(&c, &ns, "f").await?).await?;
        let words = ["etcd", "raft", "member", "learner", "quorum", "snapshot", "revision", "lease"];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..48 {
            let mut v = String::with_capacity(1 << 20);
            while v.len() < (1 << 20) - 16 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push_str(words[(x % 8) as usize]);
                v.push(if x.is_multiple_of(11) { '\n' } else { ' ' });
            }
            e.put(format!("/text/{i}"), v, None).await?;
        }

        start_backup(&c, &ns, "watched").await?;
        let api: Api<EtcdBackup> = Api::namespaced(c.clone(), &ns);
        let mut seen = Vec::new();
        let finished = loop {
            let s = api.get("watched").await?.status.unwrap_or_default();
            if matches!(s.phase, Some(BackupPhase::Succeeded | BackupPhase::Failed)) {
                break s;
            }
            if let Some(p) = s.progress.filter(|p| seen.last() != Some(p)) {
                seen.push(p);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        ensure!(finished.phase == Some(BackupPhase::Succeeded), "{:?}", finished.reason);
        ensure!(finished.progress.is_none(), "progress left on a finished backup: {:?}", finished.progress);
        let raw = finished.raw_size.context("no rawSize")?;
        println!("progress seen while it ran: {seen:#?}; rawSize {raw}");
        ensure!(!seen.is_empty(), "no progress was recorded while the backup ran");
        for p in &seen {
            ensure!(p.total_bytes == Some(raw), "total {:?} is not the snapshot's size {raw}", p.total_bytes);
            ensure!(p.bytes_streamed <= raw && p.summary.contains('%'), "{p:?}");
        }
        ensure!(seen.iter().any(|p| p.bytes_streamed > 0), "nothing streamed in {seen:?}");
        for pair in seen.windows(2) {
            let at = |p: &ouroboros_crds::backup::BackupProgress| p.update_time.parse::<jiff::Timestamp>();
            let gap = at(&pair[1])?.duration_since(at(&pair[0])?);
            ensure!(gap.as_secs() >= 10, "progress written {gap} apart: {pair:?}");
            ensure!(pair[1].bytes_streamed >= pair[0].bytes_streamed, "progress went back: {pair:?}");
        }
        Ok(())
    })
    .await
}
