//! The model bus under faults and load (issue 6), with LiteLLM's proxy as the peer when it is
//! installed. See BENCHMARKS.md, "Model bus (issue 6)".
//!
//! Targets (issue 6):
//!
//! - model server killed (kill -9) -> the next request answered by the fallback: at most 2 s;
//! - generation hang -> failover within probe timeout + interval;
//! - requests lost during a failover with a steady client: 0;
//! - bus overhead against calling the provider directly: p50 at most 1 ms per request and per
//!   first streamed token;
//! - 200 concurrent streaming clients without errors.
//!
//! Run: `cargo bench --bench bus` (about 5 minutes with LiteLLM, 3.5 without); `-- --quick` for
//! fewer rounds (about 2 minutes); `MIRROR_BENCH_KEEP=1` keeps the work dir (logs, repos, state).
//! The LiteLLM part runs when `MIRROR_BENCH_LITELLM` names its `litellm` executable, e.g.
//! `python3 -m venv /work/.venvs/litellm && /work/.venvs/litellm/bin/pip install 'litellm[proxy]'`
//! then `MIRROR_BENCH_LITELLM=/work/.venvs/litellm/bin/litellm cargo bench --bench bus`.
//!
//! Setup: the real release binary, `mirrorctl run`, against a git repository in a temp dir: two
//! Services running `scripts/fake-llm` (an Ollama stand-in; 8 tokens, 5 ms before each; each
//! Service with a TCP health probe: without one a hung provider's Service is never restarted,
//! see BENCHMARKS.md) with
//! their ModelProviders `primary` and `backup` (health: interval 1s, timeout 2s,
//! failureThreshold 2; the generation probe on), an Agent `scribe` routed primary -> backup
//! (failbackAfter 3s instead of the default 30 s, to keep the run short), and an Agent `meter`
//! routed to a third fake-llm that the benchmark runs itself (`direct`, no token delay) for the
//! overhead and concurrency measures. Agents call the bus with the Ollama API (`/api/chat`) and
//! their bearer token; the bus forwards to the Ollama API of the routed provider.
//!
//! - Kill: a steady client (20 requests/s, streamed and non-streamed alternately) runs while the
//!   primary's Service process gets SIGKILL; right after kill(2) returns the benchmark sends one
//!   more request (the "next request", non-streamed, on a new connection; the same request just
//!   before the kill is the baseline) and times kill -> its answer, and who answered. The daemon
//!   restarts the Service at once (a first crash; the Services have `backoff.resetAfter: 5s`
//!   and each kill waits for 6 s of uptime, so each is a first crash).
//! - Hang: `POST /_fault {"mode": "hang-generate"}` on the primary (its `/api/version` keeps
//!   answering). Timed from the daemon's JSON log: hang -> provider unhealthy, -> the route switch
//!   (Failover), -> the Service restart; and from the steady client: hang -> the first answer by
//!   the backup of a request sent after the hang, and the slowest request. Then the restarted
//!   primary is healthy for the failback window and the agent fails back (also under the steady
//!   client). The same with failureThreshold 1 (a fresh daemon) shows the "timeout + interval"
//!   case.
//! - Losses: every steady-client request's outcome, across kills, hangs and failbacks: failed
//!   before its first byte (lost), or cut after bytes reached the client (a stream broken by the
//!   kill: ends with an error event by design, cannot be retried).
//! - Overhead: sequential requests after a warm-up, bus and direct interleaved (the order
//!   rotates), each path with its own client; non-streamed total time and streamed time to the
//!   first body bytes. Two runs: both over keep-alive connections (what an agent's pooled client
//!   does), and the bus over a new connection per request against direct over keep-alive (the
//!   bus's own cost plus a loopback connect, without the delayed-ACK stall the first run shows).
//! - Concurrency: 200 streams at once (token delay 20 ms, so all are open together), directly
//!   and through the bus.
//! - LiteLLM: two proxies, each with two deployments of `ollama_chat/llama3.2:1b` in front of
//!   its own two fake-llm instances A and B (the same token delay), a per-deployment `timeout: 2`
//!   (its default, 600 s, would make a hang last 10 minutes), everything else at its defaults:
//!   "fallbacks" (model groups `agent` and `agent-backup`, `fallbacks: [{agent: [agent-backup]}]`)
//!   and "ordered" (one group `agent`, deployments with `order: 1` and `order: 2`). The same
//!   steady client and "next request"; a fault lasts 7 s, then the benchmark restores A (a new
//!   process on the same port, or the fault mode reset): LiteLLM restarts nothing itself.
//!   Clients call it with the OpenAI API and its master key.
//!
//! Cleanup: the benchmark is a child subreaper; a guard (also on panic and on SIGINT/SIGTERM/
//! SIGHUP) stops the daemon (SIGTERM, SIGKILL after 5 s), SIGKILLs every process group it
//! started and the Services the daemon ran (checked against their start time), and reaps them.

// A measurement or test harness: raw signals and process calls (each block says why it is sound).
#![allow(unsafe_code)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use git2::{Repository, RepositoryInitOptions, Signature};
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[path = "common/results.rs"]
mod results;
use results::Measure;

const PROBE_INTERVAL_MS: u64 = 1000;
const PROBE_TIMEOUT_MS: u64 = 2000;
const FAILURE_THRESHOLD: u32 = 2;
const FAILBACK_AFTER: &str = "3s";
const RESET_AFTER_S: u64 = 5;
/// Generation pace of the failover pair (and LiteLLM's pair): 8 tokens, this long before each.
const TOKEN_DELAY_MS: u64 = 5;
/// Generation pace during the concurrency measure, so that all streams are open at once.
const CONCURRENT_TOKEN_DELAY_MS: u64 = 20;
const STEADY_EVERY: Duration = Duration::from_millis(50);
/// Longest wait for one request (the bus waits up to 30 s for an upstream's headers).
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

const KILL_TARGET: Duration = Duration::from_secs(2);
const OVERHEAD_TARGET_MS: f64 = 1.0;

const MODEL: &str = "llama3.2:1b";
const LITELLM_KEY: &str = "sk-bench-0123456789abcdef0123456789abcdef";

struct Rounds {
    kills: usize,
    hangs: usize,
    hangs_threshold_one: usize,
    warmup: usize,
    samples: usize,
    keepalive_warmup: usize,
    keepalive_samples: usize,
    concurrent: usize,
    peer_kills: usize,
    peer_hangs: usize,
    peer_samples: usize,
}

// ---------------------------------------------------------------------------------------------
// Interruption

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
}

/// Sleeps, unless the benchmark was interrupted: then it unwinds (the guard stops everything).
fn pause(d: Duration) {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted: stopping every process this benchmark started");
    }
    std::thread::sleep(d);
}

// ---------------------------------------------------------------------------------------------
// Processes

#[derive(Clone, Copy, Debug)]
struct Tracked {
    pid: i32,
    pgid: i32,
    start_time: u64,
}

