use super::super::decide::{
    DataHome, DataRefusal, PodState, RemoveReason, Step, next_step,
    tests::{V36, world},
};
use super::*;

const MIB: u64 = 1 << 20;
const NOSPACE: &str = "memberID:101 alarm:NOSPACE";

/// Three healthy voters c-0 (leader), c-1, c-2 on claims.
fn three() -> Observed {
    world(3, V36)
        .voter(0, V36)
        .voter(1, V36)
        .voter(2, V36)
        .leader(0)
        .on_claims()
}

fn step(o: &Observed) -> Step {
    next_step(o).step
}

impl Observed {
    /// Every member reports `errors` (alarms are replicated: each member lists all of them).
    fn all_report(mut self, errors: &[&str]) -> Self {
        for n in 0..3 {
            if self.pods.iter().any(|p| p.name == format!("c-{n}")) {
                self = self.errors(n, errors);
            }
        }
        self
    }
    /// `c-<n>`'s database file is `size` MiB of which `in_use` MiB are in use.
    fn db(mut self, n: u32, size: u64, in_use: u64) -> Self {
        let m = self
            .membership
            .as_mut()
            .unwrap()
            .members
            .iter_mut()
            .find(|m| m.name == format!("c-{n}"))
            .unwrap();
        let h = m.health.as_mut().unwrap();
        h.db_size = size * MIB;
        h.db_in_use = in_use * MIB;
        self
    }
    fn quota_mib(mut self, mib: u64) -> Self {
        self.maintenance.quota_bytes = mib * MIB;
        self
    }
    /// The operator defragmented `c-<n>` when it was at `revision`.
    fn defragmented_at(mut self, n: u32, revision: i64) -> Self {
        self.maintenance
            .defragmented_revisions
            .push((format!("c-{n}"), revision));
        self
    }
    fn compacted_at(mut self, revision: i64) -> Self {
        self.maintenance.compacted_revision = Some(revision);
        self
    }
    fn pod_of(&mut self, n: u32) -> &mut PodView {
        self.pods.iter_mut().find(|p| p.name == format!("c-{n}")).unwrap()
    }
    fn old_settings(mut self, n: u32) -> Self {
        self.pod_of(n).settings_current = false;
        self
    }
    fn old_template(mut self, n: u32) -> Self {
        self.pod_of(n).template_current = false;
        self
    }
    fn threshold(mut self, percent: u32, min_mib: u64) -> Self {
        self.maintenance.defragmentation = Some(DefragThreshold {
            min_fragmentation_percent: percent,
            min_database_bytes: min_mib * MIB,
            window: DefragWindow::Always,
        });
        self
    }
}

/// A full cluster: every member's file at 16 MiB of a 16 MiB quota.
fn full() -> Observed {
    three()
        .all_report(&[NOSPACE])
        .quota_mib(16)
        .db(0, 16, 16)
        .db(1, 16, 16)
        .db(2, 16, 16)
}

#[test]
fn nospace_compacts_to_the_newest_revision_first() {
    assert_eq!(step(&full()), Step::Compact { revision: 1000 });
    // Much history written since the last compaction (deletes are allowed under NOSPACE) is
    // compacted too; a little is not worth delaying the defragmentation for.
    assert_eq!(step(&full().compacted_at(0)), Step::Compact { revision: 1000 });
    assert!(!matches!(step(&full().compacted_at(900)), Step::Compact { .. }));
}

#[test]
fn after_compaction_followers_are_defragmented_before_the_leader() {
    let o = full().compacted_at(1000).db(0, 16, 2).db(1, 16, 2).db(2, 16, 2);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-1"));
    let o = o.db(1, 2, 2);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-2"));
    // Only the leader is left: leadership moves to a member that is done first.
    let o = o.db(2, 2, 2);
    assert_eq!(
        step(&o),
        Step::MoveLeader {
            from: "c-0".into(),
            to_id: 101,
            to: "c-1".into()
        }
    );
    let o = o.leader(1);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-0"));
}

