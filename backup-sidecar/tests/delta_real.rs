//! Continuous backups against real etcd processes: a chain followed while a writer runs (puts,
//! multi-key transactions, range deletes, leased keys whose short leases expire) replays on the
//! full backup to exactly the source's history at any chosen revision (etcd's own `HashKV`,
//! which covers every key's value, lease, create revision, version and the deletions, agrees),
//! and a history compacted past the chain's end is a gap, never bridged.

// A panic with its message is how this test reports a failure, helpers included.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proc, connect, restore, start_etcd, temp_dir};
use etcd_client::{Client, CompactionOptions, DeleteOptions, PutOptions, Txn, TxnOp};
use ouroboros_backup_sidecar::{
    delta::{
        follow::{FollowError, FollowSettings, Position, follow},
        format::Chunk,
        replay::{KeepAlive, replay},
    },
    store::Store,
};
use ouroboros_crds::delta::{ChunkName, chain_to};

const BACKUP: &str = "base-1";

async fn revision(c: &mut Client) -> u64 {
    let r = c.get("\0", None).await.unwrap();
    u64::try_from(r.header().unwrap().revision()).unwrap()
}

async fn snapshot(c: &mut Client) -> Vec<u8> {
    let mut stream = c.snapshot().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        bytes.extend_from_slice(msg.blob());
    }
    bytes
}

/// Every shape of write a revision can hold; returns nothing, the source's history is the record.
async fn write_history(c: &mut Client, rounds: u32) {
    let short = c.lease_grant(2, None).await.unwrap().id();
    let long = c.lease_grant(600, None).await.unwrap().id();
    for i in 0..rounds {
        match i % 6 {
            0 => {
                // A transaction of three keys: one revision, three events.
                let ops = (0..3)
                    .map(|j| TxnOp::put(format!("txn/{i}/{j}"), format!("v{i}"), None))
                    .collect::<Vec<_>>();
                c.txn(Txn::new().and_then(ops)).await.unwrap();
            }
            1 if i > 12 => {
                // A range delete of what an earlier transaction wrote: one revision, many events.
                c.delete(
                    format!("txn/{}/", i - 7),
                    Some(DeleteOptions::new().with_prefix()),
                )
                .await
                .unwrap();
            }
            2 => {
                let lease = if i % 4 == 0 { short } else { long };
                c.put(
                    format!("leased/{i}"),
                    "x",
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .unwrap();
            }
            _ => {
                // Overwrites: versions climb.
                c.put(
                    format!("key/{}", i % 17),
                    vec![b'v'; (i as usize % 5) * 300],
                    None,
                )
                .await
                .unwrap();
            }
        }
    }
}

/// Waits until the follow has stored `target` and confirmed a recovery point after `after_ms`.
async fn stored_up_to(
    position: &mut tokio::sync::watch::Receiver<Position>,
    target: u64,
    after_ms: i64,
) -> Position {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let p = *position.borrow_and_update();
            if p.stored_revision >= target && p.recovery_point_ms > after_ms {
                return p;
            }
            position.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the follow did not reach revision {target}: {:?}",
            *position.borrow()
        )
    })
}

async fn stored_chunks(store: &Store) -> Vec<ChunkName> {
    store
        .list()
        .await
        .unwrap()
        .iter()
        .filter_map(|n| ChunkName::parse(n))
        .collect()
}

