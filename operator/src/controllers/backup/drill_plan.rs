//! What a backup's restore drill does next, from what was observed: pure, tested case by case. A
//! drill starts once no backup of its cluster streams and no member is being defragmented, holding
//! the cluster's backup slot (so no backup starts under it); the one Job of an attempt is read until a
//! container of it ends; what ended, and how, is the verdict. An attempt that cannot decide (the
//! store unreachable, out of time or memory) is retried a few times, then the drill is
//! `Inconclusive`: neither proof nor disproof, never a reason to act on the backup.

use std::time::Duration;

use super::plan::Slot;
use ouroboros_crds::{
    DrillPhase,
    sidecar::{DrillOutcome, DrillVerdict},
};

/// Attempts before a drill that cannot decide stays `Inconclusive`.
pub const MAX_ATTEMPTS: u32 = 3;

/// How long one attempt may take: five minutes plus five per started GiB of the snapshot (the
/// download is most of it).
pub fn drill_timeout(raw_size: i64) -> Duration {
    let gib = u64::try_from(raw_size).unwrap_or(0).div_ceil(1 << 30);
    Duration::from_secs(300 + 300 * gib)
}

/// How a container of the drill's pod ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    /// Its exit code.
    pub exit_code: i32,
    /// The kubelet's reason (`OOMKilled`, `Error`, `Completed`).
    pub reason: Option<String>,
    /// Its termination message.
    pub message: Option<String>,
}

/// The drill pod, as far as the verdict goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrillPod {
    /// The fetch container, once it ended.
    pub fetch: Option<Ended>,
    /// The etcdutl restore, once it ended.
    pub restore: Option<Ended>,
    /// The check, once it ended.
    pub check: Option<Ended>,
    /// etcd's last exit, while it restarts.
    pub etcd_last: Option<Ended>,
    /// The pod failed as a whole (evicted, past its deadline): why.
    pub failed: Option<String>,
    /// The scheduler has found no node for the pod for [`UNSCHEDULABLE_GRACE`]: its words.
    pub unschedulable: Option<String>,
}

/// How long a drill pod may wait for a node before the attempt counts as undecided: it holds the
/// cluster's backup slot meanwhile, and backups wait behind it.
pub const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(60);

/// The attempt's Job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrillJob {
    /// Its pod, once there is one.
    pub pod: Option<DrillPod>,
    /// The Job's `Failed` condition's message (its pod may be gone).
    pub failed: Option<String>,
}

/// What the next drill step looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillView {
    /// Where the drill is: `Pending` (no attempt under way) or `Running`.
    pub phase: DrillPhase,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why no drill can be made now or ever (its cluster is gone, the version does not parse).
    pub cannot_build: Option<String>,
    /// A backup of the cluster that has not finished, another backup's drill that runs, or a
    /// newer backup's drill that waits: what a drill not yet holding the slot lets go first.
    pub busy: Option<String>,
    /// A member of the cluster that may be defragmenting now: a drill waits for it even holding
    /// the slot (a defragmentation does not take the slot; it yields to a drill that holds it).
    pub defragmenting: Option<String>,
    /// The cluster's backup slot, which the drill holds while it runs (`None` once the cluster is
    /// gone, when `cannot_build` says so).
    pub slot: Option<Slot>,
    /// The Job of the attempt under way, when it exists.
    pub job: Option<DrillJob>,
    /// The attempt under way is past its time.
    pub overdue: bool,
}

/// The one step a drill pass takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrillStep {
    /// Nothing to do now; look again after this many seconds.
    Wait(String, u64),
    /// Take the cluster's backup slot, conditional on the cluster's `resourceVersion`, so no backup
    /// starts while the drill runs; a drill that loses the race waits at its next look.
    TakeSlot {
        /// The `resourceVersion` the slot was seen free at.
        cluster_version: String,
    },
    /// Start the next attempt (the drill holds the slot).
    Start,
    /// The attempt could not decide and attempts are left: end it, and start again later.
    Retry(String),
    /// The drill's last word.
    Conclude(DrillVerdict),
}

fn verdict(outcome: DrillOutcome, reason: String) -> DrillVerdict {
    DrillVerdict { outcome, reason }
}

fn said(e: &Ended) -> String {
    e.message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map_or_else(
            || {
                format!(
                    "exit code {} ({})",
                    e.exit_code,
                    e.reason.as_deref().unwrap_or("no reason")
                )
            },
            str::to_owned,
        )
}

