//! The no-op raft entry the operator proposes while a learner catches up, against a real etcd
//! process on loopback (from `OUROBOROS_ETCD_BIN`, see `e2e/cluster.sh env`).
//!
//! Why it exists: etcd 3.6 does not count a snapshot a learner received as applied. When the
//! snapshot's index is over 5000 and no entry follows it (an idle cluster), the learner refuses its
//! own publish ("too many requests") and never starts. Seen growing a 1 GiB cluster; too timing-bound
//! to reproduce at a size a unit test can afford, so `e2e/bench/learner.sh` shows it (see
//! docs/runbooks.md). Here: the entry reaches raft and changes nothing a client can see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod real_etcd;

use ouroboros_operator::etcd::{Endpoint, EtcdClients, EtcdOps};
use real_etcd::{connect, free_port, start};

#[tokio::test]
async fn a_no_op_entry_moves_the_applied_index_and_changes_no_key() {
    let member = start();
    let mut client = connect(&member.client_url).await;
    client.put("k", "v", None).await.unwrap();
    let before = client.status().await.unwrap();

    let ops = EtcdClients::new();
    ops.propose_noop(&[Endpoint::plain(&member.client_url)])
        .await
        .expect("proposing a no-op entry");

    let after = client.status().await.unwrap();
    assert!(
        after.raft_applied_index() > before.raft_applied_index(),
        "applied index stayed at {}: the no-op did not go through raft",
        before.raft_applied_index()
    );
    let header = |s: &etcd_client::StatusResponse| s.header().unwrap().revision();
    assert_eq!(header(&after), header(&before), "the no-op changed the keyspace");
    let kv = client.get("k", None).await.unwrap();
    assert_eq!(kv.kvs().len(), 1);
    assert_eq!(kv.kvs()[0].mod_revision(), header(&before));
}

#[tokio::test]
async fn a_no_op_entry_is_refused_clearly_when_no_member_answers() {
    let ops = EtcdClients::new();
    let nobody = Endpoint::plain(format!("http://127.0.0.1:{}", free_port()));
    let err = ops.propose_noop(std::slice::from_ref(&nobody)).await.unwrap_err();
    assert!(err.to_string().contains("alarm list"), "{err}");
}
