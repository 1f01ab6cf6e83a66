//! Kuberception: the local cluster's own API server moves onto etcd that the cluster manages.
//!
//! The cluster starts as `e2e/cluster.sh` builds it: kube-apiserver on a temporary etcd process (the
//! "boot" etcd, as bootkube ran one). The operator is deployed from `deploy/`; `etcd-operator handover`
//! creates the self-hosted EtcdCluster and waits until the boot member has been removed; the boot etcd
//! is stopped and the API server restarted on the printed endpoints. Then everything made before the
//! handover must still be there, and the API server must keep serving while a member is replaced.
//! Last, the whole control plane is power-cycled (kubelet, API server and every container killed at
//! once): the members start again from their static-pod checkpoints, and the API server with them.
//! Then a power cut loses two members for good, and the quorum-loss runbook brings the API server
//! back on the survivor and the cluster back to three voters. Last, a power cut loses everything but
//! an S3 backup, and the whole-control-plane runbook restores it through a temporary API server and a
//! second handover.
//!
//! Ignored by default because it changes the cluster for good: `make test` runs it in its own stage
//! after the other e2e tests, and the lifecycle stage then rebuilds the cluster from scratch.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Service},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use ouroboros_crds::{EtcdCluster, condition_types as ct};
use ouroboros_e2e::{
    backup_succeeded, checkpoints, client, cluster_script, env, etcd_cluster as cluster, minio_secret, s3,
    self_hosted::{
        NAME, NS, api_server_on, config_map, handover, kube_etcd_status, release_binary, write, written,
    },
    wait_for,
};
use serde_json::json;

/// A power cut that loses `members`' data directories and checkpoints, and `also`, for good
/// (`e2e/cluster.sh power-cut-losing`); the node boots with only its kubelet.
fn power_cut_losing<'a>(
    members: impl IntoIterator<Item = &'a String>,
    also: &[String],
) -> anyhow::Result<()> {
    let data = env("OUROBOROS_SELF_HOSTED_DATA")?;
    let mut paths = also.to_vec();
    for member in members {
        paths.push(format!("{data}/{NS}-{member}"));
        paths.push(checkpoints::file(NS, member)?.display().to_string());
    }
    let mut args = vec!["power-cut-losing"];
    args.extend(paths.iter().map(String::as_str));
    cluster_script(&args)
}

/// Creates and reads ConfigMaps until told to stop; counts what succeeded and what failed.
fn keep_using_the_api(client: Client) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, Vec<String>)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let (ok, mut failures) = (AtomicU64::new(0), Vec::new());
        let mut n = 0u64;
        while !flag.load(Ordering::Relaxed) {
            n += 1;
            let name = format!("kuberception-during-{n}");
            let result = async {
                api.create(&PostParams::default(), &config_map(&name, "during")?)
                    .await?;
                let back = api.get(&name).await?;
                ensure!(
                    back.data.unwrap_or_default()["written"] == "during",
                    "read back something else"
                );
                api.delete(&name, &DeleteParams::default()).await?;
                anyhow::Ok(())
            };
            match tokio::time::timeout(Duration::from_secs(10), result).await {
                Ok(Ok(())) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => failures.push(format!("{name}: {e:#}")),
                Err(_) => failures.push(format!("{name}: no answer within 10s")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (ok.into_inner(), failures)
    });
    (stop, task)
}

