//! Tests of the backup plan, case by case.

use ouroboros_crds::sidecar::Manifest;

use super::*;

#[test]
fn the_deadline_grows_with_the_database() {
    assert_eq!(backup_timeout(0), Duration::from_secs(600));
    assert_eq!(backup_timeout(1), Duration::from_secs(900));
    assert_eq!(backup_timeout(1 << 30), Duration::from_secs(900));
    assert_eq!(backup_timeout((8 << 30) + 1), Duration::from_secs(600 + 9 * 300));
}

fn cluster(uid: &str, deleting: bool) -> EtcdCluster {
    let mut c: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "main", "namespace": "ns", "uid": uid},
        "spec": {"size": 1},
    }))
    .unwrap();
    if deleting {
        c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
    }
    c
}

#[test]
fn a_backup_whose_cluster_is_gone_fails_instead_of_waiting() {
    let live = cluster("u1", false);
    // Its own cluster, still there: go on.
    assert_eq!(cluster_gone(Some("u1"), Some(&live)), None);
    // Not yet seen (first pass): the cluster it finds becomes its own.
    assert_eq!(cluster_gone(None, Some(&live)), None);
    // Never seen and absent: the bounded wait for a late cluster decides, not this.
    assert_eq!(cluster_gone(None, None), None);
    // Seen, then deleted.
    assert!(cluster_gone(Some("u1"), None).unwrap().contains("deleted"));
    // Being deleted, whether seen or not.
    for recorded in [Some("u1"), None] {
        let why = cluster_gone(recorded, Some(&cluster("u1", true))).unwrap();
        assert!(why.contains("being deleted"), "{why}");
    }
    // Deleted and created again under the same name: not this backup's cluster any more.
    let why = cluster_gone(Some("u1"), Some(&cluster("u2", false))).unwrap();
    assert!(why.contains("created again") && why.contains("u1"), "{why}");
}

fn pod(tls: bool, claims: &[&str]) -> MemberPod {
    MemberPod {
        ip: "10.0.0.9".into(),
        ports: Ports::POD_NETWORK,
        claims: claims.iter().map(|c| c.to_string()).collect(),
        sidecar_identity: "main.ns.sidecar.etcd.ouroboros.dev".into(),
        sidecar_serves_tls: tls,
    }
}

fn view() -> StartView {
    StartView {
        backup: ("b-uid".into(), "b".into()),
        cluster: ("main".into(), Some("u1".into())),
        destination: Ok(Resolved {
            destination: JobDestination::Dir {
                path: "/backups/main-backups/ns/main".into(),
            },
            claim: Some("main-backups".into()),
        }),
        encryption: Ok(None),
        slot: Slot::Mine,
        running_other: None,
        member: Some(("main-1".into(), Some(pod(true, &["main-1-data", "main-backups"])))),
        db_size: 3 << 30,
        compression_level: 1,
    }
}