/// What `/proc/<pid>/stat` says: (state, parent, process group, start time).
fn stat(pid: i32) -> Option<(u8, i32, i32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    Some((
        *fields.first()?.as_bytes().first()?,
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

fn tracked(pid: i32) -> Option<Tracked> {
    let (_, _, pgid, start_time) = stat(pid)?;
    Some(Tracked { pid, pgid, start_time })
}

/// `kill -9 -- -PGID` when the leader is still the process recorded, else `kill -9 PID`.
fn kill_tracked(t: &Tracked) -> bool {
    match stat(t.pid) {
        Some((_, _, pgrp, start)) if start == t.start_time => {
            let target = if pgrp == t.pgid && t.pgid == t.pid && t.pgid > 1 {
                -t.pgid
            } else {
                t.pid
            };
            // SAFETY: kill has no memory effects; the target was checked above.
            unsafe { libc::kill(target, libc::SIGKILL) == 0 }
        }
        _ => false,
    }
}

fn reap(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left: Vec<i32> = pids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&pid| {
            let mut status = 0;
            // SAFETY: waitpid only writes the status it is given.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 }
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// The processes a state dir's `inventory.json` records.
fn inventory_processes(state_dir: &Path) -> Vec<Tracked> {
    let Ok(bytes) = fs::read(state_dir.join("inventory.json")) else {
        return Vec::new();
    };
    let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(&bytes) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let process = match e.get("process")? {
                Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
                v @ Value::Object(_) => v.clone(),
                _ => return None,
            };
            let pid = process.get("pid")?.as_i64()? as i32;
            Some(Tracked {
                pid,
                pgid: process.get("pgid").and_then(Value::as_i64).map_or(pid, |g| g as i32),
                start_time: process.get("start_time")?.as_u64()?,
            })
        })
        .collect()
}

/// Everything this benchmark started, stopped on drop (also when unwinding).
#[derive(Default)]
struct Guard {
    /// `mirrorctl run` with its state dir: SIGTERM first, then its Services.
    daemons: Vec<(Child, PathBuf)>,
    /// fake-llm instances and LiteLLM, each the leader of its own process group.
    groups: Vec<(Child, Tracked)>,
}

impl Guard {
    fn terminate_daemon(mut child: Child, state_dir: &Path, signalled: &mut Vec<i32>) {
        let pid = child.id() as i32;
        let mut services: Vec<Tracked> = children_of(pid).into_iter().filter_map(tracked).collect();
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill has no memory effects; the child is ours and not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if child.try_wait().ok().flatten().is_none() {
                eprintln!("cleanup: mirrorctl run (pid {pid}) ignored SIGTERM for 5 s; SIGKILL");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        services.extend(inventory_processes(state_dir));
        for t in services {
            if kill_tracked(&t) {
                signalled.push(t.pid);
            }
        }
    }

    fn stop_daemons(&mut self) {
        let mut signalled = Vec::new();
        for (child, dir) in std::mem::take(&mut self.daemons) {
            Self::terminate_daemon(child, &dir, &mut signalled);
        }
        reap(&signalled);
    }

    /// Takes charge of a child that leads its own process group.
    fn adopt(&mut self, child: Child) {
        let pid = child.id() as i32;
        // A child already gone keeps a start time of 0: never signalled, only reaped.
        let t = tracked(pid).unwrap_or(Tracked {
            pid,
            pgid: pid,
            start_time: 0,
        });
        self.groups.push((child, t));
    }

    fn stop_group(&mut self, pid: i32) {
        if let Some(at) = self.groups.iter().position(|(c, _)| c.id() as i32 == pid) {
            let (mut child, t) = self.groups.remove(at);
            kill_tracked(&t);
            let _ = child.wait();
        }
    }

    fn stop_all(&mut self) -> usize {
        self.stop_daemons();
        let mut signalled = Vec::new();
        for (mut child, t) in self.groups.drain(..) {
            kill_tracked(&t);
            let _ = child.wait();
        }
        // SAFETY: getpid has no preconditions.
        let own = unsafe { libc::getpid() };
        let mut leftovers = 0;
        for kid in children_of(own) {
            if let Some(t) = tracked(kid) {
                if matches!(stat(kid), Some((state, ..)) if state != b'Z') {
                    leftovers += 1;
                    kill_tracked(&t);
                }
                signalled.push(kid);
            }
        }
        reap(&signalled);
        leftovers
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let leftovers = self.stop_all();
        if leftovers > 0 {
            eprintln!("cleanup: killed {leftovers} leftover process(es) found among our children");
        }
    }
}

fn fake_llm_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fake-llm")
}

/// Starts `scripts/fake-llm` in a process group of its own; returns (port, pid).
fn spawn_fake(guard: &mut Guard, logs: &Path, name: &str, port: u16, token_delay_ms: u64) -> (u16, i32) {
    let mut child = Command::new("python3")
        .arg(fake_llm_path())
        .args(["--port", &port.to_string(), "--name", name])
        .args(["--token-delay-ms", &token_delay_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(logs.join(format!("fake-{name}-{port}.log"))).unwrap())
        .process_group(0)
        .spawn()
        .expect("python3 scripts/fake-llm");
    let pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    guard.adopt(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("fake-llm {name}: unexpected first line {line:?}"));
    (port, pid)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn epoch_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: nproc {cores}, {model}, Linux {}; load average {}",
        kernel.trim(),
        load_average()
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP: the agent's side

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A client that opens a new connection for every request.
fn http_client_fresh() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// Where an agent sends its chat requests.
#[derive(Clone)]
struct Target {
    port: u16,
    /// OpenAI's `/v1/chat/completions` (LiteLLM) rather than Ollama's `/api/chat`.
    openai: bool,
    token: Option<String>,
    model: String,
}

impl Target {
    fn ollama(port: u16, token: Option<String>, model: &str) -> Target {
        Target {
            port,
            openai: false,
            token,
            model: model.to_string(),
        }
    }
}

/// One request and how it ended.
#[derive(Clone, Debug)]
struct Outcome {
    streamed: bool,
    sent: Instant,
    sent_us: i64,
    /// To the first body bytes.
    first: Option<Duration>,
    took: Duration,
    /// The instance that answered (`[NAME]`, the reply's first token).
    by: Option<String>,
    error: Option<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
    fn done_us(&self) -> i64 {
        self.sent_us + self.took.as_micros() as i64
    }
    /// Failed after bytes had reached the client (a stream cut midway).
    fn cut(&self) -> bool {
        self.error.is_some() && self.first.is_some()
    }
}

fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

async fn chat(client: &HttpClient, target: &Target, streamed: bool, limit: Duration) -> Outcome {
    let path = if target.openai {
        "/v1/chat/completions"
    } else {
        "/api/chat"
    };
    let body = json!({
        "model": target.model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": streamed,
    })
    .to_string();
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://127.0.0.1:{}{path}", target.port))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = &target.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let sent = Instant::now();
    let sent_us = epoch_us();
    let mut first = None;
    let mut data = Vec::new();
    let result = tokio::time::timeout(limit, async {
        let answer = client
            .request(request)
            .await
            .map_err(|e| format!("no answer: {}", innermost(&e)))?;
        let status = answer.status().as_u16();
        let mut body = answer.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the body broke: {}", innermost(&e)))?;
            if let Ok(chunk) = frame.into_data() {
                if first.is_none() && !chunk.is_empty() {
                    first = Some(sent.elapsed());
                }
                data.extend_from_slice(&chunk);
            }
        }
        Ok::<u16, String>(status)
    })
    .await;
    let took = sent.elapsed();
    let checked = match result {
        Err(_) => Err(format!("no complete answer within {limit:?}")),
        Ok(Err(why)) => Err(why),
        Ok(Ok(status)) => check(target.openai, streamed, status, &data),
    };
    Outcome {
        streamed,
        sent,
        sent_us,
        first,
        took,
        by: answered_by(&data),
        error: checked.err(),
    }
}

/// Whether the answer is complete and carries no error (an error line or event).
fn check(openai: bool, streamed: bool, status: u16, data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let quote = || text.chars().take(200).collect::<String>();
    if status != 200 {
        return Err(format!("HTTP {status}: {}", quote()));
    }
    match (openai, streamed) {
        (false, false) => {
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {}", quote()))?;
            if v.get("error").is_some() || v["done"] != true {
                return Err(format!("incomplete: {}", quote()));
            }
        }
        (false, true) => {
            let mut last = Value::Null;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line).map_err(|e| format!("a line is not JSON ({e}): {line}"))?;
                if v.get("error").is_some() {
                    return Err(format!("error line: {line}"));
                }
                last = v;
            }
            if last["done"] != true {
                return Err(format!("the stream did not end with done: {}", quote()));
            }
        }
        (true, false) => {
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {}", quote()))?;
            if v.get("error").is_some() || !v["choices"][0]["message"]["content"].is_string() {
                return Err(format!("incomplete: {}", quote()));
            }
        }
        (true, true) => {
            let mut done = false;
            for line in text.lines() {
                let Some(event) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if event == "[DONE]" {
                    done = true;
                } else if event.contains("\"error\"") {
                    return Err(format!("error event: {event}"));
                }
            }
            if !done {
                return Err(format!("the stream did not end with [DONE]: {}", quote()));
            }
        }
    }
    Ok(())
}

/// `NAME` of the first `"[NAME]` in the answer (every fake-llm reply starts with `[NAME]`).
fn answered_by(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("\"[") {
        let after = &rest[at + 2..];
        if let Some(end) = after.find(']') {
            let name = &after[..end];
            if !name.is_empty()
                && name.len() < 40
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Some(name.to_string());
            }
        }
        rest = after;
    }
    None
}

/// POSTs a control request to a fake-llm.
fn fault(rt: &tokio::runtime::Runtime, port: u16, body: Value) {
    rt.block_on(async {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://127.0.0.1:{port}/_fault"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let answer = http_client().request(request).await.expect("POST /_fault");
        assert_eq!(answer.status(), 200, "POST /_fault {body}");
        let _ = answer.into_body().collect().await;
    });
}

/// Whether something accepts connections on the port.
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A client sending a request every [`STEADY_EVERY`] (non-streamed and streamed alternately)
/// until stopped; each request runs on its own task.
struct Steady {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Outcome>>,
}

impl Steady {
    fn start(rt: &tokio::runtime::Runtime, target: Target) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = rt.spawn(async move {
            let client = http_client();
            let mut tick = tokio::time::interval(STEADY_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut requests = Vec::new();
            let mut n = 0u64;
            while !stopped.load(Ordering::SeqCst) {
                tick.tick().await;
                let (client, target) = (client.clone(), target.clone());
                let streamed = n % 2 == 1;
                n += 1;
                requests.push(tokio::spawn(async move {
                    chat(&client, &target, streamed, REQUEST_LIMIT).await
                }));
            }
            let mut out = Vec::new();
            for request in requests {
                if let Ok(outcome) = request.await {
                    out.push(outcome);
                }
            }
            out
        });
        Steady { stop, task }
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        rt.block_on(self.task).expect("the steady client")
    }
}

/// Totals of a steady client's requests.
#[derive(Default, Clone, Copy)]
struct Losses {
    sent: usize,
    streamed: usize,
    lost: usize,
    cut: usize,
}

impl Losses {
    fn of(outcomes: &[Outcome]) -> Losses {
        Losses {
            sent: outcomes.len(),
            streamed: outcomes.iter().filter(|o| o.streamed).count(),
            lost: outcomes.iter().filter(|o| !o.ok() && !o.cut()).count(),
            cut: outcomes.iter().filter(|o| o.cut()).count(),
        }
    }
    fn add(&mut self, other: Losses) {
        self.sent += other.sent;
        self.streamed += other.streamed;
        self.lost += other.lost;
        self.cut += other.cut;
    }
    fn text(&self) -> String {
        format!(
            "{} sent ({} streamed): {} lost before the first byte, {} cut mid-stream",
            self.sent, self.streamed, self.lost, self.cut
        )
    }
}

fn print_failures(label: &str, outcomes: &[Outcome]) {
    for o in outcomes.iter().filter(|o| !o.ok()).take(10) {
        eprintln!(
            "  {label}: {} request failed after {} (first byte {}): {}",
            if o.streamed { "streamed" } else { "non-streamed" },
            ms(o.took),
            o.first.map_or("never".into(), ms),
            o.error.as_deref().unwrap_or("")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// A desired state: the failover pair as Services, `direct` (run by the benchmark), two agents.
fn desired_state(dir: &Path, primary: u16, backup: u16, direct: Option<u16>, bus: u16, threshold: u32) {
    let fake = fake_llm_path().display().to_string();
    let health =
        format!("{{interval: {PROBE_INTERVAL_MS}ms, timeout: {PROBE_TIMEOUT_MS}ms, failureThreshold: {threshold}}}");
    let llm = |name: &str, port: u16| {
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm-{name}}}\nspec:\n  command: [python3, {fake:?}, --port, \"{port}\", --name, {name}, --token-delay-ms, \"{TOKEN_DELAY_MS}\"]\n  stop: {{grace: 1s}}\n  backoff: {{resetAfter: {RESET_AFTER_S}s}}\n  health: {{tcp: {{address: \"127.0.0.1:{port}\"}}, interval: 1s}}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: {name}}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  service: llm-{name}\n  models: [\"{MODEL}\"]\n  health: {health}\n"
        )
    };
    let mut files = vec![
        ("primary.yaml".to_string(), llm("primary", primary)),
        ("backup.yaml".to_string(), llm("backup", backup)),
        (
            "scribe.yaml".to_string(),
            format!("apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: default}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: scribe}}\nspec:\n  command: [\"sleep\", \"4300\"]\n  policy: default\n  model:\n    primary: {{provider: primary, model: \"{MODEL}\"}}\n    fallbacks: [{{provider: backup, model: \"{MODEL}\"}}]\n    failbackAfter: {FAILBACK_AFTER}\n"),
        ),
        (
            "controller.yaml".to_string(),
            format!("apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n"),
        ),
    ];
    if let Some(port) = direct {
        files.push((
            "meter.yaml".to_string(),
            format!("apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: direct}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  models: [\"{MODEL}\"]\n  health: {health}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: meter}}\nspec:\n  command: [\"sleep\", \"4301\"]\n  policy: default\n  model:\n    primary: {{provider: direct, model: \"{MODEL}\"}}\n"),
        ));
    }
    let mut options = RepositoryInitOptions::new();
    options.initial_head("main");
    let repo = Repository::init_opts(dir, &options).unwrap();
    let mut index = repo.index().unwrap();
    for (name, text) in &files {
        let relative = format!("desired/{name}");
        let full = dir.join(&relative);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, text).unwrap();
        index.add_path(Path::new(&relative)).unwrap();
    }
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let signature = Signature::now("bench", "bench@localhost").unwrap();
    repo.commit(Some("HEAD"), &signature, &signature, "bench", &tree, &[])
        .unwrap();
}

/// A running `mirrorctl run` with its bus.
struct Daemon {
    repo: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    bus: u16,
    primary: u16,
    backup: u16,
}

fn start_daemon(guard: &mut Guard, work: &Path, label: &str, direct: Option<u16>, threshold: u32) -> Daemon {
    let repo = work.join(format!("repo-{label}"));
    let state_dir = work.join(format!("state-{label}"));
    let (primary, backup, bus) = (free_port(), free_port(), free_port());
    desired_state(&repo, primary, backup, direct, bus, threshold);
    let log = state_dir.with_extension("log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_mirrorctl"));
    command
        .arg("run")
        .arg("--repo")
        .arg(&repo)
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["--log-format", "json"]);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("MIRROR_") || key_text == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
        .env("MIRROR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(state_dir.with_extension("out")).unwrap())
        .stderr(File::create(&log).unwrap())
        .process_group(0);
    let child = command.spawn().expect("spawning mirrorctl run");
    guard.daemons.push((child, state_dir.clone()));
    Daemon {
        repo,
        state_dir,
        log,
        bus,
        primary,
        backup,
    }
}

