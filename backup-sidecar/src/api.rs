//! The sidecar's HTTP API, called by the operator:
//!
//! - `POST /v1/backups` with a [`Job`] starts a backup of this member in the background (202), or
//!   answers 409 while another one runs;
//! - `GET /v1/backups/{id}` reports it: [`JobState`]; 404 means this sidecar never saw the job (it
//!   restarted), so the backup is lost and its upload was never committed;
//! - `DELETE /v1/backups/{id}` stops a running backup (its cluster was deleted): the upload is
//!   aborted, nothing is committed, and the job reports `Failed` with the reason (202; 404 if unknown);
//! - `POST /v1/prune` with a [`PruneRequest`] applies retention to a destination and removes what
//!   interrupted backups left there, answering a [`PruneOutcome`] (409 while a backup runs here).
//!
//! - `PUT /v1/continuous` with a [`FollowRequest`] follows the member's history after a full backup
//!   as a chain of delta chunks (202; the same request again changes nothing, another one ends the
//!   current follow first); `GET /v1/continuous` reports it: [`FollowState`] (404: none since this
//!   sidecar started); `DELETE /v1/continuous` ends it (202). A chunk is written in one request, so
//!   ending a follow at any moment leaves no part of one.
//!
//! Every `/v1` call is the operator's alone: it is served over TLS ([`serve`]) and answered 401
//! without a client certificate and 403 with one that is not the operator's (see [`crate::tls`]).
//! `/healthz` says nothing but "ok" and stays open.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension, Json, Router,
    extract::{Path, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::rt::TokioIo;
use ouroboros_crds::retention::Rules;
use tokio::sync::Mutex;

pub use ouroboros_crds::sidecar::{
    FollowPosition, FollowRequest, FollowState, Job, JobDestination, JobState, PruneOutcome, PruneRequest,
};

use ouroboros_crds::delta::{ChunkName, chain_to};

use crate::{
    delta::follow::{FollowError, FollowSettings, follow},
    pipeline::{self, Cancel, Canceller},
    store::{S3Config, Store},
    tls::{Caller, ReloadingConfig, caller},
};

/// The sidecar's state.
#[derive(Debug, Clone)]
pub struct Api {
    /// Client URL of this member (`http://127.0.0.1:2379`).
    pub etcd_endpoint: String,
    /// Client certificate for members that require TLS.
    pub tls: Option<Arc<ClientTls>>,
    /// Jobs by ID.
    pub jobs: Arc<Mutex<HashMap<String, JobState>>>,
    /// The way to stop each running job, by ID.
    pub cancels: Arc<Mutex<HashMap<String, Canceller>>>,
    /// How far each running job is, by ID.
    pub progress: Arc<Mutex<HashMap<String, Arc<pipeline::Progress>>>>,
    /// The chain this sidecar follows, or followed last.
    pub follow: Arc<Mutex<Option<Follow>>>,
}

/// A follow of the member's history (continuous backups).
#[derive(Debug)]
pub struct Follow {
    request: FollowRequest,
    position: tokio::sync::watch::Receiver<FollowPosition>,
    /// Why it ended, and whether at a gap; `None` while it runs.
    ended: Arc<std::sync::Mutex<Option<(String, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follow {
    fn state(&self) -> FollowState {
        let ended = match self.ended.lock().map(|e| e.clone()).unwrap_or(None) {
            // A task that ended without saying why panicked: report it, so the operator asks again.
            None if self.task.is_finished() => Some(("the follow stopped unexpectedly".to_owned(), false)),
            ended => ended,
        };
        FollowState {
            request: self.request.clone(),
            position: *self.position.borrow(),
            gap: ended.as_ref().is_some_and(|(_, gap)| *gap),
            ended: ended.map(|(why, _)| why),
        }
    }

    fn end(&self, why: &str) {
        self.task.abort();
        if let Ok(mut e) = self.ended.lock() {
            e.get_or_insert_with(|| (why.to_owned(), false));
        }
    }
}

impl Api {
    /// An API for the member at `etcd_endpoint`, with no jobs yet.
    pub fn new(etcd_endpoint: String, tls: Option<Arc<ClientTls>>) -> Self {
        Self {
            etcd_endpoint,
            tls,
            jobs: Default::default(),
            cancels: Default::default(),
            progress: Default::default(),
            follow: Default::default(),
        }
    }

    /// Stops every running backup with `reason` and waits up to `wait` for their uploads to be
    /// aborted: a sidecar that is shutting down must not leave a half-written upload behind.
    pub async fn stop_all(&self, reason: &str, wait: std::time::Duration) {
        if let Some(f) = self.follow.lock().await.as_ref() {
            f.end(reason);
        }
        for c in self.cancels.lock().await.values() {
            c.cancel(reason);
        }
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if !self
                .jobs
                .lock()
                .await
                .values()
                .any(|s| matches!(s, JobState::Running { .. }))
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        tracing::warn!("backups still running at shutdown; their uploads are left for retention to remove");
    }
}

/// A client certificate (PEM) and the CA that signed the member's certificate.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// CA bundle.
    pub ca: Vec<u8>,
    /// Client certificate.
    pub cert: Vec<u8>,
    /// Its key.
    pub key: Vec<u8>,
    /// Name to verify the member's certificate against; the endpoint's host when unset.
    pub server_name: Option<String>,
}

/// The routes. The caller is an [`Extension`] that [`serve`] adds per connection; without one
/// (any other way of serving these routes) every `/v1` call is refused.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/backups", post(start))
        .route("/v1/backups/{id}", get(state).delete(stop))
        .route("/v1/prune", post(prune))
        .route(
            "/v1/continuous",
            get(follow_state).put(follow_start).delete(follow_stop),
        )
        .route_layer(middleware::from_fn(authorize))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(api)
}

/// Only the operator may start, read, stop or prune: a backup is the whole database.
async fn authorize(caller: Option<Extension<Caller>>, req: Request, next: Next) -> Response {
    match caller.map(|Extension(c)| c) {
        Some(Caller::Operator) => next.run(req).await,
        Some(Caller::Other) => (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"error": "this client certificate is not the operator's; only the operator may call a backup sidecar"})),
        )
            .into_response(),
        Some(Caller::Anonymous) | None => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "a client certificate issued to the operator is required"})),
        )
            .into_response(),
    }
}

