//! Times in allowed-signers options (`valid-after`, `valid-before`) as ssh-keygen reads them, and
//! commit times as messages print them; the calendar is chrono's, local time libc's mktime.

// Unsafe here: libc's mktime, since ssh-keygen reads local times with it and chrono resolves the
// repeated hour of a DST change differently. Each block says why it is sound (SAFETY).
#![allow(unsafe_code)]

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};

/// ssh-keygen's parse_absolute_time: `YYYYMMDD[HHMM[SS]]`, UTC with a `Z` or `UTC` suffix,
/// else local time. None when invalid (or at the epoch, which ssh-keygen reads as "unset").
pub(super) fn parse_time(text: &str) -> Option<i64> {
    let upper = text.to_ascii_uppercase();
    let (digits, utc) = match upper.strip_suffix("UTC").or_else(|| upper.strip_suffix('Z')) {
        Some(digits) => (digits, true),
        None => (upper.as_str(), false),
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| digits.get(range).and_then(|s| s.parse::<u32>().ok());
    let year = i32::try_from(field(0..4)?).ok()?;
    let (month, day) = (field(4..6)?, field(6..8)?);
    let hour = if digits.len() >= 12 { field(8..10)? } else { 0 };
    let minute = if digits.len() >= 12 { field(10..12)? } else { 0 };
    let second = if digits.len() == 14 { field(12..14)? } else { 0 };
    // chrono refuses month 13, February 30th, hour 24, second 60 and the like.
    let wall_clock = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, second)?;
    let seconds = if utc {
        wall_clock.and_utc().timestamp()
    } else {
        local_time(wall_clock)?
    };
    (seconds > 0).then_some(seconds)
}

/// Local wall-clock time to seconds since the epoch: libc's mktime (with `tm_isdst = -1`), as
/// ssh-keygen does. Not chrono's `Local`: for a time that occurs twice (clocks turned back)
/// glibc's mktime picks the earlier instant in some zones and the later in others, which no
/// fixed rule over chrono's two candidates reproduces.
fn local_time(wall_clock: NaiveDateTime) -> Option<i64> {
    // SAFETY: `tm` is plain old data; zeroed is a valid value for every field, and mktime only
    // reads and normalises the struct it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = wall_clock.year() - 1900;
    tm.tm_mon = i32::try_from(wall_clock.month0()).ok()?;
    tm.tm_mday = i32::try_from(wall_clock.day()).ok()?;
    tm.tm_hour = i32::try_from(wall_clock.hour()).ok()?;
    tm.tm_min = i32::try_from(wall_clock.minute()).ok()?;
    tm.tm_sec = i32::try_from(wall_clock.second()).ok()?;
    tm.tm_isdst = -1;
    // SAFETY: `tm` is a valid, exclusively borrowed struct for the duration of the call.
    let seconds = unsafe { libc::mktime(&mut tm) };
    (seconds != -1).then_some(seconds)
}

/// `2024-06-01 12:00:00 UTC`, for messages. A time chrono cannot represent (beyond year 262143)
/// is printed as its seconds since the epoch.
pub(super) fn format_utc(seconds: i64) -> String {
    match DateTime::from_timestamp(seconds, 0) {
        Some(time) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            time.year(),
            time.month(),
            time.day(),
            time.hour(),
            time.minute(),
            time.second()
        ),
        None => format!("{seconds} seconds since 1970-01-01 00:00:00 UTC"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-06-01 12:00:00 UTC.
    const COMMITTED_AT: i64 = 1_717_243_200;

    #[test]
    fn times_follow_ssh_keygen() {
        assert_eq!(parse_time("20240101Z"), Some(1_704_067_200));
        assert_eq!(parse_time("20240101utc"), Some(1_704_067_200));
        assert_eq!(parse_time("202406011200Z"), Some(COMMITTED_AT));
        assert_eq!(parse_time("20240601120001Z"), Some(COMMITTED_AT + 1));
        assert_eq!(parse_time("20240229Z"), Some(1_709_164_800));
        for invalid in [
            "",
            "Z",
            "2024010",
            "20240230Z",
            "20230229",
            "20240101 Z",
            "2024010112Z",
            "2024-1-01",
            "19700101Z",
        ] {
            assert_eq!(parse_time(invalid), None, "{invalid}");
        }
        assert!(parse_time("20240101").is_some(), "local time");
        assert_eq!(format_utc(COMMITTED_AT), "2024-06-01 12:00:00 UTC");
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59 UTC");
    }
}
