//! Restore tests: the seed pod and the fetch outcome.

#![allow(clippy::unwrap_used)]
use super::{
    objects::{FetchCopy, fetch_job, restored_member_pod},
    *,
};
use crate::{
    backup_source::{
        Lineage, Proof, check_base, choose, choose_latest, point_target, recorded_choice,
        restore_awaits_drill,
    },
    vocabulary::Images,
};
use ouroboros_crds::BackupPhase;

fn restore(source: serde_json::Value) -> EtcdRestore {
    serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdRestore",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {"clusterName": "main", "source": source},
    }))
    .unwrap()
}

fn backup(name: &str, cluster: &str, phase: BackupPhase, revision: i64, completed: &str) -> EtcdBackup {
    let mut b: EtcdBackup = serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdBackup",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"clusterName": cluster},
    }))
    .unwrap();
    b.status = Some(ouroboros_crds::EtcdBackupStatus {
        phase: Some(phase),
        location: (phase == BackupPhase::Succeeded).then(|| format!("s3://b/{name}.tar.gz")),
        sha256: Some("ab".repeat(32)),
        revision: Some(revision),
        completion_time: Some(completed.into()),
        cluster_uid: Some("u1".into()),
        // Drilled and verified, unless a test says otherwise.
        drill: Some(ouroboros_crds::DrillPhase::Verified),
        verified: Some(true),
        ..Default::default()
    });
    b
}

/// The lineage of the cluster every `all()` backup came from.
fn mine() -> Lineage {
    Lineage::Uids(vec!["u1".into()])
}

fn all() -> Vec<EtcdBackup> {
    vec![
        backup("old", "main", BackupPhase::Succeeded, 100, "2026-11-20T00:00:00Z"),
        backup(
            "newer",
            "main",
            BackupPhase::Succeeded,
            500,
            "2026-11-21T00:00:00Z",
        ),
        backup("failed", "main", BackupPhase::Failed, 900, "2026-11-21T06:00:00Z"),
        backup(
            "other",
            "elsewhere",
            BackupPhase::Succeeded,
            9000,
            "2026-11-21T07:00:00Z",
        ),
    ]
}

fn fetch_pod(state: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "r-fetch-x"},
        "status": {"containerStatuses": [{"name": "fetch", "image": "i", "imageID": "", "ready": false,
                                          "restartCount": 0, "state": state}]}
    }))
    .unwrap()
}

