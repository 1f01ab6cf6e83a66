//! Members never mount the Secrets of `spec.tls` themselves: they mount copies the operator makes
//! once it has accepted what the Secrets hold, one immutable set per digest
//! (`<cluster>-certs-<digest>-{peer,server,client}`). So a renewal reaches a member only when the
//! operator restarts it onto the new set, one member at a time and health-gated; a refused renewal
//! reaches no one (the kubelet refreshes a mounted Secret in a running pod by itself, so mounting
//! the user's Secret would let a refused certificate in within a minute).
//!
//! What the Secrets hold is accepted when it passes `certificates::check` and a roll onto it from
//! every set members run now could not leave two of them unable to talk
//! (`certificates::roll_problems`). Otherwise members stay on, and new members get, the newest set
//! in use. The copies go with the cluster (owner reference); the operator never deletes a Secret.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Pod, api::core::v1::Secret};
use kube::{Api, ResourceExt, api::ObjectMeta, api::PostParams};
use ouroboros_crds::EtcdCluster;

use crate::{
    certificates::{self, CertificateProblem, CertificateReport, Purpose},
    etcd::ClientTls,
    member_access::{self, TlsMaterial, TlsSecretError},
    vocabulary,
};

/// Labels a copy with the digest of its set.
pub const LABEL_DIGEST: &str = "etcd.ouroboros.dev/certificates-digest";

/// The pod volumes that hold each purpose's certificates.
const VOLUMES: [(&str, Purpose); 3] = [
    ("peer-tls", Purpose::Peer),
    ("server-tls", Purpose::Server),
    ("client-tls", Purpose::OperatorClient),
];

/// The name of a copy.
pub fn copy_name(cluster: &str, digest: &str, purpose: Purpose) -> String {
    let short = match purpose {
        Purpose::Peer => "peer",
        Purpose::Server => "server",
        Purpose::OperatorClient => "client",
    };
    format!("{cluster}-certs-{digest}-{short}")
}

/// One set of certificates, by its digest.
#[derive(Clone, Debug)]
pub struct CertificateSet {
    /// `TlsMaterial::digest` of `material`.
    pub digest: String,
    /// What it holds.
    pub material: TlsMaterial,
}

impl CertificateSet {
    /// The set that `material` is.
    pub fn of(material: TlsMaterial) -> CertificateSet {
        CertificateSet {
            digest: material.digest(),
            material,
        }
    }
}

/// What the Secrets of `spec.tls` hold, and the sets the member pods mount now.
#[derive(Clone, Debug)]
pub struct CertificateInputs {
    /// What the Secrets of `spec.tls` hold.
    pub desired: CertificateSet,
    /// The sets member pods mount, the newest pod's first (only those whose copies exist).
    pub running: Vec<CertificateSet>,
}

/// The decision: which set members are started on, and what is wrong with the Secrets.
#[derive(Clone, Debug)]
pub struct Choice {
    /// The set members are started and restarted on; `None` when no set can be used.
    pub accepted: Option<CertificateSet>,
    /// The Secrets' own check (their leaves, for the expiry signals), with the roll problems.
    pub report: CertificateReport,
    /// Why no member is started, when `accepted` is `None`.
    pub blocked: Option<String>,
    /// The digests of the running sets (those whose copies exist).
    pub running: Vec<String>,
}

impl Choice {
    /// The client pair the operator dials members with: the accepted set's; with nothing
    /// accepted, the newest running set's (what members trust now), else what the Secrets hold.
    pub fn dialing(&self, inputs: &CertificateInputs) -> std::sync::Arc<ClientTls> {
        self.accepted
            .as_ref()
            .or(inputs.running.first())
            .unwrap_or(&inputs.desired)
            .material
            .client
            .clone()
    }

    /// Whether a pod that recorded `recorded` runs the accepted set. A pod without a record, or
    /// whose set has no copies, was made by an operator that did not copy certificates (it mounts
    /// the Secrets): that is no evidence it runs others, and upgrading the operator must not
    /// restart every member by itself. With nothing accepted, no pod is restarted for its
    /// certificates.
    pub fn current(&self, recorded: Option<&String>) -> bool {
        match (&self.accepted, recorded) {
            (Some(a), Some(r)) if self.running.contains(r) => a.digest == *r,
            _ => true,
        }
    }
}

