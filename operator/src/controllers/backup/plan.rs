//! What an EtcdBackup does next, from what was observed: pure functions, tested case by case. A
//! backup starts only once everything it needs checks out (its cluster, a destination, the key it
//! encrypts to, no other backup of the cluster running, a healthy member whose sidecar speaks mutual
//! TLS and mounts the destination, or for the default backup claim, which members do not mount, a
//! running writer pod); a running one is polled until its sidecar says how it ended.

use std::time::Duration;

use kube::ResourceExt;
use ouroboros_crds::{
    EtcdCluster,
    backup::BackupProgress,
    sidecar::{Job, JobDestination, JobEncryption, JobState, Manifest},
};

use crate::{
    sidecar::{SidecarAddr, SidecarError},
    vocabulary::Ports,
};

/// Used when a running backup has no recorded deadline (it was started by an older operator).
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a writer pod may go without an IP after its creation before the backup fails: long
/// enough to pull the sidecar image and attach the claim, short enough that a writer that cannot be
/// scheduled (its claim's volume on a node it may not run on) is reported rather than waited for.
pub const WRITER_START_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A writer pod's `activeDeadlineSeconds` is the backup's deadline plus its start time plus this, so
/// a writer the operator failed to delete ends by itself, never before its backup could.
pub const WRITER_DEADLINE_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How long a backup waits for the cluster it names to appear before it fails.
pub const MISSING_CLUSTER_WAIT: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// How long a backup of a `db_bytes` database may run: ten minutes, plus five per started GiB (a
/// slow link to the store, not the snapshot, is what takes long).
pub fn backup_timeout(db_bytes: u64) -> Duration {
    let gib = db_bytes.div_ceil(1 << 30);
    Duration::from_secs(600 + 300 * gib)
}

/// Why the cluster this backup was started for is gone, if it is: deleted, being deleted, or replaced
/// by a new cluster of the same name (`recorded_uid` is the UID the backup recorded when it first saw
/// its cluster). A backup of a cluster that no longer exists fails instead of waiting for it.
pub fn cluster_gone(recorded_uid: Option<&str>, cluster: Option<&EtcdCluster>) -> Option<String> {
    match (recorded_uid, cluster) {
        (_, Some(c)) if c.metadata.deletion_timestamp.is_some() => {
            Some(format!("EtcdCluster {} is being deleted", c.name_any()))
        }
        (Some(uid), Some(c)) if c.uid().is_some_and(|u| u != uid) => Some(format!(
            "EtcdCluster {} was deleted and created again (uid {uid} is gone); this backup belonged to the \
             deleted one: create a new EtcdBackup for the new cluster",
            c.name_any()
        )),
        (Some(_), None) => Some("its EtcdCluster was deleted".to_owned()),
        (Some(_) | None, Some(_)) | (None, None) => None,
    }
}

/// The member to back up from: a healthy voter, a follower when there is one (the leader has enough
/// to do).
pub fn choose_member(cluster: &EtcdCluster) -> Option<String> {
    member_candidates(cluster).into_iter().next()
}

/// Every member a backup may come from, best first: the healthy voters, followers before the leader.
pub fn member_candidates(cluster: &EtcdCluster) -> Vec<String> {
    let mut candidates: Vec<_> = cluster
        .status
        .as_ref()
        .map(|s| s.members.iter().filter(|m| m.healthy && !m.is_learner).collect())
        .unwrap_or_default();
    candidates.sort_by_key(|m| m.is_leader);
    candidates.into_iter().map(|m| m.name.clone()).collect()
}

/// A destination the sidecar can write to.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// Where the sidecar writes.
    pub destination: JobDestination,
    /// The claim the member pod must mount, for volume destinations.
    pub claim: Option<String>,
    /// The claim is the default one, which members do not mount: a writer pod writes to it unless
    /// the member's pod still mounts it (made before members stopped mounting it).
    pub by_writer: bool,
}