#[test]
fn the_fetch_containers_exit_decides_before_the_job_status_catches_up() {
    use k8s_openapi::api::batch::v1::JobStatus;
    let idle = JobStatus::default();
    let running = fetch_pod(json!({"running": {}}));
    assert_eq!(fetch_outcome(&idle, &[]), FetchOutcome::Running);
    assert_eq!(fetch_outcome(&idle, &[running]), FetchOutcome::Running);
    let ok = fetch_pod(json!({"terminated": {"exitCode": 0, "message": " {\"revision\": 7}\n"}}));
    assert_eq!(
        fetch_outcome(&idle, &[ok]),
        FetchOutcome::Verified(Some(r#"{"revision": 7}"#.into()))
    );
    let refused = fetch_pod(json!({"terminated": {"exitCode": 1, "message": "sha256 mismatch"}}));
    assert_eq!(
        fetch_outcome(&idle, &[refused]),
        FetchOutcome::Refused(Some("sha256 mismatch".into()))
    );
    // A crash leaves no message; the exit code still refuses.
    let crashed = fetch_pod(json!({"terminated": {"exitCode": 137, "message": "  "}}));
    assert_eq!(fetch_outcome(&idle, &[crashed]), FetchOutcome::Refused(None));
    // The pod is gone (garbage-collected): the Job's status decides.
    let succeeded = JobStatus {
        succeeded: Some(1),
        ..JobStatus::default()
    };
    let failed = JobStatus {
        failed: Some(1),
        ..JobStatus::default()
    };
    assert_eq!(fetch_outcome(&succeeded, &[]), FetchOutcome::Verified(None));
    assert_eq!(fetch_outcome(&failed, &[]), FetchOutcome::Refused(None));
}

#[test]
fn a_started_restore_keeps_the_backup_it_recorded() {
    // `latest` chose "newer"; a newest backup appearing later does not switch the archive.
    let r = restore(json!({"latest": true}));
    let first = choose(&r, &mine(), &all()).unwrap();
    let mut more = all();
    more.push(backup(
        "newest",
        "main",
        BackupPhase::Succeeded,
        9999,
        "2026-11-23T00:00:00Z",
    ));
    assert_eq!(choose(&r, &mine(), &more).unwrap().name, "newest");
    assert_eq!(
        recorded_choice(&r, Some(&first.location), &mine(), &more)
            .unwrap()
            .name,
        first.name
    );
    // Gone since: the restore fails rather than restore something else.
    let gone: Vec<EtcdBackup> = more.into_iter().filter(|b| b.name_any() != first.name).collect();
    assert!(recorded_choice(&r, Some(&first.location), &mine(), &gone).is_err());
    // Nothing recorded yet: the source decides.
    assert_eq!(
        recorded_choice(&r, None, &mine(), &all()).unwrap().name,
        first.name
    );
}

#[test]
fn a_named_backup_must_exist_and_have_succeeded() {
    let c = choose(&restore(json!({"backupName": "old"})), &mine(), &all()).unwrap();
    assert_eq!(
        (c.name.as_str(), c.revision, c.location.as_str()),
        ("old", Some(100), "s3://b/old.tar.gz")
    );
    assert!(
        choose(&restore(json!({"backupName": "failed"})), &mine(), &all())
            .unwrap_err()
            .contains("has not succeeded")
    );
    assert!(
        choose(&restore(json!({"backupName": "nope"})), &mine(), &all())
            .unwrap_err()
            .contains("does not exist")
    );
}

#[test]
fn latest_takes_the_newest_success_of_this_cluster_within_the_bounds() {
    assert_eq!(
        choose(&restore(json!({"latest": true})), &mine(), &all())
            .unwrap()
            .name,
        "newer"
    );
    let bounded = restore(json!({"latest": true, "notAfter": "2026-11-20T12:00:00Z"}));
    assert_eq!(choose(&bounded, &mine(), &all()).unwrap().name, "old");
    assert_eq!(
        choose(
            &restore(json!({"latest": true, "maxRevision": 499})),
            &mine(),
            &all()
        )
        .unwrap()
        .name,
        "old"
    );
    assert!(
        choose(
            &restore(json!({"latest": true, "maxRevision": 1})),
            &mine(),
            &all()
        )
        .is_err()
    );
    assert!(
        choose(
            &restore(json!({"latest": true, "notAfter": "yesterday"})),
            &mine(),
            &all()
        )
        .unwrap_err()
        .contains("RFC 3339")
    );
}

#[test]
fn an_object_source_names_the_archive_in_its_store() {
    let s3 = choose(
        &restore(json!({"object": {
            "destination": {"s3": {"bucket": "bk", "prefix": "p/"}},
            "key": "p/ns/main/x.tar.gz",
        }})),
        &mine(),
        &[],
    )
    .unwrap();
    assert_eq!(s3.location, "s3://bk/p/ns/main/x.tar.gz");
    assert_eq!((s3.revision, s3.sha256), (None, None));
    assert!(
        s3.destination.unwrap().s3.is_some(),
        "credentials come from the object's store"
    );
    let vol = choose(
        &restore(json!({"object": {
            "destination": {"volume": {"claimName": "keep"}},
            "key": "/ns/main/x.tar.gz",
        }})),
        &mine(),
        &[],
    )
    .unwrap();
    assert_eq!(vol.location, "file:///backups/keep/ns/main/x.tar.gz");
    for bad in [
        json!({"object": {"destination": {"volume": {"claimName": "keep"}}, "key": "../../etc/passwd"}}),
        json!({"object": {"destination": {"volume": {"claimName": "keep"}}, "key": ""}}),
        json!({"object": {"destination": {}, "key": "x.tar.gz"}}),
    ] {
        assert!(
            choose(&restore(bad.clone()), &mine(), &[]).is_err(),
            "{bad} was accepted"
        );
    }
}

#[test]
fn latest_skips_successes_without_a_location() {
    let mut backups = all();
    backups[1].status.as_mut().unwrap().location = None;
    assert_eq!(
        choose(&restore(json!({"latest": true})), &mine(), &backups)
            .unwrap()
            .name,
        "old"
    );
    assert_eq!(
        choose_latest("main", &mine(), &all(), Proof::Verified)
            .unwrap()
            .name,
        "newer"
    );
    assert!(choose_latest("nothing", &mine(), &all(), Proof::Verified).is_err());
}

/// A backup of `main` taken from the cluster with `uid`.
fn of_uid(name: &str, uid: Option<&str>, revision: i64, completed: &str) -> EtcdBackup {
    let mut b = backup(name, "main", BackupPhase::Succeeded, revision, completed);
    b.status.as_mut().unwrap().cluster_uid = uid.map(Into::into);
    b
}

#[test]
fn latest_and_recovery_never_cross_into_an_earlier_cluster_of_the_same_name() {
    // An earlier `main` (uid u0) reached revision 9999; this one (u1) is at 500.
    let mut backups = all();
    backups.push(of_uid("earlier", Some("u0"), 9999, "2026-11-19T00:00:00Z"));
    backups.push(of_uid("unrecorded", None, 8888, "2026-11-19T06:00:00Z"));
    assert_eq!(
        choose_latest("main", &mine(), &backups, Proof::Verified)
            .unwrap()
            .name,
        "newer"
    );
    assert_eq!(
        choose(&restore(json!({"latest": true})), &mine(), &backups)
            .unwrap()
            .name,
        "newer"
    );
    // Named explicitly, an earlier cluster's backup is restored: the user chose it.
    assert_eq!(
        choose(&restore(json!({"backupName": "earlier"})), &mine(), &backups)
            .unwrap()
            .name,
        "earlier"
    );
    // Only other lineages: refused, naming what was skipped and how to use it anyway.
    let only_earlier = vec![backups[4].clone(), backups[5].clone()];
    let why = choose_latest("main", &mine(), &only_earlier, Proof::Verified).unwrap_err();
    for part in [
        "lineage (uid u1)",
        "2 backup(s)",
        "earlier",
        "unrecorded",
        "backupName",
    ] {
        assert!(why.contains(part), "{part:?} missing from: {why}");
    }
    // Restored from the earlier cluster: its backups are this cluster's history too.
    let both = Lineage::Uids(vec!["u1".into(), "u0".into()]);
    assert_eq!(
        choose_latest("main", &both, &backups, Proof::Verified)
            .unwrap()
            .name,
        "earlier"
    );
}

#[test]
fn a_cluster_with_no_history_takes_the_lineage_that_backed_up_last() {
    // u0 backed up last (though u1 reached a higher revision): u0's newest is restored.
    let backups = vec![
        of_uid("u1-high", Some("u1"), 9000, "2026-11-20T00:00:00Z"),
        of_uid("u0-low", Some("u0"), 10, "2026-11-21T00:00:00Z"),
        of_uid("u0-lower", Some("u0"), 5, "2026-11-20T12:00:00Z"),
    ];
    assert_eq!(
        choose(
            &restore(json!({"latest": true})),
            &Lineage::NewestOfName,
            &backups
        )
        .unwrap()
        .name,
        "u0-low"
    );
}

#[test]
fn the_lineage_of_a_cluster_is_its_uid_and_the_one_it_was_restored_from() {
    let mut c: EtcdCluster = serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": "main", "namespace": "ns", "uid": "u2"},
        "spec": {"size": 1},
    }))
    .unwrap();
    let backups = vec![of_uid("earlier", Some("u0"), 9, "2026-11-19T00:00:00Z")];
    // Created for a restore, never formed: no history of its own...
    assert_eq!(Lineage::of(&c, &backups), Lineage::NewestOfName);
    // ...but automatic recovery never takes another cluster's data.
    assert_eq!(Lineage::own(&c, &backups), Lineage::Uids(vec!["u2".into()]));
    c.status = Some(ouroboros_crds::EtcdClusterStatus {
        cluster_id: Some("abc".into()),
        ..Default::default()
    });
    assert_eq!(Lineage::of(&c, &backups), Lineage::Uids(vec!["u2".into()]));
    c.status.as_mut().unwrap().restored_from = Some(ouroboros_crds::BackupReference {
        name: "earlier".into(),
        location: "s3://b/earlier.tar.gz".into(),
        revision: 9,
        completion_time: "2026-11-19T00:00:00Z".into(),
    });
    assert_eq!(
        Lineage::of(&c, &backups),
        Lineage::Uids(vec!["u2".into(), "u0".into()])
    );
}

