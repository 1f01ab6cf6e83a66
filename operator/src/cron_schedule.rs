//! Cron schedules in UTC, as `spec.backup.schedule` and maintenance windows write them: one parser
//! and one reading of "the next time", so both fields refuse and fire alike.

use std::str::FromStr;

use croner::Cron;
use jiff::{SignedDuration, Timestamp, tz::TimeZone};

/// Parses `schedule`, naming `field` and the problem for a condition.
pub fn parse(field: &str, schedule: &str) -> Result<Cron, String> {
    let invalid = |why: String| format!("{field} {schedule:?} is not a valid cron schedule: {why}");
    check_steps(schedule).map_err(invalid)?;
    Cron::from_str(schedule.trim()).map_err(|e| invalid(e.to_string()))
}

/// Steps larger than their field's range (`*/61` minutes) are refused: a parser may accept them and
/// run once an hour where the user meant something else, and a silent reading is worse than a refusal.
fn check_steps(schedule: &str) -> Result<(), String> {
    const FIELDS: [(&str, u32); 5] = [
        ("minute", 59),
        ("hour", 23),
        ("day-of-month", 31),
        ("month", 12),
        ("day-of-week", 7),
    ];
    for ((name, max), field) in FIELDS.iter().zip(schedule.split_whitespace()) {
        for part in field.split(',') {
            if let Some((_, step)) = part.split_once('/') {
                match step.parse::<u32>() {
                    Ok(n) if (1..=*max).contains(&n) => {}
                    _ => return Err(format!("the {name} step {step:?} must be between 1 and {max}")),
                }
            }
        }
    }
    Ok(())
}

/// The first time the schedule fires after `after` (or at it, when `inclusive`).
pub fn next(cron: &Cron, after: Timestamp, inclusive: bool) -> Option<Timestamp> {
    cron.find_next_occurrence(&after.to_zoned(TimeZone::UTC), inclusive)
        .ok()
        .map(|z| z.timestamp())
}

/// The last time the schedule fired before `at` (or at it, when `inclusive`).
pub fn previous(cron: &Cron, at: Timestamp, inclusive: bool) -> Option<Timestamp> {
    cron.find_previous_occurrence(&at.to_zoned(TimeZone::UTC), inclusive)
        .ok()
        .map(|z| z.timestamp())
}

/// The length of the gap between firings that `now` falls in (from the last firing at or before it
/// to the next after it): what a backup's age is compared with, so an irregular schedule (weekdays
/// only) is judged by the gap it is in. `None` when the schedule never fired or never fires again.
pub fn interval_after(cron: &Cron, now: Timestamp) -> Option<SignedDuration> {
    let last = previous(cron, now, true)?;
    let next = next(cron, now, false)?;
    Some(next.duration_since(last))
}

/// Where `now` stands against windows that open at each time of `cron` and last `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAt {
    /// Inside the window that closes then.
    Open {
        /// When it closes.
        closes: Timestamp,
    },
    /// Between windows.
    Closed {
        /// When the next one opens (none if the schedule never fires again).
        opens: Option<Timestamp>,
    },
}

/// Whether `now` is inside a window: the last firing at or before `now` was less than `duration`
/// ago.
pub fn window_at(cron: &Cron, duration: SignedDuration, now: Timestamp) -> WindowAt {
    if let Some(opened) = previous(cron, now, true)
        && let Ok(closes) = opened.checked_add(duration)
        && now < closes
    {
        return WindowAt::Open { closes };
    }
    WindowAt::Closed {
        opens: next(cron, now, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_interval_is_the_gap_now_falls_in() {
        let hourly = parse("s", "0 * * * *").unwrap();
        let gap = |cron: &Cron, now: &str| interval_after(cron, at(now)).map(|d| d.as_secs());
        assert_eq!(gap(&hourly, "2026-12-07T10:30:00Z"), Some(3600));
        // At a firing, the gap that starts there.
        assert_eq!(gap(&hourly, "2026-12-07T10:00:00Z"), Some(3600));
        // Weekdays at 02:00: a Saturday is in the weekend's three-day gap, a Tuesday in a day's.
        let weekdays = parse("s", "0 2 * * 1-5").unwrap();
        assert_eq!(gap(&weekdays, "2026-12-05T12:00:00Z"), Some(3 * 86400));
        assert_eq!(gap(&weekdays, "2026-12-08T12:00:00Z"), Some(86400));
    }

    #[test]
    fn a_refusal_names_the_field() {
        // The steps' rules are tested through spec.backup.schedule (backups_tests.rs).
        let e = parse("spec.maintenance.defragmentation.window.schedule", "*/61 * * * *").unwrap_err();
        assert!(
            e.starts_with("spec.maintenance.defragmentation.window.schedule \"*/61 * * * *\""),
            "{e}"
        );
    }

    #[test]
    fn a_window_is_open_from_its_firing_for_its_duration() {
        let daily_2am = parse("w", "0 2 * * *").unwrap();
        let two_hours = SignedDuration::from_hours(2);
        // The opening instant is inside; the closing instant is not.
        assert_eq!(
            window_at(&daily_2am, two_hours, at("2026-12-06T02:00:00Z")),
            WindowAt::Open {
                closes: at("2026-12-06T04:00:00Z")
            }
        );
        assert_eq!(
            window_at(&daily_2am, two_hours, at("2026-12-06T03:59:59Z")),
            WindowAt::Open {
                closes: at("2026-12-06T04:00:00Z")
            }
        );
        assert_eq!(
            window_at(&daily_2am, two_hours, at("2026-12-06T04:00:00Z")),
            WindowAt::Closed {
                opens: Some(at("2026-12-07T02:00:00Z"))
            }
        );
        assert_eq!(
            window_at(&daily_2am, two_hours, at("2026-12-06T01:59:59Z")),
            WindowAt::Closed {
                opens: Some(at("2026-12-06T02:00:00Z"))
            }
        );
        // Saturdays only: a Sunday is closed until the next Saturday.
        let saturday = parse("w", "30 1 * * 6").unwrap();
        assert_eq!(
            window_at(&saturday, two_hours, at("2026-12-06T02:00:00Z")),
            WindowAt::Closed {
                opens: Some(at("2026-12-12T01:30:00Z"))
            }
        );
        assert!(matches!(
            window_at(&saturday, two_hours, at("2026-12-05T03:00:00Z")),
            WindowAt::Open { .. }
        ));
    }
}
