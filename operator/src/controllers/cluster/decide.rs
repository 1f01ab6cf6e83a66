//! The membership decision: from what was observed of one cluster to the single next step. Pure: no
//! I/O, no clock, no randomness, so every case is a unit test.
//!
//! Rules, safest first:
//! - change nothing while paused, and nothing without quorum;
//! - never replace a member whose data still exists: a member whose pod is gone but whose claim is
//!   intact gets a new pod on that claim (same name, member ID and data), with quorum or without it,
//!   so a node restart or every pod deleted at once ends with the same cluster, not a restore;
//! - quorum counts voters that answer and whose pod is not going away; an alarm (NOSPACE, CORRUPT) is
//!   not unreachability, so it never reads as lost quorum, but no membership change starts under it;
//! - clean up half-finished steps first (a pod whose member was removed, a member added whose pod was
//!   never created), since they are what a crash between two steps leaves;
//! - a member whose node is lost (its kubelet silent, or the Node deleted) waits for the node as
//!   long as `replaceAfterNodeLost`; past that, and only while it does not answer, it is dead like a
//!   member whose pod is gone, and replaced (its claim is retired, never deleted);
//! - remove dead voters before anything else (each one removed lowers the quorum needed), but only
//!   while the remaining healthy voters keep quorum;
//! - one learner at a time; promote it only once it has caught up, and give up on it after a deadline
//!   that grows with the database size;
//! - grow by adding a learner; shrink by removing a follower (the leader only after moving leadership);
//! - upgrade by surge: add a member on the new version, then remove one on the old version, followers
//!   first and the leader last. Downgrades and minor skips are refused; running members stay as they are.

use std::time::Duration;

use ouroboros_crds::EtcdVersion;

use super::maintenance;
pub use super::maintenance::{AlarmKind, DefragThreshold, MaintenanceView};

/// A learner whose applied index is at least this fraction of the leader's is considered caught up
/// (etcd's own promotion check uses the same 90 %).
pub const LEARNER_READY_FRACTION: f64 = 0.9;
/// Container restarts after which a crash-looping member is replaced rather than waited for.
pub const CRASH_LOOP_RESTARTS: i32 = 5;
/// Base time a learner gets to catch up before it is removed and tried again.
pub const LEARNER_BASE_DEADLINE: Duration = Duration::from_secs(120);
/// Pods first: how long a pod created for a member that could not yet be added (etcd refused the add,
/// say, because a just-promoted member had not been connected long enough) waits to be added before it
/// counts as an orphan.
pub const JOIN_GRACE: Duration = Duration::from_secs(60);
/// Extra catch-up time per GiB of database.
pub const LEARNER_DEADLINE_PER_GIB: Duration = Duration::from_secs(60);
/// How long a member's node may be lost before the member is replaced, unless
/// `spec.storage.persistentVolumeClaim.replaceAfterNodeLost` says otherwise: twice Kubernetes'
/// default eviction time, so a node that reboots, or an upgrade that restarts its kubelet, is waited
/// for.
pub const DEFAULT_REPLACE_AFTER_NODE_LOST: Duration = Duration::from_secs(600);

/// What the spec asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Voting members wanted.
    pub size: usize,
    /// etcd version wanted.
    pub version: EtcdVersion,
    /// Who stopped the controller from changing members, if anyone.
    pub held_by: Option<HeldBy>,
    /// How long a member's node may stay lost before the member is replaced.
    pub replace_after_node_lost: Duration,
}

/// Who stopped the controller from changing the cluster's members: the one meaning of "paused".
/// Either way no member is added, removed or restarted; objects that hold no data (Services, the
/// PodDisruptionBudget, the sidecars' certificate) are still kept under a restore's hold, since the
/// restore's seed needs them, but not when the user paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// `spec.paused` is set.
    User,
    /// The named EtcdRestore holds the cluster (`etcd.ouroboros.dev/restore-in-progress`).
    Restore(String),
}

/// Who holds `cluster`, if anyone (a restore's hold shows even when the user paused too: the
/// restore's status is what to read then).
pub fn held_by(cluster: &ouroboros_crds::EtcdCluster) -> Option<HeldBy> {
    let restore = cluster
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::vocabulary::RESTORE_HOLD));
    match restore {
        Some(r) => Some(HeldBy::Restore(r.clone())),
        None if cluster.spec.paused => Some(HeldBy::User),
        None => None,
    }
}

/// Lifecycle of one member's pod, as Kubernetes reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Scheduled or creating containers.
    Starting,
    /// Containers run but the pod is not Ready.
    Running,
    /// Ready.
    Ready,
    /// Phase Succeeded or Failed: it will never run again.
    Terminated,
    /// Restarted at least [`CRASH_LOOP_RESTARTS`] times and not running now.
    CrashLooping,
    /// Being deleted.
    Deleting,
}

