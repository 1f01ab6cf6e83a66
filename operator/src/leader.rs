//! Leader election on a `coordination.k8s.io` Lease, so that of several operator replicas exactly one
//! changes clusters. The others wait, ready to take over.
//!
//! A leader cut off from the API server cannot hear that it lost the Lease, so it must stop by its
//! own clock: it gives up [`RENEW_DEADLINE`] after the last renewal it knows succeeded, which is
//! before any standby may take over ([`LEASE_SECONDS`] after it last saw the Lease change, by its own
//! clock). Every write is conditional on the `resourceVersion` it was decided on, so a leader coming
//! back from a partition can never overwrite the Lease of the one that replaced it. (The library used
//! before renewed without that condition and heard of its loss only from the API server: on the
//! three-node cluster a partitioned leader went on acting for seconds after the heal, beside the new
//! one, and took the Lease back.)

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::Lease,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::http::Readiness;

/// The Lease's name.
pub const LEASE_NAME: &str = "ouroboros-etcd-operator";
/// Seconds a Lease is valid after its last renewal: a standby takes it over once it has seen it
/// unchanged this long.
pub const LEASE_SECONDS: i32 = 15;
/// A leader that has not renewed for this long stops, whether or not it heard of a successor (as
/// client-go's renew deadline, shorter than the Lease by more than one renewal round).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(8);
/// How often a leader renews and a standby looks; also the bound on each API call.
const RETRY: Duration = Duration::from_secs(2);

/// Why leader election could not run.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or written.
    #[error("leader election on Lease {namespace}/{LEASE_NAME}: {source}")]
    Call {
        /// The Lease's namespace.
        namespace: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
}

/// Whether `me` may take a Lease held by `holder` that it has seen unchanged for `unchanged_for`:
/// when nobody holds it, when it is its own (a restarted replica keeps its pod's name), or when its
/// holder has not renewed it within its duration.
pub fn may_take(me: &str, holder: Option<&str>, unchanged_for: Duration, duration: Duration) -> bool {
    match holder {
        None | Some("") => true,
        Some(h) if h == me => true,
        Some(_) => unchanged_for >= duration,
    }
}

/// Whether a leader whose last known renewal was `since_renewal` ago may still act.
pub fn still_leading(since_renewal: Duration) -> bool {
    since_renewal < RENEW_DEADLINE
}