#[test]
fn after_compaction_members_are_defragmented_even_while_their_reported_use_lags() {
    // etcd reports the pages a compaction freed only after later commits: under NOSPACE a follower
    // can show its whole file in use long after the compaction (seen in CI). Each member whose file
    // keeps the alarm up is defragmented once per compaction, followers first.
    let o = full().compacted_at(1000);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-1"));
    let o = o.defragmented_at(1, 1000);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-2"));
    let o = o.defragmented_at(2, 1000);
    assert!(matches!(step(&o), Step::MoveLeader { from, .. } if from == "c-0"));
    let o = o.leader(1);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-0"));
    // Each was defragmented since the compaction and the files are still full: the data does not
    // fit, and nothing is defragmented again.
    let o = o.defragmented_at(0, 1000);
    assert!(
        matches!(step(&o), Step::MaintenanceBlocked { ref reason } if reason.contains("does not fit")),
        "{:?}",
        step(&o)
    );
    // A defragmentation before the compaction does not count.
    let o = full().compacted_at(1000).defragmented_at(1, 999);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-1"));
}

#[test]
fn nospace_is_disarmed_once_every_database_is_well_below_the_quota() {
    let o = full().compacted_at(1000).db(0, 2, 2).db(1, 2, 2).db(2, 2, 2);
    assert_eq!(
        step(&o),
        Step::DisarmAlarm {
            member_id: 101,
            kind: AlarmKind::NoSpace
        }
    );
}

#[test]
fn data_that_does_not_fit_the_quota_is_reported_and_nothing_else_is_done() {
    // Compacted, every member defragmented since, and 15 of 16 MiB in use is above the disarm line.
    let o = full()
        .compacted_at(1000)
        .db(0, 15, 15)
        .db(1, 15, 15)
        .db(2, 15, 15)
        .defragmented_at(0, 1000)
        .defragmented_at(1, 1000)
        .defragmented_at(2, 1000);
    let Step::MaintenanceBlocked { reason } = step(&o) else {
        panic!("expected MaintenanceBlocked, got {:?}", step(&o));
    };
    assert!(reason.contains("spec.etcd.quotaBackendBytes"), "{reason}");
    assert!(!step(&o).is_change());
}

#[test]
fn a_raised_quota_rolls_out_before_anything_else_under_nospace() {
    let o = full()
        .compacted_at(1000)
        .db(0, 15, 15)
        .db(1, 15, 15)
        .db(2, 15, 15);
    let o = o.old_settings(0).old_settings(1).old_settings(2).quota_mib(64);
    assert_eq!(step(&o), Step::RestartWithSettings { name: "c-1".into() });
}

#[test]
fn a_new_pod_template_waits_for_nospace_to_be_recovered_from() {
    // An operator upgrade under NOSPACE: restarting every member helps nothing; compaction first.
    let o = full().old_template(0).old_template(1).old_template(2);
    assert_eq!(step(&o), Step::Compact { revision: 1000 });
}

#[test]
fn nospace_with_a_silent_voter_waits_for_it() {
    let o = full().unhealthy(2);
    assert!(matches!(step(&o), Step::WaitForMembers { .. }), "{:?}", step(&o));
}

#[test]
fn nospace_waits_for_a_learner_first() {
    let o = full().learner(3, 10).all_report(&[NOSPACE]);
    assert_eq!(step(&o), Step::WaitForLearner { name: "c-3".into() });
}

impl Observed {
    /// Each voter `c-<n>` hashes its keyspace to `hashes[n]`.
    fn hashes(mut self, hashes: &[u32]) -> Self {
        self.maintenance.kv_hashes = hashes
            .iter()
            .enumerate()
            .map(|(n, h)| {
                (
                    100 + n as u64,
                    KvHash {
                        hash: *h,
                        compact_revision: 7,
                    },
                )
            })
            .collect();
        self
    }
}

