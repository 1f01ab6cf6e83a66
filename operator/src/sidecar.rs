//! Talking to a member's backup sidecar over its pod IP (see `ouroboros_crds::sidecar` for the wire
//! format). Requests are short; the backup itself runs in the sidecar and is polled.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use ouroboros_crds::sidecar::{FollowRequest, FollowState, Job, JobState, PruneOutcome, PruneRequest};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

use crate::sidecar_pki::{CLIENT_LIFETIME, Ca, PkiError, due_for_renewal};

/// How long one request to a sidecar may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a prune may take: it lists and deletes objects one by one.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a sidecar request failed.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// No answer (pod gone, container restarting, network), or the TLS handshake failed.
    #[error("sidecar at {0} did not answer: {1}")]
    Unreachable(String, String),
    /// Another backup is running there.
    #[error("sidecar at {0} is busy with another backup")]
    Busy(String),
    /// The sidecar does not know the job: it restarted since the job started.
    #[error("sidecar at {0} does not know this backup (it restarted)")]
    UnknownJob(String),
    /// An answer we did not expect.
    #[error("sidecar at {0} answered {1}: {2}")]
    Unexpected(String, u16, String),
    /// The operator's client certificate could not be made.
    #[error("issuing the operator's client certificate: {0}")]
    Identity(#[from] PkiError),
    /// The TLS configuration could not be built from the certificates.
    #[error("building the TLS configuration for sidecars: {0}")]
    Tls(String),
}

/// An answer none of the calls expects, with the sidecar's own words.
fn unexpected(addr: &str, status: u16, body: &[u8]) -> SidecarError {
    SidecarError::Unexpected(
        addr.to_owned(),
        status,
        String::from_utf8_lossy(body).into_owned(),
    )
}

/// Where a sidecar listens and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarAddr {
    /// `ip:port`.
    pub addr: String,
    /// The name checked in its server certificate ([`ouroboros_crds::sidecar::server_identity`]).
    pub identity: String,
}

/// A TLS client configuration trusting `ca_bundle_pem`, presenting `client` (certificate and key,
/// PEM) when given. Used by the operator and by tests that call a sidecar as someone else.
pub fn client_config(
    ca_bundle_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<ClientConfig, SidecarError> {
    let tls = |e: String| SidecarError::Tls(e);
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| tls(format!("CA bundle: {e}")))?)
            .map_err(|e| tls(format!("CA bundle: {e}")))?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(format!("client certificate: {e}")))?;
            let key =
                PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(format!("client certificate: {e}")))
        }
    }
}

/// Sends `req` to the sidecar at `to` over TLS with `config`, checking that its certificate is for
/// `to.identity` whatever address is dialled, and returns the status and body.
pub async fn exchange(
    config: Arc<ClientConfig>,
    to: &SidecarAddr,
    req: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(u16, Bytes), SidecarError> {
    let addr = to.addr.as_str();
    let unreachable = |e: String| SidecarError::Unreachable(addr.to_owned(), e);
    let name = ServerName::try_from(to.identity.clone()).map_err(|e| SidecarError::Tls(e.to_string()))?;
    let send = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| unreachable("timed out".into()))?
}

/// The operator's client certificate, as a TLS configuration, and when to renew it.
#[derive(Debug)]
struct Identity {
    config: Arc<ClientConfig>,
    not_after: Timestamp,
    /// When a certificate signed by the CA a rotation replaced must give way to the current CA's.
    signer_changes: Option<Timestamp>,
}

impl Identity {
    fn issue(ca: &Ca, now: Timestamp) -> Result<Self, SidecarError> {
        let (leaf, signer_changes) = ca.issue_client(now)?;
        let config = client_config(ca.bundle(), Some((&leaf.cert_pem, &leaf.key_pem)))?;
        Ok(Self {
            config: Arc::new(config),
            not_after: leaf.not_after,
            signer_changes,
        })
    }

    fn stale(&self, ca: &Ca, now: Timestamp) -> bool {
        due_for_renewal(ca, self.not_after, CLIENT_LIFETIME, now)
            || self.signer_changes.is_some_and(|t| now >= t)
    }
}

/// A client for sidecars: mutual TLS with the operator's CA, the client certificate renewed in
/// memory as it ages.
#[derive(Clone, Debug)]
pub struct SidecarClient {
    ca: Arc<Ca>,
    identity: Arc<Mutex<Identity>>,
}

