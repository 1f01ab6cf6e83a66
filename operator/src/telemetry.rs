//! Logging set-up: `RUST_LOG`-style filtering, text or JSON lines.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::cli::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level. Logs go to stderr,
/// so a subcommand's stdout is only its answer.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,tower=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr)).init(),
    }
}
