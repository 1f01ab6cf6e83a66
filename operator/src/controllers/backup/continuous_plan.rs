//! Continuous backups, the decision (pure): which member's sidecar follows the history after the
//! newest full backup, when to ask it again, when a gap closes the chain, and what the cluster's
//! `status.continuous` and `BackupHealthy` say about it.
//!
//! One sidecar follows at a time: the choice is recorded in `status.continuous.member` and kept
//! while that member stays a candidate, so a pass never asks a second one unless the first is
//! gone. Should two ever follow (an operator that died between asking and recording), both write
//! the same history: their chunks overlap, which the chain walk accepts, and never conflict.

use std::time::Duration;

use jiff::Timestamp;
use ouroboros_crds::{
    BackupPhase, ContinuousBackup, ContinuousStatus,
    sidecar::{FollowRequest, FollowState, JobDestination},
};

use crate::sidecar::SidecarAddr;

/// The period when `spec.backup.continuous.period` is not set.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
/// The chunk bound when `spec.backup.continuous.maxBytes` is not set.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// A recovery point older than this many periods makes `BackupHealthy` False.
pub const BEHIND_AFTER_PERIODS: u32 = 3;
/// Slack added to that, so that a pass that lands just after a period does not flap it.
const BEHIND_SLACK: Duration = Duration::from_secs(30);

/// `spec.backup.continuous`, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How often chunks are stored.
    pub period: Duration,
    /// The chunk bound.
    pub max_bytes: u64,
}

/// Reads `spec.backup.continuous`; the error names the field and the fix.
pub fn policy(spec: &ContinuousBackup) -> Result<Policy, String> {
    let period = match spec.period.as_deref() {
        None => DEFAULT_PERIOD,
        Some(p) => ouroboros_crds::retention::parse_age(p)
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                format!(
                    "spec.backup.continuous.period {p:?} is not a duration of at least 1s such as 10s or 1m"
                )
            })?,
    };
    let max_bytes = spec
        .max_bytes
        .map_or(Ok(DEFAULT_MAX_BYTES), u64::try_from)
        .map_err(|_| "spec.backup.continuous.maxBytes must be positive".to_owned())?;
    Ok(Policy { period, max_bytes })
}

/// The full backup a chain extends: the cluster's newest that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// EtcdBackup name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// When it completed.
    pub completed: Option<Timestamp>,
}

/// A member whose sidecar may follow, best first (followers before the leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Member name.
    pub member: String,
    /// Its sidecar.
    pub addr: SidecarAddr,
}

/// What the recorded member's sidecar said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// It did not answer.
    Unreachable(String),
    /// It has followed nothing since it started (it restarted).
    Nothing,
    /// Its follow, running or ended.
    State(Box<FollowState>),
}

/// The full backup that closes a chain at a gap, once created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// EtcdBackup name.
    pub name: String,
    /// Its phase.
    pub phase: Option<BackupPhase>,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// `spec.backup.continuous`, read; `None` when off.
    pub policy: Option<Result<Policy, String>>,
    /// The newest full backup that succeeded.
    pub base: Option<Base>,
    /// Where its chain goes, or why sidecars cannot write there.
    pub destination: Option<Result<JobDestination, String>>,
    /// `status.continuous` as recorded.
    pub recorded: Option<ContinuousStatus>,
    /// Members that may follow, best first.
    pub candidates: Vec<Candidate>,
    /// What the recorded member's sidecar said, when it is a candidate.
    pub seen: Option<Seen>,
    /// Other candidates whose sidecar runs a follow (one replaced while it could not be reached,
    /// or asked by an operator that died before recording it): they are ended.
    pub running_elsewhere: Vec<Candidate>,
    /// The backup closing the recorded chain, if one was created.
    pub closing: Option<Closing>,
}

