//! Client-side encryption of backups on the real cluster (docs/security.md): a cluster with
//! `spec.backup.encryption` stores only age ciphertext; the `age` command line from Debian's package
//! opens the archive to a snapshot `etcdutl` reads; a restore with the wrong identity, or with a Secret
//! that lacks one, fails before the cluster is touched; and a restore with the cluster's own Secret
//! brings back exactly the backed-up keys. It all runs in a namespace that enforces Kubernetes'
//! `restricted` Pod Security profile: members, sidecars, the fetch Job and the restore's seed run
//! as non-root with no capabilities.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use etcd_client::GetOptions;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use ouroboros_crds::{EtcdCluster, EtcdRestore, EtcdRestoreStatus, RestorePhase};
use ouroboros_e2e::{
    TestNamespace, backup_succeeded, client, env, etcd_at,
    etcd_cluster::{self, converged},
    etcd_tool, member_uids, minio_secret, restore_finished, s3,
};

/// A fresh age key pair made by `age-keygen`: (identity file text, public key).
fn keygen(dir: &Path, name: &str) -> anyhow::Result<(String, String)> {
    let file = dir.join(format!("{name}.txt"));
    let _ = std::fs::remove_file(&file);
    let st = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .context("running age-keygen")?;
    ensure!(
        st.status.success(),
        "age-keygen failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let public = Command::new("age-keygen").arg("-y").arg(&file).output()?;
    ensure!(public.status.success(), "age-keygen -y failed");
    Ok((std::fs::read_to_string(&file)?, String::from_utf8(public.stdout)?))
}

async fn key_secret(c: &Client, ns: &str, name: &str, keys: &[(&str, &str)]) -> anyhow::Result<()> {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            keys.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &s)
        .await?;
    Ok(())
}

async fn restore(
    c: &Client,
    ns: &str,
    name: &str,
    backup: &str,
    secret: Option<&str>,
) -> anyhow::Result<EtcdRestoreStatus> {
    let encryption = secret
        .map(|s| format!(", encryption: {{secretName: {s}}}"))
        .unwrap_or_default();
    let r: EtcdRestore = serde_norway::from_str(&format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {{name: {name}}}\n\
         spec: {{clusterName: e, source: {{backupName: {backup}}}{encryption}}}\n"
    ))?;
    Api::<EtcdRestore>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &r)
        .await?;
    restore_finished(c, ns, name, Duration::from_secs(300)).await
}

async fn keys(c: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let mut e = etcd_at(&etcd_cluster::client_endpoint(c, ns, "e").await?).await?;
    let got = e.get("/enc/", Some(GetOptions::new().with_prefix())).await?;
    Ok(got
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap_or_default().to_owned())
        .collect())
}

#[tokio::test]
async fn encrypted_backups_open_with_the_age_cli_and_restore_only_with_their_identity() -> anyhow::Result<()>
{
    let c = client().await?;
    TestNamespace::create_restricted(&c, "encryption").await?.run(|c, ns| async move {
        let dir = std::env::temp_dir().join(format!("ouroboros-{ns}"));
        std::fs::create_dir_all(&dir)?;
        let (identity, recipient) = keygen(&dir, "key")?;
        let (wrong_identity, _) = keygen(&dir, "wrong")?;
        key_secret(&c, &ns, "backup-keys", &[("recipient", &recipient), ("identity", &identity)]).await?;
        key_secret(&c, &ns, "wrong-keys", &[("identity", &wrong_identity)]).await?;
        key_secret(&c, &ns, "public-only", &[("recipient", &recipient)]).await?;
        minio_secret(&c, &ns).await?;
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: e}}\nspec:\n  size: 1\n  backup:\n    schedule: '0 0 1 1 *'\n    encryption: {{secretName: backup-keys}}\n    destination: {{s3: {{bucket: {}, prefix: e2e-encryption/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}\n",
            s3::bucket()?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        etcd_cluster::create(&c, &ns, &yaml).await?;
        etcd_cluster::wait(&c, &ns, "e", "1 member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        let mut e = etcd_at(&etcd_cluster::client_endpoint(&c, &ns, "e").await?).await?;
        for i in 0..40 {
            e.put(format!("/enc/{i:03}"), format!("secret value {i}"), None).await?;
        }
        let b = backup_succeeded(&c, &ns, "e", "enc-1").await?;
        let location = b.location.clone().context("no location")?;
        ensure!(b.encrypted && location.ends_with(".tar.gz.age"), "not encrypted: {location} {b:?}");
        e.put("/enc/after-the-backup", "x", None).await?;

        // The store holds ciphertext; the age CLI opens it, as a user with the identity would.
        let key = location.trim_start_matches(&format!("s3://{}/", s3::bucket()?)).to_owned();
        let archive = dir.join("archive.tar.gz.age");
        s3::download(&key, &archive)?;
        let bytes = std::fs::read(&archive)?;
        ensure!(bytes.starts_with(b"age-encryption.org/v1"), "the stored object is not an age file");
        ensure!(!bytes.windows(12).any(|w| w == b"secret value"), "plaintext values in the stored object");
        let out = dir.join("opened");
        std::fs::create_dir_all(&out)?;
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "age -d -i {} {} | tar xz -C {}",
                dir.join("key.txt").display(),
                archive.display(),
                out.display()
            ))
            .status()?;
        ensure!(st.success(), "age -d | tar xz failed");
        let status = Command::new(etcd_tool("etcdutl"))
            .args(["snapshot", "status", "-w", "json"])
            .arg(out.join("snapshot.db"))
            .output()?;
        ensure!(status.status.success(), "etcdutl snapshot status: {}", String::from_utf8_lossy(&status.stderr));
        let json: serde_json::Value = serde_json::from_slice(&status.stdout)?;
        ensure!(json["revision"].as_i64() == b.revision, "etcdutl reads revision {}, the backup recorded {:?}", json["revision"], b.revision);

        // The wrong identity, and a Secret without one: refused before the cluster is touched.
        let before = member_uids(&c, &ns, "e").await?;
        for (name, secret, want) in [
            ("with-the-wrong-key", "wrong-keys", "decrypting"),
            ("with-no-identity", "public-only", "has no key `identity`"),
        ] {
            let s = restore(&c, &ns, name, "enc-1", Some(secret)).await?;
            let reason = s.reason.clone().unwrap_or_default();
            ensure!(s.phase == Some(RestorePhase::Failed), "{name}: {s:?}");
            ensure!(
                reason.contains(want) && reason.contains(secret) && reason.contains("not touched"),
                "{name}: {reason}"
            );
            ensure!(member_uids(&c, &ns, "e").await? == before, "{name}: the cluster's pods changed");
            let cl = Api::<EtcdCluster>::namespaced(c.clone(), &ns).get("e").await?;
            ensure!(!cl.annotations().contains_key("etcd.ouroboros.dev/restore-in-progress"), "{name}: cluster left held");
            ensure!(keys(&c, &ns).await?.contains(&"/enc/after-the-backup".to_owned()), "{name}: data changed");
        }

        // The cluster's own Secret restores exactly the backed-up keys.
        let s = restore(&c, &ns, "with-the-key", "enc-1", None).await?;
        ensure!(s.phase == Some(RestorePhase::Succeeded), "restore failed: {:?}", s.reason);
        etcd_cluster::wait(&c, &ns, "e", "the restored member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        let got = keys(&c, &ns).await?;
        let want: Vec<String> = (0..40).map(|i| format!("/enc/{i:03}")).collect();
        ensure!(got == want, "restored keys: {} keys, first {:?}, last {:?}", got.len(), got.first(), got.last());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
    .await
}