fn blocked(o: &Observed) -> String {
    match step(o) {
        Step::MaintenanceBlocked { reason } => reason,
        other => panic!("expected MaintenanceBlocked, got {other:?}"),
    }
}

#[test]
fn the_single_member_whose_hash_differs_from_all_others_is_removed_whatever_the_alarm_names() {
    // etcd's check blamed c-1 (or nobody); the hashes say c-2.
    for alarm in ["memberID:101 alarm:CORRUPT", "alarm:CORRUPT"] {
        let o = three().all_report(&[alarm]).hashes(&[5, 5, 9]);
        assert_eq!(
            step(&o),
            Step::RemoveMember {
                id: 102,
                name: "c-2".into(),
                reason: RemoveReason::Corrupt
            },
            "{alarm}"
        );
    }
    // The bad copy leads: leadership moves to the majority first.
    let o = three().all_report(&["alarm:CORRUPT"]).hashes(&[9, 5, 5]);
    assert_eq!(
        step(&o),
        Step::MoveLeader {
            from: "c-0".into(),
            to_id: 101,
            to: "c-1".into()
        }
    );
}

/// `c-2`'s etcd refused its data at start (over compaction 7): it does not answer, its pod says
/// why, and `c-0`, `c-1`... hashed to `hashes_of_others`.
fn refused_at_start(hashes_of_others: &[u32]) -> Observed {
    let mut o = three().hashes(hashes_of_others);
    let ms = o.membership.as_mut().unwrap();
    ms.members[2].health = None;
    let p = o.pods.iter_mut().find(|p| p.name == "c-2").unwrap();
    p.data_refused = Some(DataRefusal {
        compact_revision: Some(7),
    });
    p.state = PodState::Running;
    o
}

#[test]
fn a_member_whose_data_etcd_refused_at_start_is_replaced_when_the_others_agree() {
    let o = refused_at_start(&[5, 5]);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::Corrupt
        }
    );
    // The others disagree: the bad copy may be a peer's. Nothing is removed; c-2 is waited for
    // (and, once it has crashed five times, treated as any crash-looping member).
    let o = refused_at_start(&[5, 6]);
    assert!(!matches!(step(&o), Step::RemoveMember { .. }), "{:?}", step(&o));
    // A peer's hash is missing, or taken over another compaction: not judged.
    let o = refused_at_start(&[5]);
    assert!(!matches!(step(&o), Step::RemoveMember { .. }), "{:?}", step(&o));
    let mut o = refused_at_start(&[5, 5]);
    o.maintenance.kv_hashes[1].1.compact_revision = 3;
    assert!(!matches!(step(&o), Step::RemoveMember { .. }), "{:?}", step(&o));
    // Its pod ran etcd again (past the check): not refused now.
    let mut o = refused_at_start(&[5, 5]);
    o.pods.iter_mut().find(|p| p.name == "c-2").unwrap().data_refused = None;
    assert!(!matches!(step(&o), Step::RemoveMember { .. }), "{:?}", step(&o));
    // The others agree, but over a compaction that ran after the refusal (it may have removed
    // the history that differed), or the refusal's words did not keep its compaction.
    let mut o = refused_at_start(&[5, 5]);
    o.pods.iter_mut().find(|p| p.name == "c-2").unwrap().data_refused = Some(DataRefusal {
        compact_revision: Some(3),
    });
    assert!(!matches!(step(&o), Step::RemoveMember { .. }), "{:?}", step(&o));
    o.pods.iter_mut().find(|p| p.name == "c-2").unwrap().data_refused = Some(DataRefusal {
        compact_revision: None,
    });
    assert!(!matches!(step(&o), Step::RemoveMember { .. }), "{:?}", step(&o));
}

