//! Scheduled backups, as part of the cluster's reconcile: observe the cluster's EtcdBackups → decide
//! (pure: [`plan`]) whether a schedule slot is due and how healthy backups are → create at most one
//! EtcdBackup → the `BackupHealthy` condition and `lastScheduledBackupTime` go into the status.
//!
//! A scheduled EtcdBackup is named after its slot, so creating it is idempotent: an operator that
//! restarts between creating it and recording the slot finds it already there. Slots missed while the
//! operator was down are caught up with one backup, not one per slot.

use croner::Cron;
use jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, ObjectMeta, PostParams},
    runtime::events::EventType,
};
use ouroboros_crds::{
    BackupPhase, BackupPolicy, DrillPhase, EtcdBackup, EtcdBackupSpec, EtcdCluster, retention::Rules,
};

use std::time::Duration;

use ouroboros_crds::condition_types as ct;

use crate::context::Context;
use crate::vocabulary::{LABEL_CLUSTER, LABEL_SCHEDULED};

/// How many slots are counted when reporting missed ones; beyond this the count says "at least".
const MAX_COUNTED_SLOTS: u32 = 10_000;

/// Why observing or creating scheduled backups failed.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct BackupsError {
    /// What was attempted.
    pub action: &'static str,
    /// Cause.
    #[source]
    pub source: kube::Error,
}

/// What the schedule needs to know about one EtcdBackup of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Object name.
    pub name: String,
    /// Created by the schedule.
    pub scheduled: bool,
    /// Current phase (none until the backup controller has seen it).
    pub phase: Option<BackupPhase>,
    /// When the object was created.
    pub created: Timestamp,
    /// When it completed.
    pub completed: Option<Timestamp>,
    /// The status reason.
    pub reason: Option<String>,
    /// Where its restore drill is.
    pub drill: Option<DrillPhase>,
    /// Its revision.
    pub revision: i64,
    /// What its drill found.
    pub verification: Option<String>,
}

/// Tri-state condition status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown`.
    Unknown,
}

/// The `BackupHealthy` condition to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Status.
    pub status: Truth,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What to know or fix.
    pub message: String,
}

/// A scheduled backup to create now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Name of the EtcdBackup.
    pub name: String,
    /// The slot it serves.
    pub slot: Timestamp,
    /// Earlier slots since the last recorded one that get no backup of their own.
    pub missed: u32,
}

/// What the schedule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No `spec.backup`: nothing scheduled, and no condition.
    Off,
    /// The policy cannot be used; only the condition says why.
    Invalid(Health),
    /// The schedule runs.
    Scheduled {
        /// A backup to create now.
        due: Option<Due>,
        /// A slot skipped because the named scheduled backup has not finished.
        skipped_for: Option<String>,
        /// The slot to record as `lastScheduledBackupTime`.
        last_slot: Option<Timestamp>,
        /// The next slot, to wake up for.
        next: Timestamp,
        /// The condition.
        health: Health,
    },
}

/// Parses the schedule, naming the problem for the condition.
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    crate::cron_schedule::parse("spec.backup.schedule", schedule)
}

fn next_slot(cron: &Cron, after: Timestamp) -> Option<Timestamp> {
    crate::cron_schedule::next(cron, after, false)
}

/// The scheduled EtcdBackup's name for `slot`.
pub fn scheduled_name(cluster: &str, slot: Timestamp) -> String {
    format!("{cluster}-{}", slot.strftime("%Y%m%d-%H%M"))
}

