//! Automatic recovery from quorum loss (`spec.recovery.policy: Automatic`), decided purely from the
//! cluster, the time its `QuorumLost` condition turned True, its backups and its restores.
//!
//! The answer to one loss is one `EtcdRestore`, named after the moment quorum was lost, so a crash
//! between creating it and recording it cannot start a second one, and a restore that fails is not
//! retried with another backup behind the user's back: the condition says so and a human decides.

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use ouroboros_crds::{
    AutomaticRecovery, EtcdBackup, EtcdCluster, EtcdRestore, EtcdRestoreSpec, RecoveryPolicy, RestorePhase,
    RestoreSource, retention::parse_age,
};

use std::time::Duration;

use kube::{Api, Resource, runtime::events::EventType};
use ouroboros_crds::condition_types as ct;

use super::{Error, decide};
use crate::{backup_source, context::Context, objects::BuildError, vocabulary};

/// How long quorum must stay lost before `Automatic` restores, when `gracePeriod` is not set.
pub const DEFAULT_GRACE: SignedDuration = SignedDuration::from_mins(5);

/// What automatic recovery does on this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Quorum holds, or the policy is `Manual`.
    NotNeeded,
    /// Restoring a self-hosted cluster in place is not something the operator can do: the API server
    /// it would report to runs on the lost etcd.
    Unsupported {
        /// Why, in words.
        why: String,
    },
    /// A restore of this cluster is already running (started by a user or by an earlier loss).
    RestoreRunning {
        /// Its name.
        restore: String,
    },
    /// This loss was answered already; the restore's own status says how it went.
    AlreadyStarted {
        /// The restore started for it.
        restore: String,
    },
    /// Quorum is lost, but voters whose data is intact may answer again and give it back (pods
    /// restarting, members restarted on their claims): a restore now would throw their data away.
    DataMayReturn {
        /// Those voters.
        members: Vec<String>,
    },
    /// Quorum is lost, but not yet for the grace period.
    Waiting {
        /// When the restore starts unless quorum returns first.
        at: Timestamp,
    },
    /// There is nothing to restore from.
    NoBackup {
        /// Why, in words.
        why: String,
    },
    /// Start this restore.
    Start {
        /// Name of the EtcdRestore to create.
        restore: String,
        /// What goes on the cluster's status, naming the backup it restores.
        record: Box<AutomaticRecovery>,
    },
}

/// What the decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The cluster, with the status it had before this pass (for what was recorded).
    pub cluster: &'a EtcdCluster,
    /// When `QuorumLost` turned True, when it is True now.
    pub quorum_lost_since: Option<Timestamp>,
    /// Voters whose data is intact and who would give quorum back by answering again (from the
    /// cluster decision's `NoQuorum`); empty when none would.
    pub returning: &'a [String],
    /// EtcdBackups in the cluster's namespace.
    pub backups: &'a [EtcdBackup],
    /// EtcdRestores in the cluster's namespace.
    pub restores: &'a [EtcdRestore],
    /// The clock.
    pub now: Timestamp,
}

/// The grace period of `cluster` (the schema only admits durations the parser reads).
pub fn grace(cluster: &EtcdCluster) -> SignedDuration {
    cluster
        .spec
        .recovery
        .as_ref()
        .and_then(|r| r.grace_period.as_deref())
        .and_then(parse_age)
        .unwrap_or(DEFAULT_GRACE)
}

/// The restore that answers a loss of quorum at `since`: one name per loss.
pub fn restore_name(cluster: &str, since: Timestamp) -> String {
    format!("{cluster}-recovery-{}", since.as_second())
}