/// The EtcdCluster `ns/main` with this spec.
fn main_cluster(spec: serde_json::Value) -> EtcdCluster {
    serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": "main", "namespace": "ns", "uid": "u"},
        "spec": spec,
    }))
    .unwrap()
}

#[test]
fn the_seed_restores_once_with_a_bumped_revision_and_new_identity() {
    let cluster = main_cluster(json!({"size": 3}));
    let images = Images {
        etcd_repository: "etcd".into(),
        etcd_tag_format: "v{version}".into(),
        sidecar: "sidecar:1".into(),
    };
    let pod = restored_member_pod(
        &cluster,
        &images,
        "main-3",
        &["main-3".into()],
        "3.6.16".parse().unwrap(),
        "main-restore-1",
        "r-snapshot",
    )
    .unwrap();
    let spec = pod.spec.unwrap();
    // No shell (upstream etcd images have none): the static helper, copied from the sidecar image
    // first, runs etcdutl once.
    let inits = spec.init_containers.unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["restore-once", "restore"]);
    assert_eq!(inits[0].image.as_deref(), Some("sidecar:1"));
    let init = &inits[1];
    let command = init.command.clone().unwrap();
    assert_eq!(command[..2], ["/ouroboros/restore-once", "/var/lib/etcd/data"]);
    let script = command.join(" ");
    for part in [
        "/usr/local/bin/etcdutl snapshot restore /snapshot/snapshot.db",
        "--bump-revision 1000000000 --mark-compacted",
        "--initial-cluster-token main-restore-1",
        "--name main-3",
    ] {
        assert!(script.contains(part), "{part} missing from {script}");
    }
    assert!(
        !script.contains("--data-dir"),
        "restore-once names the directory: {script}"
    );
    // Its stderr is what the failing-member reason quotes.
    assert_eq!(
        init.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    let mounts = init.volume_mounts.clone().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "restore-once" && m.mount_path == "/ouroboros")
    );
    assert_eq!(init.image.as_deref(), Some("etcd:v3.6.16"));
    let snapshot = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "snapshot")
        .unwrap();
    assert_eq!(snapshot.persistent_volume_claim.unwrap().claim_name, "r-snapshot");
}

