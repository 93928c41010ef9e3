//! Schedules: an agent's `every` or cron schedule as a tokio-cron-scheduler job whose ticks
//! make runs due, when it next comes due (for status), and whether a run came due while the
//! daemon was down (for catch-up).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_cron_scheduler::{Job, JobScheduler};
use uuid::Uuid;

use super::agents::{Agent, Shared};
use super::runner::JobRunner;
use super::{clock, JobError, Trigger};
use crate::report::now_ms;
use crate::spec::common::{CronExpr, Duration as SpecDuration, Schedule};

/// tokio-cron-scheduler counts intervals in whole seconds: rounded up, at least one.
pub(super) fn interval(every: SpecDuration) -> Duration {
    let every = every.as_std();
    Duration::from_secs((every.as_secs() + u64::from(every.subsec_nanos() > 0)).max(1))
}

/// The expression with a seconds field, as tokio-cron-scheduler requires.
fn with_seconds(expr: &CronExpr) -> String {
    if expr.as_str().split_whitespace().count() == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    }
}

/// Parsed as tokio-cron-scheduler parses it (seconds required; day of month AND day of week),
/// so catch-up and status agree with when the scheduler runs it.
fn scheduler_cron(expr: &CronExpr) -> Option<croner::Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(&with_seconds(expr))
        .ok()
}

pub(super) fn describe_schedule(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Every(every) => format!("every {every}"),
        Schedule::Cron(expr) => format!("cron `{expr}`"),
    }
}

/// Whether a run came due after `since_ms` and before `now_ms`.
pub(super) fn missed(schedule: &Schedule, since_ms: i64, now_ms: i64) -> bool {
    match schedule {
        Schedule::Every(every) => since_ms + interval(*every).as_millis() as i64 <= now_ms,
        Schedule::Cron(expr) => scheduler_cron(expr)
            .and_then(|cron| clock::next_cron_ms(&cron, since_ms))
            .is_some_and(|next| next <= now_ms),
    }
}

pub(super) fn next_run_ms(agent: &Agent, now: i64) -> Option<i64> {
    agent.scheduled?;
    match agent.spec.as_ref()?.schedule.as_ref()? {
        Schedule::Every(every) => {
            let first = agent.first_tick_ms?;
            let step = interval(*every).as_millis() as i64;
            Some(if first > now {
                first
            } else {
                first + ((now - first) / step + 1) * step
            })
        }
        Schedule::Cron(expr) => clock::next_cron_ms(&scheduler_cron(expr)?, now),
    }
}

pub(super) type Tick = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The scheduler job of one agent: each tick makes a run due.
pub(super) fn scheduler_job(
    shared: Weak<Shared>,
    name: &str,
    generation: u64,
    schedule: &Schedule,
) -> Result<Job, String> {
    let name = name.to_string();
    let tick = move |_job: Uuid, _scheduler: JobScheduler| -> Tick {
        let shared = shared.clone();
        let name = name.clone();
        Box::pin(async move {
            if let Some(shared) = shared.upgrade() {
                let _ = shared.due(&name, Some(generation), Trigger::Schedule);
            }
        })
    };
    match schedule {
        Schedule::Every(every) => Job::new_repeated_async(interval(*every), tick),
        Schedule::Cron(expr) => clock::local_cron_job(&with_seconds(expr), tick),
    }
    .map_err(|e| e.to_string())
}

impl JobRunner {
    /// Whether a scheduled run came due while the daemon was down.
    pub(super) fn missed_while_down(&self, name: &str, schedule: Option<&Schedule>) -> bool {
        let Some(schedule) = schedule else { return false };
        let agents = self.shared.agents();
        let Some(since) = agents
            .get(name)
            .and_then(|a| a.saved.last_scheduled_ms.or(a.saved.scheduled_since_ms))
        else {
            return false;
        };
        missed(schedule, since, now_ms())
    }

    pub(super) fn cron_offset_changed(&self, name: &str) -> bool {
        let agents = self.shared.agents();
        agents
            .get(name)
            .and_then(|a| a.cron_offset_secs)
            .is_some_and(|offset| offset != clock::local_offset_secs(now_ms() / 1000))
    }

    /// (Re)schedules an agent: its old scheduler job, if any, is removed. Returns what was done.
    pub(super) async fn schedule(&self, name: &str, schedule: Option<&Schedule>) -> Result<String, JobError> {
        self.unschedule(name).await?;
        let Some(schedule) = schedule else {
            return Ok("no schedule: runs only at load".into());
        };
        let generation = match self.shared.agents().get_mut(name) {
            Some(agent) => agent.generation,
            None => return Ok(String::new()),
        };
        let schedule_error = |message: String| JobError::Schedule {
            name: name.to_string(),
            message,
        };
        let job = scheduler_job(Arc::downgrade(&self.shared), name, generation, schedule).map_err(schedule_error)?;
        let now = now_ms();
        let id = self
            .scheduler
            .add(job)
            .await
            .map_err(|e| schedule_error(e.to_string()))?;
        if let Some(agent) = self.shared.agents().get_mut(name) {
            agent.scheduled = Some(id);
            agent.saved.scheduled_since_ms.get_or_insert(now);
            match schedule {
                // As the scheduler counts: from this second on.
                Schedule::Every(every) => {
                    agent.first_tick_ms = Some((now / 1000) * 1000 + interval(*every).as_millis() as i64);
                }
                Schedule::Cron(_) => agent.cron_offset_secs = Some(clock::local_offset_secs(now / 1000)),
            }
        }
        Ok(format!("scheduled {}", describe_schedule(schedule)))
    }

    pub(super) async fn unschedule(&self, name: &str) -> Result<(), JobError> {
        let job = match self.shared.agents().get_mut(name) {
            Some(agent) => {
                // Ticks of the old job already on their way find another generation.
                agent.generation += 1;
                agent.first_tick_ms = None;
                agent.cron_offset_secs = None;
                agent.scheduled.take()
            }
            None => None,
        };
        if let Some(id) = job {
            self.scheduler.remove(&id).await.map_err(|e| JobError::Unschedule {
                name: name.to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_runs_per_schedule() {
        let hour = 3_600_000;
        let now = 1_700_000_000_000;
        let hourly = Schedule::Every(SpecDuration::from_secs(3600));
        assert!(missed(&hourly, now - 2 * hour, now));
        assert!(missed(&hourly, now - hour, now));
        assert!(!missed(&hourly, now - hour + 1, now));
        // 2023-11-14T22:13:20Z: the next minute begins 40 s later (in any whole-minute time zone).
        let minutely: CronExpr = "* * * * *".parse().unwrap();
        let cron = scheduler_cron(&minutely).unwrap();
        assert_eq!(clock::next_cron_ms(&cron, now), Some(now + 40_000));
        assert!(missed(&Schedule::Cron(minutely.clone()), now, now + 40_000));
        assert!(!missed(&Schedule::Cron(minutely.clone()), now, now + 39_999));
        assert_eq!(with_seconds(&minutely), "0 * * * * *");
        assert_eq!(interval(SpecDuration::from_millis(1500)), Duration::from_secs(2));
        assert_eq!(interval(SpecDuration::from_millis(200)), Duration::from_secs(1));
    }
}