/// One member pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod (and member) name.
    pub name: String,
    /// etcd version its image runs.
    pub version: EtcdVersion,
    /// Its state.
    pub state: PodState,
    /// Time since the pod was created.
    pub age: Duration,
    /// Its data volume (PVC) is gone or being deleted.
    pub volume_lost: bool,
    /// Its `etcd.ouroboros.dev/voter` label, which only the label sync reads.
    pub voter_label: Option<String>,
    /// Why one of its images cannot be pulled, if one cannot (a version with no image, a wrong
    /// repository); only the status reads it.
    pub image_problem: Option<String>,
    /// It was built with the `spec.etcd` settings the spec gives now.
    pub settings_current: bool,
    /// It was built from the pod template (`spec.pod`, images, sidecar) the spec and the operator
    /// give now ([`crate::objects::template_digest`]).
    pub template_current: bool,
    /// It records the template it was built from (pods built before the record judge by images).
    pub template_recorded: bool,
    /// The scheduler cannot place it (`PodScheduled=False`, `Unschedulable`): it never ran here.
    pub unschedulable: bool,
    /// It runs the certificate set the operator accepted (always, without TLS).
    pub certificates_current: bool,
    /// The quota its etcd runs with (`--quota-backend-bytes`), which lags the spec's until it is
    /// restarted with the new settings.
    pub quota_bytes: u64,
    /// Its etcd's last exit was etcd's initial corruption check refusing the member's data: it
    /// hashed its keyspace and found it differs from a peer's at the same revision and compaction.
    pub data_refused: Option<DataRefusal>,
}

/// What etcd said when its initial corruption check refused a member's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRefusal {
    /// The member's compaction revision when it hashed (`local-member-compact-revision` in its
    /// log), when its last words kept it: peers' hashes are comparable with the refusal only over
    /// the same compaction.
    pub compact_revision: Option<i64>,
}

/// What one member answered to a status request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHealth {
    /// Raft index the member has applied.
    pub applied_index: u64,
    /// The errors the member reported (etcd lists its active alarms here, `memberID:.. alarm:NOSPACE`).
    pub errors: Vec<String>,
    /// Size of its database file in bytes.
    pub db_size: u64,
    /// Bytes of that file in use.
    pub db_in_use: u64,
    /// The store's revision it has applied.
    pub revision: i64,
}

impl MemberHealth {
    /// The member reported errors (alarms, corruption).
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// Where members keep their data: it decides whether a member that lost its pod comes back on its own
/// data or is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataHome {
    /// The data lives and dies with the pod (an emptyDir), or (self-hosted) on its node under the
    /// pods-first rules: a member whose pod is gone has no data left to come back on.
    Pod,
    /// Each member has its own claim; these are the claims that exist and are not being deleted.
    Claims(Vec<ClaimView>),
}

/// A member's data claim that is still there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimView {
    /// The member it belongs to.
    pub member: String,
    /// The version its member runs (the claim's version label; members never change version, an
    /// upgrade adds new members), when the claim records it.
    pub version: Option<EtcdVersion>,
}

/// A member whose pod's node is lost: the node's kubelet stopped reporting (its `Ready` condition is
/// `Unknown`). A node that reports itself NotReady is not lost (its kubelet runs, and so may the
/// member), and neither is a Node object that is gone: deleting Nodes is routine (autoscalers,
/// upgrades), there is no record of since when, and a member without a scheduled pod has no node to
/// judge by. Such members wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLoss {
    /// The member.
    pub member: String,
    /// Its pod's node.
    pub node: String,
    /// How long the node has been lost.
    pub lost_for: Duration,
}

/// One member in etcd's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// etcd member ID.
    pub id: u64,
    /// Name, taken from its peer URL (`http://<name>.<cluster>...`), so it is known even before the
    /// member has started.
    pub name: String,
    /// Learner (non-voting).
    pub is_learner: bool,
    /// The member has started at least once (etcd knows its name and client URLs).
    pub started: bool,
    /// Its status answer, when it gave one.
    pub health: Option<MemberHealth>,
}

/// etcd's view of the cluster, when some member answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// Raft leader's member ID, if there is one.
    pub leader: Option<u64>,
    /// Every member, learners included.
    pub members: Vec<MemberView>,
    /// Database size in bytes (from the leader), for the learner deadline.
    pub db_size_bytes: u64,
}

/// Everything the decision looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Cluster name; member names are `<cluster>-<ordinal>`.
    pub cluster: String,
    /// The spec.
    pub desired: Desired,
    /// The cluster has had an etcd cluster ID before (status says so): an empty world now means
    /// disaster, not a new cluster.
    pub bootstrapped: bool,
    /// Member pods.
    pub pods: Vec<PodView>,
    /// etcd's membership, or `None` when no member answered a member list.
    pub membership: Option<Membership>,
    /// Self-hosted: a member's pod is created before the member is added (it is what records the
    /// member's node and ports), so a member that never started and has no pod lost its pod and is
    /// removed, not given a new one.
    pub pods_first: bool,
    /// The pivot from a boot etcd, while the boot member has not been seen removed.
    pub boot: Option<BootView>,
    /// No new member gets an ordinal below this (recorded on the cluster before a self-hosted member
    /// is created): a self-hosted member's data stays on its node under its name, so a name is never
    /// used twice.
    pub ordinal_floor: u32,
    /// Where the members' data lives.
    pub data: DataHome,
    /// The members status recorded when a member last answered. When none answers, only these are
    /// restarted on their claims: a claim left over from before a restore names no current member.
    pub known_members: Vec<String>,
    /// Members whose node is lost (only observed for members on claims: other members are replaced
    /// when their pod goes).
    pub node_losses: Vec<NodeLoss>,
    /// What maintenance (NOSPACE, CORRUPT, defragmentation) looks at.
    pub maintenance: MaintenanceView,
}

