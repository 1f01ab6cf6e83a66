//! Prometheus metrics of the operator, served as text on `/metrics`.

use std::time::Instant;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `etcdcluster`, `etcdbackup` or `etcdrestore`.
    pub controller: &'static str,
}

/// Labels of reconcile failures; `error` is a fixed, low-cardinality name of the failed action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Which controller failed.
    pub controller: &'static str,
    /// What failed.
    pub error: &'static str,
}

/// Labels of the member gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    /// The cluster's `namespace` and `name`.
    #[prometheus(flatten)]
    pub cluster: ClusterLabels,
    /// `healthy`, `unhealthy` or `learner`.
    pub state: &'static str,
}

/// Labels of per-member metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberNameLabels {
    /// The cluster's `namespace` and `name`.
    #[prometheus(flatten)]
    pub cluster: ClusterLabels,
    /// The member.
    pub member: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Labels of the certificate expiry gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The cluster's `namespace` and `name`.
    #[prometheus(flatten)]
    pub cluster: ClusterLabels,
    /// The Secret.
    pub secret: String,
    /// `peer`, `server` or `operator-client`.
    pub purpose: &'static str,
}

/// Database metrics, per member.
#[derive(Debug)]
pub struct DatabaseMetrics {
    /// Size of the database file.
    pub size: Family<MemberNameLabels, Gauge>,
    /// Bytes of it in use.
    pub in_use: Family<MemberNameLabels, Gauge>,
    /// `1 - inUse/size`.
    pub fragmentation: Family<MemberNameLabels, FloatGauge>,
    /// Unix time of the member's last defragmentation by the operator.
    pub last_defragmentation: Family<MemberNameLabels, FloatGauge>,
    /// The quota the member's etcd runs with (`--quota-backend-bytes`).
    pub quota: Family<MemberNameLabels, Gauge>,
    /// Time each defragmentation took.
    pub defragmentation_duration: Family<ClusterLabels, Histogram, fn() -> Histogram>,
}

/// The labels naming an EtcdCluster, as kube-state-metrics names objects: `namespace` and `name`
/// (scrape them with `honorLabels: true`, so the target's own `namespace` does not replace it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The cluster's namespace.
    pub namespace: String,
    /// The cluster's name.
    pub name: String,
}

impl ClusterLabels {
    /// The labels of the cluster `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// Labels of the build information gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The operator's version.
    pub version: &'static str,
}

/// Backup metrics, per cluster.
#[derive(Debug)]
pub struct BackupMetrics {
    /// Unix time of the newest successful backup.
    pub last_success: Family<ClusterLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Compressed size of the newest successful backup.
    pub size: Family<ClusterLabels, Gauge>,
    /// Time from start to stored, of successful backups.
    pub duration: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    /// Backups that failed.
    pub failures: Family<ClusterLabels, Counter>,
    /// Restore drills that reached a verdict, by verdict.
    pub drills: Family<DrillLabels, Counter>,
    /// Unix time at which the newest verified backup's drill verified it.
    pub last_verified: Family<ClusterLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Seconds between two runs of `spec.backup.schedule`, for alerts on backups older than it.
    pub schedule_interval: Family<ClusterLabels, FloatGauge>,
    /// With continuous backups: Unix time before which every write is stored (the recovery point).
    pub recovery_point: Family<ClusterLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// With continuous backups: the period they are configured with, for alerts on a recovery
    /// point older than a few of them.
    pub continuous_period: Family<ClusterLabels, FloatGauge>,
}

/// Labels of restore drill metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillLabels {
    /// The cluster's `namespace` and `name`.
    #[prometheus(flatten)]
    pub cluster: ClusterLabels,
    /// `Verified`, `Failed` or `Inconclusive` ([`ouroboros_crds::sidecar::DrillOutcome::label`]).
    pub outcome: &'static str,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles run, by controller.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconciles that failed, by controller and failed action.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile duration in seconds, by controller.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// Members of each cluster by state.
    pub members: Family<MemberLabels, Gauge>,
    /// 1 while a cluster's `QuorumLost` condition is True.
    pub quorum_lost: Family<ClusterLabels, Gauge>,
    /// 1 while this replica holds the leader Lease (or runs without election), else 0.
    pub leader: Gauge,
    /// Backups.
    pub backups: BackupMetrics,
    /// Members' databases.
    pub database: DatabaseMetrics,
    /// End of validity of each certificate of `spec.tls`, as Unix time.
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    /// The members and certificates each cluster's series were recorded for, so that a deleted
    /// cluster's series can all be removed.
    recorded: std::sync::Mutex<std::collections::BTreeMap<ClusterLabels, Recorded>>,
}

