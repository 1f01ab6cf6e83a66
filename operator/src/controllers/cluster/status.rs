//! Status: what `kubectl get etcd` and `kubectl describe etcd` show, computed purely from the
//! observation and the decision. Conditions keep their `lastTransitionTime` while their status stays.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use ouroboros_crds::{
    ClusterPhase, EtcdClusterStatus, MemberStatus, cluster::EtcdCluster, condition_types as ct,
};

use super::{
    decide::{Decision, Step},
    observe::Observation,
    resources,
};

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
                    .or_else(|| Some(resources::peer_url(cluster, &m.name))),
                client_url: first(listed.map(|l| &l.client_urls))
                    .or_else(|| Some(resources::client_url(cluster, &m.name))),
                is_learner: m.is_learner,
                is_leader: ms.leader == Some(m.id),
                version: status.map(|s| s.version.clone()),
                healthy: m.health.as_ref().is_some_and(|h| !h.has_errors),
            }
        })
        .collect();
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let ready = members.iter().filter(|m| !m.is_learner && m.healthy).count();
    let quorum = voters / 2 + 1;
    let available = voters > 0 && ready >= quorum;
    let versions: Vec<ouroboros_crds::EtcdVersion> = o.pods.iter().map(|p| p.version).collect();

    let holder = cluster
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::controllers::restore::RESTORE_HOLD));
    let held = holder.is_some();
    let pivoting = o.boot.as_ref().is_some_and(|b| b.id.is_some());
    let phase = phase(decision, available, ready, o.desired.size, held, pivoting);
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
    let (degraded, reason, message) = if let Step::BootInvalid { reason } = &decision.step {
        (true, "BootClusterInvalid", reason.clone())
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
            } => format!(
                "{healthy_voters} of {voters} voting members answer; no membership change is made without quorum. \
                 If the members will not come back, restore from a backup with an EtcdRestore (see docs/runbooks.md)"
            ),
            _ if held => "the cluster is being restored from a backup".to_owned(),
            _ => "a majority of voting members answers".to_owned(),
        },
    );

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

fn phase(
    decision: &Decision,
    available: bool,
    ready: usize,
    size: usize,
    held: bool,
    pivoting: bool,
) -> ClusterPhase {
    match &decision.step {
        Step::Paused if held => ClusterPhase::Restoring,
        Step::Paused => ClusterPhase::Paused,
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
        Step::Paused => (false, "Paused", "spec.paused is set; no change is made".into()),
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
