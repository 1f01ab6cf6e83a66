//! Self-hosted on separate control-plane nodes (#18), as bootkube ran it: the three nodes of the
//! local cluster are made control-plane nodes (labelled and tainted), the installer hands the API
//! server's etcd over to a self-hosted EtcdCluster whose members are placed one per node, and the
//! checkpointer on each node keeps a static-pod checkpoint of that node's member in that node's own
//! static-pod directory. Then one control-plane node loses power and boots again, and then every
//! node at once: each time the members come back (the same members, on their data) and the API
//! server with them. A writer of sequential keys runs against the members throughout; every write it
//! had acknowledged is read back at the end (0 lost).
//!
//! Ignored by default: it needs `NODES=3` and moves the cluster's own etcd for good, so `make test`
//! runs it last, after the other several-node tests.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, ensure};
use kube::Client;
use ouroboros_e2e::{
    checkpoints, client, cluster_script, env, etcd_cluster as cluster,
    self_hosted::{NAME, NS, api_server_on, handover, kube_etcd_status, write, written},
    wait_for,
    writer::Writer,
};

const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// Member name -> node, from the member pods.
async fn placement(client: &Client) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(cluster::member_nodes(client, NS, NAME)
        .await?
        .into_iter()
        .collect())
}

/// Waits until the cluster has converged on exactly `members` (no replacement, no restore), and
/// every member itself answers with that member list. The status alone is not evidence: it may
/// still be the one written before the cut, when the operator has not yet reconciled since (a CI
/// run read a converged status while node2's member was still refusing connections).
async fn converged_on(client: &Client, members: &BTreeMap<String, String>, what: &str) -> anyhow::Result<()> {
    let version = env("OUROBOROS_ETCD_VERSION")?;
    let converged = cluster::converged(3, &version);
    cluster::wait(client, NS, NAME, what, Duration::from_secs(300), |c, s| {
        converged(c, s) && s.members.iter().all(|m| members.contains_key(&m.name))
    })
    .await?;
    let expected: Vec<String> = members.keys().cloned().collect();
    let endpoints = kube_etcd_status(client).await?.client_endpoints;
    ensure!(
        endpoints.len() == members.len(),
        "the status lists client endpoints {endpoints:?} for members {members:?}"
    );
    for endpoint in &endpoints {
        let expected = &expected;
        wait_for(
            &format!("{endpoint} to answer a member list"),
            Duration::from_secs(120),
            || async move {
                match cluster::member_names(std::slice::from_ref(endpoint)).await {
                    Ok(names) => {
                        ensure!(
                            &names == expected,
                            "{endpoint} lists members {names:?}, not {expected:?}"
                        );
                        Ok(Some(()))
                    }
                    // Not answering yet: the wait's deadline decides.
                    Err(_) => Ok(None),
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// A ConfigMap write through the API server, retried for up to `secs`: the API server serves.
async fn api_writes(client: &Client, name: &str, secs: u64) -> anyhow::Result<()> {
    wait_for(
        &format!("the API server to write {name}"),
        Duration::from_secs(secs),
        || {
            let client = client.clone();
            async move {
                // A retried create may find its own earlier attempt done.
                if written(&client, name).await.ok().flatten().is_some() {
                    return Ok(Some(()));
                }
                write(&client, name, name).await?;
                Ok(Some(()))
            }
        },
    )
    .await
}

async fn still_there(client: &Client, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        ensure!(
            written(client, name).await?.as_deref() == Some(*name),
            "the ConfigMap {name} written before is not there"
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs NODES=3 and moves the cluster's own etcd for good; make test runs it last"]
async fn self_hosted_members_on_three_control_plane_nodes_survive_power_cycles() -> anyhow::Result<()> {
    let client = client().await?;
    cluster_script(&["control-plane", NODES[0], NODES[1], NODES[2]])?;
    api_writes(&client, "nodes-before-handover", 10).await?;
    checkpoints::deploy()?;
    let servers = handover(&[
        "--node-selector",
        "node-role.kubernetes.io/control-plane=",
        "--tolerate-control-plane",
    ])?;
    let client = api_server_on(&servers).await?;
    still_there(&client, &["nodes-before-handover"]).await?;

    // One member per control-plane node, each checkpointed on its own node only.
    let version = env("OUROBOROS_ETCD_VERSION")?;
    cluster::wait(
        &client,
        NS,
        NAME,
        "kube-etcd converged on the API server",
        Duration::from_secs(180),
        cluster::converged(3, &version),
    )
    .await?;
    let members = placement(&client).await?;
    let mut nodes: Vec<&str> = members.values().map(String::as_str).collect();
    nodes.sort_unstable();
    ensure!(
        nodes == NODES,
        "members are not one per control-plane node: {members:?}"
    );
    println!("members: {members:?}");
    for (member, node) in &members {
        wait_for(
            &format!("the checkpoint of {member} on {node} only"),
            Duration::from_secs(60),
            || async move {
                let mine = NODES
                    .iter()
                    .map(|n| checkpoints::members_on(n, NS).map(|m| (*n, m)))
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .into_iter()
                    .all(|(n, on)| (n == node.as_str()) == on.contains(member));
                Ok(mine.then_some(()))
            },
        )
        .await?;
    }

    let vip = format!("http://{}:2379", env("OUROBOROS_SELF_HOSTED_ETCD_VIP")?);
    let writer = Writer::start(&vip, "/self-hosted-nodes").await?;

    // One control-plane node loses power: the other two keep quorum, the API server keeps serving.
    let (member, node) = members
        .iter()
        .find(|(_, n)| n.as_str() == "node2")
        .context("no member on node2")?;
    let t0 = std::time::Instant::now();
    cluster_script(&["node-stop", node])?;
    api_writes(&client, "nodes-while-node2-down", 30).await?;
    println!(
        "{node} (with {member}) down; the API server wrote through it {:?} after the cut",
        t0.elapsed()
    );
    ensure!(
        writer.acked_during(20).await > 0,
        "no etcd write acknowledged in 20 s with {node} down (last error: {:?})",
        writer.last_error()
    );
    api_writes(&client, "nodes-node2-down-20s", 30).await?;
    cluster_script(&["node-start", node])?;
    converged_on(&client, &members, "kube-etcd converged after node2's power cycle").await?;
    println!("{member} back on {node} {:?} after the cut", t0.elapsed());
    still_there(&client, &["nodes-before-handover", "nodes-while-node2-down"]).await?;

    // Every node at once: nothing runs anywhere; each kubelet starts its node's member from the
    // checkpoint, and the API server starts once they have a quorum again.
    let t0 = std::time::Instant::now();
    cluster_script(&["power-cycle-all"]).context("the API server did not come back")?;
    println!("API server ready {:?} after every node lost power", t0.elapsed());
    let client = ouroboros_e2e::client().await?;
    converged_on(
        &client,
        &members,
        "kube-etcd converged after the whole-site power cycle",
    )
    .await?;
    println!("kube-etcd converged {:?} after the cut", t0.elapsed());
    let placed = placement(&client).await?;
    ensure!(placed == members, "members moved: {members:?} -> {placed:?}");
    still_there(&client, &["nodes-before-handover", "nodes-while-node2-down"]).await?;
    api_writes(&client, "nodes-after-power-cycle", 30).await?;
    ensure!(
        writer.acked_during(5).await > 0,
        "no etcd write acknowledged in 5 s after the power cycle (last error: {:?})",
        writer.last_error()
    );

    let last = writer.last_error();
    let (acked, failed) = writer.stop_and_verify().await?;
    println!("{acked} writes acknowledged, {failed} failed attempts (last: {last:?}), 0 lost");
    Ok(())
}