/// Decides the schedule's action. `anchor` is the last recorded slot, or the cluster's creation when
/// none was recorded yet; `backups` are every EtcdBackup of the cluster.
pub fn plan(
    cluster: &str,
    policy: Option<&BackupPolicy>,
    anchor: Timestamp,
    recorded: bool,
    backups: &[BackupSummary],
    now: Timestamp,
) -> Action {
    let Some(policy) = policy else { return Action::Off };
    let invalid = |reason, message| {
        Action::Invalid(Health {
            status: Truth::False,
            reason,
            message,
        })
    };
    let cron = match parse_schedule(&policy.schedule) {
        Ok(c) => c,
        Err(message) => return invalid("InvalidSchedule", message),
    };
    if let Some(r) = &policy.retention
        && let Err(e) = Rules::new(r.max_count, r.max_age.as_deref())
    {
        return invalid("InvalidRetention", e.to_string());
    }
    let (Some(next), Some(first)) = (next_slot(&cron, now), next_slot(&cron, anchor)) else {
        return invalid(
            "InvalidSchedule",
            format!("spec.backup.schedule {:?} never fires", policy.schedule),
        );
    };
    let interval = next_slot(&cron, next).map_or(SignedDuration::from_hours(24), |n| n.duration_since(next));

    // Every slot in (anchor, now]: the newest gets a backup, the rest were missed.
    let mut latest = None;
    let mut count = 0u32;
    let mut slot = first;
    while slot <= now && count < MAX_COUNTED_SLOTS {
        latest = Some(slot);
        count += 1;
        match next_slot(&cron, slot) {
            Some(s) => slot = s,
            None => break,
        }
    }
    if count == MAX_COUNTED_SLOTS {
        latest = crate::cron_schedule::previous(&cron, now, true);
    }
    let running = backups
        .iter()
        .filter(|b| b.scheduled && !b.phase.is_some_and(BackupPhase::is_terminal))
        .max_by_key(|b| b.created);
    let (due, skipped_for) = match (latest, running) {
        (None, _) => (None, None),
        // This slot's own backup, seen before the slot was recorded (a stale read of the cluster).
        (Some(slot), Some(r)) if r.name == scheduled_name(cluster, slot) => (None, None),
        (Some(_), Some(r)) => (None, Some(r.name.clone())),
        (Some(slot), None) => (
            Some(Due {
                name: scheduled_name(cluster, slot),
                slot,
                missed: if recorded { count - 1 } else { 0 },
            }),
            None,
        ),
    };
    let health = health(backups, interval, anchor, recorded, due.is_some(), now);
    Action::Scheduled {
        due,
        skipped_for,
        last_slot: latest,
        next,
        health,
    }
}

fn health(
    backups: &[BackupSummary],
    interval: SignedDuration,
    anchor: Timestamp,
    recorded: bool,
    starting: bool,
    now: Timestamp,
) -> Health {
    let limit = interval * 2;
    let last_scheduled = backups
        .iter()
        .filter(|b| b.scheduled && b.phase.is_some_and(BackupPhase::is_terminal))
        .max_by_key(|b| b.created);
    let newest_success = backups
        .iter()
        .filter(|b| b.phase == Some(BackupPhase::Succeeded))
        .filter_map(|b| Some((b.completed?, b)))
        .max_by_key(|(t, _)| *t);
    if let Some(b) = last_scheduled.filter(|b| b.phase == Some(BackupPhase::Failed)) {
        return Health {
            status: Truth::False,
            reason: "BackupFailed",
            message: format!(
                "the last scheduled backup {} failed: {}",
                b.name,
                b.reason.as_deref().unwrap_or("no reason given")
            ),
        };
    }
    match newest_success {
        Some((t, b)) if now.duration_since(t) > limit => Health {
            status: Truth::False,
            reason: "BackupStale",
            message: format!(
                "the newest successful backup {} completed at {t}, more than twice the schedule interval ({}) ago",
                b.name,
                short(interval)
            ),
        },
        Some((t, b)) => Health {
            status: Truth::True,
            reason: "BackupsSucceeding",
            message: format!("the newest successful backup {} completed at {t}", b.name),
        },
        None if !recorded && now.duration_since(anchor) <= limit => Health {
            status: Truth::Unknown,
            reason: "AwaitingFirstBackup",
            message: "no backup has completed yet".into(),
        },
        None if starting
            || backups
                .iter()
                .any(|b| !b.phase.is_some_and(BackupPhase::is_terminal)) =>
        {
            Health {
                status: Truth::Unknown,
                reason: "AwaitingFirstBackup",
                message: "the first backup is running".into(),
            }
        }
        None => Health {
            status: Truth::False,
            reason: "NoSuccessfulBackup",
            message: "no backup of this cluster has succeeded".into(),
        },
    }
}