/// The boot member of a self-hosted pivot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootView {
    /// Its member ID, when the membership lists it. `None` once it has been removed (or before any
    /// member answered).
    pub id: Option<u64>,
    /// Its client URL, for messages.
    pub endpoint: String,
}

/// Why a member is being removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Its pod is gone.
    PodGone,
    /// Its pod terminated and will not run again.
    PodTerminated,
    /// It keeps crashing.
    CrashLooping,
    /// Its data volume was lost.
    VolumeLost,
    /// The cluster is larger than `spec.size`.
    ScaleDown,
    /// It runs an older version and a member on the new version has joined.
    Upgrade,
    /// A learner did not catch up in time.
    LearnerTimedOut,
    /// Its node has been lost for longer than `replaceAfterNodeLost`.
    NodeLost,
    /// Its data failed etcd's corruption check: its keyspace hash differs from the agreeing rest's
    /// (under a CORRUPT alarm, or when etcd refused its data at start).
    Corrupt,
    /// It runs other `spec.etcd` settings and its replacement has joined.
    Reconfigure,
}

impl RemoveReason {
    /// Whether the member is being replaced because it failed.
    pub fn is_failure(self) -> bool {
        match self {
            RemoveReason::PodGone
            | RemoveReason::PodTerminated
            | RemoveReason::CrashLooping
            | RemoveReason::VolumeLost
            | RemoveReason::LearnerTimedOut
            | RemoveReason::NodeLost
            | RemoveReason::Corrupt => true,
            RemoveReason::ScaleDown | RemoveReason::Upgrade | RemoveReason::Reconfigure => false,
        }
    }
}

/// The one thing to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Held (paused by the user, or owned by a restore): change nothing.
    Held(HeldBy),
    /// Start the first member with `--initial-cluster-state=new`.
    CreateSeed {
        /// Member name.
        name: String,
        /// Its version.
        version: EtcdVersion,
    },
    /// Pods exist but no member answers yet; they are starting.
    WaitForMembers {
        /// What is awaited, for the condition message.
        reason: String,
    },
    /// No quorum: change nothing and report.
    NoQuorum {
        /// Voters that answered (and whose pods are not going away).
        healthy_voters: usize,
        /// Voting members.
        voters: usize,
        /// Voters that do not answer now but whose data is still there and whose etcd may answer
        /// again (a running pod, or an intact claim the member is restarted on). While these could
        /// make a quorum, automatic recovery must not restore over them.
        returning: Vec<String>,
    },
    /// A pod whose member is not in the membership (removed, or never added): delete it and its data.
    DeleteOrphanPod {
        /// Pod name.
        name: String,
    },
    /// A member in the membership that has never started and has no pod (the operator stopped right
    /// after adding it): create its pod so it joins.
    CreateMemberPod {
        /// Member name.
        name: String,
        /// Its version.
        version: EtcdVersion,
    },
    /// A member whose pod is gone but whose data claim is intact: start a new pod for the same member
    /// on that claim. It keeps its name, member ID and data; no membership change, so no quorum needed.
    RestartMember {
        /// Member name.
        name: String,
        /// The version it runs.
        version: EtcdVersion,
    },
    /// A member's pod terminated for good (failed, evicted) while its data claim is intact: delete the
    /// pod only, so the member is restarted on its data next.
    DeleteTerminatedPod {
        /// Pod (and member) name.
        name: String,
    },
    /// Remove a member from the membership, then its pod and data.
    RemoveMember {
        /// Member ID.
        id: u64,
        /// Member name.
        name: String,
        /// Why.
        reason: RemoveReason,
    },
    /// Promote a caught-up learner to voter.
    PromoteLearner {
        /// Member ID.
        id: u64,
        /// Member name.
        name: String,
    },
    /// A learner is catching up.
    WaitForLearner {
        /// Member name.
        name: String,
    },
    /// Add a learner and start its pod.
    AddLearner {
        /// New member name.
        name: String,
        /// Its version.
        version: EtcdVersion,
        /// Whether this is the surge member of an upgrade (for messages).
        for_upgrade: bool,
    },
    /// Move leadership away from a member about to be removed.
    MoveLeader {
        /// Current leader.
        from: String,
        /// New leader's ID.
        to_id: u64,
        /// New leader's name.
        to: String,
    },
    /// Self-hosted pivot: the boot member does not answer and nothing of ours runs yet.
    WaitForBoot {
        /// Why, for the condition.
        reason: String,
    },
    /// Self-hosted pivot: the boot cluster is not what a pivot can start from. Nothing is changed.
    BootInvalid {
        /// What is wrong and what to do, for the condition.
        reason: String,
    },
    /// Self-hosted pivot: every self-hosted member is a healthy voter and the leader is one of them;
    /// remove the boot member.
    RemoveBootMember {
        /// Boot member ID.
        id: u64,
        /// Its name.
        name: String,
    },
    /// Restart a member with the `spec.etcd` settings: delete its pod (its claim stays), so it is
    /// restarted on its own data with the new settings next.
    RestartWithSettings {
        /// Member name.
        name: String,
    },
    /// Compact the history up to `revision` (NOSPACE).
    Compact {
        /// The newest revision a member reported.
        revision: i64,
    },
    /// Defragment one member's database; it serves nothing until done.
    Defragment {
        /// Member ID.
        id: u64,
        /// Member name.
        name: String,
        /// Why, for messages.
        why: String,
    },
    /// Disarm an alarm whose cause is gone.
    DisarmAlarm {
        /// The member it is raised on.
        member_id: u64,
        /// Which.
        kind: AlarmKind,
    },
    /// Maintenance is needed and cannot be done safely: change nothing and say why.
    MaintenanceBlocked {
        /// What is wrong and what to do, for the condition.
        reason: String,
    },
    /// Nothing to do.
    Converged,
}