/// A running member pod, as a backup needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPod {
    /// Its IP.
    pub ip: String,
    /// Its ports.
    pub ports: Ports,
    /// The claims it mounts.
    pub claims: Vec<String>,
    /// The name its sidecar's certificate carries.
    pub sidecar_identity: String,
    /// Its sidecar serves the operator over mutual TLS (pods made before that serve plain HTTP,
    /// which the operator no longer speaks).
    pub sidecar_serves_tls: bool,
    /// It runs as root (its data was written by root): a writer for it does too.
    pub runs_as_root: bool,
    /// The Secret its sidecar's client certificate comes from (with `spec.tls`): a writer for it
    /// mounts the same, the set the member trusts (`certificate_copies`).
    pub client_tls_secret: Option<String>,
}

/// A backup's writer pod, as starting the backup sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterPod {
    /// The member its sidecar backs up.
    pub member: String,
    /// Its IP, once it is Running.
    pub ip: Option<String>,
    /// How long ago it was created.
    pub age: Duration,
    /// Its `PodScheduled` condition's message while it is not scheduled.
    pub unscheduled: Option<String>,
    /// It is being deleted or has ended (failed, or past its deadline).
    pub gone: bool,
}

/// Of the healthy voters (in [`choose_member`]'s order, with their pods), the one to back up to
/// `claim` from: the first whose pod still mounts it (made before members stopped mounting the
/// default claim), whose own sidecar writes it as before; otherwise the first, through a writer.
pub fn prefer_mounting(
    candidates: Vec<(String, Option<MemberPod>)>,
    claim: &str,
) -> Option<(String, Option<MemberPod>)> {
    let mounting = candidates
        .iter()
        .position(|(_, p)| p.as_ref().is_some_and(|p| p.claims.iter().any(|c| c == claim)));
    candidates.into_iter().nth(mounting.unwrap_or(0))
}

/// What starting a backup looks at, once its cluster exists.
#[derive(Debug)]
pub struct StartView {
    /// The backup's UID and name (the sidecar job's id and name).
    pub backup: (String, String),
    /// The cluster's name and UID.
    pub cluster: (String, Option<String>),
    /// The destination, or why there is none.
    pub destination: Result<Resolved, String>,
    /// The age recipients to encrypt to, none, or why the key cannot be read.
    pub encryption: Result<Option<JobEncryption>, String>,
    /// Who holds the cluster's backup slot.
    pub slot: Slot,
    /// Another backup of the same cluster that is Running (one started before the slot existed).
    pub running_other: Option<String>,
    /// The member chosen to back up from, and its pod when it runs and has an IP.
    pub member: Option<(String, Option<MemberPod>)>,
    /// This backup's writer pod, if it exists.
    pub writer: Option<WriterPod>,
    /// The member's database size in bytes (0 when it did not answer).
    pub db_size: u64,
    /// The cluster's `spec.backup.compressionLevel`.
    pub compression_level: u32,
    /// The cluster's `spec.backup.compression.codec`.
    pub codec: ouroboros_crds::sidecar::Codec,
}

/// The cluster's backup slot, as a backup or a restore drill sees it. Backups and drills of a
/// cluster share it, so a drill never runs while a backup streams from a member (or the other way
/// round): taking it is one conditional write, not a look at the others followed by an act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Nobody holds it, or its holder has finished or is gone.
    Free {
        /// The cluster's `resourceVersion`, which taking it is conditional on.
        cluster_version: String,
    },
    /// This backup (or this drill) holds it.
    Mine,
    /// Someone else holds it and has not finished: what it is, for the reason a waiter gives
    /// (`EtcdBackup b-1`, `the restore drill of EtcdBackup b-1`).
    HeldBy(String),
}

