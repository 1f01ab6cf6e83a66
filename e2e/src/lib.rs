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
    // The workspace compiles rustls with ring only; installing it explicitly keeps it the provider
    // should a dependency ever enable another one.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
        Self::create_labelled(client, prefix, serde_json::json!({})).await
    }

    /// The same, with Kubernetes' `restricted` Pod Security profile enforced: the API server refuses
    /// any pod that runs as root, keeps a capability, or mounts a host path.
    pub async fn create_restricted(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        Self::create_labelled(
            client,
            prefix,
            serde_json::json!({"pod-security.kubernetes.io/enforce": "restricted",
                               "pod-security.kubernetes.io/enforce-version": "latest"}),
        )
        .await
    }

    async fn create_labelled(
        client: &Client,
        prefix: &str,
        labels: serde_json::Value,
    ) -> anyhow::Result<Self> {
        // Local volumes that earlier tests' namespaces released are wiped and offered again first:
        // a node's pool is small (node-local, as on real local storage), and a test that found it
        // spent by the tests before it would fail for the test cluster's sake, not the product's.
        // Best effort: a cluster not made by cluster.sh has no such pool, and the test still runs.
        if let Err(e) = cluster_script(&["pv-gc"]) {
            eprintln!("local volumes not recycled before this test: {e:#}");
        }
        let suffix: String = format!("{:08x}", rand_u32());
        let name = format!("e2e-{prefix}-{suffix}");
        let mut all = serde_json::json!({"ouroboros.dev/e2e": "true"});
        if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
            all.extend(extra.clone());
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": all}
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
                self.dump_pod(&p).await;
            }
        }
        if let Ok(events) = Api::<Event>::namespaced(self.client.clone(), &self.name)
            .list(&ListParams::default())
            .await
        {
            for e in events {
                eprintln!(
                    "event {} {} (x{}, last {}): {}",
                    e.involved_object.name.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.count.unwrap_or(1),
                    e.last_timestamp.map(|t| t.0.to_string()).unwrap_or_default(),
                    e.message.unwrap_or_default()
                );
            }
        }
    }

    /// One pod's phase, readiness and restarts; for a pod that is not Ready, the tail of each
    /// container's log (and of its previous run), since a failure's cause is usually there.
    async fn dump_pod(&self, p: &Pod) {
        let status = p.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map_or("?".to_string(), |c| c.status.clone());
        let restarts: Vec<String> = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| format!("{}:{}", c.name, c.restart_count))
            .collect();
        eprintln!(
            "pod {} phase={} ready={ready} node={} restarts=[{}]",
            p.name_any(),
            status.phase.unwrap_or_default(),
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            restarts.join(" ")
        );
        if ready == "True" {
            return;
        }
        let api = Api::<Pod>::namespaced(self.client.clone(), &self.name);
        for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
            for previous in [true, false] {
                let params = kube::api::LogParams {
                    container: Some(c.name.clone()),
                    previous,
                    tail_lines: Some(25),
                    timestamps: true,
                    ..Default::default()
                };
                if let Ok(log) = api.logs(&p.name_any(), &params).await {
                    let run = if previous { "previous" } else { "current" };
                    for line in log.lines() {
                        eprintln!("  {}/{} ({run}): {line}", p.name_any(), c.name);
                    }
                }
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

/// The repository root (for deploy/ and samples). Cargo's run-time `CARGO_MANIFEST_DIR` comes first:
/// a test binary reused from a shared target directory may have been built in another checkout.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
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

pub mod etcd_cluster {
    //! Creating EtcdClusters and waiting on their status.

    use std::time::Duration;

    use anyhow::Context as _;
    use k8s_openapi::api::core::v1::Service;
    use kube::{Api, Client, api::PostParams};
    use ouroboros_crds::{EtcdCluster, EtcdClusterStatus};

    /// `status.continuous` of cluster `name` (continuous backups), if it has one yet.
    pub async fn continuous(
        client: &Client,
        ns: &str,
        name: &str,
    ) -> anyhow::Result<Option<ouroboros_crds::ContinuousStatus>> {
        Ok(Api::<EtcdCluster>::namespaced(client.clone(), ns)
            .get(name)
            .await?
            .status
            .and_then(|s| s.continuous))
    }

    /// The condition `type_` of `cluster`, as (status, reason, message).
    pub fn condition(cluster: &EtcdCluster, type_: &str) -> Option<(String, String, String)> {
        cluster
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    /// Creates the cluster described by `yaml` (an EtcdCluster manifest) in `ns`.
    pub async fn create(client: &Client, ns: &str, yaml: &str) -> anyhow::Result<EtcdCluster> {
        let mut c: EtcdCluster = serde_norway::from_str(yaml).context("parsing the EtcdCluster manifest")?;
        c.metadata.namespace = Some(ns.to_owned());
        Ok(Api::<EtcdCluster>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &c)
            .await?)
    }

    /// Waits until the cluster's status satisfies `pred`; returns that status.
    pub async fn wait(
        client: &Client,
        ns: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&EtcdCluster, &EtcdClusterStatus) -> bool,
    ) -> anyhow::Result<EtcdClusterStatus> {
        let api: Api<EtcdCluster> = Api::namespaced(client.clone(), ns);
        super::wait_for(what, timeout, || {
            let api = api.clone();
            let pred = &pred;
            async move {
                let c = api.get(name).await?;
                let status = c.status.clone().unwrap_or_default();
                Ok(pred(&c, &status).then_some(status))
            }
        })
        .await
    }

    /// Running, with `size` healthy voters and nothing else, all on `version`.
    pub fn converged(size: usize, version: &str) -> impl Fn(&EtcdCluster, &EtcdClusterStatus) -> bool {
        let version = version.to_owned();
        move |c, s| {
            s.phase == Some(ouroboros_crds::ClusterPhase::Running)
                && s.observed_generation == c.metadata.generation
                && s.members.len() == size
                && s.members
                    .iter()
                    .all(|m| m.healthy && !m.is_learner && m.version.as_deref() == Some(version.as_str()))
        }
    }

    /// The client Service's ClusterIP endpoint (kube-proxy makes it reachable from the host).
    pub async fn client_endpoint(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get(&format!("{name}-client"))
            .await?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("client Service has no ClusterIP")?;
        Ok(format!("http://{ip}:2379"))
    }

    /// Member pod name -> the node it is scheduled on, for the member pods of `cluster`.
    pub async fn member_nodes(
        client: &Client,
        ns: &str,
        cluster: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
            .list(&kube::api::ListParams::default().labels(&format!("etcd.ouroboros.dev/cluster={cluster}")))
            .await?;
        pods.items
            .iter()
            .map(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                let name = kube::ResourceExt::name_any(p);
                let node = node.with_context(|| format!("{name} is not scheduled"))?;
                Ok((name, node))
            })
            .collect()
    }

    /// The names etcd lists as members at `urls`, sorted.
    pub async fn member_names(urls: &[String]) -> anyhow::Result<Vec<String>> {
        let mut etcd = etcd_client::Client::connect(urls, None).await?;
        let mut names: Vec<String> = etcd
            .member_list()
            .await?
            .members()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// etcd's cluster ID and its sorted member IDs, read at `endpoint` once it answers: unchanged
    /// IDs mean no member was replaced.
    pub async fn identity(endpoint: &str) -> anyhow::Result<(u64, Vec<u64>)> {
        crate::wait_for(
            "etcd to answer a member list",
            Duration::from_secs(180),
            || async move {
                let Ok(mut e) = etcd_client::Client::connect([endpoint], None).await else {
                    return Ok(None);
                };
                let Ok(list) = e.member_list().await else {
                    return Ok(None);
                };
                let cluster = list.header().map_or(0, |h| h.cluster_id());
                let mut ids: Vec<u64> = list.members().iter().map(|m| m.id()).collect();
                ids.sort_unstable();
                Ok(Some((cluster, ids)))
            },
        )
        .await
    }
}

