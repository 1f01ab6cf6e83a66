//! Naming of stored backups and the retention rule, shared by the operator (which prunes EtcdBackup
//! objects) and the sidecar (which prunes the store), so both always agree on what is kept.
//!
//! A stored backup is a pair: the archive `<time>-<backup>.tar.gz` (`.tar.zst` with the zstd codec;
//! `.age` appended when encrypted) and, written last, the manifest
//! `<time>-r<revision>-<backup>.manifest.json`. Names sort by time and then by zero-padded revision,
//! but listing never relies on string order: names are parsed and compared as values.

use jiff::{SignedDuration, Timestamp};

/// The time part of object names: UTC, to the second.
const STAMP: &str = "%Y%m%dT%H%M%SZ";
const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Appended to an archive's name when it is age-encrypted.
pub const ENCRYPTED_SUFFIX: &str = ".age";

/// A parsed manifest name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredName {
    /// When the backup started.
    pub time: Timestamp,
    /// The snapshot's revision.
    pub revision: u64,
    /// The EtcdBackup's name.
    pub backup: String,
}

impl StoredName {
    /// The manifest's object name.
    pub fn manifest(&self) -> String {
        format!(
            "{}-r{:020}-{}{MANIFEST_SUFFIX}",
            stamp(self.time),
            self.revision,
            self.backup
        )
    }

    /// The archive's object name, gzip and unencrypted (the name of every archive made before
    /// codecs and encryption existed).
    pub fn archive(&self) -> String {
        archive_name(self.time, &self.backup, ARCHIVE_SUFFIXES[0])
    }

    /// The names the archive may have: each codec's, unencrypted and encrypted.
    pub fn archives(&self) -> Vec<String> {
        ARCHIVE_SUFFIXES
            .iter()
            .flat_map(|suffix| {
                let plain = archive_name(self.time, &self.backup, suffix);
                let encrypted = format!("{plain}{ENCRYPTED_SUFFIX}");
                [plain, encrypted]
            })
            .collect()
    }

    /// Parses a manifest name; `None` for anything else (archives, temporary files, foreign objects).
    pub fn parse(name: &str) -> Option<StoredName> {
        let rest = name.strip_suffix(MANIFEST_SUFFIX)?;
        let (time, rest) = rest.split_once("-r")?;
        let (revision, backup) = rest.split_once('-')?;
        if revision.len() != 20 || backup.is_empty() {
            return None;
        }
        let time = jiff::civil::DateTime::strptime(STAMP, time)
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp();
        Some(StoredName {
            time,
            revision: revision.parse().ok()?,
            backup: backup.to_owned(),
        })
    }
}

fn stamp(t: Timestamp) -> String {
    t.strftime(STAMP).to_string()
}

/// The archive suffix of each codec: gzip's first (the default, and every older archive's).
pub const ARCHIVE_SUFFIXES: [&str; 2] = [".tar.gz", ".tar.zst"];

/// The archive's object name for a backup started at `start`, with its codec's `suffix` (one of
/// [`ARCHIVE_SUFFIXES`]).
pub fn archive_name(start: Timestamp, backup: &str, suffix: &str) -> String {
    format!("{}-{backup}{suffix}", stamp(start))
}

/// Whether `name` is an archive (of either codec, encrypted or not), as opposed to a manifest or
/// marker.
pub fn is_archive(name: &str) -> bool {
    let name = name.strip_suffix(ENCRYPTED_SUFFIX).unwrap_or(name);
    ARCHIVE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// What to keep. Both limits apply; neither ever removes the newest backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Keep at most this many.
    pub max_count: Option<usize>,
    /// Drop those older than this.
    pub max_age: Option<SignedDuration>,
}

/// Why a retention setting is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// `maxAge` is not a duration.
    #[error("retention.maxAge {0:?} is not a duration such as 72h, 7d or 30m")]
    MaxAge(String),
    /// `maxCount` is below one.
    #[error("retention.maxCount must be at least 1, got {0}")]
    MaxCount(i32),
}

impl Rules {
    /// The rules of a policy: `max_age` such as `7d12h` or `30m`.
    pub fn new(max_count: Option<i32>, max_age: Option<&str>) -> Result<Rules, RulesError> {
        let max_count = match max_count {
            None => None,
            Some(n) if n >= 1 => Some(usize::try_from(n).map_err(|_| RulesError::MaxCount(n))?),
            Some(n) => return Err(RulesError::MaxCount(n)),
        };
        let max_age = max_age
            .map(|s| parse_age(s).ok_or_else(|| RulesError::MaxAge(s.to_owned())))
            .transpose()?;
        Ok(Rules { max_count, max_age })
    }
}

