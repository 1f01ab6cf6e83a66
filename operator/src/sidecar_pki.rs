//! The private CA between the operator and the backup sidecars (docs/security.md). A sidecar can
//! stream the whole database to any store it is told, so only the operator may drive one, and the
//! operator sends it store credentials, so it must be sure it talks to the right sidecar.
//!
//! - The CA is made once by the operator and kept in Secret [`CA_SECRET`] in the operator's own
//!   namespace; its key never leaves that Secret and the operator's memory.
//! - Each cluster gets a Secret ([`server_secret_name`]) with one server certificate for all its
//!   sidecars, for [`server_identity`], and the CA bundle the sidecars check callers against.
//! - The operator's client certificate, for [`OPERATOR_IDENTITY`], is issued in memory and renewed
//!   by the process; it is never stored.
//!
//! Every certificate is renewed once less than a third of its lifetime is left, which leaves the
//! kubelet ample time to deliver a renewed Secret before the old certificate expires.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
pub use ouroboros_crds::sidecar::{OPERATOR_IDENTITY, server_identity, server_secret_name};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// The Secret in the operator's namespace that holds the CA (`ca.crt`, `ca.key`).
pub const CA_SECRET: &str = "ouroboros-sidecar-ca";
/// When a certificate stored in a Secret expires (RFC 3339), so that renewal needs no X.509 parsing.
pub const ANNOTATION_NOT_AFTER: &str = "etcd.ouroboros.dev/not-after";
/// On the CA Secret after a rotation: when the CA it replaced expires.
pub const ANNOTATION_PREVIOUS_NOT_AFTER: &str = "etcd.ouroboros.dev/previous-not-after";
/// On the CA Secret after a rotation: when it happened.
pub const ANNOTATION_ROTATED_AT: &str = "etcd.ouroboros.dev/rotated-at";
/// How long after a CA rotation the operator still signs its client certificate with the CA it
/// replaced: sidecars trust the new CA only once the kubelet has delivered their reissued Secret
/// (a minute or two; a paused cluster's Secret is reissued only when it is unpaused).
pub const ROTATION_GRACE: SignedDuration = SignedDuration::from_hours(24 * 7);

/// How long the CA is valid. Long, because replacing it means every sidecar must reload its bundle.
pub const CA_LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 365 * 10);
/// How long a sidecar's server certificate is valid.
pub const SERVER_LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 90);
/// How long the operator's in-memory client certificate is valid.
pub const CLIENT_LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 30);
/// Certificates start this long before they are issued, so a node whose clock is a little behind
/// the operator's does not see a certificate from the future.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);
/// The CA's subject. Fixed, because leaves are signed with an issuer rebuilt from it and the key.
const CA_COMMON_NAME: &str = "ouroboros sidecar CA";

/// Why making or loading a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating a key pair failed.
    #[error("generating a key pair: {0}")]
    GenerateKey(#[source] rcgen::Error),
    /// Signing a certificate failed.
    #[error("signing the certificate for {name}: {source}")]
    Sign {
        /// The certificate's name.
        name: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// The CA Secret is incomplete or unreadable.
    #[error("Secret {secret}: {problem}; delete it and the operator makes a new CA (see docs/security.md)")]
    BadCaSecret {
        /// `namespace/name`.
        secret: String,
        /// What is wrong.
        problem: String,
    },
    /// Reading or creating the CA Secret failed.
    #[error("{action} Secret {secret}: {source}")]
    Kube {
        /// What was attempted.
        action: &'static str,
        /// `namespace/name`.
        secret: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A sidecar's server certificate: `serverAuth` only, so it cannot be used to call a sidecar.
    Server,
    /// The operator's client certificate: `clientAuth` only.
    Client,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// When it expires.
    pub not_after: Timestamp,
}

/// The CA: its certificate bundle (what both sides trust) and its signing key.
pub struct Ca {
    /// The current CA's certificate first, then the one it replaced, if any.
    bundle_pem: String,
    key: KeyPair,
    not_after: Timestamp,
    previous: Option<Previous>,
}

/// The CA a rotation replaced: still trusted, and still signing the operator's client certificate
/// for [`ROTATION_GRACE`].
struct Previous {
    key: KeyPair,
    not_after: Timestamp,
    rotated_at: Timestamp,
}

/// The first certificate of a PEM bundle.
fn first_certificate(bundle: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    bundle.find(END).map_or(bundle, |i| &bundle[..i + END.len()])
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn offset_time(t: Timestamp) -> Result<time::OffsetDateTime, rcgen::Error> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|_| rcgen::Error::Time)
}

fn ca_params(not_before: Timestamp, not_after: Timestamp) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    // It signs leaves and nothing else: no intermediate CA can be made from it.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = offset_time(not_before)?;
    params.not_after = offset_time(not_after)?;
    Ok(params)
}