#[test]
fn hashes_over_different_histories_are_not_judged() {
    // c-2 has not applied the compaction the others have: its hash differs while it is healthy.
    let mut o = three().all_report(&["alarm:CORRUPT"]).hashes(&[5, 5, 9]);
    o.maintenance.kv_hashes[2].1.compact_revision = 3;
    assert!(blocked(&o).contains("not comparable"), "{}", blocked(&o));
    // c-2 lags behind the others' revision.
    let mut o = three().all_report(&["alarm:CORRUPT"]).hashes(&[5, 5, 9]);
    let ms = o.membership.as_mut().unwrap();
    ms.members[2].health.as_mut().unwrap().revision = 990;
    assert!(blocked(&o).contains("not comparable"), "{}", blocked(&o));
}

#[test]
fn without_an_agreeing_majority_nothing_is_removed() {
    let o = three()
        .all_report(&["memberID:102 alarm:CORRUPT"])
        .hashes(&[1, 2, 3]);
    assert!(blocked(&o).contains("no single member differs"));
    // Two voters: a disagreement names no culprit.
    let o = world(2, V36)
        .voter(0, V36)
        .voter(1, V36)
        .on_claims()
        .errors(0, &["alarm:CORRUPT"])
        .errors(1, &["alarm:CORRUPT"])
        .hashes(&[1, 2]);
    assert!(blocked(&o).contains("no single member differs"));
    // A hash that did not come back: wait for it rather than guess.
    let mut o = three().all_report(&["alarm:CORRUPT"]).hashes(&[5, 5, 9]);
    o.maintenance.kv_hashes.pop();
    assert!(blocked(&o).contains("waiting for the keyspace hash of c-2"));
}

#[test]
fn once_every_voter_agrees_the_alarm_of_a_member_gone_is_disarmed() {
    let o = three()
        .all_report(&["memberID:103 alarm:CORRUPT"])
        .hashes(&[5, 5, 5]);
    assert_eq!(
        step(&o),
        Step::DisarmAlarm {
            member_id: 103,
            kind: AlarmKind::Corrupt
        }
    );
    // An alarm raised on no member.
    let o = three().all_report(&["alarm:CORRUPT"]).hashes(&[5, 5, 5]);
    assert_eq!(
        step(&o),
        Step::DisarmAlarm {
            member_id: 0,
            kind: AlarmKind::Corrupt
        }
    );
    // But an alarm on a member still here, whose hash agrees, is left for a human.
    let o = three()
        .all_report(&["memberID:101 alarm:CORRUPT"])
        .hashes(&[5, 5, 5]);
    assert!(blocked(&o).contains("disarm by hand"));
}

#[test]
fn new_settings_restart_members_on_their_claims_followers_first() {
    let o = three().old_settings(0).old_settings(2);
    assert_eq!(step(&o), Step::RestartWithSettings { name: "c-2".into() });
    let o = three().old_settings(0);
    assert_eq!(
        step(&o),
        Step::MoveLeader {
            from: "c-0".into(),
            to_id: 101,
            to: "c-1".into()
        }
    );
}

#[test]
fn a_new_pod_template_restarts_members_on_their_claims_as_settings_do() {
    let o = three().old_template(0).old_template(2);
    assert_eq!(step(&o), Step::RestartWithSettings { name: "c-2".into() });
    let o = three().old_template(0);
    assert!(
        matches!(step(&o), Step::MoveLeader { from, .. } if from == "c-0"),
        "{:?}",
        step(&o)
    );
    // Health first: an outdated template never restarts a member while another is down.
    let o = three().old_template(1).unhealthy(2);
    assert!(matches!(step(&o), Step::WaitForMembers { .. }), "{:?}", step(&o));
    // Data that lives with the pod: a member on the new template joins before an old one leaves.
    let mut o = three().old_template(0).old_template(1).old_template(2);
    o.data = DataHome::Pod;
    assert!(
        matches!(
            step(&o),
            Step::AddLearner {
                for_upgrade: true,
                ..
            }
        ),
        "{:?}",
        step(&o)
    );
}

