#![allow(clippy::unwrap_used)]

use super::*;
use ouroboros_crds::RetentionPolicy;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn policy(schedule: &str) -> BackupPolicy {
    BackupPolicy {
        schedule: schedule.into(),
        destination: None,
        retention: None,
        compression_level: 1,
        compression: None,
        resources: None,
        encryption: None,
        drills: None,
        continuous: None,
    }
}

fn backup(
    name: &str,
    scheduled: bool,
    phase: Option<BackupPhase>,
    created: &str,
    completed: Option<&str>,
) -> BackupSummary {
    BackupSummary {
        name: name.into(),
        scheduled,
        phase,
        created: t(created),
        completed: completed.map(t),
        reason: (phase == Some(BackupPhase::Failed)).then(|| "S3 put: NoSuchBucket".to_owned()),
        drill: None,
        revision: 0,
        verification: None,
    }
}

fn scheduled(action: Action) -> (Option<Due>, Option<String>, Option<Timestamp>, Timestamp, Health) {
    match action {
        Action::Scheduled {
            due,
            skipped_for,
            last_slot,
            next,
            health,
        } => (due, skipped_for, last_slot, next, health),
        other => panic!("expected a running schedule, got {other:?}"),
    }
}

#[test]
fn no_policy_means_nothing_scheduled_and_no_condition() {
    assert_eq!(
        plan(
            "main",
            None,
            t("2026-11-21T00:00:00Z"),
            false,
            &[],
            t("2026-11-21T10:00:00Z")
        ),
        Action::Off
    );
}

#[test]
fn a_bad_schedule_is_named_in_the_condition() {
    let action = plan(
        "main",
        Some(&policy("61 * * * *")),
        t("2026-11-21T00:00:00Z"),
        false,
        &[],
        t("2026-11-21T10:00:00Z"),
    );
    let Action::Invalid(h) = action else {
        panic!("{action:?}")
    };
    assert_eq!((h.status, h.reason), (Truth::False, "InvalidSchedule"));
    assert!(h.message.contains("\"61 * * * *\""), "{}", h.message);
}

#[test]
fn a_bad_retention_is_named_in_the_condition() {
    let mut p = policy("0 * * * *");
    p.retention = Some(RetentionPolicy {
        max_count: Some(0),
        max_age: None,
    });
    let Action::Invalid(h) = plan(
        "main",
        Some(&p),
        t("2026-11-21T00:00:00Z"),
        false,
        &[],
        t("2026-11-21T10:00:00Z"),
    ) else {
        panic!()
    };
    assert_eq!(h.reason, "InvalidRetention");
    assert!(h.message.contains("maxCount"), "{}", h.message);
}

#[test]
fn nothing_is_due_before_the_first_slot() {
    let (due, skipped, last, next, health) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T07:00:00Z"),
        false,
        &[],
        t("2026-11-21T08:00:00Z"),
    ));
    assert_eq!((due, skipped, last), (None, None, None));
    assert_eq!(next, t("2026-11-21T12:00:00Z"));
    assert_eq!(
        (health.status, health.reason),
        (Truth::Unknown, "AwaitingFirstBackup")
    );
}

#[test]
fn a_passed_slot_creates_one_backup_named_after_it() {
    let (due, _, last, next, _) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T07:00:00Z"),
        true,
        &[],
        t("2026-11-21T12:00:05Z"),
    ));
    let due = due.unwrap();
    assert_eq!(due.name, "main-20261121-1200");
    assert_eq!((due.slot, due.missed), (t("2026-11-21T12:00:00Z"), 0));
    assert_eq!(last, Some(t("2026-11-21T12:00:00Z")));
    assert_eq!(next, t("2026-11-21T18:00:00Z"));
}

#[test]
fn missed_slots_get_one_catch_up_backup_for_the_newest() {
    // Recorded slot 06:00; the operator was down until 20:30: 12:00 and 18:00 passed.
    let (due, ..) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[],
        t("2026-11-21T20:30:00Z"),
    ));
    let due = due.unwrap();
    assert_eq!((due.name.as_str(), due.missed), ("main-20261121-1800", 1));
}

#[test]
fn a_slot_is_skipped_while_the_previous_scheduled_backup_runs() {
    let running = backup(
        "main-20261121-0600",
        true,
        Some(BackupPhase::Running),
        "2026-11-21T06:00:00Z",
        None,
    );
    let (due, skipped, last, ..) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[running],
        t("2026-11-21T12:00:01Z"),
    ));
    assert_eq!(due, None);
    assert_eq!(skipped.as_deref(), Some("main-20261121-0600"));
    assert_eq!(
        last,
        Some(t("2026-11-21T12:00:00Z")),
        "the skipped slot is recorded, not retried"
    );
}

#[test]
fn an_on_demand_backup_in_flight_does_not_block_the_schedule() {
    let on_demand = backup(
        "manual",
        false,
        Some(BackupPhase::Running),
        "2026-11-21T11:59:00Z",
        None,
    );
    let (due, ..) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[on_demand],
        t("2026-11-21T12:00:01Z"),
    ));
    assert!(due.is_some());
}

#[test]
fn health_is_true_while_backups_are_recent() {
    let ok = backup(
        "main-1",
        true,
        Some(BackupPhase::Succeeded),
        "2026-11-21T06:00:00Z",
        Some("2026-11-21T06:00:20Z"),
    );
    let (.., health) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[ok],
        t("2026-11-21T11:00:00Z"),
    ));
    assert_eq!((health.status, health.reason), (Truth::True, "BackupsSucceeding"));
    assert!(health.message.contains("main-1"));
}