/// What was recorded of one cluster, beyond the series its `namespace` and `name` alone label.
#[derive(Debug, Default)]
struct Recorded {
    members: std::collections::BTreeSet<String>,
    certificates: std::collections::BTreeSet<(String, &'static str)>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ouroboros");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        let members = Family::<MemberLabels, Gauge>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that returned an error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "cluster_members",
            "Members of each cluster by state",
            members.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The operator's build: 1, labelled with its version",
            build_info,
        );
        let quorum_lost = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_quorum_lost",
            "1 while a majority of the cluster's voters does not answer (its QuorumLost condition); an etcd alarm is not that",
            quorum_lost.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica is the acting leader (1) or a standby (0)",
            leader.clone(),
        );
        let backups = BackupMetrics {
            last_success: Family::default(),
            size: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0])
            }),
            failures: Family::default(),
            drills: Family::default(),
            last_verified: Family::default(),
            schedule_interval: Family::default(),
            recovery_point: Family::default(),
            continuous_period: Family::default(),
        };
        registry.register(
            "backup_recovery_point_timestamp_seconds",
            "With continuous backups: Unix time before which every write of each cluster is stored \
             (time() minus it is the data a disaster would lose)",
            backups.recovery_point.clone(),
        );
        registry.register(
            "backup_continuous_period_seconds",
            "spec.backup.continuous.period of each cluster in seconds (absent when continuous backups are off)",
            backups.continuous_period.clone(),
        );
        registry.register(
            "backup_schedule_interval_seconds",
            "Seconds between two runs of each cluster's spec.backup.schedule (absent without one)",
            backups.schedule_interval.clone(),
        );
        registry.register(
            "backup_drills",
            "Restore drills of backups that reached a verdict, by verdict (Verified, Failed, Inconclusive)",
            backups.drills.clone(),
        );
        registry.register(
            "backup_last_verified_timestamp_seconds",
            "Unix time at which a restore drill last verified a backup of each cluster",
            backups.last_verified.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time at which the newest successful backup of each cluster completed",
            backups.last_success.clone(),
        );
        registry.register(
            "backup_size_bytes",
            "Compressed size of the newest successful backup of each cluster",
            backups.size.clone(),
        );
        registry.register(
            "backup_duration_seconds",
            "Duration of successful backups, from start to stored and verified",
            backups.duration.clone(),
        );
        registry.register(
            "backup_failures",
            "Backups that ended Failed",
            backups.failures.clone(),
        );
        let database = DatabaseMetrics {
            size: Family::default(),
            in_use: Family::default(),
            fragmentation: Family::default(),
            last_defragmentation: Family::default(),
            quota: Family::default(),
            defragmentation_duration: Family::new_with_constructor(|| {
                Histogram::new([0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0])
            }),
        };
        registry.register(
            "member_db_size_bytes",
            "Size of each member's database file, as it last reported it",
            database.size.clone(),
        );
        registry.register(
            "member_db_quota_bytes",
            "The quota each member's etcd runs with (--quota-backend-bytes), at which it raises NOSPACE",
            database.quota.clone(),
        );
        registry.register(
            "member_db_size_in_use_bytes",
            "Bytes of each member's database file in use",
            database.in_use.clone(),
        );
        registry.register(
            "member_db_fragmentation_ratio",
            "Free fraction of each member's database file (1 - inUse/size), which defragmentation gives back",
            database.fragmentation.clone(),
        );
        registry.register(
            "member_last_defragmentation_timestamp_seconds",
            "Unix time at which the operator last defragmented each member",
            database.last_defragmentation.clone(),
        );
        registry.register(
            "defragmentation_duration_seconds",
            "Time one member's defragmentation took",
            database.defragmentation_duration.clone(),
        );
        let certificate_expiry = Family::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time at which each certificate of spec.tls (per Secret and purpose) stops being valid",
            Family::<CertificateLabels, Gauge>::clone(&certificate_expiry),
        );
        Self {
            certificate_expiry,
            database,
            backups,
            registry,
            reconciles,
            failures,
            reconcile_duration,
            members,
            quorum_lost,
            leader,
            recorded: Default::default(),
        }
    }
}

