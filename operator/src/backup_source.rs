//! Which backup a restore (or automatic recovery) uses: pure functions over the EtcdBackups of a
//! namespace. `backupName` and `source.object` are taken as named; `latest` only within the target
//! cluster's lineage, so an earlier cluster of the same name is never restored over a new one.

use kube::ResourceExt;
use ouroboros_crds::{
    BackupPhase, DrillPhase, EtcdBackup, EtcdCluster, EtcdRestore, PointTarget, RestoreSource,
    restore::BackupObject, retention::ENCRYPTED_SUFFIX,
};

use crate::vocabulary::BACKUP_MOUNT;

/// The backup to restore, as the Verifying Job needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The EtcdBackup's name.
    pub name: String,
    /// Its archive location.
    pub location: String,
    /// Its recorded sha256.
    pub sha256: Option<String>,
    /// Its revision (unknown for `source.object` until the archive is read).
    pub revision: Option<i64>,
    /// When it completed (RFC 3339), when known.
    pub completed: Option<String>,
    /// Raw snapshot size, to size the snapshot claim (0 when unknown).
    pub raw_size: i64,
    /// The destination the EtcdBackup (or `source.object`) named, if any (else the cluster's).
    pub destination: Option<ouroboros_crds::BackupDestination>,
    /// Known to be age-encrypted (its EtcdBackup says so, or the object is named `.age`). The fetch
    /// reads the archive itself to decide; this only lets a missing key be named before it runs.
    pub encrypted: bool,
}

impl Chosen {
    pub fn describe(&self) -> String {
        match self.revision {
            Some(r) => format!("{} ({}, revision {r})", self.location, self.name),
            None => format!("{} ({})", self.location, self.name),
        }
    }
}

/// The archive `source.object` names, as a location URL the fetch understands.
pub fn object_location(o: &BackupObject) -> Result<String, String> {
    let key = o.key.trim_start_matches('/');
    if key.is_empty() || key.split('/').any(|p| p == "..") {
        return Err(format!(
            "source.object.key {:?} must name an archive, without '..'",
            o.key
        ));
    }
    match (&o.destination.s3, &o.destination.volume) {
        (Some(s3), None) => Ok(format!("s3://{}/{key}", s3.bucket)),
        (None, Some(v)) => Ok(format!("file://{}/{}/{key}", BACKUP_MOUNT, v.claim_name)),
        _ => Err("source.object.destination must set exactly one of s3 or volume".into()),
    }
}

/// Which backups of a cluster's name are its own, for `latest` and automatic recovery: a cluster that
/// was deleted and created again under the same name is a different database, and its old backups
/// must never be restored over the new one by a rule that only compares revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lineage {
    /// Backups recorded with one of these EtcdCluster UIDs: the cluster's own, and the one of the
    /// cluster its data was restored from (a restore bumps revisions far past the source's, so both
    /// compare by revision).
    Uids(Vec<String>),
    /// The cluster has no history of its own (it was created for this restore and never formed):
    /// the backups of whichever cluster of that name completed a backup last.
    NewestOfName,
}

impl Lineage {
    /// The lineage a restore into `cluster` draws `latest` from, given every EtcdBackup in its
    /// namespace: its own, unless it has no history yet (created for this restore, never formed).
    pub fn of(cluster: &EtcdCluster, backups: &[EtcdBackup]) -> Lineage {
        let status = cluster.status.as_ref();
        let fresh = status.is_none_or(|s| s.cluster_id.is_none() && s.restored_from.is_none());
        if fresh {
            return Lineage::NewestOfName;
        }
        Lineage::own(cluster, backups)
    }

    /// The cluster's own lineage, never another cluster's: what automatic recovery restores from,
    /// since it acts without anyone choosing.
    pub fn own(cluster: &EtcdCluster, backups: &[EtcdBackup]) -> Lineage {
        let ancestor = cluster
            .status
            .as_ref()
            .and_then(|s| s.restored_from.as_ref())
            .and_then(|from| {
                backups
                    .iter()
                    .find(|b| b.status.as_ref().and_then(|s| s.location.as_deref()) == Some(&from.location))
                    .and_then(|b| b.status.as_ref()?.cluster_uid.clone())
            });
        Lineage::Uids(cluster.uid().into_iter().chain(ancestor).collect())
    }