/// Who asks for the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotUser<'a> {
    /// The EtcdBackup of this name, to stream its snapshot.
    Backup(&'a str),
    /// The restore drill of the EtcdBackup of this name.
    Drill(&'a str),
}

/// How a drill writes its name in the slot: `drill:<backup>@<when it took it>`. Backup names are
/// DNS names, so they never hold a `:`.
const DRILL_HOLDER: &str = "drill:";

/// How long a drill holds the slot before its drill is seen running: it creates its Job right after
/// taking the slot, so a hold older than this whose drill is not running was left by an attempt
/// that did not start (and a drill asked for again later does not find its old hold alive).
pub const DRILL_HOLD_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// The slot's value for the drill of `backup` taking it at `at`.
pub fn drill_holder(backup: &str, at: jiff::Timestamp) -> String {
    format!("{DRILL_HOLDER}{backup}@{at}")
}

/// Who the cluster's slot names, and whether that hold counts now: a backup while its EtcdBackup
/// exists and has not finished; a drill while its drill runs (or, for [`DRILL_HOLD_GRACE`] after
/// taking it, is about to).
struct Holder<'a> {
    /// The holder, as a [`SlotUser`].
    user: SlotUser<'a>,
    /// Its hold counts now.
    holds: bool,
}

fn holder<'a>(
    cluster: &'a EtcdCluster,
    backups: &[ouroboros_crds::EtcdBackup],
    now: jiff::Timestamp,
) -> Option<Holder<'a>> {
    use ouroboros_crds::DrillPhase;
    let value = cluster
        .annotations()
        .get(crate::vocabulary::ANNOTATION_BACKUP_SLOT)?;
    let of_cluster = |name: &str| {
        backups
            .iter()
            .find(|b| b.name_any() == name && b.spec.cluster_name == cluster.name_any())
    };
    Some(match value.strip_prefix(DRILL_HOLDER) {
        Some(rest) => {
            let (name, taken) = rest.rsplit_once('@').unwrap_or((rest, ""));
            let drill = of_cluster(name).and_then(|b| b.status.as_ref()?.drill);
            let fresh = taken
                .parse::<jiff::Timestamp>()
                .is_ok_and(|t| now.duration_since(t) < DRILL_HOLD_GRACE);
            Holder {
                user: SlotUser::Drill(name),
                holds: drill == Some(DrillPhase::Running) || (drill == Some(DrillPhase::Pending) && fresh),
            }
        }
        None => Holder {
            user: SlotUser::Backup(value),
            holds: of_cluster(value).is_some_and(|b| {
                !b.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p.is_terminal())
            }),
        },
    })
}

/// The backup whose restore drill holds the cluster's slot now, if one does: a defragmentation by
/// threshold yields to it.
pub fn drill_holding(
    cluster: &EtcdCluster,
    backups: &[ouroboros_crds::EtcdBackup],
    now: jiff::Timestamp,
) -> Option<String> {
    match holder(cluster, backups, now)? {
        Holder {
            user: SlotUser::Drill(name),
            holds: true,
        } => Some(name.to_owned()),
        Holder { .. } => None,
    }
}

/// The slot as `me` sees it, from the cluster's annotation and the namespace's EtcdBackups (see
/// [`holder`] for when a hold counts). A backup's own name stands even before its status says
/// anything.
pub fn slot_of(
    cluster: &EtcdCluster,
    me: SlotUser<'_>,
    backups: &[ouroboros_crds::EtcdBackup],
    now: jiff::Timestamp,
) -> Slot {
    let free = || Slot::Free {
        cluster_version: cluster.resource_version().unwrap_or_default(),
    };
    let Some(Holder { user, holds }) = holder(cluster, backups, now) else {
        return free();
    };
    let mine = user == me;
    match user {
        SlotUser::Backup(_) if mine => Slot::Mine,
        _ if !holds => free(),
        _ if mine => Slot::Mine,
        SlotUser::Backup(name) => Slot::HeldBy(format!("EtcdBackup {name}")),
        SlotUser::Drill(name) => Slot::HeldBy(format!("the restore drill of EtcdBackup {name}")),
    }
}