#[test]
fn health_is_false_when_the_last_scheduled_backup_failed() {
    let ok = backup(
        "main-1",
        true,
        Some(BackupPhase::Succeeded),
        "2026-11-21T00:00:00Z",
        Some("2026-11-21T00:00:20Z"),
    );
    let failed = backup(
        "main-2",
        true,
        Some(BackupPhase::Failed),
        "2026-11-21T06:00:00Z",
        Some("2026-11-21T06:00:05Z"),
    );
    let (.., health) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[ok, failed],
        t("2026-11-21T07:00:00Z"),
    ));
    assert_eq!((health.status, health.reason), (Truth::False, "BackupFailed"));
    assert!(
        health.message.contains("main-2") && health.message.contains("NoSuchBucket"),
        "{}",
        health.message
    );
}

#[test]
fn a_failed_on_demand_backup_does_not_make_scheduled_backups_unhealthy() {
    let ok = backup(
        "main-1",
        true,
        Some(BackupPhase::Succeeded),
        "2026-11-21T06:00:00Z",
        Some("2026-11-21T06:00:20Z"),
    );
    let failed = backup(
        "manual",
        false,
        Some(BackupPhase::Failed),
        "2026-11-21T07:00:00Z",
        Some("2026-11-21T07:00:05Z"),
    );
    let (.., health) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[ok, failed],
        t("2026-11-21T08:00:00Z"),
    ));
    assert_eq!(health.status, Truth::True);
}

#[test]
fn health_is_false_when_the_newest_success_is_older_than_two_intervals() {
    let ok = backup(
        "main-1",
        true,
        Some(BackupPhase::Succeeded),
        "2026-11-20T00:00:00Z",
        Some("2026-11-20T00:00:20Z"),
    );
    let (.., health) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[ok],
        t("2026-11-21T07:00:00Z"),
    ));
    assert_eq!((health.status, health.reason), (Truth::False, "BackupStale"));
    assert!(health.message.contains("6h"), "{}", health.message);
}

#[test]
fn health_is_false_when_nothing_ever_succeeded_long_after_creation() {
    let (.., health) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[backup(
            "main-1",
            true,
            Some(BackupPhase::Failed),
            "2026-11-21T06:00:00Z",
            None,
        )],
        t("2026-11-21T23:00:00Z"),
    ));
    assert_eq!(health.status, Truth::False);
}

#[test]
fn a_policy_added_to_an_old_cluster_backs_up_at_once_without_alarm() {
    let (due, .., health) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-01-01T00:00:00Z"),
        false,
        &[],
        t("2026-11-21T07:00:00Z"),
    ));
    assert_eq!(
        due.unwrap().missed,
        0,
        "nothing was missed: there was no schedule"
    );
    assert_eq!(health.status, Truth::Unknown);
}

#[test]
fn the_slots_own_backup_is_not_a_reason_to_skip_it() {
    // The cluster read may predate the status write that recorded the slot.
    let own = backup(
        "main-20261121-1200",
        true,
        Some(BackupPhase::Running),
        "2026-11-21T12:00:00Z",
        None,
    );
    let (due, skipped, last, ..) = scheduled(plan(
        "main",
        Some(&policy("0 */6 * * *")),
        t("2026-11-21T06:00:00Z"),
        true,
        &[own],
        t("2026-11-21T12:00:01Z"),
    ));
    assert_eq!((due, skipped), (None, None));
    assert_eq!(last, Some(t("2026-11-21T12:00:00Z")));
}

#[test]
fn steps_beyond_a_fields_range_are_refused_naming_the_field() {
    let e = parse_schedule("*/61 * * * *").unwrap_err();
    assert!(
        e.contains("spec.backup.schedule") && e.contains("minute step \"61\""),
        "{e}"
    );
    assert!(parse_schedule("0 */25 * * *").unwrap_err().contains("hour step"));
    assert!(parse_schedule("*/0 * * * *").is_err());
    assert!(parse_schedule("*/15 * * * *").is_ok());
    assert!(parse_schedule("0 0 */2 * 1-5").is_ok());
}

fn drilled(name: &str, revision: i64, drill: DrillPhase) -> BackupSummary {
    BackupSummary {
        drill: Some(drill),
        revision,
        verification: Some(format!("what the drill of {name} found")),
        ..backup(
            name,
            true,
            Some(BackupPhase::Succeeded),
            "2026-11-20T00:00:00Z",
            Some("2026-11-20T00:01:00Z"),
        )
    }
}

#[test]
fn backups_verified_speaks_of_the_newest_backup_a_drill_judged() {
    assert_eq!(verification(&[]), None, "no drill, no condition");
    let pending = [drilled("b1", 10, DrillPhase::Pending)];
    assert_eq!(verification(&pending).unwrap().status, Truth::Unknown);
    let good = [
        drilled("b1", 10, DrillPhase::Verified),
        // Undecided drills say nothing either way.
        drilled("b2", 20, DrillPhase::Inconclusive),
        drilled("b3", 30, DrillPhase::Running),
    ];
    let h = verification(&good).unwrap();
    assert_eq!((h.status, h.reason), (Truth::True, "Verified"));
    assert!(h.message.contains("b1"), "{}", h.message);
    let bad = [
        drilled("b1", 10, DrillPhase::Verified),
        drilled("b2", 20, DrillPhase::Failed),
    ];
    let h = verification(&bad).unwrap();
    assert_eq!((h.status, h.reason), (Truth::False, "DrillFailed"));
    assert!(
        h.message.contains("b2") && h.message.contains("use b1"),
        "{}",
        h.message
    );
}
