//! Maintenance decisions, pure like the rest of [`super::decide`]: rolling `spec.etcd` out, the
//! way out of NOSPACE, replacing a CORRUPT member, and defragmentation by threshold.
//!
//! Rules, safest first:
//! - nothing here runs unless every voter answers (an alarm is not unreachability, but a member
//!   that does not answer may be anything) and no learner is catching up;
//! - CORRUPT: the member the alarm names is removed (its claim retired, not deleted) only while the
//!   others keep quorum, and the alarm is disarmed once it is gone; its replacement copies the
//!   healthy majority's data. With no healthy majority, nothing is changed;
//! - NOSPACE: compact to the current revision, defragment every member that has free space
//!   (followers first, the leader after leadership moved), and disarm once every member's database
//!   is below [`DISARM_FRACTION`] of the quota. If the data itself does not fit, say so and change
//!   nothing else;
//! - defragmentation by threshold: one member at a time, in the same order, never one a backup
//!   streams from.

use std::time::Duration;

use super::decide::{MemberView, Membership, Observed, PodView, Step};

/// Below this fraction of the quota after defragmentation, NOSPACE is disarmed; above it the data
/// itself nearly fills the quota and writes would raise the alarm again at once.
pub const DISARM_FRACTION: f64 = 0.9;
/// Above this fraction of the quota a member's database is reported `DatabaseNearQuota`.
pub const NEAR_QUOTA_FRACTION: f64 = 0.8;
/// Under NOSPACE a member is defragmented when at least this fraction of its file is free...
pub const NOSPACE_FREE_FRACTION: f64 = 0.1;
/// ... and at least this many bytes: defragmenting to win less is not worth a member's pause.
pub const NOSPACE_FREE_MIN_BYTES: u64 = 1 << 20;
/// A member defragmented less than this long ago is not defragmented again by threshold, so a
/// database whose free space defragmentation cannot give back (etcd keeps some) is not churned.
pub const DEFRAG_COOLDOWN: Duration = Duration::from_secs(600);

/// What maintenance looks at, beyond the membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceView {
    /// `spec.etcd.quotaBackendBytes`.
    pub quota_bytes: u64,
    /// `spec.maintenance.defragmentation`, when set.
    pub defragmentation: Option<DefragThreshold>,
    /// The revision the operator last compacted to (recorded on the cluster), if any.
    pub compacted_revision: Option<i64>,
    /// Members a backup is streaming from now.
    pub backup_sources: Vec<String>,
    /// Members defragmented within [`DEFRAG_COOLDOWN`].
    pub recently_defragmented: Vec<String>,
}

impl Default for MaintenanceView {
    fn default() -> Self {
        Self {
            quota_bytes: ouroboros_crds::settings::DEFAULT_QUOTA_BACKEND_BYTES as u64,
            defragmentation: None,
            compacted_revision: None,
            backup_sources: Vec::new(),
            recently_defragmented: Vec::new(),
        }
    }
}

/// `spec.maintenance.defragmentation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefragThreshold {
    /// Free percentage of the file at which to defragment.
    pub min_fragmentation_percent: u32,
    /// Smallest file worth defragmenting.
    pub min_database_bytes: u64,
}

/// An etcd alarm: the member it is raised on and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmKind {
    /// The database reached its quota; writes are refused.
    NoSpace,
    /// The member's data differs from its peers'.
    Corrupt,
}

impl AlarmKind {
    /// etcd's name of it.
    pub fn etcd_name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
            AlarmKind::Corrupt => "CORRUPT",
        }
    }
}

/// The alarms in status errors, as (member ID, kind); other errors are left out.
pub fn parse_alarms(errors: &[String]) -> Vec<(Option<u64>, String)> {
    errors
        .iter()
        .filter_map(|e| {
            let mut id = None;
            let mut kind = None;
            for word in e.split_whitespace() {
                if let Some(v) = word.strip_prefix("memberID:") {
                    id = v.parse().ok();
                } else if let Some(v) = word.strip_prefix("alarm:") {
                    kind = Some(v.to_owned());
                }
            }
            kind.filter(|k| !k.is_empty() && k != "NONE").map(|k| (id, k))
        })
        .collect()
}