/// The one step of starting a backup.
#[derive(Debug, PartialEq)]
pub enum StartStep {
    /// Fail for good, saying why (nothing was backed up).
    Fail(String),
    /// Wait, saying why, and look again after this many seconds.
    Wait(String, u64),
    /// Take the cluster's backup slot, conditional on the cluster's `resourceVersion` (a backup that
    /// loses the race sees the winner hold it at its next look).
    TakeSlot {
        /// The `resourceVersion` the slot was seen free at.
        cluster_version: String,
    },
    /// Create the backup's writer pod, backing up `member` (its pod is `pod`), to run at most
    /// `active_deadline`.
    CreateWriter {
        /// The member it backs up.
        member: String,
        /// That member's pod.
        pod: MemberPod,
        /// The writer's `activeDeadlineSeconds`.
        active_deadline: Duration,
    },
    /// Delete the backup's writer pod, saying why (a new one is made at a later look).
    DeleteWriter(String),
    /// Ask the sidecar (the member's own, or the writer's) to run this job; it must finish within
    /// `timeout`.
    Start {
        /// The member backed up from.
        member: String,
        /// The pod whose sidecar runs the job: the member's, or the writer's.
        pod: MemberPod,
        /// The writer pod, when it runs the job.
        writer: Option<String>,
        /// The sidecar's job.
        job: Box<Job>,
        /// The deadline, from now.
        timeout: Duration,
    },
}

/// Where a backup whose cluster is absent stands: it waits a bounded time for a cluster made together
/// with it (GitOps applies both at once), and fails naming the field when the name is wrong.
pub fn absent_cluster_step(
    namespace: &str,
    cluster: &str,
    waited: Option<jiff::SignedDuration>,
) -> StartStep {
    if waited.is_some_and(|w| w >= MISSING_CLUSTER_WAIT) {
        return StartStep::Fail(format!(
            "EtcdCluster {namespace}/{cluster} does not exist (waited {}s); spec.clusterName must name a cluster in this namespace",
            MISSING_CLUSTER_WAIT.as_secs()
        ));
    }
    StartStep::Wait(format!("EtcdCluster {namespace}/{cluster} does not exist"), 15)
}

/// The next step of starting a backup whose cluster exists.
pub fn start_step(v: StartView) -> StartStep {
    let Resolved {
        destination,
        claim,
        by_writer,
    } = match v.destination {
        Ok(d) => d,
        Err(why) => return StartStep::Fail(why),
    };
    let encryption = match v.encryption {
        Ok(e) => e,
        Err(why) => return StartStep::Fail(why),
    };
    // One backup per cluster at a time: the slot decides (atomically), and a Running backup that
    // an older operator started without it is waited for too.
    let waiting =
        |other: &str| StartStep::Wait(format!("waiting for {other} of the same cluster to finish"), 5);
    if let Slot::HeldBy(other) = &v.slot {
        return waiting(other);
    }
    if let Some(other) = &v.running_other {
        return waiting(&format!("EtcdBackup {other}"));
    }
    let Some((member, pod)) = v.member else {
        return StartStep::Wait(
            format!("no healthy member of {} to back up from", v.cluster.0),
            10,
        );
    };
    let Some(pod) = pod else {
        return StartStep::Wait(format!("member {member} has no pod IP yet"), 5);
    };
    let unmounted = claim.filter(|c| !pod.claims.contains(c));
    let through_writer = unmounted.is_some() && by_writer;
    if let Some(claim) = unmounted.filter(|_| !by_writer) {
        return StartStep::Fail(format!(
            "member pod {member} does not mount the backup claim {claim}: pods mount the cluster's backup volume \
             when they are created, so use that volume or an s3 destination (members started after \
             spec.backup.destination changed mount the new one)"
        ));
    }
    if !through_writer && !pod.sidecar_serves_tls {
        return StartStep::Fail(format!(
            "member pod {member} runs a backup sidecar from before mutual TLS, which this operator does not \
             call (docs/security.md): delete the member pods one at a time, waiting for the cluster to \
             be Available in between, and each comes back with the current sidecar; nothing was backed up"
        ));
    }
    // The slot is taken last, once nothing else stands in the way, so a holder is never one that
    // waits for something else.
    if let Slot::Free { cluster_version } = v.slot {
        return StartStep::TakeSlot { cluster_version };
    }
    let timeout = backup_timeout(v.db_size);
    let (id, name) = v.backup;
    let (pod, writer) = if through_writer {
        match writer_step(&name, &member, pod, v.writer, timeout) {
            Ok(running) => running,
            Err(step) => return *step,
        }
    } else {
        (pod, None)
    };
    let (cluster_name, cluster_uid) = v.cluster;
    StartStep::Start {
        job: Box::new(Job {
            id,
            name,
            cluster_name,
            cluster_uid,
            member: member.clone(),
            destination,
            compression_level: v.compression_level,
            codec: v.codec,
            encryption,
        }),
        member,
        pod,
        writer,
        timeout,
    }
}

