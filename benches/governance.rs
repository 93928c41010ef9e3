//! Governance on the model bus (issue 7), in one run against the real bus served in-process:
//!
//! 1. Gate decision over HTTP: sequential `POST /v1/gate` on one keep-alive HTTP/1 connection,
//!    every decision a receipt through a real `Recorder` on SQLite (as the daemon wires it).
//!    Allowed, denied, needs-approval (a new request each time) and asked-again. Target: p50 of
//!    the allowed path at most 1 ms.
//! 2. Metering: a task calls the daemon-like meter (usage into the governance, a `Usage` record
//!    to the recorder) at 10,000 records/s while a client sends `POST /api/chat` (non-streamed)
//!    through the bus to an instant in-process Ollama stand-in. Reports the rate the recorder
//!    persisted (emit time + drain), that every record reached the store, and the bus latency
//!    with and without the load (baseline before and after, to show the noise), then the time to
//!    the answer's data with the load switched on and off in alternating 0.5 s blocks.
//! 3. Budget: a tokens-per-day budget, each request costing 9 tokens (7 prompt + 2 completion);
//!    requests until the first 429. Sequential: how many were served after the one that crossed
//!    (target 0). Then 8 concurrent clients, on an instant upstream and on a 20 ms one: the
//!    worst overshoot (requests already admitted when the crossing answer is metered are served).
//!
//! The chat latency is shown two ways: the whole answer as an HTTP client gets it (keep-alive),
//! and the time to the answer's data on a fresh raw connection (the bus's own work). On a
//! keep-alive connection the bus's chunked answer is held back by Nagle's algorithm until the
//! client's delayed ACK (~40 ms on Linux): the bus's listener does not set TCP_NODELAY, and the
//! response head goes out before the body. A raw keep-alive probe shows when head, data and
//! terminator arrive.
//!
//! Run: `cargo bench --bench governance` (release build). `-- --quick` does fewer requests.

// A measurement or test harness: raw signals and process calls (each block says why it is sound).
#![allow(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use mirrorctl::policy::EffectivePolicy;
use mirrorctl::report::now_ms;
use mirrorctl::router::bus::{self, BusState, Meter, Metered, Upstream};
use mirrorctl::router::governance::Governance;
use mirrorctl::spec::common::Budget;
use mirrorctl::spec::policy::{PolicySpec, Risk, Tool};
use mirrorctl::spec::provider::ProviderApi;
use mirrorctl::store::recorder::RecorderConfig;
use mirrorctl::store::{self, new_id, Record, Recorder, StoreUrl, Usage};

#[path = "common/results.rs"]
mod results;
use results::Measure;

type Http = Client<HttpConnector, Full<Bytes>>;

const HOST: &str = "bench-gov";
const GATE_TARGET: Duration = Duration::from_millis(1);
const METER_RATE: f64 = 10_000.0;
const PROMPT_TOKENS: u64 = 7;
const COMPLETION_TOKENS: u64 = 2;
const COST: u64 = PROMPT_TOKENS + COMPLETION_TOKENS;
/// 1,010 tokens: the crossing request is #113, one past a multiple of the 8 clients (a worst case
/// for clients in lockstep).
const BUDGET_TOKENS: u64 = 1_010;
const CONCURRENT_CLIENTS: usize = 8;
const SLOW_UPSTREAM: Duration = Duration::from_millis(20);

struct Settings {
    warmup: usize,
    gate_allow: usize,
    gate_other: usize,
    chat: usize,
    chat_limit: Duration,
    probes: usize,
    cycles: usize,
    meter_min: Duration,
    rounds_fast: usize,
    rounds_slow: usize,
}

