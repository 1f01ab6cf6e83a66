//! How the operator reaches a member's etcd: its endpoint (pod IP and port, `https` with the name its
//! certificate carries when the cluster has `spec.tls`) and the operator's client certificate. The
//! cluster controller and the backup controller both dial members, and must dial them the same way.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use ouroboros_crds::EtcdCluster;

use crate::{
    certificates::{self, CertificateReport, Purpose, SecretPem},
    etcd::{ClientTls, Endpoint},
    vocabulary,
};

/// A TLS Secret named in `spec.tls` (or the boot member's) is missing or incomplete; the message
/// names the field and the Secret.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsSecretError(pub String);

/// The endpoint of `member` at `ip:port`: plain HTTP, or HTTPS verified against the member's DNS
/// name (self-hosted members advertise their node's address, so their certificates name that).
pub fn member_endpoint(
    cluster: &EtcdCluster,
    member: &str,
    ip: &str,
    port: u16,
    tls: Option<&Arc<ClientTls>>,
) -> Endpoint {
    match tls {
        Some(t) => Endpoint {
            url: format!("https://{ip}:{port}"),
            tls: Some((vocabulary::member_tls_name(cluster, member, ip), t.clone())),
        },
        None => Endpoint::plain(format!("http://{ip}:{port}")),
    }
}

/// What the Secrets of `spec.tls` hold now.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    /// The operator's client certificate.
    pub client: Arc<ClientTls>,
    /// Each Secret's name, purpose and material.
    pub secrets: Vec<(String, Purpose, ClientTls)>,
}

impl TlsMaterial {
    /// The digest of everything the Secrets hold (keys included). Members mount operator-made
    /// copies named by it (`certificate_copies`), so a pod's certificates never change under it: a
    /// member whose pod recorded another digest is restarted onto these, one at a time.
    pub fn digest(&self) -> String {
        let parts: Vec<(&[u8], &[u8], &[u8])> = self
            .secrets
            .iter()
            .map(|(_, _, t)| (t.ca.as_slice(), t.cert.as_slice(), t.key.as_slice()))
            .collect();
        certificates::digest(&parts)
    }

    /// The PEM of each Secret, for the checks of `certificates`.
    pub fn pems(&self) -> Vec<SecretPem<'_>> {
        self.secrets
            .iter()
            .map(|(name, purpose, t)| SecretPem {
                name,
                purpose: *purpose,
                ca: &t.ca,
                cert: &t.cert,
            })
            .collect()
    }

    /// Checks every Secret's certificate against the names members are reached by, at `now`.
    pub fn check(&self, member_names: &[String], now: jiff::Timestamp) -> CertificateReport {
        certificates::check(&self.pems(), member_names, now.as_second())
    }
}

/// Reads the Secrets named in `spec.tls`: checks they exist with their keys, and returns what they
/// hold. `Ok(None)` without TLS.
pub async fn tls_material(
    client: &kube::Client,
    cluster: &EtcdCluster,
) -> Result<Option<TlsMaterial>, TlsSecretError> {
    let Some(tls) = &cluster.spec.tls else {
        return Ok(None);
    };
    let ns = cluster.namespace().unwrap_or_default();
    let mut secrets = Vec::new();
    for (purpose, name) in [
        (Purpose::Peer, &tls.peer_secret),
        (Purpose::Server, &tls.server_secret),
        (Purpose::OperatorClient, &tls.operator_client_secret),
    ] {
        let material = read_tls_secret(client, &ns, name, purpose.field()).await?;
        secrets.push((name.clone(), purpose, material));
    }
    material(secrets).map(Some)
}

/// The material of three Secrets, one per purpose.
pub fn material(secrets: Vec<(String, Purpose, ClientTls)>) -> Result<TlsMaterial, TlsSecretError> {
    let client = secrets
        .iter()
        .find(|(_, p, _)| *p == Purpose::OperatorClient)
        .map(|(_, _, t)| Arc::new(t.clone()))
        .ok_or_else(|| TlsSecretError("spec.tls.operatorClientSecret was not read".to_owned()))?;
    Ok(TlsMaterial { client, secrets })
}

/// Reads one Secret, `None` when there is none.
pub async fn read_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<Secret>, TlsSecretError> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| TlsSecretError(format!("reading Secret {ns}/{name}: {e}")))
}

/// Reads one TLS Secret's `ca.crt`, `tls.crt` and `tls.key`; `field` names where it was referenced.
pub async fn read_tls_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<ClientTls, TlsSecretError> {
    match read_secret(client, ns, name).await? {
        Some(secret) => tls_of(secret, field),
        None => Err(TlsSecretError(format!(
            "{field}: Secret {ns}/{name} does not exist; create a kubernetes.io/tls Secret with ca.crt, tls.crt and tls.key"
        ))),
    }
}

/// A TLS Secret's `ca.crt`, `tls.crt` and `tls.key`; `field` names where it was referenced.
pub fn tls_of(secret: Secret, field: &str) -> Result<ClientTls, TlsSecretError> {
    let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
    let data = secret.data.unwrap_or_default();
    let key = |k: &str| {
        data.get(k).map(|b| b.0.clone()).ok_or_else(|| {
            TlsSecretError(format!(
                "{field}: Secret {ns}/{name} has no {k}; create a kubernetes.io/tls Secret with ca.crt, tls.crt and tls.key"
            ))
        })
    };
    Ok(ClientTls {
        ca: key("ca.crt")?,
        cert: key("tls.crt")?,
        key: key("tls.key")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(spec: serde_json::Value) -> EtcdCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "c", "namespace": "ns"}, "spec": spec
        }))
        .unwrap()
    }

    fn client_tls() -> Arc<ClientTls> {
        Arc::new(ClientTls {
            ca: b"ca".to_vec(),
            cert: b"cert".to_vec(),
            key: b"key".to_vec(),
        })
    }

    /// The backup controller's database-size probe dialled `http://` on TLS clusters (refused, so
    /// every TLS backup got the base deadline); it now dials through this, as observe does.
    #[test]
    fn a_tls_member_is_dialled_over_https_and_verified_by_its_dns_name() {
        let tls = cluster(serde_json::json!({"size": 3,
            "tls": {"peerSecret": "p", "serverSecret": "s", "operatorClientSecret": "o"}}));
        let e = member_endpoint(&tls, "c-1", "10.0.0.7", 2379, Some(&client_tls()));
        assert_eq!(e.url, "https://10.0.0.7:2379");
        assert_eq!(
            e.tls.as_ref().map(|(name, _)| name.as_str()),
            Some("c-1.c.ns.svc")
        );

        let plain = cluster(serde_json::json!({"size": 3}));
        let e = member_endpoint(&plain, "c-1", "10.0.0.7", 2379, None);
        assert_eq!(e.url, "http://10.0.0.7:2379");
        assert!(e.tls.is_none());
    }

    #[test]
    fn a_self_hosted_member_is_verified_by_its_node_address() {
        let c = cluster(serde_json::json!({"size": 3,
            "selfHosted": {"bootMemberClientEndpoint": "https://10.0.0.1:12379"},
            "tls": {"peerSecret": "p", "serverSecret": "s", "operatorClientSecret": "o"}}));
        let e = member_endpoint(&c, "c-1", "192.168.1.5", 12389, Some(&client_tls()));
        assert_eq!(e.url, "https://192.168.1.5:12389");
        assert_eq!(e.tls.as_ref().map(|(name, _)| name.as_str()), Some("192.168.1.5"));
    }
}