/// Chooses the set members are started on: the Secrets' when they pass the checks, hold together
/// (`certificates::pairing_problems`) and a roll onto them from every running set is safe; else
/// the newest running set that passes the same from every other running set.
pub fn choose(inputs: &CertificateInputs, member_names: &[String], now: jiff::Timestamp) -> Choice {
    let desired = &inputs.desired;
    let mut report = desired.material.check(member_names, now);
    report.problems.extend(problems_onto(desired, &inputs.running));
    report.problems.dedup();
    // Members may run a set other than the Secrets' (a refused renewal): their leaves expire too.
    for running in inputs.running.iter().filter(|r| r.digest != desired.digest) {
        report
            .leaves
            .extend(running.material.check(member_names, now).leaves);
    }
    if report.problems.is_empty() {
        return Choice {
            accepted: Some(desired.clone()),
            report,
            blocked: None,
            running: inputs.running.iter().map(|r| r.digest.clone()).collect(),
        };
    }
    let fallback = inputs.running.first().filter(|r| {
        r.material.check(member_names, now).problems.is_empty()
            && problems_onto(r, &inputs.running).is_empty()
    });
    let blocked = fallback.is_none().then(|| {
        format!(
            "no member is started or restarted on the certificates of spec.tls until they are fixed: {}",
            join(&report.problems)
        )
    });
    Choice {
        accepted: fallback.cloned(),
        report,
        blocked,
        running: inputs.running.iter().map(|r| r.digest.clone()).collect(),
    }
}

/// What would fail with every member on `next`, or during a roll onto it from each running set
/// (the check of each leaf by itself is `TlsMaterial::check`).
fn problems_onto(next: &CertificateSet, running: &[CertificateSet]) -> Vec<CertificateProblem> {
    let pems = next.material.pems();
    let mut problems = certificates::pairing_problems(&pems);
    for r in running.iter().filter(|r| r.digest != next.digest) {
        problems.extend(certificates::roll_problems(&r.material.pems(), &pems));
    }
    problems
}