#[tokio::test]
#[ignore = "moves the cluster's own etcd for good; run by `make test` in its own stage"]
async fn the_api_server_moves_onto_etcd_the_cluster_manages() -> anyhow::Result<()> {
    let client = client().await?;
    write(&client, "kuberception-before", "before the handover").await?;

    // Self-hosted installs deploy the checkpointer too (deploy/self-hosted).
    checkpoints::deploy()?;

    // The installer's step: hand over, and get the endpoints for the API server.
    let t0 = std::time::Instant::now();
    // One control-plane node, node1, whatever the node count: the runbooks below are the one-node
    // ones (its power cycles and the checkpoints they lose are node1's).
    let servers = handover(&["--node-selector", "kubernetes.io/hostname=node1"])?;
    eprintln!("handover done in {:?}: {servers}", t0.elapsed());
    // With a client Service IP the API server is sent there (voting members only).
    let vip = format!("http://{}:2379", env("OUROBOROS_SELF_HOSTED_ETCD_VIP")?);
    ensure!(servers == vip, "expected --etcd-servers={vip}, got {servers}");
    let status = kube_etcd_status(&client).await?;
    let urls = status.client_endpoints.clone();
    ensure!(urls.len() == 3, "expected 3 member URLs, got {urls:?}");
    ensure!(
        !urls.contains(&env("OUROBOROS_BOOT_ETCD")?),
        "the boot member is still listed: {urls:?}"
    );

    // etcd agrees: three voters, none of them the boot member.
    let mut etcd = etcd_client::Client::connect(&urls, None).await?;
    let members = etcd.member_list().await?;
    let names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    ensure!(names.len() == 3, "members: {names:?}");
    ensure!(
        names.iter().all(|n| n.starts_with("kube-etcd-")),
        "a member that is not self-hosted remains: {names:?}"
    );
    ensure!(
        members.members().iter().all(|m| !m.is_learner()),
        "a learner remains"
    );
    let removed = status
        .conditions
        .iter()
        .find(|c| c.type_ == ct::BOOT_MEMBER_REMOVED);
    ensure!(
        removed.is_some_and(|c| c.status == "True"),
        "BootMemberRemoved: {removed:?}"
    );

    // The installer stops the boot etcd and restarts the API server on the self-hosted members.
    let client = api_server_on(&servers).await?;

    // Everything made before the handover is still there.
    ensure!(
        written(&client, "kuberception-before").await?.as_deref() == Some("before the handover"),
        "a ConfigMap written before the handover is not there"
    );
    Api::<Deployment>::namespaced(client.clone(), "ouroboros-system")
        .get("etcd-operator")
        .await
        .context("the operator's Deployment")?;
    let own = Api::<EtcdCluster>::namespaced(client.clone(), NS)
        .get(NAME)
        .await?;
    ensure!(own.spec.self_hosted.is_some(), "the EtcdCluster lost its spec");
    // The operator keeps managing the etcd that stores it.
    cluster::wait(
        &client,
        NS,
        NAME,
        "kube-etcd converged after the restart",
        Duration::from_secs(120),
        cluster::converged(3, &env("OUROBOROS_ETCD_VERSION")?),
    )
    .await?;

    // One member is killed and replaced while the API server serves.
    let victim = {
        let s = kube_etcd_status(&client).await?;
        s.members
            .iter()
            .find(|m| !m.is_leader)
            .map(|m| m.name.clone())
            .context("no follower")?
    };
    let (stop, using) = keep_using_the_api(client.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), NS)
        .delete(&victim, &DeleteParams::default().grace_period(0))
        .await?;
    eprintln!("deleted self-hosted member {victim}");
    let version = env("OUROBOROS_ETCD_VERSION")?;
    let converged = cluster::converged(3, &version);
    cluster::wait(
        &client,
        NS,
        NAME,
        "a replacement member",
        Duration::from_secs(180),
        |c, s| converged(c, s) && s.members.iter().all(|m| m.name != victim),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = using.await?;
    eprintln!(
        "{ok} create/read/delete rounds while {victim} was replaced; {} failed",
        failures.len()
    );
    ensure!(ok >= 10, "too few rounds to mean anything: {ok}");
    ensure!(
        failures.is_empty(),
        "the API server failed requests: {failures:#?}"
    );
    wait_for(
        "a ConfigMap written after the replacement",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move {
                write(&client, "kuberception-after", "after").await?;
                Ok(Some(()))
            }
        },
    )
    .await?;

    power_cycle_brings_everything_back(&client).await
}

