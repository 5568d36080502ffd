//! Times as PostgreSQL writes them (`--target-time`, a backup history file's `STOP
//! TIME`), compared as instants.

use std::time::{Duration, SystemTime};

/// A time as `--target-time` accepts it, to compare with a sentinel's time: PostgreSQL's
/// `YYYY-MM-DD HH:MM:SS[.fff][+HH[:MM]|Z| UTC]` (no zone means UTC here).
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, rest) = text.split_at_checked(10)?;
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let rest = rest.strip_prefix([' ', 'T']).unwrap_or(rest);
    let (time, zone) = match rest.find(['+', '-', 'Z', ' ']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut hms = time.split(':');
    let hour: u32 = hms
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("0")
        .parse()
        .ok()?;
    let minute: u32 = hms.next().unwrap_or("0").parse().ok()?;
    let seconds: f64 = hms.next().unwrap_or("0").parse().ok()?;
    let zone = zone.trim();
    let offset_secs: i64 = match zone {
        "" | "Z" | "UTC" | "+00" | "-00" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits = zone.trim_start_matches(['+', '-']).replace(':', "");
            let (h, m) = match digits.len() {
                2 => (digits.parse::<i64>().ok()?, 0),
                4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let secs = crate::storage::unix_from_civil(year, month, day, 0)
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        - offset_secs;
    let whole = secs as f64 + seconds;
    (whole >= 0.0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times_parse_as_postgres_writes_them() {
        let epoch = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        assert_eq!(
            epoch(parse_timestamp("1970-01-02 00:00:00").unwrap()),
            86400.0
        );
        assert_eq!(
            epoch(parse_timestamp("1970-01-02 01:00:00+01").unwrap()),
            86400.0
        );
        assert_eq!(
            epoch(parse_timestamp("1970-01-01T23:30:00-00:30").unwrap()),
            86400.0
        );
        assert_eq!(
            epoch(parse_timestamp("2026-11-30 10:00:00.5Z").unwrap()),
            1796032800.5
        );
        assert_eq!(epoch(parse_timestamp("2000-03-01").unwrap()), 951868800.0);
        for bad in [
            "",
            "yesterday",
            "2026-13-01 00:00:00",
            "2026-11-30 10:00:00+5",
        ] {
            assert!(parse_timestamp(bad).is_none(), "{bad}");
        }
    }
}