/// `6h`, `1d12h`, `15m`: how intervals are written in the spec.
fn short(d: SignedDuration) -> String {
    let mut secs = d.as_secs().max(0);
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// Every EtcdBackup of `cluster`.
pub async fn observe(ctx: &Context, cluster: &EtcdCluster) -> Result<Vec<BackupSummary>, BackupsError> {
    let name = cluster.name_any();
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| BackupsError {
            action: "listing EtcdBackups",
            source,
        })?;
    Ok(list
        .items
        .iter()
        .filter(|b| b.spec.cluster_name == name)
        .map(summary)
        .collect())
}

/// The schedule's view of one EtcdBackup.
pub fn summary(b: &EtcdBackup) -> BackupSummary {
    let status = b.status.clone().unwrap_or_default();
    BackupSummary {
        name: b.name_any(),
        scheduled: b.labels().get(LABEL_SCHEDULED).is_some_and(|v| v == "true"),
        phase: status.phase,
        created: b
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        completed: status.completion_time.and_then(|t| t.parse().ok()),
        reason: status.reason,
        drill: status.drill,
        revision: status.revision.unwrap_or(0),
        verification: status.verification_reason,
    }
}

/// The `BackupsVerified` condition: about the newest Succeeded backup whose drill reached a verdict
/// (`Inconclusive` ones say nothing either way and are skipped); `Unknown` while none has. `None`
/// when no backup was ever drilled or is waiting to be.
pub fn verification(backups: &[BackupSummary]) -> Option<Health> {
    let succeeded = || backups.iter().filter(|b| b.phase == Some(BackupPhase::Succeeded));
    let judged = succeeded()
        .filter(|b| matches!(b.drill, Some(DrillPhase::Verified | DrillPhase::Failed)))
        .max_by_key(|b| (b.revision, b.completed));
    let newest_verified = succeeded()
        .filter(|b| b.drill == Some(DrillPhase::Verified))
        .max_by_key(|b| (b.revision, b.completed))
        .map(|b| b.name.clone());
    let why = |b: &BackupSummary| b.verification.clone().unwrap_or_default();
    match judged {
        Some(b) if b.drill == Some(DrillPhase::Verified) => Some(Health {
            status: Truth::True,
            reason: "Verified",
            message: format!(
                "backup {} (revision {}) was restored by its drill: {}",
                b.name,
                b.revision,
                why(b)
            ),
        }),
        Some(b) => Some(Health {
            status: Truth::False,
            reason: "DrillFailed",
            message: format!(
                "backup {} (revision {}) failed its restore drill: {}; {}",
                b.name,
                b.revision,
                why(b),
                match &newest_verified {
                    Some(v) => format!("restores and recovery use {v}, the newest verified backup"),
                    None => "no backup of this cluster is verified".to_owned(),
                }
            ),
        }),
        None if succeeded().any(|b| b.drill.is_some()) => Some(Health {
            status: Truth::Unknown,
            reason: "NotYetDrilled",
            message: "no restore drill has reached a verdict yet".to_owned(),
        }),
        None => None,
    }
}

/// A Warning Event for `h`, unless the cluster's condition `type_` already says it.
async fn warn_once(ctx: &Context, cluster: &EtcdCluster, type_: &str, h: &Health) {
    if !super::already_reported(cluster, type_, h.reason, &h.message) {
        ctx.publish(
            &cluster.object_ref(&()),
            EventType::Warning,
            h.reason,
            h.message.clone(),
            None,
        )
        .await;
    }
}

fn set_condition(
    status: &mut ouroboros_crds::EtcdClusterStatus,
    type_: &str,
    h: &Health,
    generation: Option<i64>,
    now: Timestamp,
) {
    let truth = match h.status {
        Truth::True => "True",
        Truth::False => "False",
        Truth::Unknown => "Unknown",
    };
    super::status::set_condition_to(
        &mut status.conditions,
        type_,
        truth,
        h.reason,
        h.message.clone(),
        generation,
        now,
    );
}

