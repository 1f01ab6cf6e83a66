//! The drill's decisions, case by case.

use ouroboros_crds::{
    DrillPhase,
    sidecar::{DrillOutcome, DrillVerdict},
};

use super::drill_plan::{
    DrillJob, DrillPod, DrillStep, DrillView, Ended, MAX_ATTEMPTS, drill_step, pod_verdict,
};
use super::plan::Slot;

fn view(phase: DrillPhase) -> DrillView {
    DrillView {
        phase,
        attempts: 1,
        cannot_build: None,
        busy: None,
        defragmenting: None,
        slot: Some(Slot::Mine),
        job: None,
        overdue: false,
    }
}

fn running(pod: DrillPod) -> DrillView {
    DrillView {
        job: Some(DrillJob {
            pod: Some(pod),
            failed: None,
        }),
        ..view(DrillPhase::Running)
    }
}

fn exit(code: i32, message: &str) -> Option<Ended> {
    Some(Ended {
        exit_code: code,
        reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
        message: Some(message.into()),
    })
}

fn ok() -> Option<Ended> {
    exit(0, "")
}

fn check_says(outcome: DrillOutcome) -> DrillPod {
    let verdict = serde_json::to_string(&DrillVerdict {
        outcome,
        reason: "what the check saw".into(),
    })
    .unwrap();
    DrillPod {
        fetch: ok(),
        restore: ok(),
        check: exit(0, &verdict),
        ..Default::default()
    }
}

fn outcome(step: &DrillStep) -> Option<DrillOutcome> {
    match step {
        DrillStep::Conclude(v) => Some(v.outcome),
        DrillStep::Wait(..) | DrillStep::TakeSlot { .. } | DrillStep::Start | DrillStep::Retry(_) => None,
    }
}

#[test]
fn a_pending_drill_starts_unless_a_backup_streams() {
    assert_eq!(drill_step(&view(DrillPhase::Pending)), DrillStep::Start);
    let busy = DrillView {
        busy: Some("backup b2 of the cluster has not finished".into()),
        slot: Some(Slot::Free {
            cluster_version: "7".into(),
        }),
        ..view(DrillPhase::Pending)
    };
    assert!(matches!(drill_step(&busy), DrillStep::Wait(why, _) if why.contains("b2")));
    // Holding the slot, nothing else can start: the drill goes on.
    let holding = DrillView {
        slot: Some(Slot::Mine),
        ..busy
    };
    assert_eq!(drill_step(&holding), DrillStep::Start);
}

#[test]
fn a_drill_takes_the_slot_last_and_starts_only_holding_it() {
    let with = |slot| DrillView {
        slot: Some(slot),
        ..view(DrillPhase::Pending)
    };
    assert_eq!(
        drill_step(&with(Slot::Free {
            cluster_version: "7".into()
        })),
        DrillStep::TakeSlot {
            cluster_version: "7".into()
        }
    );
    assert_eq!(drill_step(&with(Slot::Mine)), DrillStep::Start);
    assert!(matches!(
        drill_step(&with(Slot::HeldBy("EtcdBackup b9".into()))),
        DrillStep::Wait(why, _) if why.starts_with("EtcdBackup b9 holds the cluster's backup slot")
    ));
    // A member that may be defragmenting is waited for, even holding the slot (a defragmentation
    // that started before the drill took it does not see the hold).
    for slot in [
        Slot::Mine,
        Slot::Free {
            cluster_version: "7".into(),
        },
    ] {
        let defragmenting = DrillView {
            defragmenting: Some("member m-1 is being defragmented".into()),
            ..with(slot)
        };
        assert!(
            matches!(drill_step(&defragmenting), DrillStep::Wait(why, _) if why.contains("m-1 is being defragmented"))
        );
    }
}

#[test]
fn a_drill_pod_no_node_can_run_is_retried_then_inconclusive() {
    let stuck = DrillPod {
        unschedulable: Some("0/3 nodes are available: 3 Insufficient ephemeral-storage".into()),
        ..Default::default()
    };
    assert!(
        matches!(drill_step(&running(stuck.clone())), DrillStep::Retry(why) if why.contains("ephemeral-storage"))
    );
    let last = DrillView {
        attempts: MAX_ATTEMPTS,
        ..running(stuck)
    };
    assert_eq!(outcome(&drill_step(&last)), Some(DrillOutcome::Inconclusive));
}

