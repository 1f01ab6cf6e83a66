//! Talking to etcd members. The operator reaches each member by its pod IP and keeps one client per
//! endpoint: etcd-client balances over every endpoint it is given, while status, move-leader and
//! per-member health must reach exactly one member.

use std::{collections::HashMap, sync::Arc, time::Duration};

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Certificate, Client, CompactionOptions, ConnectOptions, Identity,
    MemberAddOptions, TlsOptions,
};
use futures::future::BoxFuture;
use tokio::sync::Mutex;

/// How long one etcd request may take before the member counts as not answering.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one member's keyspace hash may take: it is read while observing, which must not hold a
/// reconcile for minutes; a member that does not hash in time is waited for.
pub const HASH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a compaction or a defragmentation may take: they rewrite the database, a few seconds per
/// GiB on ordinary disks, and the member serves nothing meanwhile.
pub const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No connection could be made.
    #[error("connecting to etcd at {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: etcd_client::Error,
    },
    /// The request failed.
    #[error("etcd {action} at {endpoint}: {source}")]
    Request {
        /// What was asked.
        action: &'static str,
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: etcd_client::Error,
    },
    /// The request did not finish in time.
    #[error("etcd {action} at {endpoint} timed out")]
    Timeout {
        /// What was asked.
        action: &'static str,
        /// The endpoint.
        endpoint: String,
    },
    /// No endpoint answered.
    #[error("no etcd endpoint answered {action} (tried {tried})")]
    NoEndpoint {
        /// What was asked.
        action: &'static str,
        /// How many endpoints were tried.
        tried: usize,
    },
}

impl EtcdError {
    /// etcd refused a promotion because the learner is not in sync yet.
    pub fn is_learner_not_ready(&self) -> bool {
        matches!(self, EtcdError::Request { source: etcd_client::Error::GRpcStatus(s), .. }
            if s.message().contains("not in sync") || s.message().contains("not ready"))
    }
}

/// The operator's client certificate for a TLS cluster (from `spec.tls.operatorClientSecret`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientTls {
    /// CA that signed the members' server certificates (`ca.crt`).
    pub ca: Vec<u8>,
    /// Client certificate (`tls.crt`).
    pub cert: Vec<u8>,
    /// Client key (`tls.key`).
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log key material.
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// How to reach one member: its URL (by pod IP), and for TLS the name its certificate carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `http(s)://<pod IP>:2379`.
    pub url: String,
    /// For TLS: the DNS name to verify the server certificate against.
    pub tls: Option<(String, Arc<ClientTls>)>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Endpoint {
    /// A plain-HTTP endpoint.
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: None,
        }
    }

    fn cache_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.tls.hash(&mut h);
        format!("{}#{:x}", self.url, h.finish())
    }
}

/// One member as the membership lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Member ID.
    pub id: u64,
    /// Name; empty until the member has started.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs; empty until started.
    pub client_urls: Vec<String>,
    /// Learner.
    pub is_learner: bool,
}

/// The membership and the cluster it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberList {
    /// Cluster ID.
    pub cluster_id: u64,
    /// Members.
    pub members: Vec<Member>,
}

/// One member's status answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This member's ID.
    pub member_id: u64,
    /// The leader it knows (0 when none).
    pub leader: u64,
    /// Raft index applied.
    pub raft_applied_index: u64,
    /// Database size in bytes.
    pub db_size: i64,
    /// Bytes of the database file in use (the rest is free pages a defragmentation gives back).
    pub db_size_in_use: i64,
    /// etcd version.
    pub version: String,
    /// Errors it reports (alarms).
    pub errors: Vec<String>,
    /// Learner.
    pub is_learner: bool,
    /// The store's revision as this member has applied it.
    pub revision: i64,
}

