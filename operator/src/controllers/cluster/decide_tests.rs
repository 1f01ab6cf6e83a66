use super::*;

pub(crate) const V35: &str = "3.5.35";
pub(crate) const V36: &str = "3.6.16";

pub(crate) fn v(s: &str) -> EtcdVersion {
    s.parse().unwrap()
}

/// A cluster `c` wanting `size` members of `version`, with nothing observed yet.
pub(crate) fn world(size: usize, version: &str) -> Observed {
    Observed {
        cluster: "c".into(),
        desired: Desired {
            size,
            version: v(version),
            held_by: None,
            replace_after_node_lost: DEFAULT_REPLACE_AFTER_NODE_LOST,
        },
        bootstrapped: false,
        pods: vec![],
        membership: None,
        pods_first: false,
        boot: None,
        ordinal_floor: 0,
        data: DataHome::Pod,
        known_members: vec![],
        node_losses: vec![],
        maintenance: MaintenanceView::default(),
    }
}

const BOOT_ID: u64 = 7;

/// A self-hosted cluster pivoting from the one-member boot cluster `boot` (leader, applied 1000).
fn pivot(size: usize) -> Observed {
    let mut o = world(size, V36);
    o.pods_first = true;
    o.bootstrapped = true;
    o.boot = Some(BootView {
        id: Some(BOOT_ID),
        endpoint: "http://127.0.0.1:22379".into(),
    });
    o.membership = Some(Membership {
        leader: Some(BOOT_ID),
        members: vec![MemberView {
            id: BOOT_ID,
            name: "boot".into(),
            is_learner: false,
            started: true,
            health: Some(MemberHealth {
                applied_index: 1000,
                errors: vec![],
                db_size: 1 << 20,
                db_in_use: 1 << 20,
                revision: 1000,
            }),
        }],
        db_size_bytes: 1 << 20,
    });
    o
}

impl Observed {
    /// A healthy ready voter `c-<n>` on `version`, leader when `leader`.
    pub(crate) fn voter(mut self, n: u32, version: &str) -> Self {
        self.add(n, version, false, true);
        self
    }
    pub(crate) fn learner(mut self, n: u32, applied: u64) -> Self {
        let v = self.desired.version.to_string();
        self.add(n, &v, true, true);
        let m = self.membership.as_mut().unwrap().members.last_mut().unwrap();
        m.health.as_mut().unwrap().applied_index = applied;
        self
    }
    pub(crate) fn add(&mut self, n: u32, version: &str, is_learner: bool, started: bool) {
        let name = format!("c-{n}");
        self.bootstrapped = true;
        self.pods.push(PodView {
            name: name.clone(),
            version: v(version),
            state: PodState::Ready,
            age: Duration::from_secs(60),
            volume_lost: false,
            voter_label: None,
            image_problem: None,
            settings_current: true,
            template_current: true,
            template_recorded: true,
            unschedulable: false,
            certificates_current: true,
            quota_bytes: 2 << 30,
            data_refused: None,
        });
        let ms = self.membership.get_or_insert(Membership {
            leader: None,
            members: vec![],
            db_size_bytes: 1 << 20,
        });
        ms.members.push(MemberView {
            id: 100 + u64::from(n),
            name,
            is_learner,
            started,
            health: Some(MemberHealth {
                applied_index: 1000,
                errors: vec![],
                db_size: 1 << 20,
                db_in_use: 1 << 20,
                revision: 1000,
            }),
        });
        if ms.leader.is_none() && !is_learner {
            ms.leader = Some(100 + u64::from(n));
        }
    }
    pub(crate) fn leader_id(mut self, id: u64) -> Self {
        self.membership.as_mut().unwrap().leader = Some(id);
        self
    }
    pub(crate) fn leader(mut self, n: u32) -> Self {
        self.membership.as_mut().unwrap().leader = Some(100 + u64::from(n));
        self
    }
    pub(crate) fn pod_state(mut self, n: u32, state: PodState) -> Self {
        self.pods
            .iter_mut()
            .find(|p| p.name == format!("c-{n}"))
            .unwrap()
            .state = state;
        self
    }
    pub(crate) fn pod_age(mut self, n: u32, age: Duration) -> Self {
        self.pods
            .iter_mut()
            .find(|p| p.name == format!("c-{n}"))
            .unwrap()
            .age = age;
        self
    }
    pub(crate) fn without_pod(mut self, n: u32) -> Self {
        self.pods.retain(|p| p.name != format!("c-{n}"));
        self
    }
    pub(crate) fn unhealthy(mut self, n: u32) -> Self {
        let ms = self.membership.as_mut().unwrap();
        ms.members
            .iter_mut()
            .find(|m| m.name == format!("c-{n}"))
            .unwrap()
            .health = None;
        self
    }
    pub(crate) fn volume_lost(mut self, n: u32) -> Self {
        self.pods
            .iter_mut()
            .find(|p| p.name == format!("c-{n}"))
            .unwrap()
            .volume_lost = true;
        self
    }
    pub(crate) fn without_member(mut self, n: u32) -> Self {
        self.membership
            .as_mut()
            .unwrap()
            .members
            .retain(|m| m.name != format!("c-{n}"));
        self
    }
    pub(crate) fn unstarted_member(mut self, n: u32) -> Self {
        let v = self.desired.version.to_string();
        self.add(n, &v, true, false);
        let ms = self.membership.as_mut().unwrap();
        ms.members.last_mut().unwrap().health = None;
        self.pods.retain(|p| p.name != format!("c-{n}"));
        self
    }
    pub(crate) fn paused(mut self) -> Self {
        self.desired.held_by = Some(HeldBy::User);
        self
    }
    /// Members keep their data on claims; every member observed so far has one, recording `version`.
    pub(crate) fn on_claims(mut self) -> Self {
        let claims = self
            .pods
            .iter()
            .map(|p| ClaimView {
                member: p.name.clone(),
                version: Some(p.version),
            })
            .collect();
        self.known_members = self.pods.iter().map(|p| p.name.clone()).collect();
        self.data = DataHome::Claims(claims);
        self
    }
    pub(crate) fn without_claim(mut self, n: u32) -> Self {
        if let DataHome::Claims(c) = &mut self.data {
            c.retain(|c| c.member != format!("c-{n}"));
        }
        self
    }
    /// Member `c-<n>` answers with `errors` (an alarm, say).
    pub(crate) fn errors(mut self, n: u32, errors: &[&str]) -> Self {
        let ms = self.membership.as_mut().unwrap();
        let m = ms
            .members
            .iter_mut()
            .find(|m| m.name == format!("c-{n}"))
            .unwrap();
        m.health.as_mut().unwrap().errors = errors.iter().map(|e| (*e).to_owned()).collect();
        self
    }
    /// The node of `c-<n>` has been lost for `secs` seconds.
    pub(crate) fn node_lost(mut self, n: u32, secs: u64) -> Self {
        self.node_losses.push(NodeLoss {
            member: format!("c-{n}"),
            node: format!("node{n}"),
            lost_for: Duration::from_secs(secs),
        });
        self
    }
    /// No member answers a member list (the membership is unknown).
    pub(crate) fn silent(mut self) -> Self {
        self.membership = None;
        self
    }
}