    pub fn describe(&self) -> String {
        match self {
            Lineage::Uids(uids) => format!("of its lineage (uid {})", uids.join(" or ")),
            Lineage::NewestOfName => "of the cluster that was backed up last under this name".into(),
        }
    }
}

/// Which backups `latest` and automatic recovery may take: a backup whose drill failed never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Only those a restore drill verified (the default).
    Verified,
    /// Any that was not shown broken (`allowUnverified`).
    Any,
}

impl Proof {
    /// The proof `allow_unverified` asks for.
    pub fn from_allow_unverified(allow: bool) -> Proof {
        if allow { Proof::Any } else { Proof::Verified }
    }
}

/// The newest Succeeded backup of `cluster`'s lineage with `proof` (what automatic recovery restores).
/// With [`Proof::Verified`], a newer backup whose drill has not ended makes this wait (an `Err` that
/// says so): it may well verify, and it holds more of the data.
pub fn choose_latest(
    cluster: &str,
    lineage: &Lineage,
    backups: &[EtcdBackup],
    proof: Proof,
) -> Result<Chosen, String> {
    let filters = Filters {
        not_after: None,
        max_revision: None,
        proof,
    };
    if let Some(why) = awaiting_drill(cluster, lineage, backups, filters) {
        return Err(why);
    }
    newest(cluster, lineage, backups, filters).map(chosen)
}

/// What narrows `latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filters {
    /// Completed at or before.
    pub not_after: Option<jiff::Timestamp>,
    /// Revision at or below.
    pub max_revision: Option<i64>,
    /// Verified only, or any not shown broken.
    pub proof: Proof,
}

fn drill_of(b: &EtcdBackup) -> Option<DrillPhase> {
    b.status.as_ref()?.drill
}

fn verified(b: &EtcdBackup) -> bool {
    b.status.as_ref().and_then(|s| s.verified) == Some(true)
}

fn shown_broken(b: &EtcdBackup) -> bool {
    b.status.as_ref().and_then(|s| s.verified) == Some(false)
}

/// Why `latest` with [`Proof::Verified`] should wait: the newest backup it could otherwise take is
/// newer than every verified one and its drill is still to run or running.
pub fn awaiting_drill(
    cluster: &str,
    lineage: &Lineage,
    backups: &[EtcdBackup],
    filters: Filters,
) -> Option<String> {
    if filters.proof != Proof::Verified {
        return None;
    }
    let any = Filters {
        proof: Proof::Any,
        ..filters
    };
    let newest_any = newest(cluster, lineage, backups, any).ok()?;
    if verified(newest_any) {
        return None;
    }
    drill_of(newest_any).filter(|d| !d.is_final()).map(|d| {
        format!(
            "waiting for the restore drill of {} (revision {}, {d:?}), the newest backup of {cluster}: \
             only verified backups are restored unless allowUnverified is set",
            newest_any.name_any(),
            newest_any.status.as_ref().and_then(|s| s.revision).unwrap_or(0),
        )
    })
}

fn succeeded_with_location(b: &EtcdBackup) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| s.phase == Some(BackupPhase::Succeeded) && s.location.is_some())
}

fn uid_of(b: &EtcdBackup) -> Option<&str> {
    b.status.as_ref()?.cluster_uid.as_deref()
}