/// The etcd operations the operator performs; behind a trait so the controller can be exercised
/// without a cluster.
pub trait EtcdOps: Send + Sync {
    /// Lists members through the first endpoint that answers.
    fn member_list<'a>(&'a self, endpoints: &'a [Endpoint]) -> BoxFuture<'a, Result<MemberList, EtcdError>>;
    /// Status of the member at `endpoint`.
    fn status<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Status, EtcdError>>;
    /// Adds a learner; returns the new member's ID and the membership including it.
    fn add_learner<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        peer_url: &'a str,
    ) -> BoxFuture<'a, Result<(u64, Vec<Member>), EtcdError>>;
    /// Promotes a learner.
    fn promote<'a>(&'a self, endpoints: &'a [Endpoint], id: u64) -> BoxFuture<'a, Result<(), EtcdError>>;
    /// Removes a member.
    fn remove<'a>(&'a self, endpoints: &'a [Endpoint], id: u64) -> BoxFuture<'a, Result<(), EtcdError>>;
    /// Asks the leader at `leader_endpoint` to hand leadership to `to`.
    fn move_leader<'a>(
        &'a self,
        leader_endpoint: &'a Endpoint,
        to: u64,
    ) -> BoxFuture<'a, Result<(), EtcdError>>;
    /// Appends one raft entry that changes nothing (an alarm list goes through raft), so every
    /// member applies one more entry.
    fn propose_noop<'a>(&'a self, endpoints: &'a [Endpoint]) -> BoxFuture<'a, Result<(), EtcdError>>;
    /// Compacts the history up to `revision` and waits until every member has applied it. `false`
    /// when the history was already compacted at or past it.
    fn compact<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        revision: i64,
    ) -> BoxFuture<'a, Result<bool, EtcdError>>;
    /// The hash of the keyspace of the member at `endpoint` up to `revision`.
    fn hash_kv<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        revision: i64,
    ) -> BoxFuture<'a, Result<KvHash, EtcdError>>;
    /// Defragments the database of the member at `endpoint` alone.
    fn defragment<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<(), EtcdError>>;
    /// Disarms the `kind` alarm raised on member `member_id`.
    fn disarm<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        member_id: u64,
        kind: AlarmKind,
    ) -> BoxFuture<'a, Result<(), EtcdError>>;
}

/// The alarms the operator disarms, and the keyspace hashes that tell which copy is bad.
pub use crate::controllers::cluster::maintenance::{AlarmKind, KvHash};

/// etcd refused a compaction because the history is already compacted at or past that revision.
fn is_already_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

/// etcd-client connections, one per endpoint, made on first use and dropped when they fail.
#[derive(Default)]
pub struct EtcdClients {
    clients: Mutex<HashMap<String, Client>>,
}

impl std::fmt::Debug for EtcdClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClients").finish_non_exhaustive()
    }
}

impl EtcdClients {
    /// A new, empty cache.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    async fn client(&self, endpoint: &Endpoint, timeout: Duration) -> Result<Client, EtcdError> {
        // The request timeout is the connection's: maintenance gets a connection of its own.
        let key = format!("{}#{}", endpoint.cache_key(), timeout.as_secs());
        if let Some(c) = self.clients.lock().await.get(&key) {
            return Ok(c.clone());
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some((domain, tls)) = &endpoint.tls {
            // Members are dialled by pod IP; their certificates name them by DNS, so verify that name.
            opts = opts.with_tls(
                TlsOptions::new()
                    .domain_name(domain.clone())
                    .ca_certificate(Certificate::from_pem(&tls.ca))
                    .identity(Identity::from_pem(&tls.cert, &tls.key)),
            );
        }
        let client = Client::connect([endpoint.url.as_str()], Some(opts))
            .await
            .map_err(|source| EtcdError::Connect {
                endpoint: endpoint.url.clone(),
                source,
            })?;
        self.clients.lock().await.insert(key, client.clone());
        Ok(client)
    }

    async fn forget(&self, endpoint: &Endpoint, timeout: Duration) {
        let key = format!("{}#{}", endpoint.cache_key(), timeout.as_secs());
        self.clients.lock().await.remove(&key);
    }

    /// Runs `f` against one endpoint with a deadline; a failed connection is dropped from the cache.
    async fn call<T, F, Fut>(&self, action: &'static str, endpoint: &Endpoint, f: F) -> Result<T, EtcdError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_within(REQUEST_TIMEOUT, action, endpoint, f).await
    }

    /// [`Self::call`] with another deadline.
    async fn call_within<T, F, Fut>(
        &self,
        timeout: Duration,
        action: &'static str,
        endpoint: &Endpoint,
        f: F,
    ) -> Result<T, EtcdError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client(endpoint, timeout).await?;
        match tokio::time::timeout(timeout, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => {
                if matches!(source, etcd_client::Error::TransportError(_)) {
                    self.forget(endpoint, timeout).await;
                }
                Err(EtcdError::Request {
                    action,
                    endpoint: endpoint.url.clone(),
                    source,
                })
            }
            Err(_) => {
                self.forget(endpoint, timeout).await;
                Err(EtcdError::Timeout {
                    action,
                    endpoint: endpoint.url.clone(),
                })
            }
        }
    }

    /// Tries each endpoint in turn until one succeeds; returns the last error otherwise.
    async fn first<T, F, Fut>(
        &self,
        action: &'static str,
        endpoints: &[Endpoint],
        f: F,
    ) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for ep in endpoints {
            match self.call(action, ep, &f).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(EtcdError::NoEndpoint { action, tried: 0 }))
    }
}

