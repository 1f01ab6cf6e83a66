//! On-demand EtcdBackup on the real cluster: the operator picks a follower, its sidecar streams a
//! verified archive to MinIO, and status records it; bad credentials and a missing Secret fail with a
//! reason that says what to fix.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use kube::{Api, Client, ResourceExt as _, api::PostParams};
use ouroboros_crds::{BackupPhase, EtcdBackup, EtcdCluster};
use ouroboros_e2e::{
    TestNamespace, backup_finished, client, env,
    etcd_cluster::{self, converged},
    etcd_tool, s3_credentials,
    writer::Writer,
};

async fn backup(c: &Client, ns: &str, name: &str, secret: &str) -> anyhow::Result<()> {
    let yaml = format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {{name: {name}}}\n\
         spec: {{clusterName: b, destination: {{s3: {{bucket: {}, prefix: e2e/, endpoint: '{}', forcePathStyle: true, credentialsSecret: {secret}}}}}}}\n",
        env("OUROBOROS_S3_BUCKET")?,
        env("OUROBOROS_S3_ENDPOINT")?
    );
    let b: EtcdBackup = serde_norway::from_str(&yaml)?;
    Api::<EtcdBackup>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &b)
        .await?;
    Ok(())
}

#[tokio::test]
async fn on_demand_backup_lands_verified_in_minio_and_failures_say_why() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "backup").await?.run(|c, ns| async move {
        etcd_cluster::create(
            &c,
            &ns,
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: b}\nspec: {size: 3, pod: {antiAffinity: None}}\n",
        )
        .await?;
        etcd_cluster::wait(&c, &ns, "b", "3 members", Duration::from_secs(180), converged(3, "3.6.16")).await?;
        let writer = Writer::start(&etcd_cluster::client_endpoint(&c, &ns, "b").await?, "backup").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        writer.stop_and_verify().await?;

        s3_credentials(&c, &ns, "minio", &env("AWS_SECRET_ACCESS_KEY")?).await?;
        backup(&c, &ns, "manual-1", "minio").await?;
        let s = backup_finished(&c, &ns, "manual-1", Duration::from_secs(180)).await?;
        ensure!(s.phase == Some(BackupPhase::Succeeded), "backup failed: {:?}", s.reason);
        let location = s.location.clone().context("no location")?;
        let bucket = env("OUROBOROS_S3_BUCKET")?;
        ensure!(location.starts_with(&format!("s3://{bucket}/e2e/{ns}/b/")), "location {location}");
        ensure!(s.revision.unwrap_or(0) > 1 && s.sha256.as_ref().is_some_and(|h| h.len() == 64), "{s:?}");
        // The member's HashKV at the snapshot's revision, for a restore drill to compare (its match
        // with a restored copy is shown on real etcd in the sidecar's pipeline_real tests).
        ensure!(
            s.kv_hash.is_some() && s.kv_hash_compact_revision.is_some() && s.kv_hash_unavailable.is_none(),
            "no kvHash recorded: {s:?}"
        );
        // A follower was chosen.
        let cluster = Api::<EtcdCluster>::namespaced(c.clone(), &ns).get("b").await?;
        let cs = cluster.status.clone().unwrap_or_default();
        let leader = cs.members.iter().find(|m| m.is_leader).map(|m| m.name.clone());
        ensure!(s.member.is_some() && s.member != leader, "backed up from the leader {leader:?}");
        ensure!(
            cs.last_successful_backup.as_ref().is_some_and(|l| l.name == "manual-1"),
            "lastSuccessfulBackup not recorded: {:?}",
            cs.last_successful_backup
        );

        // Backups created together run one at a time: each takes the cluster's backup slot (a merge
        // patch conditional on the cluster's resourceVersion) before its sidecar is asked, and the
        // others wait for it; all of them succeed. The proof is each one's recorded run, from its
        // sidecar started (startTime) to its Succeeded write (completionTime): the next one can
        // only start once that write freed the slot, so the runs never overlap. (Sampling for two
        // at once cannot prove it: a backup of a small database is Running for a few milliseconds,
        // less than one poll.)
        for i in 0..3 {
            backup(&c, &ns, &format!("burst-{i}"), "minio").await?;
        }
        let backups = Api::<EtcdBackup>::namespaced(c.clone(), &ns);
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        let burst = loop {
            let burst: Vec<EtcdBackup> = backups
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|b| b.metadata.name.as_deref().is_some_and(|n| n.starts_with("burst-")))
                .collect();
            let phase = |b: &EtcdBackup| b.status.as_ref().and_then(|s| s.phase);
            if burst.iter().all(|b| phase(b).is_some_and(|p| p.is_terminal())) {
                for b in &burst {
                    ensure!(phase(b) == Some(BackupPhase::Succeeded), "{:?}: {:?}", b.metadata.name, b.status);
                }
                break burst;
            }
            ensure!(std::time::Instant::now() < deadline, "the burst did not finish: {burst:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let mut runs = burst
            .iter()
            .map(|b| {
                let s = b.status.clone().unwrap_or_default();
                let at = |t: Option<String>| -> anyhow::Result<jiff::Timestamp> {
                    Ok(t.with_context(|| format!("{:?} lacks a time: {s:?}", b.metadata.name))?.parse()?)
                };
                Ok((at(s.start_time.clone())?, at(s.completion_time.clone())?, b.name_any()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        runs.sort();
        for pair in runs.windows(2) {
            let ((_, ended, first), (started, _, next)) = (&pair[0], &pair[1]);
            ensure!(started > ended, "{next} started at {started} while {first} ran (until {ended}): {runs:?}");
        }
        println!("3 backups created at once ran one after another: {runs:?}");

        // The archive is what it says: download it, untar it, and let etcdutl read the snapshot.
        let key = location.trim_start_matches(&format!("s3://{bucket}/"));
        let dir = std::env::temp_dir().join(format!("ouroboros-{ns}"));
        std::fs::create_dir_all(&dir)?;
        let archive = dir.join("archive.tar.gz");
        let user = format!("{}:{}", env("AWS_ACCESS_KEY_ID")?, env("AWS_SECRET_ACCESS_KEY")?);
        let st = Command::new("curl")
            .args(["-sf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &user, "-o"])
            .arg(&archive)
            .arg(format!("{}/{bucket}/{key}", env("OUROBOROS_S3_ENDPOINT")?))
            .status()?;
        ensure!(st.success(), "downloading {key} failed");
        let st = Command::new("tar").arg("xzf").arg(&archive).arg("-C").arg(&dir).status()?;
        ensure!(st.success(), "tar xzf failed");
        let out = Command::new(etcd_tool("etcdutl"))
            .args(["snapshot", "status", "-w", "json"])
            .arg(dir.join("snapshot.db"))
            .output()?;
        ensure!(out.status.success(), "etcdutl refused the snapshot: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(v["revision"].as_i64() == s.revision, "etcdutl says revision {}, status says {:?}", v["revision"], s.revision);

        // Wrong secret key: Failed, and the reason names the S3 error.
        s3_credentials(&c, &ns, "wrong", "not-the-password").await?;
        backup(&c, &ns, "wrong-creds", "wrong").await?;
        let s = backup_finished(&c, &ns, "wrong-creds", Duration::from_secs(180)).await?;
        ensure!(s.phase == Some(BackupPhase::Failed), "wrong credentials succeeded");
        let reason = s.reason.unwrap_or_default();
        ensure!(reason.contains("SignatureDoesNotMatch") || reason.contains("InvalidAccessKeyId"), "reason: {reason}");
        ensure!(s.location.is_none(), "a failed backup has a location");

        // A missing Secret: Failed with the Secret's name.
        backup(&c, &ns, "no-secret", "does-not-exist").await?;
        let s = backup_finished(&c, &ns, "no-secret", Duration::from_secs(180)).await?;
        ensure!(s.phase == Some(BackupPhase::Failed), "a missing Secret succeeded");
        ensure!(s.reason.unwrap_or_default().contains("does-not-exist"), "the reason does not name the Secret");
        Ok(())
    })
    .await
}
