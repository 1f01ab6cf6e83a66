//! One real etcd member on loopback for the `*_real.rs` tests (from `OUROBOROS_ETCD_BIN`, see
//! `e2e/cluster.sh env`).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use etcd_client::Client;

pub fn etcd_bin() -> PathBuf {
    let dir = std::env::var("OUROBOROS_ETCD_BIN")
        .expect("OUROBOROS_ETCD_BIN must name the built etcd binaries (source <(e2e/cluster.sh env))");
    PathBuf::from(dir).join("etcd")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Member {
    child: Child,
    /// Its client URL.
    pub client_url: String,
    dir: PathBuf,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A one-member etcd on fresh loopback ports and a fresh data directory.
pub fn start() -> Member {
    start_with(&[])
}

/// [`start`] with extra flags.
pub fn start_with(extra: &[&str]) -> Member {
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("ouroboros-noop-{}-{}", std::process::id(), free_port()));
    let _ = std::fs::remove_dir_all(&dir);
    let child = Command::new(etcd_bin())
        .args(["--name", "m0", "--data-dir"])
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("m0={peer_url}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd");
    Member {
        child,
        client_url,
        dir,
    }
}

pub async fn connect(url: &str) -> Client {
    for _ in 0..100 {
        if let Ok(mut c) = Client::connect([url], None).await
            && c.status().await.is_ok()
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {url} did not come up");
}
