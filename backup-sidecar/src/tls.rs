//! The sidecar's half of the mutual TLS with the operator (docs/security.md). The API is served
//! over TLS only, with the server certificate the operator issued for this cluster's sidecars.
//! Client certificates are asked for but not required at the handshake, so that a caller without
//! one gets a plain 401 rather than a torn connection; a certificate that does not chain to the
//! operator's CA fails the handshake. Which caller a chained certificate belongs to is decided per
//! connection ([`caller`]) and enforced per request by the API.
//!
//! The files come from a mounted Secret that the kubelet replaces when the operator renews it, so
//! they are read again (in the sidecar at most every [`RELOAD_EVERY`]) and a new configuration is used for new
//! connections; a renewal that does not load keeps the old one and is logged.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ouroboros_crds::sidecar::OPERATOR_IDENTITY;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// How often the sidecar looks at its certificate files again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Why the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The files do not make a configuration.
    #[error("{what}: {problem}")]
    Config {
        /// Which part.
        what: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn config_error(what: &'static str) -> impl Fn(String) -> TlsError {
    move |problem| TlsError::Config { what, problem }
}

/// Who is calling, decided once per connection from its client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// A certificate from the operator's CA, for the operator.
    Operator,
    /// A certificate from the operator's CA for some other name.
    Other,
}

/// The caller that presented `peer` (already chained to the CA by the handshake).
pub fn caller(peer: Option<&[CertificateDer<'_>]>) -> Caller {
    let Some(leaf) = peer.and_then(|chain| chain.first()) else {
        return Caller::Anonymous;
    };
    let Ok(name) = ServerName::try_from(OPERATOR_IDENTITY) else {
        return Caller::Other;
    };
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) if cert.verify_is_valid_for_subject_name(&name).is_ok() => Caller::Operator,
        _ => Caller::Other,
    }
}

/// A server configuration from PEM: the server certificate chain, its key, and the CA bundle that
/// callers' certificates must chain to.
pub fn server_config(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        let c = c.map_err(|e| config_error("ca.crt")(e.to_string()))?;
        roots.add(c).map_err(|e| config_error("ca.crt")(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| config_error("ca.crt")(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("tls.crt")(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| config_error("tls.key")(e.to_string()))?;
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("protocol versions")(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| config_error("tls.crt and tls.key")(e.to_string()))
}

/// The three files of a mounted Secret.
#[derive(Debug, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl Files {
    fn read(dir: &Path) -> Result<Self, TlsError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read(&path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(Self {
            cert: read("tls.crt")?,
            key: read("tls.key")?,
            ca: read("ca.crt")?,
        })
    }

    fn config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&self.cert, &self.key, &self.ca).map(Arc::new)
    }
}

#[derive(Debug)]
struct Loaded {
    files: Files,
    config: Arc<ServerConfig>,
    checked: Instant,
}

/// The server configuration from a directory (`tls.crt`, `tls.key`, `ca.crt`), kept current.
#[derive(Debug)]
pub struct ReloadingConfig {
    dir: PathBuf,
    every: Duration,
    loaded: Mutex<Loaded>,
}

impl ReloadingConfig {
    /// Loads `dir`, to be looked at again at most `every`; fails when the files are missing or do
    /// not make a configuration.
    pub fn load(dir: &Path, every: Duration) -> Result<Self, TlsError> {
        let files = Files::read(dir)?;
        let config = files.config()?;
        Ok(Self {
            dir: dir.to_owned(),
            every,
            loaded: Mutex::new(Loaded {
                files,
                config,
                checked: Instant::now(),
            }),
        })
    }

    /// The configuration for a new connection: the files as they are now, read at most every
    /// `every`.
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.checked.elapsed() >= self.every {
            loaded.checked = Instant::now();
            match Files::read(&self.dir) {
                Ok(files) if files != loaded.files => match files.config() {
                    Ok(config) => {
                        tracing::info!(dir = %self.dir.display(), "loaded the renewed API certificate");
                        loaded.files = files;
                        loaded.config = config;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the renewed API certificate does not load; keeping the old one")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading the API certificate; keeping the loaded one"),
            }
        }
        loaded.config.clone()
    }
}
