//! Status: what `kubectl get etcd` and `kubectl describe etcd` show, computed purely from the
//! observation and the decision. Conditions keep their `lastTransitionTime` while their status stays.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use ouroboros_crds::{
    ClusterPhase, EtcdClusterStatus, MemberStatus, cluster::EtcdCluster, condition_types as ct,
};

use super::{
    decide::{Decision, HeldBy, PodView, Step},
    observe::Observation,
};
use crate::{certificates::CertificateReport, vocabulary};

/// The `Degraded` reason when member pods cannot pull their image.
pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";

/// The new status of `cluster`.
pub fn compute(
    cluster: &EtcdCluster,
    obs: &Observation,
    decision: &Decision,
    now: jiff::Timestamp,
) -> EtcdClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let o = &obs.observed;
    let members: Vec<MemberStatus> = o
        .membership
        .iter()
        .flat_map(|ms| ms.members.iter().map(move |m| (ms, m)))
        .map(|(ms, m)| {
            let status = obs.statuses.iter().find(|(id, _)| *id == m.id).map(|(_, s)| s);
            // etcd's own URLs: self-hosted members and the boot member advertise addresses, not names.
            let listed = obs.members.iter().find(|l| l.id == m.id);
            let first = |urls: Option<&Vec<String>>| urls.and_then(|u| u.first().cloned());
            MemberStatus {
                name: m.name.clone(),
                id: Some(format!("{:x}", m.id)),
                peer_url: first(listed.map(|l| &l.peer_urls))
                    .or_else(|| Some(vocabulary::peer_url(cluster, &m.name))),
                client_url: first(listed.map(|l| &l.client_urls))
                    .or_else(|| Some(vocabulary::client_url(cluster, &m.name))),
                is_learner: m.is_learner,
                is_leader: ms.leader == Some(m.id),
                version: status.map(|s| s.version.clone()),
                healthy: m.health.as_ref().is_some_and(|h| !h.has_errors()),
                db_size_bytes: status.map(|s| s.db_size),
                db_size_in_use_bytes: status.map(|s| s.db_size_in_use),
            }
        })
        .collect();
    let holder = match &o.desired.held_by {
        Some(HeldBy::Restore(r)) => Some(r),
        Some(HeldBy::User) | None => None,
    };
    let held = holder.is_some();
    // No member answered: the members known from the last answer stay listed, none of them healthy,
    // so status still says who the cluster is and who does not answer. Not under a restore's hold:
    // the restore replaces those members, and the decision restarts only members status lists on
    // their claims, so an old member must never be listed once a restore has begun.
    let members = if o.membership.is_none() && !previous.members.is_empty() && !held {
        previous
            .members
            .iter()
            .map(|m| MemberStatus {
                healthy: false,
                is_leader: false,
                version: None,
                ..m.clone()
            })
            .collect()
    } else {
        members
    };
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let ready = members.iter().filter(|m| !m.is_learner && m.healthy).count();
    let quorum = voters / 2 + 1;
    let available = voters > 0 && ready >= quorum;
    let versions: Vec<ouroboros_crds::EtcdVersion> = o.pods.iter().map(|p| p.version).collect();

    let pivoting = o.boot.as_ref().is_some_and(|b| b.id.is_some());
    let phase = phase(decision, available, ready, o.desired.size, pivoting);
    let mut conditions = previous.conditions.clone();
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        set_condition(&mut conditions, type_, status, reason, message, generation, now);
    };
    set(
        ct::AVAILABLE,
        available,
        if available {
            "QuorumHealthy"
        } else {
            "QuorumUnavailable"
        },
        format!("{ready}/{voters} voting members healthy (quorum {quorum})"),
    );
    let (progressing, reason, message) = match holder {
        Some(restore) => (
            true,
            "Restoring",
            format!(
                "EtcdRestore {restore} is rebuilding this cluster; nothing else changes until it lifts its hold"
            ),
        ),
        None => progress(&decision.step),
    };
    set(ct::PROGRESSING, progressing, reason, message);
    let sick: Vec<&str> = members
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| m.name.as_str())
        .collect();
    let pull_failures: Vec<String> = o
        .pods
        .iter()
        .filter_map(|p| Some(format!("{}: {}", p.name, p.image_problem.as_ref()?)))
        .collect();
    let (degraded, reason, message) = if let Step::BootInvalid { reason } = &decision.step {
        (true, "BootClusterInvalid", reason.clone())
    } else if !pull_failures.is_empty() {
        // The cause before its effects (members that never start, a quorum never formed).
        (
            true,
            IMAGE_PULL_FAILED,
            format!(
                "member pods cannot pull their image: {}. If spec.version {} has no image, set spec.version to \
                 a version that has one; otherwise check spec.repository and the registry",
                pull_failures.join("; "),
                o.desired.version
            ),
        )
    } else if let Step::NoQuorum { .. } = &decision.step {
        (
            true,
            "QuorumLost",
            if sick.is_empty() {
                "no voting member answers".to_owned()
            } else {
                format!("members that do not answer: {}", sick.join(", "))
            },
        )
    } else if let Step::MaintenanceBlocked { reason } = &decision.step {
        (true, "MaintenanceBlocked", reason.clone())
    } else if let Some(refusal) = &decision.version_refusal {
        (true, "VersionChangeRefused", refusal.clone())
    } else if !sick.is_empty() {
        (
            true,
            "MembersUnhealthy",
            format!("unhealthy members: {}", sick.join(", ")),
        )
    } else if let Some(e) = obs.membership_error.as_ref().filter(|_| !available) {
        (true, "EtcdUnreachable", format!("no member answered: {e}"))
    } else {
        (false, "AllMembersHealthy", "every member is healthy".to_owned())
    };
    set(ct::DEGRADED, degraded, reason, message);
    let quorum_lost = matches!(decision.step, Step::NoQuorum { .. });
    set(
        ct::QUORUM_LOST,
        quorum_lost,
        if quorum_lost {
            "MajorityUnavailable"
        } else {
            "QuorumHeld"
        },
        match &decision.step {
            Step::NoQuorum {
                healthy_voters,
                voters,
                returning,
            } if !returning.is_empty() => format!(
                "{healthy_voters} of {voters} voting members answer; no membership change is made without quorum. \
                 {} still have their data and may answer again; no restore is started while they may",
                returning.join(", ")
            ),
            Step::NoQuorum {
                healthy_voters,
                voters,
                ..
            } => format!(
                "{healthy_voters} of {voters} voting members answer; no membership change is made without quorum. \
                 If the members will not come back, restore from a backup with an EtcdRestore (see docs/runbooks.md)"
            ),
            _ if held => "the cluster is being restored from a backup".to_owned(),
            _ => "a majority of voting members answers".to_owned(),
        },
    );

    let (up_to_date, reason, message) = members_up_to_date(o);
    set(ct::MEMBERS_UP_TO_DATE, up_to_date, reason, message);

    match alarm_condition(obs) {
        Some((reason, message)) => set(ct::ALARM, true, reason, message),
        None => set(
            ct::ALARM,
            false,
            "NoAlarm",
            "no member reports an alarm".to_owned(),
        ),
    }

    let (near, reason, message) = near_quota(obs, o.maintenance.quota_bytes);
    set(ct::DATABASE_NEAR_QUOTA, near, reason, message);
    let maintenance = match maintenance_condition(&decision.step) {
        // Nothing runs: the window may have something to say.
        Some(idle @ (false, ..)) => super::maintenance::window_condition(o).or(Some(idle)),
        other => other,
    };
    if let Some((active, reason, message)) = maintenance {
        set(ct::MAINTENANCE, active, reason, message);
    }

    if let Some(report) = &obs.certificates {
        let (valid, reason, message) = certificates_valid_condition(report);
        set(ct::CERTIFICATES_VALID, valid, reason, message);
        let (expiring, reason, message) =
            certificates_expiring_condition(report, now.as_second(), crate::certificates::EXPIRY_WARNING);
        set(ct::CERTIFICATES_EXPIRING, expiring, reason, message);
    }

    if let Some((removed, reason, message)) = boot_condition(cluster, obs, decision) {
        set(ct::BOOT_MEMBER_REMOVED, removed, reason, message);
    }

    let reported = obs
        .statuses
        .iter()
        .map(|(_, s)| s.revision)
        .max()
        .filter(|r| *r > 0);
    let (last_seen_revision, last_seen_revision_time) = super::recovery::record_seen(
        (
            previous.last_seen_revision,
            previous.last_seen_revision_time.as_deref(),
        ),
        reported,
        now,
    );

    EtcdClusterStatus {
        phase: Some(phase),
        last_seen_revision,
        last_seen_revision_time,
        observed_generation: generation,
        size: i32::try_from(members.len()).unwrap_or(i32::MAX),
        ready_members: i32::try_from(ready).unwrap_or(i32::MAX),
        client_endpoints: members.iter().filter_map(|m| m.client_url.clone()).collect(),
        members,
        cluster_id: obs.cluster_id.map(|id| format!("{id:x}")).or(previous.cluster_id),
        current_version: versions
            .iter()
            .min()
            .map(ToString::to_string)
            .or(previous.current_version),
        conditions,
        // Written by the backup controller under its own field manager; leaving it out here keeps
        // this apply from ever removing it.
        last_successful_backup: None,
        // Written by the restore controller under its own field manager.
        restored_from: None,
        ..previous
    }
}

