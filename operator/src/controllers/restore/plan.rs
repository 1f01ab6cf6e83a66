//! What a restore in its Restoring phase does next, from what was observed: a pure function, one
//! step per reconcile, tested case by case. The order is the safety argument: the hold is taken
//! (atomically) before anything is touched, the seed's name is recorded before its pod exists, old
//! members are stopped (their claims kept) before the seed starts, and Growing is recorded only once
//! the seed serves the restored data.

use crate::vocabulary::ordinal;

/// The seed member's pod, as observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedPod {
    /// Not created yet (or gone).
    Absent,
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
    match v.seed_pod {
        SeedPod::Absent => RestoringStep::StartSeed(seed.clone()),
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
}
