//! Certificate rotation (#20) on the local cluster, under a TLS writer of sequential keys whose every
//! acknowledged write is read back at the end (0 lost):
//! - the expiry of each certificate is a metric, and one ending within 30 days raises
//!   `CertificatesExpiring` (the test CA issues two-day certificates, so every one does);
//! - a renewed server Secret that lacks the members' names is refused: `CertificatesValid=False`
//!   names the missing name, a Warning Event says so, no member pod is touched, and past the
//!   kubelet's refresh of mounted Secrets every member still serves the old certificate (members
//!   mount the operator's copies, not the Secret);
//! - renewed leaves in all three Secrets reach every member one at a time, each restarted on its own
//!   claim (member IDs and claims unchanged), and each member then serves the new certificates;
//! - a CA replaced at once is refused (the running members would not trust the new leaves), and
//!   the bundle procedure of docs/runbooks.md (old and new CA in ca.crt, then leaves from the new
//!   CA, then the old CA dropped) rolls step by step, the writers' every write kept.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use ouroboros_crds::{EtcdCluster, condition_types as ct};
use ouroboros_e2e::{
    TestNamespace,
    certs::{fingerprint_of_file, make_ca, make_cert, make_member_certs, served_fingerprint, tls_secret},
    client,
    etcd_cluster::{self, converged},
    events_with_reason, operator_metrics, wait_for,
    writer::{Writer, WriterTls},
};

const V: &str = "3.6.16";
const T: Duration = Duration::from_secs(300);
const SELECTOR: &str = "etcd.ouroboros.dev/cluster=rot";
const DIGEST: &str = "etcd.ouroboros.dev/certificates-digest";

async fn member_pods(c: &Client, ns: &str) -> anyhow::Result<Vec<Pod>> {
    pods_of(c, ns, "rot").await
}