/// An etcd alarm raised on a member, as etcd reports it in every member's status errors
/// (`memberID:<decimal id> alarm:<TYPE>`): alarms are replicated, so each member lists all of them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Alarm {
    /// The member it is raised on.
    pub member: String,
    /// `NOSPACE`, `CORRUPT`, or whatever a later etcd adds.
    pub kind: String,
}

pub use super::maintenance::parse_alarms;

/// A member's name by its ID, or the ID in hex when the membership does not list it.
fn member_name_of(obs: &Observation, id: u64) -> String {
    obs.observed
        .membership
        .as_ref()
        .and_then(|ms| ms.members.iter().find(|m| m.id == id))
        .map_or_else(|| format!("{id:x}"), |m| m.name.clone())
}

/// `CertificatesValid`: what is wrong with the certificates of `spec.tls`, each Secret named.
pub fn certificates_valid_condition(report: &CertificateReport) -> (bool, &'static str, String) {
    if report.problems.is_empty() {
        return (
            true,
            "CertificatesUsable",
            "every certificate of spec.tls parses, is valid now, chains to its ca.crt and names every member"
                .to_owned(),
        );
    }
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    (
        false,
        "CertificateInvalid",
        format!(
            "{}. No member is restarted onto these certificates until they are fixed",
            problems.join("; ")
        ),
    )
}

