//! The continuous-backup decision, case by case.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jiff::Timestamp;
use ouroboros_crds::{
    BackupPhase, ContinuousBackup, ContinuousStatus,
    sidecar::{FollowPosition, FollowRequest, FollowState, JobDestination},
};

use super::continuous_plan::*;
use crate::sidecar::SidecarAddr;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn candidate(member: &str) -> Candidate {
    Candidate {
        member: member.into(),
        addr: SidecarAddr {
            addr: format!("{member}:8090"),
            identity: "c.ns.sidecar.etcd.ouroboros.dev".into(),
        },
    }
}

fn destination() -> JobDestination {
    JobDestination::Dir {
        path: "/backups".into(),
    }
}

fn request(base: &str, revision: u64) -> FollowRequest {
    FollowRequest {
        backup: base.into(),
        stored: revision,
        period_seconds: 10,
        max_bytes: DEFAULT_MAX_BYTES,
        destination: destination(),
    }
}

fn recorded(base: &str, member: Option<&str>) -> ContinuousStatus {
    ContinuousStatus {
        backup: base.into(),
        base_revision: 100,
        member: member.map(Into::into),
        stored_revision: 150,
        recovery_point: Some("2026-12-07T10:00:00Z".into()),
        chunks: 3,
        message: None,
    }
}

fn state(base: &str, ended: Option<&str>, gap: bool) -> Seen {
    Seen::State(Box::new(FollowState {
        request: request(base, 100),
        position: FollowPosition {
            stored_revision: 180,
            recovery_point_ms: t("2026-12-07T10:00:20Z").as_millisecond(),
            chunks: 5,
            bytes: 4096,
        },
        ended: ended.map(Into::into),
        gap,
    }))
}

/// On, base `b1` at revision 100, members c-1 (a follower) and c-0 (the leader) followable, and
/// c-1 recorded as following and running.
fn view() -> View {
    View {
        policy: Some(Ok(Policy {
            period: Duration::from_secs(10),
            max_bytes: DEFAULT_MAX_BYTES,
        })),
        base: Some(Base {
            name: "b1".into(),
            revision: 100,
            completed: Some(t("2026-12-07T09:59:00Z")),
        }),
        destination: Some(Ok(destination())),
        recorded: Some(recorded("b1", Some("c-1"))),
        candidates: vec![candidate("c-1"), candidate("c-0")],
        seen: Some(state("b1", None, false)),
        running_elsewhere: vec![],
        closing: None,
    }
}

fn follow_to(step: &Step) -> (&str, Option<&str>, &FollowRequest) {
    match step {
        Step::Follow { to, request, end_on } => (
            to.member.as_str(),
            end_on.as_ref().map(|c| c.member.as_str()),
            request,
        ),
        other => panic!("not a follow: {other:?}"),
    }
}

#[test]
fn off_ends_the_recorded_follow_and_clears_the_status() {
    let v = View {
        policy: None,
        ..view()
    };
    let step = next_step(&v, "c");
    assert_eq!(
        step,
        Step::Off {
            end_on: Some(candidate("c-1"))
        }
    );
    assert_eq!(status_after(&v, &step), None);
    let never = View {
        policy: None,
        recorded: None,
        ..view()
    };
    assert_eq!(next_step(&never, "c"), Step::Off { end_on: None });
}

#[test]
fn nothing_is_followed_before_a_full_backup_or_to_a_destination_sidecars_cannot_write() {
    let v = View {
        base: None,
        recorded: None,
        seen: None,
        ..view()
    };
    let step = next_step(&v, "c");
    assert!(
        matches!(&step, Step::Wait(why) if why.contains("first full backup")),
        "{step:?}"
    );
    assert!(
        status_after(&v, &step)
            .unwrap()
            .message
            .unwrap()
            .contains("first full backup")
    );
    let v = View {
        destination: Some(Err("set spec.backup.destination to an s3 destination".into())),
        ..view()
    };
    assert!(matches!(next_step(&v, "c"), Step::Wait(why) if why.contains("spec.backup.destination")));
    let v = View {
        policy: Some(Err("spec.backup.continuous.period \"0s\" is not...".into())),
        ..view()
    };
    assert!(matches!(next_step(&v, "c"), Step::Wait(why) if why.contains("period")));
}

