//! Talking to a member's backup sidecar over its pod IP (see `ouroboros_crds::sidecar` for the wire
//! format). Requests are short; the backup itself runs in the sidecar and is polled.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use ouroboros_crds::sidecar::{Job, JobState, PruneOutcome, PruneRequest};

/// How long one request to a sidecar may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a prune may take: it lists and deletes objects one by one.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a sidecar request failed.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// No answer (pod gone, container restarting, network).
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
}

/// An answer none of the calls expects, with the sidecar's own words.
fn unexpected(addr: &str, status: u16, body: &[u8]) -> SidecarError {
    SidecarError::Unexpected(
        addr.to_owned(),
        status,
        String::from_utf8_lossy(body).into_owned(),
    )
}

/// A client for sidecars.
#[derive(Clone, Debug)]
pub struct SidecarClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for SidecarClient {
    fn default() -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl SidecarClient {
    async fn call(&self, req: http::Request<Full<Bytes>>, addr: &str) -> Result<(u16, Bytes), SidecarError> {
        self.call_within(TIMEOUT, req, addr).await
    }

    async fn call_within(
        &self,
        timeout: Duration,
        req: http::Request<Full<Bytes>>,
        addr: &str,
    ) -> Result<(u16, Bytes), SidecarError> {
        let unreachable = |e: String| SidecarError::Unreachable(addr.to_owned(), e);
        let resp = tokio::time::timeout(timeout, self.http.request(req))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| unreachable("timed out reading the answer".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    /// Starts `job` on the sidecar at `addr` (`ip:port`). Repeating a started job is harmless.
    pub async fn start(&self, addr: &str, job: &Job) -> Result<(), SidecarError> {
        let body = serde_json::to_vec(job).unwrap_or_default();
        let req = http::Request::post(format!("http://{addr}/v1/backups"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, addr).await? {
            (202, _) => Ok(()),
            (409, _) => Err(SidecarError::Busy(addr.to_owned())),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// The state of job `id` on the sidecar at `addr`.
    pub async fn state(&self, addr: &str, id: &str) -> Result<JobState, SidecarError> {
        let req = http::Request::get(format!("http://{addr}/v1/backups/{id}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, addr).await? {
            (200, b) => serde_json::from_slice(&b)
                .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 200, format!("bad state: {e}"))),
            (404, _) => Err(SidecarError::UnknownJob(addr.to_owned())),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// Stops job `id` on the sidecar at `addr`: its upload is aborted and nothing is committed.
    pub async fn stop(&self, addr: &str, id: &str) -> Result<(), SidecarError> {
        let req = http::Request::delete(format!("http://{addr}/v1/backups/{id}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call(req, addr).await? {
            (202, _) => Ok(()),
            (404, _) => Err(SidecarError::UnknownJob(addr.to_owned())),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }

    /// Applies retention in a destination through the sidecar at `addr`.
    pub async fn prune(&self, addr: &str, req: &PruneRequest) -> Result<PruneOutcome, SidecarError> {
        let body = serde_json::to_vec(req).unwrap_or_default();
        let req = http::Request::post(format!("http://{addr}/v1/prune"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 0, e.to_string()))?;
        match self.call_within(PRUNE_TIMEOUT, req, addr).await? {
            (200, b) => serde_json::from_slice(&b)
                .map_err(|e| SidecarError::Unexpected(addr.to_owned(), 200, format!("bad answer: {e}"))),
            (409, _) => Err(SidecarError::Busy(addr.to_owned())),
            (s, b) => Err(unexpected(addr, s, &b)),
        }
    }
}
