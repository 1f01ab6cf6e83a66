//! Several nodes (#18): members spread over nodes, a node lost to a power cut, a node cut off by a
//! network partition. Each test keeps a writer of sequential keys running through the disruption and
//! checks afterwards that every acknowledged write is still there (0 lost).
//!
//! Ignored by default: they need the local cluster with three nodes (`NODES=3 e2e/cluster.sh up`),
//! where node2 and node3 are network namespaces of their own that `e2e/cluster.sh node-stop` and
//! `partition` can cut (docs/local-cluster.md). `make test` runs them in their own stage.

use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, PersistentVolumeClaim, Pod},
};
use kube::{Api, Client, ResourceExt, api::PostParams};
use ouroboros_crds::{BackupPhase, EtcdBackup};
use ouroboros_e2e::{
    TestNamespace, backup_finished, client, cluster_script, container_restarts, env,
    etcd_cluster::{self, converged},
    etcd_tool, s3_credentials, wait_for,
    writer::Writer,
};

const V: &str = "3.6.16";
const T: Duration = Duration::from_secs(240);

/// A 3-member cluster `name` on claims, spread by `anti_affinity` (`None` for the default).
fn cluster(name: &str, anti_affinity: Option<&str>) -> String {
    let pod = anti_affinity.map_or(String::new(), |a| format!("  pod: {{antiAffinity: {a}}}\n"));
    format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: {name}}}\nspec:\n  size: 3\n  \
         storage: {{persistentVolumeClaim: {{size: 1Gi}}}}\n{pod}"
    )
}

async fn ensure_spread(c: &Client, ns: &str, cluster: &str) -> anyhow::Result<Vec<(String, String)>> {
    let placed = etcd_cluster::member_nodes(c, ns, cluster).await?;
    let nodes: BTreeSet<&str> = placed.iter().map(|(_, n)| n.as_str()).collect();
    ensure!(nodes.len() == 3, "members of {cluster} share nodes: {placed:?}");
    Ok(placed)
}

/// The 3-member cluster `d` most tests disrupt, one member per node (`antiAffinity: Required`):
/// its client endpoint and its identity before the disruption.
async fn spread_cluster(c: &Client, ns: &str) -> anyhow::Result<(String, (u64, Vec<u64>))> {
    etcd_cluster::create(c, ns, &cluster("d", Some("Required"))).await?;
    etcd_cluster::wait(c, ns, "d", "3 members", T, converged(3, V)).await?;
    ensure_spread(c, ns, "d").await?;
    let endpoint = etcd_cluster::client_endpoint(c, ns, "d").await?;
    let identity = etcd_cluster::identity(&endpoint).await?;
    Ok((endpoint, identity))
}

/// A member that is not on node1 (the machine itself, which the fault tools do not cut) and not the
/// leader, and its node.
async fn follower_off_node1(c: &Client, ns: &str, cluster: &str) -> anyhow::Result<(String, String)> {
    let status = Api::<ouroboros_crds::EtcdCluster>::namespaced(c.clone(), ns)
        .get(cluster)
        .await?
        .status
        .unwrap_or_default();
    let placed = etcd_cluster::member_nodes(c, ns, cluster).await?;
    placed
        .into_iter()
        .find(|(pod, node)| node != "node1" && !status.members.iter().any(|m| &m.name == pod && m.is_leader))
        .context("no follower off node1")
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_node_ready(c: &Client, name: &str, ready: bool) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(c.clone());
    wait_for(&format!("{name} Ready={ready}"), T, || {
        let nodes = nodes.clone();
        async move { Ok((node_ready(&nodes.get(name).await?) == ready).then_some(())) }
    })
    .await
}

