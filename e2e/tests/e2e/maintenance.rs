//! etcd maintenance (#19) on the local cluster, each under a writer of sequential keys whose every
//! acknowledged write is read back at the end (0 lost):
//! - a cluster with a 16 MiB quota filled to NOSPACE by history recovers by itself (compaction,
//!   defragmentation, disarm) and takes writes again;
//! - new `spec.etcd` settings restart each member on its own claim, one at a time, keeping every
//!   member ID; settings etcd would refuse are refused by the API server, naming the field;
//! - a new pod template (`spec.pod.resources`) likewise, with `MembersUpToDate` naming the members
//!   on the old one while it runs;
//! - fragmented members wait outside `spec.maintenance.defragmentation.window`, then are
//!   defragmented one at a time, the leader last after leadership moved away, with the writer's
//!   put latency during each member's defragmentation printed beside idle.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use ouroboros_crds::{ClusterPhase, EtcdCluster, condition_types};
use ouroboros_e2e::{
    TestNamespace, client, etcd_at,
    etcd_cluster::{self, converged},
    events_with_reason,
    writer::Writer,
};

const V: &str = "3.6.16";
const T: Duration = Duration::from_secs(240);
const SELECTOR: &str = "etcd.ouroboros.dev/cluster=m";

fn manifest(extra: &str) -> String {
    format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: m}}\nspec:\n  size: 3\n  \
         pod: {{antiAffinity: None}}\n{extra}"
    )
}

/// Overwrites one key with 256 KiB values until etcd refuses with NOSPACE; returns how many were
/// acknowledged.
async fn churn_until_nospace(endpoint: &str) -> anyhow::Result<u32> {
    let mut e = etcd_at(endpoint).await?;
    let value = vec![b'c'; 256 << 10];
    for i in 0..1000u32 {
        match e.put("/churn", value.clone(), None).await {
            Ok(_) => {}
            Err(err) if err.to_string().contains("database space exceeded") => return Ok(i),
            Err(err) => return Err(err.into()),
        }
    }
    anyhow::bail!("1000 writes of 256 KiB never raised NOSPACE on a 16 MiB quota")
}

#[tokio::test]
async fn a_cluster_filled_to_nospace_recovers_by_itself_and_loses_no_acknowledged_write() -> anyhow::Result<()>
{
    let c = client().await?;
    TestNamespace::create(&c, "nospace-fill")
        .await?
        .run(|c, ns| async move {
            // 16 MiB, the smallest quota admitted; history is never compacted by etcd itself here.
            let spec = "  etcd: {quotaBackendBytes: 16777216, autoCompactionRetention: 24h}\n";
            etcd_cluster::create(&c, &ns, &manifest(spec)).await?;
            etcd_cluster::wait(&c, &ns, "m", "3 members", T, converged(3, V)).await?;
            let endpoint = etcd_cluster::client_endpoint(&c, &ns, "m").await?;
            let writer = Writer::start(&endpoint, "/seq").await?;

            let t0 = Instant::now();
            let acked = churn_until_nospace(&endpoint).await?;
            println!("NOSPACE after {acked} overwrites of one key ({:?})", t0.elapsed());
            // Back by itself: the alarm cleared, and a write taken.
            let mut e = etcd_at(&endpoint).await?;
            ouroboros_e2e::wait_for("a write accepted again", Duration::from_secs(180), || {
                let mut e = e.clone();
                async move { Ok(e.put("/after-nospace", "1", None).await.ok().map(drop)) }
            })
            .await?;
            println!("writes accepted again {:?} after NOSPACE", t0.elapsed());
            let status = etcd_cluster::wait(&c, &ns, "m", "the alarm cleared", T, |cl, s| {
                converged(3, V)(cl, s)
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == condition_types::ALARM && c.status == "False")
            })
            .await?;
            for m in &status.members {
                let (size, used) = (m.db_size_bytes.unwrap_or(0), m.db_size_in_use_bytes.unwrap_or(0));
                println!(
                    "{}: database {} KiB, {} KiB in use",
                    m.name,
                    size >> 10,
                    used >> 10
                );
                ensure!(
                    size < 16 << 20,
                    "{} still holds {size} bytes of a 16 MiB quota",
                    m.name
                );
            }
            for reason in ["Compacted", "Defragmented", "AlarmDisarmed"] {
                let seen = events_with_reason(&c, &ns, reason).await?;
                ensure!(!seen.is_empty(), "no {reason} Event");
                println!("{reason}: {seen:?}");
            }
            ensure!(
                status.phase == Some(ClusterPhase::Running),
                "phase {:?}",
                status.phase
            );
            e.put("/after-recovery", "1", None).await?;
            let (acked, failed) = writer.stop_and_verify().await?;
            println!("{acked} writes acknowledged, {failed} refused or failed meanwhile, 0 lost");
            Ok(())
        })
        .await
}

