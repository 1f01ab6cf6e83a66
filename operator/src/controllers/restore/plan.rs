//! What a restore in its Restoring phase does next, from what was observed: a pure function, one
//! step per reconcile, tested case by case. The order is the safety argument: the hold is taken
//! (atomically) before anything is touched, the restored members' names are recorded before their
//! pods exist, old members are stopped (their claims kept) before any restored member starts, and
//! Growing is recorded only once every restored member serves the restored data.

use ouroboros_crds::{ClusterPhase, EtcdClusterStatus, RestoredPoint, sidecar::FetchReport};

use ouroboros_crds::BackupEncryption;

use super::super::encryption::IDENTITY_KEY;
use crate::{
    backup_source::Chosen,
    vocabulary::{ordinal, pvc_name},
};

/// A restored member's pod, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberPod {
    /// Not created yet (or gone).
    Absent,
    /// Created, and the scheduler cannot place it; its message says why.
    Unschedulable(String),
    /// Created, not Ready yet.
    Starting,
    /// Its restore failed and the kubelet retries it (a fetch that no longer checks out, say); the
    /// container's message says why.
    Failing(String),
    /// Ready: etcd serves the restored data.
    Ready,
}

/// What the Restoring phase looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoringView {
    /// This EtcdRestore's name.
    pub restore: String,
    /// The target EtcdCluster's name.
    pub cluster: String,
    /// Who holds the cluster (the value of the restore hold), if anyone.
    pub holder: Option<String>,
    /// Another restore of the same cluster already in Growing (it has lifted its hold).
    pub growing_other: Option<String>,
    /// How many members are restored from the snapshot: `spec.size` when each member can fetch
    /// the archive itself (all start together, as etcd's disaster-recovery procedure does), else
    /// one seed the cluster controller grows.
    pub restored_count: u32,
    /// The restored members' names, once recorded in status (empty: not chosen yet).
    pub members: Vec<String>,
    /// Names of the cluster's member pods.
    pub pods: Vec<String>,
    /// Names of the cluster's claims.
    pub claims: Vec<String>,
    /// The lowest ordinal a new member may take (recorded on the cluster).
    pub ordinal_floor: u32,
    /// The restored members' pods, in the order of `members`.
    pub member_pods: Vec<MemberPod>,
}

/// The one step of a Restoring reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoringStep {
    /// Another restore owns the cluster: fail without touching it.
    HeldByOther(String),
    /// Take the hold, on the cluster exactly as read (a concurrent restore loses the race).
    TakeHold,
    /// Record these names for the restored members (the highest ordinal first, then the restore's
    /// status).
    ChooseMembers(Vec<String>),
    /// Delete these member pods; their claims stay until the restored cluster is Available.
    StopOldMembers(Vec<String>),
    /// Create these restored members' claims and pods (all that are absent, at once: they form
    /// one new cluster and only start serving together).
    StartMembers(Vec<String>),
    /// The restored members' pods are starting.
    WaitForMembers,
    /// A restored member's pod waits for a node: say why in status and wait (nothing is undone; the
    /// old members' claims are kept, and the member starts once the scheduler can place it).
    MemberUnschedulable {
        /// The member's name.
        member: String,
        /// The scheduler's message.
        why: String,
    },
    /// A restored member's restore fails and is retried by the kubelet: say why in status and
    /// wait. Nothing is undone (the old members' claims are kept); a person decides, as the reason
    /// says.
    MemberFailing {
        /// The member's name.
        member: String,
        /// The container's message.
        why: String,
    },
    /// Every restored member serves the restored data: record Growing (before the hold is lifted).
    Grow(Vec<String>),
}

