//! `spec.etcd` (the etcd settings users tune) and `spec.maintenance` (what the operator does to keep
//! the database small).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// etcd's default backend quota: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: i64 = 2 << 30;
/// The largest quota etcd recommends (it warns above it): 8 GiB.
pub const MAX_QUOTA_BACKEND_BYTES: i64 = 8 << 30;

/// etcd's own settings. Each change is rolled out one member at a time while the others are
/// healthy: a member whose data is on a claim is restarted on it (same member, same data), and a
/// member whose data lives with its pod (emptyDir, self-hosted) is replaced by a new member that
/// copies the data from the others first, as an upgrade does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.electionTimeoutMillis >= 5 * self.heartbeatIntervalMillis").message("electionTimeoutMillis must be at least five heartbeats (5 * heartbeatIntervalMillis)"))]
#[x_kube(validation = Rule::new("self.autoCompactionMode != 'Revision' || self.autoCompactionRetention.matches('^[0-9]+$')").message("with autoCompactionMode Revision, autoCompactionRetention is a number of revisions, for example '10000'"))]
#[x_kube(validation = Rule::new("self.autoCompactionMode != 'Periodic' || self.autoCompactionRetention.matches('^([0-9]+(s|m|h))+$')").message("with autoCompactionMode Periodic, autoCompactionRetention is a duration such as '1h' or '30m'"))]
pub struct EtcdSettings {
    /// Database size at which etcd raises the NOSPACE alarm and refuses writes
    /// (`--quota-backend-bytes`), in bytes. Default 2 GiB (etcd's); at most 8 GiB, etcd's
    /// recommended limit. The member's volume needs room for this plus the WAL and snapshots. The
    /// operator reports `DatabaseNearQuota` above 80 % and recovers from NOSPACE by itself
    /// (`spec.maintenance`).
    #[serde(default = "default_quota")]
    #[x_kube(validation = Rule::new("self >= 16777216 && self <= 8589934592").message("quotaBackendBytes must be between 16 MiB (16777216) and 8 GiB (8589934592)"))]
    pub quota_backend_bytes: i64,
    /// How old history is discarded (`--auto-compaction-mode`): `Periodic` (the default) keeps
    /// `autoCompactionRetention` worth of time, `Revision` keeps that many revisions.
    #[serde(default)]
    pub auto_compaction_mode: AutoCompactionMode,
    /// What compaction keeps (`--auto-compaction-retention`): a duration such as `1h` (the default)
    /// for `Periodic`, a number of revisions for `Revision`. Without compaction, history alone fills
    /// the database of a cluster whose keys churn, as Kubernetes' do.
    #[serde(default = "default_retention")]
    #[schemars(length(max = 32))]
    pub auto_compaction_retention: String,
    /// Raft heartbeat interval in milliseconds (`--heartbeat-interval`), default 100. Raise it
    /// toward the round-trip time between members when they are far apart.
    #[serde(default = "default_heartbeat")]
    #[x_kube(validation = Rule::new("self >= 10 && self <= 10000").message("heartbeatIntervalMillis must be between 10 and 10000"))]
    pub heartbeat_interval_millis: i32,
    /// Raft election timeout in milliseconds (`--election-timeout`), default 1000: how long a
    /// follower waits for the leader before it calls an election. At least five heartbeats, at most
    /// 50000 (etcd's limit).
    #[serde(default = "default_election")]
    #[x_kube(validation = Rule::new("self >= 50 && self <= 50000").message("electionTimeoutMillis must be between 50 and 50000"))]
    pub election_timeout_millis: i32,
    /// Applied entries between raft snapshots (`--snapshot-count`), default 10000 (etcd 3.6's).
    /// Lower uses less memory; higher makes slow followers less likely to need a whole snapshot.
    #[serde(default = "default_snapshot_count")]
    #[x_kube(validation = Rule::new("self >= 100").message("snapshotCount must be at least 100"))]
    pub snapshot_count: i64,
    /// Data corruption checks.
    #[serde(default)]
    pub corruption_check: CorruptionCheck,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        Self {
            quota_backend_bytes: default_quota(),
            auto_compaction_mode: AutoCompactionMode::default(),
            auto_compaction_retention: default_retention(),
            heartbeat_interval_millis: default_heartbeat(),
            election_timeout_millis: default_election(),
            snapshot_count: default_snapshot_count(),
            corruption_check: CorruptionCheck::default(),
        }
    }
}