/// How long a connection may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown` resolves, telling each request who the
/// connection's client certificate belongs to.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<ReloadingConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    continue;
                }
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let router = router.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "refused a connection at the TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "a TLS handshake timed out");
                    return;
                }
            };
            let who = caller(stream.get_ref().1.peer_certificates());
            let service = hyper_util::service::TowerToHyperService::new(router.layer(Extension(who)));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

async fn state(State(api): State<Api>, Path(id): Path<String>) -> impl IntoResponse {
    let state = api.jobs.lock().await.get(&id).cloned();
    let state = match state {
        // A running job says how far it is.
        Some(JobState::Running { .. }) => {
            let (streamed, total) = api.progress.lock().await.get(&id).map_or((0, None), |p| p.read());
            Some(JobState::Running {
                bytes_streamed: Some(streamed),
                total_bytes: total,
            })
        }
        other => other,
    };
    match state {
        Some(s) => (StatusCode::OK, Json(serde_json::to_value(s).unwrap_or_default())),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such backup on this sidecar"})),
        ),
    }
}

async fn stop(State(api): State<Api>, Path(id): Path<String>) -> impl IntoResponse {
    if !api.jobs.lock().await.contains_key(&id) {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such backup on this sidecar"})),
        );
    }
    if let Some(c) = api.cancels.lock().await.get(&id) {
        c.cancel("the operator stopped this backup");
    }
    // A finished job stays as it was; a running one reports Failed once its upload is aborted.
    (StatusCode::ACCEPTED, Json(serde_json::json!({"id": id})))
}