/// The seed scenario: the kubelet, the control plane and every container die at once and start
/// again. The members come back from their static-pod checkpoints with their data (the same
/// members, not replacements), and with them the API server and everything it stored.
async fn power_cycle_brings_everything_back(client: &Client) -> anyhow::Result<()> {
    let mut members: Vec<String> = kube_etcd_status(client)
        .await?
        .members
        .iter()
        .map(|m| m.name.clone())
        .collect();
    members.sort();
    ensure!(members.len() == 3, "members before the power cut: {members:?}");
    // One checkpoint per member and none for the member replaced above: the checkpointer follows
    // the pods both ways.
    wait_for(
        "a checkpoint for exactly each member",
        Duration::from_secs(60),
        || {
            let members = members.clone();
            async move { Ok((checkpoints::members(NS)? == members).then_some(())) }
        },
    )
    .await?;
    write(client, "kuberception-before-power-cut", "before the power cut").await?;

    let t0 = std::time::Instant::now();
    cluster_script(&["power-cycle"]).context("the API server did not come back")?;
    eprintln!("API server ready {:?} after the power cut", t0.elapsed());

    let client = ouroboros_e2e::client().await?;
    ensure!(
        written(&client, "kuberception-before-power-cut")
            .await?
            .as_deref()
            == Some("before the power cut"),
        "a ConfigMap written before the power cut is not there"
    );
    // The same three members, with their data: nothing was replaced or restored.
    let names = cluster::member_names(&kube_etcd_status(&client).await?.client_endpoints).await?;
    ensure!(
        names == members,
        "members after the power cut: {names:?}, before: {members:?}"
    );
    let version = env("OUROBOROS_ETCD_VERSION")?;
    let converged = cluster::converged(3, &version);
    cluster::wait(
        &client,
        NS,
        NAME,
        "kube-etcd converged after the power cycle",
        Duration::from_secs(300),
        |c, s| {
            let mut now: Vec<&str> = s.members.iter().map(|m| m.name.as_str()).collect();
            now.sort_unstable();
            converged(c, s) && now == members.iter().map(String::as_str).collect::<Vec<_>>()
        },
    )
    .await?;
    eprintln!("kube-etcd converged {:?} after the power cut", t0.elapsed());
    write(&client, "kuberception-after-power-cut", "after the power cut").await?;
    quorum_lost_one_member_survives(&client).await
}

/// A self-hosted member's metrics URL: its client port + 2 on the same host.
fn metrics_url(client_url: &str) -> anyhow::Result<String> {
    let (host, port) = client_url
        .trim_start_matches("http://")
        .rsplit_once(':')
        .context("client URL without a port")?;
    let port: u16 = port.trim_end_matches('/').parse()?;
    Ok(format!("http://{host}:{}/metrics", port + 2))
}

/// How many backend (bbolt) commits the member has finished, from its metrics.
fn backend_commits(metrics_url: &str) -> anyhow::Result<u64> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", metrics_url])
        .output()?;
    ensure!(out.status.success(), "curl {metrics_url} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd_disk_backend_commit_duration_seconds_count "))
        .context("no etcd_disk_backend_commit_duration_seconds_count in the metrics")?;
    Ok(count.trim().parse::<f64>()? as u64)
}