#[tokio::test]
#[ignore = "needs NODES=3; make test runs it in its own stage"]
async fn members_spread_over_nodes_and_back_up_from_there() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "spread").await?.run(|c, ns| async move {
        etcd_cluster::create(&c, &ns, &cluster("req", Some("Required"))).await?;
        etcd_cluster::create(&c, &ns, &cluster("pref", None)).await?;
        etcd_cluster::wait(&c, &ns, "req", "3 members", T, converged(3, V)).await?;
        etcd_cluster::wait(&c, &ns, "pref", "3 members", T, converged(3, V)).await?;
        println!("Required: {:?}", ensure_spread(&c, &ns, "req").await?);
        println!("default (Preferred): {:?}", ensure_spread(&c, &ns, "pref").await?);

        let endpoint = etcd_cluster::client_endpoint(&c, &ns, "pref").await?;
        let writer = Writer::start(&endpoint, "/spread").await?;
        s3_credentials(&c, &ns, "minio", &env("AWS_SECRET_ACCESS_KEY")?).await?;
        let backups: Api<EtcdBackup> = Api::namespaced(c.clone(), &ns);
        let to_volume = "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {name: to-volume}\n\
                         spec: {clusterName: pref}\n"
            .to_owned();
        let to_s3 = format!(
            "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {{name: to-s3}}\n\
             spec: {{clusterName: req, destination: {{s3: {{bucket: {}, prefix: e2e/{ns}/, endpoint: '{}', forcePathStyle: true, credentialsSecret: minio}}}}}}\n",
            env("OUROBOROS_S3_BUCKET")?,
            env("OUROBOROS_S3_ENDPOINT")?
        );
        for yaml in [&to_volume, &to_s3] {
            backups.create(&PostParams::default(), &serde_norway::from_str(yaml)?).await?;
        }
        for name in ["to-volume", "to-s3"] {
            let s = backup_finished(&c, &ns, name, T).await?;
            ensure!(s.phase == Some(BackupPhase::Succeeded), "backup {name} failed: {:?}", s.reason);
            println!("backup {name}: {:?} from {:?}", s.location, s.member);
        }
        let (acked, failed) = writer.stop_and_verify().await?;
        println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs NODES=3; make test runs it in its own stage"]
async fn a_member_whose_node_loses_power_comes_back_on_its_data() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "node-stop")
        .await?
        .run(|c, ns| async move {
            let (endpoint, before) = spread_cluster(&c, &ns).await?;
            let (victim, node) = follower_off_node1(&c, &ns, "d").await?;
            let writer = Writer::start(&endpoint, "/node-stop").await?;
            tokio::time::sleep(Duration::from_secs(3)).await;

            cluster_script(&["node-stop", &node])?;
            let cut = Instant::now();
            wait_node_ready(&c, &node, false).await?;
            let served = writer.acked_during(20).await;
            ensure!(served > 0, "no write was acknowledged while {node} was down");
            println!(
                "{node} (with {victim}) down: NotReady after {:?}, {served} writes acknowledged in 20 s",
                cut.elapsed()
            );

            cluster_script(&["node-start", &node])?;
            etcd_cluster::wait(&c, &ns, "d", "3 members again", T, converged(3, V)).await?;
            println!("{victim} back {:?} after the power cut", cut.elapsed());
            let after = etcd_cluster::identity(&endpoint).await?;
            ensure!(
                after == before,
                "identity {before:x?} -> {after:x?}: a member was replaced, not restarted"
            );
            let placed = etcd_cluster::member_nodes(&c, &ns, "d").await?;
            ensure!(
                placed.iter().any(|(p, n)| p == &victim && n == &node),
                "{victim} is no longer on {node}: {placed:?}"
            );
            let (acked, failed) = writer.stop_and_verify().await?;
            println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
            Ok(())
        })
        .await
}