#[test]
fn parallel_copies_are_fetched_where_members_may_run_spread_as_members_and_each_member_restores_its_own() {
    let cluster = main_cluster(
        json!({"size": 3, "pod": {"antiAffinity": "Required", "nodeSelector": {"disk": "ssd"},
                 "tolerations": [{"key": "etcd", "operator": "Exists"}]}}),
    );
    let mut r = restore(json!({"backupName": "b1"}));
    r.metadata.uid = Some("ru".into());
    let chosen = Chosen {
        name: "b1".into(),
        location: "s3://b/ns/main/x.tar.gz".into(),
        sha256: Some("abc".into()),
        revision: Some(7),
        completed: None,
        raw_size: 1 << 30,
        destination: None,
        encrypted: false,
    };
    let copy = |copy: u32, spread: bool| {
        fetch_job(
            &r,
            &cluster,
            FetchCopy {
                chosen: &chosen,
                identity_secret: None,
                image: "sidecar:1",
                copy,
                spread,
                point: None,
            },
        )
        .unwrap()
    };
    let job = serde_json::to_value(copy(1, true)).unwrap();
    assert_eq!(
        job["metadata"]["name"],
        json!(format!("{}-fetch-1", r.name_any()))
    );
    let pod = &job["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["etcd.ouroboros.dev/restore-fetch"],
        json!(r.name_any())
    );
    let spread =
        &pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        spread["labelSelector"]["matchLabels"]["etcd.ouroboros.dev/restore-fetch"],
        json!(r.name_any())
    );
    assert_eq!(pod["spec"]["nodeSelector"], json!({"disk": "ssd"}));
    assert_eq!(pod["spec"]["tolerations"][0]["key"], json!("etcd"));
    let claim = &pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"];
    assert_eq!(claim, &json!(format!("{}-snapshot-1", r.name_any())));
    // One copy (a seed from a file archive) is placed as before: by its archive alone.
    let single = serde_json::to_value(copy(0, false)).unwrap();
    assert!(single["spec"]["template"]["spec"].get("affinity").is_none());
    assert_eq!(
        single["metadata"]["name"],
        json!(format!("{}-fetch", r.name_any()))
    );

    let images = Images {
        etcd_repository: "etcd".into(),
        etcd_tag_format: "v{version}".into(),
        sidecar: "sidecar:1".into(),
    };
    let members: Vec<String> = vec!["main-3".into(), "main-4".into(), "main-5".into()];
    let pod = restored_member_pod(
        &cluster,
        &images,
        "main-4",
        &members,
        "3.6.16".parse().unwrap(),
        "main-restore-1",
        "r-snapshot-1",
    )
    .unwrap();
    let spec = pod.spec.unwrap();
    let script = spec
        .init_containers
        .unwrap()
        .into_iter()
        .find(|c| c.name == "restore")
        .unwrap()
        .command
        .clone()
        .unwrap()
        .join(" ");
    for part in [
        "--name main-4",
        "--initial-cluster main-3=http://main-3.main.ns.svc:2380,main-4=http://main-4.main.ns.svc:2380,\
         main-5=http://main-5.main.ns.svc:2380",
        "--initial-advertise-peer-urls http://main-4.main.ns.svc:2380",
    ] {
        assert!(script.contains(part), "{part} missing from {script}");
    }
    let snapshot = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "snapshot")
        .unwrap();
    assert_eq!(
        snapshot.persistent_volume_claim.unwrap().claim_name,
        "r-snapshot-1"
    );
}