/// Percentiles of a set of samples.
#[derive(Clone, Copy)]
struct Spread {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

fn spread(mut samples: Vec<Duration>) -> Spread {
    samples.sort();
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    Spread {
        n: samples.len(),
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        max: *samples.last().unwrap(),
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn show(s: &Spread) -> String {
    format!(
        "p50 {} / p90 {} / p99 {} / max {} (n={})",
        us(s.p50),
        us(s.p90),
        us(s.p99),
        us(s.max),
        s.n
    )
}

fn client() -> Http {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(tcp)
}

async fn post(client: &Http, url: &str, token: &str, body: &Bytes) -> (u16, Bytes) {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))
        .expect("a request");
    let answer = client.request(request).await.expect("the bus answers");
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await.expect("a whole body").to_bytes();
    (status, body)
}

/// `n` sequential requests with the same body, each timed from send to the end of its body.
async fn timed(client: &Http, url: &str, token: &str, body: &Bytes, n: usize, want: u16) -> Vec<Duration> {
    timed_for(client, url, token, body, n, Duration::MAX, want).await
}

/// At most `n` sequential requests, for at most `limit`.
async fn timed_for(
    client: &Http,
    url: &str,
    token: &str,
    body: &Bytes,
    n: usize,
    limit: Duration,
    want: u16,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n.min(100_000));
    let began = Instant::now();
    for _ in 0..n {
        if began.elapsed() >= limit {
            break;
        }
        let start = Instant::now();
        let (status, answer) = post(client, url, token, body).await;
        samples.push(start.elapsed());
        assert_eq!(status, want, "{}", String::from_utf8_lossy(&answer));
    }
    samples
}

/// An Ollama stand-in: `/api/chat` answers at once (the model `slow` after 20 ms).
async fn fake_chat(body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = request["model"].clone();
    if model == "slow" {
        tokio::time::sleep(SLOW_UPSTREAM).await;
    }
    axum::Json(json!({
        "model": model, "created_at": "2026-11-24T00:00:00Z",
        "message": {"role": "assistant", "content": "Hello"},
        "done": true, "done_reason": "stop",
        "prompt_eval_count": PROMPT_TOKENS, "eval_count": COMPLETION_TOKENS,
    }))
    .into_response()
}

fn policy(budget_tokens: Option<u64>) -> EffectivePolicy {
    let tool = |name: &str, risk| Tool {
        name: name.to_string(),
        risk,
    };
    EffectivePolicy::from_spec(&PolicySpec {
        tools: vec![
            tool("fs.read", Risk::Low),
            tool("net.fetch", Risk::Medium),
            tool("shell.exec", Risk::High),
            tool("disk.wipe", Risk::Critical),
        ],
        deny_above: Some(Risk::High),
        budget: budget_tokens.map(|t| Budget {
            tokens_per_day: Some(t),
            spend_per_day_usd: None,
        }),
        ..PolicySpec::default()
    })
}

/// The daemon's meter (`src/daemon/mod.rs` fn `meter`): price lookup, usage into the
/// governance, a `Usage` record to the recorder. Counts its calls.
fn meter(recorder: Recorder, governance: Governance, calls: Arc<AtomicU64>) -> Meter {
    let pricing: Arc<RwLock<HashMap<String, (f64, f64)>>> =
        Arc::new(RwLock::new(HashMap::from([("local".to_string(), (0.0, 0.0))])));
    Arc::new(move |m: Metered| {
        let cost = pricing
            .read()
            .ok()
            .and_then(|p| p.get(&m.provider).copied())
            .map_or(0.0, |(input, output)| {
                (m.prompt_tokens as f64 * input + m.completion_tokens as f64 * output) / 1e6
            });
        let now = now_ms();
        governance.record_usage(&m.agent, m.prompt_tokens + m.completion_tokens, cost, now);
        recorder.record(Record::Usage(Usage {
            id: new_id(),
            host: HOST.to_string(),
            agent: m.agent,
            provider: m.provider,
            model: m.model,
            prompt_tokens: m.prompt_tokens as i64,
            completion_tokens: m.completion_tokens as i64,
            cost_usd: cost,
            at_ms: now,
        }));
        calls.fetch_add(1, Ordering::Relaxed);
    })
}

/// What the metering driver did.
struct Driven {
    emitted: u64,
    elapsed: Duration,
    calls: Spread,
}

/// Calls `meter` at `METER_RATE` (catching up after each ~1 ms sleep) until `stop`.
async fn drive(meter: Meter, stop: Arc<AtomicBool>) -> Driven {
    let sample = Metered {
        agent: "meter-load".into(),
        provider: "local".into(),
        model: "llama3.2:1b".into(),
        prompt_tokens: PROMPT_TOKENS,
        completion_tokens: COMPLETION_TOKENS,
    };
    let mut latencies = Vec::with_capacity(120_000);
    let start = Instant::now();
    let mut emitted = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * METER_RATE) as u64;
        while emitted < due {
            let call = Instant::now();
            meter(sample.clone());
            latencies.push(call.elapsed());
            emitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Driven {
        emitted,
        elapsed: start.elapsed(),
        calls: spread(latencies),
    }
}