/// The Prometheus text of every operator replica's `/metrics`, concatenated.
pub fn operator_metrics() -> anyhow::Result<String> {
    let out = kubectl(&[
        "-n",
        "ouroboros-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=etcd-operator",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ])?;
    let mut all = String::new();
    for ip in out.stdout.split_whitespace() {
        let o = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", &format!("http://{ip}:8080/metrics")])
            .output()?;
        all.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    Ok(all)
}

/// Runs `e2e/cluster.sh` with `args` (the local cluster's fault tools: node-stop, partition, ...).
pub fn cluster_script(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(repo_root().join("e2e/cluster.sh"))
        .args(args)
        .status()?;
    anyhow::ensure!(st.success(), "e2e/cluster.sh {} failed", args.join(" "));
    Ok(())
}

pub mod writer {
    //! A client that writes sequential keys the whole time a test disrupts the cluster, and afterwards
    //! checks that every write etcd acknowledged is still there.

    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        },
        time::{Duration, Instant, SystemTime},
    };

    use anyhow::ensure;
    use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

    /// A client certificate to write to a TLS cluster with, and the name its server certificate
    /// is checked against.
    #[derive(Clone, Debug)]
    pub struct WriterTls {
        /// PEM CA that signed the server certificate.
        pub ca: Vec<u8>,
        /// PEM client certificate.
        pub cert: Vec<u8>,
        /// PEM client key.
        pub key: Vec<u8>,
        /// The name the server certificate must carry.
        pub domain: String,
    }

    /// A running writer.
    #[derive(Debug)]
    pub struct Writer {
        stop: Arc<AtomicBool>,
        acked: Arc<AtomicU64>,
        failed: Arc<AtomicU64>,
        task: tokio::task::JoinHandle<()>,
        endpoint: String,
        prefix: String,
        tls: Option<WriterTls>,
        last_error: Arc<std::sync::Mutex<Option<String>>>,
        latencies: Arc<std::sync::Mutex<Vec<Put>>>,
    }

    /// One acknowledged write: when it was sent and how long etcd took to acknowledge it.
    #[derive(Clone, Copy, Debug)]
    pub struct Put {
        /// When the put was sent.
        pub sent: SystemTime,
        /// Until its acknowledgement.
        pub took: Duration,
    }

    /// The `q` quantile (0 to 1) of `durations`, and their maximum; zeros when there are none.
    pub fn quantile_and_max(durations: &[Duration], q: f64) -> (Duration, Duration) {
        let mut sorted = durations.to_vec();
        sorted.sort();
        let Some(max) = sorted.last().copied() else {
            return (Duration::ZERO, Duration::ZERO);
        };
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        (sorted[index], max)
    }

    async fn connect(endpoint: &str, tls: Option<&WriterTls>) -> anyhow::Result<Client> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some(t) = tls {
            opts = opts.with_tls(
                TlsOptions::new()
                    .domain_name(t.domain.clone())
                    .ca_certificate(Certificate::from_pem(&t.ca))
                    .identity(Identity::from_pem(&t.cert, &t.key)),
            );
        }
        Ok(Client::connect([endpoint], Some(opts)).await?)
    }

    impl Writer {
        /// Starts writing `<prefix>/<seq>` keys to `endpoint`, one at a time, retrying a key until it
        /// is acknowledged.
        pub async fn start(endpoint: &str, prefix: &str) -> anyhow::Result<Self> {
            Self::start_with(endpoint, prefix, None).await
        }

        /// [`Writer::start`] over TLS with a client certificate.
        pub async fn start_tls(endpoint: &str, prefix: &str, tls: WriterTls) -> anyhow::Result<Self> {
            Self::start_with(endpoint, prefix, Some(tls)).await
        }

        async fn start_with(endpoint: &str, prefix: &str, tls: Option<WriterTls>) -> anyhow::Result<Self> {
            let stop = Arc::new(AtomicBool::new(false));
            let acked = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let (s, a, f, ep, p, t) = (
                stop.clone(),
                acked.clone(),
                failed.clone(),
                endpoint.to_owned(),
                prefix.to_owned(),
                tls.clone(),
            );
            let last_error = Arc::new(std::sync::Mutex::new(None));
            let e = last_error.clone();
            let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
            let l = latencies.clone();
            let failure = move |error: String| {
                f.fetch_add(1, Ordering::SeqCst);
                *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
            };
            let task = tokio::spawn(async move {
                let mut client = None;
                let mut seq = 0u64;
                while !s.load(Ordering::SeqCst) {
                    if client.is_none() {
                        client = connect(&ep, t.as_ref())
                            .await
                            .map_err(|e| failure(format!("connecting: {e:#}")))
                            .ok();
                    }
                    let Some(c) = client.as_mut() else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let (sent, started) = (SystemTime::now(), Instant::now());
                    match c.put(format!("{p}/{seq:08}"), format!("value-{seq}"), None).await {
                        Ok(_) => {
                            let took = started.elapsed();
                            l.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(Put { sent, took });
                            seq += 1;
                            a.store(seq, Ordering::SeqCst);
                        }
                        Err(error) => {
                            failure(format!("writing {p}/{seq:08}: {error}"));
                            client = None;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            Ok(Self {
                stop,
                acked,
                failed,
                task,
                endpoint: endpoint.to_owned(),
                prefix: prefix.to_owned(),
                tls,
                last_error,
                latencies,
            })
        }

        /// How long etcd took to acknowledge each write that was in flight at some moment of
        /// `[from, to]`.
        pub fn latencies_during(&self, from: SystemTime, to: SystemTime) -> Vec<Duration> {
            self.latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|p| p.sent <= to && p.sent + p.took >= from)
                .map(|p| p.took)
                .collect()
        }

        /// The last failed attempt's error (a connection or a write), if any failed.
        pub fn last_error(&self) -> Option<String> {
            self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        /// How many of the first writes were acknowledged by `t` (writes are acknowledged in
        /// order, one at a time).
        pub fn acked_by(&self, t: SystemTime) -> u64 {
            let puts = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
            puts.iter().take_while(|p| p.sent + p.took <= t).count() as u64
        }

        /// Stops writing at once, without reading anything back (the cluster may be gone); a
        /// write in flight may still be committed unacknowledged. The counts stay readable.
        pub fn abort(&self) {
            self.stop.store(true, Ordering::SeqCst);
            self.task.abort();
        }

        /// Writes acknowledged so far.
        pub fn acked(&self) -> u64 {
            self.acked.load(Ordering::SeqCst)
        }

        /// Writes acknowledged while `secs` pass: the cluster keeps serving when this grows.
        pub async fn acked_during(&self, secs: u64) -> u64 {
            let before = self.acked();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            self.acked() - before
        }

        /// Stops writing and checks that every acknowledged key reads back with its value.
        pub async fn stop_and_verify(self) -> anyhow::Result<(u64, u64)> {
            self.stop.store(true, Ordering::SeqCst);
            self.task.await?;
            let acked = self.acked.load(Ordering::SeqCst);
            let failed = self.failed.load(Ordering::SeqCst);
            ensure!(acked > 0, "the writer never got a write acknowledged");
            // Right after a membership change the Service may still route a new connection to a
            // member that was just removed; such a read fails and is retried, it never reads stale data.
            let mut last_err = None;
            let mut resp = None;
            for _ in 0..30 {
                match connect(&self.endpoint, self.tls.as_ref()).await {
                    Ok(mut c) => match c
                        .get(format!("{}/", self.prefix), Some(GetOptions::new().with_prefix()))
                        .await
                    {
                        Ok(r) => {
                            resp = Some(r);
                            break;
                        }
                        Err(e) => last_err = Some(anyhow::Error::from(e)),
                    },
                    Err(e) => last_err = Some(e),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let resp = match resp {
                Some(r) => r,
                None => {
                    return Err(last_err
                        .unwrap_or_else(|| anyhow::anyhow!("no answer"))
                        .context("reading the written keys"));
                }
            };
            let mut found = std::collections::HashMap::new();
            for kv in resp.kvs() {
                found.insert(kv.key_str()?.to_owned(), kv.value_str()?.to_owned());
            }
            for seq in 0..acked {
                let key = format!("{}/{seq:08}", self.prefix);
                ensure!(
                    found.get(&key).map(String::as_str) == Some(format!("value-{seq}").as_str()),
                    "acknowledged write {key} is missing or wrong after the disruption ({acked} acked)"
                );
            }
            Ok((acked, failed))
        }
    }
}

/// The UIDs of the member pods of `cluster`, sorted: unchanged means no member was replaced or
/// restarted as a new pod.
pub async fn member_uids(client: &Client, ns: &str, cluster: &str) -> anyhow::Result<Vec<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("etcd.ouroboros.dev/cluster={cluster}")))
        .await?;
    let mut uids: Vec<String> = pods.items.iter().filter_map(|p| p.uid()).collect();
    uids.sort();
    Ok(uids)
}

/// How many times `container` of pod `pod` has restarted so far (0 when it has no status yet).
pub async fn container_restarts(pods: &Api<Pod>, pod: &str, container: &str) -> anyhow::Result<i32> {
    Ok(pods
        .get(pod)
        .await?
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .iter()
        .find(|c| c.name == container)
        .map_or(0, |c| c.restart_count))
}

/// Kills one container of a pod with SIGKILL through containerd, as a crash would; the kubelet
/// restarts it. Works for images without a shell or `kill`.
pub async fn kill_container(client: &Client, ns: &str, pod: &str, container: &str) -> anyhow::Result<()> {
    let p = Api::<Pod>::namespaced(client.clone(), ns).get(pod).await?;
    let id = p
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == container)
        .and_then(|c| c.container_id)
        .with_context(|| format!("container {container} of {ns}/{pod} has no ID yet"))?;
    let id = id.trim_start_matches("containerd://");
    // Each node has its own containerd; the cluster script knows where.
    let node = p.spec.and_then(|s| s.node_name).unwrap_or_else(|| "node1".into());
    let sock = stdout_of(
        Command::new(repo_root().join("e2e/cluster.sh")).args(["node-sock", &node]),
        &format!("e2e/cluster.sh node-sock {node}"),
    )?;
    stdout_of(
        Command::new("ctr").args([
            "-a",
            sock.trim(),
            "-n",
            "k8s.io",
            "tasks",
            "kill",
            "-s",
            "SIGKILL",
            id,
        ]),
        &format!("ctr kill {id}"),
    )?;
    Ok(())
}

/// Runs `cmd` and returns what it printed; its stderr names the failure when it fails.
fn stdout_of(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A client of the etcd at `endpoint` once it answers. A cluster's client Service can refuse
/// connections for a moment after the cluster converged (its endpoints are not yet programmed), most
/// visibly for a single member: tests connect through this, not at once.
pub async fn etcd_at(endpoint: &str) -> anyhow::Result<etcd_client::Client> {
    wait_for(
        &format!("etcd at {endpoint} to answer"),
        Duration::from_secs(60),
        || async move {
            let mut e = etcd_client::Client::connect([endpoint], None).await?;
            e.status().await?;
            Ok(Some(e))
        },
    )
    .await
}

/// The messages of the Events in `ns` with `reason`.
pub async fn events_with_reason(c: &Client, ns: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    Ok(
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(c.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.message)
            .collect(),
    )
}

/// Writes about `mib` MiB of incompressible values into the etcd at `endpoint` (1 MiB per key, keys
/// `/bulk/<n>`), so a backup takes long enough to be interrupted.
pub async fn fill_etcd(endpoint: &str, mib: usize) -> anyhow::Result<()> {
    let mut c = etcd_at(endpoint).await?;
    // A cheap xorshift is plenty to defeat gzip.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..mib {
        let mut v = vec![0u8; 1 << 20];
        for chunk in v.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        c.put(format!("/bulk/{i:05}"), v, None).await?;
    }
    Ok(())
}

/// The S3 store of the local cluster (MinIO), spoken to with curl's SigV4 support.
pub mod s3 {
    use std::process::Command;

    use anyhow::{Context as _, ensure};

    use super::env;

    /// The bucket backups go to.
    pub fn bucket() -> anyhow::Result<String> {
        env("OUROBOROS_S3_BUCKET")
    }

    fn curl(path_and_query: &str, extra: &[&str]) -> anyhow::Result<Vec<u8>> {
        let user = format!("{}:{}", env("AWS_ACCESS_KEY_ID")?, env("AWS_SECRET_ACCESS_KEY")?);
        let url = format!("{}/{}/{path_and_query}", env("OUROBOROS_S3_ENDPOINT")?, bucket()?);
        let out = Command::new("curl")
            .args(["-sf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &user])
            .args(extra)
            .arg(&url)
            .output()
            .context("running curl")?;
        ensure!(out.status.success(), "curl {url} failed");
        Ok(out.stdout)
    }

    /// SigV4 signs the query as AWS canonicalizes it, where `/` must be escaped.
    fn encode(v: &str) -> String {
        v.replace('/', "%2F")
    }

    fn tags(xml: &str, tag: &str) -> Vec<String> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        xml.split(&open)
            .skip(1)
            .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_owned()))
            .collect()
    }

    /// Every key under `prefix`, hidden ones (markers) included.
    pub fn keys(prefix: &str) -> anyhow::Result<Vec<String>> {
        let xml = curl(
            &format!("?list-type=2&max-keys=1000&prefix={}", encode(prefix)),
            &[],
        )?;
        let mut keys = tags(&String::from_utf8_lossy(&xml), "Key");
        keys.sort();
        Ok(keys)
    }

    /// Open multipart uploads of exactly `key` (MinIO lists them by exact key only).
    pub fn open_uploads(key: &str) -> anyhow::Result<usize> {
        // curl signs the query as written, so parameters go in sorted order.
        let xml = curl(&format!("?prefix={}&uploads=", encode(key)), &[])?;
        Ok(tags(&String::from_utf8_lossy(&xml), "UploadId").len())
    }

    /// Uploads the file `from` as `key`, replacing what is there.
    pub fn upload(key: &str, from: &std::path::Path) -> anyhow::Result<()> {
        let from = from.to_string_lossy().into_owned();
        curl(key, &["-T", &from]).map(drop)
    }

    /// Downloads `key` to `to`.
    pub fn download(key: &str, to: &std::path::Path) -> anyhow::Result<()> {
        let to = to.to_string_lossy().into_owned();
        curl(key, &["-o", &to]).map(drop)
    }

    /// Deletes `key`.
    pub fn delete(key: &str) -> anyhow::Result<()> {
        curl(key, &["-X", "DELETE"]).map(drop)
    }
}

/// Waits until the EtcdBackup `name` is Succeeded or Failed, and returns its status.
pub async fn backup_finished(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<ouroboros_crds::EtcdBackupStatus> {
    let api: Api<ouroboros_crds::EtcdBackup> = Api::namespaced(client.clone(), ns);
    let s = wait_for(&format!("EtcdBackup {name} to finish"), timeout, || {
        let api = api.clone();
        async move {
            let s = api.get(name).await?.status.unwrap_or_default();
            Ok(s.phase.filter(|p| p.is_terminal()).map(|_| s))
        }
    })
    .await?;
    outcome_conditions_agree(
        &format!("EtcdBackup {name}"),
        s.phase == Some(ouroboros_crds::BackupPhase::Succeeded),
        &s.conditions,
    )?;
    Ok(s)
}

/// What a GitOps tool reads from a finished EtcdBackup or EtcdRestore agrees with its phase:
/// `Ready=True` and `Stalled=False` when it succeeded, `Ready=False` and `Stalled=True` when it
/// failed, `Reconciling=False` either way. Every e2e test that waits for one to finish checks this.
pub fn outcome_conditions_agree(
    what: &str,
    succeeded: bool,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> anyhow::Result<()> {
    use ouroboros_crds::condition_types::{READY, RECONCILING, STALLED};
    let status = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.status.as_str())
    };
    let expected = if succeeded {
        (Some("True"), Some("False"))
    } else {
        (Some("False"), Some("True"))
    };
    anyhow::ensure!(
        (status(READY), status(STALLED)) == expected && status(RECONCILING) == Some("False"),
        "{what} {}: Ready={:?} Stalled={:?} Reconciling={:?}",
        if succeeded { "succeeded" } else { "failed" },
        status(READY),
        status(STALLED),
        status(RECONCILING)
    );
    Ok(())
}

/// Takes the EtcdBackup `name` of `cluster` on demand and requires it to succeed within two minutes.
pub async fn backup_succeeded(
    client: &Client,
    ns: &str,
    cluster: &str,
    name: &str,
) -> anyhow::Result<ouroboros_crds::EtcdBackupStatus> {
    let b: ouroboros_crds::EtcdBackup = serde_norway::from_str(&format!(
        "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {{name: {name}}}\nspec: {{clusterName: {cluster}}}\n"
    ))?;
    Api::<ouroboros_crds::EtcdBackup>::namespaced(client.clone(), ns)
        .create(&kube::api::PostParams::default(), &b)
        .await?;
    let s = backup_finished(client, ns, name, Duration::from_secs(120)).await?;
    anyhow::ensure!(
        s.phase == Some(ouroboros_crds::BackupPhase::Succeeded),
        "backup {name} failed: {:?}",
        s.reason
    );
    Ok(s)
}

/// Waits until the EtcdRestore `name` is Succeeded or Failed, and returns its status.
pub async fn restore_finished(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<ouroboros_crds::EtcdRestoreStatus> {
    use ouroboros_crds::RestorePhase;
    let api: Api<ouroboros_crds::EtcdRestore> = Api::namespaced(client.clone(), ns);
    let s = wait_for(&format!("EtcdRestore {name} to finish"), timeout, || {
        let api = api.clone();
        async move {
            let s = api.get(name).await?.status.unwrap_or_default();
            Ok(matches!(s.phase, Some(RestorePhase::Succeeded | RestorePhase::Failed)).then_some(s))
        }
    })
    .await?;
    outcome_conditions_agree(
        &format!("EtcdRestore {name}"),
        s.phase == Some(RestorePhase::Succeeded),
        &s.conditions,
    )?;
    Ok(s)
}

/// Creates the Secret `name` with S3 credentials for the local MinIO: its access key and
/// `secret_key` (the real one from the environment, or a wrong one to test refusals).
pub async fn s3_credentials(client: &Client, ns: &str, name: &str, secret_key: &str) -> anyhow::Result<()> {
    let access = std::env::var("AWS_ACCESS_KEY_ID")
        .context("AWS_ACCESS_KEY_ID is not set: source <(e2e/cluster.sh env)")?;
    let s = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            [
                ("AWS_ACCESS_KEY_ID", access),
                ("AWS_SECRET_ACCESS_KEY", secret_key.to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await?;
    Ok(())
}

/// The Secret `minio` with the local MinIO's real credentials.
pub async fn minio_secret(client: &Client, ns: &str) -> anyhow::Result<()> {
    let key = std::env::var("AWS_SECRET_ACCESS_KEY")
        .context("AWS_SECRET_ACCESS_KEY is not set: source <(e2e/cluster.sh env)")?;
    s3_credentials(client, ns, "minio", &key).await
}

/// An environment variable that `e2e/cluster.sh env` sets, or an error saying to source it.
pub fn env(k: &str) -> anyhow::Result<String> {
    std::env::var(k).with_context(|| format!("{k} is not set: source <(e2e/cluster.sh env)"))
}

pub mod certs {
    //! Test certificates made with the `openssl` command, and Secrets holding them.

    use std::{path::Path, process::Command};

    use anyhow::ensure;
    use k8s_openapi::{ByteString, api::core::v1::Secret};

    /// SHA-256 fingerprint of a PEM certificate file.
    pub fn fingerprint_of_file(path: &Path) -> anyhow::Result<String> {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(path)
            .output()?;
        ensure!(
            out.status.success(),
            "openssl x509: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// SHA-256 fingerprint of the certificate served at `addr`, presenting the `<client>` pair and
    /// trusting `ca.crt` of `dir`.
    pub fn served_fingerprint(dir: &Path, addr: &str, client: &str) -> anyhow::Result<String> {
        let script = format!(
            "openssl s_client -connect {addr} -cert {client}.crt -key {client}.key -CAfile ca.crt </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        );
        let out = Command::new("sh")
            .current_dir(dir)
            .args(["-c", &script])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs `openssl ARGS` in `dir`.
    pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("openssl").current_dir(dir).args(args).output()?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The three leaves of `spec.tls` for `cluster` in `ns`, signed by the CA in `dir`: peer and
    /// server (`peer<tag>`, `server<tag>`, valid for every member name, the client Service and
    /// localhost) and the operator's client (`client<tag>`). A new `tag` makes new keys and
    /// certificates, as a renewal does.
    pub fn make_member_certs(dir: &Path, cluster: &str, ns: &str, tag: &str) -> anyhow::Result<()> {
        let member = format!(
            "subjectAltName=DNS:*.{cluster}.{ns}.svc,DNS:*.{cluster}.{ns}.svc.cluster.local,DNS:{cluster}-client.{ns}.svc,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
        );
        make_cert(dir, &format!("peer{tag}"), "etcd-peer", &member)?;
        make_cert(dir, &format!("server{tag}"), "etcd-server", &member)?;
        make_cert(
            dir,
            &format!("client{tag}"),
            "ouroboros-operator",
            "extendedKeyUsage=clientAuth\n",
        )
    }

    /// A CA (`ca.crt`, `ca.key`) in `dir`, valid for two days.
    pub fn make_ca(dir: &Path, cn: &str) -> anyhow::Result<()> {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                &format!("/CN={cn}"),
                "-days",
                "2",
            ],
        )
    }

    /// `<name>.crt` and `<name>.key` in `dir`, signed by its CA, with the X.509 extensions in `ext`
    /// (an openssl extension file's text: subjectAltName, extendedKeyUsage).
    pub fn make_cert(dir: &Path, name: &str, cn: &str, ext: &str) -> anyhow::Result<()> {
        let ext_file = format!("{name}.ext");
        std::fs::write(dir.join(&ext_file), ext)?;
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext_file,
                "-out",
                &crt,
            ],
        )
    }

    /// A `kubernetes.io/tls` Secret `name` with `ca.crt` and `<cert>.crt`/`<cert>.key` from `dir`.
    pub fn tls_secret(dir: &Path, name: &str, cert: &str) -> anyhow::Result<Secret> {
        let read = |f: &str| -> anyhow::Result<ByteString> { Ok(ByteString(std::fs::read(dir.join(f))?)) };
        Ok(Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    ("ca.crt", read("ca.crt")?),
                    ("tls.crt", read(&format!("{cert}.crt"))?),
                    ("tls.key", read(&format!("{cert}.key"))?),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            ),
            ..Default::default()
        })
    }
}

pub mod checkpoints {
    //! The self-hosted members' static-pod checkpoints, as the checkpointer writes them into the
    //! local cluster's kubelet static-pod directory (`ouroboros-checkpoint-<namespace>_<pod>.json`).

    use std::path::PathBuf;

    use anyhow::Context as _;

    use crate::env;

    /// Deploys `deploy/self-hosted` (the operator and the checkpointer), as self-hosted installs do.
    pub fn deploy() -> anyhow::Result<()> {
        let st = std::process::Command::new(crate::repo_root().join("e2e/scripts/deploy.sh"))
            .arg("self-hosted")
            .status()?;
        anyhow::ensure!(st.success(), "deploy.sh self-hosted failed");
        Ok(())
    }

    /// The checkpoint file of member pod `member` in `ns`.
    pub fn file(ns: &str, member: &str) -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(env("OUROBOROS_STATIC_POD_DIR")?)
            .join(format!("ouroboros-checkpoint-{ns}_{member}.json")))
    }

    /// Replaces a checkpoint file as an administrator would: through a hidden temporary file and a
    /// rename, so the kubelet never reads half a manifest.
    pub fn replace(path: &std::path::Path, content: &[u8]) -> anyhow::Result<()> {
        let dir = path.parent().context("a checkpoint path has a directory")?;
        let tmp = dir.join(".ouroboros-e2e-checkpoint.tmp");
        std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The member pods of `ns` that have a checkpoint file on node1, sorted.
    pub fn members(ns: &str) -> anyhow::Result<Vec<String>> {
        members_in(&env("OUROBOROS_STATIC_POD_DIR")?, ns)
    }

    /// The member pods of `ns` that have a checkpoint file in `node`'s static-pod directory, sorted.
    pub fn members_on(node: &str, ns: &str) -> anyhow::Result<Vec<String>> {
        members_in(&format!("{}/{node}", env("OUROBOROS_STATIC_POD_ROOT")?), ns)
    }

    fn members_in(dir: &str, ns: &str) -> anyhow::Result<Vec<String>> {
        let prefix = format!("ouroboros-checkpoint-{ns}_");
        let mut members: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {dir}"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| f.strip_prefix(&prefix)?.strip_suffix(".json").map(str::to_owned))
            .collect();
        members.sort();
        Ok(members)
    }
}

pub mod self_hosted {
    //! What the self-hosted tests share: the installer's handover to `kube-system/kube-etcd`, the API
    //! server moved onto it, and ConfigMaps written through the API server to find again after a
    //! disruption.

    use std::process::Command;

    use anyhow::{Context as _, ensure};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{Api, Client, api::PostParams};
    use ouroboros_crds::{EtcdCluster, EtcdClusterStatus};

    use crate::{cluster_script, env, repo_root};

    /// The namespace of the self-hosted EtcdCluster.
    pub const NS: &str = "kube-system";
    /// Its name.
    pub const NAME: &str = "kube-etcd";

    /// A ConfigMap `name` in `default` recording `value` as what was written.
    pub fn config_map(name: &str, value: &str) -> anyhow::Result<ConfigMap> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"},
            "data": {"written": value}
        }))?)
    }

    /// Writes the ConfigMap `name` in `default`, recording `value` as what was written.
    pub async fn write(client: &Client, name: &str, value: &str) -> anyhow::Result<()> {
        Api::<ConfigMap>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &config_map(name, value)?)
            .await
            .with_context(|| format!("writing ConfigMap {name}"))?;
        Ok(())
    }

    /// What the ConfigMap `name` in `default` says was written, or `None` when it does not exist.
    pub async fn written(client: &Client, name: &str) -> anyhow::Result<Option<String>> {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), "default")
            .get_opt(name)
            .await
            .with_context(|| format!("reading ConfigMap {name}"))?;
        Ok(cm.map(|cm| cm.data.unwrap_or_default().remove("written").unwrap_or_default()))
    }

    /// The status of the self-hosted EtcdCluster.
    pub async fn kube_etcd_status(client: &Client) -> anyhow::Result<EtcdClusterStatus> {
        Ok(Api::<EtcdCluster>::namespaced(client.clone(), NS)
            .get(NAME)
            .await?
            .status
            .unwrap_or_default())
    }

    /// Restarts the API server on `etcd_servers` (`e2e/cluster.sh use-etcd`, as an installer or an
    /// administrator does it) and returns a client for it.
    pub async fn api_server_on(etcd_servers: &str) -> anyhow::Result<Client> {
        cluster_script(&["use-etcd", etcd_servers])?;
        crate::client().await
    }

    /// A binary of this workspace's release build.
    pub fn release_binary(name: &str) -> std::path::PathBuf {
        let target =
            std::env::var("CARGO_TARGET_DIR").map_or_else(|_| repo_root().join("target"), Into::into);
        target.join("release").join(name)
    }

    /// The installer's step: `etcd-operator handover` from the boot etcd to a self-hosted EtcdCluster
    /// of three, with `extra` arguments; returns the `--etcd-servers` it prints for the API server.
    pub fn handover(extra: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(release_binary("etcd-operator"))
            .args(["handover", "--boot-endpoint", &env("OUROBOROS_BOOT_ETCD")?])
            .args(["--name", NAME, "--namespace", NS, "--size", "3"])
            .args(["--host-data-dir", &env("OUROBOROS_SELF_HOSTED_DATA")?])
            .args(["--client-service-ip", &env("OUROBOROS_SELF_HOSTED_ETCD_VIP")?])
            .args(["--timeout-seconds", "600"])
            .args(extra)
            .output()
            .context("running etcd-operator handover")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "handover failed ({}): {stderr}", out.status);
        let stdout = String::from_utf8(out.stdout)?;
        Ok(stdout
            .lines()
            .find_map(|l| l.strip_prefix("--etcd-servers="))
            .with_context(|| format!("no --etcd-servers line in {stdout:?}"))?
            .to_owned())
    }
}