/// docs/self-hosted.md, "Runbook: quorum lost, one member survives", step by step: a power cut in
/// which two members' data and checkpoints are lost for good leaves the API server without etcd. The
/// survivor is started alone with `--force-new-cluster` through its checkpoint, the API server is
/// pointed at it, and the operator grows the cluster back to three voters with every write the
/// survivor had.
async fn quorum_lost_one_member_survives(client: &Client) -> anyhow::Result<()> {
    let status = kube_etcd_status(client).await?;
    // The leader has every acknowledged write; the runbook starts from the member with the most.
    let survivor = status
        .members
        .iter()
        .find(|m| m.is_leader)
        .context("no leader before the quorum loss")?;
    let survivor_url = survivor
        .client_url
        .clone()
        .context("the survivor has no client URL")?;
    let survivor = survivor.name.clone();
    let lost: Vec<String> = status
        .members
        .iter()
        .map(|m| m.name.clone())
        .filter(|m| *m != survivor)
        .collect();
    ensure!(lost.len() == 2, "members: {:?}", status.members);
    write(
        client,
        "kuberception-before-quorum-loss",
        "before the quorum loss",
    )
    .await?;
    // Acknowledged means a majority has it, not necessarily the survivor (the status's leader can be
    // a moment old). The runbook starts from the member that has the most; here, one that has this.
    wait_for(
        "the survivor to hold the last write",
        Duration::from_secs(30),
        || {
            let url = survivor_url.clone();
            async move {
                let mut etcd = etcd_client::Client::connect([url], None).await?;
                let got = etcd
                    .get(
                        "/registry/configmaps/default/kuberception-before-quorum-loss",
                        Some(etcd_client::GetOptions::new().with_serializable()),
                    )
                    .await?;
                Ok((!got.kvs().is_empty()).then_some(()))
            }
        },
    )
    .await?;
    // Holding it is not keeping it. A member applies an entry, and serves it to a serializable read,
    // before the entry's commit is fsynced to its WAL, and --force-new-cluster drops WAL entries above
    // the recorded commit. What it keeps is what its backend (bbolt) has committed: etcd >= 3.6.1
    // restarts from max(WAL commit, backend consistent index), and the backend commits every 100 ms.
    // So the test cuts power only after two backend commits finished since the read: the second began
    // after it and holds the write. docs/self-hosted.md states this guarantee.
    let metrics = metrics_url(&survivor_url)?;
    let commits = backend_commits(&metrics)?;
    wait_for(
        "two backend commits on the survivor after it held the write",
        // The backend commits only when something is pending; the control plane's leases renew
        // every few seconds.
        Duration::from_secs(60),
        || {
            let metrics = metrics.clone();
            async move { Ok((backend_commits(&metrics)? >= commits + 2).then_some(())) }
        },
    )
    .await?;

    let t0 = std::time::Instant::now();
    power_cut_losing(&lost, &[])?;
    eprintln!("quorum lost: {lost:?} gone for good, {survivor} survives");

    // Runbook step 1: the survivor's checkpoint runs its etcd alone, rewriting the membership.
    let checkpoint = checkpoints::file(NS, &survivor)?;
    let original = std::fs::read(&checkpoint).context("the survivor's checkpoint")?;
    let mut pod: serde_json::Value = serde_json::from_slice(&original)?;
    pod["spec"]["containers"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == "etcd"))
        .and_then(|c| c["args"].as_array_mut())
        .context("no etcd container with args in the checkpoint")?
        .push("--force-new-cluster".into());
    checkpoints::replace(&checkpoint, &serde_json::to_vec_pretty(&pod)?)?;
    wait_for("the survivor to answer alone", Duration::from_secs(120), || {
        let url = survivor_url.clone();
        async move {
            let mut etcd = etcd_client::Client::connect([url], None).await?;
            let members = etcd.member_list().await?;
            Ok((members.members().len() == 1).then_some(()))
        }
    })
    .await?;
    eprintln!("{survivor} answers alone {:?} after the cut", t0.elapsed());

    // Step 2: the API server on the survivor.
    let client = api_server_on(&survivor_url).await?;
    ensure!(
        written(&client, "kuberception-before-quorum-loss")
            .await?
            .as_deref()
            == Some("before the quorum loss"),
        "a ConfigMap written before the quorum loss is not there"
    );
    eprintln!(
        "API server back on {survivor_url} {:?} after the cut",
        t0.elapsed()
    );

    // Step 3: the checkpoint as it was; the operator replaces the lost members.
    checkpoints::replace(&checkpoint, &original)?;
    let version = env("OUROBOROS_ETCD_VERSION")?;
    let converged = cluster::converged(3, &version);
    cluster::wait(
        &client,
        NS,
        NAME,
        "kube-etcd grown back to three voters around the survivor",
        Duration::from_secs(420),
        |c, s| {
            converged(c, s)
                && s.members.iter().any(|m| m.name == survivor)
                && s.members.iter().all(|m| !lost.contains(&m.name))
        },
    )
    .await?;
    eprintln!("kube-etcd converged {:?} after the cut", t0.elapsed());

    // Step 4: the API server back on the client Service IP (voting members only).
    let vip = format!("http://{}:2379", env("OUROBOROS_SELF_HOSTED_ETCD_VIP")?);
    let client = api_server_on(&vip).await?;
    write(&client, "kuberception-after-quorum-loss", "after the quorum loss").await?;
    whole_control_plane_lost(&client).await
}