pub(crate) fn step(o: &Observed) -> Step {
    next_step(o).step
}

#[test]
fn empty_world_creates_a_seed() {
    assert_eq!(
        step(&world(3, V36)),
        Step::CreateSeed {
            name: "c-0".into(),
            version: v(V36)
        }
    );
}

#[test]
fn paused_changes_nothing_even_when_empty() {
    assert_eq!(step(&world(3, V36).paused()), Step::Held(HeldBy::User));
    assert_eq!(
        step(&world(3, V36).voter(0, V36).paused()),
        Step::Held(HeldBy::User)
    );
}

#[test]
fn a_starting_seed_is_awaited() {
    let mut o = world(3, V36);
    o.pods.push(PodView {
        name: "c-0".into(),
        version: v(V36),
        state: PodState::Starting,
        age: Duration::from_secs(3),
        volume_lost: false,
        voter_label: None,
        image_problem: None,
        settings_current: true,
        template_current: true,
        template_recorded: true,
        unschedulable: false,
        certificates_current: true,
        quota_bytes: 2 << 30,
        data_refused: None,
    });
    assert!(matches!(step(&o), Step::WaitForMembers { .. }));
}

#[test]
fn a_bootstrapped_cluster_with_no_pods_is_never_reseeded() {
    let mut o = world(3, V36);
    o.bootstrapped = true;
    assert_eq!(
        step(&o),
        Step::NoQuorum {
            healthy_voters: 0,
            voters: 0,
            returning: vec![]
        }
    );
}

#[test]
fn grows_one_learner_at_a_time_with_the_next_ordinal() {
    let o = world(3, V36).voter(0, V36);
    assert_eq!(
        step(&o),
        Step::AddLearner {
            name: "c-1".into(),
            version: v(V36),
            for_upgrade: false
        }
    );
    let o = world(3, V36).voter(0, V36).voter(4, V36);
    assert_eq!(
        step(&o),
        Step::AddLearner {
            name: "c-5".into(),
            version: v(V36),
            for_upgrade: false
        }
    );
}

#[test]
fn promotes_a_caught_up_learner() {
    let o = world(3, V36).voter(0, V36).learner(1, 950);
    assert_eq!(
        step(&o),
        Step::PromoteLearner {
            id: 101,
            name: "c-1".into()
        }
    );
}

#[test]
fn waits_for_a_learner_behind_the_leader() {
    let o = world(3, V36).voter(0, V36).learner(1, 10);
    assert_eq!(step(&o), Step::WaitForLearner { name: "c-1".into() });
}

