//! Against a real etcd process (the build of `e2e/scripts/build-etcd.sh`, found through
//! `OUROBOROS_ETCD_BIN`): a snapshot streamed while a writer keeps writing passes the trailer check,
//! and the revision read from its bytes is exactly what `etcdutl snapshot status` reports for them.

// A panic with its message is how this test reports a failure, helpers included.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, process::Command};

use common::{connect, etcd_bin, start_etcd};
use etcd_client::{Client, CompactionOptions};
use ouroboros_backup_sidecar::{bbolt::RevisionScanner, verify::TrailerVerifier};

fn etcdutl_revision(file: &Path) -> u64 {
    let out = Command::new(etcd_bin("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .expect("running etcdutl");
    assert!(
        out.status.success(),
        "etcdutl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdutl json");
    v["revision"].as_u64().expect("revision in etcdutl output")
}

/// Streams a snapshot through the verifier and the scanner, keeping the bytes for the oracle.
async fn snapshot(
    c: &mut Client,
) -> (
    Vec<u8>,
    Result<String, ouroboros_backup_sidecar::verify::VerifyError>,
    u64,
) {
    let mut stream = c.snapshot().await.expect("snapshot stream");
    let mut verifier = TrailerVerifier::new();
    let mut scanner = RevisionScanner::new();
    let mut bytes = Vec::new();
    while let Some(msg) = stream.message().await.expect("snapshot message") {
        verifier.update(msg.blob());
        scanner.feed(msg.blob());
        bytes.extend_from_slice(msg.blob());
    }
    let revision = scanner.revision().expect("revision from the snapshot bytes");
    (bytes, verifier.finish(), revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_from_the_bytes_matches_etcdutl_even_while_writes_continue() {
    let etcd = start_etcd("rev");
    let mut c = connect(&etcd.endpoint).await;

    // Empty store first: no revision key at all (etcdutl reports 0).
    let (bytes, sha, revision) = snapshot(&mut c).await;
    sha.expect("trailer of an empty store");
    let file = std::env::temp_dir().join(format!("ouroboros-empty-{}.db", std::process::id()));
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(revision, etcdutl_revision(&file), "empty store");

    // History with overwrites, deletes (tombstones) and a compaction, and values large enough to
    // overflow pages.
    for i in 0..3000u32 {
        let value = if i % 97 == 0 {
            vec![b'x'; 20_000]
        } else {
            format!("value-{i}").into_bytes()
        };
        c.put(format!("key/{:05}", i % 700), value, None).await.unwrap();
        if i % 5 == 0 {
            c.delete(format!("key/{:05}", (i + 3) % 700), None).await.unwrap();
        }
    }
    let rev = c
        .get("key/00001", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c.compact(rev - 500, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    c.delete("key/00002", None).await.unwrap();

    // Snapshots while another client keeps writing, so copied pages may be reused mid-copy.
    let writer_endpoint = etcd.endpoint.clone();
    let writer = tokio::spawn(async move {
        let mut w = connect(&writer_endpoint).await;
        for i in 0..4000u32 {
            let _ = w.put(format!("busy/{}", i % 300), vec![b'y'; 1500], None).await;
        }
    });
    for round in 0..4 {
        let (bytes, sha, revision) = snapshot(&mut c).await;
        sha.unwrap_or_else(|e| panic!("round {round}: {e}"));
        let file = std::env::temp_dir().join(format!("ouroboros-busy-{round}-{}.db", std::process::id()));
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(
            revision,
            etcdutl_revision(&file),
            "round {round}: scanner and etcdutl disagree"
        );
        let _ = std::fs::remove_file(&file);
    }
    writer.await.unwrap();

    // A flipped byte is caught by the trailer check.
    let (mut bytes, _, _) = snapshot(&mut c).await;
    bytes[5000] ^= 0xff;
    let mut v = TrailerVerifier::new();
    v.update(&bytes);
    assert!(
        v.finish().is_err(),
        "a corrupted snapshot passed the trailer check"
    );
    let _ = std::fs::remove_file(&file);
}
