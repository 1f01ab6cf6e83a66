//! `spec.etcd` as etcd flags. The flags a member runs with are recorded on its pod
//! (`etcd.ouroboros.dev/settings`), so a member started with other settings is found and rolled.

use ouroboros_crds::{AutoCompactionMode, EtcdSettings, EtcdVersion};

/// The flags for `settings` on a member running `version`. etcd 3.6 renamed the corruption checks'
/// flags (the old names are deprecated there and gone in 3.7), so the name follows the version.
pub fn settings_args(settings: &EtcdSettings, version: EtcdVersion) -> Vec<String> {
    let mode = match settings.auto_compaction_mode {
        AutoCompactionMode::Periodic => "periodic",
        AutoCompactionMode::Revision => "revision",
    };
    let since_3_6 = version
        >= EtcdVersion {
            major: 3,
            minor: 6,
            patch: 0,
        };
    let check = &settings.corruption_check;
    let mut args = vec![
        format!("--quota-backend-bytes={}", settings.quota_backend_bytes),
        format!("--auto-compaction-mode={mode}"),
        format!(
            "--auto-compaction-retention={}",
            settings.auto_compaction_retention
        ),
        format!("--heartbeat-interval={}", settings.heartbeat_interval_millis),
        format!("--election-timeout={}", settings.election_timeout_millis),
        format!("--snapshot-count={}", settings.snapshot_count),
    ];
    // A member being defragmented stops serving clients instead of stalling them, so they go to
    // another member meanwhile.
    if since_3_6 {
        args.push(format!(
            "--feature-gates=InitialCorruptCheck={},StopGRPCServiceOnDefrag=true",
            check.initial
        ));
    } else {
        args.push(format!("--experimental-initial-corrupt-check={}", check.initial));
        // Added in 3.5.14: an older etcd refuses to start on a flag it does not know.
        if version
            >= (EtcdVersion {
                major: 3,
                minor: 5,
                patch: 14,
            })
        {
            args.push("--experimental-stop-grpc-service-on-defrag=true".to_owned());
        }
    }
    if !check.period.is_empty() {
        let flag = if since_3_6 {
            "corrupt-check-time"
        } else {
            "experimental-corrupt-check-time"
        };
        args.push(format!("--{flag}={}", check.period));
    }
    args
}

/// The annotation value recording `args`: one flag per line, readable with `kubectl describe`.
pub fn settings_annotation(args: &[String]) -> String {
    args.join("\n")
}

/// The quota a member runs with, from its pod's record.
pub fn recorded_quota(record: &str) -> Option<u64> {
    record
        .lines()
        .find_map(|l| l.strip_prefix("--quota-backend-bytes="))
        .and_then(|q| q.parse().ok())
}

/// Whether a member whose pod has no record (built by an operator from before `spec.etcd`) counts
/// as running the spec's settings: only while the spec keeps the defaults. Upgrading the operator
/// must not restart every member by itself; such a member takes the defaults' flags the next time
/// its pod is built, and any change to `spec.etcd` rolls it.
pub fn legacy_pod_current(settings: &EtcdSettings) -> bool {
    *settings == EtcdSettings::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> EtcdVersion {
        s.parse().unwrap()
    }

    #[test]
    fn the_defaults_compact_hourly_and_check_the_data_at_start() {
        let args = settings_args(&EtcdSettings::default(), v("3.6.16"));
        assert_eq!(
            args,
            [
                "--quota-backend-bytes=2147483648",
                "--auto-compaction-mode=periodic",
                "--auto-compaction-retention=1h",
                "--heartbeat-interval=100",
                "--election-timeout=1000",
                "--snapshot-count=10000",
                "--feature-gates=InitialCorruptCheck=true,StopGRPCServiceOnDefrag=true",
            ]
        );
    }

    #[test]
    fn etcd_3_5_gets_the_experimental_names() {
        let mut s = EtcdSettings::default();
        s.corruption_check.period = "12h".into();
        s.auto_compaction_mode = AutoCompactionMode::Revision;
        s.auto_compaction_retention = "5000".into();
        let args = settings_args(&s, v("3.5.35"));
        assert!(args.contains(&"--experimental-initial-corrupt-check=true".to_owned()));
        assert!(args.contains(&"--experimental-corrupt-check-time=12h".to_owned()));
        assert!(args.contains(&"--auto-compaction-mode=revision".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("--feature-gates")));
        assert!(args.contains(&"--experimental-stop-grpc-service-on-defrag=true".to_owned()));
        let args = settings_args(&s, v("3.6.0"));
        assert!(args.contains(&"--corrupt-check-time=12h".to_owned()));
        // 3.5.13 does not know the flag and would refuse to start.
        let args = settings_args(&s, v("3.5.13"));
        assert!(!args.iter().any(|a| a.contains("stop-grpc-service-on-defrag")));
    }

    #[test]
    fn the_quota_a_member_runs_is_read_back_from_its_record() {
        let s = EtcdSettings {
            quota_backend_bytes: 64 << 20,
            ..EtcdSettings::default()
        };
        let record = settings_annotation(&settings_args(&s, v("3.6.16")));
        assert_eq!(recorded_quota(&record), Some(64 << 20));
        assert_eq!(recorded_quota("--snapshot-count=5"), None);
    }

    #[test]
    fn a_pod_from_before_the_record_is_current_only_under_the_default_settings() {
        assert!(legacy_pod_current(&EtcdSettings::default()));
        let s = EtcdSettings {
            heartbeat_interval_millis: 150,
            ..EtcdSettings::default()
        };
        assert!(!legacy_pod_current(&s));
    }
}