impl Step {
    /// Whether the step changes the cluster (for the Progressing condition).
    pub fn is_change(&self) -> bool {
        match self {
            Step::Held(_)
            | Step::NoQuorum { .. }
            | Step::BootInvalid { .. }
            | Step::MaintenanceBlocked { .. }
            | Step::Converged => false,
            Step::CreateSeed { .. }
            | Step::WaitForBoot { .. }
            | Step::RemoveBootMember { .. }
            | Step::WaitForMembers { .. }
            | Step::DeleteOrphanPod { .. }
            | Step::CreateMemberPod { .. }
            | Step::RestartMember { .. }
            | Step::DeleteTerminatedPod { .. }
            | Step::RemoveMember { .. }
            | Step::PromoteLearner { .. }
            | Step::WaitForLearner { .. }
            | Step::AddLearner { .. }
            | Step::MoveLeader { .. }
            | Step::RestartWithSettings { .. }
            | Step::Compact { .. }
            | Step::Defragment { .. }
            | Step::DisarmAlarm { .. } => true,
        }
    }
}

impl Step {
    /// Without quorum: the voters whose data is still there and who, answering again, would give the
    /// cluster back its quorum. While there are such voters, nothing may restore over them.
    pub fn quorum_may_return(&self) -> Option<&[String]> {
        match self {
            Step::NoQuorum {
                healthy_voters,
                voters,
                returning,
            } if !returning.is_empty() && healthy_voters + returning.len() >= quorum(*voters) => {
                Some(returning)
            }
            _ => None,
        }
    }
}

/// The version new members get, or why `spec.version` is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPlan {
    /// Members should run this version.
    Target(EtcdVersion),
    /// `spec.version` is refused; new members keep the running version.
    Refused {
        /// Version new members get instead.
        keep: EtcdVersion,
        /// Why, for the condition.
        reason: String,
    },
}

impl VersionPlan {
    /// The version new members get.
    pub fn version(&self) -> EtcdVersion {
        match self {
            VersionPlan::Target(v) | VersionPlan::Refused { keep: v, .. } => *v,
        }
    }
}

/// The decision: one step, and a version refusal to report if there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to do now.
    pub step: Step,
    /// What is wrong with `spec.version`, if anything.
    pub version_refusal: Option<String>,
}

/// Which version new members should run, given the versions running now.
pub fn version_plan(desired: EtcdVersion, running: &[EtcdVersion]) -> VersionPlan {
    let Some(&oldest) = running.iter().min() else {
        return VersionPlan::Target(desired);
    };
    let newest = running.iter().max().copied().unwrap_or(oldest);
    if desired < newest {
        return VersionPlan::Refused {
            keep: newest,
            reason: format!(
                "downgrade from {newest} to {desired} is not supported; members keep running {newest}"
            ),
        };
    }
    if desired.major != oldest.major || desired.minor > oldest.minor + 1 {
        return VersionPlan::Refused {
            keep: newest,
            reason: format!(
                "upgrade from {oldest} to {desired} skips a minor version; upgrade to {}.{}.x first",
                oldest.major,
                oldest.minor + 1
            ),
        };
    }
    VersionPlan::Target(desired)
}

pub use crate::vocabulary::ordinal;

/// A name no pod or member uses: one past the highest ordinal seen.
pub fn next_member_name(o: &Observed) -> String {
    let members = o
        .membership
        .iter()
        .flat_map(|m| m.members.iter().map(|m| m.name.as_str()));
    let highest = o
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .chain(members)
        .filter_map(|n| ordinal(&o.cluster, n))
        .max();
    let next = highest.map_or(0, |h| h + 1).max(o.ordinal_floor);
    format!("{}-{next}", o.cluster)
}

/// How long a learner may take to catch up.
pub fn learner_deadline(db_size_bytes: u64) -> Duration {
    let gib = db_size_bytes.div_ceil(1 << 30) as u32;
    LEARNER_BASE_DEADLINE + LEARNER_DEADLINE_PER_GIB * gib
}

/// The next step for the cluster.
pub fn next_step(o: &Observed) -> Decision {
    let running: Vec<EtcdVersion> = o
        .pods
        .iter()
        .filter(|p| p.state != PodState::Deleting)
        .map(|p| p.version)
        .collect();
    let plan = version_plan(o.desired.version, &running);
    let version_refusal = match &plan {
        VersionPlan::Refused { reason, .. } => Some(reason.clone()),
        VersionPlan::Target(_) => None,
    };
    let step = if let Some(by) = &o.desired.held_by {
        Step::Held(by.clone())
    } else {
        membership_step(o, plan.version())
    };
    Decision {
        step,
        version_refusal,
    }
}