#[test]
fn a_member_stuck_on_an_outdated_pod_is_restarted_onto_the_fixed_spec() {
    // c-2 was rolled onto a template whose image does not exist: its pod never starts. The spec is
    // fixed, so its pod is outdated again; it is restarted onto the fix rather than waited for.
    let stuck = |o: Observed, problem: bool| {
        let mut o = o.pod_state(2, PodState::Starting).unhealthy(2);
        o.pods[2].image_problem = problem.then(|| "container etcd cannot pull etcd:v9".to_owned());
        o
    };
    assert_eq!(
        step(&stuck(three().old_template(2), true)),
        Step::RestartWithSettings { name: "c-2".into() }
    );
    // So is one the scheduler cannot place.
    let mut o = stuck(three().old_template(2), false);
    o.pods[2].unschedulable = true;
    assert_eq!(step(&o), Step::RestartWithSettings { name: "c-2".into() });
    // Its pod current (the roll just made it): waited for, never restarted in a loop.
    assert!(matches!(step(&stuck(three(), true)), Step::WaitForMembers { .. }));
    // A member that is merely restarting (its container ran) is waited for, outdated or not.
    assert!(matches!(
        step(&stuck(three().old_template(2), false)),
        Step::WaitForMembers { .. }
    ));
    // Nor while another voter is down too.
    let o = stuck(three().old_template(2), true).unhealthy(1);
    assert!(
        !matches!(step(&o), Step::RestartWithSettings { .. }),
        "{:?}",
        step(&o)
    );
}

#[test]
fn a_settings_roll_waits_for_every_member_to_be_healthy() {
    let o = three().old_settings(1).unhealthy(2);
    assert!(matches!(step(&o), Step::WaitForMembers { .. }), "{:?}", step(&o));
}

#[test]
fn new_settings_on_pod_data_surge_a_member_then_remove_an_old_one() {
    let mut o = three().old_settings(0).old_settings(1).old_settings(2);
    o.data = DataHome::Pod;
    assert_eq!(
        step(&o),
        Step::AddLearner {
            name: "c-3".into(),
            version: V36.parse().unwrap(),
            for_upgrade: true
        }
    );
    let o = o.voter(3, V36);
    assert_eq!(
        step(&o),
        Step::RemoveMember {
            id: 102,
            name: "c-2".into(),
            reason: RemoveReason::Reconfigure
        }
    );
}

#[test]
fn defragmentation_by_threshold_takes_one_fragmented_follower() {
    let o = three()
        .threshold(50, 100)
        .db(0, 400, 100)
        .db(1, 400, 300)
        .db(2, 400, 100);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-2"));
    // Below the size floor nothing is defragmented, however fragmented.
    let o = three().threshold(50, 100).db(1, 90, 10);
    assert_eq!(step(&o), Step::Converged);
}

#[test]
fn defragmentation_skips_a_member_defragmented_lately_or_a_backup_source() {
    let mut o = three().threshold(50, 100).db(2, 400, 100);
    o.maintenance.recently_defragmented = vec!["c-2".into()];
    assert_eq!(step(&o), Step::Converged);
    let mut o = three().threshold(50, 100).db(2, 400, 100);
    o.maintenance.backup_sources = vec!["c-2".into()];
    // Waiting for a backup is routine: not reported as blocked.
    assert_eq!(step(&o), Step::Converged);
    assert_eq!(
        step(&o.clone().db(1, 400, 100)),
        Step::Defragment {
            id: 101,
            name: "c-1".into(),
            why: "by spec.maintenance.defragmentation".into()
        }
    );
}

#[test]
fn defragmentation_by_threshold_waits_for_a_running_drill_but_nospace_does_not() {
    let mut o = three().threshold(50, 100).db(2, 400, 100);
    o.maintenance.drills_running = vec!["b-1".into()];
    assert_eq!(step(&o), Step::Converged);
    o.maintenance.drills_running.clear();
    assert!(matches!(step(&o), Step::Defragment { .. }));
    // Under NOSPACE writes are refused: recovery does not wait for a drill (a check of a backup).
    let mut o = full().compacted_at(1000).db(0, 16, 2).db(1, 16, 2).db(2, 16, 2);
    o.maintenance.drills_running = vec!["b-1".into()];
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-1"));
}

