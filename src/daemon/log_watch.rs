//! Bounds running services' logs between passes: a stat per log every second, every
//! [`HOT_CHECK`] while one grows fast (a flood), and a rotation on a blocking thread only for a
//! log past its `maxSize`. Cheap at rest (the idle daemon's CPU budget is 0.1 %), quick to catch
//! a service that writes hundreds of megabytes a second. Each growth seen is also recorded in
//! the log's time index (`supervisor::log_times`), for `logs --since`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::source::DesiredState;

/// The check interval while no log grows fast.
pub const COLD_CHECK: Duration = Duration::from_secs(1);
/// The check interval while a log grows fast, and for a while after: `yes` writes ~1.4 GB/s
/// here, so a flooded log passes its bound by at most ~140 MB before a rotation.
pub const HOT_CHECK: Duration = Duration::from_millis(100);
/// How long checks stay frequent after the last fast growth.
const HOT_FOR: Duration = Duration::from_secs(30);

struct WatchedLog {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
    last_len: u64,
}

#[derive(Default)]
pub struct LogWatch {
    /// The state the list was made for (compared by pointer: rebuilt when another is in force).
    state: Option<Arc<DesiredState>>,
    logs: Vec<WatchedLog>,
    hot_until: Option<Instant>,
    rotating: Arc<AtomicBool>,
}

impl LogWatch {
    /// Checks the logs of the state in force; returns how long to wait before the next check.
    pub fn check(&mut self, state: &Arc<DesiredState>, state_dir: &Path) -> Duration {
        if !self.state.as_ref().is_some_and(|s| Arc::ptr_eq(s, state)) {
            // Every resync loads the state again: sizes already seen carry over, or each
            // reload would look like a flood.
            let seen: std::collections::HashMap<PathBuf, u64> =
                self.logs.drain(..).map(|log| (log.path, log.last_len)).collect();
            // Every log (its growth is timed for `logs --since`); rotated only with a bound.
            self.logs = crate::reconcile::log_limits(state, state_dir)
                .into_iter()
                .map(|(path, max_size, max_files)| WatchedLog {
                    last_len: seen.get(&path).copied().unwrap_or(0),
                    path,
                    max_size,
                    max_files,
                })
                .collect();
            self.state = Some(state.clone());
        }
        let now = Instant::now();
        let mut over = Vec::new();
        let now_ms = crate::report::now_ms();
        for log in &mut self.logs {
            let len = std::fs::metadata(&log.path).map_or(0, |m| m.len());
            if let Err(e) = crate::supervisor::log_times::record(&log.path, log.last_len, len, now_ms) {
                tracing::debug!(log = %log.path.display(), error = %e, "cannot record the log's time index");
            }
            // A quarter of the bound within one check: a flood, watch closely.
            if log.max_size > 0 && len > log.last_len.saturating_add(log.max_size / 4) {
                self.hot_until = Some(now + HOT_FOR);
            }
            log.last_len = len;
            if log.max_size > 0 && len >= log.max_size {
                over.push((log.path.clone(), log.max_size, log.max_files));
                log.last_len = 0;
                // Rotated: its times start again with what it holds after.
                let _ = std::fs::remove_file(crate::supervisor::log_times::index_path(&log.path));
            }
        }
        if !over.is_empty() && !self.rotating.swap(true, Ordering::AcqRel) {
            let rotating = self.rotating.clone();
            tokio::task::spawn_blocking(move || {
                for (path, max_size, max_files) in over {
                    if let Err(e) = crate::supervisor::rotate_running_log(&path, max_size, max_files) {
                        tracing::warn!(log = %path.display(), error = %e, "rotating a log failed");
                    }
                }
                rotating.store(false, Ordering::Release);
            });
        }
        match self.hot_until {
            Some(until) if now < until => HOT_CHECK,
            _ => COLD_CHECK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flooding_state() -> Arc<DesiredState> {
        let text = "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: flood}\nspec:\n  \
                    command: [\"yes\"]\n  logs: {maxSize: 1Mi, maxFiles: 2}\n";
        Arc::new(crate::source::load_texts([("flood.yaml", text.as_bytes())]).expect("a valid state"))
    }

    #[test]
    fn logs_are_watched_closely_during_a_flood_and_rarely_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let state = flooding_state();
        let mut watch = LogWatch::default();
        assert_eq!(watch.check(&state, dir.path()), COLD_CHECK, "at rest");
        // A quarter of the bound between two checks: a flood.
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("logs/flood.log"), vec![b'y'; 300 << 10]).unwrap();
        assert_eq!(watch.check(&state, dir.path()), HOT_CHECK, "a flood");
        watch.hot_until = Some(Instant::now());
        assert_eq!(watch.check(&state, dir.path()), COLD_CHECK, "no growth since");
        // The same state loaded again (every resync reloads it) does not make the watch hot.
        assert_eq!(watch.check(&flooding_state(), dir.path()), COLD_CHECK);
    }
}
