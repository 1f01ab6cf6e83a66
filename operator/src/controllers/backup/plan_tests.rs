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
        client_tls_secret: None,
        ip: "10.0.0.9".into(),
        ports: Ports::POD_NETWORK,
        claims: claims.iter().map(|c| c.to_string()).collect(),
        sidecar_identity: "main.ns.sidecar.etcd.ouroboros.dev".into(),
        sidecar_serves_tls: tls,
        runs_as_root: false,
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
            // A claim the user named, which members mount.
            by_writer: false,
        }),
        encryption: Ok(None),
        slot: Slot::Mine,
        running_other: None,
        member: Some(("main-1".into(), Some(pod(true, &["main-1-data", "main-backups"])))),
        writer: None,
        db_size: 3 << 30,
        compression_level: 1,
        codec: Default::default(),
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
        writer: None,
    })
}

#[test]
fn a_running_backup_ends_as_its_sidecar_says_and_never_past_its_deadline() {
    assert_eq!(
        polled(Some(Ok(running())), false, None),
        PollStep::Wait {
            secs: 2,
            progress: Some((10, Some(100)))
        }
    );
    match polled(Some(Ok(running())), true, None) {
        PollStep::Fail(why) => assert!(why.contains("deadline 2026-12-01T12:00:00Z"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        polled(Some(Ok(running())), false, Some("its EtcdCluster was deleted")),
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
    assert_eq!(
        polled(unreachable(), false, None),
        PollStep::Wait {
            secs: 5,
            progress: None
        }
    );
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
    let now = jiff::Timestamp::now();
    let me = SlotUser::Backup("b");
    let free = |v: &str| Slot::Free {
        cluster_version: v.into(),
    };
    assert_eq!(slot_of(&with_slot(None, "7"), me, &[], now), free("7"));
    assert_eq!(slot_of(&with_slot(Some("b"), "7"), me, &[], now), Slot::Mine);
    let others = [
        backup("a", Some(Running)),
        backup("p", Some(Pending)),
        backup("done", Some(Succeeded)),
    ];
    assert_eq!(
        slot_of(&with_slot(Some("a"), "7"), me, &others, now),
        Slot::HeldBy("EtcdBackup a".into())
    );
    assert_eq!(
        slot_of(&with_slot(Some("p"), "7"), me, &others, now),
        Slot::HeldBy("EtcdBackup p".into())
    );
    // Finished, or deleted: free again, at the version it was read at.
    assert_eq!(
        slot_of(&with_slot(Some("done"), "8"), me, &others, now),
        free("8")
    );
    assert_eq!(
        slot_of(&with_slot(Some("deleted"), "9"), me, &others, now),
        free("9")
    );
}

fn drilled(name: &str, drill: ouroboros_crds::DrillPhase) -> ouroboros_crds::EtcdBackup {
    let mut b = backup(name, Some(ouroboros_crds::BackupPhase::Succeeded));
    b.status.as_mut().unwrap().drill = Some(drill);
    b
}

#[test]
fn a_drill_holds_the_slot_while_it_runs_and_a_backup_waits_for_it() {
    use ouroboros_crds::DrillPhase::{Pending, Running, Verified};
    let now = jiff::Timestamp::now();
    let minute_ago = now - jiff::SignedDuration::from_secs(61);
    let held = |drill, taken| {
        let cluster = with_slot(Some(&drill_holder("d", taken)), "7");
        let backups = [drilled("d", drill)];
        (
            slot_of(&cluster, SlotUser::Backup("b"), &backups, now),
            slot_of(&cluster, SlotUser::Drill("d"), &backups, now),
            slot_of(&cluster, SlotUser::Drill("e"), &backups, now),
        )
    };
    let by_d = Slot::HeldBy("the restore drill of EtcdBackup d".into());
    let free = Slot::Free {
        cluster_version: "7".into(),
    };
    // Running: held, whenever it was taken.
    assert_eq!(
        held(Running, minute_ago),
        (by_d.clone(), Slot::Mine, by_d.clone())
    );
    // Taken just now, the Job about to be made: held.
    assert_eq!(held(Pending, now), (by_d.clone(), Slot::Mine, by_d.clone()));
    // Taken long ago by an attempt that never started, or a drill that has ended: free (a drill
    // asked for again later takes it anew, so it never waits on its own old hold).
    assert_eq!(
        held(Pending, minute_ago),
        (free.clone(), free.clone(), free.clone())
    );
    assert_eq!(held(Verified, now), (free.clone(), free.clone(), free));
    // The backup waits, naming the drill.
    let waiting = StartView { slot: by_d, ..view() };
    assert!(
        matches!(start_step(waiting), StartStep::Wait(why, _) if why == "waiting for the restore drill of EtcdBackup d of the same cluster to finish")
    );
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
            slot: Slot::HeldBy("EtcdBackup a".into()),
            ..view()
        }),
        StartStep::Wait(why, _) if why.contains("EtcdBackup a")
    ));
    assert!(matches!(start_step(view()), StartStep::Start { .. }));
}