#[test]
fn gives_up_on_a_learner_past_its_deadline() {
    let o = world(3, V36)
        .voter(0, V36)
        .learner(1, 10)
        .pod_age(1, Duration::from_secs(3600));
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 101,
            name: "c-1".into(),
            reason: RemoveReason::LearnerTimedOut
        }
    );
}

#[test]
fn learner_deadline_grows_with_database_size() {
    assert_eq!(
        learner_deadline(1 << 20),
        LEARNER_BASE_DEADLINE + LEARNER_DEADLINE_PER_GIB
    );
    assert_eq!(
        learner_deadline(8 << 30),
        LEARNER_BASE_DEADLINE + LEARNER_DEADLINE_PER_GIB * 8
    );
}

#[test]
fn converged_at_size() {
    let o = world(3, V36).voter(0, V36).voter(1, V36).voter(2, V36);
    assert_eq!(step(&o), Step::Converged);
}

#[test]
fn scale_down_removes_the_newest_follower() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .voter(3, V36)
        .voter(4, V36);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 104,
            name: "c-4".into(),
            reason: RemoveReason::ScaleDown
        }
    );
}

#[test]
fn scale_down_moves_leadership_before_removing_the_leader() {
    let o = world(1, V36).voter(0, V36).voter(1, V36).leader(1);
    assert_eq!(
        step(&o),
        Step::MoveLeader {
            from: "c-1".into(),
            to_id: 100,
            to: "c-0".into()
        }
    );
}

#[test]
fn a_dead_voter_is_removed_while_quorum_holds() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .without_pod(1)
        .unhealthy(1);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 101,
            name: "c-1".into(),
            reason: RemoveReason::PodGone
        }
    );
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .pod_state(2, PodState::Terminated)
        .unhealthy(2);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::PodTerminated
        }
    );
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .pod_state(2, PodState::CrashLooping)
        .unhealthy(2);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::CrashLooping
        }
    );
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .volume_lost(2);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::VolumeLost
        }
    );
}

#[test]
fn after_removing_a_dead_member_a_replacement_is_added() {
    let o = world(3, V36).voter(0, V36).voter(2, V36);
    assert_eq!(
        step(&o),
        Step::AddLearner {
            name: "c-3".into(),
            version: v(V36),
            for_upgrade: false
        }
    );
}

#[test]
fn no_membership_change_without_quorum() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .without_pod(1)
        .unhealthy(1)
        .without_pod(2)
        .unhealthy(2);
    assert_eq!(
        step(&o),
        Step::NoQuorum {
            healthy_voters: 1,
            voters: 3,
            returning: vec![]
        }
    );
}

#[test]
fn removing_a_dead_member_must_leave_a_healthy_majority() {
    // 2 voters, one dead: removing it would need the other to be a majority of 1, which it is; but
    // with 4 voters, 2 dead and 2 healthy, quorum (3) is already lost.
    let o = world(2, V36)
        .voter(0, V36)
        .voter(1, V36)
        .without_pod(1)
        .unhealthy(1);
    assert_eq!(
        step(&o),
        Step::NoQuorum {
            healthy_voters: 1,
            voters: 2,
            returning: vec![]
        }
    );
    let o = world(4, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .voter(3, V36)
        .without_pod(3)
        .unhealthy(3);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 103,
            name: "c-3".into(),
            reason: RemoveReason::PodGone
        }
    );
}

#[test]
fn a_member_restarting_in_its_pod_is_waited_for_not_replaced() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .pod_state(2, PodState::Running)
        .unhealthy(2);
    assert!(matches!(step(&o), Step::WaitForMembers { .. }));
}

#[test]
fn crash_after_member_remove_deletes_the_orphan_pod() {
    let o = world(2, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .without_member(2);
    assert_eq!(step(&o), Step::DeleteOrphanPod { name: "c-2".into() });
}

#[test]
fn crash_after_member_add_creates_the_missing_pod() {
    let o = world(3, V36).voter(0, V36).unstarted_member(1);
    assert_eq!(
        step(&o),
        Step::CreateMemberPod {
            name: "c-1".into(),
            version: v(V36)
        }
    );
}

#[test]
fn a_dead_learner_is_removed_without_quorum_concerns() {
    let o = world(3, V36)
        .voter(0, V36)
        .learner(1, 10)
        .pod_state(1, PodState::Terminated);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 101,
            name: "c-1".into(),
            reason: RemoveReason::PodTerminated
        }
    );
}

#[test]
fn upgrade_surges_a_new_member_then_removes_old_followers_first_leader_last() {
    let o = world(3, V36).voter(0, V35).voter(1, V35).voter(2, V35);
    assert_eq!(
        step(&o),
        Step::AddLearner {
            name: "c-3".into(),
            version: v(V36),
            for_upgrade: true
        }
    );
    // After the promotion there are 4 voters: remove an old follower, the newest first.
    let o = world(3, V36)
        .voter(0, V35)
        .voter(1, V35)
        .voter(2, V35)
        .voter(3, V36);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::Upgrade
        }
    );
    // Only the old leader is left on the old version: leadership moves to a new member first.
    let o = world(3, V36)
        .voter(0, V35)
        .voter(3, V36)
        .voter(4, V36)
        .voter(5, V36)
        .leader(0);
    assert_eq!(
        step(&o),
        Step::MoveLeader {
            from: "c-0".into(),
            to_id: 103,
            to: "c-3".into()
        }
    );
    let o = world(3, V36)
        .voter(0, V35)
        .voter(3, V36)
        .voter(4, V36)
        .voter(5, V36)
        .leader(3);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 100,
            name: "c-0".into(),
            reason: RemoveReason::Upgrade
        }
    );
}