pub mod sidecar_auth {
    //! A member's backup sidecar obeys the operator alone (docs/security.md): what every other caller
    //! that reaches the member's network gets.

    use std::{sync::Arc, time::Duration};

    use anyhow::{Context as _, bail, ensure};
    use bytes::Bytes;
    use http_body_util::Full;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::{Api, Client, ResourceExt};
    use ouroboros_crds::sidecar::{Job, JobDestination, PruneRequest, server_identity, server_secret_name};
    use ouroboros_operator::{
        sidecar::{SidecarAddr, client_config, exchange},
        sidecar_pki::{CA_SECRET, Ca, SERVER_LIFETIME, Usage},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{env, s3};

    fn secret_text(s: &Secret, key: &str) -> anyhow::Result<String> {
        let bytes = s
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .context(format!("Secret lacks {key}"))?;
        Ok(String::from_utf8(bytes.0.clone())?)
    }

    /// Where the sidecar of member pod `pod` listens: the pod IP, and 8090 or its block's port.
    async fn sidecar_of(c: &Client, ns: &str, cluster: &str, pod: &str) -> anyhow::Result<SidecarAddr> {
        let p = Api::<Pod>::namespaced(c.clone(), ns).get(pod).await?;
        let port = p
            .annotations()
            .get("etcd.ouroboros.dev/port-base")
            .and_then(|b| b.parse::<u16>().ok())
            .map_or(8090, |b| b + 3);
        let ip = p
            .status
            .and_then(|s| s.pod_ip)
            .context("the member pod has no IP")?;
        Ok(SidecarAddr {
            addr: format!("{ip}:{port}"),
            identity: server_identity(ns, cluster),
        })
    }

    /// Every caller but the operator is refused by the sidecar of `pod` (cluster `cluster` in `ns`),
    /// each asking for a backup of the member into the real store, with real credentials, under a
    /// prefix of its own; afterwards nothing is under that prefix. Refused: no client certificate
    /// (401), a certificate from the operator's CA for another name (403), the sidecars' own server
    /// certificate that every member pod mounts (handshake), and plain HTTP (no HTTP answer).
    pub async fn strangers_are_refused(c: &Client, ns: &str, cluster: &str, pod: &str) -> anyhow::Result<()> {
        let to = sidecar_of(c, ns, cluster, pod).await?;
        let ca = Ca::from_secret(
            &Api::<Secret>::namespaced(c.clone(), "ouroboros-system")
                .get(CA_SECRET)
                .await
                .context("reading the sidecar CA")?,
        )?;
        let own = Api::<Secret>::namespaced(c.clone(), ns)
            .get(&server_secret_name(cluster))
            .await
            .context("reading the cluster's sidecar Secret")?;
        let prefix = format!("e2e-stolen/{ns}/");
        let destination = JobDestination::S3 {
            bucket: s3::bucket()?,
            prefix: prefix.clone(),
            endpoint: Some(env("OUROBOROS_S3_ENDPOINT")?),
            region: "us-east-1".into(),
            force_path_style: true,
            credentials: Some((env("AWS_ACCESS_KEY_ID")?, env("AWS_SECRET_ACCESS_KEY")?, None)),
        };
        let job = serde_json::to_string(&Job {
            id: "stolen".into(),
            name: "stolen".into(),
            cluster_name: cluster.into(),
            cluster_uid: None,
            member: pod.into(),
            destination: destination.clone(),
            compression_level: 0,
            codec: Default::default(),
            encryption: None,
        })?;
        let prune = serde_json::to_string(&PruneRequest {
            destination,
            max_count: Some(1),
            max_age_seconds: None,
            keep_backups: Vec::new(),
        })?;
        let call = |config: rustls::ClientConfig, method: &'static str, path: &'static str, body: String| {
            let to = to.clone();
            async move {
                let req = http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                Ok::<_, anyhow::Error>(
                    exchange(Arc::new(config), &to, req, Duration::from_secs(5))
                        .await
                        .map(|(status, _)| status),
                )
            }
        };
        for (path, body) in [("/v1/backups", &job), ("/v1/prune", &prune)] {
            let status = call(client_config(ca.bundle(), None)?, "POST", path, body.clone()).await?;
            ensure!(
                matches!(status, Ok(401)),
                "POST {path} without a client certificate: {status:?}"
            );
            let other = ca.issue(
                "someone-else.example",
                Usage::Client,
                jiff::Timestamp::now(),
                SERVER_LIFETIME,
            )?;
            let config = client_config(ca.bundle(), Some((&other.cert_pem, &other.key_pem)))?;
            let status = call(config, "POST", path, body.clone()).await?;
            ensure!(
                matches!(status, Ok(403)),
                "POST {path} with another name's certificate: {status:?}"
            );
            let config = client_config(
                ca.bundle(),
                Some((&secret_text(&own, "tls.crt")?, &secret_text(&own, "tls.key")?)),
            )?;
            let status = call(config, "POST", path, body.clone()).await?;
            ensure!(
                status.is_err(),
                "POST {path} with the sidecars' own certificate was answered: {status:?}"
            );
        }
        let mut tcp = tokio::net::TcpStream::connect(&to.addr).await?;
        let request = format!(
            "POST /v1/backups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{job}",
            job.len()
        );
        let _ = tcp.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/") {
            bail!("plain HTTP was answered: {}", String::from_utf8_lossy(&answer));
        }
        // A backup that had started would have written its upload marker within seconds.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let keys = s3::keys(&prefix)?;
        ensure!(
            keys.is_empty(),
            "a refused caller's backup reached the store: {keys:?}"
        );
        eprintln!(
            "sidecar {} ({}): 401, 403, handshake and plain-HTTP refusals; nothing stored",
            to.addr, pod
        );
        Ok(())
    }
}

