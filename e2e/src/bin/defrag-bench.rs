//! `defrag-bench <etcdctl> <MiB> <endpoint>...`: the defragmentation benchmark of
//! docs/benchmarks.md, against a 3-member etcd (e2e/bench/defrag.sh starts one on loopback).
//!
//! Fragments the database (MiB of 64 KiB values written, every other key deleted, compacted), then
//! defragments it the way the operator does (followers one at a time, then leadership moved and the
//! former leader), fragments it again and runs what a user would otherwise run, `etcdctl defrag
//! --cluster` (every member in turn, the leader where it falls). A probe (`ouroboros_e2e::probe`,
//! shared with `put-probe`) puts 1 KiB values back to back through a client of all three endpoints
//! the whole time; a put that takes longer than 5 s counts as 5 s. Prints per-member
//! defragmentation times and put latency (p50, p99, max) idle and during each.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use etcd_client::{Client, CompactionOptions, DeleteOptions};
use ouroboros_e2e::probe::{Latency, PROBE_TIMEOUT, Probe};

/// Writes `mib` MiB of incompressible 64 KiB values under `prefix`, deletes every other key and
/// compacts: about half of each member's file is free afterwards.
async fn fragment(c: &mut Client, prefix: &str, mib: usize) -> anyhow::Result<()> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..mib * 16 {
        let v: Vec<u8> = (0..(64 << 10) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        c.put(format!("{prefix}/{i:08}"), v, None).await?;
    }
    for i in (0..mib * 16).step_by(2) {
        c.delete(format!("{prefix}/{i:08}"), None).await?;
    }
    compact_all(c).await?;
    Ok(())
}

/// Compacts the history up to the newest revision, physically.
async fn compact_all(c: &mut Client) -> anyhow::Result<()> {
    let rev = c
        .status()
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await?;
    Ok(())
}

/// Back to the same start for each round: the data deleted, compacted, every member defragmented.
async fn reset(c: &mut Client, endpoints: &[String]) -> anyhow::Result<()> {
    c.delete("/frag", Some(DeleteOptions::new().with_prefix()))
        .await?;
    c.delete("/probe", Some(DeleteOptions::new().with_prefix()))
        .await?;
    compact_all(c).await?;
    for ep in endpoints {
        Client::connect([ep.as_str()], None).await?.defragment().await?;
    }
    Ok(())
}

async fn sizes(endpoints: &[String]) -> anyhow::Result<Vec<(u64, i64, i64, bool)>> {
    let mut out = Vec::new();
    for ep in endpoints {
        let mut c = Client::connect([ep.as_str()], None).await?;
        let s = c.status().await?;
        let id = s.header().map(|h| h.member_id()).unwrap_or_default();
        out.push((id, s.db_size(), s.raft_used_db_size(), s.leader() == id));
    }
    Ok(out)
}

async fn print_sizes(when: &str, endpoints: &[String]) -> anyhow::Result<()> {
    // The in-use figure follows the backend's commit (every 100 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, (_, db, used, lead)) in sizes(endpoints).await?.iter().enumerate() {
        let role = if *lead { " (leader)" } else { "" };
        println!(
            "{when}: member {i}{role} db {} MiB, {} MiB in use",
            mib(*db),
            mib(*used)
        );
    }
    Ok(())
}

fn mib(b: i64) -> i64 {
    b >> 20
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let usage = "usage: defrag-bench <etcdctl> <MiB> <endpoint> <endpoint> <endpoint>";
    let mut args = std::env::args().skip(1);
    let etcdctl = args.next().context(usage)?;
    let size: usize = args.next().context(usage)?.parse()?;
    let endpoints: Vec<String> = args.collect();
    anyhow::ensure!(endpoints.len() == 3, "{usage}");
    let mut c = Client::connect(endpoints.clone(), None).await?;

    let probe = Probe::start(&endpoints).await?;
    // (what, from, to): the probe's windows, read once the probe has stopped, so that a put that
    // started in a window and finished after it is counted in it.
    let mut windows: Vec<(String, Instant, Instant)> = Vec::new();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    windows.push(("idle, 20 s".into(), t, Instant::now()));

    reset(&mut c, &endpoints).await?;
    fragment(&mut c, "/frag", size).await?;
    print_sizes("before", &endpoints).await?;
    // The operator's order: followers one at a time, then leadership moved and the former leader.
    let before = sizes(&endpoints).await?;
    let leader = before.iter().position(|m| m.3).context("no leader")?;
    let mut order: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    order.push(leader);
    let total = Instant::now();
    for i in order {
        if i == leader {
            let to = before[order_first_follower(leader)].0;
            let mut l = Client::connect([endpoints[leader].as_str()], None).await?;
            l.move_leader(to).await?;
        }
        let mut m = Client::connect([endpoints[i].as_str()], None).await?;
        let t = Instant::now();
        m.defragment().await?;
        let role = if i == leader { " (the former leader)" } else { "" };
        windows.push((
            format!(
                "operator order: member {i}{role} defragmented in {:.1} s",
                t.elapsed().as_secs_f64()
            ),
            t,
            Instant::now(),
        ));
    }
    windows.push((
        format!(
            "operator order: all three in {:.1} s (the leader move included)",
            total.elapsed().as_secs_f64()
        ),
        total,
        Instant::now(),
    ));
    print_sizes("after", &endpoints).await?;

    reset(&mut c, &endpoints).await?;
    fragment(&mut c, "/frag", size).await?;
    print_sizes("before", &endpoints).await?;
    let t = Instant::now();
    let status = std::process::Command::new(&etcdctl)
        .args([
            "--endpoints",
            &endpoints.join(","),
            "--command-timeout=600s",
            "defrag",
            "--cluster",
        ])
        .status()?;
    anyhow::ensure!(status.success(), "etcdctl defrag --cluster failed");
    windows.push((
        format!(
            "etcdctl defrag --cluster: all three in {:.1} s",
            t.elapsed().as_secs_f64()
        ),
        t,
        Instant::now(),
    ));
    // Let a put stalled in the last window finish (or time out) before the probe stops.
    tokio::time::sleep(PROBE_TIMEOUT).await;
    let samples = probe.stop().await;
    for (what, from, to) in windows {
        let lat = Latency::within(&samples, from, to);
        println!("{what}; during it: {lat}");
    }
    Ok(())
}

/// The follower leadership moves to: the first member that is not the leader.
fn order_first_follower(leader: usize) -> usize {
    usize::from(leader == 0)
}