#[test]
fn upgrade_waits_while_any_member_is_unhealthy() {
    let o = world(3, V36)
        .voter(0, V35)
        .voter(1, V35)
        .voter(2, V35)
        .pod_state(1, PodState::Running)
        .unhealthy(1);
    assert!(matches!(step(&o), Step::WaitForMembers { .. }));
}

#[test]
fn downgrade_is_refused_and_running_members_stay() {
    let o = world(3, V35).voter(0, V36).voter(1, V36).voter(2, V36);
    let d = next_step(&o);
    assert_eq!(d.step, Step::Converged);
    assert!(
        d.version_refusal
            .unwrap()
            .contains("downgrade from 3.6.16 to 3.5.35")
    );
}

#[test]
fn minor_skip_is_refused() {
    let plan = version_plan(v("3.7.0"), &[v("3.5.35")]);
    assert!(matches!(plan, VersionPlan::Refused { keep, .. } if keep == v("3.5.35")));
    assert_eq!(
        version_plan(v("3.6.0"), &[v("3.5.35")]),
        VersionPlan::Target(v("3.6.0"))
    );
    assert_eq!(version_plan(v("3.6.16"), &[]), VersionPlan::Target(v("3.6.16")));
}

#[test]
fn scaling_during_a_refused_version_uses_the_running_version() {
    let o = world(3, V35).voter(0, V36);
    assert_eq!(
        step(&o),
        Step::AddLearner {
            name: "c-1".into(),
            version: v(V36),
            for_upgrade: false
        }
    );
}

#[test]
fn ordinals_parse_only_our_names() {
    assert_eq!(ordinal("c", "c-12"), Some(12));
    assert_eq!(ordinal("c", "cc-1"), None);
    assert_eq!(ordinal("c", "c-x"), None);
}

// --- self-hosted pivot -------------------------------------------------------------------------------

#[test]
fn pivot_starts_by_adding_a_learner_to_the_boot_cluster_never_a_fresh_seed() {
    assert_eq!(
        next_step(&pivot(3)).step,
        Step::AddLearner {
            name: "c-0".into(),
            version: v(V36),
            for_upgrade: false
        }
    );
}

#[test]
fn pivot_waits_for_an_unreachable_boot_member_instead_of_seeding() {
    let mut o = pivot(3);
    o.membership = None;
    o.bootstrapped = false;
    assert!(matches!(next_step(&o).step, Step::WaitForBoot { .. }));
}

#[test]
fn pivot_refuses_a_boot_cluster_with_more_than_one_member() {
    let mut o = pivot(3);
    let mut other = o.membership.as_ref().unwrap().members[0].clone();
    other.id = 8;
    other.name = "boot-2".into();
    o.membership.as_mut().unwrap().members.push(other);
    let Step::BootInvalid { reason } = next_step(&o).step else {
        panic!("expected BootInvalid");
    };
    assert!(reason.contains("boot-2"), "{reason}");
}

#[test]
fn pivot_refuses_when_the_endpoint_is_not_the_boot_member() {
    let mut o = pivot(3);
    o.boot.as_mut().unwrap().id = None;
    assert!(matches!(next_step(&o).step, Step::BootInvalid { .. }));
}

#[test]
fn pivot_promotes_the_first_learner_when_caught_up_with_the_boot_leader() {
    let o = pivot(3).learner(0, 950);
    assert_eq!(
        next_step(&o).step,
        Step::PromoteLearner {
            id: 100,
            name: "c-0".into()
        }
    );
    let o = pivot(3).learner(0, 10);
    assert_eq!(next_step(&o).step, Step::WaitForLearner { name: "c-0".into() });
}

#[test]
fn pivot_grows_to_size_while_the_boot_member_stays() {
    let o = pivot(3).voter(0, V36).voter(1, V36).leader_id(BOOT_ID);
    assert_eq!(
        next_step(&o).step,
        Step::AddLearner {
            name: "c-2".into(),
            version: v(V36),
            for_upgrade: false
        }
    );
}

#[test]
fn the_boot_member_has_no_pod_and_is_never_removed_as_dead() {
    // Boot plus one voter: counting the boot member as a dead voter would remove it at 2 members.
    let o = pivot(3).voter(0, V36).leader_id(BOOT_ID);
    assert!(matches!(next_step(&o).step, Step::AddLearner { .. }));
}

