//! Scheduled backups on the real cluster: a schedule every minute creates EtcdBackups, retention keeps
//! the newest two in MinIO and as objects, BackupHealthy and the metrics follow; a bad schedule is
//! named in the condition; a cluster with PVC storage backs up to its default backup claim.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use ouroboros_crds::{BackupPhase, EtcdBackup, EtcdCluster};
use ouroboros_e2e::{
    TestNamespace, backup_finished, client, env, etcd_at,
    etcd_cluster::{self, converged},
    kubectl, minio_secret, operator_metrics, s3, wait_for,
};

#[tokio::test]
async fn scheduled_backups_are_kept_by_retention_and_reported() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "sched").await?.run(|c, ns| async move {
        minio_secret(&c, &ns).await?;
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: s}}\nspec:\n  size: 1\n  backup:\n    schedule: '* * * * *'\n    retention: {{maxCount: 2}}\n    destination: {{s3: {{bucket: {}, prefix: e2e-sched/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        etcd_cluster::create(&c, &ns, &yaml).await?;
        etcd_cluster::wait(&c, &ns, "s", "1 member", Duration::from_secs(120), converged(1, "3.6.16")).await?;

        // Every scheduled backup ever seen, until a third one has succeeded (so retention has run).
        let backups: Api<EtcdBackup> = Api::namespaced(c.clone(), &ns);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        wait_for("three scheduled backups to succeed", Duration::from_secs(300), || {
            let backups = backups.clone();
            let seen = seen.clone();
            async move {
                let list = backups.list(&ListParams::default().labels("etcd.ouroboros.dev/scheduled=true")).await?;
                let mut done = 0;
                for b in &list.items {
                    if b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Succeeded) {
                        seen.lock().unwrap().insert(b.name_any());
                    }
                    done += usize::from(b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Failed));
                }
                ensure!(done == 0, "a scheduled backup failed: {:?}", list.items.iter().map(|b| &b.status).collect::<Vec<_>>());
                // Retention runs before the newest is marked Succeeded; give it the moment it takes.
                Ok((seen.lock().unwrap().len() >= 3 && list.items.len() == 2).then_some(()))
            }
        })
        .await?;
        let seen = seen.lock().unwrap().clone();
        ensure!(seen.iter().all(|n| n.starts_with("s-")), "unexpected names {seen:?}");

        // Exactly the two kept EtcdBackups are in the store, manifest and archive each; nothing else.
        let kept = backups.list(&ListParams::default()).await?.items;
        let bucket = s3::bucket()?;
        let prefix = format!("e2e-sched/{ns}/s/");
        let keys = s3::keys(&prefix)?;
        let mut want = Vec::new();
        for b in &kept {
            let loc = b.status.as_ref().and_then(|s| s.location.clone()).context("no location")?;
            let key = loc.strip_prefix(&format!("s3://{bucket}/")).context("location outside the bucket")?.to_owned();
            let manifest = keys.iter().find(|k| k.ends_with(&format!("-{}.manifest.json", b.name_any())));
            ensure!(manifest.is_some(), "no manifest for {} in {keys:?}", b.name_any());
            want.push(key);
            want.push(manifest.unwrap().clone());
        }
        want.sort();
        ensure!(keys == want, "store holds {keys:?}, expected {want:?}");

        let cluster = Api::<EtcdCluster>::namespaced(c.clone(), &ns).get("s").await?;
        let (status, reason, _) = etcd_cluster::condition(&cluster, "BackupHealthy").context("no BackupHealthy")?;
        ensure!(status == "True" && reason == "BackupsSucceeding", "BackupHealthy {status} {reason}");
        let st = cluster.status.clone().unwrap_or_default();
        let newest = kept.iter().max_by_key(|b| b.metadata.creation_timestamp.clone()).unwrap();
        ensure!(
            st.last_successful_backup.as_ref().is_some_and(|l| l.name == newest.name_any()),
            "lastSuccessfulBackup {:?}, newest {}",
            st.last_successful_backup,
            newest.name_any()
        );
        ensure!(st.last_scheduled_backup_time.is_some(), "lastScheduledBackupTime not recorded");
        let events = kubectl(&["-n", &ns, "get", "events", "-o", "jsonpath={.items[*].reason}"])?.stdout;
        for reason in ["BackupScheduled", "RetentionApplied", "BackupSucceeded"] {
            ensure!(events.contains(reason), "no {reason} Event in {events}");
        }
        let metrics = operator_metrics()?;
        let label = format!("{{namespace=\"{ns}\",name=\"s\"}}");
        for name in ["ouroboros_backup_last_success_timestamp_seconds", "ouroboros_backup_size_bytes", "ouroboros_backup_duration_seconds_count"] {
            ensure!(
                metrics.lines().any(|l| l.starts_with(&format!("{name}{label} ")) && !l.ends_with(" 0")),
                "no {name}{label} in the metrics"
            );
        }

        // A schedule that cannot fire is named in the condition, and the schedule stops.
        Api::<EtcdCluster>::namespaced(c.clone(), &ns)
            .patch(
                "s",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"backup": {"schedule": "61 * * * *"}}})),
            )
            .await?;
        let api = Api::<EtcdCluster>::namespaced(c.clone(), &ns);
        let (_, _, message) = wait_for("BackupHealthy=False InvalidSchedule", Duration::from_secs(60), || {
            let api = api.clone();
            async move {
                let cl = api.get("s").await?;
                Ok(etcd_cluster::condition(&cl, "BackupHealthy").filter(|(s, r, _)| s == "False" && r == "InvalidSchedule"))
            }
        })
        .await?;
        ensure!(message.contains("61 * * * *"), "the message does not name the schedule: {message}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_cluster_with_pvc_storage_backs_up_to_its_default_claim() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "volbackup").await?.run(|c, ns| async move {
        etcd_cluster::create(
            &c,
            &ns,
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: v}\nspec: {size: 1, storage: {persistentVolumeClaim: {size: 1Gi}}}\n",
        )
        .await?;
        etcd_cluster::wait(&c, &ns, "v", "1 member", Duration::from_secs(120), converged(1, "3.6.16")).await?;
        // The client Service may not route yet right after the member turned healthy.
        let mut etcd = etcd_at(&etcd_cluster::client_endpoint(&c, &ns, "v").await?).await?;
        for i in 0..50 {
            etcd.put(format!("/vol/{i}"), "x", None).await?;
        }
        let b: EtcdBackup = serde_norway::from_str(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {name: to-volume}\nspec: {clusterName: v}\n",
        )?;
        let backups: Api<EtcdBackup> = Api::namespaced(c.clone(), &ns);
        backups.create(&PostParams::default(), &b).await?;
        let s = backup_finished(&c, &ns, "to-volume", Duration::from_secs(120)).await?;
        ensure!(s.phase == Some(BackupPhase::Succeeded), "failed: {:?}", s.reason);
        // Members do not mount the default claim: a writer pod wrote the archive.
        ensure!(s.writer_pod.as_deref() == Some("to-volume-writer"), "written by {:?}", s.writer_pod);
        let location = s.location.clone().unwrap_or_default();
        let inside = location
            .strip_prefix("file:///backups/v-backups/")
            .with_context(|| format!("location {location} is not on the default claim"))?;

        // Read the archive straight off the claim's local volume on the node.
        let pvc = Api::<PersistentVolumeClaim>::namespaced(c.clone(), &ns).get("v-backups").await?;
        ensure!(pvc.metadata.owner_references.is_none(), "the backup claim would be deleted with the cluster");
        let pv_name = pvc.spec.and_then(|s| s.volume_name).context("backup claim not bound")?;
        let pv = Api::<PersistentVolume>::all(c.clone()).get(&pv_name).await?;
        let root = pv.spec.and_then(|s| s.local).map(|l| l.path).context("not a local volume")?;
        let archive = std::path::Path::new(&root).join(inside);
        let out = Command::new("tar").arg("tzf").arg(&archive).output()?;
        ensure!(out.status.success(), "tar cannot read {}", archive.display());
        let listing = String::from_utf8_lossy(&out.stdout);
        ensure!(listing.contains("snapshot.db") && listing.contains("manifest.json"), "archive holds {listing}");
        ensure!(s.revision.unwrap_or(0) >= 50, "revision {:?}", s.revision);
        Ok(())
    })
    .await
}
