//! Real etcd and MinIO processes for the sidecar's integration tests, on loopback ports, from the
//! builds of `e2e/scripts/` (found through `OUROBOROS_ETCD_BIN` and `OUROBOROS_MINIO_BIN`).
#![allow(clippy::unwrap_used, dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use etcd_client::Client;

pub fn etcd_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("OUROBOROS_ETCD_BIN")
        .expect("OUROBOROS_ETCD_BIN must name the built etcd binaries (source <(e2e/cluster.sh env))");
    Path::new(&dir).join(tool)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ouroboros-{tag}-{}-{}", std::process::id(), free_port()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub endpoint: String,
    pub dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts etcd on `data_dir` (fresh or restored) as member `name`.
pub fn start_etcd_on(name: &str, data_dir: PathBuf) -> Proc {
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let child = Command::new(etcd_bin("etcd"))
        .args(["--name", name, "--data-dir"])
        .arg(&data_dir)
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
        // What a replay needs (a revision of any size is one transaction); harmless elsewhere.
        .args(ouroboros_backup_sidecar::delta::replay::REPLAY_ETCD_FLAGS)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd");
    Proc {
        child,
        endpoint,
        dir: data_dir,
    }
}

pub fn start_etcd(name: &str) -> Proc {
    start_etcd_on(name, temp_dir(name).join("data"))
}

/// Restores `snapshot` with etcdutl, as etcd's documentation does, and starts etcd on it alone.
pub fn restore(snapshot: &[u8]) -> Proc {
    let dir = temp_dir("restore");
    let file = dir.join("snapshot.db");
    std::fs::write(&file, snapshot).unwrap();
    let data = dir.join("data");
    let peer = free_port();
    let out = Command::new(etcd_bin("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .args(["--data-dir"])
        .arg(&data)
        .args([
            "--name",
            "restored",
            "--initial-cluster",
            &format!("restored=http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdutl snapshot restore refused the archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start_etcd_on("restored", data)
}

pub async fn connect(endpoint: &str) -> Client {
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

pub const MINIO_USER: &str = "testuser";
pub const MINIO_PASSWORD: &str = "testpassword";

/// Starts MinIO on a fresh directory and waits until it is ready.
pub async fn start_minio() -> Proc {
    let bin = std::env::var("OUROBOROS_MINIO_BIN")
        .expect("OUROBOROS_MINIO_BIN must name the built MinIO binary (source <(e2e/cluster.sh env))");
    let dir = temp_dir("minio");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args(["server", "--quiet", "--address", &format!("127.0.0.1:{port}")])
        .arg(&dir)
        .env("MINIO_ROOT_USER", MINIO_USER)
        .env("MINIO_ROOT_PASSWORD", MINIO_PASSWORD)
        .env("MINIO_BROWSER", "off")
        .env("MINIO_UPDATE", "off")
        .env("MINIO_CI_CD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting MinIO");
    let proc = Proc {
        child,
        endpoint: endpoint.clone(),
        dir,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let ok = Command::new("curl")
                .args(["-sf", &format!("{endpoint}/minio/health/ready")])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return proc;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("MinIO did not become ready");
}