fn window(o: &mut Observed, w: DefragWindow) {
    o.maintenance.defragmentation.as_mut().unwrap().window = w;
}

#[test]
fn defragmentation_by_threshold_starts_only_inside_its_window() {
    let opens: jiff::Timestamp = "2026-12-07T02:00:00Z".parse().unwrap();
    let mut o = three().threshold(50, 100).db(2, 400, 100);
    window(&mut o, DefragWindow::Open);
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-2"));
    assert_eq!(window_condition(&o), None);

    window(&mut o, DefragWindow::Closed { opens: Some(opens) });
    assert_eq!(step(&o), Step::Converged);
    assert_eq!(
        window_condition(&o),
        Some((
            false,
            "WaitingForWindow",
            "c-2 past the defragmentation threshold; the next window opens at 2026-12-07T02:00:00Z".into()
        ))
    );
    // Nobody past the threshold: nothing to say about the window.
    let mut idle = three().threshold(50, 100);
    window(&mut idle, DefragWindow::Closed { opens: Some(opens) });
    assert_eq!(window_condition(&idle), None);

    // A window that cannot be read turns the threshold off and says what to fix.
    window(
        &mut o,
        DefragWindow::Invalid("spec.maintenance.defragmentation.window.schedule \"x\" is bad".into()),
    );
    assert_eq!(step(&o), Step::Converged);
    let (active, reason, message) = window_condition(&o).unwrap();
    assert!(active);
    assert_eq!(reason, "InvalidWindow");
    assert!(
        message.ends_with("defragmentation by threshold is off until it is fixed"),
        "{message}"
    );

    // NOSPACE recovery never waits for a window.
    let mut o = full().compacted_at(1000).db(0, 16, 2).db(1, 16, 2).db(2, 16, 2);
    o.maintenance.defragmentation = three().threshold(50, 100).maintenance.defragmentation;
    window(&mut o, DefragWindow::Closed { opens: Some(opens) });
    assert!(matches!(step(&o), Step::Defragment { name, .. } if name == "c-1"));
}

#[test]
fn a_window_is_read_from_its_schedule_and_duration() {
    let w = |schedule: &str, duration: &str| ouroboros_crds::MaintenanceWindow {
        schedule: schedule.into(),
        duration: duration.into(),
    };
    let now: jiff::Timestamp = "2026-12-06T03:00:00Z".parse().unwrap();
    assert_eq!(defrag_window(None, now), DefragWindow::Always);
    assert_eq!(
        defrag_window(Some(&w("0 2 * * *", "2h")), now),
        DefragWindow::Open
    );
    assert_eq!(
        defrag_window(Some(&w("0 2 * * *", "1h")), now),
        DefragWindow::Closed {
            opens: Some("2026-12-07T02:00:00Z".parse().unwrap())
        }
    );
    assert!(matches!(
        defrag_window(Some(&w("0 */25 * * *", "2h")), now),
        DefragWindow::Invalid(why) if why.contains("window.schedule") && why.contains("hour step")
    ));
    assert!(matches!(
        defrag_window(Some(&w("0 2 * * *", "30s")), now),
        DefragWindow::Invalid(why) if why.contains("window.duration \"30s\"")
    ));
}

#[test]
fn no_threshold_means_no_defragmentation_without_an_alarm() {
    let o = three().db(0, 400, 10).db(1, 400, 10).db(2, 400, 10);
    assert_eq!(step(&o), Step::Converged);
}

