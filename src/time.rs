//! Times as PostgreSQL writes them (`--target-time`, a backup history file's `STOP
//! TIME`), compared as instants; and the calendar arithmetic every time format shares
//! (civil dates from and to Unix time).

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
    let secs =
        unix_from_civil(year, month, day, 0) + i64::from(hour) * 3600 + i64::from(minute) * 60
            - offset_secs;
    let whole = secs as f64 + seconds;
    (whole >= 0.0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(whole))
}

/// Civil date and time (UTC) of a Unix timestamp: (year, month, day, hour, minute, second).
pub(crate) fn civil_utc(unix_secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
    )
}

/// The Unix timestamp of a civil date and time (UTC): the inverse of [`civil_utc`].
pub(crate) fn unix_from_civil(year: i64, month: u32, day: u32, secs_of_day: u32) -> i64 {
    // Howard Hinnant's days-from-civil algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400 + i64::from(secs_of_day)
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

    #[test]
    fn civil_dates() {
        assert_eq!(civil_utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_utc(1_795_561_130), (2026, 11, 24, 22, 58, 50));
        assert_eq!(civil_utc(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_utc(-1), (1969, 12, 31, 23, 59, 59));
        for secs in [0i64, 951_782_400, 1_795_561_130, 4_102_444_800] {
            let (y, mo, d, h, mi, s) = civil_utc(secs);
            assert_eq!(unix_from_civil(y, mo, d, h * 3600 + mi * 60 + s), secs);
        }
    }
}