/// The next step of the Restoring phase.
pub fn next_restoring_step(v: &RestoringView) -> RestoringStep {
    match &v.holder {
        Some(holder) if *holder != v.restore => return RestoringStep::HeldByOther(holder.clone()),
        Some(_) => {}
        // A restore that lifted its hold is still growing the cluster it restored; its status says
        // Growing before it lifts the hold, so reading the cluster first and the restores second
        // cannot miss it. Others in Restoring without a hold are no reason to fail (two that failed
        // on seeing each other would leave none running): the atomic hold decides.
        None => {
            return match &v.growing_other {
                Some(other) => RestoringStep::HeldByOther(other.clone()),
                None => RestoringStep::TakeHold,
            };
        }
    }
    if v.members.is_empty() {
        return RestoringStep::ChooseMembers(member_names(v));
    }
    let old: Vec<String> = v
        .pods
        .iter()
        .filter(|p| !v.members.contains(p))
        .cloned()
        .collect();
    if !old.is_empty() {
        return RestoringStep::StopOldMembers(old);
    }
    let state = |i: usize| v.member_pods.get(i).cloned().unwrap_or(MemberPod::Absent);
    let absent: Vec<String> = (0..v.members.len())
        .filter(|i| state(*i) == MemberPod::Absent)
        .map(|i| v.members[i].clone())
        .collect();
    if !absent.is_empty() {
        return RestoringStep::StartMembers(absent);
    }
    for (i, member) in v.members.iter().enumerate() {
        match state(i) {
            MemberPod::Unschedulable(why) => {
                return RestoringStep::MemberUnschedulable {
                    member: member.clone(),
                    why,
                };
            }
            MemberPod::Failing(why) => {
                return RestoringStep::MemberFailing {
                    member: member.clone(),
                    why,
                };
            }
            MemberPod::Absent | MemberPod::Starting | MemberPod::Ready => {}
        }
    }
    if (0..v.members.len()).all(|i| state(i) == MemberPod::Ready) {
        RestoringStep::Grow(v.members.clone())
    } else {
        RestoringStep::WaitForMembers
    }
}

/// The restored members' names: past every ordinal in use by pods or claims (old claims stay until
/// the end) and every ordinal ever recorded, so a name never repeats.
fn member_names(v: &RestoringView) -> Vec<String> {
    let highest = v
        .pods
        .iter()
        .map(String::as_str)
        .chain(v.claims.iter().map(|c| c.trim_end_matches("-data")))
        .filter_map(|n| ordinal(&v.cluster, n))
        .max();
    let first = highest.map_or(0, |h| h + 1).max(v.ordinal_floor);
    (first..first + v.restored_count.max(1))
        .map(|o| format!("{}-{o}", v.cluster))
        .collect()
}

/// The Secret whose identity the fetch mounts, or why the restore fails before it runs. `key` is
/// whether the identity could be read from the configured Secret (`None`: none is configured). A
/// key that is missing is named now, rather than by a fetch pod that cannot mount it. An archive not
/// known to be encrypted needs no identity (a Secret may hold only the public key); one is mounted
/// if there is one, since the fetch decides from the archive itself.
pub fn fetch_identity(
    decryption: Option<&BackupEncryption>,
    key: Option<Result<(), String>>,
    chosen: &Chosen,
) -> Result<Option<String>, String> {
    match (decryption, key) {
        (Some(e), Some(Ok(()))) => Ok(Some(e.secret_name.clone())),
        (Some(_), Some(Err(_))) if !chosen.encrypted => Ok(None),
        (Some(_), Some(Err(why))) => Err(format!(
            "{why}, which decrypts the archive; the cluster was not touched"
        )),
        (None, _) | (Some(_), None) if chosen.encrypted => Err(format!(
            "{} is age-encrypted and no Secret holds its identity: set spec.encryption.secretName \
             (or the cluster's spec.backup.encryption) to a Secret with an `{}` key; the cluster was not touched",
            chosen.describe(),
            IDENTITY_KEY
        )),
        (None, _) | (Some(_), None) => Ok(None),
    }
}

/// The point of the delta chain the one fetch took its snapshot to, from its report (its
/// termination message), or why it cannot be known (then nothing may be restored from it).
pub fn reached_point(messages: &[Option<String>]) -> Result<RestoredPoint, String> {
    let report = messages
        .first()
        .and_then(Option::as_deref)
        .and_then(|m| serde_json::from_str::<FetchReport>(m).ok());
    let Some(p) = report.and_then(|r| r.point) else {
        return Err(
            "the fetch left no report of the point of the delta chain it reached \
                    (its pod is gone?): restore again"
                .into(),
        );
    };
    let time = |ms: i64| jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.to_string());
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(RestoredPoint {
        revision: int(p.revision),
        time: p.seen_ms.and_then(time),
        applied: int(p.applied),
        chain_end: int(p.chain_end),
        chain_end_time: p.chain_end_seen_ms.and_then(time),
        revisions_left_out: int(p.chain_end.saturating_sub(p.revision)),
    })
}