#[tokio::test]
#[ignore = "needs NODES=3; make test runs it in its own stage"]
async fn a_member_whose_node_stays_lost_is_replaced_elsewhere_and_its_claim_kept() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "node-lost")
        .await?
        .run(|c, ns| async move {
            // The default (preferred) spread, so the replacement may share a node with a member: two
            // nodes are left.
            let yaml = "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: d}\nspec:\n  size: 3\n  \
                        storage: {persistentVolumeClaim: {size: 1Gi, replaceAfterNodeLost: 20s}}\n";
            etcd_cluster::create(&c, &ns, yaml).await?;
            etcd_cluster::wait(&c, &ns, "d", "3 members", T, converged(3, V)).await?;
            ensure_spread(&c, &ns, "d").await?;
            let endpoint = etcd_cluster::client_endpoint(&c, &ns, "d").await?;
            let (victim, node) = follower_off_node1(&c, &ns, "d").await?;
            let writer = Writer::start(&endpoint, "/node-lost").await?;
            tokio::time::sleep(Duration::from_secs(3)).await;

            cluster_script(&["node-stop", &node])?;
            let cut = Instant::now();
            let replaced = |c: &ouroboros_crds::EtcdCluster, s: &ouroboros_crds::EtcdClusterStatus| {
                converged(3, V)(c, s) && !s.members.iter().any(|m| m.name == victim)
            };
            let status = etcd_cluster::wait(&c, &ns, "d", "the lost member replaced", T, replaced).await?;
            let members: Vec<&str> = status.members.iter().map(|m| m.name.as_str()).collect();
            println!("{node} (with {victim}) lost: replaced after {:?}, members {members:?}", cut.elapsed());
            let placed = etcd_cluster::member_nodes(&c, &ns, "d").await?;
            ensure!(
                !placed.iter().any(|(_, n)| n == &node),
                "a member pod is still on the lost {node}: {placed:?}"
            );
            // The lost member's data is still on its node: its claim is kept, retired.
            let claim = Api::<PersistentVolumeClaim>::namespaced(c.clone(), &ns)
                .get(&format!("{victim}-data"))
                .await
                .with_context(|| format!("the claim of {victim} was deleted"))?;
            let retired = claim.annotations().get("etcd.ouroboros.dev/retired");
            ensure!(retired.is_some(), "the claim of {victim} is not marked retired");
            println!("claim {victim}-data kept: {retired:?}");

            // The node returns: the replaced member stays out, the cluster stays as it is.
            cluster_script(&["node-start", &node])?;
            wait_node_ready(&c, &node, true).await?;
            let served = writer.acked_during(15).await;
            ensure!(served > 0, "no write acknowledged after {node} returned");
            let after = etcd_cluster::wait(&c, &ns, "d", "the same 3 members", T, converged(3, V)).await?;
            let now: Vec<&str> = after.members.iter().map(|m| m.name.as_str()).collect();
            ensure!(now == members, "members changed after {node} returned: {members:?} -> {now:?}");
            let (acked, failed) = writer.stop_and_verify().await?;
            println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
            Ok(())
        })
        .await
}

/// A linearizable read of `key` from the member at `ip`, asked from inside `node`'s network (the only
/// place that still reaches it during a partition).
fn linearizable_read_on(node: &str, ip: &str) -> anyhow::Result<bool> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/ouro-{node}"))
        .arg(etcd_tool("etcdctl"))
        .args([
            "--endpoints",
            &format!("http://{ip}:2379"),
            "--command-timeout=3s",
            "get",
            "/partition/00000000",
        ])
        .output()
        .context("running etcdctl in the node's network")?;
    Ok(out.status.success())
}

#[tokio::test]
#[ignore = "needs NODES=3; make test runs it in its own stage"]
async fn a_partitioned_member_rejoins_without_being_replaced() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "partition").await?.run(|c, ns| async move {
        let (endpoint, before) = spread_cluster(&c, &ns).await?;
        let (victim, node) = follower_off_node1(&c, &ns, "d").await?;
        let pod = Api::<Pod>::namespaced(c.clone(), &ns).get(&victim).await?;
        let ip = pod.status.and_then(|s| s.pod_ip).context("victim has no IP")?;
        let uid_before = pod.metadata.uid.clone();
        let writer = Writer::start(&endpoint, "/partition").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(linearizable_read_on(&node, &ip)?, "{victim} does not serve reads before the cut");

        cluster_script(&["partition", &node])?;
        let cut = Instant::now();
        let served = writer.acked_during(10).await;
        ensure!(served > 0, "the majority acknowledged no write while {node} was cut off");
        if linearizable_read_on(&node, &ip)? {
            cluster_script(&["heal", &node])?;
            bail!("the cut-off member {victim} served a linearizable read");
        }
        let served = served + writer.acked_during(15).await;
        println!("{node} (with {victim}) partitioned for {:?}: {served} writes acknowledged by the majority; no linearizable read from {victim}", cut.elapsed());

        cluster_script(&["heal", &node])?;
        etcd_cluster::wait(&c, &ns, "d", "3 members again", T, converged(3, V)).await?;
        println!("{victim} healthy again {:?} after the cut", cut.elapsed());
        // The operator's view may predate the heal by a poll; the member itself says when it is back.
        wait_for(&format!("{victim} to serve a linearizable read after the heal"), T, || {
            let (node, ip) = (node.clone(), ip.clone());
            async move { Ok(linearizable_read_on(&node, &ip)?.then_some(())) }
        })
        .await?;
        println!("{victim} serves linearizable reads {:?} after the cut", cut.elapsed());
        let after = etcd_cluster::identity(&endpoint).await?;
        ensure!(after == before, "identity {before:x?} -> {after:x?}: a member was replaced");
        let uid_after = Api::<Pod>::namespaced(c.clone(), &ns).get(&victim).await?.metadata.uid;
        ensure!(uid_after == uid_before, "{victim} got a new pod: it was replaced or restarted, not rejoined");
        let (acked, failed) = writer.stop_and_verify().await?;
        println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
        Ok(())
    })
    .await
}