impl Daemon {
    fn status(&self) -> Option<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_mirrorctl"))
            .arg("status")
            .arg("--repo")
            .arg(&self.repo)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--output", "json"])
            .env_remove("MIRROR_STATE_DIR")
            .stderr(Stdio::null())
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn token(&self, agent: &str) -> Option<String> {
        fs::read_to_string(self.state_dir.join(format!("agents/{agent}/bus-token")))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn target(&self, agent: &str) -> Target {
        Target::ollama(self.bus, self.token(agent), "whatever-the-agent-asks")
    }
}

/// The agent's route as `status` says: (provider, degraded).
fn route_of(status: &Value, agent: &str) -> Option<(String, bool)> {
    let route = status["routes"].as_array()?.iter().find(|r| r["agent"] == agent)?;
    Some((route["provider"].as_str()?.to_string(), route["degraded"].as_bool()?))
}

/// Healthy by a probe (a provider not probed yet is presumed healthy, without `healthy_since_ms`).
fn provider_healthy(status: &Value, provider: &str) -> bool {
    status["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == provider))
        .is_some_and(|p| p["healthy"] == true && p["healthy_since_ms"].is_i64())
}

/// (pid, uptime in s) of a running Service.
fn service_of(status: &Value, name: &str) -> Option<(i32, u64)> {
    let r = status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == "Service" && r["name"] == name)?;
    Some((r["pid"].as_i64()? as i32, r["uptime_s"].as_u64().unwrap_or(0)))
}

fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Result<Duration, String> {
    let begun = Instant::now();
    loop {
        if condition() {
            return Ok(begun.elapsed());
        }
        if begun.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        pause(Duration::from_millis(50));
    }
}

/// Waits until `scribe` is on a healthy primary whose process has run at least `uptime_s`;
/// returns the primary's pid.
fn wait_steady_state(daemon: &Daemon, uptime_s: u64) -> i32 {
    let mut pid = 0;
    wait_for("scribe on a healthy primary", Duration::from_secs(60), || {
        let Some(status) = daemon.status() else { return false };
        let ready = route_of(&status, "scribe") == Some(("primary".into(), false))
            && provider_healthy(&status, "primary")
            && provider_healthy(&status, "backup")
            && service_of(&status, "llm-primary").is_some_and(|(p, up)| {
                pid = p;
                up >= uptime_s
            });
        ready && listening(daemon.primary) && listening(daemon.backup)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail()));
    pid
}

/// One line of the daemon's JSON log.
struct LogLine {
    at_us: i64,
    message: String,
    fields: Value,
}

fn read_log(path: &Path) -> Vec<LogLine> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let value: Value = serde_json::from_str(line).ok()?;
            let at = chrono::DateTime::parse_from_rfc3339(value.get("timestamp")?.as_str()?).ok()?;
            let fields = value.get("fields")?.clone();
            Some(LogLine {
                at_us: at.timestamp_micros(),
                message: fields.get("message")?.as_str()?.to_string(),
                fields,
            })
        })
        .collect()
}

impl LogLine {
    fn field_str(&self, key: &str) -> Option<&str> {
        self.fields.get(key)?.as_str()
    }
}

/// The first log line after `after_us` with this message whose fields match: its time.
fn logged_after(lines: &[LogLine], after_us: i64, message: &str, matches: &[(&str, Value)]) -> Option<i64> {
    lines
        .iter()
        .filter(|l| l.at_us >= after_us && l.message == message)
        .find(|l| matches.iter().all(|(k, v)| l.fields.get(*k) == Some(v)))
        .map(|l| l.at_us)
}

