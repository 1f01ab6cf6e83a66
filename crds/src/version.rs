//! etcd versions: parsed once, compared as numbers, never as strings.

use std::{fmt, str::FromStr};

/// An etcd release, `MAJOR.MINOR.PATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtcdVersion {
    /// Major version; only 3 exists.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Patch version.
    pub patch: u64,
}

/// Why a version string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionError {
    /// Not of the form `3.6.16`.
    Syntax(String),
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionError::Syntax(s) => write!(f, "{s:?} is not an etcd version of the form 3.6.16"),
        }
    }
}

impl std::error::Error for VersionError {}

/// The schema pattern: the same rule as [`EtcdVersion::from_str`], enforced by the API server.
pub const VERSION_PATTERN: &str = r"^3\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$";

/// An image tag with `{version}` once in it and otherwise the characters an OCI tag allows, as the
/// API server checks `spec.imageTagFormat`.
pub const TAG_FORMAT_PATTERN: &str = r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)?\{version\}[A-Za-z0-9_.-]*$";

/// Whether `format` is an image tag format: what [`TAG_FORMAT_PATTERN`] admits and at most 100
/// characters (the CRD's bound), checked by hand for the operator's flag.
pub fn valid_tag_format(format: &str) -> bool {
    let allowed = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    // An OCI tag starts with a letter, a digit or '_' (a version starts with a digit).
    let starts_well = |s: &str| {
        s.chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    format.len() <= 100
        && format
            .split_once("{version}")
            .is_some_and(|(before, after)| starts_well(before) && allowed(before) && allowed(after))
}

impl FromStr for EtcdVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A leading `v` is what image tags carry; users copy them, so accept it.
        let trimmed = s.strip_prefix('v').unwrap_or(s);
        let v = semver::Version::parse(trimmed).map_err(|_| VersionError::Syntax(s.to_owned()))?;
        if v.major != 3 || !v.pre.is_empty() || !v.build.is_empty() {
            return Err(VersionError::Syntax(s.to_owned()));
        }
        Ok(Self {
            major: v.major,
            minor: v.minor,
            patch: v.patch,
        })
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl EtcdVersion {
    /// The `major.minor` pair, which is what etcd's upgrade rules are about.
    pub fn minor_line(&self) -> (u64, u64) {
        (self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_v_prefixed() {
        assert_eq!(
            "3.6.16".parse::<EtcdVersion>().unwrap(),
            EtcdVersion {
                major: 3,
                minor: 6,
                patch: 16
            }
        );
        assert_eq!("v3.5.35".parse::<EtcdVersion>().unwrap().minor, 5);
    }

    #[test]
    fn tag_formats_need_the_version_once_and_tag_characters() {
        for good in [
            "v{version}",
            "{version}-0",
            "{version}",
            "release_{version}.debian-12",
        ] {
            assert!(valid_tag_format(good), "{good}");
        }
        for bad in [
            "v3.6.0",
            "",
            "{version}:latest",
            "{version}{version}",
            "v{ version}",
            "{version}/x",
            "-{version}",
            ".{version}",
        ] {
            assert!(!valid_tag_format(bad), "{bad}");
        }
        assert!(!valid_tag_format(&format!("{}{{version}}", "a".repeat(92))));
    }

    #[test]
    fn rejects_other_shapes() {
        // "3.06.16": leading zeros are not semver, and the schema pattern refuses them too.
        for bad in [
            "",
            "3.6",
            "latest",
            "3.6.16-rc.0",
            "2.3.8",
            "4.0.0",
            "3.6.x",
            "3.06.16",
            "3.6.016",
        ] {
            assert!(bad.parse::<EtcdVersion>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn orders_numerically_not_lexically() {
        let a: EtcdVersion = "3.5.9".parse().unwrap();
        let b: EtcdVersion = "3.5.10".parse().unwrap();
        assert!(a < b);
    }
}