fn newest<'a>(
    cluster: &str,
    lineage: &Lineage,
    backups: &'a [EtcdBackup],
    filters: Filters,
) -> Result<&'a EtcdBackup, String> {
    let Filters {
        not_after,
        max_revision,
        proof,
    } = filters;
    let of_name: Vec<&EtcdBackup> = backups
        .iter()
        .filter(|b| b.spec.cluster_name == cluster && succeeded_with_location(b))
        .collect();
    let last_completed_uid = of_name
        .iter()
        .max_by_key(|b| b.status.as_ref().and_then(|s| s.completion_time.clone()))
        .map(|b| uid_of(b));
    let ours = |b: &EtcdBackup| match lineage {
        Lineage::Uids(uids) => uid_of(b).is_some_and(|u| uids.iter().any(|x| x == u)),
        Lineage::NewestOfName => last_completed_uid == Some(uid_of(b)),
    };
    let (mine, others): (Vec<&EtcdBackup>, Vec<&EtcdBackup>) = of_name.into_iter().partition(|b| ours(b));
    let (proven, unproven): (Vec<&EtcdBackup>, Vec<&EtcdBackup>) =
        mine.into_iter().partition(|b| match proof {
            Proof::Verified => verified(b),
            Proof::Any => !shown_broken(b),
        });
    proven
        .into_iter()
        .filter(|b| {
            let s = b.status.as_ref();
            let completed = s
                .and_then(|s| s.completion_time.as_deref())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let revision = s.and_then(|s| s.revision).unwrap_or(0);
            not_after.is_none_or(|n| completed.is_some_and(|c| c <= n))
                && max_revision.is_none_or(|m| revision <= m)
        })
        .max_by_key(|b| {
            let s = b.status.as_ref();
            (
                s.and_then(|s| s.revision).unwrap_or(0),
                s.and_then(|s| s.completion_time.clone()),
            )
        })
        .ok_or_else(|| {
            let kind = match proof {
                Proof::Verified => "verified",
                Proof::Any => "Succeeded",
            };
            let mut why = format!(
                "no {kind} EtcdBackup of {cluster} {} matches the source",
                lineage.describe()
            );
            if !unproven.is_empty() {
                let names: Vec<String> = unproven.iter().take(3).map(|b| b.name_any()).collect();
                let broken = unproven.iter().filter(|b| shown_broken(b)).count();
                why.push_str(&format!(
                    "; {} backup(s) were left out ({}{}): {broken} failed their restore drill and are never \
                     restored by latest, the others were not verified (set allowUnverified to consider them, \
                     or name one in source.backupName)",
                    unproven.len(),
                    names.join(", "),
                    if unproven.len() > 3 { ", ..." } else { "" }
                ));
            }
            if !others.is_empty() {
                let names: Vec<String> = others.iter().take(3).map(|b| b.name_any()).collect();
                why.push_str(&format!(
                    "; {} backup(s) of an earlier cluster of that name, or without a recorded lineage, were \
                     not considered ({}{}): name one in source.backupName to restore it deliberately",
                    others.len(),
                    names.join(", "),
                    if others.len() > 3 { ", ..." } else { "" }
                ));
            }
            why
        })
}

/// A Succeeded EtcdBackup as a restore (or its drill) needs it.
pub fn chosen(b: &EtcdBackup) -> Chosen {
    let s = b.status.clone().unwrap_or_default();
    Chosen {
        name: b.name_any(),
        location: s.location.unwrap_or_default(),
        sha256: s.sha256,
        revision: s.revision,
        completed: s.completion_time,
        raw_size: s.raw_size.unwrap_or(0),
        destination: b.spec.destination.clone(),
        encrypted: s.encrypted,
    }
}

/// The backup this restore chose when it started (recorded in its status as `source`), found again
/// among `backups`: `latest` must not switch archives between polls because a newer backup appeared.
pub fn recorded_choice(
    restore: &EtcdRestore,
    recorded: Option<&str>,
    lineage: &Lineage,
    backups: &[EtcdBackup],
) -> Result<Chosen, String> {
    let Some(location) = recorded else {
        return choose(restore, lineage, backups);
    };
    if restore.spec.source.object.is_some() {
        // The object names its archive itself; nothing is chosen.
        return choose(restore, lineage, backups);
    }
    backups
        .iter()
        .find(|b| b.status.as_ref().and_then(|s| s.location.as_deref()) == Some(location))
        .map(chosen)
        .ok_or_else(|| format!("the EtcdBackup chosen when this restore started ({location}) is gone"))
}

/// What `source.latest` of `src` is narrowed by.
fn latest_filters(src: &ouroboros_crds::restore::RestoreSource) -> Result<Filters, String> {
    let not_after = match &src.not_after {
        Some(t) => Some(parse_time("source.notAfter", t)?),
        None => None,
    };
    // A point of a chain starts from a full backup at or before it.
    let point_time = match &src.time {
        Some(t) => Some(parse_time("source.time", t)?),
        None => None,
    };
    Ok(Filters {
        not_after: lower(not_after, point_time),
        max_revision: lower(src.max_revision, src.revision),
        proof: Proof::from_allow_unverified(src.allow_unverified == Some(true)),
    })
}

/// The lower of two bounds, either of which may be absent.
fn lower<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
        (a, b) => a.or(b),
    }
}