#[test]
fn leadership_leaves_the_boot_member_before_it_is_removed() {
    let o = pivot(3)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .leader_id(BOOT_ID);
    assert_eq!(
        next_step(&o).step,
        Step::MoveLeader {
            from: "boot".into(),
            to_id: 100,
            to: "c-0".into()
        }
    );
}

#[test]
fn the_boot_member_is_removed_once_every_member_is_a_caught_up_voter_and_leads() {
    let o = pivot(3).voter(0, V36).voter(1, V36).voter(2, V36).leader(1);
    assert_eq!(
        next_step(&o).step,
        Step::RemoveBootMember {
            id: BOOT_ID,
            name: "boot".into()
        }
    );
}

#[test]
fn the_boot_member_stays_while_a_member_is_unhealthy_or_behind() {
    let o = pivot(3)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .leader(1)
        .unhealthy(2);
    assert!(matches!(next_step(&o).step, Step::WaitForMembers { .. }));
    let mut o = pivot(3).voter(0, V36).voter(1, V36).voter(2, V36).leader(1);
    o.membership.as_mut().unwrap().members[3]
        .health
        .as_mut()
        .unwrap()
        .applied_index = 10;
    let Step::WaitForMembers { reason } = next_step(&o).step else {
        panic!("expected a wait");
    };
    assert!(reason.contains("c-2") && reason.contains("catch up"), "{reason}");
}

#[test]
fn the_boot_member_stays_while_a_learner_is_pending() {
    let o = pivot(3).voter(0, V36).voter(1, V36).learner(2, 10).leader(1);
    assert!(matches!(next_step(&o).step, Step::WaitForLearner { .. }));
}

#[test]
fn after_the_pivot_a_self_hosted_cluster_is_an_ordinary_one() {
    let mut o = pivot(3).voter(0, V36).voter(1, V36).voter(2, V36).leader(1);
    o.membership.as_mut().unwrap().members.retain(|m| m.id != BOOT_ID);
    o.boot.as_mut().unwrap().id = None;
    assert_eq!(next_step(&o).step, Step::Converged);
}

#[test]
fn pods_first_a_member_whose_pod_vanished_before_it_started_is_removed() {
    let mut o = world(3, V36).voter(0, V36).unstarted_member(1).without_pod(1);
    o.pods_first = true;
    assert_eq!(
        next_step(&o).step,
        Step::RemoveMember {
            id: 101,
            name: "c-1".into(),
            reason: RemoveReason::PodGone
        }
    );
    o.pods_first = false;
    assert!(matches!(next_step(&o).step, Step::CreateMemberPod { .. }));
}

#[test]
fn a_dead_boot_member_is_removed_once_the_self_hosted_members_are_complete() {
    let o = pivot(3).voter(0, V36).voter(1, V36).voter(2, V36).leader(1);
    let mut o = o;
    o.membership.as_mut().unwrap().members[0].health = None;
    assert_eq!(
        next_step(&o).step,
        Step::RemoveBootMember {
            id: BOOT_ID,
            name: "boot".into()
        }
    );
    // Before that, a silent boot member stops the growth.
    let mut o = pivot(3).voter(0, V36).voter(1, V36).leader(1);
    o.membership.as_mut().unwrap().members[0].health = None;
    assert!(!matches!(next_step(&o).step, Step::AddLearner { .. }));
}

#[test]
fn pods_first_a_refused_join_is_retried_with_the_same_pod_then_given_up() {
    // kube-etcd-2's pod exists but etcd refused to add it: the add is retried for that pod.
    let mut o = pivot(3).voter(0, V36).voter(1, V36).leader(1).without_member(2);
    o.pods.push(PodView {
        name: "c-2".into(),
        version: v(V36),
        state: PodState::Running,
        age: Duration::from_secs(5),
        volume_lost: false,
        voter_label: None,
        image_problem: None,
        settings_current: true,
        template_current: true,
        template_recorded: true,
        unschedulable: false,
        certificates_current: true,
        quota_bytes: 2 << 30,
        data_refused: None,
    });
    assert_eq!(
        next_step(&o).step,
        Step::AddLearner {
            name: "c-2".into(),
            version: v(V36),
            for_upgrade: false
        }
    );
    // Past the grace it is an orphan.
    o.pods.last_mut().unwrap().age = JOIN_GRACE + Duration::from_secs(1);
    assert_eq!(next_step(&o).step, Step::DeleteOrphanPod { name: "c-2".into() });
    // Without pods first, an orphan is deleted at once.
    o.pods.last_mut().unwrap().age = Duration::from_secs(5);
    o.pods_first = false;
    o.boot = None;
    assert_eq!(next_step(&o).step, Step::DeleteOrphanPod { name: "c-2".into() });
}

#[test]
fn a_removed_members_name_is_never_given_to_its_replacement_when_recorded() {
    // c-2 was removed; without the record the next name would be c-2 again.
    let mut o = world(3, V36).voter(0, V36).voter(1, V36);
    assert!(matches!(next_step(&o).step, Step::AddLearner { ref name, .. } if name == "c-2"));
    o.ordinal_floor = 3;
    assert!(matches!(next_step(&o).step, Step::AddLearner { ref name, .. } if name == "c-3"));
}