fn pod<'a>(o: &'a Observed, name: &str) -> Option<&'a PodView> {
    o.pods.iter().find(|p| p.name == name)
}

/// The member's node has been lost for longer than the spec allows: it is not waited for any more.
pub fn node_lost_too_long(o: &Observed, name: &str) -> bool {
    o.node_losses
        .iter()
        .any(|l| l.member == name && l.lost_for >= o.desired.replace_after_node_lost)
}

/// Why a started member counts as dead, if it does.
fn dead_reason(o: &Observed, m: &MemberView) -> Option<RemoveReason> {
    // Only a member that does not answer, and that its peers do not follow as their leader: a lost
    // kubelet does not stop the containers it started, and the operator may be the one cut off.
    let leads = o.membership.as_ref().is_some_and(|ms| ms.leader == Some(m.id));
    if m.health.is_none() && !leads && node_lost_too_long(o, &m.name) {
        return Some(RemoveReason::NodeLost);
    }
    match pod(o, &m.name) {
        None => Some(RemoveReason::PodGone),
        Some(p) if p.volume_lost => Some(RemoveReason::VolumeLost),
        // etcd refused the member's data at start and every other voter agrees on one hash: the
        // copy that differs is this one, proven now rather than after five restarts' back-off.
        Some(PodView {
            data_refused: Some(refusal),
            ..
        }) if m.health.is_none() && maintenance::refused_data_is_its_own(o, m, *refusal) => {
            Some(RemoveReason::Corrupt)
        }
        Some(p) => match p.state {
            PodState::Terminated => Some(RemoveReason::PodTerminated),
            PodState::CrashLooping => Some(RemoveReason::CrashLooping),
            PodState::Deleting => Some(RemoveReason::PodGone),
            PodState::Starting | PodState::Running | PodState::Ready => None,
        },
    }
}

/// The member's claim, when its data lives on one that is still there.
fn claim<'a>(o: &'a Observed, name: &str) -> Option<&'a ClaimView> {
    match &o.data {
        DataHome::Claims(claims) => claims.iter().find(|c| c.member == name),
        DataHome::Pod => None,
    }
}

/// The member's data outlives its pod: it is restarted on it, never replaced for losing its pod.
fn durable(o: &Observed, name: &str) -> bool {
    claim(o, name).is_some()
}

/// The version a member restarted on its data runs: the one its claim records, else the plan's.
fn restart_version(o: &Observed, name: &str, planned: EtcdVersion) -> EtcdVersion {
    claim(o, name).and_then(|c| c.version).unwrap_or(planned)
}

/// The member's pod is going away (being deleted, or terminated for good), or (pods live with their
/// members) already gone: whatever its etcd answers now, it will not be there to vote.
fn going_away(o: &Observed, m: &MemberView) -> bool {
    match pod(o, &m.name) {
        Some(p) => matches!(p.state, PodState::Deleting | PodState::Terminated),
        // Self-hosted members (and the boot member) may answer without a pod of ours: a static-pod
        // checkpoint runs them, so their answer is all there is to go by.
        None => !o.pods_first,
    }
}

/// A voter that counts toward quorum: it answers, and its pod stays. Alarms do not matter here: a
/// member with an alarm is reachable, and reading an alarm as lost quorum would invite a restore over
/// intact data.
fn counts_for_quorum(o: &Observed, m: &MemberView) -> bool {
    m.health.is_some() && !going_away(o, m)
}

/// Healthy enough for the membership to change around it: it counts for quorum and has no alarm.
pub(super) fn is_healthy(o: &Observed, m: &MemberView) -> bool {
    counts_for_quorum(o, m) && m.health.as_ref().is_some_and(|h| !h.has_errors())
}

