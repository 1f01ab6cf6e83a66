//! Only the operator drives a member's backup sidecar (docs/security.md): on the real cluster, every
//! other caller that reaches a member pod is refused and nothing reaches the store, while the
//! operator's own backup of the same cluster goes through.

use std::time::Duration;

use anyhow::ensure;
use kube::{Api, api::PostParams};
use ouroboros_crds::{BackupPhase, EtcdBackup, EtcdCluster};
use ouroboros_e2e::{
    TestNamespace, backup_finished, client, env,
    etcd_cluster::{self, converged},
    s3_credentials, sidecar_auth,
};

#[tokio::test]
async fn a_member_sidecar_obeys_the_operator_alone() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create_restricted(&c, "sidecar-auth").await?.run(|c, ns| async move {
        etcd_cluster::create(
            &c,
            &ns,
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: s}\nspec: {size: 1}\n",
        )
        .await?;
        etcd_cluster::wait(&c, &ns, "s", "1 member", Duration::from_secs(180), converged(1, "3.6.16")).await?;
        let cluster = Api::<EtcdCluster>::namespaced(c.clone(), &ns).get("s").await?;
        let member = cluster.status.unwrap_or_default().members[0].name.clone();
        sidecar_auth::strangers_are_refused(&c, &ns, "s", &member).await?;

        // The operator's own request to the same sidecar is served.
        s3_credentials(&c, &ns, "minio", &env("AWS_SECRET_ACCESS_KEY")?).await?;
        let yaml = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {{name: by-operator}}\n\
             spec: {{clusterName: s, destination: {{s3: {{bucket: {}, prefix: e2e/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}}}\n",
            env("OUROBOROS_S3_BUCKET")?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        Api::<EtcdBackup>::namespaced(c.clone(), &ns)
            .create(&PostParams::default(), &serde_norway::from_str(&yaml)?)
            .await?;
        let s = backup_finished(&c, &ns, "by-operator", Duration::from_secs(120)).await?;
        ensure!(s.phase == Some(BackupPhase::Succeeded), "the operator's backup failed: {:?}", s.reason);
        Ok(())
    })
    .await
}
