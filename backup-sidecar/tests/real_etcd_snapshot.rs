//! Against a real etcd process (the build of `e2e/scripts/build-etcd.sh`, found through
//! `OUROBOROS_ETCD_BIN`): a snapshot streamed while a writer keeps writing passes the trailer check,
//! and the revision read from its bytes is exactly what `etcdutl snapshot status` reports for them.

// A panic with its message is how this test reports a failure, helpers included.
#![allow(clippy::unwrap_used)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use etcd_client::{Client, CompactionOptions};
use ouroboros_backup_sidecar::{bbolt::RevisionScanner, verify::TrailerVerifier};

fn etcd_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("OUROBOROS_ETCD_BIN")
        .expect("OUROBOROS_ETCD_BIN must name the built etcd binaries (source <(e2e/cluster.sh env))");
    Path::new(&dir).join(tool)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd {
    child: Child,
    endpoint: String,
    _dir: PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start_etcd(name: &str) -> Etcd {
    let dir = std::env::temp_dir().join(format!("ouroboros-sidecar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let child = Command::new(etcd_bin("etcd"))
        .args(["--name", name, "--data-dir"])
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster", &format!("{name}=http://127.0.0.1:{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd");
    Etcd {
        child,
        endpoint,
        _dir: dir,
    }
}

async fn connect(endpoint: &str) -> Client {
    for _ in 0..100 {
        if let Ok(mut c) = Client::connect([endpoint], None).await
            && c.status().await.is_ok()
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {endpoint} did not come up");
}

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