#[test]
fn a_backup_starts_only_when_everything_it_needs_checks_out() {
    match start_step(view()) {
        StartStep::Start {
            member, job, timeout, ..
        } => {
            assert_eq!(member, "main-1");
            assert_eq!((job.id.as_str(), job.member.as_str()), ("b-uid", "main-1"));
            assert_eq!(job.cluster_uid.as_deref(), Some("u1"));
            // The deadline follows the database size the member reported.
            assert_eq!(timeout, backup_timeout(3 << 30));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn what_cannot_change_by_waiting_fails_and_what_can_waits() {
    let fails = |v: StartView, needle: &str| match start_step(v) {
        StartStep::Fail(why) => assert!(why.contains(needle), "{why}"),
        other => panic!("{needle}: {other:?}"),
    };
    let waits = |v: StartView, needle: &str| match start_step(v) {
        StartStep::Wait(why, _) => assert!(why.contains(needle), "{why}"),
        other => panic!("{needle}: {other:?}"),
    };
    fails(
        StartView {
            destination: Err("no destination: set spec.destination".into()),
            ..view()
        },
        "no destination",
    );
    fails(
        StartView {
            encryption: Err("Secret ns/k has no recipient".into()),
            ..view()
        },
        "recipient",
    );
    fails(
        StartView {
            member: Some(("main-1".into(), Some(pod(true, &["main-1-data"])))),
            ..view()
        },
        "does not mount the backup claim main-backups",
    );
    fails(
        StartView {
            member: Some(("main-1".into(), Some(pod(false, &["main-backups"])))),
            ..view()
        },
        "before mutual TLS",
    );
    waits(
        StartView {
            running_other: Some("other".into()),
            ..view()
        },
        "EtcdBackup other",
    );
    waits(
        StartView {
            member: None,
            ..view()
        },
        "no healthy member",
    );
    waits(
        StartView {
            member: Some(("main-1".into(), None)),
            ..view()
        },
        "no pod IP",
    );
}

#[test]
fn a_missing_cluster_is_waited_for_a_bounded_time() {
    assert!(matches!(
        absent_cluster_step("ns", "main", Some(jiff::SignedDuration::from_secs(5))),
        StartStep::Wait(..)
    ));
    match absent_cluster_step("ns", "main", Some(MISSING_CLUSTER_WAIT)) {
        StartStep::Fail(why) => assert!(why.contains("spec.clusterName"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_member_is_a_healthy_follower_when_there_is_one() {
    let mut c = cluster("u1", false);
    let member = |name: &str, healthy: bool, leader: bool, learner: bool| {
        serde_json::from_value::<ouroboros_crds::MemberStatus>(serde_json::json!({
            "name": name, "id": "1", "healthy": healthy, "isLeader": leader, "isLearner": learner,
        }))
        .unwrap()
    };
    c.status = Some(ouroboros_crds::EtcdClusterStatus {
        members: vec![
            member("main-0", true, true, false),
            member("main-1", false, false, false),
            member("main-2", true, false, true),
            member("main-3", true, false, false),
        ],
        ..Default::default()
    });
    assert_eq!(choose_member(&c).as_deref(), Some("main-3"));
    c.status.as_mut().unwrap().members.truncate(3);
    assert_eq!(choose_member(&c).as_deref(), Some("main-0"));
    c.status.as_mut().unwrap().members.truncate(0);
    assert_eq!(choose_member(&c), None);
}

fn addr() -> SidecarAddr {
    SidecarAddr {
        addr: "10.0.0.9:8090".into(),
        identity: "main.ns.sidecar.etcd.ouroboros.dev".into(),
    }
}

fn polled(state: Option<Result<JobState, SidecarError>>, overdue: bool, gone: Option<&str>) -> PollStep {
    poll_step(PollView {
        member: "main-1".into(),
        overdue,
        deadline: Some("2026-12-01T12:00:00Z".into()),
        gone: gone.map(Into::into),
        state: state.map(|s| (addr(), s)),
    })
}

#[test]
fn a_running_backup_ends_as_its_sidecar_says_and_never_past_its_deadline() {
    assert_eq!(
        polled(Some(Ok(JobState::Running)), false, None),
        PollStep::Wait(2)
    );
    match polled(Some(Ok(JobState::Running)), true, None) {
        PollStep::Fail(why) => assert!(why.contains("deadline 2026-12-01T12:00:00Z"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        polled(
            Some(Ok(JobState::Running)),
            false,
            Some("its EtcdCluster was deleted")
        ),
        PollStep::Abort(addr(), "its EtcdCluster was deleted".into())
    );
    match polled(None, false, None) {
        PollStep::Fail(why) => assert!(why.contains("member pod main-1 went away"), "{why}"),
        other => panic!("{other:?}"),
    }
    match polled(Some(Err(SidecarError::UnknownJob("a".into()))), false, None) {
        PollStep::Fail(why) => assert!(why.contains("restarted"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A sidecar that does not answer for a moment is waited for, until the deadline.
    let unreachable = || Some(Err(SidecarError::Unreachable("a".into(), "refused".into())));
    assert_eq!(polled(unreachable(), false, None), PollStep::Wait(5));
    assert!(matches!(polled(unreachable(), true, None), PollStep::Fail(_)));
    let done = JobState::Succeeded {
        manifest: Box::new(Manifest::default()),
        location: "s3://b/x.tar.gz".into(),
    };
    assert!(matches!(
        polled(Some(Ok(done)), true, None),
        PollStep::Succeed { location, .. } if location == "s3://b/x.tar.gz"
    ));
}

fn with_slot(annotation: Option<&str>, version: &str) -> EtcdCluster {
    let mut c = cluster("u1", false);
    c.metadata.resource_version = Some(version.into());
    if let Some(holder) = annotation {
        c.metadata.annotations = Some(
            [(
                crate::vocabulary::ANNOTATION_BACKUP_SLOT.to_owned(),
                holder.to_owned(),
            )]
            .into(),
        );
    }
    c
}

fn backup(name: &str, phase: Option<ouroboros_crds::BackupPhase>) -> ouroboros_crds::EtcdBackup {
    let mut b: ouroboros_crds::EtcdBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": name, "namespace": "ns"}, "spec": {"clusterName": "main"},
    }))
    .unwrap();
    b.status = phase.map(|p| ouroboros_crds::EtcdBackupStatus {
        phase: Some(p),
        ..Default::default()
    });
    b
}

#[test]
fn the_slot_is_held_only_by_a_backup_that_has_not_finished() {
    use ouroboros_crds::BackupPhase::{Pending, Running, Succeeded};
    let free = |v: &str| Slot::Free {
        cluster_version: v.into(),
    };
    assert_eq!(slot_of(&with_slot(None, "7"), "b", &[]), free("7"));
    assert_eq!(slot_of(&with_slot(Some("b"), "7"), "b", &[]), Slot::Mine);
    let others = [
        backup("a", Some(Running)),
        backup("p", Some(Pending)),
        backup("done", Some(Succeeded)),
    ];
    assert_eq!(
        slot_of(&with_slot(Some("a"), "7"), "b", &others),
        Slot::HeldBy("a".into())
    );
    assert_eq!(
        slot_of(&with_slot(Some("p"), "7"), "b", &others),
        Slot::HeldBy("p".into())
    );
    // Finished, or deleted: free again, at the version it was read at.
    assert_eq!(slot_of(&with_slot(Some("done"), "8"), "b", &others), free("8"));
    assert_eq!(slot_of(&with_slot(Some("deleted"), "9"), "b", &others), free("9"));
}

#[test]
fn a_backup_takes_the_slot_last_and_starts_only_holding_it() {
    let v = || StartView {
        slot: Slot::Free {
            cluster_version: "7".into(),
        },
        ..view()
    };
    assert_eq!(
        start_step(v()),
        StartStep::TakeSlot {
            cluster_version: "7".into()
        }
    );
    // Anything else in the way comes first: a backup never holds the slot while waiting for it.
    assert!(matches!(
        start_step(StartView { member: None, ..v() }),
        StartStep::Wait(..)
    ));
    assert!(matches!(
        start_step(StartView {
            slot: Slot::HeldBy("a".into()),
            ..view()
        }),
        StartStep::Wait(why, _) if why.contains("EtcdBackup a")
    ));
    assert!(matches!(start_step(view()), StartStep::Start { .. }));
}
