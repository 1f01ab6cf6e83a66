//! The operator's HTTP server: `/healthz` (the process serves), `/readyz` (CRDs established and every
//! controller's watch has synced) and `/metrics`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

/// What `/readyz` reports on.
#[derive(Debug)]
pub struct Readiness {
    crds_established: AtomicBool,
    standby: AtomicBool,
    watches_synced: AtomicUsize,
    watches_expected: usize,
}

impl Readiness {
    /// Ready once the CRDs are established and `watches_expected` watches have synced.
    pub fn new(watches_expected: usize) -> Self {
        Self {
            crds_established: AtomicBool::new(false),
            standby: AtomicBool::new(false),
            watches_synced: AtomicUsize::new(0),
            watches_expected,
        }
    }

    /// Records that every CRD the operator serves is established.
    pub fn crds_established(&self) {
        self.crds_established.store(true, Ordering::SeqCst);
    }

    /// Marks this replica as waiting for leadership: ready to take over, so ready, though it runs no
    /// watches yet.
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::SeqCst);
    }

    /// Records that one more watch has delivered its initial list.
    pub fn watch_synced(&self) {
        self.watches_synced.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200, and if not, why.
    pub fn check(&self) -> Result<(), String> {
        if !self.crds_established.load(Ordering::SeqCst) {
            return Err("CRDs not established yet".into());
        }
        let synced = self.watches_synced.load(Ordering::SeqCst);
        if synced < self.watches_expected && !self.standby.load(Ordering::SeqCst) {
            return Err(format!("{synced} of {} watches synced", self.watches_expected));
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

/// The routes, separate from binding so tests can drive them in memory.
pub fn router(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { readiness, metrics })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.readiness.check() {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_crds_and_every_watch() {
        let r = Readiness::new(2);
        assert_eq!(r.check(), Err("CRDs not established yet".into()));
        r.crds_established();
        assert_eq!(r.check(), Err("0 of 2 watches synced".into()));
        r.set_standby(true);
        assert_eq!(r.check(), Ok(()), "a standby replica is ready to take over");
        r.set_standby(false);
        r.watch_synced();
        r.watch_synced();
        assert_eq!(r.check(), Ok(()));
    }

    #[tokio::test]
    async fn readyz_answers_503_then_200_over_http() {
        let readiness = Arc::new(Readiness::new(0));
        let app = router(readiness.clone(), Arc::new(Metrics::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let status = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).await.unwrap();
            buf
        };
        assert!(status("/readyz").await.starts_with("HTTP/1.1 503"));
        readiness.crds_established();
        assert!(status("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(status("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(status("/metrics").await.contains("# EOF"));
    }
}