impl Ca {
    /// A new CA valid from `now` for [`CA_LIFETIME`].
    pub fn generate(now: Timestamp) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
        let not_after = now.saturating_add(CA_LIFETIME).unwrap_or(now);
        let sign = |source| PkiError::Sign {
            name: CA_COMMON_NAME.to_owned(),
            source,
        };
        let cert = ca_params(now.saturating_sub(BACKDATE).unwrap_or(now), not_after)
            .and_then(|p| p.self_signed(&key))
            .map_err(sign)?;
        Ok(Self {
            bundle_pem: cert.pem(),
            key,
            not_after,
            previous: None,
        })
    }

    /// Whether the CA should be replaced: less than a third of its lifetime is left, which leaves
    /// years for every certificate it signed to be reissued by its successor.
    pub fn due_for_rotation(&self, now: Timestamp) -> bool {
        self.not_after.duration_since(now) < CA_LIFETIME / 3
    }

    /// A new CA that replaces this one. Both are trusted (the bundle holds the new certificate, then
    /// this one's), leaves are issued by the new one, and the operator's client certificate by this
    /// one for [`ROTATION_GRACE`], so a sidecar that has not yet received the new bundle still
    /// trusts the operator.
    pub fn rotate(self, now: Timestamp) -> Result<Self, PkiError> {
        let new = Self::generate(now)?;
        let bundle_pem = format!(
            "{}\n{}\n",
            new.bundle_pem.trim_end(),
            first_certificate(&self.bundle_pem)
        );
        Ok(Self {
            bundle_pem,
            previous: Some(Previous {
                key: self.key,
                not_after: self.not_after,
                rotated_at: now,
            }),
            ..new
        })
    }

    /// The CA kept in `secret` (see [`Ca::to_secret`]).
    pub fn from_secret(secret: &Secret) -> Result<Self, PkiError> {
        let name = format!(
            "{}/{}",
            secret.metadata.namespace.as_deref().unwrap_or_default(),
            secret.metadata.name.as_deref().unwrap_or_default()
        );
        let bad = |problem: String| PkiError::BadCaSecret {
            secret: name.clone(),
            problem,
        };
        let field = |key: &str| {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| bad(format!("it has no {key}")))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| bad(format!("{key} is not PEM text")))
        };
        let key = KeyPair::from_pem(&field("ca.key")?).map_err(|e| bad(format!("ca.key: {e}")))?;
        let not_after = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_NOT_AFTER))
            .ok_or_else(|| bad(format!("it has no {ANNOTATION_NOT_AFTER} annotation")))?
            .parse::<Timestamp>()
            .map_err(|e| bad(format!("{ANNOTATION_NOT_AFTER}: {e}")))?;
        let annotation = |k: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .map(|v| v.parse::<Timestamp>().map_err(|e| bad(format!("{k}: {e}"))))
                .transpose()
        };
        let previous = match secret.data.as_ref().and_then(|d| d.get("previous.key")) {
            None => None,
            Some(_) => Some(Previous {
                key: KeyPair::from_pem(&field("previous.key")?)
                    .map_err(|e| bad(format!("previous.key: {e}")))?,
                not_after: annotation(ANNOTATION_PREVIOUS_NOT_AFTER)?
                    .ok_or_else(|| bad(format!("it has no {ANNOTATION_PREVIOUS_NOT_AFTER} annotation")))?,
                rotated_at: annotation(ANNOTATION_ROTATED_AT)?
                    .ok_or_else(|| bad(format!("it has no {ANNOTATION_ROTATED_AT} annotation")))?,
            }),
        };
        Ok(Self {
            bundle_pem: field("ca.crt")?,
            key,
            not_after,
            previous,
        })
    }

    /// The Secret that keeps this CA in `namespace`.
    pub fn to_secret(&self, namespace: &str) -> Secret {
        let mut annotations = BTreeMap::from([(ANNOTATION_NOT_AFTER.to_owned(), self.not_after.to_string())]);
        let mut data = BTreeMap::from([
            (
                "ca.crt".to_owned(),
                ByteString(self.bundle_pem.clone().into_bytes()),
            ),
            (
                "ca.key".to_owned(),
                ByteString(self.key.serialize_pem().into_bytes()),
            ),
        ]);
        if let Some(p) = &self.previous {
            annotations.insert(ANNOTATION_PREVIOUS_NOT_AFTER.to_owned(), p.not_after.to_string());
            annotations.insert(ANNOTATION_ROTATED_AT.to_owned(), p.rotated_at.to_string());
            data.insert(
                "previous.key".to_owned(),
                ByteString(p.key.serialize_pem().into_bytes()),
            );
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "ouroboros".to_owned(),
                )])),
                annotations: Some(annotations),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// The CA certificates both sides trust, PEM.
    pub fn bundle(&self) -> &str {
        &self.bundle_pem
    }

    /// When the CA expires.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// A certificate for `name`, valid from `now` for `lifetime` (never past the CA's own expiry).
    pub fn issue(
        &self,
        name: &str,
        usage: Usage,
        now: Timestamp,
        lifetime: SignedDuration,
    ) -> Result<Leaf, PkiError> {
        sign_leaf(&self.key, self.not_after, name, usage, now, lifetime)
    }

    /// The operator's client certificate: from the CA a rotation replaced while sidecars may not
    /// trust the new one yet ([`ROTATION_GRACE`]), else from the current CA. Also says until when
    /// the signer stays the same (the end of the grace), so the caller knows when to reissue.
    pub fn issue_client(&self, now: Timestamp) -> Result<(Leaf, Option<Timestamp>), PkiError> {
        if let Some(p) = &self.previous {
            let grace_ends = p
                .rotated_at
                .saturating_add(ROTATION_GRACE)
                .unwrap_or(p.rotated_at);
            if now < grace_ends && now < p.not_after {
                let leaf = sign_leaf(
                    &p.key,
                    p.not_after,
                    OPERATOR_IDENTITY,
                    Usage::Client,
                    now,
                    CLIENT_LIFETIME,
                )?;
                return Ok((leaf, Some(grace_ends)));
            }
        }
        Ok((
            self.issue(OPERATOR_IDENTITY, Usage::Client, now, CLIENT_LIFETIME)?,
            None,
        ))
    }
}

