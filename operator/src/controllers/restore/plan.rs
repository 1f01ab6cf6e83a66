//! What a restore in its Restoring phase does next, from what was observed: a pure function, one
//! step per reconcile, tested case by case. The order is the safety argument: the hold is taken
//! (atomically) before anything is touched, the seed's name is recorded before its pod exists, old
//! members are stopped (their claims kept) before the seed starts, and Growing is recorded only once
//! the seed serves the restored data.

use ouroboros_crds::{ClusterPhase, EtcdClusterStatus};

use ouroboros_crds::BackupEncryption;

use super::super::encryption::IDENTITY_KEY;
use crate::{
    backup_source::Chosen,
    vocabulary::{ordinal, pvc_name},
};

/// The seed member's pod, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedPod {
    /// Not created yet (or gone).
    Absent,
    /// Created, and the scheduler cannot place it; its message says why.
    Unschedulable(String),
    /// Created, not Ready yet.
    Starting,
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
    /// The seed's name, once recorded in status.
    pub seed: Option<String>,
    /// Names of the cluster's member pods.
    pub pods: Vec<String>,
    /// Names of the cluster's claims.
    pub claims: Vec<String>,
    /// The lowest ordinal a new member may take (recorded on the cluster).
    pub ordinal_floor: u32,
    /// The seed's pod, when a seed is recorded.
    pub seed_pod: SeedPod,
}

/// The one step of a Restoring reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoringStep {
    /// Another restore owns the cluster: fail without touching it.
    HeldByOther(String),
    /// Take the hold, on the cluster exactly as read (a concurrent restore loses the race).
    TakeHold,
    /// Record this name for the seed (its ordinal first, then the restore's status).
    ChooseSeed(String),
    /// Delete these member pods; their claims stay until the restored cluster is Available.
    StopOldMembers(Vec<String>),
    /// Create the seed's claim and pod.
    StartSeed(String),
    /// The seed's pod is starting.
    WaitForSeed,
    /// The seed's pod waits for a node: say why in status and wait (nothing is undone; the old
    /// members' claims are kept, and the seed starts once the scheduler can place it).
    SeedUnschedulable {
        /// The seed's name.
        seed: String,
        /// The scheduler's message.
        why: String,
    },
    /// The seed serves the restored data: record Growing (before the hold is lifted).
    Grow(String),
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
    let Some(seed) = &v.seed else {
        return RestoringStep::ChooseSeed(seed_name(v));
    };
    let old: Vec<String> = v.pods.iter().filter(|p| *p != seed).cloned().collect();
    if !old.is_empty() {
        return RestoringStep::StopOldMembers(old);
    }
    match &v.seed_pod {
        SeedPod::Absent => RestoringStep::StartSeed(seed.clone()),
        SeedPod::Unschedulable(why) => RestoringStep::SeedUnschedulable {
            seed: seed.clone(),
            why: why.clone(),
        },
        SeedPod::Starting => RestoringStep::WaitForSeed,
        SeedPod::Ready => RestoringStep::Grow(seed.clone()),
    }
}

/// The seed's name: past every ordinal in use by pods or claims (old claims stay until the end) and
/// every ordinal ever recorded, so a name never repeats.
fn seed_name(v: &RestoringView) -> String {
    let highest = v
        .pods
        .iter()
        .map(String::as_str)
        .chain(v.claims.iter().map(|c| c.trim_end_matches("-data")))
        .filter_map(|n| ordinal(&v.cluster, n))
        .max();
    let next = highest.map_or(0, |h| h + 1).max(v.ordinal_floor);
    format!("{}-{next}", v.cluster)
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

    fn held(seed: Option<&str>, pods: &[&str], seed_pod: SeedPod) -> RestoringView {
        RestoringView {
            restore: "r".into(),
            cluster: "c".into(),
            holder: Some("r".into()),
            growing_other: None,
            seed: seed.map(Into::into),
            pods: pods.iter().map(|p| p.to_string()).collect(),
            claims: vec![],
            ordinal_floor: 0,
            seed_pod,
        }
    }

    #[test]
    fn nothing_is_touched_before_the_hold_is_this_restores() {
        let mut v = held(None, &["c-0", "c-1"], SeedPod::Absent);
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
        let mut v = held(None, &["c-3"], SeedPod::Absent);
        v.holder = None;
        v.growing_other = Some("earlier".into());
        assert_eq!(
            next_restoring_step(&v),
            RestoringStep::HeldByOther("earlier".into())
        );
    }

    #[test]
    fn the_seed_takes_an_ordinal_past_every_pod_claim_and_record() {
        let mut v = held(None, &["c-0", "c-2"], SeedPod::Absent);
        v.claims = vec!["c-0-data".into(), "c-4-data".into(), "c-backups".into()];
        assert_eq!(next_restoring_step(&v), RestoringStep::ChooseSeed("c-5".into()));
        v.ordinal_floor = 9;
        assert_eq!(next_restoring_step(&v), RestoringStep::ChooseSeed("c-9".into()));
        let empty = held(None, &[], SeedPod::Absent);
        assert_eq!(
            next_restoring_step(&empty),
            RestoringStep::ChooseSeed("c-0".into())
        );
    }

    #[test]
    fn old_members_stop_before_the_seed_starts_and_the_seed_is_never_one_of_them() {
        let v = held(Some("c-5"), &["c-0", "c-5", "c-1"], SeedPod::Starting);
        assert_eq!(
            next_restoring_step(&v),
            RestoringStep::StopOldMembers(vec!["c-0".into(), "c-1".into()])
        );
    }

    #[test]
    fn the_seed_starts_then_grows_only_once_ready() {
        assert_eq!(
            next_restoring_step(&held(Some("c-5"), &[], SeedPod::Absent)),
            RestoringStep::StartSeed("c-5".into())
        );
        assert_eq!(
            next_restoring_step(&held(Some("c-5"), &["c-5"], SeedPod::Starting)),
            RestoringStep::WaitForSeed
        );
        assert_eq!(
            next_restoring_step(&held(Some("c-5"), &["c-5"], SeedPod::Ready)),
            RestoringStep::Grow("c-5".into())
        );
    }

    #[test]
    fn a_seed_the_scheduler_cannot_place_is_reported_and_never_replaced() {
        let why = "0/3 nodes are available: 1 node(s) didn't find available persistent volumes to bind";
        assert_eq!(
            next_restoring_step(&held(Some("c-5"), &["c-5"], SeedPod::Unschedulable(why.into()))),
            RestoringStep::SeedUnschedulable {
                seed: "c-5".into(),
                why: why.into()
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
}