async fn pods_of(c: &Client, ns: &str, cluster: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels(&format!("etcd.ouroboros.dev/cluster={cluster}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.labels().contains_key("etcd.ouroboros.dev/member"))
        .collect())
}

/// Replaces Secret `name` with `ca.crt` and the `<cert>` pair from `dir`.
async fn renew(secrets: &Api<Secret>, dir: &Path, name: &str, cert: &str) -> anyhow::Result<()> {
    let mut s = tls_secret(dir, name, cert)?;
    s.metadata.resource_version = secrets.get(name).await?.resource_version();
    secrets.replace(name, &PostParams::default(), &s).await?;
    Ok(())
}

fn uids<K: ResourceExt>(list: &[K]) -> Vec<String> {
    let mut u: Vec<String> = list.iter().filter_map(|p| p.uid()).collect();
    u.sort();
    u
}

#[tokio::test]
async fn rotated_certificates_reach_every_member_and_unusable_ones_are_refused() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "rot")
        .await?
        .run(|c, ns| async move {
            let dir = std::env::temp_dir().join(format!("ouroboros-{ns}"));
            std::fs::create_dir_all(&dir)?;
            make_ca(&dir, "e2e-rotation-ca")?;
            make_member_certs(&dir, "rot", &ns, "")?;
            let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
            for (name, cert) in [("peer", "peer"), ("server", "server"), ("client", "client")] {
                secrets
                    .create(&PostParams::default(), &tls_secret(&dir, name, cert)?)
                    .await?;
            }
            etcd_cluster::create(
                &c,
                &ns,
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: rot}\n\
             spec: {size: 3, pod: {antiAffinity: None}, storage: {persistentVolumeClaim: {size: 1Gi}},\n\
             \x20 tls: {peerSecret: peer, serverSecret: server, operatorClientSecret: client}}\n",
            )
            .await?;
            let status = etcd_cluster::wait(&c, &ns, "rot", "3 TLS members", T, converged(3, V)).await?;
            let ids_before: Vec<(String, Option<String>)> = status
                .members
                .iter()
                .map(|m| (m.name.clone(), m.id.clone()))
                .collect();
            let api: Api<EtcdCluster> = Api::namespaced(c.clone(), &ns);

            // Expiry: two-day certificates are within the 30-day window, each named, and each is a metric.
            let cluster = api.get("rot").await?;
            let (s, reason, msg) = etcd_cluster::condition(&cluster, ct::CERTIFICATES_EXPIRING)
                .context("no CertificatesExpiring")?;
            ensure!(
                s == "True" && reason == "CertificatesExpiring",
                "{s} {reason}: {msg}"
            );
            for secret in [
                "peer (spec.tls.peerSecret)",
                "server (spec.tls.serverSecret)",
                "client (spec.tls.operatorClientSecret)",
            ] {
                ensure!(
                    msg.contains(secret),
                    "CertificatesExpiring does not name {secret}: {msg}"
                );
            }
            ensure!(
                etcd_cluster::condition(&cluster, ct::CERTIFICATES_VALID).is_some_and(|(s, ..)| s == "True"),
                "{:?}",
                etcd_cluster::condition(&cluster, ct::CERTIFICATES_VALID)
            );
            ensure!(
                !events_with_reason(&c, &ns, "CertificatesExpiring")
                    .await?
                    .is_empty(),
                "no CertificatesExpiring Event"
            );
            let metrics = operator_metrics()?;
            for purpose in ["peer", "server", "operator-client"] {
                let line = metrics
                    .lines()
                    .find(|l| {
                        l.starts_with("ouroboros_certificate_expiry_timestamp_seconds")
                            && l.contains(&format!("namespace=\"{ns}\",name=\"rot\""))
                            && l.contains(&format!("purpose=\"{purpose}\""))
                    })
                    .with_context(|| format!("no expiry metric for {purpose}"))?;
                let end: f64 = line.rsplit(' ').next().unwrap_or_default().parse()?;
                let left = end - jiff::Timestamp::now().as_second() as f64;
                ensure!(
                    (0.0..3.0 * 86_400.0).contains(&left),
                    "{purpose} ends in {left} s: {line}"
                );
            }

            let endpoint = etcd_cluster::client_endpoint(&c, &ns, "rot")
                .await?
                .replace("http://", "https://");
            let read = |f: &str| std::fs::read(dir.join(f));
            let writer = Writer::start_tls(
                &endpoint,
                "/rotation",
                WriterTls {
                    ca: read("ca.crt")?,
                    cert: read("client.crt")?,
                    key: read("client.key")?,
                    domain: format!("rot-client.{ns}.svc"),
                },
            )
            .await?;
            let pods_before = member_pods(&c, &ns).await?;
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
            let claims_before = uids(&claims.list(&ListParams::default().labels(SELECTOR)).await?.items);

            // A renewal that lacks the members' names is refused and nothing is touched.
            make_cert(
                &dir,
                "narrow",
                "etcd-server",
                &format!("subjectAltName=DNS:rot-client.{ns}.svc\nextendedKeyUsage=serverAuth,clientAuth\n"),
            )?;
            renew(&secrets, &dir, "server", "narrow").await?;
            etcd_cluster::wait(&c, &ns, "rot", "CertificatesValid=False", T, |cl, _| {
                etcd_cluster::condition(cl, ct::CERTIFICATES_VALID).is_some_and(|(s, ..)| s == "False")
            })
            .await?;
            let cluster = api.get("rot").await?;
            let (_, reason, msg) =
                etcd_cluster::condition(&cluster, ct::CERTIFICATES_VALID).context("condition")?;
            ensure!(reason == "CertificateInvalid", "{reason}: {msg}");
            ensure!(
                msg.contains("spec.tls.serverSecret") && msg.contains(&format!("rot-0.rot.{ns}.svc")),
                "{msg}"
            );
            ensure!(
                !events_with_reason(&c, &ns, "CertificateInvalid")
                    .await?
                    .is_empty(),
                "no CertificateInvalid Event"
            );
            // Past the kubelet's refresh of mounted Secrets (about a minute): members mount the
            // operator's copies, so the refused certificate reaches none of them.
            tokio::time::sleep(Duration::from_secs(90)).await;
            let old_server = fingerprint_of_file(&dir.join("server.crt"))?;
            for p in &pods_before {
                let ip = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .context("no IP")?;
                let served = served_fingerprint(&dir, &format!("{ip}:2379"), "client")?;
                ensure!(
                    served == old_server,
                    "{} serves {served} after the refusal, not the accepted {old_server}",
                    p.name_any()
                );
            }
            let pods_now = member_pods(&c, &ns).await?;
            ensure!(
                uids(&pods_now) == uids(&pods_before),
                "a member pod was restarted onto a refused certificate"
            );
            ensure!(
                events_with_reason(&c, &ns, "MemberRestartingForSettings")
                    .await?
                    .is_empty(),
                "a restart started"
            );
            ensure!(
                writer.acked_during(5).await > 0,
                "writes stopped while the renewal was refused"
            );

            // Renewed leaves in every Secret: rolled to every member, one at a time, on its own claim.
            make_member_certs(&dir, "rot", &ns, "2")?;
            for (name, cert) in [("peer", "peer2"), ("server", "server2"), ("client", "client2")] {
                renew(&secrets, &dir, name, cert).await?;
            }
            let old_digest = pods_before[0]
                .annotations()
                .get(DIGEST)
                .cloned()
                .context("no digest on a member pod")?;
            wait_for("every member restarted onto the renewed certificates", T, || {
                let (c, ns, old) = (c.clone(), ns.clone(), old_digest.clone());
                async move {
                    let pods = member_pods(&c, &ns).await?;
                    let digests: std::collections::BTreeSet<Option<&String>> =
                        pods.iter().map(|p| p.annotations().get(DIGEST)).collect();
                    let done = pods.len() == 3 && digests.len() == 1 && !digests.contains(&Some(&old));
                    Ok(done.then_some(()))
                }
            })
            .await?;
            let status = etcd_cluster::wait(
                &c,
                &ns,
                "rot",
                "converged on the renewed certificates",
                T,
                converged(3, V),
            )
            .await?;
            let cluster = api.get("rot").await?;
            ensure!(
                etcd_cluster::condition(&cluster, ct::CERTIFICATES_VALID).is_some_and(|(s, ..)| s == "True"),
                "{:?}",
                etcd_cluster::condition(&cluster, ct::CERTIFICATES_VALID)
            );
            let ids_after: Vec<(String, Option<String>)> = status
                .members
                .iter()
                .map(|m| (m.name.clone(), m.id.clone()))
                .collect();
            ensure!(
                ids_after == ids_before,
                "members {ids_before:?} -> {ids_after:?}: replaced, not restarted"
            );
            let claims_after = uids(&claims.list(&ListParams::default().labels(SELECTOR)).await?.items);
            ensure!(
                claims_after == claims_before,
                "claims {claims_before:?} -> {claims_after:?}"
            );
            // Each Secret renewed on its own may be seen alone, so a member may restart more than
            // once; every one restarts at least once.
            let restarts = events_with_reason(&c, &ns, "MemberRestartingForSettings").await?;
            ensure!(restarts.len() >= 3, "restarts: {restarts:?}");

            // Each member serves the renewed server and peer certificates.
            let (server, peer) = (
                fingerprint_of_file(&dir.join("server2.crt"))?,
                fingerprint_of_file(&dir.join("peer2.crt"))?,
            );
            for p in member_pods(&c, &ns).await? {
                let ip = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .context("member without an IP")?;
                let served = served_fingerprint(&dir, &format!("{ip}:2379"), "client2")?;
                ensure!(
                    served == server,
                    "{} serves {served}, not the renewed {server}",
                    p.name_any()
                );
                let served = served_fingerprint(&dir, &format!("{ip}:2380"), "peer2")?;
                ensure!(
                    served == peer,
                    "{} presents peer {served}, not the renewed {peer}",
                    p.name_any()
                );
            }
            let (acked, failed) = writer.stop_and_verify().await?;
            println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
            Ok(())
        })
        .await
}