/// For a backup written by a writer pod: the running writer (as the pod to send the job to, and its
/// name), or the step that gets one.
fn writer_step(
    backup: &str,
    member: &str,
    member_pod: MemberPod,
    writer: Option<WriterPod>,
    timeout: Duration,
) -> Result<(MemberPod, Option<String>), Box<StartStep>> {
    let name = crate::vocabulary::backup_writer_name(backup);
    let Some(w) = writer else {
        return Err(Box::new(StartStep::CreateWriter {
            member: member.to_owned(),
            pod: member_pod,
            active_deadline: timeout + WRITER_START_TIMEOUT + WRITER_DEADLINE_MARGIN,
        }));
    };
    if w.gone {
        return Err(Box::new(StartStep::DeleteWriter(format!(
            "writer pod {name} has ended"
        ))));
    }
    if w.member != member {
        // Its member is no longer the one to back up from (it became unhealthy or the leader).
        return Err(Box::new(StartStep::DeleteWriter(format!(
            "writer pod {name} backs up {}, not {member}",
            w.member
        ))));
    }
    let scheduling = w.unscheduled.map(|m| format!(": {m}")).unwrap_or_default();
    let Some(ip) = w.ip else {
        if w.age >= WRITER_START_TIMEOUT {
            return Err(Box::new(StartStep::Fail(format!(
                "writer pod {name} has no IP {}s after it was created{scheduling}; it mounts the default \
                 backup claim, whose volume must be reachable from a node it may run on; nothing was backed up",
                WRITER_START_TIMEOUT.as_secs()
            ))));
        }
        return Err(Box::new(StartStep::Wait(
            format!("waiting for writer pod {name} to run{scheduling}"),
            3,
        )));
    };
    let pod = MemberPod {
        client_tls_secret: None,
        ip,
        ports: Ports::POD_NETWORK,
        claims: member_pod.claims,
        sidecar_identity: member_pod.sidecar_identity,
        sidecar_serves_tls: true,
        runs_as_root: member_pod.runs_as_root,
    };
    Ok((pod, Some(name)))
}

/// What polling a running backup looks at.
#[derive(Debug)]
pub struct PollView {
    /// The member it runs on.
    pub member: String,
    /// The writer pod that runs it, if one does.
    pub writer: Option<String>,
    /// Past its deadline.
    pub overdue: bool,
    /// The recorded deadline, for the message.
    pub deadline: Option<String>,
    /// Why its cluster is gone, if it is.
    pub gone: Option<String>,
    /// The sidecar (the writer's, else the member's) and what it says of the job; `None` when its
    /// pod is gone.
    pub state: Option<(SidecarAddr, Result<JobState, SidecarError>)>,
}