fn members(ms: &[etcd_client::Member]) -> Vec<Member> {
    ms.iter()
        .map(|m| Member {
            id: m.id(),
            name: m.name().to_owned(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
        })
        .collect()
}

impl EtcdOps for EtcdClients {
    fn member_list<'a>(&'a self, endpoints: &'a [Endpoint]) -> BoxFuture<'a, Result<MemberList, EtcdError>> {
        Box::pin(async move {
            self.first("member list", endpoints, |mut c| async move {
                let r = c.member_list().await?;
                Ok(MemberList {
                    cluster_id: r.header().map(|h| h.cluster_id()).unwrap_or_default(),
                    members: members(r.members()),
                })
            })
            .await
        })
    }

    fn status<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Status, EtcdError>> {
        Box::pin(async move {
            self.call("status", endpoint, |mut c| async move {
                let r = c.status().await?;
                Ok(Status {
                    member_id: r.header().map(|h| h.member_id()).unwrap_or_default(),
                    leader: r.leader(),
                    raft_applied_index: r.raft_applied_index(),
                    db_size: r.db_size(),
                    db_size_in_use: r.raft_used_db_size(),
                    version: r.version().to_owned(),
                    errors: r.errors().to_vec(),
                    is_learner: r.is_learner(),
                    revision: r.header().map(|h| h.revision()).unwrap_or_default(),
                })
            })
            .await
        })
    }

    fn add_learner<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        peer_url: &'a str,
    ) -> BoxFuture<'a, Result<(u64, Vec<Member>), EtcdError>> {
        Box::pin(async move {
            self.first("member add", endpoints, |mut c| async move {
                let r = c
                    .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
                    .await?;
                Ok((
                    r.member().map(|m| m.id()).unwrap_or_default(),
                    members(r.member_list()),
                ))
            })
            .await
        })
    }

    fn promote<'a>(&'a self, endpoints: &'a [Endpoint], id: u64) -> BoxFuture<'a, Result<(), EtcdError>> {
        Box::pin(async move {
            self.first("member promote", endpoints, |mut c| async move {
                c.member_promote(id).await.map(drop)
            })
            .await
        })
    }

    fn remove<'a>(&'a self, endpoints: &'a [Endpoint], id: u64) -> BoxFuture<'a, Result<(), EtcdError>> {
        Box::pin(async move {
            self.first("member remove", endpoints, |mut c| async move {
                c.member_remove(id).await.map(drop)
            })
            .await
        })
    }

    fn move_leader<'a>(
        &'a self,
        leader_endpoint: &'a Endpoint,
        to: u64,
    ) -> BoxFuture<'a, Result<(), EtcdError>> {
        Box::pin(async move {
            self.call("move leader", leader_endpoint, |mut c| async move {
                c.move_leader(to).await.map(drop)
            })
            .await
        })
    }

    fn propose_noop<'a>(&'a self, endpoints: &'a [Endpoint]) -> BoxFuture<'a, Result<(), EtcdError>> {
        Box::pin(async move {
            self.first("alarm list", endpoints, |mut c| async move {
                c.alarm(AlarmAction::Get, AlarmType::None, None).await.map(drop)
            })
            .await
        })
    }

    fn compact<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        revision: i64,
    ) -> BoxFuture<'a, Result<bool, EtcdError>> {
        Box::pin(async move {
            let mut last = None;
            for ep in endpoints {
                let done = self
                    .call_within(MAINTENANCE_TIMEOUT, "compact", ep, |mut c| async move {
                        match c
                            .compact(revision, Some(CompactionOptions::new().with_physical()))
                            .await
                        {
                            Ok(_) => Ok(true),
                            Err(e) if is_already_compacted(&e) => Ok(false),
                            Err(e) => Err(e),
                        }
                    })
                    .await;
                match done {
                    Ok(v) => return Ok(v),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or(EtcdError::NoEndpoint {
                action: "compact",
                tried: 0,
            }))
        })
    }

    fn hash_kv<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        revision: i64,
    ) -> BoxFuture<'a, Result<KvHash, EtcdError>> {
        Box::pin(async move {
            self.call_within(HASH_TIMEOUT, "hash kv", endpoint, |mut c| async move {
                let r = c.hash_kv(revision).await?;
                Ok(KvHash {
                    hash: r.hash(),
                    compact_revision: r.compact_version(),
                })
            })
            .await
        })
    }

    fn defragment<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<(), EtcdError>> {
        Box::pin(async move {
            self.call_within(MAINTENANCE_TIMEOUT, "defragment", endpoint, |mut c| async move {
                c.defragment().await.map(drop)
            })
            .await
        })
    }

    fn disarm<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        member_id: u64,
        kind: AlarmKind,
    ) -> BoxFuture<'a, Result<(), EtcdError>> {
        let alarm = match kind {
            AlarmKind::NoSpace => AlarmType::Nospace,
            AlarmKind::Corrupt => AlarmType::Corrupt,
        };
        Box::pin(async move {
            self.first("alarm disarm", endpoints, |mut c| async move {
                let mut options = AlarmOptions::new();
                options.with_member(member_id);
                c.alarm(AlarmAction::Deactivate, alarm, Some(options))
                    .await
                    .map(drop)
            })
            .await
        })
    }
}