impl SidecarClient {
    /// A client that proves itself with a certificate from `ca`.
    pub fn new(ca: Ca) -> Result<Self, SidecarError> {
        let identity = Identity::issue(&ca, Timestamp::now())?;
        Ok(Self {
            ca: Arc::new(ca),
            identity: Arc::new(Mutex::new(identity)),
        })
    }

    /// The CA, which also issues each cluster's sidecar certificate.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    fn config(&self) -> Result<Arc<ClientConfig>, SidecarError> {
        let now = Timestamp::now();
        let mut identity = self
            .identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if identity.stale(&self.ca, now) {
            *identity = Identity::issue(&self.ca, now)?;
            tracing::info!(not_after = %identity.not_after, "renewed the operator's sidecar client certificate");
        }
        Ok(identity.config.clone())
    }

    async fn call(
        &self,
        req: http::Request<Full<Bytes>>,
        to: &SidecarAddr,
    ) -> Result<(u16, Bytes), SidecarError> {
        self.call_within(TIMEOUT, req, to).await
    }

    async fn call_within(
        &self,
        timeout: Duration,
        req: http::Request<Full<Bytes>>,
        to: &SidecarAddr,
    ) -> Result<(u16, Bytes), SidecarError> {
        exchange(self.config()?, to, req, timeout).await
    }

    /// Starts `job` on the sidecar at `addr` (`ip:port`). Repeating a started job is harmless.
    pub async fn start(&self, to: &SidecarAddr, job: &Job) -> Result<(), SidecarError> {
        let addr = to.addr.as_str();
        let body = serde_json::to_vec(job).unwrap_or_default();
        let req = http::Request::post("/v1/backups")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, to).await? {
            (202, _) => Ok(()),
            (409, _) => Err(SidecarError::Busy(addr.to_owned())),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// The state of job `id` on the sidecar at `addr`.
    pub async fn state(&self, to: &SidecarAddr, id: &str) -> Result<JobState, SidecarError> {
        let addr = to.addr.as_str();
        let req = http::Request::get(format!("/v1/backups/{id}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, to).await? {
            (200, b) => serde_json::from_slice(&b)
                .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 200, format!("bad state: {e}"))),
            (404, _) => Err(SidecarError::UnknownJob(addr.to_owned())),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// Stops job `id` on the sidecar at `addr`: its upload is aborted and nothing is committed.
    pub async fn stop(&self, to: &SidecarAddr, id: &str) -> Result<(), SidecarError> {
        let addr = to.addr.as_str();
        let req = http::Request::delete(format!("/v1/backups/{id}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, to).await? {
            (202, _) => Ok(()),
            (404, _) => Err(SidecarError::UnknownJob(addr.to_owned())),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// Asks the sidecar at `to` to follow its member's history as `req` says (continuous backups).
    /// Repeating the request it follows already changes nothing.
    pub async fn follow(&self, to: &SidecarAddr, req: &FollowRequest) -> Result<FollowState, SidecarError> {
        let addr = to.addr.as_str();
        let body = serde_json::to_vec(req).unwrap_or_default();
        let req = http::Request::put("/v1/continuous")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, to).await? {
            (202, b) => serde_json::from_slice(&b)
                .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 202, format!("bad state: {e}"))),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// The follow the sidecar at `to` runs or ran last; `None` when it has run none since it started.
    pub async fn follow_state(&self, to: &SidecarAddr) -> Result<Option<FollowState>, SidecarError> {
        let addr = to.addr.as_str();
        let req = http::Request::get("/v1/continuous")
            .body(Full::new(Bytes::new()))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, to).await? {
            (200, b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 200, format!("bad state: {e}"))),
            (404, _) => Ok(None),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// Ends the follow of the sidecar at `to`, if it runs one.
    pub async fn end_follow(&self, to: &SidecarAddr) -> Result<(), SidecarError> {
        let addr = to.addr.as_str();
        let req = http::Request::delete("/v1/continuous")
            .body(Full::new(Bytes::new()))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, to).await? {
            (202 | 404, _) => Ok(()),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// Applies retention in a destination through the sidecar at `addr`.
    pub async fn prune(&self, to: &SidecarAddr, req: &PruneRequest) -> Result<PruneOutcome, SidecarError> {
        let addr = to.addr.as_str();
        let body = serde_json::to_vec(req).unwrap_or_default();
        let req = http::Request::post("/v1/prune")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call_within(PRUNE_TIMEOUT, req, to).await? {
            (200, b) => serde_json::from_slice(&b)
                .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 200, format!("bad answer: {e}"))),
            (409, _) => Err(SidecarError::Busy(addr.to_owned())),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }
}