/// `72h`, `7d`, `1d12h`, `30m`, `45s`.
pub fn parse_age(s: &str) -> Option<SignedDuration> {
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (digits.is_empty() && total > 0).then(|| SignedDuration::from_secs(total))
}

/// Indexes of `items` to delete. `key` gives each item's start time and revision; the newest (by
/// time, then revision) is always kept, then at most `max_count` newest and none older than `max_age`.
pub fn doomed<T>(
    items: &[T],
    key: impl Fn(&T) -> (Timestamp, u64),
    rules: Rules,
    now: Timestamp,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(key(&items[i])));
    let mut out: Vec<usize> = order
        .iter()
        .enumerate()
        .skip(1)
        .filter(|&(rank, &i)| {
            let too_many = rules.max_count.is_some_and(|n| rank >= n);
            let too_old = rules
                .max_age
                .is_some_and(|age| now.duration_since(key(&items[i]).0) > age);
            too_many || too_old
        })
        .map(|(_, &i)| i)
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn manifest_names_round_trip_and_sort_by_time_then_revision() {
        let a = StoredName {
            time: t("2026-11-21T10:00:00Z"),
            revision: 9,
            backup: "main-20261121-1000".into(),
        };
        assert_eq!(
            a.manifest(),
            "20261121T100000Z-r00000000000000000009-main-20261121-1000.manifest.json"
        );
        assert_eq!(StoredName::parse(&a.manifest()), Some(a.clone()));
        assert_eq!(a.archive(), "20261121T100000Z-main-20261121-1000.tar.gz");
        let b = StoredName {
            revision: 10,
            ..a.clone()
        };
        assert!(a.manifest() < b.manifest());
    }

    #[test]
    fn other_objects_are_not_manifests() {
        for name in [
            "20261121T100000Z-main.tar.gz",
            ".20261121T100000Z-r00000000000000000009-x.manifest.json.partial",
            "20261121T100000Z-r9-x.manifest.json",
            "garbage-r00000000000000000009-x.manifest.json",
            "20261121T100000Z-r00000000000000000009-.manifest.json",
        ] {
            assert_eq!(StoredName::parse(name), None, "{name}");
        }
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("72h"), Some(SignedDuration::from_hours(72)));
        assert_eq!(parse_age("1d12h"), Some(SignedDuration::from_hours(36)));
        assert_eq!(parse_age("30m"), Some(SignedDuration::from_mins(30)));
        for bad in ["", "7", "h", "7w", "0s", "-1d"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
        assert_eq!(
            Rules::new(Some(0), None),
            Err(RulesError::MaxCount(0)),
            "zero count is refused"
        );
        assert!(matches!(Rules::new(None, Some("1y")), Err(RulesError::MaxAge(_))));
    }

    fn items() -> Vec<(Timestamp, u64)> {
        // Deliberately not in order.
        vec![
            (t("2026-11-20T00:00:00Z"), 50),
            (t("2026-11-21T00:00:00Z"), 90),
            (t("2026-11-18T00:00:00Z"), 10),
            (t("2026-11-21T00:00:00Z"), 95),
            (t("2026-11-19T00:00:00Z"), 30),
        ]
    }

    #[test]
    fn max_count_keeps_the_newest_by_time_then_revision() {
        let rules = Rules::new(Some(2), None).unwrap();
        let gone = doomed(&items(), |x| *x, rules, t("2026-11-21T01:00:00Z"));
        assert_eq!(gone, vec![0, 2, 4]);
    }

    #[test]
    fn max_age_drops_old_ones() {
        let rules = Rules::new(None, Some("36h")).unwrap();
        let gone = doomed(&items(), |x| *x, rules, t("2026-11-21T01:00:00Z"));
        assert_eq!(gone, vec![2, 4]);
    }

    #[test]
    fn the_newest_survives_any_policy() {
        let rules = Rules::new(Some(1), Some("1s")).unwrap();
        let gone = doomed(&items(), |x| *x, rules, t("2027-01-01T00:00:00Z"));
        assert_eq!(gone, vec![0, 1, 2, 4], "index 3 (newest) kept");
        assert!(doomed::<(Timestamp, u64)>(&[], |x| *x, rules, t("2027-01-01T00:00:00Z")).is_empty());
    }

    #[test]
    fn no_rules_delete_nothing() {
        let gone = doomed(&items(), |x| *x, Rules::default(), t("2030-01-01T00:00:00Z"));
        assert!(gone.is_empty());
    }
}