/// The verdict a pod has reached, if any.
pub fn pod_verdict(pod: &DrillPod) -> Option<DrillVerdict> {
    use DrillOutcome::{Failed, Inconclusive};
    if let Some(fetch) = pod.fetch.as_ref().filter(|e| e.exit_code != 0) {
        // The fetch exits 2 only when the archive itself does not check out.
        return Some(if fetch.exit_code == 2 {
            verdict(Failed, format!("the archive does not verify: {}", said(fetch)))
        } else {
            verdict(
                Inconclusive,
                format!("the archive could not be read: {}", said(fetch)),
            )
        });
    }
    if let Some(restore) = pod.restore.as_ref().filter(|e| e.exit_code != 0) {
        return Some(if restore.reason.as_deref() == Some("OOMKilled") {
            verdict(
                Inconclusive,
                "etcdutl ran out of memory restoring the snapshot".to_owned(),
            )
        } else {
            verdict(
                Failed,
                format!(
                    "etcdutl could not restore the verified snapshot: {}",
                    said(restore)
                ),
            )
        });
    }
    if let Some(check) = &pod.check {
        let parsed = check
            .message
            .as_deref()
            .and_then(|m| serde_json::from_str::<DrillVerdict>(m.trim()).ok());
        return Some(match parsed {
            Some(mut v) if check.exit_code == 0 => {
                if v.outcome == Inconclusive
                    && let Some(etcd) = &pod.etcd_last
                {
                    v.reason
                        .push_str(&format!("; etcd last exited with {}", said(etcd)));
                }
                v
            }
            Some(_) | None => verdict(
                Inconclusive,
                format!("the drill's check did not give a verdict: {}", said(check)),
            ),
        });
    }
    pod.failed
        .as_ref()
        .map(|why| verdict(Inconclusive, format!("the drill pod failed: {why}")))
}

/// The next step of the drill `v` describes.
pub fn drill_step(v: &DrillView) -> DrillStep {
    let inconclusive = |why: String| {
        if v.attempts < MAX_ATTEMPTS {
            DrillStep::Retry(why)
        } else {
            DrillStep::Conclude(verdict(
                DrillOutcome::Inconclusive,
                format!("{why} (attempt {} of {MAX_ATTEMPTS})", v.attempts),
            ))
        }
    };
    let decided = |d: DrillVerdict| match d.outcome {
        DrillOutcome::Inconclusive => inconclusive(d.reason),
        DrillOutcome::Verified | DrillOutcome::Failed => DrillStep::Conclude(d),
    };
    match v.phase {
        DrillPhase::Verified | DrillPhase::Failed | DrillPhase::Inconclusive => {
            DrillStep::Wait("the drill has ended".into(), 0)
        }
        DrillPhase::Pending => {
            if let Some(why) = &v.cannot_build {
                return DrillStep::Conclude(verdict(DrillOutcome::Inconclusive, why.clone()));
            }
            if let Some(why) = &v.defragmenting {
                return DrillStep::Wait(format!("{why}; the drill waits for it"), 5);
            }
            // The slot is taken last, once nothing else stands in the way; holding it, the drill
            // starts (what `busy` names cannot start meanwhile: backups wait for the slot).
            match &v.slot {
                Some(Slot::Mine) => DrillStep::Start,
                Some(Slot::Free { .. }) if v.busy.is_some() => DrillStep::Wait(
                    format!(
                        "{}; the drill waits for it",
                        v.busy.as_deref().unwrap_or_default()
                    ),
                    5,
                ),
                Some(Slot::Free { cluster_version }) => DrillStep::TakeSlot {
                    cluster_version: cluster_version.clone(),
                },
                Some(Slot::HeldBy(other)) => DrillStep::Wait(
                    format!("{other} holds the cluster's backup slot; the drill waits for it"),
                    5,
                ),
                None => DrillStep::Wait("the cluster is gone".into(), 5),
            }
        }
        DrillPhase::Running => {
            let Some(job) = &v.job else {
                return inconclusive("the drill Job is gone before it gave a verdict".into());
            };
            if let Some(d) = job.pod.as_ref().and_then(pod_verdict) {
                return decided(d);
            }
            if let Some(why) = &job.failed {
                return inconclusive(format!("the drill Job failed: {why}"));
            }
            if let Some(why) = job.pod.as_ref().and_then(|p| p.unschedulable.as_ref()) {
                return inconclusive(format!("no node can run the drill pod: {why}"));
            }
            if v.overdue {
                return inconclusive("the drill did not finish in time".into());
            }
            DrillStep::Wait("the drill runs".into(), 3)
        }
    }
}