/// Decides what automatic recovery does now.
pub fn decide(i: &Input) -> Recovery {
    let c = i.cluster;
    let automatic = c.spec.recovery.as_ref().map(|r| r.policy) == Some(RecoveryPolicy::Automatic);
    let Some(since) = i.quorum_lost_since.filter(|_| automatic) else {
        return Recovery::NotNeeded;
    };
    if c.spec.self_hosted.is_some() {
        return Recovery::Unsupported {
            why: "a self-hosted cluster is restored with a temporary API server (docs/self-hosted.md), not in place"
                .into(),
        };
    }
    let name = restore_name(&c.name_any(), since);
    let recorded = c.status.as_ref().and_then(|s| s.automatic_recovery.as_ref());
    if recorded.is_some_and(|r| r.restore_name == name) || i.restores.iter().any(|r| r.name_any() == name) {
        return Recovery::AlreadyStarted { restore: name };
    }
    if !i.returning.is_empty() {
        // Doubt means wait: data that may come back is never overwritten by an older backup.
        return Recovery::DataMayReturn {
            members: i.returning.to_vec(),
        };
    }
    if let Some(holder) = c.annotations().get(vocabulary::RESTORE_HOLD) {
        return Recovery::RestoreRunning {
            restore: holder.clone(),
        };
    }
    if let Some(running) = i.restores.iter().find(|r| {
        r.spec.cluster_name == c.name_any()
            && !matches!(
                r.status.as_ref().and_then(|s| s.phase),
                Some(RestorePhase::Succeeded | RestorePhase::Failed)
            )
    }) {
        return Recovery::RestoreRunning {
            restore: running.name_any(),
        };
    }
    // Condition times are whole seconds, so the loss happened within the second after `since`:
    // counting from the end of that second never starts the restore inside the grace period.
    let at = Timestamp::from_second(since.as_second().saturating_add(1))
        .unwrap_or(since)
        .saturating_add(grace(c))
        .unwrap_or(since);
    if i.now < at {
        return Recovery::Waiting { at };
    }
    let allow_unverified = c.spec.recovery.as_ref().is_some_and(|r| r.allow_unverified);
    let backup = match backup_source::choose_latest(
        &c.name_any(),
        &backup_source::Lineage::own(c, i.backups),
        i.backups,
        backup_source::Proof::from_allow_unverified(allow_unverified),
    ) {
        Ok(b) => b,
        Err(why) => return Recovery::NoBackup { why },
    };
    let status = c.status.clone().unwrap_or_default();
    // The restore takes the backup along its delta chain (see `backup_source::point_target`).
    let along_chain = backup_source::restores_along_chain(c);
    let revisions_lost = status
        .last_seen_revision
        .filter(|_| !along_chain)
        .map(|seen| seen.saturating_sub(backup.revision.unwrap_or(0)).max(0));
    let record = AutomaticRecovery {
        restore_name: name.clone(),
        quorum_lost_time: since.to_string(),
        start_time: i.now.to_string(),
        backup_name: backup.name.clone(),
        backup_revision: backup.revision.unwrap_or(0),
        backup_time: backup.completed.clone(),
        last_seen_revision: status.last_seen_revision,
        last_seen_time: status.last_seen_revision_time.clone(),
        revisions_lost,
        along_chain,
    };
    Recovery::Start {
        restore: name,
        record: Box::new(record),
    }
}

/// The data-loss window of `r`, in words, for Events and the condition.
pub fn window(r: &AutomaticRecovery) -> String {
    let backup = format!(
        "backup {} (revision {}{})",
        r.backup_name,
        r.backup_revision,
        r.backup_time
            .as_deref()
            .map(|t| format!(", {t}"))
            .unwrap_or_default()
    );
    let seen_at = r
        .last_seen_time
        .as_deref()
        .map(|t| format!(" (at {t})"))
        .unwrap_or_default();
    if r.along_chain {
        let seen = r
            .last_seen_revision
            .map(|s| format!("; the newest revision seen before the loss was {s}{seen_at}"))
            .unwrap_or_default();
        return format!(
            "restoring {backup} and its continuous-backup delta chain to its end{seen}: what the chain \
             had not stored is lost; EtcdRestore {}'s status.point says where the chain ended",
            r.restore_name
        );
    }
    match (r.last_seen_revision, r.revisions_lost) {
        (Some(seen), Some(lost)) => format!(
            "restoring {backup}; the newest revision seen before the loss was {seen}{}: at least {lost} revisions written after the backup are lost",
            r.last_seen_time
                .as_deref()
                .map(|t| format!(" (at {t})"))
                .unwrap_or_default()
        ),
        _ => format!(
            "restoring {backup}; no revision was seen before the loss, so how much is lost is unknown"
        ),
    }
}

/// How often the newest revision seen is recorded: status writes wake the controller, so recording
/// every change would reconcile as often as clients write.
pub const SEEN_EVERY: SignedDuration = SignedDuration::from_secs(60);

/// The newest revision seen and when, given what was recorded and what members report now.
pub fn record_seen(
    recorded: (Option<i64>, Option<&str>),
    reported: Option<i64>,
    now: Timestamp,
) -> (Option<i64>, Option<String>) {
    let (rev, time) = recorded;
    let at = time.and_then(|t| t.parse::<Timestamp>().ok());
    let due = at.is_none_or(|at| now.duration_since(at) >= SEEN_EVERY);
    match reported {
        Some(r) if rev.is_none_or(|old| r > old) && due => (Some(r), Some(now.to_string())),
        _ => (rev, time.map(str::to_owned)),
    }
}