fn join(problems: &[CertificateProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The digests member pods recorded, the newest pod's first, each once.
pub fn running_digests(pods: &[Pod]) -> Vec<String> {
    let mut by_age: Vec<(Option<jiff::Timestamp>, &String)> = pods
        .iter()
        .filter_map(|p| {
            let d = p.annotations().get(vocabulary::ANNOTATION_CERTIFICATES_DIGEST)?;
            Some((p.metadata.creation_timestamp.as_ref().map(|t| t.0), d))
        })
        .collect();
    by_age.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
    let mut out: Vec<String> = Vec::new();
    for (_, d) in by_age {
        if !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

/// The names members are reached by, that peer and server certificates must carry: each member's
/// DNS name, or (self-hosted) its node's address once it has one.
pub fn member_names(cluster: &EtcdCluster, pods: &[Pod]) -> Vec<String> {
    let self_hosted = cluster.spec.self_hosted.is_some();
    pods.iter()
        .filter(|p| p.labels().contains_key(vocabulary::LABEL_VERSION))
        .filter_map(|p| {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
            (!self_hosted || ip.is_some()).then(|| {
                vocabulary::member_tls_name(cluster, &p.name_any(), ip.as_deref().unwrap_or_default())
            })
        })
        .collect()
}

/// The three immutable copies of `set`, owned by the cluster.
pub fn copies(cluster: &EtcdCluster, set: &CertificateSet) -> Vec<Secret> {
    let mut labels = vocabulary::cluster_labels(cluster);
    labels.insert(LABEL_DIGEST.to_owned(), set.digest.clone());
    set.material
        .secrets
        .iter()
        .map(|(_, purpose, t)| Secret {
            metadata: ObjectMeta {
                name: Some(copy_name(&cluster.name_any(), &set.digest, *purpose)),
                namespace: cluster.namespace(),
                labels: Some(labels.clone()),
                owner_references: Some(vec![crate::objects::owner(cluster)]),
                ..Default::default()
            },
            immutable: Some(true),
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(BTreeMap::from([
                ("ca.crt".to_owned(), ByteString(t.ca.clone())),
                ("tls.crt".to_owned(), ByteString(t.cert.clone())),
                ("tls.key".to_owned(), ByteString(t.key.clone())),
            ])),
            ..Default::default()
        })
        .collect()
}

/// Points the pod's certificate volumes at the copies of `set` and records its digest.
pub fn mount(pod: &mut Pod, cluster: &str, set: &CertificateSet) {
    for (volume, purpose) in VOLUMES {
        point_volume(pod, volume, &copy_name(cluster, &set.digest, purpose));
    }
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            vocabulary::ANNOTATION_CERTIFICATES_DIGEST.to_owned(),
            set.digest.clone(),
        );
}

/// Points the pod's client certificate volume at Secret `secret`.
pub fn mount_client(pod: &mut Pod, secret: &str) {
    point_volume(pod, "client-tls", secret);
}

/// Points the pod's Secret volume `volume`, if it has one, at Secret `secret`.
fn point_volume(pod: &mut Pod, volume: &str, secret: &str) {
    for v in pod.spec.iter_mut().flat_map(|s| s.volumes.iter_mut().flatten()) {
        if v.name == volume
            && let Some(s) = v.secret.as_mut()
        {
            s.secret_name = Some(secret.to_owned());
        }
    }
}

/// Reads what the Secrets of `spec.tls` hold and the sets `pods` run. `Ok(None)` without TLS. A
/// running digest whose copies are gone (made by an earlier operator) is left out.
pub async fn read_inputs(
    client: &kube::Client,
    cluster: &EtcdCluster,
    pods: &[Pod],
) -> Result<Option<CertificateInputs>, TlsSecretError> {
    let Some(desired) = member_access::tls_material(client, cluster).await? else {
        return Ok(None);
    };
    let ns = cluster.namespace().unwrap_or_default();
    let mut running = Vec::new();
    'digests: for digest in running_digests(pods) {
        let mut secrets = Vec::new();
        for (_, purpose) in VOLUMES {
            let name = copy_name(&cluster.name_any(), &digest, purpose);
            let Some(secret) = member_access::read_secret(client, &ns, &name).await? else {
                continue 'digests;
            };
            secrets.push((name, purpose, member_access::tls_of(secret, purpose.field())?));
        }
        running.push(CertificateSet::of(member_access::material(secrets)?));
    }
    Ok(Some(CertificateInputs {
        desired: CertificateSet::of(desired),
        running,
    }))
}

/// The set a new member `member` is started on, its copies made: the one place every member pod
/// (cluster, self-hosted, restore seed) gets its certificates, also asked before a learner is added
/// (a learner whose pod could not start would wait for ever). The set must name the new member too
/// (a self-hosted one is named by its node's address, known only once it runs). `Ok(None)` without
/// TLS.
pub async fn accepted_for(
    client: &kube::Client,
    cluster: &EtcdCluster,
    member: &str,
) -> Result<Option<CertificateSet>, TlsSecretError> {
    if cluster.spec.tls.is_none() {
        return Ok(None);
    }
    let ns = cluster.namespace().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&kube::api::ListParams::default().labels(&vocabulary::cluster_selector(cluster)))
        .await
        .map_err(|e| TlsSecretError(format!("listing the pods of {ns}/{}: {e}", cluster.name_any())))?
        .items;
    let Some(inputs) = read_inputs(client, cluster, &pods).await? else {
        return Ok(None);
    };
    let mut names = member_names(cluster, &pods);
    if cluster.spec.self_hosted.is_none() {
        let new_name = vocabulary::member_tls_name(cluster, member, "");
        if !names.contains(&new_name) {
            names.push(new_name);
        }
    }
    let choice = choose(&inputs, &names, jiff::Timestamp::now());
    let Some(set) = choice.accepted else {
        return Err(TlsSecretError(choice.blocked.unwrap_or_default()));
    };
    ensure_copies(client, cluster, &set).await?;
    Ok(Some(set))
}

/// Creates the copies of `set`. One already there is used only when the cluster owns it and it
/// holds the same (a copy left by a deleted cluster of the same name is not).
async fn ensure_copies(
    client: &kube::Client,
    cluster: &EtcdCluster,
    set: &CertificateSet,
) -> Result<(), TlsSecretError> {
    let ns = cluster.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for copy in copies(cluster, set) {
        let name = copy.name_any();
        match secrets.create(&PostParams::default(), &copy).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let there = member_access::read_secret(client, &ns, &name).await?;
                let ours = there.as_ref().is_some_and(|t| {
                    t.data == copy.data
                        && t.owner_references()
                            .iter()
                            .any(|o| Some(&o.uid) == cluster.metadata.uid.as_ref())
                });
                if !ours {
                    return Err(TlsSecretError(format!(
                        "the certificate copy {ns}/{name} exists but is not this cluster's or holds other certificates; delete it"
                    )));
                }
            }
            Err(e) => {
                return Err(TlsSecretError(format!(
                    "creating the certificate copy {ns}/{name}: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// Mounts on a new member pod the set members are started on ([`accepted_for`]). Nothing
/// without TLS.
pub async fn mount_accepted(
    client: &kube::Client,
    cluster: &EtcdCluster,
    pod: &mut Pod,
) -> Result<(), TlsSecretError> {
    if let Some(set) = accepted_for(client, cluster, &pod.name_any()).await? {
        mount(pod, &cluster.name_any(), &set);
    }
    Ok(())
}

#[cfg(test)]
#[path = "certificate_copies_tests.rs"]
mod tests;