fn default_quota() -> i64 {
    DEFAULT_QUOTA_BACKEND_BYTES
}
fn default_retention() -> String {
    "1h".to_owned()
}
fn default_heartbeat() -> i32 {
    100
}
fn default_election() -> i32 {
    1000
}
fn default_snapshot_count() -> i64 {
    10_000
}

/// How etcd discards old history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AutoCompactionMode {
    /// Keep a window of time.
    #[default]
    Periodic,
    /// Keep a number of revisions.
    Revision,
}

/// etcd's corruption checks. A member that fails one is replaced from the healthy majority; its
/// data is never used as a backup source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorruptionCheck {
    /// Before serving, a starting member compares its data's hash with its peers' and refuses to
    /// start when they differ (etcd's initial corrupt check). Default `true`.
    #[serde(default = "default_true")]
    pub initial: bool,
    /// Every member's data hash is compared this often while running (etcd's periodic corrupt
    /// check), as a duration such as `12h`; empty (the default) turns it off. Each check hashes the
    /// whole database on every member, so keep it rare for large databases.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = r"^(([0-9]+(s|m|h))+)?$"))]
    pub period: String,
}

impl Default for CorruptionCheck {
    fn default() -> Self {
        Self {
            initial: true,
            period: String::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// Keeping the database small.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceSpec {
    /// Defragmentation by threshold. Without it, members are defragmented only to recover from
    /// NOSPACE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defragmentation: Option<DefragmentationPolicy>,
}

/// When a member's database is defragmented: one member at a time, followers first and the leader
/// last after leadership has moved away, only while every other member is healthy, no learner is
/// catching up, no restore holds the cluster and no backup streams from that member. A member being
/// defragmented serves nothing until it is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefragmentationPolicy {
    /// Defragment a member once this percentage of its database file is free space
    /// (`100 * (1 - inUse/dbSize)`). Default 50.
    #[serde(default = "default_fragmentation")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 99").message("minFragmentationPercent must be between 1 and 99"))]
    pub min_fragmentation_percent: i32,
    /// ... and its database file is at least this large, in bytes. Default 100 MiB: defragmenting a
    /// small file gains little.
    #[serde(default = "default_min_db")]
    #[x_kube(validation = Rule::new("self >= 0").message("minDatabaseBytes must not be negative"))]
    pub min_database_bytes: i64,
    /// When defragmentation by threshold may start. Without it, whenever a member crosses the
    /// threshold. Recovery from NOSPACE never waits for a window: writes are refused until it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<MaintenanceWindow>,
}

/// Windows in which maintenance may start: each opens at a time of `schedule` and stays open for
/// `duration`. A defragmentation started inside a window runs to its end, and the members still
/// fragmented when a window closes wait for the next one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When each window opens, as a cron schedule in UTC with five fields (minute hour
    /// day-of-month month day-of-week), for example `0 2 * * *` (02:00 every day) or `30 1 * * 6`
    /// (01:30 on Saturdays). A schedule the operator cannot read turns defragmentation by
    /// threshold off, and the `Maintenance` condition says why.
    #[x_kube(validation = Rule::new("self.matches('^ *[^ ]+( +[^ ]+){4} *$')").message("window.schedule must have five fields: minute hour day-of-month month day-of-week"))]
    #[schemars(length(max = 128))]
    pub schedule: String,
    /// How long each window stays open, as a duration such as `2h` or `90m` (at least one minute).
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub duration: String,
}

fn default_fragmentation() -> i32 {
    50
}
fn default_min_db() -> i64 {
    100 << 20
}