#[test]
fn copies_on_one_node_are_found() {
    let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(shared_node(&n(&["a", "b", "c"])), None);
    assert_eq!(shared_node(&n(&["a", "b", "a"])), Some((0, 2, "a".into())));
    assert_eq!(
        shared_node(&n(&["", "b", ""])),
        None,
        "unplaced copies share nothing"
    );
}

#[test]
fn copies_restore_together_only_when_they_are_one_snapshot() {
    let manifest = |sha: &str, revision: u64| {
        Some(
            serde_json::to_string(&ouroboros_crds::sidecar::Manifest {
                sha256: sha.into(),
                revision,
                ..Default::default()
            })
            .unwrap(),
        )
    };
    let same = copies_agree(&[manifest("aa", 7), manifest("aa", 7), manifest("aa", 7)]).unwrap();
    assert_eq!(same.map(|m| (m.sha256, m.revision)), Some(("aa".into(), 7)));
    // The object was overwritten between two downloads: refused, naming both.
    let differ = copies_agree(&[manifest("aa", 7), manifest("bb", 9)]).unwrap_err();
    assert!(differ.contains("copy 1") && differ.contains("bb"), "{differ}");
    // A copy whose pod is gone left nothing to compare: refused rather than trusted.
    assert!(copies_agree(&[manifest("aa", 7), None]).is_err());
    assert!(copies_agree(&[None, manifest("aa", 7)]).is_err());
    // One copy (a seed) has nothing to agree with; its manifest, if any, is the revision's source.
    assert!(copies_agree(&[None]).unwrap().is_none());
    assert_eq!(
        copies_agree(&[manifest("aa", 7)]).unwrap().map(|m| m.revision),
        Some(7)
    );
}

