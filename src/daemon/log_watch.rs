//! Bounds running services' logs between passes: a stat per log every second, every
//! [`HOT_CHECK`] while one grows fast (a flood), and a rotation on a blocking thread only for a
//! log past its `maxSize`. Cheap at rest (the idle daemon's CPU budget is 0.1 %), quick to catch
//! a service that writes hundreds of megabytes a second.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::source::DesiredState;

/// The check interval while no log grows fast.
pub const COLD_CHECK: Duration = Duration::from_secs(1);
/// The check interval while a log grows fast, and for a while after.
pub const HOT_CHECK: Duration = Duration::from_millis(250);
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
            self.logs = crate::reconcile::log_limits(state, state_dir)
                .into_iter()
                .filter(|(_, max_size, _)| *max_size > 0)
                .map(|(path, max_size, max_files)| WatchedLog {
                    path,
                    max_size,
                    max_files,
                    last_len: 0,
                })
                .collect();
            self.state = Some(state.clone());
        }
        let now = Instant::now();
        let mut over = Vec::new();
        for log in &mut self.logs {
            let len = std::fs::metadata(&log.path).map_or(0, |m| m.len());
            // A quarter of the bound within one check: a flood, watch closely.
            if len > log.last_len.saturating_add(log.max_size / 4) {
                self.hot_until = Some(now + HOT_FOR);
            }
            log.last_len = len;
            if len >= log.max_size {
                over.push((log.path.clone(), log.max_size, log.max_files));
                log.last_len = 0;
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
