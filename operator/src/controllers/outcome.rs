//! `Ready`, `Reconciling` and `Stalled` on one-shot objects (EtcdBackup, EtcdRestore), derived from
//! their phase in one place, so tools that know nothing of these resources can tell done from
//! failed from still running. kstatus (Flux, `kubectl wait`-style tools) reads only
//! `Reconciling=True` as in progress and `Stalled=True` as failed, and anything else as done, so
//! `Reconciling` must be `True` for as long as the object runs; `Ready` is what most people and
//! Argo CD health scripts look at.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use ouroboros_crds::{
    BackupPhase, EtcdBackupStatus, EtcdRestoreStatus, RestorePhase,
    condition_types::{READY, RECONCILING, STALLED},
};

use super::cluster::status::set_condition;

/// Where a one-shot object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Not finished; `phase` names where it is (`Pending`, `Running`, `Verifying`, ...).
    InProgress {
        phase: &'a str,
    },
    Succeeded,
    Failed,
}

/// The status of a one-shot object: where it is, why, and its conditions.
pub trait OneShotStatus {
    fn outcome(&self) -> Outcome<'static>;
    fn reason(&self) -> Option<&str>;
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

impl OneShotStatus for EtcdBackupStatus {
    fn outcome(&self) -> Outcome<'static> {
        match self.phase {
            Some(BackupPhase::Succeeded) => Outcome::Succeeded,
            Some(BackupPhase::Failed) => Outcome::Failed,
            Some(BackupPhase::Running) => Outcome::InProgress { phase: "Running" },
            Some(BackupPhase::Pending) | None => Outcome::InProgress { phase: "Pending" },
        }
    }
    fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl OneShotStatus for EtcdRestoreStatus {
    fn outcome(&self) -> Outcome<'static> {
        match self.phase {
            Some(RestorePhase::Succeeded) => Outcome::Succeeded,
            Some(RestorePhase::Failed) => Outcome::Failed,
            Some(RestorePhase::Pending) | None => Outcome::InProgress { phase: "Pending" },
            Some(RestorePhase::Verifying) => Outcome::InProgress { phase: "Verifying" },
            Some(RestorePhase::Restoring) => Outcome::InProgress { phase: "Restoring" },
            Some(RestorePhase::Growing) => Outcome::InProgress { phase: "Growing" },
        }
    }
    fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// `status` with its conditions set from its phase and reason, as every status write sends it.
pub fn with_outcome_conditions<S: OneShotStatus + Clone>(status: &S, generation: Option<i64>) -> S {
    let mut status = status.clone();
    let (outcome, message) = (status.outcome(), status.reason().unwrap_or_default().to_owned());
    set_outcome_conditions(
        status.conditions_mut(),
        outcome,
        &message,
        generation,
        jiff::Timestamp::now(),
    );
    status
}

/// Sets `Ready`, `Reconciling` and `Stalled` for `outcome`, with `message` (the status's reason) on
/// each, keeping each one's `lastTransitionTime` while its status holds.
pub fn set_outcome_conditions(
    conditions: &mut Vec<Condition>,
    outcome: Outcome<'_>,
    message: &str,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    let (ready, reconciling, stalled, reason) = match outcome {
        Outcome::InProgress { phase } => (false, true, false, phase),
        Outcome::Succeeded => (true, false, false, "Succeeded"),
        Outcome::Failed => (false, false, true, "Failed"),
    };
    for (type_, status) in [(READY, ready), (RECONCILING, reconciling), (STALLED, stalled)] {
        set_condition(
            conditions,
            type_,
            status,
            reason,
            message.to_owned(),
            generation,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(c: &'a [Condition], type_: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == type_).expect("condition")
    }

    #[test]
    fn running_then_succeeded_then_failed_is_read_as_progress_done_and_stalled() {
        let t0: jiff::Timestamp = "2026-12-06T18:00:00Z".parse().expect("time");
        let t1: jiff::Timestamp = "2026-12-06T18:00:05Z".parse().expect("time");
        let mut c = Vec::new();
        set_outcome_conditions(
            &mut c,
            Outcome::InProgress { phase: "Pending" },
            "queued",
            Some(1),
            t0,
        );
        set_outcome_conditions(
            &mut c,
            Outcome::InProgress { phase: "Running" },
            "streaming",
            Some(1),
            t1,
        );
        let ready = get(&c, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Running")
        );
        assert_eq!(ready.message, "streaming");
        // Still False: the transition time is when it first became False.
        assert_eq!(ready.last_transition_time.0, t0);
        assert_eq!(get(&c, STALLED).status, "False");
        // kstatus reads anything but Reconciling=True or Stalled=True as done.
        let reconciling = get(&c, RECONCILING);
        assert_eq!(
            (reconciling.status.as_str(), reconciling.reason.as_str()),
            ("True", "Running")
        );

        set_outcome_conditions(&mut c, Outcome::Succeeded, "stored", Some(1), t1);
        assert_eq!(get(&c, RECONCILING).status, "False");
        assert_eq!(get(&c, READY).status, "True");
        assert_eq!(get(&c, READY).last_transition_time.0, t1);
        assert_eq!(get(&c, STALLED).status, "False");

        let mut f = Vec::new();
        set_outcome_conditions(&mut f, Outcome::Failed, "the archive was refused", None, t0);
        assert_eq!(get(&f, READY).status, "False");
        let stalled = get(&f, STALLED);
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "Failed")
        );
        assert_eq!(stalled.message, "the archive was refused");
        assert_eq!(get(&f, RECONCILING).status, "False");
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn a_status_write_derives_the_conditions_from_its_phase_and_reason() {
        let r = EtcdRestoreStatus {
            phase: Some(RestorePhase::Growing),
            reason: Some("waiting for 3 members".into()),
            ..Default::default()
        };
        let c = with_outcome_conditions(&r, Some(2)).conditions;
        let reconciling = get(&c, RECONCILING);
        assert_eq!(
            (reconciling.status.as_str(), reconciling.reason.as_str()),
            ("True", "Growing")
        );
        assert_eq!(reconciling.message, "waiting for 3 members");
        assert_eq!(reconciling.observed_generation, Some(2));
        let b = EtcdBackupStatus {
            phase: Some(BackupPhase::Failed),
            ..Default::default()
        };
        assert_eq!(
            get(&with_outcome_conditions(&b, None).conditions, STALLED).status,
            "True"
        );
    }
}