// ---- Members whose data is intact come back on it (issue: never make things worse) ----

#[test]
fn a_voter_whose_pod_is_gone_is_restarted_on_its_claim_not_replaced() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .without_pod(2)
        .unhealthy(2);
    assert_eq!(
        step(&o),
        Step::RestartMember {
            name: "c-2".into(),
            version: v(V36)
        }
    );
}

#[test]
fn the_restarted_member_runs_the_version_its_claim_records() {
    // Mid-upgrade: c-0 still runs 3.5 on its claim while the spec asks for 3.6.
    let o = world(3, V36)
        .voter(0, V35)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .without_pod(0)
        .unhealthy(0);
    assert_eq!(
        step(&o),
        Step::RestartMember {
            name: "c-0".into(),
            version: v(V35)
        }
    );
}

#[test]
fn a_voter_without_pod_or_claim_is_replaced_as_before() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .without_claim(2)
        .without_pod(2)
        .unhealthy(2);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::PodGone
        }
    );
}

#[test]
fn a_majority_whose_pods_are_gone_is_restarted_without_quorum() {
    // Restarting changes no membership, so it needs no quorum.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .without_pod(1)
        .unhealthy(1)
        .without_pod(2)
        .unhealthy(2);
    assert_eq!(
        step(&o),
        Step::RestartMember {
            name: "c-1".into(),
            version: v(V36)
        }
    );
}

#[test]
fn every_pod_gone_with_claims_restarts_each_member_in_order() {
    // Nobody answers: the membership is unknown, the claims and status name the members.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims();
    let mut o = o.silent();
    o.pods.clear();
    assert_eq!(
        step(&o),
        Step::RestartMember {
            name: "c-0".into(),
            version: v(V36)
        }
    );
    // c-0 and c-1 have new pods starting: c-2 is next.
    o.pods.push(PodView {
        name: "c-0".into(),
        version: v(V36),
        state: PodState::Starting,
        age: Duration::from_secs(1),
        volume_lost: false,
        voter_label: None,
        image_problem: None,
        settings_current: true,
        template_current: true,
        template_recorded: true,
        unschedulable: false,
        certificates_current: true,
        quota_bytes: 2 << 30,
        data_refused: None,
    });
    o.pods.push(PodView {
        name: "c-1".into(),
        ..o.pods[0].clone()
    });
    assert_eq!(
        step(&o),
        Step::RestartMember {
            name: "c-2".into(),
            version: v(V36)
        }
    );
    o.pods.push(PodView {
        name: "c-2".into(),
        ..o.pods[0].clone()
    });
    assert!(matches!(step(&o), Step::WaitForMembers { .. }));
}

#[test]
fn pods_still_being_deleted_are_awaited_not_replaced() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .pod_state(0, PodState::Deleting)
        .pod_state(1, PodState::Deleting)
        .pod_state(2, PodState::Deleting)
        .silent();
    let Step::WaitForMembers { reason } = step(&o) else {
        panic!("expected a wait, got {:?}", step(&o));
    };
    assert!(reason.contains("c-0, c-1, c-2"), "{reason}");
    // With quorum, a durable member whose pod is being deleted is awaited, never removed.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .pod_state(2, PodState::Deleting);
    assert!(matches!(step(&o), Step::WaitForMembers { .. }), "{:?}", step(&o));
}

#[test]
fn a_terminated_pod_on_an_intact_claim_is_deleted_to_restart_it() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .pod_state(1, PodState::Terminated)
        .unhealthy(1);
    assert_eq!(step(&o), Step::DeleteTerminatedPod { name: "c-1".into() });
}

#[test]
fn a_claim_of_no_known_member_is_never_started() {
    // A claim left from before a restore (status does not list its member) is not this cluster.
    let mut o = world(3, V36).voter(0, V36).on_claims().silent();
    o.pods.clear();
    o.known_members.clear();
    assert_eq!(
        step(&o),
        Step::NoQuorum {
            healthy_voters: 0,
            voters: 0,
            returning: vec![]
        }
    );
}

#[test]
fn a_crash_looping_member_on_a_claim_is_replaced_with_quorum() {
    // etcd refusing its data is data loss for that member alone.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .pod_state(2, PodState::CrashLooping)
        .unhealthy(2);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::CrashLooping
        }
    );
}

// ---- Quorum is about reachability only ----

