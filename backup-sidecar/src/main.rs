//! `etcd-backup-sidecar`: runs beside each etcd member. Until the backup pipeline lands it only
//! serves `/healthz`, so member pods already carry it and the operator can rely on its address.

use std::net::SocketAddr;

use axum::{Router, routing::get};
use clap::Parser;

/// The backup sidecar of an Ouroboros etcd member.
#[derive(Debug, Parser)]
#[command(name = "etcd-backup-sidecar", version, about)]
struct Args {
    /// Address of the sidecar's HTTP API.
    #[arg(long, env = "OUROBOROS_SIDECAR_ADDR", default_value = "0.0.0.0:8090")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %args.listen, "backup sidecar idle: serving /healthz only");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // The kubelet stops containers with SIGTERM; without this the pod waits out its grace period.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        })
        .await?;
    Ok(())
}
