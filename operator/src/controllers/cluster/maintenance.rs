//! Maintenance decisions, pure like the rest of [`super::decide`]: rolling `spec.etcd` out, the
//! way out of NOSPACE, replacing a CORRUPT member, and defragmentation by threshold.
//!
//! Rules, safest first:
//! - nothing here runs unless every voter answers (an alarm is not unreachability, but a member
//!   that does not answer may be anything) and no learner is catching up;
//! - CORRUPT: the alarm is not trusted to name the bad copy (etcd raises it with no member when no
//!   majority agrees, and its checks blame a follower even when the leader differs). The operator
//!   compares every voter's hash of the keyspace at one revision: with at least three voters, a
//!   single member that differs from all the others, who agree, is removed (its claim retired, not
//!   deleted) and its replacement copies their data; once every voter agrees and no alarm names a
//!   current member, the alarms are disarmed. Anything else changes nothing and says why;
//! - NOSPACE: compact to the current revision, defragment once every member whose file keeps the
//!   alarm up or has free space (followers first, the leader after leadership moved), and disarm
//!   once every member's database is below [`DISARM_FRACTION`] of the quota. If the data itself
//!   does not fit, say so and change nothing else;
//! - defragmentation by threshold: one member at a time, in the same order, never one a backup
//!   streams from, and never while a restore drill of the cluster runs.

use std::time::Duration;

use super::decide::{DataRefusal, MemberView, Membership, Observed, PodState, PodView, Step};

/// Below this fraction of the quota after defragmentation, NOSPACE is disarmed; above it the data
/// itself nearly fills the quota and writes would raise the alarm again at once.
pub const DISARM_FRACTION: f64 = 0.9;
/// Above this fraction of the quota a member's database is reported `DatabaseNearQuota`.
pub const NEAR_QUOTA_FRACTION: f64 = 0.8;
/// Under NOSPACE a member is defragmented when at least this fraction of its file is free...
pub const NOSPACE_FREE_FRACTION: f64 = 0.1;
/// ... and at least this many bytes: defragmenting to win less is not worth a member's pause.
pub const NOSPACE_FREE_MIN_BYTES: u64 = 1 << 20;
/// Under NOSPACE, the history is compacted again once this many revisions were written since the
/// last compaction (deletes still run under NOSPACE).
pub const COMPACT_AGAIN_AFTER_REVISIONS: i64 = 1000;
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
    /// Backups whose restore drill runs now.
    pub drills_running: Vec<String>,
    /// Members defragmented within [`DEFRAG_COOLDOWN`].
    pub recently_defragmented: Vec<String>,
    /// Each member's revision when the operator last defragmented it, by name (recorded on its pod).
    pub defragmented_revisions: Vec<(String, i64)>,
    /// What is wrong with the certificates `spec.tls`'s Secrets hold now, one sentence each
    /// (members stay on the set they run while it is not empty).
    pub certificate_problems: Vec<String>,
    /// Why no certificate set can be mounted by a new or restarted member (the Secrets are
    /// refused and no set in use passes the checks either), when none can.
    pub certificates_blocked: Option<String>,
    /// Under a CORRUPT alarm, or while a member's etcd refuses its data at start: each voter's hash
    /// of its keyspace at one common revision, by member ID (members that did not answer are absent).
    pub kv_hashes: Vec<(u64, KvHash)>,
}

/// A member's hash of its keyspace up to a revision, and the revision it has compacted to: two
/// hashes are comparable only with the same compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KvHash {
    /// The hash.
    pub hash: u32,
    /// The member's compacted revision when it hashed.
    pub compact_revision: i64,
}