#[test]
fn a_drill_that_cannot_be_made_is_inconclusive_at_once() {
    let v = DrillView {
        cannot_build: Some("its EtcdCluster is gone".into()),
        ..view(DrillPhase::Pending)
    };
    assert_eq!(outcome(&drill_step(&v)), Some(DrillOutcome::Inconclusive));
}

#[test]
fn the_checks_verdict_is_the_drills() {
    let verified = drill_step(&running(check_says(DrillOutcome::Verified)));
    assert_eq!(outcome(&verified), Some(DrillOutcome::Verified));
    let failed = drill_step(&running(check_says(DrillOutcome::Failed)));
    assert_eq!(outcome(&failed), Some(DrillOutcome::Failed));
}

#[test]
fn a_damaged_archive_fails_and_an_unreachable_store_is_retried() {
    let damaged = DrillPod {
        fetch: exit(
            2,
            "sha256 mismatch: the snapshot hashes to ab, the backup recorded cd",
        ),
        ..Default::default()
    };
    let step = drill_step(&running(damaged));
    assert_eq!(outcome(&step), Some(DrillOutcome::Failed), "{step:?}");
    let unreachable = DrillPod {
        fetch: exit(1, "connection refused"),
        ..Default::default()
    };
    assert!(
        matches!(drill_step(&running(unreachable)), DrillStep::Retry(why) if why.contains("connection refused"))
    );
}

#[test]
fn etcdutl_refusing_the_snapshot_fails_but_running_out_of_memory_does_not() {
    let refused = DrillPod {
        fetch: ok(),
        restore: exit(1, "snapshot file integrity check failed"),
        ..Default::default()
    };
    assert_eq!(
        outcome(&drill_step(&running(refused))),
        Some(DrillOutcome::Failed)
    );
    let oom = DrillPod {
        fetch: ok(),
        restore: Some(Ended {
            exit_code: 137,
            reason: Some("OOMKilled".into()),
            message: None,
        }),
        ..Default::default()
    };
    assert!(matches!(drill_step(&running(oom)), DrillStep::Retry(_)));
}

#[test]
fn a_check_without_a_verdict_decides_nothing() {
    let pod = DrillPod {
        fetch: ok(),
        restore: ok(),
        check: exit(1, "panicked"),
        ..Default::default()
    };
    assert!(matches!(pod_verdict(&pod), Some(v) if v.outcome == DrillOutcome::Inconclusive));
}

#[test]
fn undecided_attempts_are_retried_then_the_drill_is_inconclusive() {
    let pod = check_says(DrillOutcome::Inconclusive);
    assert!(matches!(drill_step(&running(pod.clone())), DrillStep::Retry(_)));
    let last = DrillView {
        attempts: MAX_ATTEMPTS,
        ..running(pod)
    };
    assert_eq!(outcome(&drill_step(&last)), Some(DrillOutcome::Inconclusive));
}

#[test]
fn a_running_drill_waits_until_its_time_is_up_or_its_job_is_gone() {
    let pod = DrillPod {
        fetch: ok(),
        ..Default::default()
    };
    assert!(matches!(drill_step(&running(pod.clone())), DrillStep::Wait(..)));
    let overdue = DrillView {
        overdue: true,
        ..running(pod)
    };
    assert!(matches!(drill_step(&overdue), DrillStep::Retry(_)));
    assert!(matches!(drill_step(&view(DrillPhase::Running)), DrillStep::Retry(why) if why.contains("gone")));
    let job_failed = DrillView {
        job: Some(DrillJob {
            pod: None,
            failed: Some("DeadlineExceeded".into()),
        }),
        ..view(DrillPhase::Running)
    };
    assert!(matches!(drill_step(&job_failed), DrillStep::Retry(_)));
}

#[test]
fn retention_keeps_the_newest_verified_backup_of_the_cluster() {
    let backup = |name: &str, cluster: &str, revision: i64, verified: Option<bool>| {
        let mut b: ouroboros_crds::EtcdBackup = serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdBackup",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"clusterName": cluster},
        }))
        .unwrap();
        b.status = Some(ouroboros_crds::EtcdBackupStatus {
            revision: Some(revision),
            verified,
            ..Default::default()
        });
        b
    };
    let all = [
        backup("old", "main", 10, Some(true)),
        backup("proven", "main", 20, Some(true)),
        backup("damaged", "main", 30, Some(false)),
        backup("undrilled", "main", 40, None),
        backup("elsewhere", "other", 50, Some(true)),
    ];
    assert_eq!(
        super::retention::newest_verified("main", &all).as_deref(),
        Some("proven")
    );
    assert_eq!(super::retention::newest_verified("none", &all), None);
}
