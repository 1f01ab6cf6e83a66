//! Only the operator can drive a sidecar: the real API server (`api::serve`) behind the real TLS
//! configuration, called by the operator's own client and by everyone else a member's network
//! reaches. No etcd is needed: every refusal happens before a backup could start, and the operator's
//! calls are shown to get through by the answers only an authorised call gets (404 for an unknown
//! job, 400 for a body the API cannot read).
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use ouroboros_backup_sidecar::{
    api::{Api, router, serve},
    tls::ReloadingConfig,
};
use ouroboros_crds::sidecar::{OPERATOR_IDENTITY, server_identity};
use ouroboros_operator::{
    sidecar::{SidecarAddr, SidecarClient, SidecarError, client_config, exchange},
    sidecar_pki::{ANNOTATION_ROTATED_AT, Ca, ROTATION_GRACE, SERVER_LIFETIME, Usage},
};

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// A directory like the mounted `<cluster>-sidecar-tls` Secret, for `identity`, from `ca`.
fn write_secret_dir(dir: &PathBuf, ca: &Ca, identity: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let leaf = ca.issue(identity, Usage::Server, now(), SERVER_LIFETIME).unwrap();
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.bundle()).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ouroboros-api-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct Sidecar {
    to: SidecarAddr,
    api: Api,
    dir: PathBuf,
}

/// A sidecar of cluster `c` in `ns` serving on a free loopback port with certificates from `ca`.
async fn sidecar(name: &str, ca: &Ca, reload: Duration) -> Sidecar {
    let dir = temp_dir(name);
    let identity = server_identity("ns", "c");
    write_secret_dir(&dir, ca, &identity);
    let tls = Arc::new(ReloadingConfig::load(&dir, reload).unwrap());
    let api = Api::new("http://127.0.0.1:9".into(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, tls, router(api.clone()), std::future::pending()));
    Sidecar {
        to: SidecarAddr { addr, identity },
        api,
        dir,
    }
}

fn request(method: &str, path: &str, body: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// A backup job to a store of the caller's choosing: what an attacker would send.
const HOSTILE_JOB: &str = r#"{"id":"x","name":"stolen","clusterName":"c","member":"c-0",
  "destination":{"s3":{"bucket":"attacker","prefix":"loot/","endpoint":"http://127.0.0.1:9",
  "region":"us-east-1","forcePathStyle":true}},"compressionLevel":1}"#;
const HOSTILE_PRUNE: &str = r#"{"destination":{"s3":{"bucket":"victim","prefix":"","endpoint":"http://127.0.0.1:9",
  "region":"us-east-1","forcePathStyle":true}},"maxCount":1}"#;

async fn status_as(
    config: rustls::ClientConfig,
    s: &Sidecar,
    method: &str,
    path: &str,
    body: &str,
) -> Result<u16, SidecarError> {
    exchange(
        Arc::new(config),
        &s.to,
        request(method, path, body),
        Duration::from_secs(5),
    )
    .await
    .map(|(status, _)| status)
}