#[test]
fn every_copy_must_verify_and_any_refusal_names_its_job() {
    let v = |m: &str| FetchOutcome::Verified(Some(m.into()));
    let ok = all_copies(vec![("f".into(), v("m0")), ("f-1".into(), v("m1"))]);
    assert_eq!(ok, ("f".into(), v("m0")));
    let running = all_copies(vec![("f".into(), v("m0")), ("f-1".into(), FetchOutcome::Running)]);
    assert_eq!(running.1, FetchOutcome::Running);
    let refused = all_copies(vec![
        ("f".into(), FetchOutcome::Running),
        ("f-1".into(), FetchOutcome::Refused(Some("sha256 differs".into()))),
    ]);
    assert_eq!(
        refused,
        ("f-1".into(), FetchOutcome::Refused(Some("sha256 differs".into())))
    );
    assert_eq!(all_copies(vec![]).1, FetchOutcome::Running);
}

fn with_drill(mut b: EtcdBackup, drill: ouroboros_crds::DrillPhase, verified: Option<bool>) -> EtcdBackup {
    let s = b.status.as_mut().unwrap();
    s.drill = Some(drill);
    s.verified = verified;
    b
}

#[test]
fn latest_takes_the_newest_verified_backup_and_never_one_that_failed_its_drill() {
    use ouroboros_crds::DrillPhase;
    let backups = vec![
        backup(
            "proven",
            "main",
            BackupPhase::Succeeded,
            100,
            "2026-11-20T00:00:00Z",
        ),
        with_drill(
            backup(
                "damaged",
                "main",
                BackupPhase::Succeeded,
                300,
                "2026-11-21T00:00:00Z",
            ),
            DrillPhase::Failed,
            Some(false),
        ),
        with_drill(
            backup(
                "undecided",
                "main",
                BackupPhase::Succeeded,
                200,
                "2026-11-20T12:00:00Z",
            ),
            DrillPhase::Inconclusive,
            None,
        ),
    ];
    let latest = restore(json!({"latest": true}));
    assert_eq!(choose(&latest, &mine(), &backups).unwrap().name, "proven");
    assert_eq!(restore_awaits_drill(&latest, &mine(), &backups), None);
    // allowUnverified takes the undecided one, and still never the damaged one.
    let any = restore(json!({"latest": true, "allowUnverified": true}));
    assert_eq!(choose(&any, &mine(), &backups).unwrap().name, "undecided");
    assert_eq!(
        choose_latest("main", &mine(), &backups, Proof::Any).unwrap().name,
        "undecided"
    );
    // With nothing verified, the refusal names what was left out and the way out.
    let why = choose_latest("main", &mine(), &backups[1..], Proof::Verified).unwrap_err();
    assert!(
        why.contains("no verified EtcdBackup") && why.contains("allowUnverified"),
        "{why}"
    );
    assert!(why.contains("1 failed their restore drill"), "{why}");
}

