#![allow(clippy::unwrap_used)]
use ouroboros_crds::{BackupPhase, EtcdBackupStatus, EtcdClusterStatus, EtcdRestoreStatus};
use serde_json::json;

use super::*;

const LOST: &str = "2026-11-22T10:00:00Z";

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A cluster of 3 that last saw revision 900; `extra` adds fields to its spec.
fn cluster(extra: serde_json::Value) -> EtcdCluster {
    let mut spec = json!({"size": 3});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let mut c: EtcdCluster = serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": "main", "namespace": "ns", "uid": "u1"},
        "spec": spec,
    }))
    .unwrap();
    c.status = Some(EtcdClusterStatus {
        last_seen_revision: Some(900),
        last_seen_revision_time: Some("2026-11-22T09:59:30Z".into()),
        ..Default::default()
    });
    c
}

fn automatic() -> EtcdCluster {
    cluster(json!({"recovery": {"policy": "Automatic", "gracePeriod": "2m"}}))
}

fn backup(name: &str, revision: i64, completed: &str) -> EtcdBackup {
    let mut b: EtcdBackup = serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdBackup",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"clusterName": "main"},
    }))
    .unwrap();
    b.status = Some(EtcdBackupStatus {
        phase: Some(BackupPhase::Succeeded),
        location: Some(format!("s3://b/{name}.tar.gz")),
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

fn restore(name: &str, cluster: &str, phase: Option<RestorePhase>) -> EtcdRestore {
    let mut r: EtcdRestore = serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdRestore",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"clusterName": cluster, "source": {"latest": true}},
    }))
    .unwrap();
    r.status = Some(EtcdRestoreStatus {
        phase,
        ..Default::default()
    });
    r
}

fn decide_at(c: &EtcdCluster, now: &str, backups: &[EtcdBackup], restores: &[EtcdRestore]) -> Recovery {
    decide(&Input {
        cluster: c,
        quorum_lost_since: Some(t(LOST)),
        returning: &[],
        backups,
        restores,
        now: t(now),
    })
}

#[test]
fn manual_or_healthy_clusters_are_left_alone() {
    let backups = [backup("b", 500, "2026-11-22T09:00:00Z")];
    let late = "2026-11-22T11:00:00Z";
    assert_eq!(
        decide_at(&cluster(json!({})), late, &backups, &[]),
        Recovery::NotNeeded
    );
    assert_eq!(
        decide_at(
            &cluster(json!({"recovery": {"policy": "Manual"}})),
            late,
            &backups,
            &[]
        ),
        Recovery::NotNeeded
    );
    let healthy = decide(&Input {
        cluster: &automatic(),
        quorum_lost_since: None,
        returning: &[],
        backups: &backups,
        restores: &[],
        now: t(late),
    });
    assert_eq!(healthy, Recovery::NotNeeded);
}

#[test]
fn nothing_happens_within_the_grace_period() {
    let backups = [backup("b", 500, "2026-11-22T09:00:00Z")];
    // The condition says 10:00:00, so quorum was lost before 10:00:01: two minutes from then.
    assert_eq!(
        decide_at(&automatic(), "2026-11-22T10:02:00.5Z", &backups, &[]),
        Recovery::Waiting {
            at: t("2026-11-22T10:02:01Z")
        }
    );
    // Without gracePeriod, five minutes.
    let default = cluster(json!({"recovery": {"policy": "Automatic"}}));
    assert_eq!(
        decide_at(&default, "2026-11-22T10:02:00Z", &backups, &[]),
        Recovery::Waiting {
            at: t("2026-11-22T10:05:01Z")
        }
    );
}

#[test]
fn after_the_grace_period_the_newest_backup_is_restored_and_the_loss_recorded() {
    let backups = [
        backup("old", 300, "2026-11-22T08:00:00Z"),
        backup("new", 500, "2026-11-22T09:00:00Z"),
    ];
    let Recovery::Start { restore, record } = decide_at(&automatic(), "2026-11-22T10:02:01Z", &backups, &[])
    else {
        panic!("no restore started");
    };
    assert_eq!(restore, format!("main-recovery-{}", t(LOST).as_second()));
    assert_eq!(record.backup_name, "new");
    assert_eq!(record.restore_name, restore);
    assert_eq!(record.quorum_lost_time, t(LOST).to_string());
    assert_eq!(record.backup_revision, 500);
    assert_eq!(record.backup_time.as_deref(), Some("2026-11-22T09:00:00Z"));
    assert_eq!(record.last_seen_revision, Some(900));
    assert_eq!(record.revisions_lost, Some(400));
    let words = window(&record);
    assert!(
        words.contains("at least 400 revisions") && words.contains("new"),
        "{words}"
    );
    assert!(!record.along_chain);
}