/// The point restored and what the chain held after it, in words.
pub fn describe_point(p: &RestoredPoint) -> String {
    let at = |t: &Option<String>| t.as_deref().map(|t| format!(", seen at {t}")).unwrap_or_default();
    let point = format!(
        "revision {}{} ({} revisions replayed on the full backup)",
        p.revision,
        at(&p.time),
        p.applied
    );
    match p.revisions_left_out {
        0 => format!("{point}, the chain's last stored revision"),
        n => format!(
            "{point}; the chain holds {n} later revisions, to {}{}, which are not restored",
            p.chain_end,
            at(&p.chain_end_time)
        ),
    }
}

/// What the Growing phase looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowingView {
    /// This restore still holds the cluster.
    pub held_by_me: bool,
    /// The cluster's status.
    pub cluster: EtcdClusterStatus,
    /// `spec.size`.
    pub size: usize,
    /// Names of the cluster's claims.
    pub claims: Vec<String>,
}

/// The one step of a Growing reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrowingStep {
    /// Lift the hold (Growing is already recorded), so the cluster controller grows the seed.
    LiftHold,
    /// The cluster is not yet Available at full size with every member a healthy voter.
    WaitForCluster,
    /// Delete the old members' claims (kept until now) and the snapshot's, then record success.
    Finish {
        /// Member data claims of members the restored cluster does not have.
        stale_claims: Vec<String>,
    },
}

