//! An agent's steady stream of requests through the bus while its primary model server is
//! killed, hung and restored.
//!
//! The real daemon with two `scripts/fake-llm` model servers (primary and backup, each a Service
//! named by a ModelProvider) and one agent routed primary -> backup. A client thread sends
//! requests without pause (Ollama `/api/chat` and OpenAI `/v1/chat/completions`, streamed and
//! not, in turn) while the test
//!
//! 1. kills the primary's process (`kill -9`) while one of the client's streams from it is under
//!    way: the daemon restarts the Service, slowly on purpose (its command sleeps 1.5 s before
//!    the model server starts again when it is not the first start), so the probes see it down
//!    and the route fails over; it fails back once the restarted primary has been healthy for
//!    `failbackAfter`;
//! 2. hangs the primary's generation (`POST /_fault {"mode": "hang-generate"}`; `/api/version`
//!    keeps answering): the generation probe times out, the route fails over (the bus moves the
//!    request waiting on the primary to the backup), the daemon restarts the hung Service, and
//!    the agent fails back as above.
//!
//! Asserted: no request failed (the bus retries on the next healthy route while nothing has
//! reached the agent). Only the stream under way when its server was killed may break, after its
//! first tokens reached the agent, and it must end with the bus's error event. Failover within
//! the issue's bounds (two probe intervals of a crash; `failureThreshold` x (probe timeout +
//! interval) for a hang), also as the client sees it, plus slack for a loaded CI machine;
//! failback only after the stable window, not before. Route switches are timed by the daemon's
//! log lines. The measured times are printed (`--nocapture`) and named in assertion messages.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;

// The providers' probes and the agent's stable window (also written into the desired state).
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const FAILURE_THRESHOLD: u32 = 2;
const FAILBACK_AFTER: Duration = Duration::from_secs(3);
/// How long the primary's command waits before its model server starts again after a restart.
const RESTART_DELAY: &str = "1.5";
/// Added to every upper bound: CI is a 2-core machine running tests in parallel.
const SLACK: Duration = Duration::from_millis(2500);
/// The model servers' pace: a streamed answer takes TOKENS x TOKEN_DELAY_MS.
const TOKENS: u32 = 6;
const TOKEN_DELAY_MS: u32 = 15;
/// How long a stream has been under way when the primary is killed: past its first token.
const MID_STREAM: Duration = Duration::from_millis(45);
/// No single request may take longer than this (the client gives up and counts a failure).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(25);