#[test]
fn nospace_is_not_disarmed_against_a_raised_quota_the_members_do_not_run_yet() {
    // Data that lives with the pods: the raised quota is not rolled under the alarm, so the members
    // still run 16 MiB; disarming against the spec's 64 MiB would only see NOSPACE raised again.
    let mut o = full()
        .compacted_at(1000)
        .db(0, 15, 15)
        .db(1, 15, 15)
        .db(2, 15, 15)
        .defragmented_at(0, 1000)
        .defragmented_at(1, 1000)
        .defragmented_at(2, 1000);
    o.data = DataHome::Pod;
    for p in &mut o.pods {
        p.quota_bytes = 16 * MIB;
    }
    let o = o.quota_mib(64);
    assert!(blocked(&o).contains("16 MiB quota"), "{}", blocked(&o));
}

#[test]
fn two_members_against_a_majority_are_not_a_single_culprit() {
    let corrupt = ["alarm:CORRUPT"];
    let mut o = world(5, V36);
    for n in 0..5 {
        o = o.voter(n, V36);
    }
    let mut o = o.leader(0).on_claims();
    for n in 0..5 {
        o = o.errors(n, &corrupt);
    }
    // Three agree, two differ from them and from each other: which copy is bad is not clear enough.
    let o = o.hashes(&[5, 5, 5, 8, 9]);
    assert!(
        blocked(&o).contains("no single member differs"),
        "{}",
        blocked(&o)
    );
}

#[test]
fn rotated_certificates_restart_each_member_on_its_claim_followers_first() {
    let mut o = three();
    for p in &mut o.pods {
        p.certificates_current = false;
    }
    assert_eq!(step(&o), Step::RestartWithSettings { name: "c-1".into() });
    o.pods[1].certificates_current = true;
    o.pods[2].certificates_current = true;
    assert!(matches!(step(&o), Step::MoveLeader { from, .. } if from == "c-0"));
}

/// With no certificate set a member could start on (`certificate_copies::choose` found none), no
/// pod is restarted or replaced for a roll: it would not come up.
#[test]
fn no_member_is_restarted_while_no_certificate_set_can_be_mounted() {
    let mut o = three();
    o.pods[1].certificates_current = false;
    o.maintenance.certificates_blocked = Some("spec.tls.serverSecret (Secret s): not valid for c-2".into());
    let Step::MaintenanceBlocked { reason } = step(&o) else {
        panic!("expected MaintenanceBlocked, got {:?}", step(&o));
    };
    assert!(reason.contains("not valid for c-2"), "{reason}");
    // Nor by a settings roll or an upgrade, which would need the certificates too.
    let mut o = three().old_settings(1);
    o.maintenance.certificates_blocked = Some("bad".into());
    assert!(matches!(step(&o), Step::MaintenanceBlocked { .. }));
    // With every pod current, nothing is blocked: the condition reports the certificates.
    let mut o = three();
    o.maintenance.certificates_blocked = Some("bad".into());
    assert_eq!(step(&o), Step::Converged);
    // A refused renewal alone does not block: members restart on the set they run.
    let mut o = three().old_settings(1);
    o.maintenance.certificate_problems = vec!["bad".into()];
    assert_eq!(step(&o), Step::RestartWithSettings { name: "c-1".into() });
}

#[test]
fn a_refused_certificate_never_holds_nospace_recovery_up() {
    // Certificate and settings both outdated, a certificate refused: compaction still runs.
    let mut o = full().old_settings(1).quota_mib(64);
    o.pods[1].certificates_current = false;
    o.maintenance.certificates_blocked = Some("bad".into());
    assert_eq!(step(&o), Step::Compact { revision: 1000 });
    // Without a refusal, only the settings roll under the alarm, never the certificates.
    let mut o = full().quota_mib(64);
    o.pods[1].certificates_current = false;
    assert_eq!(step(&o), Step::Compact { revision: 1000 });
}

#[test]
fn a_recorded_compaction_ahead_of_the_data_is_stale() {
    // Another history's record (a restore from an older backup): compacted again, and a member
    // defragmented at this history's revision counts as done.
    assert_eq!(step(&full().compacted_at(5000)), Step::Compact { revision: 1000 });
}