/// The next step of the Growing phase.
pub fn next_growing_step(v: &GrowingView) -> GrowingStep {
    if v.held_by_me {
        return GrowingStep::LiftHold;
    }
    let c = &v.cluster;
    let done = c.phase == Some(ClusterPhase::Running)
        && c.members.len() == v.size
        && c.members.iter().all(|m| m.healthy && !m.is_learner);
    if !done {
        return GrowingStep::WaitForCluster;
    }
    let current: Vec<String> = c.members.iter().map(|m| pvc_name(&m.name)).collect();
    GrowingStep::Finish {
        stale_claims: v
            .claims
            .iter()
            .filter(|n| n.ends_with("-data") && !current.contains(n))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(members: &[&str], pods: &[&str], member_pods: &[MemberPod]) -> RestoringView {
        RestoringView {
            restore: "r".into(),
            cluster: "c".into(),
            holder: Some("r".into()),
            growing_other: None,
            restored_count: 3,
            members: members.iter().map(|p| p.to_string()).collect(),
            pods: pods.iter().map(|p| p.to_string()).collect(),
            claims: vec![],
            ordinal_floor: 0,
            member_pods: member_pods.to_vec(),
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn nothing_is_touched_before_the_hold_is_this_restores() {
        let mut v = held(&[], &["c-0", "c-1"], &[]);
        v.holder = None;
        assert_eq!(next_restoring_step(&v), RestoringStep::TakeHold);
        v.holder = Some("other".into());
        assert_eq!(
            next_restoring_step(&v),
            RestoringStep::HeldByOther("other".into())
        );
    }

    #[test]
    fn a_restore_that_already_lifted_its_hold_and_grows_keeps_the_cluster() {
        let mut v = held(&[], &["c-3"], &[]);
        v.holder = None;
        v.growing_other = Some("earlier".into());
        assert_eq!(
            next_restoring_step(&v),
            RestoringStep::HeldByOther("earlier".into())
        );
    }

    #[test]
    fn restored_members_take_ordinals_past_every_pod_claim_and_record() {
        let mut v = held(&[], &["c-0", "c-2"], &[]);
        v.claims = vec!["c-0-data".into(), "c-4-data".into(), "c-backups".into()];
        assert_eq!(
            next_restoring_step(&v),
            RestoringStep::ChooseMembers(names(&["c-5", "c-6", "c-7"]))
        );
        v.ordinal_floor = 9;
        assert_eq!(
            next_restoring_step(&v),
            RestoringStep::ChooseMembers(names(&["c-9", "c-10", "c-11"]))
        );
        let mut one = held(&[], &[], &[]);
        one.restored_count = 1;
        assert_eq!(
            next_restoring_step(&one),
            RestoringStep::ChooseMembers(names(&["c-0"]))
        );
    }

    #[test]
    fn old_members_stop_before_any_restored_member_starts_and_none_of_them_is_restored() {
        let v = held(&["c-5", "c-6"], &["c-0", "c-5", "c-1"], &[MemberPod::Starting]);
        assert_eq!(
            next_restoring_step(&v),
            RestoringStep::StopOldMembers(names(&["c-0", "c-1"]))
        );
    }

    #[test]
    fn every_absent_member_starts_at_once_and_growing_waits_for_all_to_be_ready() {
        use MemberPod::*;
        let m = ["c-5", "c-6", "c-7"];
        assert_eq!(
            next_restoring_step(&held(&m, &[], &[Absent, Absent, Absent])),
            RestoringStep::StartMembers(names(&m))
        );
        // A pod gone while the others start is created again, alone (it restores on its own claim).
        assert_eq!(
            next_restoring_step(&held(&m, &["c-5", "c-7"], &[Starting, Absent, Ready])),
            RestoringStep::StartMembers(names(&["c-6"]))
        );
        assert_eq!(
            next_restoring_step(&held(&m, &m, &[Ready, Starting, Ready])),
            RestoringStep::WaitForMembers
        );
        assert_eq!(
            next_restoring_step(&held(&m, &m, &[Ready, Ready, Ready])),
            RestoringStep::Grow(names(&m))
        );
        assert_eq!(
            next_restoring_step(&held(&["c-5"], &["c-5"], &[Ready])),
            RestoringStep::Grow(names(&["c-5"]))
        );
    }

    #[test]
    fn a_member_the_scheduler_cannot_place_or_whose_restore_fails_is_reported_and_never_replaced() {
        use MemberPod::*;
        let why = "0/3 nodes are available: 1 node(s) didn't find available persistent volumes to bind";
        let m = ["c-5", "c-6"];
        assert_eq!(
            next_restoring_step(&held(&m, &m, &[Ready, Unschedulable(why.into())])),
            RestoringStep::MemberUnschedulable {
                member: "c-6".into(),
                why: why.into()
            }
        );
        assert_eq!(
            next_restoring_step(&held(&m, &m, &[Failing("sha256 differs".into()), Starting])),
            RestoringStep::MemberFailing {
                member: "c-5".into(),
                why: "sha256 differs".into()
            }
        );
    }

    fn member(name: &str, healthy: bool, learner: bool) -> ouroboros_crds::MemberStatus {
        serde_json::from_value(serde_json::json!({
            "name": name, "id": "1", "healthy": healthy, "isLearner": learner,
        }))
        .unwrap()
    }

    fn growing(phase: ClusterPhase, members: Vec<ouroboros_crds::MemberStatus>) -> GrowingView {
        GrowingView {
            held_by_me: false,
            cluster: EtcdClusterStatus {
                phase: Some(phase),
                members,
                ..Default::default()
            },
            size: 3,
            claims: vec![
                "c-0-data".into(),
                "c-1-data".into(),
                "c-5-data".into(),
                "c-6-data".into(),
                "c-7-data".into(),
                "c-backups".into(),
            ],
        }
    }

    #[test]
    fn old_claims_go_only_once_the_restored_cluster_is_whole() {
        let whole = || {
            vec![
                member("c-5", true, false),
                member("c-6", true, false),
                member("c-7", true, false),
            ]
        };
        let mut v = growing(ClusterPhase::Running, whole());
        v.held_by_me = true;
        assert_eq!(next_growing_step(&v), GrowingStep::LiftHold);
        v.held_by_me = false;
        assert_eq!(
            next_growing_step(&v),
            GrowingStep::Finish {
                stale_claims: vec!["c-0-data".into(), "c-1-data".into()]
            }
        );
        let mut learning = whole();
        learning[2] = member("c-7", true, true);
        for v in [
            growing(ClusterPhase::Scaling, whole()),
            growing(ClusterPhase::Running, learning),
            growing(ClusterPhase::Running, whole()[..2].to_vec()),
            growing(
                ClusterPhase::Running,
                vec![
                    member("c-5", true, false),
                    member("c-6", false, false),
                    member("c-7", true, false),
                ],
            ),
        ] {
            assert_eq!(next_growing_step(&v), GrowingStep::WaitForCluster, "{v:?}");
        }
    }

    fn chosen(encrypted: bool) -> Chosen {
        Chosen {
            name: "b".into(),
            location: "s3://x/b.tar.gz.age".into(),
            sha256: None,
            revision: Some(7),
            completed: None,
            raw_size: 0,
            destination: None,
            encrypted,
        }
    }

    #[test]
    fn the_fetch_gets_the_identity_when_there_is_one_and_fails_early_only_when_it_must() {
        let secret = BackupEncryption {
            secret_name: "age".into(),
        };
        let s = Some(&secret);
        // Readable: mounted, encrypted or not (the fetch decides from the archive).
        for encrypted in [true, false] {
            assert_eq!(
                fetch_identity(s, Some(Ok(())), &chosen(encrypted)),
                Ok(Some("age".into()))
            );
        }
        // Unreadable: fails only an archive known to be encrypted, naming why.
        assert_eq!(
            fetch_identity(s, Some(Err("no identity".into())), &chosen(false)),
            Ok(None)
        );
        let why = fetch_identity(
            s,
            Some(Err("Secret ns/age has no identity".into())),
            &chosen(true),
        )
        .unwrap_err();
        assert!(
            why.contains("has no identity") && why.contains("not touched"),
            "{why}"
        );
        // None configured: fine for a plain archive, a clear failure for an encrypted one.
        assert_eq!(fetch_identity(None, None, &chosen(false)), Ok(None));
        let why = fetch_identity(None, None, &chosen(true)).unwrap_err();
        assert!(why.contains("spec.encryption.secretName"), "{why}");
    }

    fn report(point: Option<ouroboros_crds::sidecar::PointReached>) -> Option<String> {
        serde_json::to_string(&FetchReport {
            manifest: ouroboros_crds::sidecar::Manifest {
                revision: 10,
                sha256: "ab".into(),
                ..Default::default()
            },
            point,
        })
        .ok()
    }

    #[test]
    fn the_point_reached_and_what_the_chain_held_after_it_come_from_the_fetch_report() {
        let reached = ouroboros_crds::sidecar::PointReached {
            revision: 40,
            seen_ms: Some(1_800_000_000_000),
            applied: 30,
            chunks: 2,
            chain_end: 55,
            chain_end_seen_ms: None,
        };
        let p = reached_point(&[report(Some(reached))]).unwrap();
        assert_eq!(
            (p.revision, p.applied, p.chain_end, p.revisions_left_out),
            (40, 30, 55, 15)
        );
        assert_eq!(p.time.as_deref(), Some("2027-01-15T08:00:00Z"));
        let words = describe_point(&p);
        assert!(
            words.contains("15 later revisions, to 55") && words.contains("not restored"),
            "{words}"
        );
        let end = reached_point(&[report(Some(ouroboros_crds::sidecar::PointReached {
            chain_end: 40,
            ..reached
        }))])
        .unwrap();
        assert!(describe_point(&end).contains("the chain's last stored revision"));
        // A fetch that reports no point (or no report at all) restores nothing.
        for m in [report(None), None, Some("not json".into())] {
            let why = reached_point(&[m]).unwrap_err();
            assert!(why.contains("restore again"), "{why}");
        }
        // The manifest the copies are compared by still reads from a report with a point.
        let m: ouroboros_crds::sidecar::Manifest =
            serde_json::from_str(&report(Some(reached)).unwrap()).unwrap();
        assert_eq!(m.revision, 10);
    }
}