async fn member_pods(c: &Client, ns: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels(SELECTOR))
        .await?
        .items)
}

#[tokio::test]
async fn new_settings_restart_each_member_on_its_own_claim() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "settings").await?.run(|c, ns| async move {
        let storage = "  storage: {persistentVolumeClaim: {size: 1Gi}}\n";
        etcd_cluster::create(&c, &ns, &manifest(storage)).await?;
        etcd_cluster::wait(&c, &ns, "m", "3 members", T, converged(3, V)).await?;
        let api: Api<EtcdCluster> = Api::namespaced(c.clone(), &ns);

        // What etcd would refuse is refused at admission, naming the rule.
        let bad = serde_json::json!({"spec": {"etcd": {"heartbeatIntervalMillis": 200, "electionTimeoutMillis": 500}}});
        let refused = api
            .patch("m", &PatchParams::default(), &Patch::Merge(&bad))
            .await
            .err()
            .context("an election timeout of 2.5 heartbeats was admitted")?;
        ensure!(refused.to_string().contains("five heartbeats"), "{refused}");

        let good = serde_json::json!({"spec": {"etcd": {"heartbeatIntervalMillis": 150, "electionTimeoutMillis": 1500,
                                                        "quotaBackendBytes": 4294967296_i64}}});
        let rolled = |p: &Pod| {
            p.annotations()
                .get("etcd.ouroboros.dev/settings")
                .is_some_and(|s| s.contains("--heartbeat-interval=150") && s.contains("--quota-backend-bytes=4294967296"))
        };
        roll_in_place(&c, &ns, "/settings", &good, rolled, "the spec.etcd settings").await?;
        for p in member_pods(&c, &ns).await? {
            let args = etcd_container(&p).and_then(|c| c.args.clone()).unwrap_or_default();
            ensure!(
                args.iter().any(|a| a == "--election-timeout=1500"),
                "{} runs {args:?}",
                p.name_any()
            );
        }
        Ok(())
    })
    .await
}