#[tokio::test]
async fn only_the_operators_certificate_drives_a_sidecar() {
    let ca = Ca::generate(now()).unwrap();
    let s = sidecar("only-operator", &ca, Duration::from_secs(3600)).await;

    // The operator itself: an unknown job is a 404, which only an authorised call can get.
    let operator = SidecarClient::new(Ca::from_secret(&ca.to_secret("ouroboros-system")).unwrap()).unwrap();
    match operator.state(&s.to, "no-such-job").await {
        Err(SidecarError::UnknownJob(_)) => {}
        other => panic!("the operator was not served: {other:?}"),
    }

    // No client certificate: 401 for every call that does something.
    for (method, path, body) in [
        ("POST", "/v1/backups", HOSTILE_JOB),
        ("POST", "/v1/prune", HOSTILE_PRUNE),
        ("GET", "/v1/backups/x", ""),
        ("DELETE", "/v1/backups/x", ""),
    ] {
        let anonymous = client_config(ca.bundle(), None).unwrap();
        assert_eq!(
            status_as(anonymous, &s, method, path, body).await.unwrap(),
            401,
            "{method} {path} without a client certificate"
        );
    }
    // A certificate from the same CA for another name (the kind of credential another component
    // holding the CA's trust would have): authenticated, not authorised.
    let other = ca
        .issue("someone-else.example", Usage::Client, now(), SERVER_LIFETIME)
        .unwrap();
    for (method, path, body) in [
        ("POST", "/v1/backups", HOSTILE_JOB),
        ("POST", "/v1/prune", HOSTILE_PRUNE),
    ] {
        let config = client_config(ca.bundle(), Some((&other.cert_pem, &other.key_pem))).unwrap();
        assert_eq!(
            status_as(config, &s, method, path, body).await.unwrap(),
            403,
            "{method} {path}"
        );
    }
    assert!(
        s.api.jobs.lock().await.is_empty(),
        "a refused caller started a job"
    );

    // The sidecar's own certificate, which every member pod mounts, is for serving only.
    let own_cert = std::fs::read_to_string(s.dir.join("tls.crt")).unwrap();
    let own_key = std::fs::read_to_string(s.dir.join("tls.key")).unwrap();
    let config = client_config(ca.bundle(), Some((&own_cert, &own_key))).unwrap();
    match status_as(config, &s, "POST", "/v1/backups", HOSTILE_JOB).await {
        // With TLS 1.3 the client learns of the refusal only when it reads: no answer either way.
        Err(SidecarError::Unreachable(..)) => {}
        other => panic!("a sidecar's server certificate was accepted as a client: {other:?}"),
    }
    // A certificate for the operator's name from a CA of the caller's own making.
    let forged_ca = Ca::generate(now()).unwrap();
    let forged = forged_ca
        .issue(OPERATOR_IDENTITY, Usage::Client, now(), SERVER_LIFETIME)
        .unwrap();
    let config = client_config(ca.bundle(), Some((&forged.cert_pem, &forged.key_pem))).unwrap();
    assert!(
        status_as(config, &s, "POST", "/v1/backups", HOSTILE_JOB)
            .await
            .is_err(),
        "a forged operator certificate got an answer"
    );
    assert!(
        s.api.jobs.lock().await.is_empty(),
        "a refused caller started a job"
    );

    // Plain HTTP gets no HTTP answer at all: the port speaks TLS only.
    let mut tcp = tokio::net::TcpStream::connect(&s.to.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = HOSTILE_JOB.as_bytes();
    let head = format!(
        "POST /v1/backups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // The server may drop the connection before all of it is written: that is a refusal too.
    let _ = tcp.write_all(&[head.as_bytes(), body].concat()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(s.api.jobs.lock().await.is_empty(), "plain HTTP started a job");

    // And the operator still gets through, with a body the API reads (400: not JSON).
    let (cert, key) = ca_operator_leaf(&ca);
    let config = client_config(ca.bundle(), Some((&cert, &key))).unwrap();
    let status = status_as(config, &s, "POST", "/v1/backups", "not json")
        .await
        .unwrap();
    assert!(
        (400..500).contains(&status) && status != 401 && status != 403,
        "{status}"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

fn ca_operator_leaf(ca: &Ca) -> (String, String) {
    let leaf = ca
        .issue(OPERATOR_IDENTITY, Usage::Client, now(), SERVER_LIFETIME)
        .unwrap();
    (leaf.cert_pem, leaf.key_pem)
}

#[tokio::test]
async fn the_operator_refuses_a_sidecar_of_another_cluster() {
    let ca = Ca::generate(now()).unwrap();
    let s = sidecar("other-cluster", &ca, Duration::from_secs(3600)).await;
    let operator = SidecarClient::new(Ca::from_secret(&ca.to_secret("ouroboros-system")).unwrap()).unwrap();
    // The same address, but the operator means cluster `d`'s sidecar: the credentials it would send
    // must not reach cluster `c`'s pod.
    let elsewhere = SidecarAddr {
        addr: s.to.addr.clone(),
        identity: server_identity("ns", "d"),
    };
    match operator.state(&elsewhere, "x").await {
        Err(SidecarError::Unreachable(_, why)) => assert!(why.contains("TLS"), "{why}"),
        other => panic!("the operator talked to the wrong cluster's sidecar: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test]
async fn a_renewed_secret_is_served_without_a_restart() {
    let old = Ca::generate(now()).unwrap();
    let s = sidecar("reload", &old, Duration::ZERO).await;
    // The operator replaced its CA (the documented way to rotate it): the Secret is reissued and
    // the kubelet writes the new files; the next connection uses them.
    let new = Ca::generate(now()).unwrap();
    write_secret_dir(&s.dir, &new, &s.to.identity);
    let operator = SidecarClient::new(Ca::from_secret(&new.to_secret("ouroboros-system")).unwrap()).unwrap();
    match operator.state(&s.to, "no-such-job").await {
        Err(SidecarError::UnknownJob(_)) => {}
        other => panic!("the renewed certificate was not served: {other:?}"),
    }
    // A broken renewal keeps the last good configuration.
    std::fs::write(s.dir.join("tls.key"), "garbage").unwrap();
    match operator.state(&s.to, "no-such-job").await {
        Err(SidecarError::UnknownJob(_)) => {}
        other => panic!("a broken renewal broke the API: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test]
async fn a_rotated_ca_never_locks_the_operator_out() {
    let old = Ca::generate(now()).unwrap();
    // A sidecar the kubelet has not yet given the reissued Secret: the old CA's certificate and bundle.
    let stale = sidecar("rotation-stale", &old, Duration::from_secs(3600)).await;
    let rotated = old.rotate(now()).unwrap();
    // A sidecar that has it: the new CA's certificate, and both CAs in its bundle.
    let fresh = sidecar("rotation-fresh", &rotated, Duration::from_secs(3600)).await;
    let operator =
        SidecarClient::new(Ca::from_secret(&rotated.to_secret("ouroboros-system")).unwrap()).unwrap();
    for s in [&stale, &fresh] {
        match operator.state(&s.to, "no-such-job").await {
            Err(SidecarError::UnknownJob(_)) => {}
            other => panic!(
                "the operator was locked out of {} during the rotation: {other:?}",
                s.to.addr
            ),
        }
    }
    // After the grace the operator's certificate comes from the new CA: the reissued sidecar takes
    // it, and a sidecar still on the old bundle would not, which is what the grace is for. (The
    // rotation is moved into the past rather than the clock forward: sidecars check real time.)
    let mut secret = rotated.to_secret("ouroboros-system");
    let long_ago = now()
        .saturating_sub(ROTATION_GRACE)
        .unwrap()
        .saturating_sub(jiff::SignedDuration::from_hours(1))
        .unwrap();
    secret
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANNOTATION_ROTATED_AT.into(), long_ago.to_string());
    let after_grace = Ca::from_secret(&secret).unwrap();
    let (leaf, signer_changes) = after_grace.issue_client(now()).unwrap();
    assert_eq!(
        signer_changes, None,
        "still signing with the old CA after the grace"
    );
    let config = || client_config(rotated.bundle(), Some((&leaf.cert_pem, &leaf.key_pem))).unwrap();
    assert_eq!(
        status_as(config(), &fresh, "GET", "/v1/backups/x", "")
            .await
            .unwrap(),
        404
    );
    assert!(
        status_as(config(), &stale, "GET", "/v1/backups/x", "")
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&stale.dir);
    let _ = std::fs::remove_dir_all(&fresh.dir);
}