struct Bench {
    bus: SocketAddr,
    state: BusState,
    fast_upstream: String,
}

impl Bench {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.bus)
    }

    /// A new agent with its token, a route to the stand-in (model `slow` waits 20 ms) and a policy.
    fn agent(&self, name: &str, model: &str, budget_tokens: Option<u64>) -> String {
        let token = format!("tok-{name}-{}", new_id());
        self.state.set_token(name, &token);
        self.state.set_routes(
            name,
            vec![Upstream {
                provider: "local".into(),
                api: ProviderApi::Ollama,
                url: self.fast_upstream.clone(),
                model: model.into(),
                api_key: None,
                local: true,
            }],
        );
        self.state.governance().set_policy(name, policy(budget_tokens));
        token
    }
}

/// A raw HTTP/1 connection to the bus (TCP_NODELAY), to see when each part of an answer arrives.
struct Raw {
    tcp: tokio::net::TcpStream,
}

impl Raw {
    async fn connect(bus: SocketAddr) -> Raw {
        let tcp = tokio::net::TcpStream::connect(bus).await.expect("connect to the bus");
        tcp.set_nodelay(true).unwrap();
        Raw { tcp }
    }

    /// One chat: the time until the first bytes (the response head) arrived, until the body's
    /// first bytes arrived (the whole JSON answer is in the first chunk) and, when `wait_end`,
    /// until the chunked body's terminator arrived (what an HTTP client waits for before it
    /// hands over the answer).
    async fn chat(&mut self, token: &str, wait_end: bool) -> (Duration, Duration, Option<Duration>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = chat_body();
        let head = format!(
            "POST /api/chat HTTP/1.1\r\nhost: bus\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        let start = Instant::now();
        self.tcp.write_all(&request).await.unwrap();
        let mut seen = Vec::new();
        let mut buffer = [0u8; 8192];
        let mut first_data = None;
        let mut first_byte = None;
        loop {
            let n = self.tcp.read(&mut buffer).await.expect("read the answer");
            assert!(n > 0, "the bus closed early: {}", String::from_utf8_lossy(&seen));
            let first_byte = *first_byte.get_or_insert_with(|| start.elapsed());
            seen.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&seen);
            if first_data.is_none() {
                if let Some(at) = text.find("\r\n\r\n") {
                    if text[at + 4..].contains("eval_count") {
                        let data = start.elapsed();
                        if !wait_end {
                            return (first_byte, data, None);
                        }
                        first_data = Some(data);
                    }
                }
            }
            if let Some(data) = first_data.filter(|_| text.ends_with("\r\n0\r\n\r\n")) {
                return (first_byte, data, Some(start.elapsed()));
            }
        }
    }
}

/// One chat on a fresh raw connection: the time to the answer's data.
async fn raw_probe(bus: SocketAddr, token: &str) -> Duration {
    Raw::connect(bus).await.chat(token, false).await.1
}

/// Time to data with the metering load switched on and off in alternating blocks (so drift in
/// the machine's other load hits both alike): probes paced every 2.5 ms, `cycles` x (off, on).
/// Returns (off, on, the off samples' p50 difference between even and odd cycles: the noise).
async fn interleaved(
    bus: SocketAddr,
    token: &str,
    meter: &Meter,
    cycles: usize,
    block: Duration,
) -> (Spread, Spread, Duration) {
    const PACE: Duration = Duration::from_micros(2_500);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut off_even, mut off_odd) = (Vec::new(), Vec::new());
    for cycle in 0..cycles {
        for loaded in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let driver = loaded.then(|| tokio::spawn(drive(meter.clone(), stop.clone())));
            if loaded {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let began = Instant::now();
            let mut i = 0u32;
            while began.elapsed() < block {
                tokio::time::sleep_until((began + PACE * i).into()).await;
                i += 1;
                let sample = raw_probe(bus, token).await;
                match (loaded, cycle % 2) {
                    (true, _) => on.push(sample),
                    (false, 0) => off_even.push(sample),
                    (false, _) => off_odd.push(sample),
                }
            }
            stop.store(true, Ordering::Relaxed);
            if let Some(driver) = driver {
                let driven = driver.await.expect("the driver");
                assert!(driven.emitted > 0);
            }
        }
    }
    off.extend_from_slice(&off_even);
    off.extend_from_slice(&off_odd);
    let noise = spread(off_even).p50.abs_diff(spread(off_odd).p50);
    (spread(off), spread(on), noise)
}

