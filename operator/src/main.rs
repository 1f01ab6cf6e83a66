//! `etcd-operator`: connects to Kubernetes (in-cluster or KUBECONFIG), waits for its CRDs, runs the
//! controllers and the health/metrics server, and stops cleanly on SIGTERM or Ctrl-C.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use ouroboros_operator::{
    checkpointer,
    cli::{Args, Command},
    context::{Context, OperatorConfig},
    controllers, crds_ready, handover, http, leader,
    metrics::Metrics,
    sidecar::SidecarClient,
    sidecar_pki, telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    // The workspace compiles rustls with ring only (the sidecar's S3 client too); installing it
    // explicitly keeps it the provider should a dependency ever enable another one, when rustls could
    // not choose.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting etcd-operator");

    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    if let Some(Command::Handover(h)) = &args.command {
        match handover::run(client, h).await {
            Ok(endpoints) => {
                eprintln!(
                    "the boot member has been removed; point the API server at the self-hosted members:"
                );
                println!("--etcd-servers={}", endpoints.join(","));
                return Ok(());
            }
            Err(e) => {
                eprintln!("handover failed: {e}");
                std::process::exit(e.exit_code());
            }
        }
    }
    if let Some(Command::Checkpointer(c)) = &args.command {
        let config = checkpointer::Config {
            node: c.node_name.clone(),
            static_pod_dir: c.static_pod_dir.clone(),
            secrets_dir: c.secrets_dir.clone(),
            interval: Duration::from_secs(c.interval_seconds),
        };
        checkpointer::run(client, config, shutdown_signal()).await;
        return Ok(());
    }
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(http::Readiness::new(controllers::WATCH_COUNT));
    let shutdown = shutdown_signal().shared();

    let server = tokio::spawn(http::serve(
        args.http_addr,
        http::router(readiness.clone(), metrics.clone()),
        shutdown.clone(),
    ));

    tokio::select! {
        res = crds_ready::wait_for_crds(client.clone(), Duration::from_secs(args.crd_wait_seconds)) => res?,
        () = shutdown.clone() => return Ok(()),
    }
    readiness.crds_established();

    // The CA lives in the operator's own namespace; the first replica to start makes it.
    let ca = sidecar_pki::load_or_create_ca(client.clone(), &args.lease_namespace)
        .await
        .context("loading the sidecar CA")?;
    let sidecar = SidecarClient::new(ca).context("issuing the operator's sidecar client certificate")?;
    let ctx = Arc::new(Context::new(
        client,
        metrics,
        OperatorConfig::from(&args),
        sidecar,
        std::env::var("POD_NAME").ok(),
    ));
    let namespace = Some(args.watch_namespace.clone()).filter(|n| !n.is_empty());
    if args.leader_election {
        let identity =
            std::env::var("POD_NAME").unwrap_or_else(|_| format!("etcd-operator-{}", std::process::id()));
        let leadership = tokio::select! {
            res = leader::wait_for_leadership(ctx.client.clone(), &args.lease_namespace, &identity, &readiness) => Some(res?),
            () = shutdown.clone() => None,
        };
        if let Some(mut leadership) = leadership {
            ctx.metrics.leader.set(1);
            tokio::select! {
                () = controllers::run_all(ctx, readiness, namespace, shutdown.clone()) => leadership.release().await,
                () = leadership.lost() => {
                    // Another replica may already be acting; stop at once rather than race it.
                    tracing::error!("leadership lost: exiting so that only the new leader acts");
                    std::process::exit(1);
                }
            }
        }
    } else {
        ctx.metrics.leader.set(1);
        controllers::run_all(ctx, readiness, namespace, shutdown).await;
    }
    server
        .await
        .context("joining the HTTP server")?
        .context("serving HTTP")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