fn us(d_us: i64) -> Duration {
    Duration::from_micros(d_us.max(0) as u64)
}

// ---------------------------------------------------------------------------------------------
// The measurements

/// p50 latency of the steady client's requests sent 2-6 s after a fault at `at_us`, and how
/// many of them there were.
fn later_p50(outcomes: &[Outcome], at_us: i64) -> (Option<Duration>, usize) {
    let took: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.sent_us >= at_us + 2_000_000 && o.sent_us < at_us + 6_000_000)
        .map(|o| o.took)
        .collect();
    ((!took.is_empty()).then(|| percentile(&took, 50.0)), took.len())
}

/// One kill -9 of the primary's process.
struct Kill {
    at_us: i64,
    /// The same request just before the kill (no fault: the generation's own time).
    before: Duration,
    /// kill(2) returned -> the next request's answer, and who answered it.
    next: Duration,
    next_by: Option<String>,
    next_ok: bool,
    /// kill -> the primary answering again (the daemon restarted it).
    primary_back: Option<Duration>,
    /// Whether the daemon moved the agent (only when probes saw the primary down twice).
    failover: Option<Duration>,
    /// Requests sent 2-6 s after the kill: p50 latency.
    later: Option<Duration>,
}

fn kill_series(rt: &tokio::runtime::Runtime, daemon: &Daemon, rounds: usize) -> (Vec<Kill>, Vec<Outcome>) {
    let target = daemon.target("scribe");
    let steady = Steady::start(rt, target.clone());
    // A new connection for each of these two requests: on a reused connection to the bus the
    // answer can wait for the client's delayed ACK (see the overhead measure), which is not
    // what is measured here.
    let client = http_client_fresh();
    let mut kills = Vec::new();
    for round in 0..rounds {
        let pid = wait_steady_state(daemon, RESET_AFTER_S + 1);
        // Land the kill at a different point of the probe cycle each round.
        pause(Duration::from_millis(137 * round as u64 % 1000));
        let before = rt.block_on(chat(&client, &target, false, REQUEST_LIMIT));
        let at = Instant::now();
        // SAFETY: kill has no memory effects; the pid is the Service's, as status just said.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let at_us = epoch_us();
        let next = rt.block_on(chat(&client, &target, false, REQUEST_LIMIT));
        let next_took = next.sent.duration_since(at) + next.took;
        let primary_back = wait_for("the primary back", Duration::from_secs(30), || {
            listening(daemon.primary)
        })
        .ok()
        .map(|_| at.elapsed());
        eprintln!(
            "kill {}: next request answered after {} by {} ({}), primary back after {}",
            round + 1,
            ms(next_took),
            next.by.as_deref().unwrap_or("?"),
            next.error.as_deref().unwrap_or("ok"),
            primary_back.map_or("never".into(), ms)
        );
        kills.push(Kill {
            at_us,
            before: before.took,
            next: next_took,
            next_by: next.by.clone(),
            next_ok: next.ok(),
            primary_back,
            failover: None,
            later: None,
        });
    }
    wait_steady_state(daemon, 0);
    // The steady client covers 6 s after the last kill too (the 2-6 s window of `later_p50`).
    if let Some(last) = kills.last() {
        while epoch_us() < last.at_us + 6_500_000 {
            pause(Duration::from_millis(50));
        }
    }
    let outcomes = steady.finish(rt);
    let lines = read_log(&daemon.log);
    for kill in &mut kills {
        kill.later = later_p50(&outcomes, kill.at_us).0;
        kill.failover = logged_after(
            &lines,
            kill.at_us,
            "route",
            &[("agent", json!("scribe")), ("change", json!("Failover"))],
        )
        .filter(|t| *t < kill.at_us + 10_000_000)
        .map(|t| us(t - kill.at_us));
    }
    (kills, outcomes)
}

/// One generation hang of the primary.
struct Hang {
    /// hang -> provider unhealthy, -> route switched, -> service restart begun (daemon log).
    unhealthy: Option<Duration>,
    failover: Option<Duration>,
    restart: Option<Duration>,
    /// hang -> the first answer by the backup of a request sent after the hang (steady client).
    first_backup: Option<Duration>,
    /// The slowest request sent between the hang and the route switch.
    slowest: Option<Duration>,
    /// hang -> failback (route back on the primary).
    failback: Option<Duration>,
    /// Requests sent 2-6 s after the hang: p50 latency.
    later: Option<Duration>,
}

fn hang_series(rt: &tokio::runtime::Runtime, daemon: &Daemon, rounds: usize) -> (Vec<Hang>, Vec<Outcome>) {
    let steady = Steady::start(rt, daemon.target("scribe"));
    let mut starts = Vec::new();
    for round in 0..rounds {
        wait_steady_state(daemon, RESET_AFTER_S + 1);
        pause(Duration::from_millis(137 * round as u64 % 1000));
        fault(rt, daemon.primary, json!({"mode": "hang-generate"}));
        let at_us = epoch_us();
        let at = Instant::now();
        let switched = wait_for("failover", Duration::from_secs(30), || {
            daemon
                .status()
                .is_some_and(|s| route_of(&s, "scribe").is_some_and(|(p, _)| p == "backup"))
        });
        let back = wait_for("failback", Duration::from_secs(60), || {
            daemon
                .status()
                .is_some_and(|s| route_of(&s, "scribe") == Some(("primary".into(), false)))
        });
        eprintln!(
            "hang {}: route on the backup after ~{} (status), back on the primary after ~{}",
            round + 1,
            switched.map_or_else(|e| e, ms),
            back.map_or_else(|e| e, |_| ms(at.elapsed()))
        );
        starts.push(at_us);
    }
    wait_steady_state(daemon, 0);
    pause(Duration::from_millis(500));
    let outcomes = steady.finish(rt);
    let lines = read_log(&daemon.log);
    let hangs = starts
        .iter()
        .map(|&at_us| {
            let within = |t: i64| t < at_us + 30_000_000;
            let unhealthy = logged_after(
                &lines,
                at_us,
                "provider health changed",
                &[("provider", json!("primary")), ("healthy", json!(false))],
            )
            .filter(|t| within(*t));
            let failover = logged_after(
                &lines,
                at_us,
                "route",
                &[("agent", json!("scribe")), ("change", json!("Failover"))],
            )
            .filter(|t| within(*t));
            // The service is named `llm-primary` or `Service/llm-primary`, by version.
            let restart = lines
                .iter()
                .filter(|l| l.at_us >= at_us && l.message == "restarting the provider's service")
                .find(|l| l.field_str("service").is_some_and(|s| s.ends_with("llm-primary")))
                .map(|l| l.at_us)
                .filter(|t| within(*t));
            let failback = logged_after(
                &lines,
                at_us,
                "route",
                &[("agent", json!("scribe")), ("change", json!("Failback"))],
            )
            .filter(|t| t < &(at_us + 60_000_000));
            let first_backup = outcomes
                .iter()
                .filter(|o| o.sent_us >= at_us && o.ok() && o.by.as_deref() == Some("backup"))
                .map(|o| o.done_us())
                .filter(|t| within(*t))
                .min();
            let slowest = failover.and_then(|f| {
                outcomes
                    .iter()
                    .filter(|o| o.sent_us >= at_us && o.sent_us <= f)
                    .map(|o| o.took)
                    .max()
            });
            Hang {
                unhealthy: unhealthy.map(|t| us(t - at_us)),
                failover: failover.map(|t| us(t - at_us)),
                restart: restart.map(|t| us(t - at_us)),
                first_backup: first_backup.map(|t| us(t - at_us)),
                slowest,
                failback: failback.map(|t| us(t - at_us)),
                later: later_p50(&outcomes, at_us).0,
            }
        })
        .collect();
    (hangs, outcomes)
}

/// Sequential latencies of one path.
#[derive(Default)]
struct Latencies {
    whole: Vec<Duration>,
    first_token: Vec<Duration>,
    errors: usize,
}

/// The paths interleaved (which goes first rotates), each with its own client: over one
/// keep-alive connection, or over a new connection per request (`true`).
fn overhead(rt: &tokio::runtime::Runtime, paths: &[(&Target, bool)], warmup: usize, samples: usize) -> Vec<Latencies> {
    rt.block_on(async {
        let clients: Vec<HttpClient> = paths
            .iter()
            .map(|(_, fresh)| if *fresh { http_client_fresh() } else { http_client() })
            .collect();
        let mut out: Vec<Latencies> = paths.iter().map(|_| Latencies::default()).collect();
        for i in 0..warmup + samples {
            for k in 0..paths.len() {
                let k = (k + i) % paths.len();
                let (target, client) = (paths[k].0, &clients[k]);
                let whole = chat(client, target, false, REQUEST_LIMIT).await;
                let streamed = chat(client, target, true, REQUEST_LIMIT).await;
                if i < warmup {
                    continue;
                }
                let latencies = &mut out[k];
                if whole.ok() {
                    latencies.whole.push(whole.took);
                } else {
                    latencies.errors += 1;
                }
                match (streamed.ok(), streamed.first) {
                    (true, Some(first)) => latencies.first_token.push(first),
                    _ => latencies.errors += 1,
                }
            }
        }
        out
    })
}