#[test]
fn the_first_choice_is_a_follower_and_is_recorded() {
    let v = View {
        recorded: None,
        seen: None,
        ..view()
    };
    let step = next_step(&v, "c");
    let (to, end_on, req) = follow_to(&step);
    assert_eq!((to, end_on), ("c-1", None));
    assert_eq!(req, &request("b1", 100));
    let s = status_after(&v, &step).unwrap();
    assert_eq!(
        (s.member.as_deref(), s.backup.as_str(), s.stored_revision),
        (Some("c-1"), "b1", 100)
    );
    let none = View {
        candidates: vec![],
        ..v
    };
    assert!(matches!(next_step(&none, "c"), Step::Wait(why) if why.contains("no healthy member")));
}

#[test]
fn a_running_follow_is_recorded_and_its_recovery_point_never_moves_back() {
    let v = view();
    let step = next_step(&v, "c");
    assert!(matches!(step, Step::Record(_)), "{step:?}");
    let s = status_after(&v, &step).unwrap();
    assert_eq!((s.stored_revision, s.chunks), (180, 5));
    assert_eq!(s.recovery_point.as_deref(), Some("2026-12-07T10:00:20Z"));
    // A newly asked sidecar has not confirmed anything yet (0) and stands behind the status.
    let Some(Seen::State(mut fresh)) = v.seen.clone() else {
        unreachable!()
    };
    fresh.position = FollowPosition {
        stored_revision: 120,
        ..Default::default()
    };
    let v = View {
        seen: Some(Seen::State(fresh)),
        ..view()
    };
    let s = status_after(&v, &next_step(&v, "c")).unwrap();
    assert_eq!(s.stored_revision, 150);
    assert_eq!(s.recovery_point.as_deref(), Some("2026-12-07T10:00:00Z"));
}

#[test]
fn a_sidecar_that_restarted_or_whose_follow_ended_is_asked_again() {
    for seen in [
        Seen::Nothing,
        state("b1", Some("reading the watch: connection reset"), false),
    ] {
        let v = View {
            seen: Some(seen),
            ..view()
        };
        let step = next_step(&v, "c");
        assert_eq!(follow_to(&step).0, "c-1", "{step:?}");
    }
}

#[test]
fn a_new_full_backup_moves_the_chain_on_the_same_member_and_keeps_the_recovery_point() {
    let v = View {
        base: Some(Base {
            name: "b2".into(),
            revision: 400,
            completed: None,
        }),
        ..view()
    };
    let step = next_step(&v, "c");
    let (to, end_on, req) = follow_to(&step);
    assert_eq!((to, end_on, req), ("c-1", None, &request("b2", 400)));
    let s = status_after(&v, &step).unwrap();
    assert_eq!(
        (s.backup.as_str(), s.base_revision, s.stored_revision),
        ("b2", 400, 400)
    );
    assert_eq!(s.recovery_point.as_deref(), Some("2026-12-07T10:00:00Z"));
}

#[test]
fn an_unreachable_sidecar_hands_over_and_a_member_that_is_no_candidate_is_replaced() {
    let v = View {
        seen: Some(Seen::Unreachable("timed out".into())),
        ..view()
    };
    let step = next_step(&v, "c");
    let (to, end_on, _) = follow_to(&step);
    assert_eq!((to, end_on), ("c-0", Some("c-1")));
    let alone = View {
        candidates: vec![candidate("c-1")],
        ..v
    };
    assert!(matches!(next_step(&alone, "c"), Step::Wait(why) if why.contains("timed out")));
    // c-1 is no longer healthy: the best candidate left, nothing to end (it is not reachable).
    let gone = View {
        candidates: vec![candidate("c-0")],
        seen: None,
        ..view()
    };
    let step = next_step(&gone, "c");
    let (to, end_on, _) = follow_to(&step);
    assert_eq!((to, end_on), ("c-0", None));
}