#[test]
fn with_continuous_backups_recovery_restores_along_the_chain_and_claims_no_loss_from_the_backup() {
    let backups = [backup("new", 500, "2026-11-22T09:00:00Z")];
    let c = cluster(json!({
        "recovery": {"policy": "Automatic", "gracePeriod": "2m"},
        "backup": {"schedule": "0 * * * *", "continuous": {}},
    }));
    let Recovery::Start { record, .. } = decide_at(&c, "2026-11-22T10:02:01Z", &backups, &[]) else {
        panic!("no restore started");
    };
    assert!(record.along_chain);
    // The chain brings back some of the 400 revisions after the backup: no count is claimed.
    assert_eq!(record.revisions_lost, None);
    let words = window(&record);
    assert!(
        words.contains("delta chain to its end") && words.contains("status.point") && !words.contains("400"),
        "{words}"
    );
}

#[test]
fn one_loss_gets_one_restore_even_when_it_fails() {
    let backups = [backup("b", 500, "2026-11-22T09:00:00Z")];
    let name = restore_name("main", t(LOST));
    let failed = [restore(&name, "main", Some(RestorePhase::Failed))];
    assert_eq!(
        decide_at(&automatic(), "2026-11-22T11:00:00Z", &backups, &failed),
        Recovery::AlreadyStarted {
            restore: name.clone()
        }
    );
    // Recorded on the cluster but the restore object deleted: still not started again.
    let mut c = automatic();
    c.status.as_mut().unwrap().automatic_recovery = Some(AutomaticRecovery {
        restore_name: name.clone(),
        ..Default::default()
    });
    assert_eq!(
        decide_at(&c, "2026-11-22T11:00:00Z", &backups, &[]),
        Recovery::AlreadyStarted { restore: name }
    );
}

#[test]
fn a_running_restore_of_the_cluster_is_not_raced() {
    let backups = [backup("b", 500, "2026-11-22T09:00:00Z")];
    let running = [
        restore("by-hand", "main", Some(RestorePhase::Verifying)),
        restore("other", "elsewhere", None),
    ];
    assert_eq!(
        decide_at(&automatic(), "2026-11-22T11:00:00Z", &backups, &running),
        Recovery::RestoreRunning {
            restore: "by-hand".into()
        }
    );
    let finished = [restore("by-hand", "main", Some(RestorePhase::Failed))];
    assert!(matches!(
        decide_at(&automatic(), "2026-11-22T11:00:00Z", &backups, &finished),
        Recovery::Start { .. }
    ));
}

#[test]
fn without_a_backup_it_says_so() {
    let mut failed = backup("b", 500, "2026-11-22T09:00:00Z");
    failed.status.as_mut().unwrap().phase = Some(BackupPhase::Failed);
    let got = decide_at(&automatic(), "2026-11-22T11:00:00Z", &[failed], &[]);
    assert!(
        matches!(&got, Recovery::NoBackup { why } if why.contains("no verified EtcdBackup")),
        "{got:?}"
    );
}

#[test]
fn self_hosted_clusters_are_not_restored_in_place() {
    let c = cluster(json!({
        "recovery": {"policy": "Automatic"},
        "selfHosted": {"bootMemberClientEndpoint": ""},
    }));
    let got = decide_at(
        &c,
        "2026-11-22T11:00:00Z",
        &[backup("b", 500, "2026-11-22T09:00:00Z")],
        &[],
    );
    assert!(matches!(got, Recovery::Unsupported { .. }), "{got:?}");
}

#[test]
fn the_newest_revision_is_recorded_at_most_once_a_minute() {
    let now = t("2026-11-22T10:00:00Z");
    assert_eq!(
        record_seen((None, None), Some(10), now),
        (Some(10), Some(now.to_string()))
    );
    let recorded = "2026-11-22T09:59:30Z";
    assert_eq!(
        record_seen((Some(10), Some(recorded)), Some(20), now),
        (Some(10), Some(recorded.to_owned())),
        "30 s after the last record"
    );
    let later = t("2026-11-22T10:00:30Z");
    assert_eq!(
        record_seen((Some(10), Some(recorded)), Some(20), later),
        (Some(20), Some(later.to_string()))
    );
    // A lower report (a member behind) or none (quorum lost) keeps what was seen.
    assert_eq!(
        record_seen((Some(10), Some(recorded)), Some(5), later),
        (Some(10), Some(recorded.to_owned()))
    );
    assert_eq!(
        record_seen((Some(10), Some(recorded)), None, later),
        (Some(10), Some(recorded.to_owned()))
    );
}

