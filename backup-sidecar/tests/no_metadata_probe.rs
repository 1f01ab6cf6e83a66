//! An S3 store without a credentials Secret must not ask the cloud metadata service (IMDS) for a
//! region it already knows: off a cloud VM that is traffic to an address that is not ours, and a delay
//! on every backup and fetch.
//!
//! The store is built in a child process (this test binary again, one ignored test) whose environment
//! points the SDK's metadata endpoint at a local listener that counts connections. The environment is
//! the child's own, since the workspace forbids the `unsafe` that changing this process's needs. A
//! control run loads the SDK's default chain without a region, as the store did before, and must be
//! seen by the listener: that proves the listener would catch a probe.
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

const MODE: &str = "OUROBOROS_IMDS_PROBE_MODE";

/// Runs the child in `mode` with the metadata endpoint on a counting listener; returns how many
/// connections the listener saw.
fn connections_seen(mode: &str) -> usize {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    // Dropping the connection makes the SDK's metadata client fail at once.
                    Ok(_) => {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child", "--nocapture"])
        .env(MODE, mode)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://{addr}"))
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    counter.join().unwrap();
    assert!(
        out.status.success(),
        "child {mode} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    seen.load(Ordering::SeqCst)
}

#[test]
fn a_store_without_a_secret_never_asks_the_metadata_service_for_its_region() {
    assert!(
        connections_seen("defaults-without-region") > 0,
        "control: the SDK's default chain without a region should have asked the metadata service"
    );
    assert_eq!(
        connections_seen("store-with-region"),
        0,
        "building an S3 store with a known region asked the metadata service"
    );
    assert_eq!(
        connections_seen("store-default-region"),
        0,
        "building an S3 store with the default region asked the metadata service"
    );
}

/// The child half: does what its mode says, in an environment the parent set.
#[tokio::test]
#[ignore = "run by a_store_without_a_secret_never_asks_the_metadata_service_for_its_region"]
async fn child() {
    let config = |region: &str| S3Config {
        bucket: "b".into(),
        region: region.into(),
        endpoint: Some("http://127.0.0.1:9".into()),
        force_path_style: true,
        ..Default::default()
    };
    match std::env::var(MODE).as_deref() {
        Ok("defaults-without-region") => {
            // With the store's HTTP client: the SDK compiles none of its own.
            let _ = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(ouroboros_backup_sidecar::store::http_client())
                .load()
                .await;
        }
        Ok("store-with-region") => drop(Store::s3(config("eu-west-1")).await),
        Ok("store-default-region") => drop(Store::s3(config("")).await),
        other => panic!("{MODE} not set by the parent test: {other:?}"),
    }
}