impl Metrics {
    fn recorded(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<ClusterLabels, Recorded>> {
        // A panic elsewhere while it was held leaves nothing half-written that matters here.
        self.recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The labels of `member` of `cluster`, noted so that its series go when the cluster does.
    fn member_labels(&self, cluster: &ClusterLabels, member: &str) -> MemberNameLabels {
        self.recorded()
            .entry(cluster.clone())
            .or_default()
            .members
            .insert(member.to_owned());
        MemberNameLabels {
            cluster: cluster.clone(),
            member: member.to_owned(),
        }
    }

    /// Notes that `cluster` exists with these `members` (each pass of its reconcile).
    pub fn record_cluster<'a>(&self, cluster: &ClusterLabels, members: impl Iterator<Item = &'a str>) {
        let mut recorded = self.recorded();
        let entry = recorded.entry(cluster.clone()).or_default();
        entry.members.extend(members.map(str::to_owned));
    }

    /// Records when a certificate of `cluster` (its Secret and purpose) stops being valid.
    pub fn record_certificate_expiry(
        &self,
        cluster: &ClusterLabels,
        secret: &str,
        purpose: &'static str,
        at: i64,
    ) {
        self.recorded()
            .entry(cluster.clone())
            .or_default()
            .certificates
            .insert((secret.to_owned(), purpose));
        self.certificate_expiry
            .get_or_create(&CertificateLabels {
                cluster: cluster.clone(),
                secret: secret.to_owned(),
                purpose,
            })
            .set(at);
    }

    /// Removes every series of the clusters not in `live` (deleted clusters).
    pub fn forget_clusters_except(&self, live: &std::collections::BTreeSet<ClusterLabels>) {
        let mut recorded = self.recorded();
        let gone: Vec<ClusterLabels> = recorded.keys().filter(|k| !live.contains(*k)).cloned().collect();
        for cluster in gone {
            let Some(r) = recorded.remove(&cluster) else {
                continue;
            };
            for state in ["healthy", "unhealthy", "learner"] {
                self.members.remove(&MemberLabels {
                    cluster: cluster.clone(),
                    state,
                });
            }
            self.quorum_lost.remove(&cluster);
            let b = &self.backups;
            b.last_success.remove(&cluster);
            b.size.remove(&cluster);
            b.duration.remove(&cluster);
            b.failures.remove(&cluster);
            b.last_verified.remove(&cluster);
            b.schedule_interval.remove(&cluster);
            b.recovery_point.remove(&cluster);
            b.continuous_period.remove(&cluster);
            for outcome in ouroboros_crds::sidecar::DrillOutcome::ALL {
                b.drills.remove(&DrillLabels {
                    cluster: cluster.clone(),
                    outcome: outcome.label(),
                });
            }
            self.database.defragmentation_duration.remove(&cluster);
            for member in r.members {
                let labels = MemberNameLabels {
                    cluster: cluster.clone(),
                    member,
                };
                let d = &self.database;
                d.size.remove(&labels);
                d.in_use.remove(&labels);
                d.fragmentation.remove(&labels);
                d.last_defragmentation.remove(&labels);
                d.quota.remove(&labels);
            }
            for (secret, purpose) in r.certificates {
                self.certificate_expiry.remove(&CertificateLabels {
                    cluster: cluster.clone(),
                    secret,
                    purpose,
                });
            }
        }
    }

    /// Records one member's database sizes.
    pub fn record_database(&self, cluster: &ClusterLabels, member: &str, size: i64, in_use: i64) {
        let labels = self.member_labels(cluster, member);
        self.database.size.get_or_create(&labels).set(size);
        self.database.in_use.get_or_create(&labels).set(in_use);
        let ratio = if size > 0 {
            1.0 - in_use as f64 / size as f64
        } else {
            0.0
        };
        self.database.fragmentation.get_or_create(&labels).set(ratio);
    }

    /// Records when `member` of `cluster` (`namespace/name`) was last defragmented, from the
    /// operator's record on its pod: read at every pass, so a restarted operator reports it too.
    pub fn record_last_defragmentation(&self, cluster: &ClusterLabels, member: &str, at: jiff::Timestamp) {
        let labels = self.member_labels(cluster, member);
        self.database
            .last_defragmentation
            .get_or_create(&labels)
            .set(at.as_millisecond() as f64 / 1000.0);
    }

    /// Records the quota `member` of `cluster` runs with.
    pub fn record_quota(&self, cluster: &ClusterLabels, member: &str, bytes: u64) {
        let labels = self.member_labels(cluster, member);
        self.database
            .quota
            .get_or_create(&labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Records the newest successful backup of `cluster` as its status records it: read at every
    /// pass, so a restarted operator (or a new leader) reports it before the next backup. Never moves
    /// the gauge back: a backup this process saw complete may be newer than status yet.
    pub fn record_last_backup(&self, cluster: &ClusterLabels, at: jiff::Timestamp) {
        let gauge = self.backups.last_success.get_or_create(cluster);
        let seconds = at.as_millisecond() as f64 / 1000.0;
        if seconds > gauge.get() {
            gauge.set(seconds);
        }
    }

    /// Records the interval of `cluster`'s backup schedule, or removes it when it has none.
    pub fn record_backup_schedule(&self, cluster: &ClusterLabels, interval: Option<f64>) {
        match interval {
            Some(seconds) => {
                self.backups.schedule_interval.get_or_create(cluster).set(seconds);
            }
            None => {
                self.backups.schedule_interval.remove(cluster);
            }
        }
    }

    /// Records continuous backups of `cluster`: their period and recovery point, or (`None`) that
    /// they are off.
    pub fn record_continuous(&self, cluster: &ClusterLabels, state: Option<(f64, Option<jiff::Timestamp>)>) {
        let b = &self.backups;
        match state {
            Some((period, point)) => {
                b.continuous_period.get_or_create(cluster).set(period);
                match point {
                    Some(t) => {
                        b.recovery_point
                            .get_or_create(cluster)
                            .set(t.as_millisecond() as f64 / 1000.0);
                    }
                    None => {
                        b.recovery_point.remove(cluster);
                    }
                }
            }
            None => {
                b.continuous_period.remove(cluster);
                b.recovery_point.remove(cluster);
            }
        }
    }

    /// Records how long a defragmentation of a member of `cluster` (`namespace/name`) took.
    pub fn record_defragmentation(&self, cluster: &ClusterLabels, took: std::time::Duration) {
        self.database
            .defragmentation_duration
            .get_or_create(cluster)
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a reconcile now and records its duration when the returned guard drops.
    pub fn start_reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }
}

/// Records a reconcile's duration on drop, so early returns are measured too.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_shows_up_in_the_exposition() {
        let m = Metrics::default();
        drop(m.start_reconcile("etcdcluster"));
        m.failures
            .get_or_create(&FailureLabels {
                controller: "etcdcluster",
                error: "list_members",
            })
            .inc();
        let text = m.render();
        assert!(
            text.contains(r#"ouroboros_reconciles_total{controller="etcdcluster"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ouroboros_reconcile_failures_total{controller="etcdcluster",error="list_members"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("ouroboros_reconcile_duration_seconds_count{controller=\"etcdcluster\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_last_backup_from_status_never_moves_the_gauge_back() {
        let m = Metrics::default();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let c = ClusterLabels::new("ns", "c");
        // A restarted operator learns the last backup from status...
        m.record_last_backup(&c, at("2026-12-06T10:00:00Z"));
        let series = r#"ouroboros_backup_last_success_timestamp_seconds{namespace="ns",name="c"} 1796551200"#;
        assert!(m.render().contains(series), "{}", m.render());
        // ...and a status older than what it saw complete does not move it back.
        m.record_last_backup(&c, at("2026-12-06T09:00:00Z"));
        assert!(m.render().contains(series));
        m.record_backup_schedule(&c, Some(3600.0));
        let interval = r#"ouroboros_backup_schedule_interval_seconds{namespace="ns",name="c"} 3600"#;
        assert!(m.render().contains(interval));
        m.record_backup_schedule(&c, None);
        assert!(!m.render().contains("ouroboros_backup_schedule_interval_seconds{"));
        m.record_continuous(&c, Some((10.0, Some(at("2026-12-06T10:00:00Z")))));
        let point =
            r#"ouroboros_backup_recovery_point_timestamp_seconds{namespace="ns",name="c"} 1796551200"#;
        assert!(m.render().contains(point), "{}", m.render());
        assert!(
            m.render()
                .contains(r#"ouroboros_backup_continuous_period_seconds{namespace="ns",name="c"} 10"#)
        );
        m.record_continuous(&c, None);
        assert!(
            !m.render()
                .contains("ouroboros_backup_recovery_point_timestamp_seconds{")
        );
        m.record_quota(&c, "c-0", 2 << 30);
        let quota = r#"ouroboros_member_db_quota_bytes{namespace="ns",name="c",member="c-0"} 2147483648"#;
        assert!(m.render().contains(quota));
        assert!(m.render().contains(r#"ouroboros_build_info{version="0.1.0"} 1"#));
    }

    #[test]
    fn a_deleted_clusters_series_are_all_removed_and_the_others_kept() {
        let m = Metrics::default();
        let gone = ClusterLabels::new("ns", "gone");
        let kept = ClusterLabels::new("ns", "kept");
        for c in [&gone, &kept] {
            m.record_cluster(c, ["m-0"].into_iter());
            m.record_database(c, "m-0", 10, 5);
            m.record_quota(c, "m-0", 100);
            m.record_last_backup(c, jiff::Timestamp::UNIX_EPOCH);
            m.record_certificate_expiry(c, "peer", "peer", 1);
            m.quorum_lost.get_or_create(c).set(0);
        }
        m.forget_clusters_except(&[kept.clone()].into_iter().collect());
        let text = m.render();
        assert!(!text.contains(r#"name="gone""#), "{text}");
        for series in [
            "ouroboros_member_db_size_bytes",
            "ouroboros_member_db_quota_bytes",
            "ouroboros_backup_last_success_timestamp_seconds",
            "ouroboros_certificate_expiry_timestamp_seconds",
            "ouroboros_cluster_quorum_lost",
        ] {
            assert!(
                text.contains(&format!(r#"{series}{{namespace="ns",name="kept""#)),
                "{series}: {text}"
            );
        }
    }
}