/// Every alarm any member reports, as (member ID, kind), once each.
pub fn alarms(ms: &Membership) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = ms
        .members
        .iter()
        .filter_map(|m| Some((m.id, m.health.as_ref()?)))
        .flat_map(|(reporter, h)| {
            parse_alarms(&h.errors)
                .into_iter()
                .map(move |(id, kind)| (id.unwrap_or(reporter), kind))
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

/// A voter's pod was built with other `spec.etcd` settings than the spec gives now.
pub fn settings_outdated(p: &PodView) -> bool {
    !p.settings_current
}

fn free_bytes(m: &MemberView) -> u64 {
    m.health
        .as_ref()
        .map_or(0, |h| h.db_size.saturating_sub(h.db_in_use))
}

fn db_size(m: &MemberView) -> u64 {
    m.health.as_ref().map_or(0, |h| h.db_size)
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Defragment one of `candidates` (voters that need it): a follower first; the leader only after
/// leadership has moved to a voter that does not need it, or (every voter needs it) to any other.
fn defragment_one(
    ms: &Membership,
    voters: &[&MemberView],
    candidates: &[&MemberView],
    why: &str,
) -> Option<Step> {
    let follower = candidates.iter().find(|m| ms.leader != Some(m.id));
    if let Some(m) = follower {
        return Some(Step::Defragment {
            id: m.id,
            name: m.name.clone(),
            why: why.to_owned(),
        });
    }
    let leader = candidates.first()?;
    let successor = voters
        .iter()
        .filter(|m| m.id != leader.id)
        .find(|m| !candidates.iter().any(|c| c.id == m.id))
        .or_else(|| voters.iter().find(|m| m.id != leader.id));
    match successor {
        Some(s) => Some(Step::MoveLeader {
            from: leader.name.clone(),
            to_id: s.id,
            to: s.name.clone(),
        }),
        // A single member: it is the leader and nobody can take over; defragmenting it pauses the
        // cluster for that long, which is what a one-member cluster means.
        None => Some(Step::Defragment {
            id: leader.id,
            name: leader.name.clone(),
            why: why.to_owned(),
        }),
    }
}

/// Under an alarm, with every voter answering: the step out of it, if the alarm is one the
/// operator handles. `None` leaves the cluster to the general rules (which wait, naming the alarm).
pub fn alarm_step(o: &Observed, ms: &Membership, voters: &[&MemberView]) -> Option<Step> {
    let alarms = alarms(ms);
    if alarms.is_empty() || voters.iter().any(|m| m.health.is_none()) {
        return None;
    }
    let quorum = |n: usize| n / 2 + 1;
    // CORRUPT first: while it is raised etcd refuses every read and write on every member.
    let corrupt: Vec<u64> = alarms
        .iter()
        .filter(|(_, k)| k == AlarmKind::Corrupt.etcd_name())
        .map(|(id, _)| *id)
        .collect();
    if let Some(&id) = corrupt.first() {
        return Some(match ms.members.iter().find(|m| m.id == id) {
            Some(m) => {
                let others = voters.iter().filter(|v| v.id != id).count();
                let voters_after = voters.len() - usize::from(!m.is_learner);
                if m.is_learner || (others >= quorum(voters_after) && voters_after > 0) {
                    Step::RemoveMember {
                        id,
                        name: m.name.clone(),
                        reason: super::decide::RemoveReason::Corrupt,
                    }
                } else {
                    Step::MaintenanceBlocked {
                        reason: format!(
                            "{} reports CORRUPT data, and without it no majority of healthy members remains to \
                             replace it from; nothing is changed (docs/runbooks.md, \"An etcd alarm\")",
                            m.name
                        ),
                    }
                }
            }
            // Its member is gone (replaced): the alarm is all that is left of it.
            None => Step::DisarmAlarm {
                member_id: id,
                kind: AlarmKind::Corrupt,
            },
        });
    }
    let nospace = alarms.iter().find(|(_, k)| k == AlarmKind::NoSpace.etcd_name())?;
    Some(nospace_step(o, ms, voters, nospace.0))
}

/// The way out of NOSPACE, one step at a time.
fn nospace_step(o: &Observed, ms: &Membership, voters: &[&MemberView], alarmed: u64) -> Step {
    let m = &o.maintenance;
    // A raised quota is what fixes a database that does not fit: it rolls out first, where members
    // restart on their data (a surge member would only add a member under the alarm).
    if matches!(o.data, super::decide::DataHome::Claims(_))
        && let Some(step) = settings_roll_step(o, ms, voters)
    {
        return step;
    }
    let revision = voters
        .iter()
        .filter_map(|v| v.health.as_ref().map(|h| h.revision))
        .max()
        .unwrap_or(0);
    if revision > 0 && m.compacted_revision.is_none_or(|c| c < revision) {
        return Step::Compact { revision };
    }
    let fragmented: Vec<&MemberView> = voters
        .iter()
        .copied()
        .filter(|v| {
            let free = free_bytes(v);
            free >= NOSPACE_FREE_MIN_BYTES && free as f64 >= db_size(v) as f64 * NOSPACE_FREE_FRACTION
        })
        .collect();
    if let Some(step) = defragment_one(ms, voters, &fragmented, "to recover from NOSPACE") {
        return step;
    }
    let limit = (m.quota_bytes as f64 * DISARM_FRACTION) as u64;
    let largest = voters.iter().map(|v| db_size(v)).max().unwrap_or(0);
    if largest < limit {
        return Step::DisarmAlarm {
            member_id: alarmed,
            kind: AlarmKind::NoSpace,
        };
    }
    let in_use = voters
        .iter()
        .filter_map(|v| v.health.as_ref().map(|h| h.db_in_use))
        .max()
        .unwrap_or(0);
    Step::MaintenanceBlocked {
        reason: format!(
            "NOSPACE: compacted and defragmented, the database still holds {} MiB ({} MiB in use) of its {} MiB \
             quota: the data itself does not fit. Raise spec.etcd.quotaBackendBytes (members are restarted with \
             it one at a time, and the alarm is disarmed once the database is below {} % of it) or delete data; \
             nothing else is changed",
            mib(largest),
            mib(in_use),
            mib(m.quota_bytes),
            (DISARM_FRACTION * 100.0) as u32
        ),
    }
}

/// A voter whose pod runs other `spec.etcd` settings: restart it on its data with the new ones
/// (claims), or replace it (data that lives with the pod), followers first and the leader last after
/// leadership moved. `None` when every voter runs the current settings.
pub fn settings_roll_step(o: &Observed, ms: &Membership, voters: &[&MemberView]) -> Option<Step> {
    let pod = |name: &str| o.pods.iter().find(|p| p.name == name);
    let outdated: Vec<&MemberView> = voters
        .iter()
        .copied()
        .filter(|m| pod(&m.name).is_some_and(settings_outdated))
        .collect();
    let first = outdated
        .iter()
        .find(|m| ms.leader != Some(m.id))
        .or_else(|| outdated.first())?;
    if !matches!(o.data, super::decide::DataHome::Claims(_)) {
        // Data that lives with the pod cannot survive a restart: a new member with the new settings
        // joins first, and an outdated one leaves afterwards (as an upgrade does; the general rules
        // remove it once the cluster is larger than its size).
        if voters.len() > o.desired.size {
            return None;
        }
        return Some(Step::AddLearner {
            name: super::decide::next_member_name(o),
            version: pod(&first.name).map_or(o.desired.version, |p| p.version),
            for_upgrade: true,
        });
    }
    if ms.leader == Some(first.id)
        && let Some(s) = voters.iter().find(|m| m.id != first.id)
    {
        return Some(Step::MoveLeader {
            from: first.name.clone(),
            to_id: s.id,
            to: s.name.clone(),
        });
    }
    Some(Step::RestartWithSettings {
        name: first.name.clone(),
    })
}

/// Defragmentation by `spec.maintenance.defragmentation`, when every voter is healthy: the step,
/// or `None` when no member needs it.
pub fn threshold_step(o: &Observed, ms: &Membership, voters: &[&MemberView]) -> Option<Step> {
    let policy = o.maintenance.defragmentation.as_ref()?;
    let candidates: Vec<&MemberView> = voters
        .iter()
        .copied()
        .filter(|v| {
            let size = db_size(v);
            size >= policy.min_database_bytes
                && size > 0
                && free_bytes(v) * 100 >= size * u64::from(policy.min_fragmentation_percent)
                && !o.maintenance.recently_defragmented.contains(&v.name)
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    // A backup streaming from a member would stall behind its defragmentation: wait for it.
    let (busy, free): (Vec<&MemberView>, Vec<&MemberView>) = candidates
        .into_iter()
        .partition(|v| o.maintenance.backup_sources.contains(&v.name));
    if free.is_empty() {
        let names: Vec<&str> = busy.iter().map(|m| m.name.as_str()).collect();
        return Some(Step::MaintenanceBlocked {
            reason: format!(
                "{} is due for defragmentation and waits for the backup streaming from it",
                names.join(", ")
            ),
        });
    }
    defragment_one(ms, voters, &free, "by spec.maintenance.defragmentation")
}

#[cfg(test)]
#[path = "maintenance_tests.rs"]
mod tests;