/// `CertificatesExpiring`: the leaves ending within `warning` of `now`, soonest first.
pub fn certificates_expiring_condition(
    report: &CertificateReport,
    now: i64,
    warning: std::time::Duration,
) -> (bool, &'static str, String) {
    let days = warning.as_secs() / 86_400;
    let soon = report.expiring(now, warning);
    if soon.is_empty() {
        return (
            false,
            "CertificatesFresh",
            format!("no certificate of spec.tls ends within {days} days"),
        );
    }
    let listed: Vec<String> = soon
        .iter()
        .map(|l| {
            let end = jiff::Timestamp::from_second(l.not_after)
                .map_or_else(|_| l.not_after.to_string(), |t| t.to_string());
            format!("{} ({}) ends {end}", l.secret, l.purpose.field())
        })
        .collect();
    (
        true,
        "CertificatesExpiring",
        format!(
            "within {days} days: {}. Renew the Secret (members are restarted onto the new certificate one at a \
             time; docs/runbooks.md, \"Rotating certificates\")",
            listed.join(", ")
        ),
    )
}

/// `DatabaseNearQuota` from what the members reported.
fn near_quota(obs: &Observation, quota: u64) -> (bool, &'static str, String) {
    let sizes: Vec<(String, i64, i64)> = obs
        .statuses
        .iter()
        .map(|(id, s)| (member_name_of(obs, *id), s.db_size, s.db_size_in_use))
        .collect();
    near_quota_condition(&sizes, quota)
}

