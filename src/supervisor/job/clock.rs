//! The host's wall clock for cron schedules: its offset from UTC, the next time a cron
//! expression matches in local time, and scheduler jobs made at the current offset.

use chrono::{DateTime, FixedOffset, Local, Offset, TimeZone, Utc};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use super::schedule::Tick;
use crate::report::now_ms;

/// The host's offset from UTC at `at_s` (seconds since the epoch), in seconds east; 0 for a
/// time chrono cannot represent.
pub(super) fn local_offset_secs(at_s: i64) -> i32 {
    Local
        .timestamp_opt(at_s, 0)
        .single()
        .map_or(0, |local| local.offset().local_minus_utc())
}

/// An offset as the fixed time zone cron runs in: whole minutes, the seconds cut off toward
/// zero (a zone is named `+hh:mm`). None beyond a day.
fn whole_minutes(secs: i32) -> Option<FixedOffset> {
    FixedOffset::east_opt(secs - secs % 60)
}

/// The first time after `after_ms` that `cron` matches on the host's clock.
pub(super) fn next_cron_ms(cron: &croner::Cron, after_ms: i64) -> Option<i64> {
    let after_s = after_ms.div_euclid(1000);
    if after_s < 0 {
        return None;
    }
    let zone = whole_minutes(local_offset_secs(after_s))?;
    let after = DateTime::from_timestamp(after_s, 0)?.with_timezone(&zone);
    let next = cron.find_next_occurrence(&after, false).ok()?;
    Some(next.timestamp_millis())
}

/// A scheduler job on `expr` (six fields) in the host's local time, at the current offset.
pub(super) fn local_cron_job<T>(expr: &str, tick: T) -> Result<Job, JobSchedulerError>
where
    T: FnMut(Uuid, JobScheduler) -> Tick + Send + Sync + 'static,
{
    let now_s = (now_ms() / 1000).max(0);
    let zone = whole_minutes(local_offset_secs(now_s)).unwrap_or(Utc.fix());
    Job::new_async_tz(expr, zone, tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_whole_minutes_and_cron_matches_in_them() {
        let secs = |zone: Option<FixedOffset>| zone.map(|z| z.local_minus_utc());
        assert_eq!(secs(whole_minutes(19_800)), Some(19_800), "+05:30");
        assert_eq!(secs(whole_minutes(-3 * 3600)), Some(-3 * 3600), "-03:00");
        assert_eq!(secs(whole_minutes(0)), Some(0), "+00:00");
        assert_eq!(secs(whole_minutes(-(3 * 3600 + 59))), Some(-3 * 3600), "toward zero");
        let zone = whole_minutes(19_800).unwrap();
        // 1970-01-01T00:00:00Z is 05:30 in +05:30: the next 06:00 there is 30 minutes later.
        let six_am: croner::Cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse("0 0 6 * * *")
            .unwrap();
        let epoch = DateTime::from_timestamp(0, 0).unwrap().with_timezone(&zone);
        let next = six_am.find_next_occurrence(&epoch, false).unwrap();
        assert_eq!(next.timestamp_millis(), 30 * 60 * 1000);
    }
}