/// `n` streams at once: (wall time, per-stream time to first bytes, errors, one error).
fn concurrent(target: &Target, n: usize) -> (Duration, Vec<Duration>, usize, Option<String>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = http_client();
        let begun = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (client, target) = (client.clone(), target.clone());
                tokio::spawn(async move { chat(&client, &target, true, REQUEST_LIMIT).await })
            })
            .collect();
        let mut firsts = Vec::new();
        let mut errors = 0;
        let mut example = None;
        for task in tasks {
            match task.await {
                Ok(o) if o.ok() => firsts.extend(o.first),
                Ok(o) => {
                    errors += 1;
                    example = example.or(o.error);
                }
                Err(e) => {
                    errors += 1;
                    example = example.or(Some(e.to_string()));
                }
            }
        }
        (begun.elapsed(), firsts, errors, example)
    })
}

// ---------------------------------------------------------------------------------------------
// The peer: LiteLLM's proxy

struct Peer {
    /// `fallbacks` (two model groups) or `ordered` (one group, two deployments with `order`).
    config: &'static str,
    dir: PathBuf,
    pid: i32,
    log: PathBuf,
    port: u16,
    a: u16,
    a_pid: i32,
    spawned: Instant,
}

fn litellm_executable() -> Result<PathBuf, String> {
    let Some(path) = std::env::var_os("MIRROR_BENCH_LITELLM") else {
        return Err(
            "MIRROR_BENCH_LITELLM is not set (the path of a `litellm` executable from \
                    `pip install 'litellm[proxy]'`): LiteLLM part skipped"
                .into(),
        );
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!(
            "MIRROR_BENCH_LITELLM={}: no such file: LiteLLM part skipped",
            path.display()
        ));
    }
    Ok(path)
}