pub mod probe {
    //! A steady writer for latency benchmarks (`defrag-bench`, `put-probe`): it puts 1 KiB values back
    //! to back through one etcd-client connected to every endpoint (round robin, as most clients
    //! are) and records when each put started and how long it took. A put that takes longer than
    //! [`PROBE_TIMEOUT`] counts as that long. Windows of the run are read from the samples afterwards,
    //! so no window pays for a connection and a put that started in a window and finished after it
    //! is counted in it.

    use std::{
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::{Duration, Instant},
    };

    use etcd_client::Client;

    /// The longest a put is waited for; a slower one counts as this long.
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

    /// A running probe.
    #[derive(Debug)]
    pub struct Probe {
        stop: Arc<AtomicBool>,
        samples: Arc<Mutex<Vec<(Instant, Duration)>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Probe {
        /// Connects to `endpoints`, makes one put, and puts until stopped.
        pub async fn start(endpoints: &[String]) -> anyhow::Result<Probe> {
            let stop = Arc::new(AtomicBool::new(false));
            let samples = Arc::new(Mutex::new(Vec::new()));
            let mut c = Client::connect(endpoints.to_vec(), None).await?;
            c.put("/probe/warm", "1", None).await?;
            let (s, out) = (stop.clone(), samples.clone());
            let task = tokio::spawn(async move {
                let value = vec![b'p'; 1024];
                let mut i = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let put = c.put(format!("/probe/{}", i % 1000), value.clone(), None);
                    let took = match tokio::time::timeout(PROBE_TIMEOUT, put).await {
                        Ok(Ok(_)) => t.elapsed(),
                        _ => PROBE_TIMEOUT,
                    };
                    if let Ok(mut v) = out.lock() {
                        v.push((t, took));
                    }
                    i += 1;
                }
            });
            Ok(Probe { stop, samples, task })
        }

