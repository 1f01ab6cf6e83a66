//! Helpers for the end-to-end tests. They run against the local cluster of `e2e/cluster.sh` (or any
//! cluster KUBECONFIG points at) with the operator deployed from `deploy/`.
//!
//! Each test works in its own namespace (`TestNamespace`), which is deleted afterwards unless
//! `OUROBOROS_E2E_KEEP=1`; when a test fails, the namespace's pods and Events are printed first.

use std::{future::Future, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};

/// A client for the cluster under test.
pub async fn client() -> anyhow::Result<Client> {
    Client::try_default()
        .await
        .context("KUBECONFIG must point at the e2e cluster (source <(e2e/cluster.sh env))")
}

/// Polls `check` every 500 ms until it yields `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A namespace that exists for one test.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates `ouroboros-e2e-<prefix>-<random>`.
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let suffix: String = format!("{:08x}", rand_u32());
        let name = format!("e2e-{prefix}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"ouroboros.dev/e2e": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Runs `test` in this namespace; on failure prints the namespace's state, then cleans up.
    pub async fn run<F, Fut>(self, test: F) -> anyhow::Result<()>
    where
        F: FnOnce(Client, String) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let result = test(self.client.clone(), self.name.clone()).await;
        if result.is_err() {
            self.dump().await;
        }
        if std::env::var("OUROBOROS_E2E_KEEP").as_deref() != Ok("1") {
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(&self.name, &DeleteParams::default())
                .await;
        }
        result
    }

    async fn dump(&self) {
        eprintln!("---- state of namespace {} ----", self.name);
        if let Ok(pods) = Api::<Pod>::namespaced(self.client.clone(), &self.name)
            .list(&ListParams::default())
            .await
        {
            for p in pods {
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                eprintln!("pod {} phase={phase}", p.name_any());
            }
        }
        if let Ok(events) = Api::<Event>::namespaced(self.client.clone(), &self.name)
            .list(&ListParams::default())
            .await
        {
            for e in events {
                eprintln!(
                    "event {} {}: {}",
                    e.involved_object.name.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                );
            }
        }
    }
}

fn rand_u32() -> u32 {
    // Unique enough for namespace names without pulling in a RNG crate.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ (std::process::id() << 16)).wrapping_mul(2_654_435_761)
}

/// The repository root (for deploy/ and samples).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit status was zero.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `kubectl` (from PATH, as `e2e/cluster.sh env` sets it) with `args`.
pub fn kubectl(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .context("running kubectl")?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Path of a binary of the etcd build under test (`etcdctl`, `etcdutl`).
pub fn etcd_tool(name: &str) -> PathBuf {
    let dir = std::env::var("OUROBOROS_ETCD_BIN").unwrap_or_else(|_| "/usr/local/bin".into());
    PathBuf::from(dir).join(name)
}

/// The etcd image of the version under test.
pub fn etcd_image() -> String {
    let v = std::env::var("OUROBOROS_ETCD_VERSION")
        .unwrap_or_else(|_| ouroboros_crds::cluster::DEFAULT_ETCD_VERSION.into());
    format!("localhost/ouroboros/etcd:v{v}")
}
