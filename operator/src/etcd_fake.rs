//! A fake [`EtcdOps`] for unit tests: members that answer or not, with the membership and status each
//! gives, and a record of every call, so the code around etcd (observe, apply) is tested below the
//! e2e tier. The real client is tested against real etcd processes (`tests/etcd_real.rs`).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use futures::future::BoxFuture;

use crate::etcd::{Endpoint, EtcdError, EtcdOps, Member, MemberList, Status};

/// Scripted etcd: `answering` endpoints (by URL) give `list` and their `statuses`; the others time
/// out.
#[derive(Debug, Default)]
pub struct FakeEtcd {
    /// The membership every answering member reports.
    pub list: Option<MemberList>,
    /// URLs that answer.
    pub answering: BTreeSet<String>,
    /// Each answering member's status, by URL.
    pub statuses: BTreeMap<String, Status>,
    /// Every call, in order: `"<call> <url or urls>"`.
    pub calls: Mutex<Vec<String>>,
}

impl FakeEtcd {
    fn record(&self, call: &str, endpoints: &[&Endpoint]) {
        let urls: Vec<&str> = endpoints.iter().map(|e| e.url.as_str()).collect();
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(format!("{call} {}", urls.join(",")));
        }
    }

    fn timeout(action: &'static str, endpoint: &str) -> EtcdError {
        EtcdError::Timeout {
            action,
            endpoint: endpoint.to_owned(),
        }
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl EtcdOps for FakeEtcd {
    fn member_list<'a>(&'a self, endpoints: &'a [Endpoint]) -> BoxFuture<'a, Result<MemberList, EtcdError>> {
        self.record("member_list", &endpoints.iter().collect::<Vec<_>>());
        let answer = endpoints
            .iter()
            .find(|e| self.answering.contains(&e.url))
            .and_then(|_| self.list.clone())
            .ok_or_else(|| Self::timeout("member list", "every endpoint"));
        Box::pin(async move { answer })
    }

    fn status<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Status, EtcdError>> {
        self.record("status", &[endpoint]);
        let answer = self
            .answering
            .contains(&endpoint.url)
            .then(|| self.statuses.get(&endpoint.url).cloned())
            .flatten()
            .ok_or_else(|| Self::timeout("status", &endpoint.url));
        Box::pin(async move { answer })
    }

    fn add_learner<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        peer_url: &'a str,
    ) -> BoxFuture<'a, Result<(u64, Vec<Member>), EtcdError>> {
        self.record(
            &format!("add_learner {peer_url}"),
            &endpoints.iter().collect::<Vec<_>>(),
        );
        Box::pin(async move { Err(Self::timeout("member add", "fake")) })
    }

    fn promote<'a>(&'a self, endpoints: &'a [Endpoint], id: u64) -> BoxFuture<'a, Result<(), EtcdError>> {
        self.record(&format!("promote {id:x}"), &endpoints.iter().collect::<Vec<_>>());
        Box::pin(async move { Err(Self::timeout("member promote", "fake")) })
    }

    fn remove<'a>(&'a self, endpoints: &'a [Endpoint], id: u64) -> BoxFuture<'a, Result<(), EtcdError>> {
        self.record(&format!("remove {id:x}"), &endpoints.iter().collect::<Vec<_>>());
        Box::pin(async move { Err(Self::timeout("member remove", "fake")) })
    }

    fn move_leader<'a>(
        &'a self,
        leader_endpoint: &'a Endpoint,
        to: u64,
    ) -> BoxFuture<'a, Result<(), EtcdError>> {
        self.record(&format!("move_leader {to:x}"), &[leader_endpoint]);
        Box::pin(async move { Err(Self::timeout("move leader", "fake")) })
    }

    fn propose_noop<'a>(&'a self, endpoints: &'a [Endpoint]) -> BoxFuture<'a, Result<(), EtcdError>> {
        self.record("propose_noop", &endpoints.iter().collect::<Vec<_>>());
        Box::pin(async move { Ok(()) })
    }

    fn compact<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        revision: i64,
    ) -> BoxFuture<'a, Result<bool, EtcdError>> {
        self.record(
            &format!("compact {revision}"),
            &endpoints.iter().collect::<Vec<_>>(),
        );
        Box::pin(async move { Ok(true) })
    }

    fn hash_kv<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        revision: i64,
    ) -> BoxFuture<'a, Result<crate::etcd::KvHash, EtcdError>> {
        self.record(&format!("hash_kv {revision}"), &[endpoint]);
        let answer = self
            .answering
            .contains(&endpoint.url)
            .then_some(crate::etcd::KvHash {
                hash: 1,
                compact_revision: 0,
            })
            .ok_or_else(|| Self::timeout("hash kv", &endpoint.url));
        Box::pin(async move { answer })
    }

    fn defragment<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<(), EtcdError>> {
        self.record("defragment", &[endpoint]);
        Box::pin(async move { Ok(()) })
    }

    fn disarm<'a>(
        &'a self,
        endpoints: &'a [Endpoint],
        member_id: u64,
        kind: crate::etcd::AlarmKind,
    ) -> BoxFuture<'a, Result<(), EtcdError>> {
        self.record(
            &format!("disarm {member_id:x} {}", kind.etcd_name()),
            &endpoints.iter().collect::<Vec<_>>(),
        );
        Box::pin(async move { Ok(()) })
    }
}