/// `n` raw probes (time to the answer's data, without waiting for the chunked terminator).
async fn probes(bus: SocketAddr, token: &str, n: usize) -> Spread {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(raw_probe(bus, token).await);
    }
    spread(samples)
}

fn chat_body() -> Bytes {
    Bytes::from(
        json!({"model": "whatever", "stream": false, "messages": [{"role": "user", "content": "Hi"}]}).to_string(),
    )
}

/// One budget round: `clients` loops sending chats until each sees a 429. Returns requests served.
async fn budget_round(bench: &Bench, agent: &str, model: &str, clients: usize) -> u64 {
    let token = bench.agent(agent, model, Some(BUDGET_TOKENS));
    let served = Arc::new(AtomicU64::new(0));
    let url = bench.url("/api/chat");
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (served, url, token, http) = (served.clone(), url.clone(), token.clone(), client());
        tasks.push(tokio::spawn(async move {
            let body = chat_body();
            loop {
                let (status, answer) = post(&http, &url, &token, &body).await;
                match status {
                    200 => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    429 => {
                        let text = String::from_utf8_lossy(&answer);
                        assert!(text.contains("budget"), "a 429 names the budget: {text}");
                        break;
                    }
                    other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&answer)),
                }
            }
            // Once refused, refused: a few more, all 429.
            for _ in 0..3 {
                let (status, _) = post(&http, &url, &token, &body).await;
                if status == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a budget client");
    }
    served.load(Ordering::SeqCst)
}

/// This process's CPU time so far (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// CPU used by this process per second of wall time since `since` (cpu, wall), in % of one core.
fn cpu_percent(since: (Duration, Instant)) -> f64 {
    let (cpu, wall) = (cpu_time() - since.0, since.1.elapsed());
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: nproc {cores}, {model}, Linux {}; load average {}",
        kernel.trim(),
        load.join(" ")
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = Settings {
        warmup: if quick { 200 } else { 1_000 },
        gate_allow: if quick { 1_000 } else { 5_000 },
        gate_other: if quick { 300 } else { 1_000 },
        chat: if quick { 1_000 } else { 3_000 },
        chat_limit: Duration::from_secs(if quick { 3 } else { 6 }),
        probes: if quick { 300 } else { 1_000 },
        cycles: if quick { 4 } else { 10 },
        meter_min: Duration::from_secs(if quick { 2 } else { 5 }),
        rounds_fast: if quick { 3 } else { 10 },
        rounds_slow: if quick { 2 } else { 3 },
    };
    let machine_before = machine();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(run(settings, machine_before, started));
}

async fn run(settings: Settings, machine_before: String, started: Instant) {
    let state_dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::default_in(state_dir.path());
    eprintln!("governance bench: SQLite at {url}");
    let (recorder, writer) = Recorder::start(RecorderConfig::new(
        state_dir.path().to_path_buf(),
        HOST.into(),
        url.clone(),
    ))
    .expect("recorder");

    // The Ollama stand-in.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let app = axum::Router::new().route("/api/chat", axum::routing::post(fake_chat));
    // TCP_NODELAY, as Ollama (Go) answers.
    let upstream = axum::serve::ListenerExt::tap_io(upstream, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(upstream, app).await.expect("the stand-in");
    });

    // The bus, wired as the daemon wires it: receipts and usage to the recorder.
    let state = BusState::default();
    let governance = state.governance().clone();
    let receipts = Arc::new(AtomicU64::new(0));
    {
        let (recorder, receipts) = (recorder.clone(), receipts.clone());
        governance.set_receipts(Arc::new(move |draft| {
            receipts.fetch_add(1, Ordering::Relaxed);
            recorder.receipt(draft)
        }));
    }
    let meter_calls = Arc::new(AtomicU64::new(0));
    let meter = meter(recorder.clone(), governance.clone(), meter_calls.clone());
    let (stop_bus, bus_stopped) = tokio::sync::oneshot::channel::<()>();
    let (bus_addr, bus_task) = bus::serve(
        "127.0.0.1:0".parse().unwrap(),
        state.clone(),
        meter.clone(),
        None,
        async {
            let _ = bus_stopped.await;
        },
    )
    .await
    .expect("the bus");
    let bench = Bench {
        bus: bus_addr,
        state,
        fast_upstream: format!("http://{upstream_addr}"),
    };
    // The recorder opens its store on its first write: done before anything is measured.
    meter(Metered {
        agent: "warm-up".into(),
        provider: "local".into(),
        model: "m".into(),
        prompt_tokens: 1,
        completion_tokens: 1,
    });
    assert_eq!(recorder.flush().await.pending, 0, "the store is writable");

    // 1. The gate.
    let token = bench.agent("scribe", "llama3.2:1b", None);
    let http = client();
    let gate_url = bench.url("/v1/gate");
    let ask = |tool: &str, args: Value| Bytes::from(json!({"tool": tool, "args": args}).to_string());
    let allow = ask("fs.read", json!({"path": "/home/scribe/notes.md"}));
    let (status, answer) = post(&http, &gate_url, &token, &allow).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&answer).unwrap()["decision"], "allow");
    timed(&http, &gate_url, &token, &allow, settings.warmup, 200).await;
    let gate_allow = spread(timed(&http, &gate_url, &token, &allow, settings.gate_allow, 200).await);
    let deny = ask("disk.wipe", json!({"device": "/dev/sda"}));
    let (_, answer) = post(&http, &gate_url, &token, &deny).await;
    assert_eq!(serde_json::from_slice::<Value>(&answer).unwrap()["decision"], "deny");
    let gate_deny = spread(timed(&http, &gate_url, &token, &deny, settings.gate_other, 200).await);
    let unlisted = ask("net.upload", json!({"to": "https://example.com"}));
    let gate_unlisted = spread(timed(&http, &gate_url, &token, &unlisted, settings.gate_other, 200).await);
    // Needs approval: new arguments each time, so each is a new pending request (and a receipt).
    let mut fresh = Vec::with_capacity(settings.gate_other);
    for i in 0..settings.gate_other {
        let body = ask("shell.exec", json!({"cmd": format!("make test-{i}")}));
        let start = Instant::now();
        let (status, answer) = post(&http, &gate_url, &token, &body).await;
        fresh.push(start.elapsed());
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
    }
    let tenth = (settings.gate_other / 10).max(1);
    let approval_first = spread(fresh[..tenth].to_vec());
    let approval_last = spread(fresh[fresh.len() - tenth..].to_vec());
    let gate_approval = spread(fresh);
    let again = ask("shell.exec", json!({"cmd": "make test-0"}));
    let gate_again = spread(timed(&http, &gate_url, &token, &again, settings.gate_other, 202).await);
    let pending_requests = governance.pending(now_ms()).len();
    // The same allowed call with receipts discarded: what the recorder adds to the gate's tail.
    governance.set_receipts(Arc::new(|_| {}));
    let gate_no_recorder = spread(timed(&http, &gate_url, &token, &allow, settings.gate_allow, 200).await);
    {
        let (recorder, receipts) = (recorder.clone(), receipts.clone());
        governance.set_receipts(Arc::new(move |draft| {
            receipts.fetch_add(1, Ordering::Relaxed);
            recorder.receipt(draft)
        }));
    }

    // 2. Metering.
    let chat = chat_body();
    let chat_url = bench.url("/api/chat");
    timed_for(
        &http,
        &chat_url,
        &token,
        &chat,
        settings.warmup,
        Duration::from_secs(3),
        200,
    )
    .await;
    let chat_phase = || timed_for(&http, &chat_url, &token, &chat, settings.chat, settings.chat_limit, 200);
    // Where an agent's time goes: the answer's data, then the chunked terminator.
    // On one keep-alive connection: the first requests (the receiver still acknowledges at once)
    // and the later ones (delayed acknowledgements).
    let mut raw = Raw::connect(bench.bus).await;
    let mut split = Vec::new();
    for _ in 0..40 {
        split.push(raw.chat(&token, true).await);
    }
    drop(raw);
    let split_of = |part: &[(Duration, Duration, Option<Duration>)]| {
        (
            spread(part.iter().map(|s| s.0).collect()),
            spread(part.iter().map(|s| s.1).collect()),
            spread(part.iter().filter_map(|s| s.2).collect()),
        )
    };
    let (first_head, first_data, first_end) = split_of(&split[..1]);
    let (late_head, late_data, late_end) = split_of(&split[20..]);
    let mark = (cpu_time(), Instant::now());
    let base_before = spread(chat_phase().await);
    let cpu_before = cpu_percent(mark);
    let probes_before = probes(bench.bus, &token, settings.probes).await;
    let stop = Arc::new(AtomicBool::new(false));
    let driver = tokio::spawn(drive(meter.clone(), stop.clone()));
    let load_start = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mark = (cpu_time(), Instant::now());
    let loaded = spread(chat_phase().await);
    let cpu_loaded = cpu_percent(mark);
    let probes_loaded = probes(bench.bus, &token, settings.probes).await;
    let loaded_window = load_start.elapsed();
    if let Some(rest) = settings.meter_min.checked_sub(load_start.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::Relaxed);
    let driven = driver.await.expect("the driver");
    let drain_start = Instant::now();
    let flushed = recorder.flush().await;
    let drain = drain_start.elapsed();
    assert_eq!(flushed.pending, 0, "drained: {:?}", flushed.store_error);
    let persisted_rate = driven.emitted as f64 / (driven.elapsed + drain).as_secs_f64();
    let emit_rate = driven.emitted as f64 / driven.elapsed.as_secs_f64();
    let mark = (cpu_time(), Instant::now());
    let base_after = spread(chat_phase().await);
    let cpu_after = cpu_percent(mark);
    let probes_after = probes(bench.bus, &token, settings.probes).await;
    let (alt_off, alt_on, alt_noise) =
        interleaved(bench.bus, &token, &meter, settings.cycles, Duration::from_millis(500)).await;
    let flushed = recorder.flush().await;
    assert_eq!(flushed.pending, 0, "drained: {:?}", flushed.store_error);

    // 3. Budgets.
    let k = BUDGET_TOKENS / COST + 1; // the request whose answer crosses (used > limit)
    let sequential = budget_round(&bench, "thrifty", "llama3.2:1b", 1).await;
    let mut fast_rounds = Vec::new();
    for round in 0..settings.rounds_fast {
        fast_rounds.push(budget_round(&bench, &format!("crowd-{round}"), "llama3.2:1b", CONCURRENT_CLIENTS).await);
    }
    let mut slow_rounds = Vec::new();
    for round in 0..settings.rounds_slow {
        slow_rounds.push(budget_round(&bench, &format!("slow-crowd-{round}"), "slow", CONCURRENT_CLIENTS).await);
    }

    // Everything in the store, exactly: every meter call one usage row, every receipt one row.
    let flushed = recorder.flush().await;
    assert_eq!(flushed.pending, 0, "drained: {:?}", flushed.store_error);
    let _ = stop_bus.send(());
    let _ = bus_task.await;
    drop(bench);
    drop(governance);
    drop(meter);
    drop(recorder);
    writer.await.expect("the writer");
    let counts: BTreeMap<String, i64> = store::open(&url)
        .await
        .expect("open the store")
        .counts()
        .await
        .expect("count rows");
    let (usage_rows, receipt_rows) = (counts["usage"], counts["receipts"]);
    let (usage_want, receipts_want) = (
        meter_calls.load(Ordering::Relaxed) as i64,
        receipts.load(Ordering::Relaxed) as i64,
    );
    let total = started.elapsed();

    // The table.
    let overshoot = |served: u64| served as i64 - k as i64;
    let worst = |rounds: &[u64]| rounds.iter().map(|&s| overshoot(s)).max().unwrap_or(0);
    let list = |rounds: &[u64]| {
        rounds
            .iter()
            .map(|&s| overshoot(s).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // "Within noise": the p50 under load exceeds the mean of the two baselines by no more than
    // twice their difference or 5% of their mean, whichever is larger.
    let compare = |before: &Spread, loaded: &Spread, after: &Spread| {
        let base = (before.p50.as_secs_f64() + after.p50.as_secs_f64()) / 2.0;
        let delta = loaded.p50.as_secs_f64() - base;
        let noise = (before.p50.as_secs_f64() - after.p50.as_secs_f64()).abs();
        let ok = delta <= (2.0 * noise).max(0.05 * base);
        (
            format!(
                "{:+.0} µs ({:+.1}%; baselines differ by {:.0} µs)",
                delta * 1e6,
                delta / base * 100.0,
                noise * 1e6
            ),
            ok,
        )
    };
    let (delta_full, ok_full) = compare(&base_before, &loaded, &base_after);
    let (delta_data, ok_data) = compare(&probes_before, &probes_loaded, &probes_after);
    let alt_base = alt_off.p50.as_secs_f64();
    let alt_delta = alt_on.p50.as_secs_f64() - alt_base;
    let alt_delta_us = alt_delta * 1e6;
    let ok_alt = alt_delta <= (2.0 * alt_noise.as_secs_f64()).max(0.05 * alt_base);
    let within_noise = ok_full && ok_alt;
    let lost_none = usage_rows == usage_want && receipt_rows == receipts_want;

    println!("{machine_before}");
    println!("{}", machine().replace("machine:", "after the run:"));
    println!(
        "command: cargo bench --bench governance{} ({:.1} s in all)",
        if settings.gate_allow < 5_000 { " -- --quick" } else { "" },
        total.as_secs_f64()
    );
    println!(
        "bus on 127.0.0.1 in-process; one keep-alive HTTP/1 client (hyper-util legacy), sequential \
         unless said; receipts and usage through a Recorder on SQLite in a temp dir"
    );
    println!("| measure | result | target | verdict |");
    println!("|---|---|---|---|");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "| gate `POST /v1/gate` allow (fs.read, low) | {} | p50 <= 1 ms | {} |",
        show(&gate_allow),
        verdict(gate_allow.p50 <= GATE_TARGET)
    );
    println!(
        "| gate allow, receipts discarded instead of recorded (for comparison) | {} | | |",
        show(&gate_no_recorder)
    );
    println!(
        "| gate deny above denyAbove (disk.wipe, critical) | {} | | |",
        show(&gate_deny)
    );
    println!("| gate deny, tool not listed | {} | | |", show(&gate_unlisted));
    println!(
        "| gate needs-approval, new request each (202) | {} | | |",
        show(&gate_approval)
    );
    println!(
        "| ... first / last tenth of those (pending grows to {pending_requests}) | p50 {} / p50 {} | | |",
        us(approval_first.p50),
        us(approval_last.p50)
    );
    println!(
        "| gate needs-approval, asked again (same request, no receipt) | {} | | |",
        show(&gate_again)
    );
    println!(
        "| meter driven at {:.0}/s: usage records emitted / emit rate | {} in {:.2} s / {:.0}/s | >= 10,000/s | {} |",
        METER_RATE,
        driven.emitted,
        driven.elapsed.as_secs_f64(),
        emit_rate,
        verdict(emit_rate >= METER_RATE * 0.99)
    );
    println!(
        "| meter call (caller side: governance + `Recorder::record`) | {} | | |",
        show(&driven.calls)
    );
    println!(
        "| recorder: drain after the driver stopped / persisted rate (emitted / (emit + drain)) | {:.0} ms / {:.0} records/s | >= 10,000/s | {} |",
        drain.as_secs_f64() * 1e3,
        persisted_rate,
        verdict(persisted_rate >= METER_RATE * 0.95)
    );
    println!(
        "| every usage record and receipt in the store (rows / emitted) | usage {usage_rows} / {usage_want}, receipts {receipt_rows} / {receipts_want} | all | {} |",
        verdict(lost_none)
    );
    println!(
        "| bus `POST /api/chat` (non-streamed, instant upstream), raw keep-alive connection, request 1: head / body data / chunked terminator arrive | {} / {} / {} | | |",
        us(first_head.p50),
        us(first_data.p50),
        us(first_end.p50),
    );
    println!(
        "| ... same connection, requests 21-40 (p50) | {} / {} / {} | | |",
        us(late_head.p50),
        us(late_data.p50),
        us(late_end.p50),
    );
    println!(
        "| bus chat, whole answer (hyper client), no metering load, before | {} | | |",
        show(&base_before)
    );
    println!(
        "| bus chat, whole answer, with 10k/s metering load ({:.1} s window) | {} | | |",
        loaded_window.as_secs_f64(),
        show(&loaded)
    );
    println!(
        "| bus chat, whole answer, no metering load, after | {} | | |",
        show(&base_after)
    );
    println!(
        "| process CPU during those three phases (before / loaded / after), % of one core | {cpu_before:.0}% / {cpu_loaded:.0}% / {cpu_after:.0}% | | |"
    );
    println!(
        "| bus chat, whole answer: p50 delta under load vs mean baseline | {delta_full} | within noise | {} |",
        verdict(ok_full)
    );
    println!(
        "| bus chat, time to the answer's data (raw, fresh connection), before / loaded / after | p50 {} / {} / {}; p99 {} / {} / {} (n={}) | | |",
        us(probes_before.p50),
        us(probes_loaded.p50),
        us(probes_after.p50),
        us(probes_before.p99),
        us(probes_loaded.p99),
        us(probes_after.p99),
        probes_loaded.n
    );
    println!(
        "| bus chat, time to data: p50 delta under load vs mean baseline | {delta_data} | | {} |",
        if ok_data { "within noise" } else { "over noise" }
    );
    println!(
        "| bus chat, time to data, load on/off in alternating 0.5 s blocks ({} cycles): off / on | {} / {} | | |",
        settings.cycles,
        show(&alt_off),
        show(&alt_on)
    );
    println!(
        "| bus chat, time to data, alternating: p50 delta on vs off | {alt_delta_us:+.0} µs ({:+.1}%; even vs odd off-blocks differ by {:.0} µs) | within noise | {} |",
        alt_delta / alt_base * 100.0,
        alt_noise.as_secs_f64() * 1e6,
        verdict(ok_alt)
    );
    println!("| budget {BUDGET_TOKENS} tokens/day, {COST} tokens per request: crossing request | #{k} | | |");
    println!(
        "| budget, sequential: served after the crossing one | {} (served {sequential}) | 0 | {} |",
        overshoot(sequential),
        verdict(overshoot(sequential) == 0)
    );
    println!(
        "| budget, {CONCURRENT_CLIENTS} concurrent clients, instant upstream: extra served per round | worst {} ({}) | report (<= {} expected) | {} |",
        worst(&fast_rounds),
        list(&fast_rounds),
        CONCURRENT_CLIENTS - 1,
        if worst(&fast_rounds) < CONCURRENT_CLIENTS as i64 { "as expected" } else { "WORSE" }
    );
    println!(
        "| budget, {CONCURRENT_CLIENTS} concurrent clients, upstream 20 ms: extra served per round | worst {} ({}) | report (<= {} expected) | {} |",
        worst(&slow_rounds),
        list(&slow_rounds),
        CONCURRENT_CLIENTS - 1,
        if worst(&slow_rounds) < CONCURRENT_CLIENTS as i64 { "as expected" } else { "WORSE" }
    );
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let measure = |what: &str, value: f64, unit: &str| Measure::new("governance", what, value, unit);
    measure("gate `POST /v1/gate` allow: p50", micros(gate_allow.p50), "µs")
        .target("p50 <= 1 ms", gate_allow.p50 <= GATE_TARGET)
        .record();
    measure("meter at 10,000/s: emit rate", emit_rate, "records/s")
        .higher_is_better()
        .target(">= 10,000/s", emit_rate >= METER_RATE * 0.99)
        .record();
    measure("recorder: persisted rate (emit + drain)", persisted_rate, "records/s")
        .higher_is_better()
        .target(">= 10,000/s", persisted_rate >= METER_RATE * 0.95)
        .record();
    let lost = (usage_want - usage_rows) + (receipts_want - receipt_rows);
    measure(
        "usage records and receipts missing from the store",
        lost as f64,
        "records",
    )
    .target("0", lost_none)
    .record();
    measure(
        "bus chat, whole answer: p50 delta under metering load",
        (loaded.p50.as_secs_f64() - (base_before.p50.as_secs_f64() + base_after.p50.as_secs_f64()) / 2.0) * 1e6,
        "µs",
    )
    .target("within noise", ok_full)
    .record();
    measure(
        "bus chat, time to data, load on/off alternating: p50 delta",
        alt_delta_us,
        "µs",
    )
    .target("within noise", ok_alt)
    .record();
    measure(
        "budget, sequential: served after the crossing request",
        overshoot(sequential) as f64,
        "requests",
    )
    .target("0", overshoot(sequential) == 0)
    .record();

    let mut missed = Vec::new();
    if gate_allow.p50 > GATE_TARGET {
        missed.push(format!("gate p50 {}", us(gate_allow.p50)));
    }
    if emit_rate < METER_RATE * 0.99 || persisted_rate < METER_RATE * 0.95 {
        missed.push(format!("metering {persisted_rate:.0}/s"));
    }
    if !lost_none {
        missed.push("records lost".into());
    }
    if !within_noise {
        missed.push(format!(
            "bus p50 under metering load: whole {delta_full}, data (alternating) {alt_delta_us:+.0} µs"
        ));
    }
    if overshoot(sequential) != 0 {
        missed.push(format!("sequential budget overshoot {}", overshoot(sequential)));
    }
    if missed.is_empty() {
        println!("targets: met");
    } else {
        println!("targets: MISSED: {}", missed.join("; "));
    }
}