/// A kubernetes.io/tls Secret `name` holding `ca` and the `<cert>` pair from `dir`.
fn secret_with(dir: &Path, name: &str, cert: &str, ca: &[u8]) -> anyhow::Result<Secret> {
    let mut s = tls_secret(dir, name, cert)?;
    s.data
        .get_or_insert_with(Default::default)
        .insert("ca.crt".into(), k8s_openapi::ByteString(ca.to_vec()));
    Ok(s)
}

/// Writes the three Secrets of cluster `ca`: `ca.crt` from `ca`, leaves `peer<tag>`, `server<tag>`,
/// `client<tag>` from `dir`.
async fn write_set(secrets: &Api<Secret>, dir: &Path, tag: &str, ca: &[u8]) -> anyhow::Result<()> {
    for name in ["peer", "server", "client"] {
        let mut s = secret_with(dir, name, &format!("{name}{tag}"), ca)?;
        match secrets.get_opt(name).await? {
            Some(old) => {
                s.metadata.resource_version = old.resource_version();
                secrets.replace(name, &PostParams::default(), &s).await?;
            }
            None => {
                secrets.create(&PostParams::default(), &s).await?;
            }
        }
    }
    Ok(())
}

/// Waits until every member of cluster `ca` mounts copies holding exactly what the Secrets hold now
/// and the cluster has converged on them.
async fn wait_rolled_onto_secrets(c: &Client, ns: &str, what: &str) -> anyhow::Result<()> {
    wait_for(what, T, || {
        let (c, ns) = (c.clone(), ns.to_owned());
        async move {
            let pods = pods_of(&c, &ns, "ca").await?;
            let digests: std::collections::BTreeSet<Option<&String>> =
                pods.iter().map(|p| p.annotations().get(DIGEST)).collect();
            let Some(Some(digest)) = digests.iter().next().copied().filter(|_| digests.len() == 1) else {
                return Ok(None);
            };
            if pods.len() != 3 {
                return Ok(None);
            }
            let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
            for name in ["peer", "server", "client"] {
                let copy = secrets.get_opt(&format!("ca-certs-{digest}-{name}")).await?;
                let source = secrets.get(name).await?;
                if copy.and_then(|s| s.data) != source.data {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await?;
    etcd_cluster::wait(c, ns, "ca", what, T, converged(3, V)).await?;
    Ok(())
}

fn member_ids(status: &ouroboros_crds::EtcdClusterStatus) -> Vec<(String, Option<String>)> {
    status
        .members
        .iter()
        .map(|m| (m.name.clone(), m.id.clone()))
        .collect()
}

#[tokio::test]
async fn a_ca_rotates_through_a_bundle_and_never_at_once() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "carot")
        .await?
        .run(|c, ns| async move {
            let root = std::env::temp_dir().join(format!("ouroboros-{ns}"));
            let (old_dir, new_dir) = (root.join("old"), root.join("new"));
            for (dir, cn) in [(&old_dir, "e2e-old-ca"), (&new_dir, "e2e-new-ca")] {
                std::fs::create_dir_all(dir)?;
                make_ca(dir, cn)?;
                make_member_certs(dir, "ca", &ns, "")?;
            }
            let old_ca = std::fs::read(old_dir.join("ca.crt"))?;
            let new_ca = std::fs::read(new_dir.join("ca.crt"))?;
            let bundle = [old_ca.clone(), new_ca.clone()].concat();
            // The test's own client trusts both CAs, so it can read every member throughout.
            std::fs::write(root.join("bundle.crt"), &bundle)?;
            let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
            write_set(&secrets, &old_dir, "", &old_ca).await?;
            etcd_cluster::create(
                &c,
                &ns,
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: ca}\n\
             spec: {size: 3, pod: {antiAffinity: None}, storage: {persistentVolumeClaim: {size: 1Gi}},\n\
             \x20 tls: {peerSecret: peer, serverSecret: server, operatorClientSecret: client}}\n",
            )
            .await?;
            let status = etcd_cluster::wait(&c, &ns, "ca", "3 TLS members", T, converged(3, V)).await?;
            let ids_before = member_ids(&status);
            let endpoint = etcd_cluster::client_endpoint(&c, &ns, "ca")
                .await?
                .replace("http://", "https://");
            let writer_tls = |dir: &Path| -> anyhow::Result<WriterTls> {
                Ok(WriterTls {
                    ca: bundle.clone(),
                    cert: std::fs::read(dir.join("client.crt"))?,
                    key: std::fs::read(dir.join("client.key"))?,
                    domain: format!("ca-client.{ns}.svc"),
                })
            };
            // Its client certificate is from the old CA: trusted until the old CA is dropped.
            let old_writer = Writer::start_tls(&endpoint, "/ca-old", writer_tls(&old_dir)?).await?;
            let api: Api<EtcdCluster> = Api::namespaced(c.clone(), &ns);

            // The new CA at once: members restarted on it and those still running would refuse
            // each other. Refused, and no member is touched.
            let pods_before = pods_of(&c, &ns, "ca").await?;
            write_set(&secrets, &new_dir, "", &new_ca).await?;
            etcd_cluster::wait(&c, &ns, "ca", "the CA swapped at once is refused", T, |cl, _| {
                etcd_cluster::condition(cl, ct::CERTIFICATES_VALID).is_some_and(|(s, ..)| s == "False")
            })
            .await?;
            let (_, reason, msg) = etcd_cluster::condition(&api.get("ca").await?, ct::CERTIFICATES_VALID)
                .context("no CertificatesValid")?;
            ensure!(
                reason == "CertificateInvalid" && msg.contains("every ca.crt"),
                "{reason}: {msg}"
            );
            tokio::time::sleep(Duration::from_secs(30)).await;
            ensure!(
                uids(&pods_of(&c, &ns, "ca").await?) == uids(&pods_before),
                "a member was restarted onto a CA the others do not trust"
            );

            // 1. Both CAs in every ca.crt, the old leaves kept.
            write_set(&secrets, &old_dir, "", &bundle).await?;
            wait_rolled_onto_secrets(&c, &ns, "every member trusts both CAs").await?;
            // 2. Leaves from the new CA.
            write_set(&secrets, &new_dir, "", &bundle).await?;
            wait_rolled_onto_secrets(&c, &ns, "every member runs leaves of the new CA").await?;
            let (acked, failed) = old_writer.stop_and_verify().await?;
            println!("old-CA writer: {acked} writes acknowledged, {failed} failed attempts, 0 lost");
            // 3. The old CA dropped, under a writer whose certificate the new CA issued.
            let new_writer = Writer::start_tls(&endpoint, "/ca-new", writer_tls(&new_dir)?).await?;
            write_set(&secrets, &new_dir, "", &new_ca).await?;
            wait_rolled_onto_secrets(&c, &ns, "every member trusts the new CA only").await?;
            let cluster = api.get("ca").await?;
            ensure!(
                etcd_cluster::condition(&cluster, ct::CERTIFICATES_VALID).is_some_and(|(s, ..)| s == "True"),
                "{:?}",
                etcd_cluster::condition(&cluster, ct::CERTIFICATES_VALID)
            );
            let status = cluster.status.context("no status")?;
            ensure!(
                member_ids(&status) == ids_before,
                "members {ids_before:?} -> {:?}: replaced, not restarted",
                member_ids(&status)
            );
            // Every member serves the new CA's leaf.
            let new_server = fingerprint_of_file(&new_dir.join("server.crt"))?;
            for p in pods_of(&c, &ns, "ca").await? {
                let ip = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .context("no IP")?;
                let served = served_fingerprint(&new_dir, &format!("{ip}:2379"), "client")?;
                ensure!(
                    served == new_server,
                    "{} serves {served}, not {new_server}",
                    p.name_any()
                );
            }
            let (acked, failed) = new_writer.stop_and_verify().await?;
            println!("new-CA writer: {acked} writes acknowledged, {failed} failed attempts, 0 lost");
            Ok(())
        })
        .await
}