/// docs/self-hosted.md, "Runbook: whole control plane lost, restore with a temporary API server",
/// step by step: the cluster backs up to S3, then a power cut loses every member's data and
/// checkpoint. The newest archive is fetched and verified on the host, restored as the boot etcd
/// under a temporary API server, the old EtcdCluster is deleted, and a second handover moves the API
/// server onto new self-hosted members holding exactly the backed-up data.
async fn whole_control_plane_lost(client: &Client) -> anyhow::Result<()> {
    // Backups of a self-hosted cluster go to S3, outside the cluster that can be lost.
    minio_secret(client, NS).await?;
    let backup = json!({"spec": {"backup": {
        "schedule": "0 0 1 1 *",
        "destination": {"s3": {
            "bucket": s3::bucket()?, "prefix": "e2e-self-hosted/", "endpoint": env("OUROBOROS_S3_ENDPOINT")?,
            "forcePathStyle": true, "credentialsSecret": "minio",
        }},
    }}});
    Api::<EtcdCluster>::namespaced(client.clone(), NS)
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&backup))
        .await?;
    write(client, "kuberception-in-backup", "in the backup").await?;
    let taken = backup_succeeded(client, NS, NAME, "kuberception-last").await?;
    let location = taken.location.context("the backup has no location")?;
    let backed_up_revision = taken.revision.context("the backup has no revision")?;
    write(client, "kuberception-after-backup", "lost with the control plane").await?;

    let data = env("OUROBOROS_SELF_HOSTED_DATA")?;
    let status = kube_etcd_status(client).await?;
    let t0 = std::time::Instant::now();
    power_cut_losing(
        status.members.iter().map(|m| &m.name),
        &[format!("{}/cp-etcd", env("OUROBOROS_STATE")?)],
    )?;

    // Step 1: fetch and verify the newest archive on the host.
    let restore_dir = std::env::temp_dir().join(format!("ouroboros-e2e-cp-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&restore_dir);
    let st = Command::new(release_binary("etcd-backup-sidecar"))
        .args(["fetch", "--location", &location, "--out"])
        .arg(&restore_dir)
        .args(["--endpoint", &env("OUROBOROS_S3_ENDPOINT")?, "--force-path-style"])
        .status()
        .context("running etcd-backup-sidecar fetch")?;
    ensure!(st.success(), "fetching {location} failed");

    // Steps 2 and 3: the restored boot etcd under a temporary API server.
    let restored = cluster_script(&[
        "boot-etcd-restore",
        &restore_dir.join("snapshot.db").display().to_string(),
    ]);
    std::fs::remove_dir_all(&restore_dir)?;
    restored?;
    let client = ouroboros_e2e::client().await?;
    eprintln!(
        "temporary API server on the restored boot etcd {:?} after the cut",
        t0.elapsed()
    );
    ensure!(
        written(&client, "kuberception-after-backup").await?.is_none(),
        "a ConfigMap written after the backup came back"
    );
    ensure!(
        written(&client, "kuberception-in-backup").await?.is_some(),
        "a ConfigMap in the backup is not there"
    );
    // The old EtcdCluster's members are gone: delete it, wait until its pods and their checkpoints
    // are gone too (a checkpoint left would run an old member on a new member's directory), then
    // clear their directories, since the new cluster names its members from 0 again.
    Api::<EtcdCluster>::namespaced(client.clone(), NS)
        .delete(NAME, &DeleteParams::default())
        .await?;
    wait_for(
        "the old EtcdCluster, its pods, Services and checkpoints to be gone",
        Duration::from_secs(180),
        || {
            let client = client.clone();
            async move {
                let selector = ListParams::default().labels(&format!("etcd.ouroboros.dev/cluster={NAME}"));
                let pods = Api::<Pod>::namespaced(client.clone(), NS).list(&selector).await?;
                let services = Api::<Service>::namespaced(client.clone(), NS)
                    .list(&selector)
                    .await?;
                let cluster = Api::<EtcdCluster>::namespaced(client, NS).get_opt(NAME).await?;
                Ok((cluster.is_none()
                    && pods.items.is_empty()
                    && services.items.is_empty()
                    && checkpoints::members(NS)?.is_empty())
                .then_some(()))
            }
        },
    )
    .await?;
    for entry in std::fs::read_dir(&data)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{NS}-{NAME}-")))
        {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }

    // Step 4: hand over as at installation (on node1, as above).
    let servers = handover(&["--node-selector", "kubernetes.io/hostname=node1"])?;
    let client = api_server_on(&servers).await?;
    eprintln!(
        "API server back on self-hosted etcd {:?} after the cut",
        t0.elapsed()
    );
    ensure!(
        written(&client, "kuberception-in-backup").await?.is_some(),
        "a ConfigMap in the backup is not there after the handover"
    );
    ensure!(
        written(&client, "kuberception-after-backup").await?.is_none(),
        "a ConfigMap written after the backup is there after the handover"
    );
    let urls = kube_etcd_status(&client).await?.client_endpoints;
    let mut etcd = etcd_client::Client::connect(&urls, None).await?;
    let revision = etcd
        .get("/registry/configmaps/default/kuberception-in-backup", None)
        .await?
        .header()
        .context("no header")?
        .revision();
    ensure!(
        revision > backed_up_revision + 1_000_000_000,
        "revision {revision} after the restore is not above the backup's {backed_up_revision} plus the bump"
    );
    write(&client, "kuberception-after-restore", "after the restore").await?;
    Ok(())
}