/// A backup to the default claim `main-backups`, from member `main-1` whose pod does not mount it
/// (made after members stopped mounting it), holding the slot.
fn writer_view(writer: Option<WriterPod>) -> StartView {
    StartView {
        destination: Ok(Resolved {
            destination: JobDestination::Dir {
                path: "/backups/main-backups/ns/main".into(),
            },
            claim: Some("main-backups".into()),
            by_writer: true,
        }),
        member: Some(("main-1".into(), Some(pod(true, &["main-1-data"])))),
        writer,
        ..view()
    }
}

fn writer(ip: Option<&str>, age_secs: u64) -> WriterPod {
    WriterPod {
        member: "main-1".into(),
        ip: ip.map(Into::into),
        age: Duration::from_secs(age_secs),
        unscheduled: None,
        gone: false,
    }
}

#[test]
fn the_default_claim_needs_a_writer_only_when_the_member_does_not_mount_it() {
    // A member pod made before the change still mounts it: its own sidecar writes, as before.
    let old_member = StartView {
        member: Some(("main-1".into(), Some(pod(true, &["main-1-data", "main-backups"])))),
        ..writer_view(None)
    };
    assert!(matches!(
        start_step(old_member),
        StartStep::Start { writer: None, ref pod, .. } if pod.ip == "10.0.0.9"
    ));
    // A member pod without it: a writer, not the "does not mount" failure of a user-named claim.
    assert!(matches!(
        start_step(writer_view(None)),
        StartStep::CreateWriter { .. }
    ));
    // An s3 destination never needs one.
    let s3 = StartView {
        destination: Ok(Resolved {
            destination: JobDestination::S3 {
                bucket: "b".into(),
                prefix: "ns/main/".into(),
                endpoint: None,
                region: "us-east-1".into(),
                force_path_style: false,
                credentials: None,
            },
            claim: None,
            by_writer: false,
        }),
        ..writer_view(None)
    };
    assert!(matches!(start_step(s3), StartStep::Start { writer: None, .. }));
}

#[test]
fn of_the_healthy_members_one_that_still_mounts_the_default_claim_is_preferred() {
    let candidates = || {
        vec![
            ("main-1".to_owned(), Some(pod(true, &["main-1-data"]))),
            ("main-2".to_owned(), None),
            (
                "main-0".to_owned(),
                Some(pod(true, &["main-0-data", "main-backups"])),
            ),
        ]
    };
    assert_eq!(
        prefer_mounting(candidates(), "main-backups")
            .map(|(m, _)| m)
            .as_deref(),
        Some("main-0")
    );
    // None mounts it: the best candidate, through a writer.
    assert_eq!(
        prefer_mounting(candidates(), "other").map(|(m, _)| m).as_deref(),
        Some("main-1")
    );
    assert_eq!(prefer_mounting(Vec::new(), "main-backups"), None);
}