#[test]
fn latest_waits_while_the_newest_backups_drill_has_not_ended() {
    use ouroboros_crds::DrillPhase;
    let mut backups = vec![
        backup(
            "proven",
            "main",
            BackupPhase::Succeeded,
            100,
            "2026-11-20T00:00:00Z",
        ),
        with_drill(
            backup(
                "fresh",
                "main",
                BackupPhase::Succeeded,
                300,
                "2026-11-21T00:00:00Z",
            ),
            DrillPhase::Running,
            None,
        ),
    ];
    let latest = restore(json!({"latest": true}));
    let why = restore_awaits_drill(&latest, &mine(), &backups).expect("waits");
    assert!(why.contains("fresh"), "{why}");
    assert!(choose_latest("main", &mine(), &backups, Proof::Verified).is_err());
    // Not for allowUnverified, nor for a named backup, nor once the drill ended.
    let any = restore(json!({"latest": true, "allowUnverified": true}));
    assert_eq!(restore_awaits_drill(&any, &mine(), &backups), None);
    assert_eq!(
        restore_awaits_drill(&restore(json!({"backupName": "proven"})), &mine(), &backups),
        None
    );
    backups[1] = with_drill(backups[1].clone(), DrillPhase::Failed, Some(false));
    assert_eq!(restore_awaits_drill(&latest, &mine(), &backups), None);
    assert_eq!(choose(&latest, &mine(), &backups).unwrap().name, "proven");
}

#[test]
fn a_point_target_comes_from_revision_or_time_or_a_continuous_cluster_and_never_from_an_object() {
    let src = |v: serde_json::Value| restore(v).spec.source;
    let target = |revision: Option<i64>, time: Option<&str>| ouroboros_crds::PointTarget {
        revision,
        time: time.map(str::to_owned),
    };
    // A cluster without continuous backups restores the archive as it is, unless a point is asked.
    assert_eq!(point_target(&src(json!({"backupName": "b"})), false), None);
    assert_eq!(
        point_target(&src(json!({"backupName": "b"})), true),
        Some(target(None, None))
    );
    assert_eq!(
        point_target(&src(json!({"latest": true, "revision": 42})), false),
        Some(target(Some(42), None))
    );
    assert_eq!(
        point_target(
            &src(json!({"latest": true, "time": "2026-11-21T00:30:00Z"})),
            false
        ),
        Some(target(None, Some("2026-11-21T00:30:00Z")))
    );
    let object = json!({"object": {"destination": {"s3": {"bucket": "b"}}, "key": "x.tar.gz"}});
    assert_eq!(point_target(&src(object), true), None);
}

#[test]
fn latest_to_a_point_starts_from_the_newest_backup_at_or_before_it() {
    let all = all();
    let pick = |source: serde_json::Value| choose(&restore(source), &mine(), &all).map(|c| c.name);
    assert_eq!(pick(json!({"latest": true, "revision": 499})), Ok("old".into()));
    assert_eq!(pick(json!({"latest": true, "revision": 500})), Ok("newer".into()));
    assert_eq!(
        pick(json!({"latest": true, "time": "2026-11-20T23:59:59Z"})),
        Ok("old".into())
    );
    assert_eq!(
        pick(json!({"latest": true, "time": "2026-11-21T00:00:00Z"})),
        Ok("newer".into())
    );
    // The tighter of maxRevision and revision decides.
    assert_eq!(
        pick(json!({"latest": true, "revision": 600, "maxRevision": 200})),
        Ok("old".into())
    );
    assert!(pick(json!({"latest": true, "revision": 50})).is_err());
}

#[test]
fn a_named_backup_after_the_point_or_without_a_revision_cannot_start_its_chain() {
    let chosen = |revision: Option<i64>, completed: Option<&str>| Chosen {
        name: "b1".into(),
        location: "s3://b/x/b1.tar.gz".into(),
        sha256: None,
        revision,
        completed: completed.map(str::to_owned),
        raw_size: 0,
        destination: None,
        encrypted: false,
    };
    let at = |revision: Option<i64>, time: Option<&str>| ouroboros_crds::PointTarget {
        revision,
        time: time.map(str::to_owned),
    };
    let done = Some("2026-11-21T00:00:00Z");
    assert_eq!(check_base(&chosen(Some(7), done), &at(None, None)), Ok(7));
    assert_eq!(check_base(&chosen(Some(7), done), &at(Some(7), None)), Ok(7));
    let why = check_base(&chosen(Some(7), done), &at(Some(6), None)).unwrap_err();
    assert!(why.contains("after source.revision 6"), "{why}");
    assert!(check_base(&chosen(Some(7), done), &at(None, Some("2026-11-21T00:00:00Z"))).is_ok());
    let why = check_base(&chosen(Some(7), done), &at(None, Some("2026-11-20T23:00:00Z"))).unwrap_err();
    assert!(why.contains("did not complete by source.time"), "{why}");
    let why = check_base(&chosen(None, done), &at(None, None)).unwrap_err();
    assert!(why.contains("records no revision"), "{why}");
}