/// A member that does not count now whose data is still there, so its etcd may answer again: its pod
/// runs (a container restart keeps even an emptyDir), or its intact claim gets a new pod. A member
/// that keeps crashing is not counted: etcd may be refusing its data.
fn may_return(o: &Observed, name: &str) -> bool {
    match pod(o, name) {
        Some(p) if p.state == PodState::CrashLooping || p.volume_lost => false,
        Some(p) if matches!(p.state, PodState::Starting | PodState::Running | PodState::Ready) => true,
        Some(_) | None => durable(o, name),
    }
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// A started member whose data claim is intact but whose pod is gone or terminated: bring it back on
/// its data. Needs no quorum (the membership does not change), so it comes before the quorum check.
fn restart_step(o: &Observed, name: &str, version: EtcdVersion) -> Option<Step> {
    // A new pod on a claim whose node is gone would wait for that node; the member is replaced.
    if !durable(o, name) || node_lost_too_long(o, name) {
        return None;
    }
    match pod(o, name).map(|p| p.state) {
        None => Some(Step::RestartMember {
            name: name.to_owned(),
            version: restart_version(o, name, version),
        }),
        Some(PodState::Terminated) => Some(Step::DeleteTerminatedPod {
            name: name.to_owned(),
        }),
        Some(_) => None,
    }
}

fn membership_step(o: &Observed, version: EtcdVersion) -> Step {
    let Some(ms) = &o.membership else {
        return no_membership_step(o, version);
    };

    // Half-finished steps first. A pod without a member: its member was removed (or never added). Pods
    // first, a young one is a join to retry, not an orphan.
    let joining = joining_pod(o, ms);
    // A pod stuck in deletion on a lost node (the operator stopped between removing its member and
    // force-deleting the pod) is one too: its kubelet will never finish the deletion.
    let unfinished = |p: &PodView| p.state != PodState::Deleting || node_lost_too_long(o, &p.name);
    if let Some(p) = o.pods.iter().find(|p| {
        unfinished(p)
            && !ms.members.iter().any(|m| m.name == p.name)
            && joining.is_none_or(|j| j.name != p.name)
    }) {
        return Step::DeleteOrphanPod { name: p.name.clone() };
    }
    // A member added but never started, with no pod: the operator stopped between the two, or (pods
    // first) the pod was deleted before the member started.
    if let Some(m) = ms
        .members
        .iter()
        .find(|m| !m.started && pod(o, &m.name).is_none())
    {
        if o.pods_first {
            return Step::RemoveMember {
                id: m.id,
                name: m.name.clone(),
                reason: RemoveReason::PodGone,
            };
        }
        return Step::CreateMemberPod {
            name: m.name.clone(),
            version,
        };
    }

    let boot_id = o.boot.as_ref().and_then(|b| b.id);
    if let Some(b) = &o.boot {
        let strangers: Vec<&str> = ms
            .members
            .iter()
            .filter(|m| Some(m.id) != boot_id && ordinal(&o.cluster, &m.name).is_none())
            .map(|m| m.name.as_str())
            .collect();
        if boot_id.is_none() && !ms.members.iter().any(|m| ordinal(&o.cluster, &m.name).is_some()) {
            return Step::BootInvalid {
                reason: format!(
                    "no member of the boot cluster advertises {} as its client URL",
                    b.endpoint
                ),
            };
        }
        if !strangers.is_empty() {
            return Step::BootInvalid {
                reason: format!(
                    "the boot cluster has members other than the boot member ({}); a pivot starts from exactly one member: remove them first",
                    strangers.join(", ")
                ),
            };
        }
    }

    // Members whose data is intact come back on it, quorum or not: it changes no membership.
    if let Some(step) = ms
        .members
        .iter()
        .filter(|m| m.started && Some(m.id) != boot_id)
        .find_map(|m| restart_step(o, &m.name, version))
    {
        return step;
    }

    let voters: Vec<&MemberView> = ms.members.iter().filter(|m| !m.is_learner).collect();
    let counted = |m: &MemberView| counts_for_quorum(o, m);
    let healthy_voters = voters.iter().filter(|m| counted(m)).count();
    let no_quorum = || Step::NoQuorum {
        healthy_voters,
        voters: voters.len(),
        returning: voters
            .iter()
            .filter(|m| !counted(m) && may_return(o, &m.name))
            .map(|m| m.name.clone())
            .collect(),
    };
    if healthy_voters < quorum(voters.len()) {
        return no_quorum();
    }

    // Dead voters: removing one keeps quorum if the voters that count, less the one removed, still
    // make a majority of the smaller membership. The boot member has no pod and leaves only by its own
    // rule below.
    for m in voters.iter().filter(|m| Some(m.id) != boot_id) {
        if let Some(reason) = dead_reason(o, m).filter(|_| m.started) {
            if durable(o, &m.name) && reason == RemoveReason::PodGone {
                // Its pod is being deleted; the member is restarted on its claim once it is gone.
                let reason = match o.node_losses.iter().find(|l| l.member == m.name) {
                    Some(l) => format!(
                        "the node {} of {} is lost (for {}s); the member is restarted on its own data when the node returns, or replaced after {}s",
                        l.node,
                        m.name,
                        l.lost_for.as_secs(),
                        o.desired.replace_after_node_lost.as_secs()
                    ),
                    None => format!(
                        "the pod of {} is being deleted; the member is restarted on its own data",
                        m.name
                    ),
                };
                return Step::WaitForMembers { reason };
            }
            let remaining = healthy_voters - usize::from(counted(m));
            if remaining >= quorum(voters.len() - 1) {
                return Step::RemoveMember {
                    id: m.id,
                    name: m.name.clone(),
                    reason,
                };
            }
            return no_quorum();
        }
    }

    // One learner at a time: promote, wait, or give up on it.
    if let Some(l) = ms.members.iter().find(|m| m.is_learner) {
        return learner_step(o, ms, l);
    }

    // An alarm with every voter answering: the way out of it (not during a pivot, whose boot member
    // is not ours to restart or defragment).
    if boot_id.is_none()
        && let Some(step) = maintenance::alarm_step(o, ms, &voters)
    {
        return step;
    }

    // Every voter must be healthy before the membership grows, shrinks or rolls. Once the self-hosted
    // members are complete, the boot member's health no longer matters: it is the next to go.
    let ours_complete = voters.iter().filter(|m| Some(m.id) != boot_id).count() >= o.desired.size;
    let must_be_healthy = |m: &&&MemberView| !(ours_complete && Some(m.id) == boot_id);
    let sick: Vec<String> = voters
        .iter()
        .filter(must_be_healthy)
        .filter(|m| !is_healthy(o, m))
        .map(|m| match m.health.as_ref().filter(|h| h.has_errors()) {
            Some(h) => format!("{} (reports {})", m.name, h.errors.join("; ")),
            None => m.name.clone(),
        })
        .collect();
    if !sick.is_empty() {
        let ours: Vec<&MemberView> = voters.iter().copied().filter(|m| Some(m.id) != boot_id).collect();
        if let Some(step) = maintenance::stuck_outdated_step(o, &ours) {
            return step;
        }
        return Step::WaitForMembers {
            reason: format!("waiting for {} to become healthy", sick.join(", ")),
        };
    }

    let size = o.desired.size;
    let outdated = |m: &&&MemberView| pod(o, &m.name).is_some_and(|p| p.version != version);
    let voters: Vec<&MemberView> = voters.into_iter().filter(|m| Some(m.id) != boot_id).collect();
    if voters.len() < size {
        return Step::AddLearner {
            name: joining.map_or_else(|| next_member_name(o), |p| p.name.clone()),
            version,
            for_upgrade: false,
        };
    }
    if let Some(boot) = boot_id.and_then(|id| ms.members.iter().find(|m| m.id == id)) {
        return boot_removal_step(ms, &voters, boot);
    }
    if voters.len() > size {
        // Prefer removing members on an old version (the tail of an upgrade), then members on old
        // settings (the tail of a settings roll), then the newest.
        let old_settings = |m: &&&MemberView| pod(o, &m.name).is_some_and(maintenance::settings_outdated);
        let reason = if voters.iter().any(|m| outdated(&m)) {
            RemoveReason::Upgrade
        } else if voters.iter().any(|m| old_settings(&m)) {
            RemoveReason::Reconfigure
        } else {
            RemoveReason::ScaleDown
        };
        return remove_one(o, ms, &voters, reason, version);
    }
    if voters.iter().any(|m| outdated(&m)) {
        if let Some(blocked) = maintenance::certificates_block(o) {
            return blocked;
        }
        return Step::AddLearner {
            name: next_member_name(o),
            version,
            for_upgrade: true,
        };
    }
    let roll = maintenance::settings_roll_step(o, ms, &voters, true);
    // A roll refused for the certificates does not hold defragmentation up.
    if let Some(step) = roll
        .as_ref()
        .filter(|s| !matches!(s, Step::MaintenanceBlocked { .. }))
    {
        return step.clone();
    }
    if let Some(step) = maintenance::threshold_step(o, ms, &voters) {
        return step;
    }
    roll.unwrap_or(Step::Converged)
}

/// Pods first: the newest pod without a member that is still within [`JOIN_GRACE`], if any.
pub(super) fn joining_pod<'a>(o: &'a Observed, ms: &Membership) -> Option<&'a PodView> {
    if !o.pods_first {
        return None;
    }
    o.pods
        .iter()
        .filter(|p| {
            !matches!(p.state, PodState::Deleting | PodState::Terminated)
                && p.age < JOIN_GRACE
                && !ms.members.iter().any(|m| m.name == p.name)
        })
        .max_by_key(|p| ordinal(&o.cluster, &p.name))
}