#[test]
fn a_gap_closes_the_chain_with_one_full_backup_and_waits_for_it() {
    let v = View {
        seen: Some(state(
            "b1",
            Some("etcd compacted its history up to revision 300"),
            true,
        )),
        ..view()
    };
    let step = next_step(&v, "c");
    assert_eq!(
        step,
        Step::CloseChain {
            name: "c-chain-after-b1".into(),
            why: "etcd compacted its history up to revision 300".into()
        }
    );
    let s = status_after(&v, &step).unwrap();
    assert!(s.message.unwrap().contains("c-chain-after-b1"));
    assert_eq!(s.member, None);
    for (phase, says) in [
        (Some(BackupPhase::Running), "starts the next"),
        (Some(BackupPhase::Failed), "failed"),
    ] {
        let v = View {
            closing: Some(Closing {
                name: "c-chain-after-b1".into(),
                phase,
            }),
            ..v.clone()
        };
        assert!(matches!(next_step(&v, "c"), Step::Wait(why) if why.contains(says)));
    }
    // Once it succeeded it is the newest full backup: a new chain, the closing backup of the
    // old one no longer matters.
    let v = View {
        base: Some(Base {
            name: "c-chain-after-b1".into(),
            revision: 310,
            completed: None,
        }),
        closing: None,
        ..v
    };
    assert_eq!(
        follow_to(&next_step(&v, "c")).2,
        &request("c-chain-after-b1", 310)
    );
}

#[test]
fn the_recovery_point_is_behind_after_three_periods() {
    let p = Policy {
        period: Duration::from_secs(10),
        max_bytes: DEFAULT_MAX_BYTES,
    };
    let base = view().base.unwrap();
    let s = recorded("b1", Some("c-1"));
    assert_eq!(behind(&p, &s, &base, t("2026-12-07T10:00:59Z")), None);
    let why = behind(&p, &s, &base, t("2026-12-07T10:01:01Z")).unwrap();
    assert!(why.contains("61s old"), "{why}");
    // No recovery point yet: counted from the full backup.
    let none = ContinuousStatus {
        recovery_point: None,
        message: Some("no healthy member whose sidecar can follow the history".into()),
        ..s
    };
    let why = behind(&p, &none, &base, t("2026-12-07T10:00:01Z")).unwrap();
    assert!(why.contains("no healthy member"), "{why}");
}

#[test]
fn the_policy_reads_its_defaults_and_refuses_a_zero_period() {
    let p = policy(&ContinuousBackup::default()).unwrap();
    assert_eq!((p.period, p.max_bytes), (DEFAULT_PERIOD, DEFAULT_MAX_BYTES));
    let p = policy(&ContinuousBackup {
        period: Some("1m30s".into()),
        max_bytes: Some(1 << 20),
    })
    .unwrap();
    assert_eq!((p.period, p.max_bytes), (Duration::from_secs(90), 1 << 20));
    let e = policy(&ContinuousBackup {
        period: Some("0s".into()),
        max_bytes: None,
    })
    .unwrap_err();
    assert!(e.contains("spec.backup.continuous.period"), "{e}");
}

#[test]
fn closing_names_are_valid_object_names_for_long_backup_names() {
    assert_eq!(closing_name("c", "b1"), "c-chain-after-b1");
    let long = "b".repeat(250);
    let name = closing_name("c", &long);
    assert!(name.len() <= 253 && name.starts_with("c-chain-"), "{name}");
    assert_ne!(name, closing_name("c", &"b".repeat(251)));
}

#[test]
fn other_running_follows_are_ended_whatever_the_step() {
    let v = View {
        running_elsewhere: vec![candidate("c-0"), candidate("c-2")],
        ..view()
    };
    let names = |c: Vec<Candidate>| c.into_iter().map(|c| c.member).collect::<Vec<_>>();
    // Recording c-1's follow: both others end.
    assert_eq!(names(strays(&v, &next_step(&v, "c"))), ["c-0", "c-2"]);
    // Handing over to c-0 (c-1 unreachable): c-0 is kept, c-2 ends.
    let unreachable = View {
        seen: Some(Seen::Unreachable("timed out".into())),
        ..v.clone()
    };
    let step = next_step(&unreachable, "c");
    assert_eq!(follow_to(&step).0, "c-0");
    assert_eq!(names(strays(&unreachable, &step)), ["c-2"]);
    // Off: every one ends.
    let off = View { policy: None, ..v };
    assert_eq!(names(strays(&off, &next_step(&off, "c"))), ["c-0", "c-2"]);
}