async fn start(State(api): State<Api>, Json(job): Json<Job>) -> impl IntoResponse {
    {
        let mut jobs = api.jobs.lock().await;
        if let Some(existing) = jobs.get(&job.id) {
            // Idempotent: the operator may repeat a request after a restart of its own.
            return (
                StatusCode::ACCEPTED,
                Json(serde_json::to_value(existing).unwrap_or_default()),
            );
        }
        if jobs.values().any(|s| matches!(s, JobState::Running { .. })) {
            return (
                StatusCode::CONFLICT,
                Json(serde_json::json!({"error": "another backup is running"})),
            );
        }
        jobs.insert(
            job.id.clone(),
            JobState::Running {
                bytes_streamed: None,
                total_bytes: None,
            },
        );
    }
    let id = job.id.clone();
    let (canceller, cancel) = Cancel::new();
    api.cancels.lock().await.insert(id.clone(), canceller);
    let progress = Arc::new(pipeline::Progress::default());
    api.progress.lock().await.insert(id.clone(), progress.clone());
    tokio::spawn(async move {
        let result = run(&api.etcd_endpoint, api.tls.as_deref(), &job, cancel, progress).await;
        let state = match result {
            Ok(outcome) => JobState::Succeeded {
                manifest: Box::new(outcome.manifest),
                location: outcome.location,
            },
            Err(reason) => JobState::Failed { reason },
        };
        tracing::info!(backup = %job.name, state = ?state, "backup finished");
        api.jobs.lock().await.insert(job.id.clone(), state);
        api.cancels.lock().await.remove(&job.id);
        api.progress.lock().await.remove(&job.id);
    });
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"id": id, "phase": "Running"})),
    )
}

async fn prune(State(api): State<Api>, Json(req): Json<PruneRequest>) -> impl IntoResponse {
    if api
        .jobs
        .lock()
        .await
        .values()
        .any(|s| matches!(s, JobState::Running { .. }))
    {
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": "a backup is running; retention waits for it"})),
        );
    }
    let rules = Rules {
        max_count: req.max_count.and_then(|n| usize::try_from(n).ok()),
        max_age: req.max_age_seconds.map(jiff::SignedDuration::from_secs),
    };
    let store = open_store(&req.destination).await;
    match crate::prune::prune(&store, rules, &req.keep_backups, jiff::Timestamp::now()).await {
        Ok(out) => {
            tracing::info!(
                deleted = out.deleted.len(),
                kept = out.kept,
                leftovers = out.leftovers_removed,
                "retention applied"
            );
            (
                StatusCode::OK,
                Json(serde_json::to_value(out).unwrap_or_default()),
            )
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({"error": e.to_string()})),
        ),
    }
}

async fn open_store(destination: &JobDestination) -> Store {
    match destination {
        JobDestination::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            force_path_style,
            credentials,
        } => {
            Store::s3(S3Config {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                endpoint: endpoint.clone(),
                region: region.clone(),
                force_path_style: *force_path_style,
                credentials: credentials.clone(),
            })
            .await
        }
        JobDestination::Dir { path } => Store::Dir(path.into()),
    }
}

async fn run(
    endpoint: &str,
    tls: Option<&ClientTls>,
    job: &Job,
    cancel: Cancel,
    progress: Arc<pipeline::Progress>,
) -> Result<pipeline::Outcome, String> {
    // A recipient that does not parse fails the job before anything is read or written.
    let encrypt_to = job
        .encryption
        .as_ref()
        .map(|e| crate::crypt::recipients(&e.recipients, &e.secret))
        .transpose()
        .map_err(|e| e.to_string())?;
    let store = open_store(&job.destination).await;
    let mut client = connect(endpoint, tls).await?;
    let req = pipeline::Request {
        name: job.name.clone(),
        cluster_name: job.cluster_name.clone(),
        cluster_uid: job.cluster_uid.clone(),
        cancel,
        member: job.member.clone(),
        compression_level: job.compression_level,
        codec: job.codec,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()).min(4),
        encrypt_to,
        progress,
    };
    pipeline::run(&mut client, &store, &req)
        .await
        .map_err(|e| e.to_string())
}