/// `DatabaseNearQuota`: whether a member's database file (name, size, bytes in use) is above
/// [`NEAR_QUOTA_FRACTION`](super::maintenance::NEAR_QUOTA_FRACTION) of the quota, naming each.
pub fn near_quota_condition(sizes: &[(String, i64, i64)], quota: u64) -> (bool, &'static str, String) {
    let limit = quota as f64 * super::maintenance::NEAR_QUOTA_FRACTION;
    let near: Vec<String> = sizes
        .iter()
        .filter(|(_, size, _)| *size as f64 > limit)
        .map(|(name, size, in_use)| format!("{name} ({} MiB, {} MiB in use)", size >> 20, in_use >> 20))
        .collect();
    let pct = (super::maintenance::NEAR_QUOTA_FRACTION * 100.0) as u32;
    if near.is_empty() {
        return (
            false,
            "BelowQuota",
            format!(
                "every member's database is below {pct} % of its {} MiB quota",
                quota >> 20
            ),
        );
    }
    (
        true,
        "NearQuota",
        format!(
            "above {pct} % of the {} MiB quota (spec.etcd.quotaBackendBytes): {}. At the quota etcd raises NOSPACE \
             and refuses writes; raise the quota, delete data, or enable spec.maintenance.defragmentation if much \
             of it is free space",
            quota >> 20,
            near.join(", ")
        ),
    )
}