#[test]
fn a_fetch_to_a_point_replays_with_the_clusters_etcd_on_a_claim_with_room_for_it() {
    let cluster = main_cluster(json!({"size": 3, "pod": {"nodeSelector": {"disk": "ssd"}}}));
    let mut r = restore(json!({"latest": true, "revision": 90}));
    r.metadata.uid = Some("ru".into());
    let chosen = Chosen {
        name: "b1".into(),
        location: "s3://b/ns/main/b1.tar.gz".into(),
        sha256: Some("abc".into()),
        revision: Some(7),
        completed: None,
        raw_size: 1 << 30,
        destination: None,
        encrypted: false,
    };
    let target = ouroboros_crds::PointTarget {
        revision: Some(90),
        time: None,
    };
    let job = fetch_job(
        &r,
        &cluster,
        FetchCopy {
            chosen: &chosen,
            identity_secret: None,
            image: "sidecar:1",
            copy: 0,
            spread: false,
            point: Some(objects::FetchPoint {
                target: &target,
                base_revision: 7,
                etcd_image: "etcd:v3.6.16",
            }),
        },
    )
    .unwrap();
    let pod = serde_json::to_value(&job).unwrap()["spec"]["template"]["spec"].clone();
    let args: Vec<String> = serde_json::from_value(pod["containers"][0]["args"].clone()).unwrap();
    for a in [
        "--chain-of=b1",
        "--base-revision=7",
        "--to-revision=90",
        "--etcd-bin-dir=/etcd-tools",
    ] {
        assert!(args.iter().any(|x| x == a), "{a} not in {args:?}");
    }
    assert!(args.iter().all(|a| !a.starts_with("--to-time")), "{args:?}");
    // The etcd image has no cp: the sidecar's busybox is handed to it first.
    assert_eq!(pod["initContainers"][0]["image"], json!("sidecar:1"));
    assert_eq!(pod["initContainers"][1]["image"], json!("etcd:v3.6.16"));
    assert_eq!(
        pod["initContainers"][1]["command"][0],
        json!("/etcd-tools/busybox")
    );
    // The one copy lands where members may run (its claim may bind there), with nothing to spread.
    assert_eq!(pod["nodeSelector"], json!({"disk": "ssd"}));
    assert!(
        pod["affinity"].get("podAntiAffinity").is_none(),
        "{}",
        pod["affinity"]
    );
    // A plain fetch has none of it.
    let plain = fetch_job(
        &r,
        &cluster,
        FetchCopy {
            chosen: &chosen,
            identity_secret: None,
            image: "sidecar:1",
            copy: 0,
            spread: false,
            point: None,
        },
    )
    .unwrap();
    let plain = serde_json::to_value(&plain).unwrap()["spec"]["template"]["spec"].clone();
    assert_eq!(plain["initContainers"], json!([]));
    // Room for the snapshot, the replaying etcd's data and the snapshot at the point.
    assert_eq!(objects::snapshot_claim_size(1 << 30, &cluster, false), "2Gi");
    assert_eq!(objects::snapshot_claim_size(1 << 30, &cluster, true), "4Gi");
    let pvc = main_cluster(json!({"size": 3, "storage": {"persistentVolumeClaim": {"size": "5Gi"}}}));
    assert_eq!(objects::snapshot_claim_size(0, &pvc, true), "15Gi");
    let odd = main_cluster(json!({"size": 3, "storage": {"persistentVolumeClaim": {"size": "1.5Gi"}}}));
    assert_eq!(objects::snapshot_claim_size(0, &odd, true), "5Gi");
    assert_eq!(objects::snapshot_claim_size(0, &odd, false), "1.5Gi");
}