/// The EtcdRestore automatic recovery starts: restoring the named backup into `cluster`, labelled
/// with it and owned by it (deleted with it).
pub fn restore_object(cluster: &EtcdCluster, name: &str, backup: &str) -> Result<EtcdRestore, BuildError> {
    let owner = cluster.owner_ref(&()).ok_or(BuildError {
        kind: "EtcdRestore",
        source: serde::de::Error::custom("the EtcdCluster has no uid (it was not read from the API server)"),
    })?;
    let mut restore = EtcdRestore::new(
        name,
        EtcdRestoreSpec {
            cluster_name: cluster.name_any(),
            source: RestoreSource {
                backup_name: Some(backup.to_owned()),
                ..RestoreSource::default()
            },
            cluster_template: None,
            encryption: None,
        },
    );
    restore.metadata.namespace = cluster.namespace();
    restore.metadata.labels = Some([(vocabulary::LABEL_CLUSTER.to_owned(), cluster.name_any())].into());
    restore.metadata.owner_references = Some(vec![owner]);
    Ok(restore)
}

/// `spec.recovery.policy: Automatic`: once quorum has been lost for the grace period, starts one
/// EtcdRestore from the newest backup and records the data-loss window; says on the `QuorumLost`
/// condition what it will do or why it cannot. Returns when to look again.
pub async fn run(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &mut ouroboros_crds::EtcdClusterStatus,
    step: &decide::Step,
    now: jiff::Timestamp,
) -> Result<Option<Duration>, Error> {
    let automatic = cluster.spec.recovery.as_ref().map(|r| r.policy) == Some(RecoveryPolicy::Automatic);
    let lost = status
        .conditions
        .iter()
        .find(|c| c.type_ == ct::QUORUM_LOST && c.status == "True")
        .map(|c| c.last_transition_time.0);
    if !automatic || lost.is_none() {
        return Ok(None);
    }
    let ns = cluster.namespace().unwrap_or_default();
    let err = |action| move |source| Error::Recovery { action, source };
    let backups = Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&Default::default())
        .await
        .map_err(err("listing EtcdBackups"))?;
    let restores: Api<EtcdRestore> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = restores
        .list(&Default::default())
        .await
        .map_err(err("listing EtcdRestores"))?;
    let decision = decide(&Input {
        cluster,
        quorum_lost_since: lost,
        returning: step.quorum_may_return().unwrap_or_default(),
        backups: &backups.items,
        restores: &existing.items,
        now,
    });
    let (note, wake) = match decision {
        Recovery::NotNeeded => return Ok(None),
        Recovery::Unsupported { why } => (format!("Automatic recovery does not apply: {why}"), None),
        Recovery::RestoreRunning { restore } => (
            format!("EtcdRestore {restore} is restoring this cluster; automatic recovery waits for it"),
            None,
        ),
        Recovery::AlreadyStarted { restore } => (
            format!(
                "Automatic recovery started EtcdRestore {restore} for this loss and does not start another;                  if it failed, its status says why and a new EtcdRestore is up to you"
            ),
            None,
        ),
        Recovery::DataMayReturn { members } => (
            format!(
                "Automatic recovery waits: {} keep their data and would give quorum back by answering again",
                members.join(", ")
            ),
            None,
        ),
        Recovery::Waiting { at } => (
            format!("Automatic recovery restores from the newest backup at {at} unless quorum returns first"),
            Some(Duration::from_secs(
                at.duration_since(now).as_secs().max(0).unsigned_abs() + 1,
            )),
        ),
        Recovery::NoBackup { why } => (format!("Automatic recovery cannot start: {why}"), None),
        Recovery::Start { restore, record, .. } => {
            let object = restore_object(cluster, &restore, &record.backup_name)?;
            match restores.create(&Default::default(), &object).await {
                Ok(_) => {}
                // Created on an earlier pass that did not get to record it.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(err("creating the EtcdRestore")(e)),
            }
            let window = window(&record);
            ctx.publish(
                &cluster.object_ref(&()),
                EventType::Warning,
                "AutomaticRecoveryStarted",
                format!(
                    "quorum lost since {}: EtcdRestore {restore} is {window}",
                    record.quorum_lost_time
                ),
                None,
            )
            .await;
            status.automatic_recovery = Some(*record);
            (
                format!("Automatic recovery started EtcdRestore {restore}: {window}"),
                None,
            )
        }
    };
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == ct::QUORUM_LOST) {
        c.message = format!("{}. {note}", c.message.trim_end_matches('.'));
    }
    Ok(wake)
}

#[cfg(test)]
#[path = "recovery_tests.rs"]
mod tests;
