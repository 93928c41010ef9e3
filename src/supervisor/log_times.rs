//! When each part of a log was written, for `mirrorctl logs NAME --since 10m`. Services write
//! their logs themselves (stdout and stderr are the file), so no line carries a time; the
//! daemon's log watch, which stats every log once a second anyway, appends `TIME_MS LENGTH`
//! to `<log>.times` whenever a log has grown. Bytes past the length recorded at the last check
//! before T were written after it: `--since` is exact to the check interval (1 s). A log that
//! shrank (rotated, truncated) starts a new index.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An index past this size is thinned (every other entry kept): a log written to every second
/// for weeks keeps a bounded index at a coarser resolution.
const MAX_INDEX_BYTES: u64 = 512 * 1024;

pub fn index_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".times");
    PathBuf::from(name)
}

/// Records that `log` was `len` bytes at `at_ms` (it grew since `last_len`), or starts a new
/// index when it shrank.
pub fn record(log: &Path, last_len: u64, len: u64, at_ms: i64) -> io::Result<()> {
    let index = index_path(log);
    if len < last_len {
        let _ = fs::remove_file(&index);
    }
    if len == last_len {
        return Ok(());
    }
    if fs::metadata(&index).is_ok_and(|m| m.len() > MAX_INDEX_BYTES) {
        thin(&index)?;
    }
    let mut file = fs::OpenOptions::new().create(true).append(true).open(&index)?;
    writeln!(file, "{at_ms} {len}")
}

fn entries(index: &Path) -> Vec<(i64, u64)> {
    fs::read_to_string(index)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (at, len) = line.split_once(' ')?;
            Some((at.parse().ok()?, len.parse().ok()?))
        })
        .collect()
}

fn thin(index: &Path) -> io::Result<()> {
    let kept: String = entries(index)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, (at, len))| format!("{at} {len}\n"))
        .collect();
    let partial = index.with_extension("times.partial");
    fs::write(&partial, kept)?;
    fs::rename(partial, index)
}

/// Where the part of `log` written at or after `since_ms` starts: `Some(offset)` from the
/// index; `None` without an index (no daemon has watched this log since it last shrank).
pub fn offset_since(log: &Path, since_ms: i64) -> Option<u64> {
    let entries = entries(&index_path(log));
    // An index that knows more than the log holds was left from before a rotation no daemon
    // saw (a one-shot pass rotates too): it says nothing about this file.
    let length = fs::metadata(log).map_or(0, |m| m.len());
    if entries.last().is_some_and(|(_, len)| *len > length) {
        return None;
    }
    let first = entries.first()?;
    if first.0 > since_ms {
        // Everything the index knows is newer; what was there at its first entry may be older
        // or newer: shown (more, never less).
        return Some(0);
    }
    entries
        .iter()
        .rev()
        .find(|(at, _)| *at <= since_ms)
        .map(|(_, len)| *len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_part_written_since_a_time_starts_at_the_length_seen_just_before() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("web.log");
        std::fs::write(&log, [b'x'; 25]).unwrap();
        assert_eq!(offset_since(&log, 0), None, "no index");
        record(&log, 0, 10, 1_000).unwrap();
        record(&log, 10, 10, 2_000).unwrap(); // no growth: nothing recorded
        record(&log, 10, 25, 3_000).unwrap();
        assert_eq!(offset_since(&log, 500), Some(0));
        assert_eq!(offset_since(&log, 1_500), Some(10));
        assert_eq!(offset_since(&log, 3_000), Some(25));
        // Rotated: a new index.
        std::fs::write(&log, [b'x'; 4]).unwrap();
        record(&log, 25, 4, 4_000).unwrap();
        assert_eq!(offset_since(&log, 3_500), Some(0));
        assert_eq!(offset_since(&log, 4_500), Some(4));
        // Rotated while no daemon watched: the index is stale, not trusted.
        record(&log, 4, 30, 5_000).unwrap();
        assert_eq!(offset_since(&log, 6_000), None);
    }

    #[test]
    fn a_long_index_is_thinned_not_unbounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chatty.log");
        std::fs::write(&log, vec![b'x'; 40_000]).unwrap();
        for at in 0..40_000_u64 {
            record(&log, at, at + 1, at as i64).unwrap();
        }
        assert!(fs::metadata(index_path(&log)).unwrap().len() <= MAX_INDEX_BYTES + 64);
        let offset = offset_since(&log, 39_000).unwrap();
        assert!((38_000..=39_001).contains(&offset), "{offset}");
    }
}