/// Every self-hosted member is a healthy voter: hand leadership to one of them, then remove the boot
/// member. The self-hosted voters alone are then the whole quorum, and all of them answer.
fn boot_removal_step(ms: &Membership, voters: &[&MemberView], boot: &MemberView) -> Step {
    let leader_applied = leader_applied(ms).unwrap_or(0);
    let behind: Vec<&str> = voters
        .iter()
        .filter(|m| {
            m.health
                .as_ref()
                .is_none_or(|h| (h.applied_index as f64) < (leader_applied as f64) * LEARNER_READY_FRACTION)
        })
        .map(|m| m.name.as_str())
        .collect();
    if !behind.is_empty() {
        return Step::WaitForMembers {
            reason: format!(
                "waiting for {} to catch up before the boot member is removed",
                behind.join(", ")
            ),
        };
    }
    match (ms.leader, voters.first()) {
        (None, _) | (_, None) => Step::WaitForMembers {
            reason: "waiting for a leader before the boot member is removed".into(),
        },
        (Some(leader), Some(successor)) if leader == boot.id => Step::MoveLeader {
            from: boot.name.clone(),
            to_id: successor.id,
            to: successor.name.clone(),
        },
        (Some(_), Some(_)) => Step::RemoveBootMember {
            id: boot.id,
            name: boot.name.clone(),
        },
    }
}

