//! Which age keys a backup encrypts to and a restore decrypts with, and reading them from their
//! Secrets. Shared by the backup and restore controllers so both name a Secret the same way.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use ouroboros_crds::{BackupEncryption, EtcdBackup, EtcdCluster, EtcdRestore};

use super::{KubeCallError, kube_err};

/// The Secret key backups read: age public keys.
pub const RECIPIENT_KEY: &str = "recipient";
/// The Secret key restores read: an age identity file.
pub const IDENTITY_KEY: &str = "identity";

/// The encryption of backup `b`: its own, else its cluster's `spec.backup.encryption`.
pub fn for_backup<'a>(b: &'a EtcdBackup, cluster: &'a EtcdCluster) -> Option<&'a BackupEncryption> {
    b.spec
        .encryption
        .as_ref()
        .or_else(|| cluster.spec.backup.as_ref()?.encryption.as_ref())
}

/// The Secret restore `r` decrypts with: its own, else that of the cluster it restores (or of the
/// template it creates the cluster from).
pub fn for_restore(r: &EtcdRestore, cluster: Option<&EtcdCluster>) -> Option<BackupEncryption> {
    let spec = cluster.map(|c| &c.spec).or(r.spec.cluster_template.as_deref());
    r.spec
        .encryption
        .clone()
        .or_else(|| spec?.backup.as_ref()?.encryption.clone())
}

/// The text of `key` in Secret `name` of `ns`; `Ok(Err(why))` names what is missing.
pub async fn read_key(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<Result<String, String>, KubeCallError> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(kube_err("reading the encryption Secret"))?;
    let Some(secret) = secret else {
        return Ok(Err(format!("encryption Secret {ns}/{name} does not exist")));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .filter(|v| !v.trim().is_empty());
    Ok(value.ok_or_else(|| format!("encryption Secret {ns}/{name} has no key `{key}`")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cluster(encryption: Option<&str>) -> EtcdCluster {
        let spec = match encryption {
            Some(s) => {
                json!({"size": 1, "backup": {"schedule": "0 * * * *", "encryption": {"secretName": s}}})
            }
            None => json!({"size": 1}),
        };
        serde_json::from_value(json!({
            "apiVersion": "etcd.ouroboros.dev/v1alpha1",
            "kind": "EtcdCluster",
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_backup_uses_its_own_encryption_before_the_clusters() {
        let own: EtcdBackup = serde_json::from_value(json!({
            "apiVersion": "etcd.ouroboros.dev/v1alpha1",
            "kind": "EtcdBackup",
            "metadata": {"name": "b"},
            "spec": {"clusterName": "c", "encryption": {"secretName": "mine"}},
        }))
        .unwrap();
        let plain: EtcdBackup = serde_json::from_value(json!({
            "apiVersion": "etcd.ouroboros.dev/v1alpha1",
            "kind": "EtcdBackup",
            "metadata": {"name": "b"},
            "spec": {"clusterName": "c"},
        }))
        .unwrap();
        let c = cluster(Some("cluster-keys"));
        assert_eq!(for_backup(&own, &c).unwrap().secret_name, "mine");
        assert_eq!(for_backup(&plain, &c).unwrap().secret_name, "cluster-keys");
        assert_eq!(for_backup(&plain, &cluster(None)), None);
    }

    #[test]
    fn a_restore_decrypts_with_its_own_secret_else_the_clusters_or_the_templates() {
        // `extra`: fields added to the spec beside clusterName and source.
        let r = |extra: serde_json::Value| -> EtcdRestore {
            let mut spec = json!({"clusterName": "c", "source": {"latest": true}});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(json!({
                "apiVersion": "etcd.ouroboros.dev/v1alpha1",
                "kind": "EtcdRestore",
                "metadata": {"name": "r"},
                "spec": spec,
            }))
            .unwrap()
        };
        let c = cluster(Some("cluster-keys"));
        assert_eq!(
            for_restore(&r(json!({})), Some(&c)).unwrap().secret_name,
            "cluster-keys"
        );
        let own = r(json!({"encryption": {"secretName": "restore-keys"}}));
        assert_eq!(for_restore(&own, Some(&c)).unwrap().secret_name, "restore-keys");
        let templated = r(json!({"clusterTemplate": {
            "size": 1,
            "backup": {"schedule": "0 * * * *", "encryption": {"secretName": "t"}},
        }}));
        assert_eq!(for_restore(&templated, None).unwrap().secret_name, "t");
        assert_eq!(for_restore(&r(json!({})), Some(&cluster(None))), None);
    }
}