/// This replica's hold on the Lease.
#[derive(Debug)]
pub struct Leadership {
    leading: tokio::sync::watch::Receiver<bool>,
    release: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves if the Lease is lost (not renewed in time, or taken).
    pub async fn lost(&mut self) {
        while *self.leading.borrow_and_update() {
            if self.leading.changed().await.is_err() {
                return;
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once instead of after it expires.
    pub async fn release(self) {
        let _ = self.release.send(());
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the lease task failed; the Lease will expire");
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One look at the Lease by a standby: takes it when [`may_take`] says so, and returns the version
/// it now holds. `seen` is the version last seen and when it was first seen, by this clock.
async fn try_acquire(
    api: &Api<Lease>,
    me: &str,
    seen: &mut Option<(String, Instant)>,
) -> Result<Option<String>, kube::Error> {
    let looked = Instant::now();
    let Some(lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some(me.to_owned()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(l) => Ok(l.resource_version()),
            Err(e) if conflict(&e) => Ok(None),
            Err(e) => Err(e),
        };
    };
    let version = lease.resource_version().unwrap_or_default();
    let unchanged_for = match seen {
        Some((v, since)) if *v == version => looked.duration_since(*since),
        _ => {
            *seen = Some((version.clone(), looked));
            Duration::ZERO
        }
    };
    let spec = lease.spec.unwrap_or_default();
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS).max(1) as u64);
    let holder = spec.holder_identity.as_deref();
    if !may_take(me, holder, unchanged_for, duration) {
        return Ok(None);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != Some(me));
    let patch = json!({
        "metadata": {"resourceVersion": version},
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": LEASE_SECONDS,
            "acquireTime": now(),
            "renewTime": now(),
            "leaseTransitions": transitions,
        }
    });
    match api
        .patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(l) => Ok(l.resource_version()),
        Err(e) if conflict(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a leader's renewal found.
enum Renewal {
    /// Renewed (or found renewed by a write whose answer was lost): the version now held.
    Held(String),
    /// Someone else holds it now.
    Taken(Option<String>),
}

async fn renew(api: &Api<Lease>, me: &str, version: &str) -> Result<Renewal, kube::Error> {
    let patch = json!({
        "metadata": {"resourceVersion": version},
        "spec": {"holderIdentity": me, "renewTime": now()}
    });
    match api
        .patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(l) => Ok(Renewal::Held(l.resource_version().unwrap_or_default())),
        Err(e) if conflict(&e) => {
            let lease = api.get(LEASE_NAME).await?;
            let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
            if holder.as_deref() == Some(me) {
                // The Lease moved on under our own name (an earlier renewal whose answer timed out);
                // it is still ours, renewed next round at this version.
                Ok(Renewal::Held(lease.resource_version().unwrap_or_default()))
            } else {
                Ok(Renewal::Taken(holder))
            }
        }
        Err(e) => Err(e),
    }
}

/// Renews every [`RETRY`] until released or lost; says `false` on `leading` when lost.
async fn hold(
    api: Api<Lease>,
    me: String,
    mut version: String,
    leading: tokio::sync::watch::Sender<bool>,
    mut release: tokio::sync::oneshot::Receiver<()>,
) {
    // The last renewal known to have been written happened after its request was sent.
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = &mut release => {
                let patch = json!({
                    "metadata": {"resourceVersion": version},
                    "spec": {"holderIdentity": null, "renewTime": now()}
                });
                match tokio::time::timeout(RETRY, api.patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&patch))).await {
                    Ok(Ok(_)) => tracing::info!("released leadership"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease failed; it will expire"),
                    Err(_) => tracing::warn!("releasing the Lease timed out; it will expire"),
                }
                return;
            }
            () = tokio::time::sleep(RETRY) => {}
        }
        let sent = Instant::now();
        match tokio::time::timeout(RETRY, renew(&api, &me, &version)).await {
            Ok(Ok(Renewal::Held(v))) => {
                version = v;
                renewed = sent;
            }
            Ok(Ok(Renewal::Taken(holder))) => {
                tracing::error!(holder = ?holder, "the Lease was taken over");
                let _ = leading.send(false);
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the Lease failed"),
            Err(_) => tracing::warn!("renewing the Lease timed out"),
        }
        if !still_leading(renewed.elapsed()) {
            tracing::error!(
                deadline = ?RENEW_DEADLINE,
                "the Lease was not renewed in time: a standby may take it over soon"
            );
            let _ = leading.send(false);
            return;
        }
    }
}

/// Resolves once this replica holds the Lease.
pub async fn wait_for_leadership(
    client: Client,
    namespace: &str,
    identity: &str,
    readiness: &Readiness,
) -> Result<Leadership, LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    readiness.set_standby(true);
    tracing::info!(identity, namespace, lease = LEASE_NAME, "waiting for leadership");
    let mut seen = None;
    let mut failures = 0u32;
    let version = loop {
        match tokio::time::timeout(RETRY, try_acquire(&api, identity, &mut seen)).await {
            Ok(Ok(Some(version))) => break version,
            Ok(Ok(None)) => failures = 0,
            Ok(Err(e)) => {
                failures += 1;
                // A Lease this replica may not read or write (RBAC, a missing namespace) will not
                // fix itself: say so and stop rather than stand by for ever.
                if matches!(&e, kube::Error::Api(s) if s.code == 403 || s.code == 404) || failures > 30 {
                    return Err(LeaderError::Call {
                        namespace: namespace.to_owned(),
                        source: e,
                    });
                }
                tracing::warn!(error = %e, "reading the Lease failed");
            }
            Err(_) => tracing::warn!("reading the Lease timed out"),
        }
        tokio::time::sleep(RETRY).await;
    };
    readiness.set_standby(false);
    tracing::info!(identity, "acquired leadership");
    let (leading_tx, leading) = tokio::sync::watch::channel(true);
    let (release, release_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(hold(api, identity.to_owned(), version, leading_tx, release_rx));
    Ok(Leadership {
        leading,
        release,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(LEASE_SECONDS as u64);

    #[test]
    fn a_standby_takes_a_lease_only_when_free_its_own_or_not_renewed_within_its_duration() {
        assert!(may_take("b", None, Duration::ZERO, D));
        assert!(may_take("b", Some(""), Duration::ZERO, D));
        assert!(
            may_take("b", Some("b"), Duration::ZERO, D),
            "a restarted replica keeps its name"
        );
        assert!(!may_take("b", Some("a"), D - Duration::from_millis(1), D));
        assert!(may_take("b", Some("a"), D, D));
    }

    #[test]
    fn a_leader_stops_before_any_standby_may_take_over() {
        assert!(still_leading(Duration::ZERO));
        assert!(still_leading(RENEW_DEADLINE - Duration::from_millis(1)));
        assert!(!still_leading(RENEW_DEADLINE));
        // The leader's last renewal was written after it was sent, and a standby saw it no earlier
        // than it was written. The leader checks its deadline after each round (a sleep and a call,
        // each bounded by RETRY), so it stops at most that much past it: still this long before a
        // standby may take over, even when every renewal from then on is lost.
        let margin = D.checked_sub(RENEW_DEADLINE + 2 * RETRY);
        assert!(
            margin.is_some_and(|m| m >= Duration::from_secs(2)),
            "margin {margin:?}"
        );
    }
}
