//! The etcd calls of NOSPACE recovery (compact, defragment, disarm), through the operator's own
//! client, against a real etcd process on loopback with a 16 MiB quota: filled to NOSPACE by
//! history alone (one key overwritten), it refuses writes; after the calls it takes them again, its
//! file is smaller, and the key holds its last acknowledged value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod real_etcd;

use ouroboros_operator::etcd::{AlarmKind, Endpoint, EtcdClients, EtcdOps};
use real_etcd::{connect, start_with};

#[tokio::test]
async fn a_member_filled_to_nospace_by_history_recovers_with_compact_defragment_and_disarm() {
    let member = start_with(&["--quota-backend-bytes=16777216", "--auto-compaction-retention=0"]);
    let mut client = connect(&member.client_url).await;
    let value = vec![b'x'; 256 << 10];
    let mut last_acked = None;
    let mut refused = None;
    for i in 0..400u32 {
        let mut v = value.clone();
        v[..4].copy_from_slice(&i.to_be_bytes());
        match client.put("churn", v.clone(), None).await {
            Ok(_) => last_acked = Some(v),
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("400 writes of 256 KiB never raised NOSPACE on a 16 MiB quota");
    assert!(refused.contains("database space exceeded"), "{refused}");

    let etcd = EtcdClients::new();
    let ep = Endpoint::plain(member.client_url.clone());
    let before = etcd.status(&ep).await.unwrap();
    assert!(
        before.errors.iter().any(|e| e.contains("NOSPACE")),
        "{:?}",
        before.errors
    );

    assert!(
        etcd.compact(std::slice::from_ref(&ep), before.revision)
            .await
            .unwrap()
    );
    // Compacting again to the same revision is not an error: the history is already gone.
    assert!(
        !etcd
            .compact(std::slice::from_ref(&ep), before.revision)
            .await
            .unwrap()
    );
    etcd.defragment(&ep).await.unwrap();
    let after = etcd.status(&ep).await.unwrap();
    assert!(
        after.db_size < before.db_size / 4,
        "defragmentation gave back little: {} -> {} bytes",
        before.db_size,
        after.db_size
    );
    assert!(after.db_size_in_use <= after.db_size);
    etcd.disarm(std::slice::from_ref(&ep), before.member_id, AlarmKind::NoSpace)
        .await
        .unwrap();
    let cleared = etcd.status(&ep).await.unwrap();
    assert!(cleared.errors.is_empty(), "{:?}", cleared.errors);

    let got = client.get("churn", None).await.unwrap();
    assert_eq!(
        got.kvs()[0].value(),
        last_acked.unwrap().as_slice(),
        "the last acknowledged write"
    );
    client.put("after", "recovered", None).await.unwrap();
}
