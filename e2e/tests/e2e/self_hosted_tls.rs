//! Self-hosted members with TLS, without touching the cluster's own API server: they pivot from a
//! TLS boot etcd process on the host (client and peer certificates required everywhere), and a
//! member's static-pod checkpoint, whose Secrets the checkpointer copied to host files, takes over
//! running etcd when the member pod's etcd dies. Then the certificate is renewed: it reaches every
//! member through the roll (a surge, since self-hosted data lives with the pod), the checkpoints
//! copy the renewed one, and a checkpoint that takes over after the rotation serves it (#20).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use ouroboros_crds::{EtcdCluster, condition_types as ct};
use ouroboros_e2e::{
    TestNamespace,
    certs::{fingerprint_of_file, make_ca, make_cert, served_fingerprint, tls_secret},
    checkpoints, client, env, etcd_cluster, etcd_tool, kill_container, kubectl, sidecar_auth, wait_for,
};

const NAME: &str = "sh";
/// Off the ports of the cluster's own boot etcd and of kube-etcd.
const BOOT_CLIENT_PORT: u16 = 32379;
const BASE_PORT: u16 = 2479;

/// One CA and one certificate for the node's address, good as server and as client: members are
/// reached at `https://<node IP>:<port>`, so that is the name every side checks.
fn make_certs(dir: &Path, ip: &str) -> anyhow::Result<()> {
    make_ca(dir, "e2e-self-hosted-ca")?;
    make_cert(
        dir,
        "member",
        "etcd-member",
        &format!("subjectAltName=IP:{ip},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )
}

fn secrets_of(c: &kube::Client, ns: &str) -> Api<Secret> {
    Api::namespaced(c.clone(), ns)
}

/// `etcdctl` over TLS with the test certificate.
fn etcdctl(dir: &Path, endpoints: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(etcd_tool("etcdctl"))
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", dir.join("ca.crt").display()))
        .arg(format!("--cert={}", dir.join("member.crt").display()))
        .arg(format!("--key={}", dir.join("member.key").display()))
        .args(["--dial-timeout=3s", "--command-timeout=10s"])
        .args(args)
        .output()
        .context("running etcdctl")?;
    ensure!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The boot etcd process; killed when the test ends, however it ends.
struct BootEtcd(Child);

impl Drop for BootEtcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_boot_etcd(dir: &Path, ip: &str) -> anyhow::Result<BootEtcd> {
    let (client, peer) = (
        format!("https://{ip}:{BOOT_CLIENT_PORT}"),
        format!("https://{ip}:{}", BOOT_CLIENT_PORT + 1),
    );
    let file = |f: &str| dir.join(f).display().to_string();
    let child = Command::new(etcd_tool("etcd"))
        .args(["--name", "boot", "--data-dir", &file("boot")])
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("boot={peer}")])
        .args([
            "--listen-metrics-urls",
            &format!("http://{ip}:{}", BOOT_CLIENT_PORT + 2),
        ])
        .args([
            "--cert-file",
            &file("member.crt"),
            "--key-file",
            &file("member.key"),
        ])
        .args(["--trusted-ca-file", &file("ca.crt"), "--client-cert-auth"])
        .args([
            "--peer-cert-file",
            &file("member.crt"),
            "--peer-key-file",
            &file("member.key"),
        ])
        .args([
            "--peer-trusted-ca-file",
            &file("ca.crt"),
            "--peer-client-cert-auth",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("boot.log"))?)
        .spawn()
        .context("starting the boot etcd")?;
    Ok(BootEtcd(child))
}

/// Waits until the current instance of `pod`'s etcd container has logged `text`.
async fn wait_for_etcd_log(
    what: &str,
    ns: &str,
    pod: &str,
    text: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(what, timeout, || async move {
        let logs = kubectl(&["-n", ns, "logs", pod, "-c", "etcd"])?;
        Ok(logs.stdout.contains(text).then_some(()))
    })
    .await
}

#[tokio::test]
async fn tls_members_pivot_from_a_tls_boot_etcd_and_their_checkpoints_take_over() -> anyhow::Result<()> {
    let c = client().await?;
    // Self-hosted installs deploy the checkpointer too.
    checkpoints::deploy()?;
    TestNamespace::create(&c, "shtls").await?.run(|c, ns| async move {
        // One control-plane node, node1, whatever the node count: the certificates name its address,
        // and the checkpoints taken over below are in its static-pod directory.
        let ip = env("OUROBOROS_NODE_IP")?;
        let version = env("OUROBOROS_ETCD_VERSION")?;
        let dir = std::env::temp_dir().join(format!("ouroboros-{ns}"));
        std::fs::create_dir_all(&dir)?;
        make_certs(&dir, &ip)?;
        let _boot = start_boot_etcd(&dir, &ip)?;
        let boot_url = format!("https://{ip}:{BOOT_CLIENT_PORT}");
        wait_for("the TLS boot etcd", Duration::from_secs(30), || {
            let (dir, boot_url) = (dir.clone(), boot_url.clone());
            async move { Ok(etcdctl(&dir, &boot_url, &["endpoint", "health"]).ok().map(|_| ())) }
        })
        .await?;
        etcdctl(&dir, &boot_url, &["put", "written-to-the-boot-etcd", "before the pivot"])?;

        Api::<Secret>::namespaced(c.clone(), &ns)
            .create(&PostParams::default(), &tls_secret(&dir, "etcd-tls", "member")?)
            .await?;
        let data_dir = env("OUROBOROS_SELF_HOSTED_DATA")?;
        etcd_cluster::create(
            &c,
            &ns,
            &format!(
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: {NAME}}}\n\
                 spec: {{size: 3, version: '{version}', \
                 selfHosted: {{bootMemberClientEndpoint: '{boot_url}', bootMemberClientTlsSecret: etcd-tls, hostDataDir: '{data_dir}', basePort: {BASE_PORT}}}, \
                 pod: {{nodeSelector: {{kubernetes.io/hostname: node1}}}}, \
                 tls: {{peerSecret: etcd-tls, serverSecret: etcd-tls, operatorClientSecret: etcd-tls}}}}\n"
            ),
        )
        .await?;
        let converged = etcd_cluster::converged(3, &version);
        let status = etcd_cluster::wait(
            &c,
            &ns,
            NAME,
            "three TLS voters and the boot member removed",
            Duration::from_secs(300),
            |cl, s| {
                converged(cl, s)
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == ct::BOOT_MEMBER_REMOVED && c.status == "True")
            },
        )
        .await?;
        let urls = status.client_endpoints.join(",");
        ensure!(
            status.client_endpoints.len() == 3
                && status.client_endpoints.iter().all(|u| u.starts_with("https://")),
            "client URLs: {urls}"
        );
        let members = etcdctl(&dir, &urls, &["member", "list"])?;
        ensure!(
            members.lines().count() == 3 && !members.contains("boot"),
            "members after the pivot: {members}"
        );
        let before = etcdctl(&dir, &urls, &["get", "--print-value-only", "written-to-the-boot-etcd"])?;
        ensure!(before.trim() == "before the pivot", "the boot etcd's data: {before:?}");

        // The sidecars listen on the host network, where every local user and host-network pod can
        // reach them: they obey the operator alone.
        let any_member = status.members.first().map(|m| m.name.clone()).context("no member")?;
        sidecar_auth::strangers_are_refused(&c, &ns, NAME, &any_member).await?;

        // Every voter has a checkpoint, and its Secrets are on the host for the static pod.
        let names: Vec<String> = status.members.iter().map(|m| m.name.clone()).collect();
        let cert = std::fs::read(dir.join("member.crt"))?;
        let secrets_dir = PathBuf::from(env("OUROBOROS_CHECKPOINT_SECRETS_DIR")?);
        wait_for("a checkpoint with host copies of its Secrets for each member", Duration::from_secs(60), || {
            let (names, ns, cert, secrets_dir) = (names.clone(), ns.clone(), cert.clone(), secrets_dir.clone());
            async move {
                for m in &names {
                    let copy = secrets_dir.join(format!("{ns}_{m}")).join("server-tls/tls.crt");
                    if !checkpoints::file(&ns, m)?.exists() || std::fs::read(copy).ok() != Some(cert.clone()) {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await?;

        // The member pod's etcd dies: the checkpoint, waiting in the lock, runs the member instead,
        // over TLS from the copied files, and the member pod's restarted etcd waits in its turn.
        // The seed: it never crash-looped while joining, so the kubelet restarts it without a long
        // back-off.
        let victim = names.iter().min().context("no members")?.clone();
        let node = Api::<Pod>::namespaced(c.clone(), &ns)
            .get(&victim)
            .await?
            .spec
            .and_then(|s| s.node_name)
            .context("the member pod has no node")?;
        kill_container(&c, &ns, &victim, "etcd").await?;
        let mirror = format!("{victim}-checkpoint-{node}");
        wait_for_etcd_log(
            "the checkpoint to run the member's etcd",
            &ns,
            &mirror,
            "holding /var/lib/etcd/member.lock",
            Duration::from_secs(60),
        )
        .await?;
        wait_for("three healthy members over TLS", Duration::from_secs(60), || {
            let (dir, urls) = (dir.clone(), urls.clone());
            async move {
                let health = etcdctl(&dir, &urls, &["endpoint", "health", "--cluster"]).unwrap_or_default();
                Ok((health.matches("is healthy").count() == 3).then_some(()))
            }
        })
        .await?;
        etcdctl(&dir, &urls, &["put", "written-after-the-takeover", "yes"])?;
        // Until the kubelet restarts it, `kubectl logs` shows the killed instance.
        wait_for_etcd_log(
            "the member pod's restarted etcd to wait for the checkpoint",
            &ns,
            &victim,
            "another copy of this member holds",
            Duration::from_secs(120),
        )
        .await?;

        // The certificate renewed: every member ends on it, and so do their checkpoints.
        make_cert(
            &dir,
            "member2",
            "etcd-member",
            &format!("subjectAltName=IP:{ip},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )?;
        let secrets = Api::<Secret>::namespaced(c.clone(), &ns);
        let mut renewed = tls_secret(&dir, "etcd-tls", "member2")?;
        renewed.metadata.resource_version = secrets.get("etcd-tls").await?.resource_version();
        secrets.replace("etcd-tls", &PostParams::default(), &renewed).await?;
        let cert2 = std::fs::read(dir.join("member2.crt"))?;
        wait_for("every member restarted onto the renewed certificate", Duration::from_secs(600), || {
            let (c, ns, cert2, converged) = (c.clone(), ns.clone(), cert2.clone(), &converged);
            async move {
                let cluster = Api::<EtcdCluster>::namespaced(c.clone(), &ns).get(NAME).await?;
                let Some(status) = cluster.status.as_ref() else { return Ok(None) };
                if !converged(&cluster, status) {
                    return Ok(None);
                }
                let pods = Api::<Pod>::namespaced(c.clone(), &ns)
                    .list(&ListParams::default().labels("etcd.ouroboros.dev/member"))
                    .await?
                    .items;
                let mut digests = std::collections::BTreeSet::new();
                for p in pods.iter().filter(|p| !p.labels().contains_key("etcd.ouroboros.dev/checkpoint-of")) {
                    digests.insert(p.annotations().get("etcd.ouroboros.dev/certificates-digest").cloned());
                }
                let [Some(digest)] = &digests.into_iter().collect::<Vec<_>>()[..] else { return Ok(None) };
                let copy = secrets_of(&c, &ns).get_opt(&format!("{NAME}-certs-{digest}-server")).await?;
                let holds = copy
                    .and_then(|s| s.data)
                    .and_then(|d| d.get("tls.crt").map(|b| b.0.clone()));
                Ok((holds == Some(cert2)).then_some(()))
            }
        })
        .await?;
        let status = Api::<EtcdCluster>::namespaced(c.clone(), &ns)
            .get(NAME)
            .await?
            .status
            .context("no status")?;
        let renewed_names: Vec<String> = status.members.iter().map(|m| m.name.clone()).collect();
        println!("members after the rotation: {renewed_names:?} (before: {names:?})");
        wait_for("the checkpoints hold the renewed certificate", Duration::from_secs(90), || {
            let (names, ns, cert2, secrets_dir) =
                (renewed_names.clone(), ns.clone(), cert2.clone(), secrets_dir.clone());
            async move {
                for m in &names {
                    let copy = secrets_dir.join(format!("{ns}_{m}")).join("server-tls/tls.crt");
                    if !checkpoints::file(&ns, m)?.exists() || std::fs::read(copy).ok() != Some(cert2.clone()) {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await?;
        // A checkpoint takes over after the rotation, from the renewed files. It must be waiting on
        // the member's lock first: killed before the kubelet started it, the member pod's etcd
        // restarts and takes the lock again.
        let victim = renewed_names.iter().max().context("no members")?.clone();
        wait_for_etcd_log(
            "the rotated member's checkpoint to wait on its lock",
            &ns,
            &format!("{victim}-checkpoint-{node}"),
            "another copy of this member holds",
            Duration::from_secs(180),
        )
        .await?;
        kill_container(&c, &ns, &victim, "etcd").await?;
        wait_for_etcd_log(
            "the checkpoint to run the rotated member's etcd",
            &ns,
            &format!("{victim}-checkpoint-{node}"),
            "holding /var/lib/etcd/member.lock",
            Duration::from_secs(90),
        )
        .await?;
        let urls = status.client_endpoints.join(",");
        wait_for("three healthy members after the rotation", Duration::from_secs(60), || {
            let (dir, urls) = (dir.clone(), urls.clone());
            async move {
                let health = etcdctl(&dir, &urls, &["endpoint", "health", "--cluster"]).unwrap_or_default();
                Ok((health.matches("is healthy").count() == 3).then_some(()))
            }
        })
        .await?;
        let victim_url = status
            .members
            .iter()
            .find(|m| m.name == victim)
            .and_then(|m| m.client_url.clone())
            .context("no client URL for the victim")?;
        let served = served_fingerprint(&dir, victim_url.trim_start_matches("https://"), "member")?;
        let expected = fingerprint_of_file(&dir.join("member2.crt"))?;
        ensure!(
            served == expected,
            "the checkpoint of {victim} serves {served}, not the renewed {expected}"
        );
        for key in ["written-to-the-boot-etcd", "written-after-the-takeover"] {
            let v = etcdctl(&dir, &urls, &["get", "--print-value-only", key])?;
            ensure!(!v.trim().is_empty(), "{key} is gone after the rotation");
        }

        // Deleting the cluster takes the checkpoints with it.
        Api::<EtcdCluster>::namespaced(c.clone(), &ns)
            .delete(NAME, &DeleteParams::default())
            .await?;
        wait_for("the checkpoints to be removed", Duration::from_secs(120), || {
            let (names, ns) = (names.clone(), ns.clone());
            async move {
                for m in &names {
                    if checkpoints::file(&ns, m)?.exists() {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await?;
        // And nothing of it keeps running on the host: the kubelet has dropped the static pods
        // (their mirror pods are gone) and no member port answers.
        wait_for("no member left running", Duration::from_secs(120), || {
            let endpoints = status.client_endpoints.clone();
            let pods = Api::<Pod>::namespaced(c.clone(), &ns);
            async move {
                let mirrors = pods
                    .list(&ListParams::default().labels("etcd.ouroboros.dev/checkpoint-of"))
                    .await?;
                if !mirrors.items.is_empty() {
                    return Ok(None);
                }
                let listening = endpoints.iter().any(|u| {
                    u.trim_start_matches("https://")
                        .parse()
                        .is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
                });
                Ok((!listening).then_some(()))
            }
        })
        .await?;
        Ok(())
    })
    .await
}
