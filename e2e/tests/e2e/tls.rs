//! TLS between members and from the operator: peer and client traffic over https with client
//! certificates required, and a missing Secret reported as a condition that names it.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use ouroboros_crds::{BackupPhase, EtcdBackup, condition_types};
use ouroboros_e2e::{
    TestNamespace, backup_finished,
    certs::{make_ca, make_member_certs, tls_secret},
    client,
    etcd_cluster::{self, converged},
    kubectl, minio_secret,
};

#[tokio::test]
async fn tls_cluster_serves_only_https_with_client_certificates() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "tls").await?.run(|c, ns| async move {
        let dir = std::env::temp_dir().join(format!("ouroboros-{ns}"));
        std::fs::create_dir_all(&dir)?;
        make_ca(&dir, "e2e-etcd-ca")?;
        make_member_certs(&dir, "tls", &ns, "")?;
        let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
        secrets.create(&PostParams::default(), &tls_secret(&dir, "etcd-peer", "peer")?).await?;
        secrets.create(&PostParams::default(), &tls_secret(&dir, "etcd-server", "server")?).await?;
        let t = Duration::from_secs(180);
        etcd_cluster::create(
            &c,
            &ns,
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: tls}\n\
             spec: {size: 3, pod: {antiAffinity: None}, tls: {peerSecret: etcd-peer, serverSecret: etcd-server, operatorClientSecret: etcd-operator-client}}\n",
        )
        .await?;
        // The operator's client Secret does not exist yet: the condition says which and how to fix it.
        let status = etcd_cluster::wait(&c, &ns, "tls", "a condition naming the missing Secret", t, |_, s| {
            s.conditions.iter().any(|c| c.type_ == condition_types::DEGRADED && c.reason == "TLSSecretInvalid")
        })
        .await?;
        let msg = &status.conditions.iter().find(|c| c.reason == "TLSSecretInvalid").context("condition")?.message;
        ensure!(msg.contains("spec.tls.operatorClientSecret") && msg.contains("etcd-operator-client"), "message: {msg}");

        secrets.create(&PostParams::default(), &tls_secret(&dir, "etcd-operator-client", "client")?).await?;
        let status = etcd_cluster::wait(&c, &ns, "tls", "3 TLS members", t, converged(3, "3.6.16")).await?;
        ensure!(
            status.members.iter().all(|m| m.peer_url.as_deref().is_some_and(|u| u.starts_with("https://"))),
            "peer URLs are not https: {:?}",
            status.members
        );

        // From inside a member: https with a client certificate works for every member...
        let member = &status.members[0].name;
        // etcdctl run directly: the etcd image has no shell (as upstream's).
        let tls_flags = ["--cacert", "/etc/etcd/tls/server/ca.crt", "--cert", "/etc/etcd/tls/server/tls.crt",
                         "--key", "/etc/etcd/tls/server/tls.key"];
        let etcdctl = |args: &[&str]| {
            let mut all = vec!["-n", ns.as_str(), "exec", member.as_str(), "-c", "etcd", "--", "etcdctl"];
            all.extend_from_slice(args);
            kubectl(&all)
        };
        let https = format!("https://{member}.tls.{ns}.svc:2379");
        let http = format!("http://{member}.tls.{ns}.svc:2379");
        let timeouts = ["--dial-timeout=3s", "--command-timeout=5s"];
        let health = etcdctl(&[&["--endpoints", &https], &tls_flags[..], &["endpoint", "health", "--cluster"]].concat())?;
        ensure!(health.success, "https health failed: {}{}", health.stdout, health.stderr);
        ensure!(health.stdout.matches("is healthy").count() == 3, "not every member is healthy over https: {}", health.stdout);
        // ...while plain http and https without a client certificate are refused.
        let plain = etcdctl(&[&["--endpoints", &http], &timeouts[..], &["endpoint", "health"]].concat())?;
        ensure!(!plain.success, "plain http was served: {}", plain.stdout);
        let anonymous = etcdctl(
            &[&["--endpoints", &https, "--cacert", "/etc/etcd/tls/server/ca.crt"], &timeouts[..], &["endpoint", "health"]].concat(),
        )?;
        ensure!(!anonymous.success, "https without a client certificate was served: {}", anonymous.stdout);

        // A backup of a TLS cluster: the sidecar dials its member with the operator's client certificate.
        let env = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
        minio_secret(&c, &ns).await?;
        let backup: EtcdBackup = serde_norway::from_str(&format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {{name: tls-backup}}\n\
             spec: {{clusterName: tls, destination: {{s3: {{bucket: {}, prefix: e2e-tls/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}}}\n",
            env("OUROBOROS_S3_BUCKET")?,
            env("OUROBOROS_S3_ENDPOINT")?
        ))?;
        let backups: Api<EtcdBackup> = Api::namespaced(c.clone(), &ns);
        backups.create(&PostParams::default(), &backup).await?;
        let s = backup_finished(&c, &ns, "tls-backup", t).await?;
        ensure!(s.phase == Some(BackupPhase::Succeeded), "the TLS backup failed: {:?}", s.reason);
        ensure!(s.sha256.as_ref().is_some_and(|h| h.len() == 64), "{s:?}");
        Ok(())
    })
    .await
}