        /// Stops (the put in flight finishes or times out first), and returns every put: when it
        /// started and how long it took.
        pub async fn stop(self) -> Vec<(Instant, Duration)> {
            self.stop.store(true, Ordering::Relaxed);
            let _ = self.task.await;
            self.samples.lock().map(|v| v.clone()).unwrap_or_default()
        }
    }

    /// Put latency over a window: how many puts, their median, 99th percentile and maximum.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Latency {
        /// Puts.
        pub n: usize,
        /// Median.
        pub p50: Duration,
        /// 99th percentile.
        pub p99: Duration,
        /// Slowest.
        pub max: Duration,
    }

    impl Latency {
        /// Of these put durations.
        pub fn of(mut v: Vec<Duration>) -> Latency {
            v.sort();
            let at = |q: f64| {
                v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or_default()
            };
            Latency {
                n: v.len(),
                p50: at(0.5),
                p99: at(0.99),
                max: v.last().copied().unwrap_or_default(),
            }
        }

        /// Of the puts in `samples` (as [`Probe::stop`] returns them) that started from `from` to
        /// `to`, both included.
        pub fn within(samples: &[(Instant, Duration)], from: Instant, to: Instant) -> Latency {
            Latency::of(
                samples
                    .iter()
                    .filter(|(t, _)| *t >= from && *t <= to)
                    .map(|(_, d)| *d)
                    .collect(),
            )
        }
    }

    impl std::fmt::Display for Latency {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{} puts, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.n,
                self.p50.as_secs_f64() * 1e3,
                self.p99.as_secs_f64() * 1e3,
                self.max.as_secs_f64() * 1e3
            )
        }
    }
}