/// The full backup restored without a revision bump, the chain replayed on it up to `target`.
async fn replayed(
    store: &Store,
    base_snapshot: &[u8],
    base: u64,
    target: Option<u64>,
) -> (Proc, Client, KeepAlive, u64) {
    let names = stored_chunks(store).await;
    let chain = chain_to(BACKUP, base, &names, target).unwrap();
    let mut chunks = Vec::new();
    for name in &chain.chunks {
        let body = store.get_small(&name.object()).await.unwrap();
        chunks.push(Chunk::decode(name, &body).unwrap());
    }
    let etcd = restore(base_snapshot);
    let mut c = connect(&etcd.endpoint).await;
    let keeper = KeepAlive::start(&mut c).await.unwrap();
    let done = replay(&mut c, &keeper, chunks, base, chain.end).await.unwrap();
    assert_eq!(done.revision, chain.end);
    (etcd, c, keeper, chain.end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_chain_replays_to_exactly_the_source_at_any_revision() {
    let source = start_etcd("delta-source");
    let mut c = connect(&source.endpoint).await;
    write_history(&mut c, 40).await;
    let base = revision(&mut c).await;
    let base_snapshot = snapshot(&mut c).await;

    let dir = temp_dir("delta-store");
    let store = Store::Dir(dir.clone());
    let settings = FollowSettings {
        backup: BACKUP.into(),
        stored: base,
        period: Duration::from_millis(200),
        // Small, so size-bound chunks and period-bound chunks both occur.
        max_bytes: 16 << 10,
    };
    let (tx, mut position) = tokio::sync::watch::channel(Position::default());
    let follower = {
        let (c, store, settings) = (c.clone(), store.clone(), settings.clone());
        tokio::spawn(async move { follow(&c, &store, &settings, &tx).await })
    };
    write_history(&mut c, 300).await;
    // One revision of 1,500 events: a range delete far past etcd's default 128 operations per
    // transaction, which replay must still apply as one.
    for i in 0..15 {
        let ops = (0..100)
            .map(|j| TxnOp::put(format!("bulk/{i:02}/{j:03}"), vec![b'b'; 200], None))
            .collect::<Vec<_>>();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    c.delete("bulk/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    write_history(&mut c, 300).await;
    // Long enough for the short lease to expire: its keys' deletions are revisions too.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let end = revision(&mut c).await;
    let wrote_ms = jiff::Timestamp::now().as_millisecond();
    let p = stored_up_to(&mut position, end, wrote_ms).await;
    assert!(p.chunks >= 3, "{p:?}");
    follower.abort();
    assert!(
        stored_chunks(&store).await.iter().any(|n| n.first < n.last),
        "every chunk held one revision"
    );

    // The end of the chain, and a revision in the middle of it (inside a chunk), are each
    // exactly the source at that revision.
    for target in [None, Some(base + (end - base) / 2)] {
        let (_etcd, mut restored, keeper, reached) = replayed(&store, &base_snapshot, base, target).await;
        let want = c.hash_kv(i64::try_from(reached).unwrap()).await.unwrap();
        let got = restored.hash_kv(0).await.unwrap();
        assert_eq!(
            (got.hash(), revision(&mut restored).await),
            (want.hash(), reached),
            "replayed to {reached} (target {target:?}), base {base}, source end {end}"
        );
        keeper.stop().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_compacted_past_the_chain_is_a_gap() {
    let source = start_etcd("delta-compacted");
    let mut c = connect(&source.endpoint).await;
    write_history(&mut c, 30).await;
    let stored = revision(&mut c).await;
    write_history(&mut c, 30).await;
    let now = revision(&mut c).await;
    c.compact(
        i64::try_from(now).unwrap(),
        Some(CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let dir = temp_dir("delta-gap");
    let settings = FollowSettings {
        backup: BACKUP.into(),
        stored,
        period: Duration::from_millis(200),
        max_bytes: 1 << 20,
    };
    let (tx, _position) = tokio::sync::watch::channel(Position::default());
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        follow(&c, &Store::Dir(dir.clone()), &settings, &tx),
    )
    .await
    .expect("a compacted start must end the follow");
    match result {
        Err(FollowError::Gap { from, stored: s, why }) => {
            assert_eq!((from, s), (stored + 1, stored));
            assert!(why.contains("compacted"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        stored_chunks(&Store::Dir(dir.clone())).await.is_empty(),
        "a chunk was written across the gap"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A backup's snapshot taken to the chain's end, to a revision and to a time, by the same code a
/// restore runs (`etcd-backup-sidecar replay`): each is exactly the source there. A chain with a
/// chunk removed, or a damaged one, is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_taken_to_the_end_a_revision_or_a_time_and_a_broken_chain_is_refused() {
    use ouroboros_backup_sidecar::delta::point::{PointError, PointRequest, Target, to_point};

    let source = start_etcd("point-source");
    let mut c = connect(&source.endpoint).await;
    write_history(&mut c, 30).await;
    let base = revision(&mut c).await;
    let dir = temp_dir("point-store");
    let base_file = dir.join("base.db");
    std::fs::write(&base_file, snapshot(&mut c).await).unwrap();
    let store = Store::Dir(dir.join("store"));
    std::fs::create_dir_all(dir.join("store")).unwrap();
    let settings = FollowSettings {
        backup: BACKUP.into(),
        stored: base,
        period: Duration::from_millis(200),
        max_bytes: 8 << 10,
    };
    let before_follow = jiff::Timestamp::now().as_millisecond();
    let (tx, mut position) = tokio::sync::watch::channel(Position::default());
    let follower = {
        let (c, store, settings) = (c.clone(), store.clone(), settings.clone());
        tokio::spawn(async move { follow(&c, &store, &settings, &tx).await })
    };
    write_history(&mut c, 120).await;
    let before_time = revision(&mut c).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = jiff::Timestamp::now().as_millisecond();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.put("after-the-time", "x", None).await.unwrap();
    let after_rev = revision(&mut c).await;
    write_history(&mut c, 120).await;
    let end = revision(&mut c).await;
    stored_up_to(&mut position, end, jiff::Timestamp::now().as_millisecond()).await;
    follower.abort();

    let bin_dir = common::etcd_bin("etcd").parent().unwrap().to_path_buf();
    let scratch = dir.join("scratch");
    let request = |target, out| PointRequest {
        snapshot: &base_file,
        out,
        backup: BACKUP,
        base,
        store: &store,
        target,
        etcd_bin_dir: &bin_dir,
        scratch: &scratch,
    };
    let outs: Vec<std::path::PathBuf> = ["end", "mid", "time", "broken"]
        .iter()
        .map(|tag| dir.join(format!("{tag}.db")))
        .collect();
    let mid = base + (end - base) / 2;
    for (target, want, tag, out) in [
        (Target::End, end, "end", &outs[0]),
        (Target::Revision(mid), mid, "mid", &outs[1]),
        (Target::Time(at), before_time, "time", &outs[2]),
    ] {
        let reached = to_point(&request(target, out)).await.unwrap();
        assert_eq!(
            (reached.revision, reached.chain_end),
            (want, end),
            "{tag}: {reached:?}"
        );
        let restored = restore(&std::fs::read(out).unwrap());
        let mut r = connect(&restored.endpoint).await;
        let want_hash = c.hash_kv(i64::try_from(want).unwrap()).await.unwrap().hash();
        assert_eq!(
            r.hash_kv(0).await.unwrap().hash(),
            want_hash,
            "{tag}: not the source at {want}"
        );
        assert_eq!(revision(&mut r).await, want);
        let after = r.get("after-the-time", None).await.unwrap().kvs().len();
        assert_eq!(
            after,
            usize::from(want >= after_rev),
            "{tag}: the write after the time"
        );
    }

    // A time before the chain's first revision: the backup itself may hold later writes, refused.
    match to_point(&request(Target::Time(before_follow), &outs[3])).await {
        Err(PointError::Step { detail, .. }) => {
            assert!(detail.contains("restore an older backup"), "{detail}")
        }
        other => panic!("a time before the chain was not refused: {other:?}"),
    }
    assert!(!outs[3].exists() && !scratch.exists(), "something was left");

    // A chunk in the middle removed: refused, naming the missing revisions, nothing written.
    let mut names = stored_chunks(&store).await;
    names.sort();
    let gone = names[names.len() / 2].clone();
    let body = store.get_small(&gone.object()).await.unwrap();
    store.delete(&gone.object()).await.unwrap();
    let out = &outs[3];
    let _ = std::fs::remove_dir_all(&scratch);
    match to_point(&request(Target::End, out)).await {
        Err(PointError::Chain(e)) => {
            let why = e.to_string();
            assert!(why.contains(&format!("{}..=", gone.first)), "{why}");
        }
        other => panic!("a chain with a hole was not refused: {other:?}"),
    }
    assert!(!out.exists() && !scratch.exists(), "something was written");
    // The same chunk put back damaged: refused as damaged.
    let mut damaged = body;
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    store.put_small(&gone.object(), damaged).await.unwrap();
    assert!(matches!(
        to_point(&request(Target::End, out)).await,
        Err(PointError::Format(_))
    ));
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(dir);
}