/// The one step of polling a running backup.
#[derive(Debug, PartialEq)]
pub enum PollStep {
    /// Fail, saying why (nothing was committed).
    Fail(String),
    /// Stop the upload at this sidecar (its cluster is going), then fail saying why.
    Abort(SidecarAddr, String),
    /// Look again after some seconds; a running job's progress (bytes streamed, of the expected
    /// total) goes into status meanwhile.
    Wait {
        /// Seconds until the next look.
        secs: u64,
        /// Bytes streamed and the expected total, when the sidecar reports them.
        progress: Option<(u64, Option<u64>)>,
    },
    /// Stored and verified: apply retention, then record it.
    Succeed {
        /// The sidecar that took it (retention runs through it).
        addr: SidecarAddr,
        /// The archive's manifest.
        manifest: Box<Manifest>,
        /// Its location.
        location: String,
    },
}

/// How often a running backup's progress is written to its status at most: each write is an update
/// every watcher of EtcdBackups receives.
pub const PROGRESS_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// The progress to record now, or `None` while the recorded one is recent or says the same.
pub fn progress_due(
    recorded: Option<&BackupProgress>,
    streamed: u64,
    total: Option<u64>,
    now: jiff::Timestamp,
) -> Option<BackupProgress> {
    let bytes_streamed = i64::try_from(streamed).unwrap_or(i64::MAX);
    let total_bytes = total.and_then(|t| i64::try_from(t).ok());
    if let Some(r) = recorded {
        let recent = r
            .update_time
            .parse::<jiff::Timestamp>()
            .is_ok_and(|at| now.duration_since(at) < PROGRESS_EVERY);
        if recent || (r.bytes_streamed == bytes_streamed && r.total_bytes == total_bytes) {
            return None;
        }
    }
    let summary = match total {
        Some(t) if t > 0 => format!(
            "{} of {} ({}%)",
            human(streamed),
            human(t),
            (streamed.min(t) * 100) / t
        ),
        _ => format!("{} streamed", human(streamed)),
    };
    Some(BackupProgress {
        bytes_streamed,
        total_bytes,
        summary,
        update_time: now.to_string(),
    })
}

/// The next step of polling a running backup.
pub fn poll_step(v: PollView) -> PollStep {
    let member = &v.member;
    let Some((addr, state)) = v.state else {
        let why = v.gone.unwrap_or_else(|| match &v.writer {
            Some(w) => format!("writer pod {w} went away"),
            None => format!("member pod {member} went away"),
        });
        return PollStep::Fail(format!("{why} during the backup; nothing was committed"));
    };
    match state {
        // Its cluster is going: the members' pods go with it, and the upload is stopped now rather
        // than cut off half-written when they do.
        Ok(JobState::Running { .. }) if v.gone.is_some() => PollStep::Abort(addr, v.gone.unwrap_or_default()),
        Ok(JobState::Running { .. }) if v.overdue => PollStep::Fail(format!(
            "still running at its deadline {}; nothing was committed",
            v.deadline.as_deref().unwrap_or("(none recorded)")
        )),
        Ok(JobState::Running {
            bytes_streamed,
            total_bytes,
        }) => PollStep::Wait {
            secs: 2,
            progress: bytes_streamed.map(|streamed| (streamed, total_bytes)),
        },
        Ok(JobState::Failed { reason }) => PollStep::Fail(reason),
        Ok(JobState::Succeeded { manifest, location }) => PollStep::Succeed {
            addr,
            manifest,
            location,
        },
        Err(SidecarError::UnknownJob(_)) => PollStep::Fail(format!(
            "the sidecar on {member} restarted during the backup; nothing was committed"
        )),
        Err(e) if v.overdue => PollStep::Fail(e.to_string()),
        // Unreachable for a moment (a restarting container, the network): the deadline bounds it.
        Err(_) => PollStep::Wait {
            secs: 5,
            progress: None,
        },
    }
}

/// Bytes for people: `1.5MiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", units[u])
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