/// A certificate for `name` signed by the CA key `ca_key` (valid until `ca_not_after`).
fn sign_leaf(
    ca_key: &KeyPair,
    ca_not_after: Timestamp,
    name: &str,
    usage: Usage,
    now: Timestamp,
    lifetime: SignedDuration,
) -> Result<Leaf, PkiError> {
    let sign = |source| PkiError::Sign {
        name: name.to_owned(),
        source,
    };
    let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
    let not_after = now.saturating_add(lifetime).unwrap_or(now).min(ca_not_after);
    let not_before = now.saturating_sub(BACKDATE).unwrap_or(now);
    let issuer = Issuer::new(ca_params(not_before, ca_not_after).map_err(sign)?, ca_key);
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(sign)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset_time(not_before).map_err(sign)?;
    params.not_after = offset_time(not_after).map_err(sign)?;
    let cert = params.signed_by(&key, &issuer).map_err(sign)?;
    Ok(Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// Whether a certificate from `ca` that expires at `not_after`, issued for `lifetime`, is due for
/// renewal at `now`: once less than a third of its lifetime is left, unless it already ends with the
/// CA (a new one could not last longer, and reissuing it on every pass would only churn).
pub fn due_for_renewal(ca: &Ca, not_after: Timestamp, lifetime: SignedDuration, now: Timestamp) -> bool {
    let left = not_after.duration_since(now);
    left < lifetime / 3 && not_after < ca.not_after()
}

/// Why the sidecar Secret of the cluster whose UID is `owner_uid` must be (re)issued, or `None`
/// when it is current.
pub fn server_secret_problem(
    existing: Option<&Secret>,
    ca: &Ca,
    owner_uid: &str,
    now: Timestamp,
) -> Option<&'static str> {
    let Some(secret) = existing else {
        return Some("it does not exist");
    };
    let owners = secret.metadata.owner_references.iter().flatten();
    if !owners.into_iter().any(|o| o.uid == owner_uid) {
        // Left by an earlier cluster of the same name, not yet garbage-collected: reissued (the apply
        // replaces its owner), so that the collector does not take it from under this cluster.
        return Some("it belongs to an earlier cluster of the same name");
    }
    let data = secret.data.as_ref();
    let has = |k: &str| data.and_then(|d| d.get(k)).is_some_and(|v| !v.0.is_empty());
    if !has("tls.crt") || !has("tls.key") {
        return Some("it lacks tls.crt or tls.key");
    }
    if data.and_then(|d| d.get("ca.crt")).map(|v| v.0.as_slice()) != Some(ca.bundle().as_bytes()) {
        // A new CA (or bundle) must reach the sidecars, and their certificate must chain to it.
        return Some("its CA bundle is not the operator's");
    }
    let not_after = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_NOT_AFTER))
        .and_then(|t| t.parse::<Timestamp>().ok());
    match not_after {
        None => Some("its expiry is not recorded"),
        Some(t) if due_for_renewal(ca, t, SERVER_LIFETIME, now) => Some("its certificate is due for renewal"),
        Some(_) => None,
    }
}