/// Creates the EtcdBackup `name` of `cluster`, which takes the cluster's own destination,
/// encryption and drills when it runs; `Ok(false)` when one of that name exists already (an earlier
/// pass made it). `scheduled` labels it as the schedule's.
pub async fn create_backup(
    client: &kube::Client,
    cluster: &EtcdCluster,
    name: &str,
    scheduled: bool,
) -> Result<bool, kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let mut labels = std::collections::BTreeMap::from([(LABEL_CLUSTER.to_owned(), cluster.name_any())]);
    if scheduled {
        labels.insert(LABEL_SCHEDULED.to_owned(), "true".to_owned());
    }
    let backup = EtcdBackup {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: EtcdBackupSpec {
            cluster_name: cluster.name_any(),
            destination: None,
            // The cluster's own encryption applies when the backup starts.
            encryption: None,
            // The cluster's spec.backup.drills applies when the backup succeeds.
            drill: None,
        },
        status: None,
    };
    let api: Api<EtcdBackup> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), &backup).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the due backup; an existing one of that name means an earlier pass already did.
pub async fn create(ctx: &Context, cluster: &EtcdCluster, due: &Due) -> Result<(), BackupsError> {
    match create_backup(&ctx.client, cluster, &due.name, true).await {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(source) => {
            return Err(BackupsError {
                action: "creating the scheduled EtcdBackup",
                source,
            });
        }
    }
    let note = if due.missed > 0 {
        format!(
            "created {} for the slot at {}; {} earlier slot(s) were missed while the operator was away and get this one catch-up backup",
            due.name, due.slot, due.missed
        )
    } else {
        format!("created {} for the slot at {}", due.name, due.slot)
    };
    ctx.publish(
        &cluster.object_ref(&()),
        EventType::Normal,
        "BackupScheduled",
        note,
        None,
    )
    .await;
    Ok(())
}

/// Runs the backup schedule: creates the due EtcdBackup and puts `BackupHealthy` and the recorded
/// slot into `status`. Returns how long until the next slot.
pub async fn run(
    ctx: &Context,
    cluster: &EtcdCluster,
    status: &mut ouroboros_crds::EtcdClusterStatus,
    now: jiff::Timestamp,
) -> Result<Option<Duration>, super::Error> {
    let policy = cluster.spec.backup.as_ref();
    let summaries = match policy {
        Some(_) => observe(ctx, cluster).await?,
        None => Vec::new(),
    };
    let recorded = status
        .last_scheduled_backup_time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let created = cluster.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let action = plan(
        &cluster.name_any(),
        policy,
        recorded.unwrap_or(created),
        recorded.is_some(),
        &summaries,
        now,
    );
    let generation = cluster.metadata.generation;
    match verification(&summaries) {
        Some(h) => {
            if h.status == Truth::False {
                warn_once(ctx, cluster, ct::BACKUPS_VERIFIED, &h).await;
            }
            set_condition(status, ct::BACKUPS_VERIFIED, &h, generation, now);
        }
        None => status.conditions.retain(|c| c.type_ != ct::BACKUPS_VERIFIED),
    }
    let mut set_health = |h: &Health| set_condition(status, ct::BACKUP_HEALTHY, h, generation, now);
    match action {
        Action::Off => {
            status.conditions.retain(|c| c.type_ != ct::BACKUP_HEALTHY);
            Ok(None)
        }
        Action::Invalid(h) => {
            warn_once(ctx, cluster, ct::BACKUP_HEALTHY, &h).await;
            set_health(&h);
            Ok(None)
        }
        Action::Scheduled {
            due,
            skipped_for,
            last_slot,
            next,
            health,
        } => {
            if let Some(due) = &due {
                create(ctx, cluster, due).await?;
            }
            if let (Some(slot), Some(blocker)) = (last_slot, &skipped_for)
                && recorded != Some(slot)
            {
                ctx.publish(
                    &cluster.object_ref(&()),
                    EventType::Warning,
                    "BackupSkipped",
                    format!("skipped the slot at {slot}: scheduled backup {blocker} has not finished"),
                    None,
                )
                .await;
            }
            set_health(&health);
            if let Some(slot) = last_slot {
                status.last_scheduled_backup_time = Some(slot.to_string());
            }
            let until = next.duration_since(now).as_secs().max(0).unsigned_abs() + 1;
            Ok(Some(Duration::from_secs(until)))
        }
    }
}

#[cfg(test)]
#[path = "backups_tests.rs"]
mod tests;