fn litellm_version(litellm: &Path) -> String {
    Command::new(litellm.parent().unwrap_or(Path::new(".")).join("python"))
        .args(["-c", "import importlib.metadata as m; print(m.version('litellm'))"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// Starts a LiteLLM proxy in front of two new fake-llm instances A and B (not waiting for it).
fn spawn_peer(guard: &mut Guard, work: &Path, litellm: &Path, config: &'static str) -> Result<Peer, String> {
    let dir = work.join(format!("litellm-{config}"));
    fs::create_dir_all(&dir).unwrap();
    let (a, a_pid) = spawn_fake(guard, &dir, "A", 0, TOKEN_DELAY_MS);
    let (b, _) = spawn_fake(guard, &dir, "B", 0, TOKEN_DELAY_MS);
    let port = free_port();
    let params = |upstream: u16, extra: &str| {
        format!(
            "{{model: \"ollama_chat/{MODEL}\", api_base: \"http://127.0.0.1:{upstream}\", timeout: 2, stream_timeout: 2{extra}}}"
        )
    };
    let models = if config == "ordered" {
        format!(
            "model_list:\n  - model_name: agent\n    litellm_params: {}\n  - model_name: agent\n    litellm_params: {}\n",
            params(a, ", order: 1"),
            params(b, ", order: 2")
        )
    } else {
        format!(
            "model_list:\n  - model_name: agent\n    litellm_params: {}\n  - model_name: agent-backup\n    litellm_params: {}\nrouter_settings:\n  fallbacks: [{{agent: [agent-backup]}}]\n",
            params(a, ""),
            params(b, "")
        )
    };
    let config_file = dir.join("config.yaml");
    fs::write(
        &config_file,
        format!("{models}litellm_settings:\n  telemetry: false\ngeneral_settings:\n  master_key: {LITELLM_KEY}\n"),
    )
    .unwrap();
    let log = dir.join("litellm.log");
    let child = Command::new(litellm)
        .arg("--config")
        .arg(&config_file)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .current_dir(&dir)
        // Offline: the bundled model price map, not a fetch from GitHub.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_TELEMETRY", "False")
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("litellm.out")).unwrap())
        .stderr(File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{}: {e}", litellm.display()))?;
    let pid = child.id() as i32;
    guard.adopt(child);
    eprintln!("LiteLLM ({config}): proxy on port {port}, fake-llm A on {a}, B on {b}");
    Ok(Peer {
        config,
        dir,
        pid,
        log,
        port,
        a,
        a_pid,
        spawned: Instant::now(),
    })
}

/// Waits until the proxy listens.
fn peer_ready(peer: &Peer) -> Result<(), String> {
    wait_for("the LiteLLM proxy listening", Duration::from_secs(180), || {
        listening(peer.port) || stat(peer.pid).is_none_or(|(state, ..)| state == b'Z')
    })?;
    if !listening(peer.port) {
        let text = fs::read_to_string(&peer.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        return Err(format!(
            "the LiteLLM proxy ({}) exited:\n{}",
            peer.config,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    eprintln!(
        "LiteLLM ({}) listening {} after it was spawned",
        peer.config,
        ms(peer.spawned.elapsed())
    );
    Ok(())
}

impl Peer {
    fn target(&self) -> Target {
        Target {
            port: self.port,
            openai: true,
            token: Some(LITELLM_KEY.into()),
            model: "agent".into(),
        }
    }
}

/// One LiteLLM configuration's results.
struct PeerRun {
    config: &'static str,
    /// Direct to A, and through the proxy (keep-alive).
    lat: Vec<Latencies>,
    kills: Vec<PeerFault>,
    kill_outcomes: Vec<Outcome>,
    hangs: Vec<PeerFault>,
    hang_outcomes: Vec<Outcome>,
}

/// One fault of the peer's primary: fault -> the next request's answer (and by whom), and the
/// latencies of the requests that followed while the fault lasted.
struct PeerFault {
    next: Duration,
    next_by: Option<String>,
    next_ok: bool,
    /// Sent 2-6 s after the fault: p50 of their latency (the deployment cooled down or not).
    later_p50: Option<Duration>,
    later_by_backup: usize,
    later: usize,
}

fn peer_series(
    rt: &tokio::runtime::Runtime,
    guard: &mut Guard,
    peer: &mut Peer,
    rounds: usize,
    hang: bool,
) -> (Vec<PeerFault>, Vec<Outcome>) {
    let target = peer.target();
    let steady = Steady::start(rt, target.clone());
    let client = http_client();
    let mut faults = Vec::new();
    let mut marks = Vec::new();
    for round in 0..rounds {
        // Steady state: answered by A.
        wait_for("LiteLLM answering from A", Duration::from_secs(60), || {
            let o = rt.block_on(chat(&client, &target, false, REQUEST_LIMIT));
            o.ok() && o.by.as_deref() == Some("A")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        pause(Duration::from_millis(1000 + 137 * round as u64 % 1000));
        let at = Instant::now();
        if hang {
            fault(rt, peer.a, json!({"mode": "hang-generate"}));
        } else {
            // SAFETY: kill has no memory effects; A is our child, not yet reaped.
            unsafe { libc::kill(peer.a_pid, libc::SIGKILL) };
        }
        let at_us = epoch_us();
        let next = rt.block_on(chat(&client, &target, false, REQUEST_LIMIT));
        let next_took = next.sent.duration_since(at) + next.took;
        eprintln!(
            "LiteLLM ({}) {} {}: next request answered after {} by {} ({})",
            peer.config,
            if hang { "hang" } else { "kill" },
            round + 1,
            ms(next_took),
            next.by.as_deref().unwrap_or("?"),
            next.error.as_deref().unwrap_or("ok")
        );
        // The fault lasts 7 s, then A is restored (LiteLLM restarts nothing itself).
        let until = at + Duration::from_secs(7);
        while Instant::now() < until {
            pause(Duration::from_millis(50));
        }
        if hang {
            fault(rt, peer.a, json!({"mode": "none"}));
        } else {
            guard.stop_group(peer.a_pid);
            let (_, pid) = spawn_fake(guard, &peer.dir, "A", peer.a, TOKEN_DELAY_MS);
            peer.a_pid = pid;
        }
        marks.push(at_us);
        faults.push(PeerFault {
            next: next_took,
            next_by: next.by.clone(),
            next_ok: next.ok(),
            later_p50: None,
            later_by_backup: 0,
            later: 0,
        });
    }
    pause(Duration::from_secs(2));
    let outcomes = steady.finish(rt);
    for (fault, at_us) in faults.iter_mut().zip(&marks) {
        let later: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.sent_us >= at_us + 2_000_000 && o.sent_us < at_us + 6_000_000)
            .collect();
        fault.later = later.len();
        fault.later_by_backup = later.iter().filter(|o| o.by.as_deref() == Some("B")).count();
        let took: Vec<Duration> = later.iter().map(|o| o.took).collect();
        fault.later_p50 = (!took.is_empty()).then(|| percentile(&took, 50.0));
    }
    (faults, outcomes)
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

fn msf(v: f64) -> String {
    format!("{v:.3} ms")
}

fn p50_max(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "n/a".into();
    }
    format!(
        "{} / {} (n={})",
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 100.0)),
        samples.len()
    )
}

fn opt_p50_max(samples: &[Option<Duration>]) -> String {
    let seen: Vec<Duration> = samples.iter().flatten().copied().collect();
    let missing = samples.len() - seen.len();
    let mut text = p50_max(&seen);
    if missing > 0 {
        text.push_str(&format!(", {missing} not seen"));
    }
    text
}

fn pcts(samples: &[Duration]) -> [f64; 3] {
    [50.0, 90.0, 99.0].map(|p| percentile(samples, p).as_secs_f64() * 1e3)
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "met"
    } else {
        "MISSED"
    }
}

fn who(names: &[Option<String>]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for name in names {
        let name = name.clone().unwrap_or_else(|| "nobody".into());
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .iter()
        .map(|(n, c)| format!("{n} x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick {
        Rounds {
            kills: 2,
            hangs: 2,
            hangs_threshold_one: 1,
            warmup: 50,
            samples: 300,
            keepalive_warmup: 20,
            keepalive_samples: 100,
            concurrent: 200,
            peer_kills: 1,
            peer_hangs: 1,
            peer_samples: 50,
        }
    } else {
        Rounds {
            kills: 5,
            hangs: 5,
            hangs_threshold_one: 3,
            warmup: 200,
            samples: 2000,
            keepalive_warmup: 30,
            keepalive_samples: 200,
            concurrent: 200,
            peer_kills: 2,
            peer_hangs: 2,
            peer_samples: 200,
        }
    };
    let bench_started = Instant::now();
    catch_signals();
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes how orphans are reparented.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut guard = Guard::default();
    let mut work = Some(tempfile::tempdir().unwrap());
    let work_dir = work.as_ref().unwrap().path().to_path_buf();
    if std::env::var_os("MIRROR_BENCH_KEEP").is_some() {
        eprintln!("MIRROR_BENCH_KEEP: the work dir {} is kept", work_dir.display());
        let _ = work.take().map(|t| t.keep());
    }
    let w = work_dir.as_path();
    let load_before = load_average();
    let machine_line = machine();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // --- the daemon, with the failover pair and `direct`
    let (direct_port, _) = spawn_fake(&mut guard, w, "direct", 0, 0);
    let daemon = start_daemon(&mut guard, w, "main", Some(direct_port), FAILURE_THRESHOLD);
    let started = Instant::now();
    wait_steady_state(&daemon, 0);
    wait_for("the agents' tokens and the bus", Duration::from_secs(20), || {
        daemon.token("scribe").is_some() && daemon.token("meter").is_some() && listening(daemon.bus)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail()));
    eprintln!("daemon ready after {}", ms(started.elapsed()));
    let meter = daemon.target("meter");
    let direct = Target::ollama(direct_port, None, MODEL);
    let check = single.block_on(chat(&http_client(), &meter, false, REQUEST_LIMIT));
    assert!(
        check.ok() && check.by.as_deref() == Some("direct"),
        "the bus answers the meter agent from direct: {check:?}"
    );

    // --- overhead: sequential, direct and through the bus
    eprintln!(
        "overhead: {} + {} samples of direct and bus over keep-alive connections; {} + {} of direct (keep-alive), bus (new connections), direct (new connections)",
        rounds.keepalive_warmup, rounds.keepalive_samples, rounds.warmup, rounds.samples
    );
    let lat_keep = overhead(
        &single,
        &[(&direct, false), (&meter, false)],
        rounds.keepalive_warmup,
        rounds.keepalive_samples,
    );
    let lat_fresh = overhead(
        &single,
        &[(&direct, false), (&meter, true), (&direct, true)],
        rounds.warmup,
        rounds.samples,
    );
    let (direct_lat, bus_lat) = (&lat_keep[0], &lat_keep[1]);
    let (direct_keep2, bus_fresh, direct_fresh) = (&lat_fresh[0], &lat_fresh[1], &lat_fresh[2]);

    // --- 200 concurrent streams
    fault(&rt, direct_port, json!({"token_delay_ms": CONCURRENT_TOKEN_DELAY_MS}));
    let conc_direct = concurrent(&direct, rounds.concurrent);
    let conc_bus = concurrent(&meter, rounds.concurrent);
    eprintln!(
        "{} concurrent streams: direct {} wall, {} errors; bus {} wall, {} errors{}",
        rounds.concurrent,
        ms(conc_direct.0),
        conc_direct.2,
        ms(conc_bus.0),
        conc_bus.2,
        conc_bus.3.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
    );
    fault(&rt, direct_port, json!({"token_delay_ms": 0}));

    // --- kill -9 of the primary, then hangs, with a steady client
    let (kills, kill_outcomes) = kill_series(&rt, &daemon, rounds.kills);
    print_failures("kill", &kill_outcomes);
    let (hangs_main, hang_outcomes) = hang_series(&rt, &daemon, rounds.hangs);
    print_failures("hang", &hang_outcomes);
    let overhead_load = load_average();
    guard.stop_daemons();

    // --- hangs with failureThreshold 1 (a fresh daemon: see the report on threshold changes)
    let daemon_one = start_daemon(&mut guard, w, "threshold-1", None, 1);
    wait_steady_state(&daemon_one, 0);
    wait_for("the bus", Duration::from_secs(20), || {
        daemon_one.token("scribe").is_some() && listening(daemon_one.bus)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_one.log_tail()));
    let (hangs_one, hang_one_outcomes) = hang_series(&rt, &daemon_one, rounds.hangs_threshold_one);
    print_failures("hang (threshold 1)", &hang_one_outcomes);
    guard.stop_daemons();

    // --- LiteLLM
    let peer_result = litellm_executable().and_then(|litellm| {
        let version = litellm_version(&litellm);
        // Both proxies start together (their start-up is mostly Python imports).
        let mut peers = vec![
            spawn_peer(&mut guard, w, &litellm, "fallbacks")?,
            spawn_peer(&mut guard, w, &litellm, "ordered")?,
        ];
        let mut runs = Vec::new();
        for peer in &mut peers {
            peer_ready(peer)?;
            let target = peer.target();
            let direct_a = Target::ollama(peer.a, None, MODEL);
            // Warm-up (its first requests load modules), then the overhead against A directly.
            let lat = overhead(
                &single,
                &[(&direct_a, false), (&target, false)],
                20,
                if peer.config == "ordered" {
                    rounds.peer_samples
                } else {
                    0
                },
            );
            let (kills, kill_outcomes) = peer_series(&rt, &mut guard, peer, rounds.peer_kills, false);
            print_failures(&format!("LiteLLM ({}) kill", peer.config), &kill_outcomes);
            let (hangs, hang_outcomes) = peer_series(&rt, &mut guard, peer, rounds.peer_hangs, true);
            print_failures(&format!("LiteLLM ({}) hang", peer.config), &hang_outcomes);
            guard.stop_group(peer.pid);
            runs.push(PeerRun {
                config: peer.config,
                lat,
                kills,
                kill_outcomes,
                hangs,
                hang_outcomes,
            });
        }
        Ok((version, runs))
    });
    let leftovers = guard.stop_all();

    // --- the report
    let kill_losses = Losses::of(&kill_outcomes);
    let hang_losses = Losses::of(&hang_outcomes);
    let hangs = &hangs_main;
    let hang_one_losses = Losses::of(&hang_one_outcomes);
    let mut all = kill_losses;
    all.add(hang_losses);
    all.add(hang_one_losses);
    let next: Vec<Duration> = kills.iter().map(|k| k.next).collect();
    let next_ours = next.clone();
    let next_max = next.iter().max().copied().unwrap_or_default();
    let kill_pass = kills.iter().all(|k| k.next_ok) && next_max <= KILL_TARGET;
    let hang_target = Duration::from_millis(PROBE_TIMEOUT_MS + PROBE_INTERVAL_MS);
    // With failureThreshold N the N-th failed probe ends at most interval + N*timeout +
    // (N-1)*interval after the hang.
    let bound = |n: u64| Duration::from_millis(PROBE_INTERVAL_MS * n + PROBE_TIMEOUT_MS * n);

    println!();
    println!("{machine_line}");
    println!(
        "load average before {load_before}, after the failover part {overhead_load}, at the end {}",
        load_average()
    );
    println!(
        "providers: health interval {PROBE_INTERVAL_MS} ms, timeout {PROBE_TIMEOUT_MS} ms, failureThreshold {FAILURE_THRESHOLD} (and 1); failbackAfter {FAILBACK_AFTER}; fake-llm 8 tokens, {TOKEN_DELAY_MS} ms before each"
    );
    println!();
    println!("| measure | mirrorctl bus | target | verdict |");
    println!("|---|---|---|---|");
    println!(
        "| kill -9 of the primary -> next request answered, p50 / max | {} (answered by: {}) | <= 2 s | {} |",
        p50_max(&next),
        who(&kills.iter().map(|k| k.next_by.clone()).collect::<Vec<_>>()),
        verdict(kill_pass)
    );
    println!(
        "| the same request just before each kill (no fault), p50 / max | {} | | |",
        p50_max(&kills.iter().map(|k| k.before).collect::<Vec<_>>())
    );
    println!(
        "| kill -9 -> the primary answering again (restarted by the daemon), p50 / max | {} | | |",
        opt_p50_max(&kills.iter().map(|k| k.primary_back).collect::<Vec<_>>())
    );
    println!(
        "| kill -9 -> route switched to the backup | {} of {} kills (the restart was faster than 2 failed probes) | | |",
        kills.iter().filter(|k| k.failover.is_some()).count(),
        kills.len()
    );
    for (threshold, hangs) in [(FAILURE_THRESHOLD, hangs), (1, &hangs_one)] {
        let failovers: Vec<Duration> = hangs.iter().filter_map(|h| h.failover).collect();
        let worst = failovers.iter().max().copied();
        let target_text = if threshold == 1 {
            format!("<= timeout + interval = {}", ms(hang_target))
        } else {
            format!(
                "<= timeout + interval = {}; bound for threshold {threshold}: {}",
                ms(hang_target),
                ms(bound(threshold as u64))
            )
        };
        let pass = failovers.len() == hangs.len() && worst.is_some_and(|w| w <= hang_target);
        println!(
            "| hang (threshold {threshold}) -> route switched (daemon log), p50 / max | {} | {target_text} | {} |",
            opt_p50_max(&hangs.iter().map(|h| h.failover).collect::<Vec<_>>()),
            if pass {
                "met".to_string()
            } else if worst.is_some_and(|w| w <= bound(threshold as u64)) {
                format!("MISSED (within its bound {})", ms(bound(threshold as u64)))
            } else {
                "MISSED".to_string()
            }
        );
        println!(
            "| hang (threshold {threshold}) -> provider unhealthy (threshold reached); -> service restart begun | {}; {} | | |",
            opt_p50_max(&hangs.iter().map(|h| h.unhealthy).collect::<Vec<_>>()),
            opt_p50_max(&hangs.iter().map(|h| h.restart).collect::<Vec<_>>())
        );
        println!(
            "| hang (threshold {threshold}) -> first answer by the backup (steady client) | {} | | |",
            opt_p50_max(&hangs.iter().map(|h| h.first_backup).collect::<Vec<_>>())
        );
        println!(
            "| hang (threshold {threshold}): slowest request sent before the switch (held on the hung primary, then retried on the backup) | {} | | |",
            opt_p50_max(&hangs.iter().map(|h| h.slowest).collect::<Vec<_>>())
        );
        println!(
            "| hang (threshold {threshold}) -> failback to the restarted primary | {} | | |",
            opt_p50_max(&hangs.iter().map(|h| h.failback).collect::<Vec<_>>())
        );
    }
    println!(
        "| steady client (20 req/s) across {} kills | {} | 0 lost | {} |",
        kills.len(),
        kill_losses.text(),
        verdict(kill_losses.lost == 0)
    );
    println!(
        "| steady client across {} hangs + failbacks (threshold 2) | {} | 0 lost | {} |",
        hangs.len(),
        hang_losses.text(),
        verdict(hang_losses.lost == 0)
    );
    println!(
        "| steady client across {} hangs + failbacks (threshold 1) | {} | 0 lost | {} |",
        hangs_one.len(),
        hang_one_losses.text(),
        verdict(hang_one_losses.lost == 0)
    );
    println!(
        "| steady client, all | {} | 0 lost | {} |",
        all.text(),
        verdict(all.lost == 0)
    );
    let overhead_rows = |label: &str, direct: &[Duration], bus: &[Duration]| -> bool {
        let (d, b) = (pcts(direct), pcts(bus));
        let over = [b[0] - d[0], b[1] - d[1], b[2] - d[2]];
        println!(
            "| {label}: direct p50 / p90 / p99 | {} / {} / {} | | |",
            msf(d[0]),
            msf(d[1]),
            msf(d[2])
        );
        println!(
            "| {label}: through the bus p50 / p90 / p99 | {} / {} / {} | | |",
            msf(b[0]),
            msf(b[1]),
            msf(b[2])
        );
        let pass = over[0] <= OVERHEAD_TARGET_MS;
        println!(
            "| {label}: bus overhead p50 / p90 / p99 | {} / {} / {} | p50 <= 1 ms | {} |",
            msf(over[0]),
            msf(over[1]),
            msf(over[2]),
            verdict(pass)
        );
        pass
    };
    println!(
        "| overhead samples, keep-alive connections (sequential, after {} warm-up) | {} per path; errors: direct {}, bus {} | | |",
        rounds.keepalive_warmup, rounds.keepalive_samples, direct_lat.errors, bus_lat.errors
    );
    overhead_rows("keep-alive, non-streamed request", &direct_lat.whole, &bus_lat.whole);
    overhead_rows(
        "keep-alive, streamed, time to first token",
        &direct_lat.first_token,
        &bus_lat.first_token,
    );
    println!(
        "| overhead samples, bus over a new connection per request vs direct over keep-alive (sequential, after {} warm-up) | {} per path; errors: direct {}, bus {} | | |",
        rounds.warmup, rounds.samples, direct_keep2.errors, bus_fresh.errors
    );
    overhead_rows(
        "bus new connection vs direct keep-alive, non-streamed request",
        &direct_keep2.whole,
        &bus_fresh.whole,
    );
    overhead_rows(
        "bus new connection vs direct keep-alive, streamed, time to first token",
        &direct_keep2.first_token,
        &bus_fresh.first_token,
    );
    let (d, f) = (pcts(&direct_fresh.whole), pcts(&direct_fresh.first_token));
    println!(
        "| (for reference) direct over a new connection per request: non-streamed p50 / p99; first token p50 / p99 | {} / {}; {} / {} | | |",
        msf(d[0]),
        msf(d[2]),
        msf(f[0]),
        msf(f[2])
    );
    for (label, c) in [("direct", &conc_direct), ("through the bus", &conc_bus)] {
        let firsts = if c.1.is_empty() {
            "n/a".to_string()
        } else {
            format!("{} / {}", ms(percentile(&c.1, 50.0)), ms(percentile(&c.1, 99.0)))
        };
        println!(
            "| {} concurrent streams {label}: errors; wall; first token p50 / p99 | {}; {}; {} | 0 errors | {} |",
            rounds.concurrent,
            c.2,
            ms(c.0),
            firsts,
            if label == "direct" { "" } else { verdict(c.2 == 0) }
        );
    }
    println!();
    match &peer_result {
        Err(why) => println!("LiteLLM: {why}"),
        Ok((version, runs)) => {
            println!("LiteLLM {version} proxy, ollama_chat deployments with timeout 2 s, otherwise defaults; \"fallbacks\": two model groups and `fallbacks`; \"ordered\": one model group, two deployments with `order: 1` / `order: 2`:");
            println!();
            let mut header = "| measure |".to_string();
            for run in runs {
                header.push_str(&format!(" LiteLLM {} |", run.config));
            }
            println!("{header} mirrorctl bus |");
            println!("|---|{}---|", "---|".repeat(runs.len()));
            let row = |label: &str, cell: &dyn Fn(&PeerRun) -> String, ours: String| {
                let cells: Vec<String> = runs.iter().map(cell).collect();
                println!("| {label} | {} | {ours} |", cells.join(" | "));
            };
            let next = |faults: &[PeerFault]| {
                format!(
                    "{} (by: {}; ok: {}/{})",
                    p50_max(&faults.iter().map(|k| k.next).collect::<Vec<_>>()),
                    who(&faults.iter().map(|k| k.next_by.clone()).collect::<Vec<_>>()),
                    faults.iter().filter(|k| k.next_ok).count(),
                    faults.len()
                )
            };
            let later = |faults: &[PeerFault]| {
                faults
                    .iter()
                    .map(|k| {
                        format!(
                            "{} ({}/{})",
                            k.later_p50.map_or("n/a".into(), ms),
                            k.later_by_backup,
                            k.later
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            row(
                "kill -9 of the primary -> next request answered, p50 / max",
                &|r| next(&r.kills),
                p50_max(&next_ours),
            );
            row(
                "kill: requests sent 2-6 s after the kill: p50 latency per kill (answered by the backup / sent)",
                &|r| later(&r.kills),
                format!(
                    "{} (the primary answers again after {}: restarted by the daemon)",
                    kills
                        .iter()
                        .map(|k| k.later.map_or("n/a".into(), ms))
                        .collect::<Vec<_>>()
                        .join(", "),
                    opt_p50_max(&kills.iter().map(|k| k.primary_back).collect::<Vec<_>>())
                ),
            );
            row(
                "hang -> next request answered, p50 / max",
                &|r| next(&r.hangs),
                format!(
                    "first answer by the backup: {} (threshold 2), {} (threshold 1)",
                    opt_p50_max(&hangs.iter().map(|h| h.first_backup).collect::<Vec<_>>()),
                    opt_p50_max(&hangs_one.iter().map(|h| h.first_backup).collect::<Vec<_>>())
                ),
            );
            row(
                "hang: requests sent 2-6 s after the hang: p50 latency per hang (answered by the backup / sent)",
                &|r| later(&r.hangs),
                format!(
                    "{} (threshold 2); {} (threshold 1); route switched after {} (threshold 2), {} (threshold 1)",
                    hangs
                        .iter()
                        .map(|h| h.later.map_or("n/a".into(), ms))
                        .collect::<Vec<_>>()
                        .join(", "),
                    hangs_one
                        .iter()
                        .map(|h| h.later.map_or("n/a".into(), ms))
                        .collect::<Vec<_>>()
                        .join(", "),
                    opt_p50_max(&hangs.iter().map(|h| h.failover).collect::<Vec<_>>()),
                    opt_p50_max(&hangs_one.iter().map(|h| h.failover).collect::<Vec<_>>())
                ),
            );
            row(
                "steady client (20 req/s) across kills",
                &|r| Losses::of(&r.kill_outcomes).text(),
                kill_losses.text(),
            );
            row(
                "steady client across hangs",
                &|r| Losses::of(&r.hang_outcomes).text(),
                hang_losses.text(),
            );
            for (label, pick) in [
                (
                    "non-streamed",
                    (|l: &Latencies| &l.whole) as fn(&Latencies) -> &Vec<Duration>,
                ),
                ("time to first token", |l: &Latencies| &l.first_token),
            ] {
                let ours = {
                    let (ka, kb) = (pcts(pick(direct_lat)), pcts(pick(bus_lat)));
                    let (fa, fb) = (pcts(pick(direct_keep2)), pcts(pick(bus_fresh)));
                    format!(
                        "{} / {} (keep-alive); {} / {} (bus over new connections)",
                        msf(kb[0] - ka[0]),
                        msf(kb[2] - ka[2]),
                        msf(fb[0] - fa[0]),
                        msf(fb[2] - fa[2])
                    )
                };
                row(
                    &format!("overhead {label}, keep-alive, p50 / p99"),
                    &|r| {
                        let (d, p) = (pick(&r.lat[0]), pick(&r.lat[1]));
                        if d.is_empty() || p.is_empty() {
                            return "(not measured)".into();
                        }
                        let (a, b) = (pcts(d), pcts(p));
                        format!("{} / {} (n={})", msf(b[0] - a[0]), msf(b[2] - a[2]), p.len())
                    },
                    ours,
                );
            }
        }
    }
    record(
        &Ours {
            kills: &kills,
            kill_pass,
            hangs: [(FAILURE_THRESHOLD, hangs), (1, &hangs_one)],
            hang_target,
            lost: all.lost,
            overhead: [
                (
                    "keep-alive, non-streamed",
                    pcts(&bus_lat.whole)[0] - pcts(&direct_lat.whole)[0],
                ),
                (
                    "keep-alive, first token",
                    pcts(&bus_lat.first_token)[0] - pcts(&direct_lat.first_token)[0],
                ),
                (
                    "bus new connection, non-streamed",
                    pcts(&bus_fresh.whole)[0] - pcts(&direct_keep2.whole)[0],
                ),
                (
                    "bus new connection, first token",
                    pcts(&bus_fresh.first_token)[0] - pcts(&direct_keep2.first_token)[0],
                ),
            ],
            concurrent: (rounds.concurrent, conc_bus.2),
        },
        &peer_result,
    );
    println!();
    println!(
        "whole benchmark: {:.0} s{}",
        bench_started.elapsed().as_secs_f64(),
        if leftovers > 0 {
            format!("; cleanup killed {leftovers} leftover process(es)")
        } else {
            String::new()
        }
    );
}

/// What `record` needs of our side.
struct Ours<'a> {
    kills: &'a [Kill],
    kill_pass: bool,
    hangs: [(u32, &'a [Hang]); 2],
    hang_target: Duration,
    lost: usize,
    /// The bus overhead p50 (ms) of each overhead run.
    overhead: [(&'static str, f64); 4],
    /// Concurrent streams through the bus, and how many failed.
    concurrent: (usize, usize),
}

/// The machine-readable results (`MIRROR_BENCH_RESULTS`); LiteLLM's values where it measured
/// the same thing.
fn record(ours: &Ours, peer: &Result<(String, Vec<PeerRun>), String>) {
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    let p50 = |samples: &[Duration]| (!samples.is_empty()).then(|| millis(percentile(samples, 50.0)));
    let runs: &[PeerRun] = peer.as_ref().map_or(&[], |(_, runs)| runs);
    let litellm = |config: &str| match peer {
        Ok((version, _)) => format!("LiteLLM {version} {config}"),
        Err(_) => format!("LiteLLM {config}"),
    };
    let next: Vec<Duration> = ours.kills.iter().map(|k| k.next).collect();
    Measure::new(
        "bus",
        "kill -9 of the primary -> next request answered: max",
        next.iter().max().map_or(f64::NAN, |d| millis(*d)),
        "ms",
    )
    .target("<= 2 s", ours.kill_pass)
    .record();
    for run in runs {
        Measure::new(
            "bus",
            "kill -9 of the primary -> next request answered: p50",
            p50(&next).unwrap_or(f64::NAN),
            "ms",
        )
        .peer(
            &litellm(run.config),
            p50(&run.kills.iter().map(|k| k.next).collect::<Vec<_>>()),
        )
        .record();
    }
    for (threshold, hangs) in ours.hangs {
        let failovers: Vec<Duration> = hangs.iter().filter_map(|h| h.failover).collect();
        let worst = failovers.iter().max().copied();
        Measure::new(
            "bus",
            &format!("hang (threshold {threshold}) -> route switched: max"),
            worst.map_or(f64::NAN, millis),
            "ms",
        )
        .target(
            &format!("<= {:.0} ms (timeout + interval)", millis(ours.hang_target)),
            failovers.len() == hangs.len() && worst.is_some_and(|w| w <= ours.hang_target),
        )
        .record();
    }
    let (threshold, hangs) = ours.hangs[0];
    let first_backup: Vec<Duration> = hangs.iter().filter_map(|h| h.first_backup).collect();
    for run in runs {
        Measure::new(
            "bus",
            &format!("hang -> next request answered by the backup: p50 (ours: threshold {threshold})"),
            p50(&first_backup).unwrap_or(f64::NAN),
            "ms",
        )
        .peer(
            &litellm(run.config),
            p50(&run.hangs.iter().map(|h| h.next).collect::<Vec<_>>()),
        )
        .record();
    }
    Measure::new(
        "bus",
        "steady client across all kills and hangs: requests lost",
        ours.lost as f64,
        "requests",
    )
    .target("0 lost", ours.lost == 0)
    .record();
    // LiteLLM's overhead was measured over keep-alive, in the "ordered" configuration only.
    let peer_overhead = |pick: fn(&Latencies) -> &Vec<Duration>| {
        runs.iter().find(|r| r.config == "ordered").and_then(|r| {
            let (direct, proxy) = (pick(&r.lat[0]), pick(&r.lat[1]));
            (!direct.is_empty() && !proxy.is_empty()).then(|| pcts(proxy)[0] - pcts(direct)[0])
        })
    };
    for (i, (label, overhead)) in ours.overhead.into_iter().enumerate() {
        let peer = match i {
            0 => peer_overhead(|l| &l.whole),
            1 => peer_overhead(|l| &l.first_token),
            _ => None,
        };
        Measure::new("bus", &format!("bus overhead p50, {label}"), overhead, "ms")
            .peer(&litellm("ordered"), peer)
            .target("p50 <= 1 ms", overhead <= OVERHEAD_TARGET_MS)
            .record();
    }
    let (streams, errors) = ours.concurrent;
    Measure::new(
        "bus",
        &format!("{streams} concurrent streams through the bus: errors"),
        errors as f64,
        "errors",
    )
    .target("0 errors", errors == 0)
    .record();
    if let Err(why) = peer {
        results::note("bus", &format!("LiteLLM: {why}"));
    }
}