/// Pods exist (or not) but no member answered a member list.
fn no_membership_step(o: &Observed, version: EtcdVersion) -> Step {
    let live: Vec<&PodView> = o.pods.iter().filter(|p| p.state != PodState::Deleting).collect();
    if live.is_empty() && o.boot.is_some() {
        // Never a fresh seed: that would split from the boot cluster the API server runs on.
        return Step::WaitForBoot {
            reason: "the boot member does not answer; the pivot starts when it does".into(),
        };
    }
    if let (DataHome::Claims(claims), true) = (&o.data, o.bootstrapped) {
        // No member answers, but claims hold the data: every member comes back on its own (a node
        // restart, every pod deleted at once). The cluster ID and every write are kept; no restore.
        let mut claims: Vec<&ClaimView> = claims
            .iter()
            .filter(|c| o.known_members.contains(&c.member))
            .collect();
        claims.sort_by_key(|c| ordinal(&o.cluster, &c.member));
        if let Some(step) = claims.iter().find_map(|c| restart_step(o, &c.member, version)) {
            return step;
        }
        let deleting: Vec<&str> = claims
            .iter()
            .filter(|c| pod(o, &c.member).is_some_and(|p| p.state == PodState::Deleting))
            .map(|c| c.member.as_str())
            .collect();
        if !deleting.is_empty() {
            return Step::WaitForMembers {
                reason: format!(
                    "the pods of {} are being deleted; each member is restarted on its own data",
                    deleting.join(", ")
                ),
            };
        }
    }
    if live.is_empty() {
        if o.bootstrapped {
            // Every member is gone with its data: starting a fresh seed would silently replace the
            // data with an empty cluster. That is a restore, and a human (or the recovery policy)
            // decides it.
            // Members whose claims are still there (not restarted above because their node is lost)
            // may come back with it: nothing may restore over them.
            let returning: Vec<String> = o
                .known_members
                .iter()
                .filter(|m| durable(o, m))
                .cloned()
                .collect();
            return Step::NoQuorum {
                healthy_voters: 0,
                voters: o.known_members.len(),
                returning,
            };
        }
        return Step::CreateSeed {
            name: next_member_name(o),
            version,
        };
    }
    let starting = live
        .iter()
        .any(|p| matches!(p.state, PodState::Starting | PodState::Running));
    if !o.bootstrapped || starting {
        return Step::WaitForMembers {
            reason: "waiting for the first member to answer".into(),
        };
    }
    Step::NoQuorum {
        healthy_voters: 0,
        // The members status last listed, when it did: pods of lost members are gone, so counting
        // only live pods would make one survivor look like a whole cluster that may come back.
        voters: o.known_members.len().max(live.len()),
        returning: live
            .iter()
            .filter(|p| may_return(o, &p.name))
            .map(|p| p.name.clone())
            .collect(),
    }
}

/// The raft index the leader has applied, when there is a leader and it answered.
fn leader_applied(ms: &Membership) -> Option<u64> {
    ms.leader
        .and_then(|id| ms.members.iter().find(|m| m.id == id))
        .and_then(|m| m.health.as_ref())
        .map(|h| h.applied_index)
}

fn learner_step(o: &Observed, ms: &Membership, l: &MemberView) -> Step {
    // A learner does not vote, so removing a broken one never costs quorum. One whose pod is being
    // deleted with its claim intact is restarted on that claim once the pod is gone.
    let dead = dead_reason(o, l).filter(|_| l.started);
    if dead == Some(RemoveReason::PodGone) && durable(o, &l.name) {
        return Step::WaitForLearner { name: l.name.clone() };
    }
    if let Some(reason) = dead {
        return Step::RemoveMember {
            id: l.id,
            name: l.name.clone(),
            reason,
        };
    }
    let caught_up = match (l.health.as_ref(), leader_applied(ms)) {
        (Some(h), Some(leader)) => {
            !h.has_errors() && (h.applied_index as f64) >= (leader as f64) * LEARNER_READY_FRACTION
        }
        _ => false,
    };
    if caught_up {
        return Step::PromoteLearner {
            id: l.id,
            name: l.name.clone(),
        };
    }
    let age = pod(o, &l.name).map(|p| p.age).unwrap_or_default();
    if age > learner_deadline(ms.db_size_bytes) {
        return Step::RemoveMember {
            id: l.id,
            name: l.name.clone(),
            reason: RemoveReason::LearnerTimedOut,
        };
    }
    Step::WaitForLearner { name: l.name.clone() }
}

/// Removes one voter, never the leader directly: leadership moves first.
fn remove_one(
    o: &Observed,
    ms: &Membership,
    voters: &[&MemberView],
    reason: RemoveReason,
    version: EtcdVersion,
) -> Step {
    let rank = |m: &MemberView| {
        let on_old_version = pod(o, &m.name).is_some_and(|p| p.version != version);
        let on_old_settings = pod(o, &m.name).is_some_and(maintenance::settings_outdated);
        // Old version first, then old settings, then the highest ordinal (the newest member).
        (
            on_old_version,
            on_old_settings,
            ordinal(&o.cluster, &m.name).unwrap_or(0),
        )
    };
    let Some(victim) = voters.iter().max_by_key(|m| rank(m)) else {
        return Step::Converged;
    };
    if ms.leader == Some(victim.id) {
        // Hand leadership to a member that stays: on the target version, highest ordinal last to go.
        let successor = voters
            .iter()
            .filter(|m| m.id != victim.id)
            .min_by_key(|m| rank(m));
        if let Some(s) = successor {
            return Step::MoveLeader {
                from: victim.name.clone(),
                to_id: s.id,
                to: s.name.clone(),
            };
        }
    }
    Step::RemoveMember {
        id: victim.id,
        name: victim.name.clone(),
        reason,
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
pub(super) mod tests;