/// The acceptance of #24: a change of `spec.pod.resources` reaches every running member, each
/// restarted on its own claim one at a time, quorum kept under a writer, 0 acknowledged writes lost;
/// while members run the old template, `MembersUpToDate` is False and names them.
#[tokio::test]
async fn a_new_pod_template_restarts_each_member_on_its_own_claim() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "template")
        .await?
        .run(|c, ns| async move {
            let storage = "  storage: {persistentVolumeClaim: {size: 1Gi}}\n";
            etcd_cluster::create(&c, &ns, &manifest(storage)).await?;
            etcd_cluster::wait(&c, &ns, "m", "3 members", T, converged(3, V)).await?;
            let api: Api<EtcdCluster> = Api::namespaced(c.clone(), &ns);
            let up_to_date =
                |m: &EtcdCluster| etcd_cluster::condition(m, condition_types::MEMBERS_UP_TO_DATE);
            let before = up_to_date(&api.get("m").await?);
            ensure!(
                before.as_ref().is_some_and(|(s, _, _)| s == "True"),
                "MembersUpToDate before: {before:?}"
            );

            let resources = serde_json::json!({"spec": {"pod": {"resources": {
            "requests": {"cpu": "150m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}}}}});
            let rolled = |p: &Pod| {
                etcd_container(p)
                    .and_then(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu").cloned())
                    .is_some_and(|q| q.0 == "150m")
            };
            // The condition while the roll runs, sampled beside it.
            let watch = {
                let api = api.clone();
                tokio::spawn(async move {
                    loop {
                        if let Ok(m) = api.get("m").await
                            && let Some((status, reason, message)) = up_to_date(&m)
                            && status == "False"
                        {
                            return (reason, message);
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                })
            };
            roll_in_place(&c, &ns, "/template", &resources, rolled, "the pod template").await?;
            let (reason, message) = tokio::time::timeout(Duration::from_secs(5), watch)
                .await
                .context("MembersUpToDate was never False during the roll")??;
            ensure!(
                reason == "Outdated" && message.contains("pod template") && message.contains("m-"),
                "MembersUpToDate during the roll: {reason}: {message}"
            );
            println!("during the roll: MembersUpToDate=False {reason}: {message}");
            let after = up_to_date(&api.get("m").await?);
            ensure!(
                after.as_ref().is_some_and(|(s, _, _)| s == "True"),
                "MembersUpToDate after: {after:?}"
            );
            Ok(())
        })
        .await
}

fn etcd_container(p: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    p.spec.as_ref()?.containers.iter().find(|c| c.name == "etcd")
}

/// Applies `patch` to the converged three-member cluster `m` (on claims) under a writer of keys
/// under `prefix`, waits until every member pod is `rolled`, and asserts that each member was
/// restarted on its own data: the same member IDs and claims, one `MemberRestartingForSettings`
/// Event per member naming `what`, no member removed, and every acknowledged write readable.
async fn roll_in_place(
    c: &Client,
    ns: &str,
    prefix: &str,
    patch: &serde_json::Value,
    rolled: impl Fn(&Pod) -> bool,
    what: &str,
) -> anyhow::Result<()> {
    let api: Api<EtcdCluster> = Api::namespaced(c.clone(), ns);
    let endpoint = etcd_cluster::client_endpoint(c, ns, "m").await?;
    let before = etcd_cluster::identity(&endpoint).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
    let uids = |list: Vec<PersistentVolumeClaim>| {
        let mut u: Vec<String> = list.into_iter().filter_map(|p| p.uid()).collect();
        u.sort();
        u
    };
    let claims_before = uids(claims.list(&ListParams::default().labels(SELECTOR)).await?.items);
    let writer = Writer::start(&endpoint, prefix).await?;

    let t0 = Instant::now();
    api.patch("m", &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    ouroboros_e2e::wait_for("every member pod rolled", T, || async {
        let pods = member_pods(c, ns).await?;
        Ok((pods.len() == 3 && pods.iter().all(&rolled)).then_some(()))
    })
    .await?;
    etcd_cluster::wait(c, ns, "m", "converged after the roll", T, converged(3, V)).await?;
    println!("rolled onto {what} in {:?}", t0.elapsed());

    let after = etcd_cluster::identity(&endpoint).await?;
    ensure!(
        after == before,
        "members {before:x?} -> {after:x?}: replaced, not restarted"
    );
    let claims_after = uids(claims.list(&ListParams::default().labels(SELECTOR)).await?.items);
    ensure!(
        claims_after == claims_before,
        "claims {claims_before:?} -> {claims_after:?}"
    );
    let restarts = events_with_reason(c, ns, "MemberRestartingForSettings").await?;
    ensure!(restarts.len() == 3, "restarts: {restarts:?}");
    ensure!(
        restarts.iter().all(|e| e.contains(what)),
        "restart Events do not name {what}: {restarts:?}"
    );
    ensure!(
        events_with_reason(c, ns, "MemberRemoved").await?.is_empty(),
        "a member was removed"
    );
    let (acked, failed) = writer.stop_and_verify().await?;
    println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
    Ok(())
}

#[tokio::test]
async fn fragmented_members_are_defragmented_one_at_a_time_the_leader_last() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "defrag").await?.run(|c, ns| async move {
        // A window that opens on 29 February only: closed for the first part of the test.
        let spec = "  maintenance: {defragmentation: {minFragmentationPercent: 50, minDatabaseBytes: 4194304, \
                    window: {schedule: '0 0 29 2 *', duration: 1h}}}\n";
        etcd_cluster::create(&c, &ns, &manifest(spec)).await?;
        let status = etcd_cluster::wait(&c, &ns, "m", "3 members", T, converged(3, V)).await?;
        let endpoint = etcd_cluster::client_endpoint(&c, &ns, "m").await?;
        let leader = status
            .members
            .iter()
            .find(|m| m.is_leader)
            .map(|m| m.name.clone())
            .context("no leader")?;

        // 24 MiB written, deleted and compacted: the files keep their size, mostly free.
        ouroboros_e2e::fill_etcd(&endpoint, 24).await?;
        let mut e = etcd_at(&endpoint).await?;
        let deleted = e
            .delete("/bulk/", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await?;
        let revision = deleted.header().map(|h| h.revision()).unwrap_or_default();
        e.compact(revision, Some(etcd_client::CompactionOptions::new().with_physical()))
            .await?;
        let writer = Writer::start(&endpoint, "/defrag").await?;

        // Outside the window: the members wait, and the condition says for what.
        let waiting = etcd_cluster::wait(&c, &ns, "m", "Maintenance=WaitingForWindow", T, |cl, _| {
            etcd_cluster::condition(cl, condition_types::MAINTENANCE)
                .is_some_and(|(_, reason, message)| reason == "WaitingForWindow" && message.contains("m-"))
        })
        .await?;
        println!(
            "outside the window: {:?}",
            waiting.conditions.iter().find(|c| c.type_ == condition_types::MAINTENANCE).map(|c| &c.message)
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        let early = events_with_reason(&c, &ns, "Defragmented").await?;
        ensure!(early.is_empty(), "defragmented outside its window: {early:?}");
        let idle_to = std::time::SystemTime::now();

        // The window opens (every minute, for an hour).
        let open = serde_json::json!({"spec": {"maintenance": {"defragmentation": {
            "window": {"schedule": "* * * * *", "duration": "1h"}}}}});
        Api::<EtcdCluster>::namespaced(c.clone(), &ns)
            .patch("m", &PatchParams::default(), &Patch::Merge(&open))
            .await?;
        let t0 = Instant::now();
        let done = ouroboros_e2e::wait_for("three members defragmented", T, || {
            let c = c.clone();
            let ns = ns.clone();
            async move {
                let seen = events_with_reason(&c, &ns, "Defragmented").await?;
                Ok((seen.len() >= 3).then_some(seen))
            }
        })
        .await?;
        println!("defragmented in {:?}: {done:?}", t0.elapsed());
        for m in ["m-0", "m-1", "m-2"] {
            ensure!(
                done.iter().any(|d| d.starts_with(&format!("defragmented {m} "))),
                "{m} was not defragmented: {done:?}"
            );
        }
        let starting = events_with_reason(&c, &ns, "Defragmenting").await?;
        ensure!(starting.len() >= 3, "not every defragmentation said it was starting: {starting:?}");
        let moved = events_with_reason(&c, &ns, "LeaderMoved").await?;
        ensure!(
            moved.iter().any(|m| m.starts_with(&format!("moved leadership from {leader} "))),
            "leadership never moved away from {leader} before its defragmentation: {moved:?}"
        );

        // Each member's defragmentation, from the operator's records on its pod: one at a time,
        // the former leader last, and the writer's latency during each against idle.
        let windows = defragmentation_windows(&c, &ns).await?;
        ensure!(windows.len() == 3, "not every pod records its defragmentation: {windows:?}");
        for pair in windows.windows(2) {
            ensure!(
                pair[0].2 <= pair[1].1,
                "{} was defragmented while {} was: {windows:?}",
                pair[1].0,
                pair[0].0
            );
        }
        ensure!(
            windows.last().is_some_and(|w| w.0 == leader),
            "the former leader {leader} was not defragmented last: {windows:?}"
        );
        let idle_from = idle_to - Duration::from_secs(10);
        let p99 = |from, to| ouroboros_e2e::writer::quantile_and_max(&writer.latencies_during(from, to), 0.99);
        let (idle_p99, idle_max) = p99(idle_from, idle_to);
        println!("put latency idle: p99 {idle_p99:?}, max {idle_max:?}");
        for (member, from, to) in &windows {
            let (p, max) = p99(*from, *to);
            let took = to.duration_since(*from).unwrap_or_default();
            println!("put latency while {member} was defragmented ({took:?}): p99 {p:?}, max {max:?}");
        }

        let status = etcd_cluster::wait(&c, &ns, "m", "converged", T, converged(3, V)).await?;
        for m in &status.members {
            let size = m.db_size_bytes.unwrap_or(0);
            println!("{}: database {} KiB after", m.name, size >> 10);
            ensure!(size < 12 << 20, "{} still has a {size} byte file", m.name);
        }
        let (acked, failed) = writer.stop_and_verify().await?;
        println!("{acked} writes acknowledged, {failed} failed attempts, 0 lost");
        Ok(())
    })
    .await
}

/// Each member pod's last defragmentation as the operator recorded it (started, ended), in the
/// order they started.
async fn defragmentation_windows(
    c: &Client,
    ns: &str,
) -> anyhow::Result<Vec<(String, std::time::SystemTime, std::time::SystemTime)>> {
    let pods = Api::<Pod>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels(SELECTOR))
        .await?;
    let at = |p: &Pod, key: &str| {
        p.annotations()
            .get(key)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(std::time::SystemTime::from)
    };
    let mut windows: Vec<_> = pods
        .items
        .iter()
        .filter_map(|p| {
            Some((
                p.name_any(),
                at(p, "etcd.ouroboros.dev/defragmented-at")?,
                at(p, "etcd.ouroboros.dev/defragmentation-ended-at")?,
            ))
        })
        .collect();
    windows.sort_by_key(|w| w.1);
    Ok(windows)
}

/// Where a claim-backed member's bbolt file is on this machine (the local cluster's PVs are
/// directories of it).
async fn member_db_file(c: &Client, ns: &str, member: &str) -> anyhow::Result<std::path::PathBuf> {
    let claim = Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)
        .get(&format!("{member}-data"))
        .await?;
    let pv = claim
        .spec
        .and_then(|s| s.volume_name)
        .context("the claim is not bound")?;
    let pv = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(c.clone())
        .get(&pv)
        .await?;
    let dir = pv
        .spec
        .and_then(|s| s.local)
        .map(|l| l.path)
        .context("not a local PV")?;
    Ok(std::path::Path::new(&dir).join("data/member/snap/db"))
}

/// Flips one byte in every copy of `marker` in the file: a value changed under etcd's feet, with
/// the file's structure intact (bbolt reads it through a shared mapping, so the running member
/// serves and hashes the changed value).
fn flip_marker(path: &std::path::Path, marker: &[u8]) -> anyhow::Result<usize> {
    use std::os::unix::fs::FileExt;
    let bytes = std::fs::read(path)?;
    let offsets: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    for &o in &offsets {
        f.write_all_at(b"X", (o + marker.len() - 1) as u64)?;
    }
    Ok(offsets.len())
}

#[tokio::test]
async fn a_member_whose_data_differs_from_the_majority_is_replaced_and_its_claim_kept() -> anyhow::Result<()>
{
    let c = client().await?;
    TestNamespace::create(&c, "corrupt")
        .await?
        .run(|c, ns| async move {
            let spec =
                "  storage: {persistentVolumeClaim: {size: 1Gi}}\n  etcd: {corruptionCheck: {period: 10s}}\n";
            let marker = b"ouroboros-corruption-marker-7f3a9c1e";
            let setup = marked(&c, &ns, spec, marker, "/corrupt").await?;
            let victim = setup.victim.clone();
            let db = member_db_file(&c, &ns, &victim).await?;
            let flipped = flip_marker(&db, marker)?;
            ensure!(flipped > 0, "the marker is not in {}", db.display());
            let t0 = Instant::now();
            println!(
                "flipped a byte of {flipped} copies of the marker in {victim}'s {}",
                db.display()
            );

            replaced_and_claim_kept(&c, &ns, &victim, t0).await?;
            ensure!(
                !events_with_reason(&c, &ns, "AlarmDisarmed").await?.is_empty(),
                "no AlarmDisarmed Event"
            );
            setup.majority_intact_and_nothing_lost().await
        })
        .await
}

/// A three-member cluster `m` holding `marker` under `/marker`, a writer under `prefix`, and the
/// follower whose data the test changes.
struct Marked {
    e: etcd_client::Client,
    marker: Vec<u8>,
    writer: Writer,
    victim: String,
}

impl Marked {
    /// The majority still holds the marker as written, and every acknowledged write reads back.
    async fn majority_intact_and_nothing_lost(mut self) -> anyhow::Result<()> {
        let got = self.e.get("/marker", None).await?;
        ensure!(
            got.kvs().first().map(|kv| kv.value()) == Some(&self.marker[..]),
            "the majority's value of the marker changed"
        );
        let (acked, failed) = self.writer.stop_and_verify().await?;
        println!("{acked} writes acknowledged, {failed} refused or failed meanwhile, 0 lost");
        Ok(())
    }
}

async fn marked(c: &Client, ns: &str, spec: &str, marker: &[u8], prefix: &str) -> anyhow::Result<Marked> {
    etcd_cluster::create(c, ns, &manifest(spec)).await?;
    let status = etcd_cluster::wait(c, ns, "m", "3 members", T, converged(3, V)).await?;
    let endpoint = etcd_cluster::client_endpoint(c, ns, "m").await?;
    let mut e = etcd_at(&endpoint).await?;
    e.put("/marker", marker, None).await?;
    let writer = Writer::start(&endpoint, prefix).await?;
    // bbolt commits its batch every 100 ms; give every member time to write the value out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = status
        .members
        .iter()
        .find(|m| !m.is_leader)
        .map(|m| m.name.clone())
        .context("no follower")?;
    Ok(Marked {
        e,
        marker: marker.to_vec(),
        writer,
        victim,
    })
}

/// Waits until `victim` is removed for its data and replaced, then checks its claim was kept,
/// annotated retired.
async fn replaced_and_claim_kept(c: &Client, ns: &str, victim: &str, t0: Instant) -> anyhow::Result<()> {
    let removed = ouroboros_e2e::wait_for("the member with the changed data removed", T, || {
        let c = c.clone();
        let ns = ns.to_owned();
        let victim = victim.to_owned();
        async move {
            let seen = events_with_reason(&c, &ns, "MemberRemoved").await?;
            Ok(seen
                .into_iter()
                .find(|m| m.contains(&format!("removed member {victim} "))))
        }
    })
    .await?;
    println!("{removed} ({:?} after the flip)", t0.elapsed());
    ensure!(
        removed.contains("corruption") || removed.contains("differed"),
        "{removed}"
    );
    let status = etcd_cluster::wait(c, ns, "m", "3 members again", T, |cl, s| {
        converged(3, V)(cl, s) && s.members.iter().all(|m| m.name != victim)
    })
    .await?;
    println!(
        "replaced {:?} after the flip; members {:?}",
        t0.elapsed(),
        status.members.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    let claim = Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)
        .get(&format!("{victim}-data"))
        .await?;
    ensure!(
        claim.annotations().contains_key("etcd.ouroboros.dev/retired"),
        "the claim of {victim} was not kept retired: {:?}",
        claim.annotations()
    );
    Ok(())
}

/// The member's data is changed while it is stopped (a byte of a value flipped in its bbolt file
/// with its pod gone, the cluster paused so the operator does not start it again). When it starts,
/// etcd's initial corruption check compares its keyspace hash with its peers' and refuses to run;
/// the operator reads that from the pod, hashes the two others, finds them in agreement, and
/// replaces the member at once (not after five crash-loop restarts), keeping its claim.
#[tokio::test]
async fn a_member_whose_data_etcd_refuses_at_start_is_replaced_and_its_claim_kept() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "refused")
        .await?
        .run(|c, ns| async move {
            let spec = "  storage: {persistentVolumeClaim: {size: 1Gi}}\n";
            let marker = b"ouroboros-corruption-marker-51b0d7e2";
            let setup = marked(&c, &ns, spec, marker, "/refused").await?;
            let victim = setup.victim.clone();
            let clusters = Api::<EtcdCluster>::namespaced(c.clone(), &ns);
            let paused = |on: bool| serde_json::json!({"spec": {"paused": on}});
            clusters
                .patch("m", &PatchParams::default(), &Patch::Merge(&paused(true)))
                .await?;
            let pods = Api::<Pod>::namespaced(c.clone(), &ns);
            pods.delete(&victim, &kube::api::DeleteParams::default()).await?;
            ouroboros_e2e::wait_for("the member's pod gone", T, || {
                let pods = pods.clone();
                let victim = victim.clone();
                async move { Ok(pods.get_opt(&victim).await?.is_none().then_some(())) }
            })
            .await?;
            let db = member_db_file(&c, &ns, &victim).await?;
            let flipped = flip_marker(&db, marker)?;
            ensure!(flipped > 0, "the marker is not in {}", db.display());
            println!(
                "flipped a byte of {flipped} copies of the marker in the stopped {victim}'s {}",
                db.display()
            );
            let t0 = Instant::now();
            clusters
                .patch("m", &PatchParams::default(), &Patch::Merge(&paused(false)))
                .await?;

            replaced_and_claim_kept(&c, &ns, &victim, t0).await?;
            setup.majority_intact_and_nothing_lost().await
        })
        .await
}