/// A client of the local member, with its client certificate when it requires one.
async fn connect(endpoint: &str, tls: Option<&ClientTls>) -> Result<etcd_client::Client, String> {
    let options = tls.map(|t| {
        let mut o = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&t.ca))
            .identity(etcd_client::Identity::from_pem(&t.cert, &t.key));
        if let Some(name) = &t.server_name {
            o = o.domain_name(name.clone());
        }
        etcd_client::ConnectOptions::new().with_tls(o)
    });
    etcd_client::Client::connect([endpoint], options)
        .await
        .map_err(|e| format!("connecting to the local member at {endpoint}: {e}"))
}

fn no_follow() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "this sidecar has followed no chain since it started"})),
    )
}

async fn follow_state(State(api): State<Api>) -> impl IntoResponse {
    match api.follow.lock().await.as_ref() {
        Some(f) => (
            StatusCode::OK,
            Json(serde_json::to_value(f.state()).unwrap_or_default()),
        ),
        None => no_follow(),
    }
}

async fn follow_stop(State(api): State<Api>) -> impl IntoResponse {
    match api.follow.lock().await.as_ref() {
        Some(f) => {
            f.end("the operator ended this follow");
            (
                StatusCode::ACCEPTED,
                Json(serde_json::to_value(f.state()).unwrap_or_default()),
            )
        }
        None => no_follow(),
    }
}

async fn follow_start(State(api): State<Api>, Json(req): Json<FollowRequest>) -> impl IntoResponse {
    if req.period_seconds == 0 || req.max_bytes == 0 {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "periodSeconds and maxBytes must be above 0"})),
        );
    }
    let mut slot = api.follow.lock().await;
    if let Some(f) = slot.as_ref() {
        if f.request == req && !f.task.is_finished() {
            // Idempotent: the operator repeats its request every time it looks.
            return (
                StatusCode::ACCEPTED,
                Json(serde_json::to_value(f.state()).unwrap_or_default()),
            );
        }
        f.end("the operator asked for another chain");
    }
    let (tx, position) = tokio::sync::watch::channel(FollowPosition {
        stored_revision: req.stored,
        ..Default::default()
    });
    let ended: Arc<std::sync::Mutex<Option<(String, bool)>>> = Default::default();
    let task = tokio::spawn({
        let (api, req, ended) = (api.clone(), req.clone(), ended.clone());
        async move {
            let settings = FollowSettings {
                backup: req.backup.clone(),
                stored: req.stored,
                period: std::time::Duration::from_secs(req.period_seconds),
                max_bytes: usize::try_from(req.max_bytes).unwrap_or(usize::MAX),
            };
            let result = match connect(&api.etcd_endpoint, api.tls.as_deref()).await {
                Ok(client) => {
                    let store = open_store(&req.destination).await;
                    follow_on(&client, &store, settings, &tx).await
                }
                Err(e) => (e, false),
            };
            tracing::warn!(backup = %req.backup, reason = %result.0, gap = result.1, "the follow ended");
            if let Ok(mut e) = ended.lock() {
                e.get_or_insert(result);
            }
        }
    });
    let follow = Follow {
        request: req,
        position,
        ended,
        task,
    };
    let state = follow.state();
    *slot = Some(follow);
    (
        StatusCode::ACCEPTED,
        Json(serde_json::to_value(state).unwrap_or_default()),
    )
}

/// Follows after what the store already holds of the chain (a follow that ended, on this sidecar
/// or another, wrote some of it), until it ends; says why, and whether at a gap.
async fn follow_on(
    client: &etcd_client::Client,
    store: &Store,
    mut settings: FollowSettings,
    position: &tokio::sync::watch::Sender<FollowPosition>,
) -> (String, bool) {
    let names = match store.list().await {
        Ok(names) => names,
        Err(e) => return (format!("listing the chain: {e}"), false),
    };
    let stored: Vec<ChunkName> = names.iter().filter_map(|n| ChunkName::parse(n)).collect();
    match chain_to(&settings.backup, settings.stored, &stored, None) {
        Ok(chain) => settings.stored = chain.end,
        Err(e) => return (e.to_string(), true),
    }
    match follow(client, store, &settings, position).await {
        Err(e @ FollowError::Gap { .. }) => (e.to_string(), true),
        Err(e) => (e.to_string(), false),
    }
}