impl Default for MaintenanceView {
    fn default() -> Self {
        Self {
            quota_bytes: ouroboros_crds::settings::DEFAULT_QUOTA_BACKEND_BYTES as u64,
            defragmentation: None,
            compacted_revision: None,
            backup_sources: Vec::new(),
            drills_running: Vec::new(),
            recently_defragmented: Vec::new(),
            defragmented_revisions: Vec::new(),
            certificate_problems: Vec::new(),
            certificates_blocked: None,
            kv_hashes: Vec::new(),
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
    /// Where its window stands now.
    pub window: DefragWindow,
}

/// Where `spec.maintenance.defragmentation.window` stands at the time of the observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefragWindow {
    /// No window: defragmentation by threshold may start any time.
    Always,
    /// Inside a window.
    Open,
    /// Between windows; the next one opens then (`None`: the schedule never fires again).
    Closed {
        /// When the next window opens.
        opens: Option<jiff::Timestamp>,
    },
    /// The window cannot be read, and why: defragmentation by threshold is off until it is fixed.
    Invalid(String),
}

/// Why a defragmentation by threshold runs (its Event says so); one that yields to a restore drill
/// holding the cluster's backup slot is told apart by it.
pub const BY_THRESHOLD: &str = "by spec.maintenance.defragmentation";

/// The shortest window: a shorter one would open and close between two looks of the operator.
pub const MIN_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// Where `window` stands at `now`.
pub fn defrag_window(
    window: Option<&ouroboros_crds::MaintenanceWindow>,
    now: jiff::Timestamp,
) -> DefragWindow {
    use crate::cron_schedule::{WindowAt, parse, window_at};
    let Some(w) = window else {
        return DefragWindow::Always;
    };
    let cron = match parse("spec.maintenance.defragmentation.window.schedule", &w.schedule) {
        Ok(c) => c,
        Err(why) => return DefragWindow::Invalid(why),
    };
    let duration = ouroboros_crds::retention::parse_age(&w.duration).filter(|d| *d >= MIN_WINDOW);
    let Some(duration) = duration else {
        return DefragWindow::Invalid(format!(
            "spec.maintenance.defragmentation.window.duration {:?} must be a duration of at least one minute, such as 2h",
            w.duration
        ));
    };
    match window_at(&cron, duration, now) {
        WindowAt::Open { .. } => DefragWindow::Open,
        WindowAt::Closed { opens } => DefragWindow::Closed { opens },
    }
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

/// Every alarm any member reports, as (member ID, kind), once each. An alarm raised on no member
/// (etcd leaves a zero member ID out of the text) is member 0: it is not the reporter's, since every
/// member reports every alarm.
pub fn alarms(ms: &Membership) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = ms
        .members
        .iter()
        .filter_map(|m| m.health.as_ref())
        .flat_map(|h| {
            parse_alarms(&h.errors)
                .into_iter()
                .map(|(id, kind)| (id.unwrap_or(0), kind))
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

/// A voter's pod was built with other `spec.etcd` settings, another pod template, or other
/// certificates than the spec and the operator accepted: it is restarted onto them.
pub fn settings_outdated(p: &PodView) -> bool {
    !p.settings_current || !p.template_current || !p.certificates_current
}

/// While no certificate set can be mounted (the Secrets are refused and no set in use would do), no
/// member pod is restarted or replaced for a roll or an upgrade: it could not start. A refused
/// renewal alone does not block: members are restarted on the set they run
/// (`certificate_copies::choose`). `None` when a set can be mounted.
pub fn certificates_block(o: &Observed) -> Option<Step> {
    o.maintenance
        .certificates_blocked
        .as_ref()
        .map(|reason| Step::MaintenanceBlocked {
            reason: reason.clone(),
        })
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

/// Whether member `m`, whose etcd refused its data at start, is the copy that differs: every other
/// voter (two at least) answered with the same keyspace hash, over the compaction `m` hashed with
/// when it refused. etcd's check fails on a difference from any one peer, so without this a member
/// could be judged by a peer whose data is the bad one; with it, the peers agree with each other
/// and not with `m`. Over another compaction (one ran since, or the refusal's words did not keep
/// its compaction) nothing is judged: a compaction can remove the very history that differed.
pub fn refused_data_is_its_own(o: &Observed, m: &MemberView, refusal: DataRefusal) -> bool {
    let (Some(ms), Some(compaction)) = (o.membership.as_ref(), refusal.compact_revision) else {
        return false;
    };
    let others: Vec<&MemberView> = ms
        .members
        .iter()
        .filter(|v| !v.is_learner && v.id != m.id)
        .collect();
    let hashes: Vec<KvHash> = others
        .iter()
        .filter_map(|v| {
            o.maintenance
                .kv_hashes
                .iter()
                .find(|(id, _)| *id == v.id)
                .map(|(_, h)| *h)
        })
        .collect();
    others.len() >= 2
        && hashes.len() == others.len()
        && hashes.windows(2).all(|w| w[0] == w[1])
        && hashes.iter().all(|h| h.compact_revision == compaction)
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

/// Under an alarm, with every voter answering and a leader: the step out of it, if the alarm is
/// one the operator handles. `None` leaves the cluster to the general rules (which wait, naming the
/// alarm).
pub fn alarm_step(o: &Observed, ms: &Membership, voters: &[&MemberView]) -> Option<Step> {
    let alarms = alarms(ms);
    if alarms.is_empty() || ms.leader.is_none() || voters.iter().any(|m| m.health.is_none()) {
        return None;
    }
    // CORRUPT first: while it is raised etcd refuses every read and write on every member.
    let corrupt: Vec<u64> = alarms
        .iter()
        .filter(|(_, k)| k == AlarmKind::Corrupt.etcd_name())
        .map(|(id, _)| *id)
        .collect();
    if !corrupt.is_empty() {
        return Some(corrupt_step(o, ms, voters, &corrupt));
    }
    let nospace = alarms.iter().find(|(_, k)| k == AlarmKind::NoSpace.etcd_name())?;
    Some(nospace_step(o, ms, voters, nospace.0))
}

/// Under CORRUPT: find the bad copy by the voters' own hashes, never by the alarm alone.
fn corrupt_step(o: &Observed, ms: &Membership, voters: &[&MemberView], alarmed: &[u64]) -> Step {
    let blocked = |why: String| Step::MaintenanceBlocked {
        reason: format!("CORRUPT: {why}; nothing is changed (docs/runbooks.md, \"An etcd alarm\")"),
    };
    let hash_of = |id: u64| {
        o.maintenance
            .kv_hashes
            .iter()
            .find(|(m, _)| *m == id)
            .map(|(_, h)| *h)
    };
    let hashes: Vec<(&MemberView, Option<KvHash>)> = voters.iter().map(|v| (*v, hash_of(v.id))).collect();
    let missing: Vec<&str> = hashes
        .iter()
        .filter(|(_, h)| h.is_none())
        .map(|(v, _)| v.name.as_str())
        .collect();
    if !missing.is_empty() {
        return blocked(format!(
            "waiting for the keyspace hash of {} to tell which copy differs",
            missing.join(", ")
        ));
    }
    // Hashes are comparable only over the same history: every voter at the same revision (under
    // CORRUPT etcd refuses writes, so they converge) and compacted to the same revision (HashKV
    // skips what a member has compacted, so a member that has not yet applied a compaction hashes
    // differently while healthy). Anything else is waited out, never judged.
    let revisions: std::collections::BTreeSet<i64> = voters
        .iter()
        .filter_map(|v| v.health.as_ref().map(|h| h.revision))
        .collect();
    let compactions: std::collections::BTreeSet<i64> = hashes
        .iter()
        .filter_map(|(_, h)| h.map(|h| h.compact_revision))
        .collect();
    if revisions.len() > 1 || compactions.len() > 1 {
        return blocked(format!(
            "the voters' hashes are not comparable yet (revisions {revisions:?}, compacted to {compactions:?}); \
             waiting for them to converge"
        ));
    }
    let mut groups: Vec<(KvHash, Vec<&MemberView>)> = Vec::new();
    for (v, h) in &hashes {
        let Some(h) = h else { continue };
        match groups.iter_mut().find(|(g, _)| g == h) {
            Some((_, members)) => members.push(v),
            None => groups.push((*h, vec![*v])),
        }
    }
    if groups.len() == 1 {
        // Every voter's data agrees: alarms on members gone (or on none) are what is left of it.
        let named_current: Vec<&str> = alarmed
            .iter()
            .filter_map(|id| ms.members.iter().find(|m| m.id == *id))
            .map(|m| m.name.as_str())
            .collect();
        if !named_current.is_empty() {
            return blocked(format!(
                "the alarm names {}, yet every voter's keyspace hash agrees; check its logs, and disarm by hand                  (`etcdctl alarm disarm`) once satisfied",
                named_current.join(", ")
            ));
        }
        return Step::DisarmAlarm {
            member_id: alarmed[0],
            kind: AlarmKind::Corrupt,
        };
    }
    groups.sort_by_key(|(_, members)| std::cmp::Reverse(members.len()));
    let quorum = voters.len() / 2 + 1;
    let (majority, outliers) = (&groups[0].1, &groups[1..]);
    let single = outliers.len() == 1 && outliers[0].1.len() == 1;
    // A majority of the voters agreeing (so at least two of three), and one member alone against it.
    if majority.len() < quorum || !single {
        let describe: Vec<String> = groups
            .iter()
            .map(|(h, members)| {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                format!("{} hash {:08x}", names.join("+"), h.hash)
            })
            .collect();
        return blocked(format!(
            "no single member differs from an agreeing majority of at least three voters ({}), so no copy can be              trusted over another; restore from a backup (see \"Quorum lost\")",
            describe.join(", ")
        ));
    }
    let bad = outliers[0].1[0];
    if ms.leader == Some(bad.id)
        && let Some(s) = majority.first()
    {
        return Step::MoveLeader {
            from: bad.name.clone(),
            to_id: s.id,
            to: s.name.clone(),
        };
    }
    Step::RemoveMember {
        id: bad.id,
        name: bad.name.clone(),
        reason: super::decide::RemoveReason::Corrupt,
    }
}

/// The way out of NOSPACE, one step at a time.
fn nospace_step(o: &Observed, ms: &Membership, voters: &[&MemberView], alarmed: u64) -> Step {
    let m = &o.maintenance;
    // A raised quota is what fixes a database that does not fit: it rolls out first, where members
    // restart on their data (a surge member would only add a member under the alarm).
    // Only the settings: a certificate or pod-template roll waits for the alarm to clear (restarting
    // every member of a cluster that refuses writes helps nothing), and while a certificate is
    // refused nothing is restarted (compaction and defragmentation go on regardless).
    if matches!(o.data, super::decide::DataHome::Claims(_))
        && o.maintenance.certificates_blocked.is_none()
        && let Some(step) = settings_roll_step(o, ms, voters, false)
    {
        return step;
    }
    let revision = voters
        .iter()
        .filter_map(|v| v.health.as_ref().map(|h| h.revision))
        .max()
        .unwrap_or(0);
    // Deletes still run under NOSPACE and move the revision: compacting again for a few of them
    // would keep the defragmentation from ever starting.
    // A recorded compaction ahead of the data is another history's (a restore from an older
    // backup): stale, so compacted again.
    let recorded = m.compacted_revision.filter(|c| *c <= revision);
    if revision > 0 && recorded.is_none_or(|c| revision - c >= COMPACT_AGAIN_AFTER_REVISIONS) {
        return Step::Compact { revision };
    }
    // The quota the members run with, which lags a raised spec until they are restarted with it.
    let running = voters
        .iter()
        .filter_map(|v| o.pods.iter().find(|p| p.name == v.name).map(|p| p.quota_bytes))
        .min()
        .unwrap_or(m.quota_bytes);
    let quota = running.min(m.quota_bytes);
    let limit = (quota as f64 * DISARM_FRACTION) as u64;
    // Every member whose file keeps the alarm up is defragmented once after the compaction, whatever
    // its reported use says: a member's reported use can stay at its pre-compaction figure long
    // after the compaction has freed the pages (seen in CI: two followers at 17 of 18 MiB for
    // minutes while the leader showed the space free; by hand with etcd 3.6.16: the leader at 15 of
    // 17 MiB, the follower at 0.3, unchanged after deletes). Once each was, what is left does not fit.
    let compacted = recorded.unwrap_or(revision);
    let defragmented_since = |v: &MemberView| {
        m.defragmented_revisions
            .iter()
            .any(|(name, r)| *name == v.name && *r >= compacted)
    };
    let fragmented: Vec<&MemberView> = voters
        .iter()
        .copied()
        .filter(|v| !defragmented_since(v))
        .filter(|v| {
            let free = free_bytes(v);
            db_size(v) >= limit
                || (free >= NOSPACE_FREE_MIN_BYTES
                    && free as f64 >= db_size(v) as f64 * NOSPACE_FREE_FRACTION)
        })
        .collect();
    if let Some(step) = defragment_one(ms, voters, &fragmented, "to recover from NOSPACE") {
        return step;
    }
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
            mib(quota),
            (DISARM_FRACTION * 100.0) as u32
        ),
    }
}

/// A voter whose pod runs other `spec.etcd` settings (or, `whole_pod`, another pod template or other
/// certificates):
/// restart it on its data with the new ones (claims), or replace it (data that lives with the pod),
/// followers first and the leader last after leadership moved. `None` when every voter is current.
pub fn settings_roll_step(
    o: &Observed,
    ms: &Membership,
    voters: &[&MemberView],
    whole_pod: bool,
) -> Option<Step> {
    let pod = |name: &str| o.pods.iter().find(|p| p.name == name);
    let outdated_pod =
        |p: &PodView| !p.settings_current || (whole_pod && (!p.template_current || !p.certificates_current));
    let outdated: Vec<&MemberView> = voters
        .iter()
        .copied()
        .filter(|m| pod(&m.name).is_some_and(outdated_pod))
        .collect();
    let first = outdated
        .iter()
        .find(|m| ms.leader != Some(m.id))
        .or_else(|| outdated.first())?;
    if let Some(blocked) = certificates_block(o) {
        return Some(blocked);
    }
    if !matches!(o.data, super::decide::DataHome::Claims(_)) {
        // Data that lives with the pod cannot survive a restart: a new member with the new settings
        // joins first, and an outdated one leaves afterwards (as an upgrade does; the general rules
        // remove it once the cluster is larger than its size).
        if voters.len() > o.desired.size {
            return None;
        }
        // Self-hosted: a pod already started for the surge member (pods first) is that member.
        let joining = super::decide::joining_pod(o, ms);
        return Some(Step::AddLearner {
            name: joining.map_or_else(|| super::decide::next_member_name(o), |p| p.name.clone()),
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

/// The one voter that is down, on an outdated pod that never ran: its image cannot be pulled or the
/// scheduler cannot place it, as when a roll put it onto an image that does not exist or requests
/// that do not fit, and the spec has been fixed since. Restarting it on its own claim onto the
/// current spec harms nothing (its etcd never started) and is the only way it comes back: a roll
/// waits for every member to be healthy and would otherwise wait for it for ever. A member that is
/// merely restarting (its container ran) is never touched, nor one of several down voters; only on
/// claims, only while the others hold quorum, not while no certificate set can be mounted.
pub fn stuck_outdated_step(o: &Observed, voters: &[&MemberView]) -> Option<Step> {
    if !matches!(o.data, super::decide::DataHome::Claims(_)) || certificates_block(o).is_some() {
        return None;
    }
    let sick: Vec<&&MemberView> = voters
        .iter()
        .filter(|m| !super::decide::is_healthy(o, m))
        .collect();
    let [only] = sick.as_slice() else {
        return None;
    };
    if voters.len() - 1 < voters.len() / 2 + 1 || only.health.is_some() {
        return None;
    }
    let pod = o.pods.iter().find(|p| p.name == only.name)?;
    let never_ran = pod.image_problem.is_some() || pod.unschedulable;
    (settings_outdated(pod) && never_ran && !matches!(pod.state, PodState::Ready | PodState::Deleting)).then(
        || Step::RestartWithSettings {
            name: only.name.clone(),
        },
    )
}

/// Voters past `spec.maintenance.defragmentation`'s threshold and not defragmented lately.
fn past_threshold<'a>(o: &Observed, voters: &[&'a MemberView]) -> Vec<&'a MemberView> {
    let Some(policy) = o.maintenance.defragmentation.as_ref() else {
        return Vec::new();
    };
    voters
        .iter()
        .copied()
        .filter(|v| {
            let size = db_size(v);
            size >= policy.min_database_bytes
                && size > 0
                && free_bytes(v) * 100 >= size * u64::from(policy.min_fragmentation_percent)
                && !o.maintenance.recently_defragmented.contains(&v.name)
        })
        .collect()
}

/// Defragmentation by `spec.maintenance.defragmentation`, when every voter is healthy: the step,
/// or `None` when no member needs it now.
pub fn threshold_step(o: &Observed, ms: &Membership, voters: &[&MemberView]) -> Option<Step> {
    let policy = o.maintenance.defragmentation.as_ref()?;
    let candidates = past_threshold(o, voters);
    if candidates.is_empty() {
        return None;
    }
    // Outside its window, or with a window that cannot be read, nothing starts (the Maintenance
    // condition says which members wait, or what to fix).
    if !matches!(policy.window, DefragWindow::Always | DefragWindow::Open) {
        return None;
    }
    // A backup streaming from a member would stall behind its defragmentation: that member waits
    // for the backup to finish (routine, so the cluster is not reported degraded meanwhile).
    let free: Vec<&MemberView> = candidates
        .into_iter()
        .filter(|v| !o.maintenance.backup_sources.contains(&v.name))
        .collect();
    if free.is_empty() || ms.leader.is_none() {
        return None;
    }
    // A drill competes with a defragmentation for its node's disk, and drills are short: the
    // threshold waits for them (a drill in turn waits for a defragmentation to end).
    if !o.maintenance.drills_running.is_empty() {
        return None;
    }
    defragment_one(ms, voters, &free, BY_THRESHOLD)
}

/// What the `Maintenance` condition says when no step runs but the window matters: a window that
/// cannot be read (`True`: something to fix), or members past the threshold waiting for the next
/// window (`False`: nothing runs).
pub fn window_condition(o: &Observed) -> Option<(bool, &'static str, String)> {
    let policy = o.maintenance.defragmentation.as_ref()?;
    match &policy.window {
        DefragWindow::Always | DefragWindow::Open => None,
        DefragWindow::Invalid(why) => Some((
            true,
            "InvalidWindow",
            format!("{why}; defragmentation by threshold is off until it is fixed"),
        )),
        DefragWindow::Closed { opens } => {
            let ms = o.membership.as_ref()?;
            let voters: Vec<&MemberView> = ms.members.iter().filter(|m| !m.is_learner).collect();
            let waiting: Vec<String> = past_threshold(o, &voters)
                .iter()
                .map(|m| m.name.clone())
                .collect();
            if waiting.is_empty() {
                return None;
            }
            Some((
                false,
                "WaitingForWindow",
                format!(
                    "{} past the defragmentation threshold; {}",
                    waiting.join(", "),
                    opens.map_or_else(
                        || "spec.maintenance.defragmentation.window.schedule never fires again".to_owned(),
                        |t| format!("the next window opens at {t}")
                    )
                ),
            ))
        }
    }
}

#[cfg(test)]
#[path = "maintenance_tests.rs"]
mod tests;