fn parse_time(field: &str, t: &str) -> Result<jiff::Timestamp, String> {
    t.parse::<jiff::Timestamp>()
        .map_err(|e| format!("{field} {t:?} is not an RFC 3339 time: {e}"))
}

/// Whether a restore of `cluster` without a target goes to the end of its backup's delta chain
/// (a user's and automatic recovery's alike): it takes continuous backups.
pub fn restores_along_chain(cluster: &EtcdCluster) -> bool {
    cluster
        .spec
        .backup
        .as_ref()
        .is_some_and(|b| b.continuous.is_some())
}

/// Where along its delta chain a restore takes the backup it chose: `source.revision` or
/// `source.time` when set, else the end of the chain when the cluster takes continuous backups
/// (`continuous`, [`restores_along_chain`]); none for `source.object` (its chain is not known by name) or a cluster without
/// continuous backups (the archive is restored as it is).
pub fn point_target(src: &RestoreSource, continuous: bool) -> Option<PointTarget> {
    if src.object.is_some() {
        return None;
    }
    let target = PointTarget {
        revision: src.revision,
        time: src.time.clone(),
    };
    (continuous || target.revision.is_some() || target.time.is_some()).then_some(target)
}

/// Whether the chosen backup can start the chain to `target`: it must be at or before the point
/// (a backup named by `backupName` may not be), and its revision must be known (where its chain
/// starts).
pub fn check_base(chosen: &Chosen, target: &PointTarget) -> Result<u64, String> {
    let Some(revision) = chosen.revision.and_then(|r| u64::try_from(r).ok()) else {
        return Err(format!(
            "{} records no revision, where its delta chain would start",
            chosen.describe()
        ));
    };
    if let Some(t) = target.revision.filter(|&t| t < chosen.revision.unwrap_or(0)) {
        return Err(format!(
            "{} is after source.revision {t}: restore an older backup, or use latest",
            chosen.describe()
        ));
    }
    if let Some(t) = &target.time {
        let at = parse_time("source.time", t)?;
        let completed = chosen
            .completed
            .as_deref()
            .and_then(|c| c.parse::<jiff::Timestamp>().ok());
        if completed.is_none_or(|c| c > at) {
            return Err(format!(
                "{} did not complete by source.time {t}, so it may hold later writes: restore an older \
                 backup, or use latest",
                chosen.describe()
            ));
        }
    }
    Ok(revision)
}

/// Why a `latest` restore should wait before choosing (see [`awaiting_drill`]); never for other
/// sources.
pub fn restore_awaits_drill(
    restore: &EtcdRestore,
    lineage: &Lineage,
    backups: &[EtcdBackup],
) -> Option<String> {
    let src = &restore.spec.source;
    if src.latest != Some(true) {
        return None;
    }
    let filters = latest_filters(src).ok()?;
    awaiting_drill(&restore.spec.cluster_name, lineage, backups, filters)
}

/// Picks the backup the source names among `backups` (pure): `backupName` and `object` exactly as
/// named, `latest` only within the target cluster's `lineage`.
pub fn choose(restore: &EtcdRestore, lineage: &Lineage, backups: &[EtcdBackup]) -> Result<Chosen, String> {
    let src = &restore.spec.source;
    if let Some(name) = &src.backup_name {
        let b = backups
            .iter()
            .find(|b| b.name_any() == *name)
            .ok_or_else(|| format!("EtcdBackup {name} does not exist"))?;
        if b.status.as_ref().and_then(|s| s.phase) != Some(BackupPhase::Succeeded) {
            return Err(format!(
                "EtcdBackup {name} has not succeeded; only complete backups restore"
            ));
        }
        if b.status.as_ref().and_then(|s| s.location.as_ref()).is_none() {
            return Err(format!("EtcdBackup {name} has no location"));
        }
        return Ok(chosen(b));
    }
    if src.latest == Some(true) {
        let filters = latest_filters(src)?;
        return newest(&restore.spec.cluster_name, lineage, backups, filters).map(chosen);
    }
    let Some(object) = &src.object else {
        return Err("the source names no backup: set backupName, object or latest".into());
    };
    Ok(Chosen {
        name: "source.object".into(),
        location: object_location(object)?,
        sha256: None,
        revision: None,
        completed: None,
        raw_size: 0,
        destination: Some(object.destination.clone()),
        encrypted: object.key.ends_with(ENCRYPTED_SUFFIX),
    })
}