fn kubectl_ok(args: &[&str]) -> anyhow::Result<bool> {
    Ok(ouroboros_e2e::kubectl(args)?.success)
}

#[tokio::test]
#[ignore = "needs NODES=3; make test runs it in its own stage"]
async fn a_drain_keeps_quorum_and_the_budget_stops_a_second_one() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "drain").await?.run(|c, ns| async move {
        let (endpoint, before) = spread_cluster(&c, &ns).await?;
        let placed = etcd_cluster::member_nodes(&c, &ns, "d").await?;
        let on = |node: &str| placed.iter().find(|(_, n)| n == node).map(|(p, _)| p.clone());
        let (first, second) = (on("node2").context("no member on node2")?, on("node3").context("no member on node3")?);
        let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
        let second_uid = pods.get(&second).await?.metadata.uid;
        let writer = Writer::start(&endpoint, "/drain").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;

        let drain = ["drain", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"];
        let result = async {
            ensure!(kubectl_ok(&[&drain[..], &["node2"]].concat())?, "draining node2 failed");
            println!("node2 drained: {first} evicted");
            // One member is out (its claim holds it to the cordoned node2): the budget of 2 available
            // members allows no second eviction.
            let second_drain = ["drain", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=20s", "node3"];
            let refused = ouroboros_e2e::kubectl(&second_drain)?;
            ensure!(!refused.success, "node3 was drained while {first} was out: the budget did not hold");
            ensure!(
                refused.stderr.contains("disruption budget"),
                "the second drain failed for another reason: {}",
                refused.stderr
            );
            ensure!(
                pods.get(&second).await?.metadata.uid == second_uid,
                "{second} was evicted despite the budget"
            );
            let served = writer.acked_during(5).await;
            ensure!(served > 0, "no write acknowledged with {first} drained");
            println!("second drain refused by the PodDisruptionBudget; {served} writes acknowledged in 5 s meanwhile");
            anyhow::Ok(())
        }
        .await;
        for node in ["node2", "node3"] {
            kubectl_ok(&["uncordon", node])?;
        }
        result?;
        etcd_cluster::wait(&c, &ns, "d", "3 members after the uncordon", T, converged(3, V)).await?;
        let after = etcd_cluster::identity(&endpoint).await?;
        ensure!(after == before, "identity {before:x?} -> {after:x?}: a member was replaced, not restarted");
        let (acked, failed) = writer.stop_and_verify().await?;
        println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
        Ok(())
    })
    .await
}

/// When the operator replica `pod` last logged `message` (from its previous container when
/// `previous`).
fn log_time(pod: &str, previous: bool, message: &str) -> anyhow::Result<jiff::Timestamp> {
    let mut args = vec!["-n", "ouroboros-system", "logs", pod];
    if previous {
        args.push("--previous");
    }
    let out = ouroboros_e2e::kubectl(&args)?;
    ensure!(out.success, "kubectl logs {pod}: {}", out.stderr);
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains(message))
        .with_context(|| format!("{pod} never logged {message:?}"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    Ok(v["timestamp"]
        .as_str()
        .context("a log line without timestamp")?
        .parse()?)
}

/// The operator replica holding the leader Lease, and its node.
async fn operator_leader(c: &Client) -> anyhow::Result<(String, String)> {
    let lease = Api::<Lease>::namespaced(c.clone(), "ouroboros-system")
        .get("ouroboros-etcd-operator")
        .await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .context("nobody holds the operator's Lease")?;
    let pod = Api::<Pod>::namespaced(c.clone(), "ouroboros-system")
        .get(&holder)
        .await?;
    let node = pod
        .spec
        .and_then(|s| s.node_name)
        .context("the leader is not scheduled")?;
    Ok((holder, node))
}

#[tokio::test]
#[ignore = "needs NODES=3; make test runs it in its own stage"]
async fn the_operator_leader_cut_off_hands_over_and_stops() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "leader")
        .await?
        .run(|c, ns| async move {
            let (endpoint, before) = spread_cluster(&c, &ns).await?;
            // The fault tools cut node2 and node3 only: move leadership off node1 first.
            let operators: Api<Pod> = Api::namespaced(c.clone(), "ouroboros-system");
            let (leader, node) = wait_for("the operator's leader off node1", T, || {
                let (c, operators) = (c.clone(), operators.clone());
                async move {
                    let (leader, node) = operator_leader(&c).await?;
                    if node != "node1" {
                        return Ok(Some((leader, node)));
                    }
                    operators.delete(&leader, &Default::default()).await?;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(None)
                }
            })
            .await?;
            let restarts = container_restarts(&operators, &leader, "operator").await?;
            let writer = Writer::start(&endpoint, "/leader").await?;

            cluster_script(&["partition", &node])?;
            let cut = Instant::now();
            let outcome = async {
                let (new_leader, new_node) = wait_for("another replica to take the Lease", T, || {
                    let c = c.clone();
                    let leader = leader.clone();
                    async move { Ok(operator_leader(&c).await.ok().filter(|(l, _)| *l != leader)) }
                })
                .await?;
                println!(
                    "{leader} on {node} cut off; {new_leader} on {new_node} leads {:?} later",
                    cut.elapsed()
                );
                // The new leader acts: it sees the member on the cut-off node as unhealthy.
                etcd_cluster::wait(
                    &c,
                    &ns,
                    "d",
                    "the cut-off member reported unhealthy",
                    T,
                    |_, s| s.members.iter().filter(|m| m.healthy).count() == 2,
                )
                .await?;
                anyhow::Ok(())
            }
            .await;
            cluster_script(&["heal", &node])?;
            outcome?;
            // The old leader, on losing its Lease, exits rather than act beside the new one.
            wait_for(&format!("{leader} to stop leading"), T, || {
                let operators = operators.clone();
                let leader = leader.clone();
                async move {
                    let gone = operators.get_opt(&leader).await?.is_none();
                    Ok(
                        (gone || container_restarts(&operators, &leader, "operator").await? > restarts)
                            .then_some(()),
                    )
                }
            })
            .await?;
            let (holder, _) = operator_leader(&c).await?;
            ensure!(
                holder != leader,
                "the cut-off replica {leader} leads again after the heal"
            );
            // Never both: the cut-off replica stopped (by its own clock) before the other one started.
            let stopped = log_time(&leader, true, "leadership lost")?;
            let started = log_time(&holder, false, "acquired leadership")?;
            ensure!(
                stopped < started,
                "{leader} stopped at {stopped}, after {holder} took over at {started}"
            );
            println!("{leader} stopped leading at {stopped}, {holder} started at {started}");
            etcd_cluster::wait(&c, &ns, "d", "3 members after the heal", T, converged(3, V)).await?;
            let after = etcd_cluster::identity(&endpoint).await?;
            ensure!(
                after == before,
                "identity {before:x?} -> {after:x?}: a member was replaced"
            );
            let (acked, failed) = writer.stop_and_verify().await?;
            println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
            Ok(())
        })
        .await
}