/// The Secret with the server certificate of the sidecars of cluster `cluster` in `namespace`,
/// owned by the cluster so that it goes with it.
pub fn server_secret(
    ca: &Ca,
    namespace: &str,
    cluster: &str,
    labels: BTreeMap<String, String>,
    owner: OwnerReference,
    now: Timestamp,
) -> Result<Secret, PkiError> {
    let leaf = ca.issue(
        &server_identity(namespace, cluster),
        Usage::Server,
        now,
        SERVER_LIFETIME,
    )?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(server_secret_name(cluster)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_NOT_AFTER.to_owned(),
                leaf.not_after.to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), ByteString(leaf.cert_pem.into_bytes())),
            ("tls.key".to_owned(), ByteString(leaf.key_pem.into_bytes())),
            ("ca.crt".to_owned(), ByteString(ca.bundle().as_bytes().to_vec())),
        ])),
        ..Default::default()
    })
}

/// The CA in `namespace`, made and stored first if there is none. Two replicas that both find none
/// race on a create, which only one wins; the loser reads the winner's.
pub async fn load_or_create_ca(client: Client, namespace: &str) -> Result<Ca, PkiError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let secret = format!("{namespace}/{CA_SECRET}");
    let kube = |action| {
        let secret = secret.clone();
        move |source| PkiError::Kube {
            action,
            secret,
            source,
        }
    };
    if let Some(stored) = secrets.get_opt(CA_SECRET).await.map_err(kube("reading"))? {
        let ca = Ca::from_secret(&stored)?;
        let now = Timestamp::now();
        if !ca.due_for_rotation(now) {
            return Ok(ca);
        }
        let old_expiry = ca.not_after;
        let rotated = ca.rotate(now)?;
        let replacement = rotated.to_secret(namespace);
        // A merge patch that carries the resourceVersion as read: refused with 409 if the Secret
        // changed since, so two replicas rotating at once cannot both win.
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": stored.metadata.resource_version,
                "annotations": replacement.metadata.annotations,
            },
            "data": replacement.data,
        });
        return match secrets
            .patch(CA_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(%secret, old_expiry = %old_expiry, not_after = %rotated.not_after, "rotated the sidecar CA");
                Ok(rotated)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Ca::from_secret(&secrets.get(CA_SECRET).await.map_err(kube("reading"))?)
            }
            Err(e) => {
                // The current CA is still valid for years: keep using it, say so, try at next start.
                tracing::warn!(%secret, error = %e, "rotating the sidecar CA failed; keeping the current one");
                Ca::from_secret(&stored)
            }
        };
    }
    let ca = Ca::generate(Timestamp::now())?;
    match secrets
        .create(&PostParams::default(), &ca.to_secret(namespace))
        .await
    {
        Ok(_) => {
            tracing::info!(%secret, not_after = %ca.not_after, "created the sidecar CA");
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = secrets.get(CA_SECRET).await.map_err(kube("reading"))?;
            Ca::from_secret(&s)
        }
        Err(e) => Err(kube("creating")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    const UID: &str = "uid-1";

    fn secret_of(ca: &Ca, at: Timestamp) -> Secret {
        let owner = OwnerReference {
            uid: UID.into(),
            ..Default::default()
        };
        server_secret(ca, "ns", "c", BTreeMap::new(), owner, at).unwrap()
    }

    #[test]
    fn the_ca_survives_its_secret() {
        let ca = Ca::generate(now()).unwrap();
        let mut s = ca.to_secret("ouroboros-system");
        s.metadata.namespace = Some("ouroboros-system".into());
        let back = Ca::from_secret(&s).unwrap();
        assert_eq!(back.bundle(), ca.bundle());
        assert_eq!(back.not_after(), ca.not_after());
        // A CA read back still signs leaves that chain to the stored certificate (checked by the
        // sidecar's TLS tests); here: it signs at all.
        back.issue("x", Usage::Client, now(), CLIENT_LIFETIME).unwrap();
    }

    #[test]
    fn an_incomplete_ca_secret_names_what_is_missing() {
        let ca = Ca::generate(now()).unwrap();
        let mut s = ca.to_secret("ns");
        s.data.as_mut().unwrap().remove("ca.key");
        let e = Ca::from_secret(&s).unwrap_err().to_string();
        assert!(
            e.contains("ns/ouroboros-sidecar-ca") && e.contains("ca.key"),
            "{e}"
        );
    }

    #[test]
    fn a_rotation_keeps_the_old_ca_trusted_and_signing_the_operator_for_the_grace() {
        let ca = Ca::generate(now()).unwrap();
        assert!(!ca.due_for_rotation(now()));
        let late = ca
            .not_after()
            .saturating_sub(SignedDuration::from_hours(24 * 365 * 3))
            .unwrap();
        assert!(
            ca.due_for_rotation(late),
            "three years before the end a CA is due"
        );
        let old_bundle = ca.bundle().to_owned();
        let rotated = ca.rotate(late).unwrap();
        assert_eq!(rotated.bundle().matches("BEGIN CERTIFICATE").count(), 2);
        assert!(
            rotated
                .bundle()
                .ends_with(&format!("{}\n", old_bundle.trim_end())),
            "the old CA is second"
        );
        assert!(!rotated.due_for_rotation(late));
        // It survives its Secret, previous key and all.
        let back = Ca::from_secret(&rotated.to_secret("ns")).unwrap();
        assert_eq!(back.bundle(), rotated.bundle());
        let (_, signer_changes) = back.issue_client(late).unwrap();
        let grace_ends = late.saturating_add(ROTATION_GRACE).unwrap();
        assert_eq!(
            signer_changes,
            Some(grace_ends),
            "signed by the old CA during the grace"
        );
        let after = grace_ends.saturating_add(SignedDuration::from_hours(1)).unwrap();
        assert_eq!(
            back.issue_client(after).unwrap().1,
            None,
            "signed by the new CA after it"
        );
        // A second rotation drops the first CA: the bundle never grows past two.
        let again = back.rotate(after).unwrap();
        assert_eq!(again.bundle().matches("BEGIN CERTIFICATE").count(), 2);
    }

    #[test]
    fn leaves_never_outlive_the_ca() {
        let ca = Ca::generate(now()).unwrap();
        let late = ca
            .not_after()
            .saturating_sub(SignedDuration::from_hours(24))
            .unwrap();
        let leaf = ca.issue("x", Usage::Server, late, SERVER_LIFETIME).unwrap();
        assert_eq!(leaf.not_after, ca.not_after());
    }

    #[test]
    fn renewal_starts_with_a_third_of_the_lifetime_left() {
        let ca = Ca::generate(now()).unwrap();
        let life = SignedDuration::from_hours(90);
        let expiry = now().saturating_add(SignedDuration::from_hours(31)).unwrap();
        assert!(!due_for_renewal(&ca, expiry, life, now()));
        let expiry = now().saturating_add(SignedDuration::from_hours(29)).unwrap();
        assert!(due_for_renewal(&ca, expiry, life, now()));
        assert!(
            due_for_renewal(&ca, now(), life, now()),
            "an expired certificate is due"
        );
        // One that already ends with the CA cannot be renewed into a longer one.
        let late = ca
            .not_after()
            .saturating_sub(SignedDuration::from_hours(10))
            .unwrap();
        assert!(!due_for_renewal(&ca, ca.not_after(), life, late));
    }

    #[test]
    fn a_cluster_secret_is_reissued_only_when_missing_stale_foreign_or_from_another_ca() {
        let ca = Ca::generate(now()).unwrap();
        assert_eq!(
            server_secret_problem(None, &ca, UID, now()),
            Some("it does not exist")
        );
        let fresh = secret_of(&ca, now());
        assert_eq!(server_secret_problem(Some(&fresh), &ca, UID, now()), None);
        assert_eq!(fresh.type_.as_deref(), Some("kubernetes.io/tls"));
        let later = now().saturating_add(SignedDuration::from_hours(24 * 61)).unwrap();
        assert_eq!(
            server_secret_problem(Some(&fresh), &ca, UID, later),
            Some("its certificate is due for renewal")
        );
        let other = Ca::generate(now()).unwrap();
        assert_eq!(
            server_secret_problem(Some(&fresh), &other, UID, now()),
            Some("its CA bundle is not the operator's")
        );
        let mut no_key = fresh.clone();
        no_key.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(
            server_secret_problem(Some(&no_key), &ca, UID, now()),
            Some("it lacks tls.crt or tls.key")
        );
        assert_eq!(
            server_secret_problem(Some(&fresh), &ca, "uid-2", now()),
            Some("it belongs to an earlier cluster of the same name")
        );
        let mut no_expiry = fresh;
        no_expiry.metadata.annotations = None;
        assert_eq!(
            server_secret_problem(Some(&no_expiry), &ca, UID, now()),
            Some("its expiry is not recorded")
        );
    }
}