#[test]
fn alarms_on_every_member_are_not_lost_quorum() {
    let alarm = ["memberID:100 alarm:NOSPACE "];
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .errors(0, &alarm)
        .errors(1, &alarm)
        .errors(2, &alarm);
    // NOSPACE is worked on (compaction first), never read as lost quorum.
    assert_eq!(
        step(&o),
        Step::Compact { revision: 1000 },
        "an alarm must not read as lost quorum"
    );
    // An alarm the operator has no remedy for is waited on, named.
    let other = ["memberID:100 alarm:SOMETHINGNEW"];
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .errors(0, &other)
        .errors(1, &other)
        .errors(2, &other);
    let Step::WaitForMembers { reason } = step(&o) else {
        panic!("an alarm must not read as lost quorum: {:?}", step(&o));
    };
    assert!(
        reason.contains("SOMETHINGNEW"),
        "the wait names the alarm: {reason}"
    );
}

#[test]
fn an_alarm_blocks_growth_but_not_the_restart_of_a_durable_member() {
    let alarm = ["memberID:100 alarm:NOSPACE "];
    let o = world(3, V36).voter(0, V36).voter(1, V36).errors(0, &alarm);
    assert!(!matches!(step(&o), Step::AddLearner { .. }), "{:?}", step(&o));
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .errors(0, &alarm)
        .without_pod(2)
        .unhealthy(2);
    assert!(matches!(step(&o), Step::RestartMember { .. }), "{:?}", step(&o));
}

#[test]
fn without_quorum_voters_with_intact_data_are_counted_as_returning() {
    // Pods running (etcd restarting in them) keep even emptyDir data.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .unhealthy(1)
        .unhealthy(2);
    let s = step(&o);
    assert_eq!(
        s,
        Step::NoQuorum {
            healthy_voters: 1,
            voters: 3,
            returning: vec!["c-1".into(), "c-2".into()]
        }
    );
    assert_eq!(
        s.quorum_may_return(),
        Some(&["c-1".to_owned(), "c-2".to_owned()][..])
    );
    // emptyDir pods gone: their data is gone, nothing returns, recovery may act.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .without_pod(1)
        .unhealthy(1)
        .without_pod(2)
        .unhealthy(2);
    assert_eq!(step(&o).quorum_may_return(), None);
    // A crash-looping pod does not count as returning.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .pod_state(1, PodState::CrashLooping)
        .unhealthy(1)
        .pod_state(2, PodState::CrashLooping)
        .unhealthy(2);
    assert_eq!(step(&o).quorum_may_return(), None);
}

// ---- A member whose pod is going away does not count toward quorum (issue #26) ----

#[test]
fn a_voter_whose_pod_is_being_deleted_does_not_count_toward_quorum() {
    // The e2e case: c-2's pod is gone, c-0's is being deleted but its etcd still answers. Only c-1
    // will be there: removing c-2 would be a membership change without quorum.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .pod_state(0, PodState::Deleting)
        .without_pod(2)
        .unhealthy(2);
    assert_eq!(
        step(&o),
        Step::NoQuorum {
            healthy_voters: 1,
            voters: 3,
            returning: vec![]
        }
    );
}

#[test]
fn a_deleting_leader_does_not_count_either() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .leader(1)
        .pod_state(1, PodState::Deleting)
        .without_pod(2)
        .unhealthy(2);
    assert!(
        matches!(
            step(&o),
            Step::NoQuorum {
                healthy_voters: 1,
                ..
            }
        ),
        "{:?}",
        step(&o)
    );
}

#[test]
fn a_terminated_pod_that_still_answers_does_not_count() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .pod_state(0, PodState::Terminated)
        .without_pod(2)
        .unhealthy(2);
    assert!(
        matches!(
            step(&o),
            Step::NoQuorum {
                healthy_voters: 1,
                ..
            }
        ),
        "{:?}",
        step(&o)
    );
}

#[test]
fn the_member_being_removed_may_itself_be_deleting() {
    // c-2's pod is being deleted (its etcd still answers); c-0 and c-1 stay: 2 of 2 after removal.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .pod_state(2, PodState::Deleting);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::PodGone
        }
    );
}

#[test]
fn a_deleting_learner_is_removed_without_touching_voters() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .learner(2, 10)
        .pod_state(2, PodState::Deleting);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::PodGone
        }
    );
    // A voter being deleted while a learner catches up: no quorum for any change with 1 of 2 left.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .learner(2, 10)
        .pod_state(1, PodState::Deleting);
    assert!(
        matches!(
            step(&o),
            Step::NoQuorum {
                healthy_voters: 1,
                voters: 2,
                ..
            }
        ),
        "{:?}",
        step(&o)
    );
}

#[test]
fn one_survivor_of_three_without_claims_cannot_give_quorum_back() {
    // Nobody answers a member list; one emptyDir pod runs, the other two are gone with their data.
    let o = world(3, V36).voter(0, V36).voter(1, V36).voter(2, V36);
    let mut o = o.without_pod(1).without_pod(2).silent();
    o.known_members = vec!["c-0".into(), "c-1".into(), "c-2".into()];
    let s = step(&o);
    assert_eq!(
        s,
        Step::NoQuorum {
            healthy_voters: 0,
            voters: 3,
            returning: vec!["c-0".into()]
        }
    );
    assert_eq!(s.quorum_may_return(), None, "recovery must be able to act");
}