/// The one thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Continuous backups are off: end the recorded member's follow, if any, and clear the status.
    Off {
        /// The member whose sidecar followed.
        end_on: Option<Candidate>,
    },
    /// Nothing can be done now; the reason goes into `status.continuous.message`.
    Wait(String),
    /// Ask `to` to follow `request`, ending `end_on`'s follow first (a new choice).
    Follow {
        /// The chosen member.
        to: Candidate,
        /// What it follows.
        request: Box<FollowRequest>,
        /// The member that followed before, when it is still reachable.
        end_on: Option<Candidate>,
    },
    /// The follow runs: record where it stands.
    Record(Box<FollowState>),
    /// The chain met a gap in etcd's history: create the full backup `name` that starts the next.
    CloseChain {
        /// EtcdBackup name.
        name: String,
        /// The gap, as the sidecar reported it.
        why: String,
    },
}

/// The name of the full backup that closes `cluster`'s chain of `base`: one per chain, so asking
/// again is harmless.
pub fn closing_name(cluster: &str, base: &str) -> String {
    use sha2::Digest as _;
    let name = format!("{cluster}-chain-after-{base}");
    // Names are at most 253 characters; a shorter one, unique by a hash of the long one, otherwise.
    if name.len() <= 253 {
        return name;
    }
    let digest: String = sha2::Sha256::digest(name.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-chain-{digest}", &cluster[..cluster.len().min(200)])
}

/// Decides the next step.
pub fn next_step(v: &View, cluster: &str) -> Step {
    let recorded_member = v
        .recorded
        .as_ref()
        .and_then(|r| r.member.clone())
        .and_then(|m| v.candidates.iter().find(|c| c.member == m).cloned());
    let Some(policy) = &v.policy else {
        return Step::Off {
            end_on: recorded_member,
        };
    };
    let policy = match policy {
        Ok(p) => *p,
        Err(why) => return Step::Wait(why.clone()),
    };
    let Some(base) = &v.base else {
        return Step::Wait("continuous backups start after the first full backup succeeds".into());
    };
    let destination = match &v.destination {
        Some(Ok(d)) => d.clone(),
        Some(Err(why)) => return Step::Wait(why.clone()),
        None => {
            return Step::Wait(format!(
                "the destination of backup {} is not known yet",
                base.name
            ));
        }
    };
    let request = FollowRequest {
        backup: base.name.clone(),
        stored: base.revision,
        period_seconds: policy.period.as_secs().max(1),
        max_bytes: policy.max_bytes,
        destination,
    };
    let same_chain = v.recorded.as_ref().is_some_and(|r| r.backup == base.name);
    // A chain closed at a gap stays closed until a newer full backup starts the next one.
    if same_chain && let Some(closing) = &v.closing {
        return Step::Wait(match closing.phase {
            Some(BackupPhase::Failed) => format!(
                "the chain after backup {} is closed at a gap in etcd's history and backup {} that was \
                 to start the next one failed (its status says why); the next full backup starts it",
                base.name, closing.name
            ),
            _ => format!(
                "the chain after backup {} is closed at a gap in etcd's history; backup {} starts the next one",
                base.name, closing.name
            ),
        });
    }
    let follow = |to: &Candidate, end_on: Option<Candidate>| Step::Follow {
        to: to.clone(),
        request: Box::new(request.clone()),
        end_on: end_on.filter(|e| e.member != to.member),
    };
    let Some(current) = recorded_member.clone() else {
        // A new choice: the best candidate.
        return match v.candidates.first() {
            Some(best) => follow(best, None),
            None => Step::Wait("no healthy member whose sidecar can follow the history".into()),
        };
    };
    match &v.seen {
        None | Some(Seen::Nothing) => follow(&current, None),
        Some(Seen::Unreachable(why)) => match v.candidates.iter().find(|c| c.member != current.member) {
            // Another member follows; the unreachable one is asked to end when it answers again.
            Some(other) => follow(other, Some(current)),
            None => Step::Wait(format!("the sidecar of {} did not answer: {why}", current.member)),
        },
        Some(Seen::State(s)) if s.request != request => follow(&current, None),
        Some(Seen::State(s)) => match &s.ended {
            None => Step::Record(s.clone()),
            Some(why) if s.gap => Step::CloseChain {
                name: closing_name(cluster, &base.name),
                why: why.clone(),
            },
            // Ended for a passing reason (a connection, the store): follow again from what is stored.
            Some(_) => follow(&current, None),
        },
    }
}

/// The follows to end besides the step's own: every other running one, so that one sidecar
/// alone extends the chain.
pub fn strays(v: &View, step: &Step) -> Vec<Candidate> {
    let kept = match step {
        Step::Follow { to, .. } => Some(to.member.clone()),
        Step::Record(_) | Step::Wait(_) | Step::CloseChain { .. } => {
            v.recorded.as_ref().and_then(|r| r.member.clone())
        }
        Step::Off { .. } => None,
    };
    v.running_elsewhere
        .iter()
        .filter(|c| Some(&c.member) != kept.as_ref())
        .cloned()
        .collect()
}

/// `status.continuous` after `step`.
pub fn status_after(v: &View, step: &Step) -> Option<ContinuousStatus> {
    let base = v.base.as_ref();
    let previous = v.recorded.clone();
    let same_chain = |r: &ContinuousStatus| base.is_some_and(|b| b.name == r.backup);
    let fresh = || {
        let base = base?;
        Some(ContinuousStatus {
            backup: base.name.clone(),
            base_revision: i64::try_from(base.revision).unwrap_or(i64::MAX),
            stored_revision: i64::try_from(base.revision).unwrap_or(i64::MAX),
            // A chain that moved to a newer backup keeps what the old one reached: it is still stored.
            recovery_point: previous.as_ref().and_then(|p| p.recovery_point.clone()),
            ..Default::default()
        })
    };
    let current = || match &previous {
        Some(p) if same_chain(p) => Some(p.clone()),
        _ => fresh(),
    };
    match step {
        Step::Off { .. } => None,
        Step::Wait(why) => current()
            .map(|s| ContinuousStatus {
                message: Some(why.clone()),
                ..s
            })
            .or_else(|| {
                Some(ContinuousStatus {
                    message: Some(why.clone()),
                    ..previous.clone().unwrap_or_default()
                })
            }),
        Step::Follow { to, .. } => current().map(|s| ContinuousStatus {
            member: Some(to.member.clone()),
            message: None,
            ..s
        }),
        Step::Record(state) => current().map(|s| {
            let p = state.position;
            let point = Timestamp::from_millisecond(p.recovery_point_ms)
                .ok()
                .filter(|_| p.recovery_point_ms > 0);
            let recorded = s
                .recovery_point
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok());
            ContinuousStatus {
                stored_revision: s
                    .stored_revision
                    .max(i64::try_from(p.stored_revision).unwrap_or(i64::MAX)),
                recovery_point: point.max(recorded).map(|t| t.to_string()),
                chunks: i64::try_from(p.chunks).unwrap_or(i64::MAX),
                message: None,
                ..s
            }
        }),
        Step::CloseChain { name, why } => current().map(|s| ContinuousStatus {
            member: None,
            message: Some(format!(
                "{why}; the chain is closed and backup {name} starts the next one"
            )),
            ..s
        }),
    }
}

/// Why continuous backups make `BackupHealthy` False, if they do: the recovery point is older
/// than [`BEHIND_AFTER_PERIODS`] periods (or there is none that long after the base backup).
pub fn behind(policy: &Policy, status: &ContinuousStatus, base: &Base, now: Timestamp) -> Option<String> {
    let point = status
        .recovery_point
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or(base.completed)?;
    let limit = policy.period * BEHIND_AFTER_PERIODS + BEHIND_SLACK;
    let age = now.duration_since(point);
    let age = Duration::try_from(age).unwrap_or_default();
    (age > limit).then(|| {
        let mut why = format!(
            "continuous backups: the recovery point is {}s old (every write before {point} is stored), more than {} periods of {}s",
            age.as_secs(),
            BEHIND_AFTER_PERIODS,
            policy.period.as_secs()
        );
        if let Some(m) = &status.message {
            why.push_str(&format!(": {m}"));
        }
        why
    })
}