#[test]
fn no_restore_while_voters_with_intact_data_may_give_quorum_back() {
    // Pods restarting on intact claims, long past the grace period, with a backup at hand: waiting
    // costs nothing, restoring would throw their writes away.
    let backups = [backup("b", 500, "2026-11-22T09:00:00Z")];
    let returning = ["main-1".to_owned(), "main-2".to_owned()];
    let decision = decide(&Input {
        cluster: &automatic(),
        quorum_lost_since: Some(t(LOST)),
        returning: &returning,
        backups: &backups,
        restores: &[],
        now: t("2026-11-22T12:00:00Z"),
    });
    assert_eq!(
        decision,
        Recovery::DataMayReturn {
            members: returning.to_vec()
        }
    );
}

#[test]
fn an_earlier_cluster_of_the_same_name_is_never_restored_automatically() {
    // The cluster was deleted and created again: the old one's newer backup is not this one's data.
    let mut earlier = backup("earlier", 5000, "2026-11-22T09:00:00Z");
    earlier.status.as_mut().unwrap().cluster_uid = Some("u0".into());
    let ours = backup("ours", 400, "2026-11-22T08:00:00Z");
    let r = decide_at(
        &automatic(),
        "2026-11-22T10:05:00Z",
        &[earlier.clone(), ours],
        &[],
    );
    assert!(
        matches!(&r, Recovery::Start { record, .. } if record.backup_name == "ours"),
        "{r:?}"
    );
    let r = decide_at(&automatic(), "2026-11-22T10:05:00Z", &[earlier], &[]);
    assert!(
        matches!(&r, Recovery::NoBackup { why } if why.contains("earlier cluster")),
        "{r:?}"
    );
}

#[test]
fn the_recovery_restore_is_typed_owned_by_its_cluster_and_names_the_backup() {
    let r = restore_object(&automatic(), "main-recovery-1", "main-b1").unwrap();
    assert_eq!(r.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(
        r.labels().get(vocabulary::LABEL_CLUSTER).map(String::as_str),
        Some("main")
    );
    let owner = &r.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("EtcdCluster", "u1"));
    assert_eq!(r.spec.cluster_name, "main");
    assert_eq!(r.spec.source.backup_name.as_deref(), Some("main-b1"));
    // A cluster not read from the API server has no uid: refused, never sent with an empty owner.
    let mut unread = automatic();
    unread.metadata.uid = None;
    assert!(restore_object(&unread, "x", "b").is_err());
}

#[test]
fn recovery_restores_only_verified_backups_unless_allowed_and_waits_for_a_running_drill() {
    use ouroboros_crds::DrillPhase;
    let late = "2026-11-22T11:00:00Z";
    let drilled = |name: &str, revision: i64, drill: DrillPhase, verified: Option<bool>| {
        let mut b = backup(name, revision, "2026-11-22T09:00:00Z");
        let s = b.status.as_mut().unwrap();
        s.drill = Some(drill);
        s.verified = verified;
        b
    };
    let chosen = |got: Recovery| match got {
        Recovery::Start { record, .. } => record.backup_name,
        other => panic!("{other:?}"),
    };
    let proven = backup("proven", 100, "2026-11-22T08:00:00Z");
    let damaged = drilled("damaged", 300, DrillPhase::Failed, Some(false));
    let undecided = drilled("undecided", 200, DrillPhase::Inconclusive, None);
    let all = [proven.clone(), damaged.clone(), undecided.clone()];
    assert_eq!(chosen(decide_at(&automatic(), late, &all, &[])), "proven");
    let allowing =
        cluster(json!({"recovery": {"policy": "Automatic", "gracePeriod": "2m", "allowUnverified": true}}));
    assert_eq!(chosen(decide_at(&allowing, late, &all, &[])), "undecided");
    // A newer backup still being drilled is waited for: it may verify, and it holds more.
    let running = [proven, drilled("fresh", 400, DrillPhase::Running, None)];
    let got = decide_at(&automatic(), late, &running, &[]);
    assert!(
        matches!(&got, Recovery::NoBackup { why } if why.contains("waiting for the restore drill of fresh")),
        "{got:?}"
    );
}