// ---- A member whose node is lost (issue #18): waited for, then replaced; never on doubt ----

const PAST: u64 = 601;

/// Three members on claims; `c-2`'s node lost for `secs`, its member silent and its pod stuck in
/// deletion (the lost kubelet never confirms it).
fn third_node_lost(secs: u64) -> Observed {
    world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .pod_state(2, PodState::Deleting)
        .unhealthy(2)
        .node_lost(2, secs)
}

#[test]
fn a_member_on_a_lost_node_is_waited_for_within_the_timeout() {
    let o = third_node_lost(600 - 1);
    let Step::WaitForMembers { reason } = step(&o) else {
        panic!("expected a wait, got {:?}", step(&o));
    };
    assert!(
        reason.contains("node2 of c-2 is lost (for 599s)") && reason.contains("after 600s"),
        "{reason}"
    );
    // Before eviction its pod still shows as running: the member is awaited just the same.
    let o = third_node_lost(30).pod_state(2, PodState::Running);
    assert!(matches!(step(&o), Step::WaitForMembers { .. }), "{:?}", step(&o));
}

#[test]
fn past_the_timeout_a_silent_member_on_a_lost_node_is_removed() {
    let removed = Step::RemoveMember {
        id: 102,
        name: "c-2".into(),
        reason: RemoveReason::NodeLost,
    };
    assert_eq!(step(&third_node_lost(PAST)), removed);
    // Its pod terminated there: it is not deleted to restart the member (the new pod would wait for
    // the lost node); the member is replaced.
    assert_eq!(
        step(&third_node_lost(PAST).pod_state(2, PodState::Terminated)),
        removed
    );
    // The timeout is the spec's.
    let mut o = third_node_lost(61);
    o.desired.replace_after_node_lost = Duration::from_secs(60);
    assert_eq!(step(&o), removed);
}

#[test]
fn the_leader_is_never_replaced_for_its_node() {
    // Its peers still follow it: the operator, not the member, may be the one cut off.
    let o = third_node_lost(PAST).leader(2);
    assert!(matches!(step(&o), Step::WaitForMembers { .. }), "{:?}", step(&o));
}

#[test]
fn with_no_member_answering_claims_on_lost_nodes_block_any_restore() {
    // No member answers and no pod is left (a one-member cluster, or pods force-deleted): the
    // claims on lost nodes are still data that may come back.
    // The member's pod terminated on its lost node: not restarted there, and not restored over.
    let o = world(1, V36)
        .voter(0, V36)
        .on_claims()
        .pod_state(0, PodState::Terminated)
        .node_lost(0, PAST)
        .silent();
    let s = step(&o);
    assert_eq!(s.quorum_may_return(), Some(&["c-0".to_owned()][..]), "{s:?}");
    // Whatever the observation, a claim that is not restarted is never left out of what may return.
    let mut o = o;
    o.pods.clear();
    let s = step(&o);
    assert_eq!(s.quorum_may_return(), Some(&["c-0".to_owned()][..]), "{s:?}");
}

#[test]
fn a_member_that_answers_is_never_replaced_for_its_node() {
    // A silent kubelet does not stop the containers it started: the member still runs.
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .on_claims()
        .node_lost(2, PAST);
    assert_eq!(step(&o), Step::Converged);
}

#[test]
fn a_member_on_a_lost_node_is_not_removed_when_that_would_cost_quorum() {
    let o = third_node_lost(PAST)
        .pod_state(1, PodState::Deleting)
        .unhealthy(1)
        .node_lost(1, PAST);
    let s = step(&o);
    assert!(matches!(s, Step::NoQuorum { .. }), "{s:?}");
    // Their data may still come back with their nodes: automatic recovery must not restore over it.
    assert_eq!(
        s.quorum_may_return(),
        Some(&["c-1".to_owned(), "c-2".to_owned()][..])
    );
}

#[test]
fn a_lost_learner_is_removed_past_the_timeout() {
    let o = world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .learner(3, 10)
        .on_claims()
        .pod_state(3, PodState::Deleting)
        .unhealthy(3)
        .node_lost(3, PAST);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 103,
            name: "c-3".into(),
            reason: RemoveReason::NodeLost
        }
    );
}

#[test]
fn crash_after_removing_a_lost_member_finishes_with_its_pod_and_claim() {
    // The member left etcd, but its pod (stuck in deletion) and its unretired claim remain: the pod
    // is an orphan to delete (which retires the claim), not a member to wait for.
    let o = third_node_lost(PAST).without_member(2);
    assert_eq!(step(&o), Step::DeleteOrphanPod { name: "c-2".into() });
    // Once the claim is retired and the pod gone, a new member is added.
    let o = o.without_claim(2).without_pod(2);
    assert!(matches!(step(&o), Step::AddLearner { .. }), "{:?}", step(&o));
}

#[test]
fn a_paused_cluster_replaces_nothing() {
    assert!(matches!(step(&third_node_lost(PAST).paused()), Step::Held(_)));
}
