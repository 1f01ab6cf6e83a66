//! The S3 store's HTTP client is built by the sidecar (store::http_client), not taken from the SDK's
//! defaults, and must keep what the SDK's default client did with proxies: `HTTP_PROXY` for `http`
//! endpoints, `HTTPS_PROXY` (a CONNECT tunnel) for `https` ones, and `NO_PROXY` to go direct.
//!
//! As in no_metadata_probe.rs, the store is used in a child process (this test binary again, one
//! ignored test) whose environment names a local listener as the proxy; the listener counts the
//! connections it is offered and drops them, so the child's request fails at once.
#![allow(clippy::unwrap_used)]

use std::{
    net::TcpListener,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use ouroboros_backup_sidecar::store::{S3Config, Store};

const ENDPOINT: &str = "OUROBOROS_PROXY_TEST_ENDPOINT";
/// A name that resolves nowhere: only a proxy can take the request.
const HOST: &str = "s3.proxy-test.invalid";

/// Runs the child against `endpoint` with `env` set and every other proxy variable removed;
/// returns how many connections the listener named by `{proxy}` in `env` saw.
fn proxy_connections(endpoint: &str, env: &[(&str, &str)]) -> usize {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(_) => {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "child", "--nocapture"])
        .env(ENDPOINT, endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_lowercase());
    }
    for (k, v) in env {
        cmd.env(k, v.replace("{proxy}", &proxy));
    }
    let out = cmd.output().unwrap();
    stop.store(true, Ordering::SeqCst);
    counter.join().unwrap();
    assert!(
        out.status.success(),
        "child for {endpoint} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    seen.load(Ordering::SeqCst)
}

#[test]
fn the_s3_store_uses_the_proxy_the_environment_names() {
    let http = format!("http://{HOST}");
    let https = format!("https://{HOST}");
    assert!(
        proxy_connections(&http, &[("HTTP_PROXY", "{proxy}")]) > 0,
        "an http endpoint did not go through HTTP_PROXY"
    );
    assert!(
        proxy_connections(&https, &[("HTTPS_PROXY", "{proxy}")]) > 0,
        "an https endpoint did not go through HTTPS_PROXY"
    );
    assert_eq!(
        proxy_connections(&http, &[("HTTP_PROXY", "{proxy}"), ("NO_PROXY", HOST)]),
        0,
        "a host in NO_PROXY went through the proxy"
    );
}

/// The child half: one request to the endpoint its parent named, which cannot succeed.
#[tokio::test]
#[ignore = "run by the_s3_store_uses_the_proxy_the_environment_names"]
async fn child() {
    let endpoint = std::env::var(ENDPOINT).expect("set by the parent test");
    let store = Store::s3(S3Config {
        bucket: "b".into(),
        region: "us-east-1".into(),
        endpoint: Some(endpoint),
        force_path_style: true,
        credentials: Some(("key".into(), "secret".into(), None)),
        ..Default::default()
    })
    .await;
    assert!(store.list().await.is_err());
}
