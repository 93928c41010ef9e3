//! The runner end to end: real processes on a real scheduler, recorded to a SQLite store.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::saved_state::{SavedAgent, SavedState};
use super::*;
use crate::report::now_ms;
use crate::spec::common::Duration as SpecDuration;
use crate::store::recorder::RecorderConfig;
use crate::store::{self, JobRun, Recorder, Store, StoreUrl};
use crate::supervisor::process;

const HOST: &str = "mini";
/// Every test process carries `MIRRORCTL_JOB_TEST=<its temp dir>`: how cleanup finds them.
const MARK: &str = "MIRRORCTL_JOB_TEST";

struct Harness {
    dir: tempfile::TempDir,
    recorder: Recorder,
    store: Box<dyn Store>,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::parse(&format!("sqlite://{}", dir.path().join("truth.db").display())).unwrap();
        let store = store::open(&url).await.unwrap();
        let config = RecorderConfig::new(dir.path().join("state"), HOST.into(), url);
        let (recorder, _) = Recorder::start(config).unwrap();
        Harness { dir, recorder, store }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn mark(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn spec(&self, script: &str) -> LaunchAgentSpec {
        LaunchAgentSpec {
            label: "ai.activemirror.test".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: [(MARK.to_string(), self.mark())].into(),
            ..LaunchAgentSpec::default()
        }
    }

    async fn runner(&self) -> JobRunner {
        JobRunner::start(self.state_dir(), HOST.into(), self.recorder.clone())
            .await
            .unwrap()
    }

    /// The recorded runs of `name`, oldest first.
    async fn runs(&self, name: &str) -> Vec<JobRun> {
        let report = self.recorder.flush().await;
        assert_eq!(report.store_error, None);
        let mut runs = self.store.job_runs(HOST, name, 1000).await.unwrap();
        runs.reverse();
        runs
    }

    async fn wait_runs(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&[JobRun]) -> bool,
    ) -> Vec<JobRun> {
        let deadline = Instant::now() + limit;
        loop {
            let runs = self.runs(name).await;
            if done(&runs) {
                return runs;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {runs:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn saved(&self) -> SavedState {
        serde_json::from_slice(&fs::read(crate::state::Layout::of(&self.state_dir()).launch_agents_state()).unwrap())
            .unwrap()
    }
}

impl Drop for Harness {
    /// Kills what a test left running (a failed assertion skips its shutdown): the runs
    /// recorded as running, and on Linux every process carrying the test's mark.
    fn drop(&mut self) {
        if let Ok(bytes) = fs::read(crate::state::Layout::of(&self.state_dir()).launch_agents_state()) {
            if let Ok(saved) = serde_json::from_slice::<SavedState>(&bytes) {
                for run in saved.agents.values().flat_map(|a| &a.running) {
                    process::stop(&run.identity, "SIGKILL", Duration::ZERO);
                }
            }
        }
        #[cfg(target_os = "linux")]
        for (pid, _) in marked(&self.mark()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn desired(name: &str, spec: &LaunchAgentSpec) -> DesiredJob {
    DesiredJob {
        name: name.into(),
        spec: spec.clone(),
        hash: serde_json::to_string(spec).unwrap(),
    }
}

fn every_second() -> Option<Schedule> {
    Some(Schedule::Every(SpecDuration::from_secs(1)))
}

/// Live (not zombie) processes carrying `mark`, with their command names.
#[cfg(target_os = "linux")]
fn marked(mark: &str) -> Vec<(i32, String)> {
    let entry = format!("{MARK}={mark}");
    let Ok(proc) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
        })
        .filter(|pid| !gone(*pid))
        .filter_map(|pid| {
            Some((
                pid,
                fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_string(),
            ))
        })
        .collect()
}

/// Whether a process has ended (a zombie counts as ended).
fn gone(pid: i32) -> bool {
    #[cfg(target_os = "linux")]
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().next();
        return state == Some("Z");
    }
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return true;
    };
    rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
}

async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pids(runner: &JobRunner, name: &str) -> Vec<i32> {
    runner
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.pids)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_second_each_run_is_recorded_with_exit_code_and_output() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("echo tick; echo tock; exit 3");
    spec.schedule = every_second();
    let synced_ms = now_ms();
    let changes = runner.sync(Some("c1"), vec![desired("ticker", &spec)]).await.unwrap();
    assert_eq!(
        changes,
        [JobChange {
            kind: JobChangeKind::Created,
            name: "ticker".into(),
            detail: "scheduled every 1s".into()
        }]
    );
    let runs = h
        .wait_runs("ticker", "two runs", Duration::from_secs(5), |r| r.len() >= 2)
        .await;
    // Whole seconds, checked every half second by the scheduler: two runs in ~2.5 s.
    assert!(runs[1].started_ms - synced_ms < 2800, "{runs:#?}");
    for run in &runs[..2] {
        assert_eq!(run.trigger, "schedule");
        assert_eq!((run.exit_code, run.signal), (Some(3), None));
        assert_eq!(run.outcome, "failed");
        assert_eq!(run.output_tail, "tick\ntock", "only this run's output");
        assert_eq!((run.host.as_str(), run.label.as_str()), (HOST, "ai.activemirror.test"));
        assert_eq!(run.commit.as_deref(), Some("c1"));
        assert!(run.ended_ms >= run.started_ms);
    }
    let status = runner.status();
    assert_eq!(status.len(), 1);
    let last = status[0].last_run.clone().unwrap();
    assert_eq!((last.exit_code, last.outcome), (Some(3), Outcome::Failed));
    let next = status[0].next_run_ms.unwrap();
    assert!(next > now_ms() - 1000 && next <= now_ms() + 1000, "{next}");
    runner.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_at_load_runs_at_once_in_its_own_working_dir() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("echo loaded; pwd");
    spec.run_at_load = true;
    let synced_ms = now_ms();
    let changes = runner.sync(None, vec![desired("loader", &spec)]).await.unwrap();
    assert!(
        changes[0]
            .detail
            .starts_with("no schedule: runs only at load; at load: started run ")
            && changes[0].detail.contains("(pid "),
        "{}",
        changes[0].detail
    );
    let runs = h
        .wait_runs("loader", "the run", Duration::from_secs(3), |r| !r.is_empty())
        .await;
    let run = &runs[0];
    assert!(run.started_ms - synced_ms < 500, "started at once");
    assert_eq!(
        (run.trigger.as_str(), run.outcome.as_str(), run.exit_code),
        ("at-load", "ok", Some(0))
    );
    let working_dir = h.state_dir().join("launch-agents/loader").canonicalize().unwrap();
    assert_eq!(run.output_tail, format!("loaded\n{}", working_dir.display()));
    assert_eq!(runner.status()[0].next_run_ms, None, "no schedule");

    // A run that cannot start is recorded as such.
    let mut broken = h.spec("");
    broken.command = vec!["no-such-program-mirrorctl".into()];
    broken.run_at_load = true;
    let changes = runner
        .sync(None, vec![desired("loader", &spec), desired("broken", &broken)])
        .await
        .unwrap();
    assert_eq!(
        changes[0].detail,
        "no schedule: runs only at load; at load: could not start: program `no-such-program-mirrorctl` not found on PATH"
    );
    let runs = h.runs("broken").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, "start-failed");
    assert_eq!(runs[0].detail, "program `no-such-program-mirrorctl` not found on PATH");
    runner.shutdown(true).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_stops_the_whole_process_group() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("sleep 30 & sleep 30");
    spec.run_at_load = true;
    spec.timeout = Some(SpecDuration::from_secs(1));
    runner.sync(None, vec![desired("slow", &spec)]).await.unwrap();
    let mut sleeps = Vec::new();
    eventually("both sleeps", Duration::from_secs(3), || {
        sleeps = marked(&h.mark())
            .into_iter()
            .filter(|(_, c)| c == "sleep")
            .map(|(p, _)| p)
            .collect();
        sleeps.len() == 2
    })
    .await;
    let runs = h
        .wait_runs("slow", "the run", Duration::from_secs(5), |r| !r.is_empty())
        .await;
    let run = &runs[0];
    assert_eq!(run.outcome, "timeout");
    assert_eq!(
        (run.exit_code, run.signal),
        (None, Some(15)),
        "ended by the stop signal"
    );
    assert!(run.detail.contains("timeout of 1s"), "{}", run.detail);
    let took = run.ended_ms - run.started_ms;
    assert!((1000..3000).contains(&took), "{took} ms");
    for pid in sleeps {
        assert!(gone(pid), "sleep {pid} of the group survived");
    }
    assert!(marked(&h.mark()).is_empty());
    assert!(runner.status()[0].pids.is_empty());
    runner.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forbid_skips_a_run_due_while_one_is_running() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("sleep 2; echo done");
    spec.schedule = every_second();
    spec.run_at_load = true;
    runner.sync(None, vec![desired("single", &spec)]).await.unwrap();
    let runs = h
        .wait_runs(
            "single",
            "a finished run and a skipped one",
            Duration::from_secs(6),
            |runs| {
                assert!(pids(&runner, "single").len() <= 1, "never two at once");
                runs.iter().any(|r| r.outcome == "ok") && runs.iter().any(|r| r.outcome == "skipped")
            },
        )
        .await;
    let first = &runs[0];
    assert_eq!((first.trigger.as_str(), first.outcome.as_str()), ("at-load", "ok"));
    assert_eq!(first.output_tail, "done");
    for skipped in runs.iter().filter(|r| r.outcome == "skipped") {
        assert_eq!(skipped.trigger, "schedule");
        assert!(skipped.started_ms >= first.started_ms && skipped.started_ms <= first.ended_ms);
        assert!(skipped.detail.contains("is still running"), "{}", skipped.detail);
    }
    assert!(runner.status()[0].last_skipped_ms.is_some());
    runner.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_lets_runs_overlap() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("sleep 1.7");
    spec.schedule = every_second();
    spec.run_at_load = true;
    spec.concurrency = Concurrency::Allow;
    runner.sync(None, vec![desired("many", &spec)]).await.unwrap();
    eventually("two runs at once", Duration::from_secs(3), || {
        pids(&runner, "many").len() == 2
    })
    .await;
    runner.shutdown(true).await;
    let runs = h.runs("many").await;
    assert!(runs.len() >= 2, "{runs:#?}");
    assert!(runs[1].started_ms < runs[0].ended_ms, "overlapping: {runs:#?}");
    assert!(runs.iter().all(|r| r.outcome != "skipped"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_stops_the_running_run_then_starts_the_new_one() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("sleep 30");
    spec.schedule = every_second();
    spec.run_at_load = true;
    spec.concurrency = Concurrency::Replace;
    runner.sync(None, vec![desired("fresh", &spec)]).await.unwrap();
    let first = pids(&runner, "fresh");
    assert_eq!(first.len(), 1);
    let runs = h
        .wait_runs("fresh", "the replaced run", Duration::from_secs(4), |r| !r.is_empty())
        .await;
    assert_eq!(
        (runs[0].trigger.as_str(), runs[0].outcome.as_str()),
        ("at-load", "stopped")
    );
    assert!(runs[0].detail.contains("replaced"), "{}", runs[0].detail);
    assert!(gone(first[0]));
    eventually("the new run", Duration::from_secs(2), || {
        let now = pids(&runner, "fresh");
        now.len() == 1 && now != first
    })
    .await;
    runner.shutdown(true).await;
    let runs = h.runs("fresh").await;
    assert!(runs.len() >= 2, "{runs:#?}");
    assert!(runs.iter().all(|r| r.outcome == "stopped"), "{runs:#?}");
    assert!(runs.last().unwrap().detail.contains("shut down"));
    for pair in runs.windows(2) {
        assert!(
            pair[1].started_ms >= pair[0].ended_ms,
            "the old run ended before the new one started"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missed_run_runs_once_at_start_unless_catch_up_is_off() {
    let h = Harness::new().await;
    let hour = 3_600_000;
    let mut catcher = h.spec("echo caught up");
    catcher.schedule = Some(Schedule::Every(SpecDuration::from_secs(3600)));
    let mut no_catch = catcher.clone();
    no_catch.catch_up = Some(false);
    let agents = [("catcher", &catcher), ("no-catch", &no_catch)];
    // The daemon was down for two intervals.
    let saved = SavedState {
        host: HOST.into(),
        agents: agents
            .iter()
            .map(|(name, spec)| {
                let agent = SavedAgent {
                    label: spec.label.clone(),
                    hash: desired(name, spec).hash,
                    last_scheduled_ms: Some(now_ms() - 2 * hour - 1000),
                    ..SavedAgent::default()
                };
                (name.to_string(), agent)
            })
            .collect(),
    };
    fs::create_dir_all(h.state_dir()).unwrap();
    fs::write(
        crate::state::Layout::of(&h.state_dir()).launch_agents_state(),
        serde_json::to_vec(&saved).unwrap(),
    )
    .unwrap();
    let all = || {
        agents
            .iter()
            .map(|(name, spec)| desired(name, spec))
            .collect::<Vec<_>>()
    };

    let mut runner = h.runner().await;
    let changes = runner.sync(Some("c1"), all()).await.unwrap();
    assert!(changes.is_empty(), "nothing changed: {changes:?}");
    let runs = h
        .wait_runs("catcher", "the catch-up", Duration::from_secs(3), |r| !r.is_empty())
        .await;
    assert_eq!((runs[0].trigger.as_str(), runs[0].outcome.as_str()), ("catch-up", "ok"));
    assert_eq!(runs[0].output_tail, "caught up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.runs("catcher").await.len(), 1, "two missed runs run once");
    assert!(h.runs("no-catch").await.is_empty(), "catchUp: false");

    // The catch-up counts as the run that was due: a restart has nothing to catch up.
    runner.shutdown(false).await;
    let mut runner = h.runner().await;
    runner.sync(Some("c1"), all()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.runs("catcher").await.len(), 1);
    runner.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_leaving_the_desired_state_is_unscheduled_and_its_run_stopped() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("sleep 30");
    spec.schedule = every_second();
    spec.run_at_load = true;
    runner.sync(Some("c1"), vec![desired("leaver", &spec)]).await.unwrap();
    let pid = pids(&runner, "leaver")[0];
    let changes = runner.sync(Some("c2"), vec![]).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].kind, changes[0].name.as_str()),
        (JobChangeKind::Pruned, "leaver")
    );
    assert!(
        changes[0].detail.starts_with("unscheduled; stopped run "),
        "{}",
        changes[0].detail
    );
    assert!(
        changes[0].detail.contains(&format!("(pid {pid})")),
        "{}",
        changes[0].detail
    );
    assert!(gone(pid));
    assert!(runner.status().is_empty());
    assert!(h.saved().agents.is_empty(), "no longer owned");
    let runs = h.runs("leaver").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, "stopped");
    assert!(runs[0].detail.contains("left the desired state"), "{}", runs[0].detail);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.runs("leaver").await.len(), 1, "unscheduled");
    runner.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_spec_waits_for_the_next_run_and_suspend_stops_the_run() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("sleep 30");
    spec.schedule = every_second();
    spec.run_at_load = true;
    runner.sync(Some("c1"), vec![desired("job", &spec)]).await.unwrap();
    let pid = pids(&runner, "job")[0];

    spec.env.insert("VERSION".into(), "2".into());
    let changes = runner.sync(Some("c2"), vec![desired("job", &spec)]).await.unwrap();
    assert_eq!(changes[0].kind, JobChangeKind::Updated);
    assert!(
        changes[0].detail.starts_with("takes effect with the next run; run "),
        "{}",
        changes[0].detail
    );
    assert!(
        changes[0].detail.ends_with(&format!("(pid {pid}) left to finish")),
        "{}",
        changes[0].detail
    );
    assert_eq!(pids(&runner, "job"), [pid], "left running");

    spec.suspend = true;
    let changes = runner.sync(Some("c3"), vec![desired("job", &spec)]).await.unwrap();
    assert_eq!(changes[0].kind, JobChangeKind::Suspended);
    assert!(
        changes[0].detail.contains(&format!("(pid {pid})")),
        "{}",
        changes[0].detail
    );
    assert!(gone(pid));
    let status = &runner.status()[0];
    assert!(status.suspended && status.pids.is_empty() && status.next_run_ms.is_none());
    let runs = h.runs("job").await;
    let stopped = runs.iter().find(|r| r.outcome == "stopped").unwrap();
    assert!(stopped.detail.contains("suspended"), "{}", stopped.detail);
    assert_eq!(
        stopped.commit.as_deref(),
        Some("c1"),
        "recorded under the commit it started from"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.runs("job").await.len(), runs.len(), "nothing runs while suspended");

    spec.suspend = false;
    let changes = runner.sync(Some("c4"), vec![desired("job", &spec)]).await.unwrap();
    assert_eq!(changes[0].kind, JobChangeKind::Updated);
    assert!(
        changes[0]
            .detail
            .starts_with("resumed; scheduled every 1s; at load: started run "),
        "{}",
        changes[0].detail
    );
    assert_eq!(pids(&runner, "job").len(), 1);
    runner.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_runner_adopts_the_running_run_and_starts_no_second_one() {
    let h = Harness::new().await;
    let mut spec = h.spec("sleep 30");
    spec.run_at_load = true;
    let mut runner = h.runner().await;
    runner.sync(Some("c1"), vec![desired("keeper", &spec)]).await.unwrap();
    let pid = pids(&runner, "keeper")[0];
    runner.shutdown(false).await;
    assert!(!gone(pid), "left to finish");
    let saved = h.saved();
    assert_eq!(saved.agents["keeper"].running.len(), 1);
    assert_eq!(saved.agents["keeper"].running[0].identity.pid, pid);

    let mut runner = h.runner().await;
    assert_eq!(pids(&runner, "keeper"), [pid], "adopted at start");
    let changes = runner.sync(Some("c1"), vec![desired("keeper", &spec)]).await.unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    let runs = h
        .wait_runs("keeper", "the skipped load", Duration::from_secs(2), |r| !r.is_empty())
        .await;
    assert_eq!(
        (runs[0].trigger.as_str(), runs[0].outcome.as_str()),
        ("at-load", "skipped")
    );
    assert!(
        runs[0].detail.contains(&format!("(pid {pid}) is still running")),
        "{}",
        runs[0].detail
    );
    assert_eq!(pids(&runner, "keeper"), [pid]);
    #[cfg(target_os = "linux")]
    assert_eq!(marked(&h.mark()).iter().filter(|(_, c)| c == "sleep").count(), 1);

    runner.shutdown(true).await;
    assert!(gone(pid));
    let runs = h.runs("keeper").await;
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].trigger.as_str(), runs[0].outcome.as_str()),
        ("at-load", "stopped")
    );
    assert_eq!(runs[0].signal, Some(15));
    assert!(h.saved().agents["keeper"].running.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cron_schedule_with_seconds_runs() {
    let h = Harness::new().await;
    let mut runner = h.runner().await;
    let mut spec = h.spec("echo cron");
    spec.schedule = Some(Schedule::Cron("* * * * * *".parse().unwrap()));
    let changes = runner.sync(None, vec![desired("cron", &spec)]).await.unwrap();
    assert_eq!(changes[0].detail, "scheduled cron `* * * * * *`");
    let next = runner.status()[0].next_run_ms.unwrap();
    assert!(next > now_ms() - 1000 && next <= now_ms() + 1000, "{next}");
    let runs = h
        .wait_runs("cron", "a run", Duration::from_secs(3), |r| !r.is_empty())
        .await;
    assert_eq!((runs[0].trigger.as_str(), runs[0].outcome.as_str()), ("schedule", "ok"));
    runner.shutdown(true).await;
}