/// A running `mirrorctl run`; SIGKILLed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(sandbox: &Sandbox) -> Daemon {
        let log = sandbox.root().join("daemon.log");
        let child = sandbox
            .cmd(&["run"])
            .env("MIRROR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let socket = sandbox.root().join("state/control.sock");
        wait_for("the daemon's socket", Duration::from_secs(20), || {
            socket.exists() && status(sandbox).is_some_and(|s| s["daemon"].is_number())
        });
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(sandbox: &Sandbox) -> Option<serde_json::Value> {
    serde_json::from_str(&sandbox.run(&["status", "--output", "json"]).stdout).ok()
}

/// The provider of the agent's route, as `status` says.
fn route_of(sandbox: &Sandbox, agent: &str) -> Option<String> {
    let json = status(sandbox)?;
    let route = json["routes"].as_array()?.iter().find(|r| r["agent"] == agent)?.clone();
    Some(route["provider"].as_str()?.to_string())
}

/// Since when (ms since the epoch) a provider has been healthy without a failed probe.
fn healthy_since_ms(sandbox: &Sandbox, provider: &str) -> Option<i64> {
    let json = status(sandbox)?;
    let p = json["providers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == provider)?
        .clone();
    p["healthy_since_ms"].as_i64()
}

fn running_pid(sandbox: &Sandbox, name: &str) -> Option<i64> {
    let json = status(sandbox)?;
    let r = json["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)?
        .clone();
    r["pid"].as_i64()
}

fn post(port: u16, path: &str, body: &str) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
}

/// The shapes the client sends in turn: (path, streamed).
const SHAPES: [(&str, bool); 4] = [
    ("/api/chat", false),
    ("/api/chat", true),
    ("/v1/chat/completions", false),
    ("/v1/chat/completions", true),
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// A complete answer, by this provider (the route header, checked against the content).
    Answered(String),
    /// The answer began (a 2xx, content reached the agent) and then broke: `event` says whether
    /// the agent was told with an error event (streams) rather than a cut body.
    Cut {
        provider: String,
        event: bool,
        detail: String,
    },
    /// No answer: what went wrong.
    Failed(String),
}

#[derive(Clone, Debug)]
struct Sample {
    path: &'static str,
    streamed: bool,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

impl Sample {
    fn answered_by(&self, provider: &str) -> bool {
        self.outcome == Outcome::Answered(provider.into())
    }
}

/// A chunked body decoded; whether its last chunk came.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return (body, false) };
        raw = &raw[end + 2..];
        if size == 0 {
            return (body, true);
        }
        if raw.len() < size + 2 {
            body.extend_from_slice(&raw[..raw.len().min(size)]);
            return (body, false);
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// One request through the bus, read to its end.
fn request(bus: u16, token: &str, path: &str, streamed: bool) -> Outcome {
    let body =
        format!(r#"{{"model": "anything", "messages": [{{"role": "user", "content": "hi"}}], "stream": {streamed}}}"#);
    let mut stream = match std::net::TcpStream::connect(("127.0.0.1", bus)) {
        Ok(stream) => stream,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let sent = write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = sent {
        return Outcome::Failed(format!("send: {e}"));
    }
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Outcome::Failed(format!("no answer ({read:?}): {:?}", String::from_utf8_lossy(&raw)));
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let rest = &raw[split + 4..];
    let (body, complete) = if head.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|l| l.trim().parse::<usize>().ok());
        (rest.to_vec(), length.is_none_or(|n| n == rest.len()))
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let complete = complete && read.is_ok();
    if !head.starts_with("http/1.1 200") {
        return Outcome::Failed(format!("{}: {body}", head.lines().next().unwrap_or("")));
    }
    let provider = head
        .lines()
        .find_map(|l| l.strip_prefix("x-mirror-route:"))
        .and_then(|r| r.trim().split('/').next())
        .unwrap_or("?")
        .to_string();
    // fake-llm's answers begin with `[NAME]`.
    let (content, finished, error) = if !streamed {
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let content = json["message"]["content"]
            .as_str()
            .or(json["choices"][0]["message"]["content"].as_str())
            .unwrap_or("")
            .to_string();
        (content, true, None)
    } else if path.starts_with("/api/") {
        let mut content = String::new();
        let (mut finished, mut error) = (false, None);
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let json: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            content.push_str(json["message"]["content"].as_str().unwrap_or(""));
            finished |= json["done"] == true;
            if let Some(e) = json["error"].as_str() {
                error = Some(e.to_string());
            }
        }
        (content, finished, error)
    } else {
        let mut content = String::new();
        let (mut finished, mut error) = (false, None);
        for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data.trim() == "[DONE]" {
                finished = true;
                continue;
            }
            let json: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
            content.push_str(json["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            if let Some(e) = json["error"]["message"].as_str() {
                error = Some(e.to_string());
            }
        }
        (content, finished, error)
    };
    if complete && finished && error.is_none() {
        if !content.starts_with(&format!("[{provider}]")) {
            return Outcome::Failed(format!("routed to {provider}, but the answer says {content:?}"));
        }
        return Outcome::Answered(provider);
    }
    if content.is_empty() {
        return Outcome::Failed(format!(
            "nothing before the end ({error:?}, complete body: {complete}): {body}"
        ));
    }
    Outcome::Cut {
        provider,
        event: error.is_some(),
        detail: format!("{error:?}; got {content:?}"),
    }
}

/// What the client does now and did so far.
#[derive(Default)]
struct Client {
    stop: AtomicBool,
    /// The request in flight: when it was sent, and whether it is streamed.
    in_flight: Mutex<Option<(Instant, bool)>>,
    samples: Mutex<Vec<Sample>>,
}

/// Sends requests without pause, cycling through [`SHAPES`], until told to stop.
fn client(bus: u16, token: String, client: Arc<Client>) {
    for (path, streamed) in SHAPES.iter().cycle().copied() {
        if client.stop.load(Ordering::Relaxed) {
            return;
        }
        let sent = Instant::now();
        *client.in_flight.lock().unwrap() = Some((sent, streamed));
        let outcome = request(bus, &token, path, streamed);
        *client.in_flight.lock().unwrap() = None;
        if matches!(outcome, Outcome::Failed(_)) {
            std::thread::sleep(Duration::from_millis(20)); // No busy loop against a dead bus.
        }
        let sample = Sample {
            path,
            streamed,
            sent,
            done: Instant::now(),
            outcome,
        };
        client.samples.lock().unwrap().push(sample);
    }
}

/// Stops the client when the test ends, also by a panic.
struct StopOnDrop(Arc<Client>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// The instant of a wall-clock time (the daemon's timestamps).
fn instant_of(at: SystemTime) -> Instant {
    Instant::now() - SystemTime::now().duration_since(at).unwrap_or_default()
}

/// When the daemon logged a route change of `kind` (Failover, Failback) for the agent, at or
/// after `after`: the first such line's timestamp. The route changes the moment it is logged;
/// `status` (answered between passes) may show it later, so times are taken from the log.
fn route_change_at(log: &str, kind: &str, after: SystemTime) -> Option<SystemTime> {
    log.lines()
        .filter(|line| line.contains("agent=scribe") && line.contains(&format!("change={kind} ")))
        .filter_map(log_time)
        .find(|at| *at >= after)
}

/// The timestamp a daemon log line starts with.
fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let at = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some(UNIX_EPOCH + Duration::from_micros(at.timestamp_micros() as u64))
}

/// When the daemon logged that `provider` became healthy again, at or after `after`: the start
/// of its stable window.
fn became_healthy_at(log: &str, provider: &str, after: SystemTime) -> Option<SystemTime> {
    log.lines()
        .filter(|line| {
            line.contains(&format!("provider health changed provider={provider} ")) && line.contains("to=\"Healthy\"")
        })
        .filter_map(log_time)
        .find(|at| *at >= after)
}

/// What one fault did to the route and to the client.
struct Measured {
    /// Fault -> the daemon switched the route to the backup.
    failover: Duration,
    /// Fault -> the first request sent after it answered by the backup.
    first_backup_answer: Duration,
    /// The primary healthy again (its first successful probe) -> the daemon switched the route
    /// back to it.
    failback: Duration,
    /// Fault -> the primary healthy again.
    primary_down: Duration,
    /// The slowest request of the client in flight between the fault and the failback.
    slowest: Duration,
}

/// Injects a fault, follows the route through failover and failback in the daemon's log, and
/// checks the client's view of it.
fn follow(
    sandbox: &Sandbox,
    daemon: &Daemon,
    what: &str,
    client: &Client,
    failover_bound: Duration,
    inject: impl FnOnce(),
) -> Measured {
    let (fault, fault_wall) = (Instant::now(), SystemTime::now());
    inject();
    let mut failover_at = None;
    wait_for(
        &format!("{what}: failover to the backup"),
        failover_bound + SLACK * 4,
        || {
            failover_at = route_change_at(&daemon.log(), "Failover", fault_wall);
            failover_at.is_some()
        },
    );
    let failover_at = failover_at.unwrap();
    let mut failback_at = None;
    wait_for(
        &format!("{what}: failback to the primary"),
        Duration::from_secs(30),
        || {
            failback_at = route_change_at(&daemon.log(), "Failback", failover_at);
            failback_at.is_some()
        },
    );
    let failback_at = failback_at.unwrap();
    let log = daemon.log();
    let logged_healthy = became_healthy_at(&log, "primary", failover_at)
        .unwrap_or_else(|| panic!("{what}: the primary never became healthy again:\n{log}"));
    // The daemon's own start of the stable window, unless a failed probe since moved it.
    let healthy_at = healthy_since_ms(sandbox, "primary")
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms as u64))
        .filter(|at| *at <= failback_at && *at >= failover_at)
        .unwrap_or(logged_healthy);
    // A few answers from the primary again before the next phase.
    let count = client.samples.lock().unwrap().len();
    wait_for(
        &format!("{what}: the client answered by the primary again"),
        Duration::from_secs(10),
        || {
            client.samples.lock().unwrap()[count..]
                .iter()
                .filter(|s| s.answered_by("primary"))
                .count()
                >= 4
        },
    );
    let samples = client.samples.lock().unwrap().clone();
    let first_backup = samples
        .iter()
        .find(|s| s.sent >= fault && s.answered_by("backup"))
        .unwrap_or_else(|| panic!("{what}: no request answered by the backup"));
    let failed_back = instant_of(failback_at);
    let slowest = samples
        .iter()
        .filter(|s| s.done >= fault && s.sent <= failed_back)
        .map(|s| s.done - s.sent)
        .max()
        .unwrap_or_default();
    let measured = Measured {
        failover: failover_at.duration_since(fault_wall).unwrap_or_default(),
        first_backup_answer: first_backup.done - fault,
        failback: failback_at.duration_since(healthy_at).unwrap_or_default(),
        primary_down: healthy_at.duration_since(fault_wall).unwrap_or_default(),
        slowest,
    };
    let summary = format!(
        "{what}: route failover {:?} after the fault (bound {failover_bound:?} + slack); first answer by the backup {:?} after it; primary healthy again after {:?}; failback {:?} after that (failbackAfter {FAILBACK_AFTER:?}); slowest request meanwhile {:?}",
        measured.failover, measured.first_backup_answer, measured.primary_down, measured.failback, measured.slowest
    );
    eprintln!("{summary}");
    assert!(measured.failover <= failover_bound + SLACK, "{summary}");
    assert!(
        measured.first_backup_answer <= failover_bound + SLACK,
        "{summary}\nthe agent waited longer than the failover"
    );
    // Failback not before the stable window: the daemon waited failbackAfter (50 ms for clock
    // rounding), and no request sent after the failover was answered by the primary before the
    // failback (the bus tries it only after the healthy backup).
    assert!(
        measured.failback + Duration::from_millis(50) >= FAILBACK_AFTER,
        "{summary}\nfailback before the stable window"
    );
    assert!(measured.failback <= FAILBACK_AFTER + SLACK, "{summary}\nfailback late");
    let early: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= first_backup.done && s.done < failed_back && s.answered_by("primary"))
        .collect();
    assert!(
        early.is_empty(),
        "{summary}\nanswered by the primary before the failback: {early:#?}"
    );
    measured
}

#[test]
fn a_steady_client_loses_no_request_while_its_primary_is_killed_hung_and_restored() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let fake = project_path("scripts/fake-llm").display().to_string();
    let (primary, backup, bus) = (free_port(), free_port(), free_port());
    let started_once = sandbox.root().join("primary-started-once");
    let llm = |name: &str, port: u16, command: String| {
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm-{name}}}\nspec:\n  command: [sh, -c, {command:?}]\n  stop: {{grace: 1s}}\n  health: {{tcp: {{address: \"127.0.0.1:{port}\"}}, interval: 200ms, startPeriod: 3s}}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: {name}}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  service: llm-{name}\n  models: [\"llama3.2:1b\"]\n  health: {{interval: {}ms, timeout: {}ms, failureThreshold: {FAILURE_THRESHOLD}}}\n",
            PROBE_INTERVAL.as_millis(),
            PROBE_TIMEOUT.as_millis(),
        )
    };
    let server = |name: &str, port: u16| {
        format!("exec python3 {fake:?} --port {port} --name {name} --token-delay-ms {TOKEN_DELAY_MS} --reply-tokens {TOKENS}")
    };
    let marker = started_once.display();
    sandbox.write(
        "primary.yaml",
        llm(
            "primary",
            primary,
            format!(
                "if [ -e {marker:?} ]; then sleep {RESTART_DELAY}; fi; touch {marker:?}; {}",
                server("primary", primary)
            ),
        ),
    );
    sandbox.write("backup.yaml", llm("backup", backup, server("backup", backup)));
    sandbox.write(
        "agent.yaml",
        format!("apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: default}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: scribe}}\nspec:\n  command: [\"sleep\", \"4300\"]\n  policy: default\n  model:\n    primary: {{provider: primary, model: \"llama3.2:1b\"}}\n    fallbacks: [{{provider: backup, model: \"llama3.2:1b\"}}]\n    failbackAfter: {}s\n", FAILBACK_AFTER.as_secs()),
    );
    sandbox.write(
        "controller.yaml",
        format!("apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n"),
    );
    sandbox.commit("two local models and an agent");
    let test_started = Instant::now();
    let daemon = Daemon::start(&sandbox);
    wait_for("the agent on its primary", Duration::from_secs(20), || {
        route_of(&sandbox, "scribe").as_deref() == Some("primary")
            && healthy_since_ms(&sandbox, "backup").is_some()
            && healthy_since_ms(&sandbox, "primary").is_some()
    });
    let token_path = sandbox.root().join("state/agents/scribe/bus-token");
    wait_for("the agent's bus token", Duration::from_secs(5), || token_path.exists());
    let token = std::fs::read_to_string(&token_path).unwrap();
    wait_for("the bus listening", Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", bus)).is_ok()
    });

    let shared = Arc::new(Client::default());
    let _stop_on_panic = StopOnDrop(shared.clone());
    let client_thread = {
        let shared = shared.clone();
        std::thread::spawn(move || client(bus, token, shared))
    };
    wait_for("the client answered by the primary", Duration::from_secs(10), || {
        shared
            .samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.answered_by("primary"))
            .count()
            >= 8
    });

    // 1. The primary's process killed: down until its Service is restarted (1.5 s later).
    let pid = running_pid(&sandbox, "llm-primary").expect("the primary runs");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("fake-llm"),
        "the service's process is the model server"
    );
    let mut killed_at = Instant::now();
    // Mid-stream: when a streamed request has been under way long enough for its first tokens
    // to have reached the agent. That stream cannot be retried: it must end with the error event.
    wait_for("a stream under way", Duration::from_secs(10), || {
        shared
            .in_flight
            .lock()
            .unwrap()
            .is_some_and(|(sent, streamed)| streamed && sent.elapsed() >= MID_STREAM)
    });
    let killed = follow(
        &sandbox,
        &daemon,
        "kill -9",
        &shared,
        PROBE_INTERVAL * FAILURE_THRESHOLD,
        || {
            killed_at = Instant::now();
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
        },
    );
    assert!(
        killed.first_backup_answer <= Duration::from_secs(2),
        "the next request is answered by the fallback within 2 s of the kill: {:?}",
        killed.first_backup_answer
    );

    // 2. The primary's generation hangs while /api/version answers: the probe's generation
    // times out, the route fails over, the daemon restarts the hung Service.
    let pid = running_pid(&sandbox, "llm-primary").expect("the primary runs again");
    let hung = follow(
        &sandbox,
        &daemon,
        "hang-generate",
        &shared,
        (PROBE_TIMEOUT + PROBE_INTERVAL) * FAILURE_THRESHOLD,
        || {
            post(primary, "/_fault", r#"{"mode": "hang-generate"}"#);
        },
    );
    assert_ne!(
        running_pid(&sandbox, "llm-primary"),
        Some(pid),
        "the hung service was restarted"
    );

    assert_eq!(
        route_of(&sandbox, "scribe").as_deref(),
        Some("primary"),
        "status shows the failback"
    );
    shared.stop.store(true, Ordering::Relaxed);
    client_thread.join().unwrap();
    let samples = shared.samples.lock().unwrap().clone();
    let failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
        .collect();
    let cut: Vec<&Sample> = samples
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Cut { .. }))
        .collect();
    let by = |provider: &str| samples.iter().filter(|s| s.answered_by(provider)).count();
    let report = format!(
        "{} requests in {:?}: {} answered by the primary, {} by the backup, {} failed, {} cut midway by the kill; kill -9: failover {:?}, first backup answer {:?}, failback {:?} after healthy; hang: failover {:?}, first backup answer {:?}, slowest request {:?}, failback {:?} after healthy",
        samples.len(),
        test_started.elapsed(),
        by("primary"),
        by("backup"),
        failed.len(),
        cut.len(),
        killed.failover,
        killed.first_backup_answer,
        killed.failback,
        hung.failover,
        hung.first_backup_answer,
        hung.slowest,
        hung.failback,
    );
    eprintln!("{report}");
    for sample in &cut {
        eprintln!(
            "cut: {} (streamed: {}): {:?}",
            sample.path, sample.streamed, sample.outcome
        );
    }
    assert!(failed.is_empty(), "{report}\nfailed: {failed:#?}\n{}", daemon.log());
    // Only a stream under way when its server was killed can break after its first bytes
    // reached the agent; it must end with the bus's error event, not just stop.
    for sample in &cut {
        assert!(
            sample.sent <= killed_at && sample.done >= killed_at,
            "{report}\ncut but not in flight at the kill: {sample:#?}"
        );
        if sample.streamed {
            assert!(
                matches!(sample.outcome, Outcome::Cut { event: true, .. }),
                "{report}\n{sample:#?}"
            );
        }
    }
    assert!(
        SHAPES.iter().all(|&(path, streamed)| samples
            .iter()
            .any(|s| s.path == path && s.streamed == streamed && s.answered_by("backup"))),
        "{report}\nevery shape was answered by the backup"
    );
}