#[test]
fn a_writer_is_created_after_the_slot_is_taken_and_outlives_the_deadline() {
    // The slot first: a writer is never made for a backup that may still lose it.
    assert!(matches!(
        start_step(StartView {
            slot: Slot::Free {
                cluster_version: "7".into()
            },
            ..writer_view(None)
        }),
        StartStep::TakeSlot { .. }
    ));
    match start_step(writer_view(None)) {
        StartStep::CreateWriter {
            member,
            pod,
            active_deadline,
        } => {
            assert_eq!(member, "main-1");
            // It dials the member's pod.
            assert_eq!(pod.ip, "10.0.0.9");
            assert_eq!(
                active_deadline,
                backup_timeout(3 << 30) + WRITER_START_TIMEOUT + WRITER_DEADLINE_MARGIN
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_writer_without_an_ip_is_waited_for_then_fails_the_backup_quoting_the_scheduler() {
    let unschedulable = "0/3 nodes are available: 2 node(s) had volume node affinity conflict.";
    let pending = |age| WriterPod {
        unscheduled: Some(unschedulable.into()),
        ..writer(None, age)
    };
    match start_step(writer_view(Some(pending(30)))) {
        StartStep::Wait(why, _) => {
            assert!(
                why.contains("writer pod b-writer") && why.contains(unschedulable),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    match start_step(writer_view(Some(pending(WRITER_START_TIMEOUT.as_secs())))) {
        StartStep::Fail(why) => {
            assert!(why.contains("b-writer has no IP 300s"), "{why}");
            assert!(why.contains(unschedulable), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_job_goes_to_a_running_writer() {
    match start_step(writer_view(Some(writer(Some("10.0.7.7"), 20)))) {
        StartStep::Start {
            member,
            pod,
            writer,
            job,
            ..
        } => {
            // Backed up from the member, through the writer's sidecar with the cluster's identity.
            assert_eq!((member.as_str(), job.member.as_str()), ("main-1", "main-1"));
            assert_eq!(writer.as_deref(), Some("b-writer"));
            assert_eq!(pod.ip, "10.0.7.7");
            assert_eq!(pod.ports, Ports::POD_NETWORK);
            assert_eq!(pod.sidecar_identity, "main.ns.sidecar.etcd.ouroboros.dev");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_ended_writer_or_one_for_another_member_is_replaced() {
    let ended = WriterPod {
        gone: true,
        ..writer(Some("10.0.7.7"), 20)
    };
    assert!(matches!(
        start_step(writer_view(Some(ended))),
        StartStep::DeleteWriter(why) if why.contains("ended")
    ));
    let elsewhere = WriterPod {
        member: "main-0".into(),
        ..writer(Some("10.0.7.7"), 20)
    };
    assert!(matches!(
        start_step(writer_view(Some(elsewhere))),
        StartStep::DeleteWriter(why) if why.contains("main-0, not main-1")
    ));
}

#[test]
fn a_writer_gone_mid_backup_fails_it() {
    let step = poll_step(PollView {
        member: "main-1".into(),
        writer: Some("b-writer".into()),
        overdue: false,
        deadline: None,
        gone: None,
        state: None,
    });
    match step {
        PollStep::Fail(why) => assert!(why.contains("writer pod b-writer went away"), "{why}"),
        other => panic!("{other:?}"),
    }
}

fn running() -> JobState {
    JobState::Running {
        bytes_streamed: Some(10),
        total_bytes: Some(100),
    }
}

#[test]
fn progress_is_recorded_at_most_every_ten_seconds_and_only_when_it_moved() {
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let first = progress_due(None, 512 << 20, Some(1 << 30), at("2026-12-06T10:00:00Z")).unwrap();
    assert_eq!(first.summary, "512.0MiB of 1.0GiB (50%)");
    assert_eq!(first.update_time, "2026-12-06T10:00:00Z");
    // Within ten seconds nothing is written, whatever moved.
    assert_eq!(
        progress_due(Some(&first), 600 << 20, Some(1 << 30), at("2026-12-06T10:00:09Z")),
        None
    );
    // After them, a change is written; no change is not.
    let later = progress_due(Some(&first), 600 << 20, Some(1 << 30), at("2026-12-06T10:00:10Z")).unwrap();
    assert_eq!(later.bytes_streamed, 600 << 20);
    assert_eq!(
        progress_due(Some(&later), 600 << 20, Some(1 << 30), at("2026-12-06T10:01:00Z")),
        None
    );
    // Before etcd announced its size, the bytes alone.
    let early = progress_due(None, 0, None, at("2026-12-06T10:00:00Z")).unwrap();
    assert_eq!(early.summary, "0B streamed");
}