/// What of a member pod is outdated, as a phrase: "the spec.etcd settings, the pod template".
pub fn outdated_parts(p: &PodView) -> String {
    let parts: Vec<&str> = [
        (!p.settings_current, "the spec.etcd settings"),
        (
            !p.template_current,
            "the pod template (spec.pod, images, sidecar)",
        ),
        (!p.certificates_current, "the certificates the operator accepted"),
    ]
    .into_iter()
    .filter_map(|(outdated, part)| outdated.then_some(part))
    .collect();
    if parts.is_empty() {
        "what the spec gives now".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `MembersUpToDate`: which member pods run another version, settings, pod template or
/// certificates than the spec and the operator give now, and what of each.
fn members_up_to_date(o: &super::decide::Observed) -> (bool, &'static str, String) {
    let version = o.desired.version;
    let outdated: Vec<String> = o
        .pods
        .iter()
        .filter_map(|p| {
            let mut parts = Vec::new();
            if p.version != version {
                parts.push(format!("etcd {}", p.version));
            }
            if super::maintenance::settings_outdated(p) {
                parts.push(outdated_parts(p));
            }
            (!parts.is_empty()).then(|| format!("{} ({})", p.name, parts.join("; ")))
        })
        .collect();
    if outdated.is_empty() {
        (
            true,
            "UpToDate",
            "every member pod runs the current version, settings, pod template and certificates".to_owned(),
        )
    } else {
        (
            false,
            "Outdated",
            format!(
                "outdated: {}; each is restarted onto the current spec on its own data (or replaced, when its data \
                 lives with its pod), one at a time while every member is healthy",
                outdated.join(", ")
            ),
        )
    }
}

/// `Maintenance`: True while a maintenance step runs or is blocked, False once none is due. Steps
/// that also serve other purposes (moving leadership, waiting for members) leave it as it was.
fn maintenance_condition(step: &Step) -> Option<(bool, &'static str, String)> {
    use super::decide::RemoveReason;
    let (_, reason, message) = progress(step);
    match step {
        Step::RestartWithSettings { .. }
        | Step::Compact { .. }
        | Step::Defragment { .. }
        | Step::DisarmAlarm { .. }
        | Step::MaintenanceBlocked { .. } => Some((true, reason, message)),
        Step::RemoveMember {
            reason: RemoveReason::Corrupt,
            name,
            ..
        } => Some((
            true,
            "ReplacingCorruptMember",
            format!(
                "removing {name}, whose data failed the corruption check; a new member copies the healthy majority's"
            ),
        )),
        Step::RemoveMember {
            reason: RemoveReason::Reconfigure,
            name,
            ..
        } => Some((
            true,
            "RollingSettings",
            format!("removing {name}, whose pod is outdated (MembersUpToDate); its replacement has joined"),
        )),
        Step::Converged => Some((false, "Idle", "no maintenance is due".to_owned())),
        _ => None,
    }
}

/// `Alarm`: reason and message when some member reports an alarm, naming each and what to do.
fn alarm_condition(obs: &Observation) -> Option<(&'static str, String)> {
    // Without a membership no alarm can be named.
    obs.observed.membership.as_ref()?;
    let name_of = |id: u64| member_name_of(obs, id);
    let mut alarms: Vec<Alarm> = obs
        .statuses
        .iter()
        .flat_map(|(reporter, status)| {
            parse_alarms(&status.errors)
                .into_iter()
                .map(move |(id, kind)| Alarm {
                    member: name_of(id.unwrap_or(*reporter)),
                    kind,
                })
        })
        .collect();
    alarms.sort();
    alarms.dedup();
    let db_size = obs.statuses.iter().map(|(_, s)| s.db_size).max().unwrap_or(0);
    alarm_message(&alarms, db_size)
}

/// The words for a set of alarms: the most serious kind gives the reason.
pub fn alarm_message(alarms: &[Alarm], db_size_bytes: i64) -> Option<(&'static str, String)> {
    if alarms.is_empty() {
        return None;
    }
    // Callers sort and dedup, so each member is named once per kind.
    let of = |kind: &str| -> Vec<&str> {
        alarms
            .iter()
            .filter(|a| a.kind == kind)
            .map(|a| a.member.as_str())
            .collect()
    };
    let mut parts = Vec::new();
    let corrupt = of("CORRUPT");
    if !corrupt.is_empty() {
        parts.push(format!(
            "CORRUPT on {}: its data differs from the other members'; it is never used as a backup source, \
             and the operator replaces it from the healthy majority while one remains (docs/runbooks.md, \"An etcd alarm\")",
            corrupt.join(", ")
        ));
    }
    let nospace = of("NOSPACE");
    if !nospace.is_empty() {
        parts.push(format!(
            "NOSPACE on {}: the database ({} MiB) reached its quota and etcd now refuses writes; the operator \
             compacts, defragments every member and disarms the alarm by itself (see the Maintenance condition), \
             and if the data itself does not fit, raise spec.etcd.quotaBackendBytes (docs/runbooks.md, \"An etcd alarm\")",
            nospace.join(", "),
            db_size_bytes / (1 << 20)
        ));
    }
    let other: Vec<String> = alarms
        .iter()
        .filter(|a| a.kind != "CORRUPT" && a.kind != "NOSPACE")
        .map(|a| format!("{} on {}", a.kind, a.member))
        .collect();
    if !other.is_empty() {
        parts.push(format!("other alarms: {}", other.join(", ")));
    }
    let reason = if !corrupt.is_empty() {
        "Corrupt"
    } else if !nospace.is_empty() {
        "NoSpace"
    } else {
        "AlarmRaised"
    };
    Some((
        reason,
        format!(
            "{}. An alarm is not lost quorum: the members still answer, no membership change starts \
             until it is cleared, and automatic recovery does not restore over it",
            parts.join("; ")
        ),
    ))
}

/// `BootMemberRemoved` for clusters that pivot from a boot member: True once the membership answers
/// without it and has members of ours (and from then on for good), False while the pivot runs.
fn boot_condition(
    cluster: &EtcdCluster,
    obs: &Observation,
    decision: &Decision,
) -> Option<(bool, &'static str, String)> {
    let sh = cluster.spec.self_hosted.as_ref()?;
    if sh.boot_member_client_endpoint.is_empty() {
        return None;
    }
    let o = &obs.observed;
    let ours = |m: &&super::decide::MemberView| super::decide::ordinal(&o.cluster, &m.name).is_some();
    let seen_gone = o.boot.as_ref().is_some_and(|b| b.id.is_none())
        && o.membership
            .as_ref()
            .is_some_and(|ms| ms.members.iter().any(|m| ours(&m)));
    if seen_gone || super::observe::boot_member_removed(cluster) {
        return Some((
            true,
            "BootMemberRemoved",
            "the boot member has left; the cluster runs on self-hosted members only".into(),
        ));
    }
    let boot = o.boot.as_ref()?;
    let voters = o
        .membership
        .iter()
        .flat_map(|ms| ms.members.iter())
        .filter(|m| ours(m) && !m.is_learner)
        .count();
    let (reason, message) = match &decision.step {
        Step::BootInvalid { reason } => ("BootClusterInvalid", reason.clone()),
        Step::WaitForBoot { reason } => ("BootMemberUnreachable", format!("{reason} ({})", boot.endpoint)),
        _ => (
            "Pivoting",
            format!(
                "the boot member ({}) is still a member; {voters} of {} self-hosted members are voters",
                boot.endpoint, o.desired.size
            ),
        ),
    };
    Some((false, reason, message))
}

fn phase(decision: &Decision, available: bool, ready: usize, size: usize, pivoting: bool) -> ClusterPhase {
    match &decision.step {
        Step::Held(HeldBy::Restore(_)) => ClusterPhase::Restoring,
        Step::Held(HeldBy::User) => ClusterPhase::Paused,
        Step::NoQuorum { .. } => ClusterPhase::QuorumLost,
        Step::BootInvalid { .. } => ClusterPhase::Degraded,
        Step::WaitForBoot { .. } | Step::RemoveBootMember { .. } => ClusterPhase::Pivoting,
        _ if pivoting => ClusterPhase::Pivoting,
        Step::CreateSeed { .. } => ClusterPhase::Creating,
        Step::WaitForMembers { .. } if !available => ClusterPhase::Creating,
        Step::AddLearner {
            for_upgrade: true, ..
        } => ClusterPhase::Upgrading,
        Step::RemoveMember {
            reason: super::decide::RemoveReason::Upgrade,
            ..
        } => ClusterPhase::Upgrading,
        Step::RestartMember { .. } | Step::DeleteTerminatedPod { .. } => ClusterPhase::Degraded,
        Step::RestartWithSettings { .. }
        | Step::Compact { .. }
        | Step::Defragment { .. }
        | Step::DisarmAlarm { .. }
        | Step::RemoveMember {
            reason: super::decide::RemoveReason::Reconfigure,
            ..
        } => ClusterPhase::Maintaining,
        Step::MaintenanceBlocked { .. } => ClusterPhase::Degraded,
        Step::WaitForMembers { .. }
        | Step::DeleteOrphanPod { .. }
        | Step::CreateMemberPod { .. }
        | Step::RemoveMember { .. }
        | Step::PromoteLearner { .. }
        | Step::WaitForLearner { .. }
        | Step::AddLearner { .. }
        | Step::MoveLeader { .. } => ClusterPhase::Scaling,
        Step::Converged if decision.version_refusal.is_some() || ready < size => ClusterPhase::Degraded,
        Step::Converged => ClusterPhase::Running,
    }
}

fn progress(step: &Step) -> (bool, &'static str, String) {
    match step {
        Step::Held(HeldBy::User) => (false, "Paused", "spec.paused is set; no change is made".into()),
        Step::Held(HeldBy::Restore(r)) => (
            false,
            "Restoring",
            format!("EtcdRestore {r} holds the cluster; no change is made until it lets go"),
        ),
        Step::Converged => (false, "Converged", "the cluster matches the spec".into()),
        Step::NoQuorum { .. } => (false, "QuorumLost", "no change is made without quorum".into()),
        Step::WaitForBoot { reason } => (true, "WaitingForBootMember", reason.clone()),
        Step::BootInvalid { reason } => (false, "BootClusterInvalid", reason.clone()),
        Step::RemoveBootMember { name, .. } => (
            true,
            "RemovingBootMember",
            format!("removing the boot member {name}"),
        ),
        Step::CreateSeed { name, version } => (
            true,
            "CreatingSeed",
            format!("starting seed member {name} on {version}"),
        ),
        Step::WaitForMembers { reason } => (true, "WaitingForMembers", reason.clone()),
        Step::DeleteOrphanPod { name } => (
            true,
            "DeletingOrphanPod",
            format!("deleting pod {name}, which is not a member"),
        ),
        Step::CreateMemberPod { name, .. } => (
            true,
            "StartingMember",
            format!("starting pod of added member {name}"),
        ),
        Step::RestartMember { name, version } => (
            true,
            "RestartingMember",
            format!("starting a new pod for member {name} on its own data ({version})"),
        ),
        Step::DeleteTerminatedPod { name } => (
            true,
            "DeletingTerminatedPod",
            format!("deleting the terminated pod of {name} to restart it on its data"),
        ),
        Step::RemoveMember { name, reason, .. } => (
            true,
            "RemovingMember",
            format!("removing member {name}: {reason:?}"),
        ),
        Step::PromoteLearner { name, .. } => (true, "PromotingLearner", format!("promoting learner {name}")),
        Step::WaitForLearner { name } => (
            true,
            "LearnerCatchingUp",
            format!("learner {name} is catching up with the leader"),
        ),
        Step::AddLearner {
            name,
            version,
            for_upgrade,
        } => (
            true,
            if *for_upgrade { "Upgrading" } else { "AddingMember" },
            format!("adding learner {name} on {version}"),
        ),
        Step::MoveLeader { from, to, .. } => (
            true,
            "MovingLeader",
            format!("moving leadership from {from} to {to}"),
        ),
        Step::RestartWithSettings { name } => (
            true,
            "RollingSettings",
            format!(
                "restarting {name} on its own data onto the current spec (MembersUpToDate says what changed)"
            ),
        ),
        Step::Compact { revision } => (
            true,
            "Compacting",
            format!("compacting the history up to revision {revision} to recover from NOSPACE"),
        ),
        Step::Defragment { name, why, .. } => (true, "Defragmenting", format!("defragmenting {name} {why}")),
        Step::DisarmAlarm { kind, .. } => (
            true,
            "DisarmingAlarm",
            format!("disarming the {} alarm, whose cause is gone", kind.etcd_name()),
        ),
        Step::MaintenanceBlocked { reason } => (false, "MaintenanceBlocked", reason.clone()),
    }
}

/// Sets one condition, keeping `lastTransitionTime` when the status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    let status = if status { "True" } else { "False" };
    set_condition_to(conditions, type_, status, reason, message, generation, now);
}

/// Sets one condition to `True`, `False` or `Unknown`, keeping `lastTransitionTime` when the status
/// does not change.
pub fn set_condition_to(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    let status = status.to_owned();
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_up_to_date_names_each_outdated_member_and_what_of_it() {
        use super::super::decide::tests::{V35, V36, world};
        assert!(members_up_to_date(&world(3, V36).voter(0, V36).voter(1, V36).voter(2, V36)).0);
        let mut o = world(3, V36).voter(0, V36).voter(1, V36).voter(2, V35);
        o.pods[0].template_current = false;
        o.pods[0].settings_current = false;
        o.pods[1].certificates_current = false;
        let (current, reason, message) = members_up_to_date(&o);
        assert!(!current);
        assert_eq!(reason, "Outdated");
        assert!(
            message.contains("c-0 (the spec.etcd settings, the pod template (spec.pod, images, sidecar))"),
            "{message}"
        );
        assert!(
            message.contains("c-1 (the certificates the operator accepted)"),
            "{message}"
        );
        assert!(message.contains("c-2 (etcd 3.5.35)"), "{message}");
    }

    #[test]
    fn alarms_are_read_from_etcd_status_errors() {
        let errors = vec![
            "memberID:10276657743932975437 alarm:NOSPACE ".to_owned(),
            "memberID:42 alarm:CORRUPT".to_owned(),
            "some other error".to_owned(),
        ];
        assert_eq!(
            parse_alarms(&errors),
            vec![
                (Some(10276657743932975437), "NOSPACE".to_owned()),
                (Some(42), "CORRUPT".to_owned())
            ]
        );
        assert!(parse_alarms(&["memberID:1 alarm:NONE".to_owned()]).is_empty());
    }

    #[test]
    fn alarm_messages_name_members_and_remedies() {
        assert_eq!(alarm_message(&[], 0), None);
        let a = |member: &str, kind: &str| Alarm {
            member: member.into(),
            kind: kind.into(),
        };
        let (reason, message) = alarm_message(&[a("c-0", "NOSPACE"), a("c-1", "NOSPACE")], 2 << 30).unwrap();
        assert_eq!(reason, "NoSpace");
        assert!(message.contains("NOSPACE on c-0, c-1"), "{message}");
        assert!(
            message.contains("2048 MiB") && message.contains("disarms the alarm"),
            "{message}"
        );
        assert!(message.contains("not lost quorum"), "{message}");
        let (reason, message) = alarm_message(&[a("c-2", "CORRUPT"), a("c-0", "NOSPACE")], 0).unwrap();
        assert_eq!(reason, "Corrupt", "the most serious alarm gives the reason");
        assert!(message.contains("CORRUPT on c-2") && message.contains("never used as a backup source"));
    }

    #[test]
    fn a_database_above_80_percent_of_its_quota_is_named_before_nospace() {
        let quota = 100 << 20;
        let (near, reason, _) = near_quota_condition(&[("c-0".into(), 80 << 20, 10 << 20)], quota);
        assert!(!near, "exactly 80 % is not above it");
        assert_eq!(reason, "BelowQuota");
        let sizes = [
            ("c-0".into(), 50 << 20, 50 << 20),
            ("c-1".into(), 81 << 20, 40 << 20),
        ];
        let (near, reason, message) = near_quota_condition(&sizes, quota);
        assert!(near);
        assert_eq!(reason, "NearQuota");
        assert!(
            message.contains("c-1 (81 MiB, 40 MiB in use)") && !message.contains("c-0"),
            "{message}"
        );
        assert!(message.contains("spec.etcd.quotaBackendBytes"), "{message}");
    }

    #[test]
    fn transition_time_only_moves_when_status_changes() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let mut cs = Vec::new();
        set_condition(&mut cs, "Available", false, "A", "m".into(), Some(1), t0);
        set_condition(&mut cs, "Available", false, "B", "m2".into(), Some(2), t1);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time.0, t0);
        assert_eq!(cs[0].reason, "B");
        assert_eq!(cs[0].observed_generation, Some(2));
        set_condition(&mut cs, "Available", true, "C", "m3".into(), Some(2), t1);
        assert_eq!(cs[0].last_transition_time.0, t1);
    }
}
