//! Test fixtures of the bus: fake Ollama and OpenAI-style upstreams (in process, or the
//! `scripts/fake-llm` process), a served bus with one agent, and readers of its answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{header, Method, Request};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::relay::RelayBody;
use super::{serve, BusError, BusState, Meter, Metered, Upstream};
use crate::router::http::json_response;
use crate::spec::provider::ProviderApi;

pub(super) const TOKEN: &str = "tok-coder";
/// The pause between an upstream stream's first chunk and the rest.
pub(super) const PAUSE: Duration = Duration::from_millis(300);

pub(super) type Seen = Arc<Mutex<Vec<Value>>>;

/// A fake upstream: what it was sent, and whether its streams break after the first chunk,
/// its answers stall after the first chunk (never ending), it sends its headers and then
/// breaks or stalls before any data, or it never answers at all.
#[derive(Clone, Default)]
pub(super) struct Fake {
    pub seen: Seen,
    pub break_streams: bool,
    pub stall: bool,
    pub break_before_data: bool,
    pub stall_before_data: bool,
    pub hang: bool,
    /// OpenAI streams end with `[DONE]` without a finish_reason (llama.cpp's server, when
    /// another request interrupts the generation).
    pub cut_short: bool,
}

/// A body that sends `first` and then nothing, without ending (a provider hung midway).
pub(super) fn stalled(first: String, content_type: &'static str) -> Response {
    let (chunks, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        if !first.is_empty() {
            let _ = chunks.send(Ok(Bytes::from(first))).await;
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(chunks);
    });
    let mut response = Response::new(Body::new(RelayBody { chunks: receiver }));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A body the test writes chunk by chunk; an Err breaks the connection mid-answer.
pub(super) fn chunked(parts: Vec<Option<String>>, content_type: &'static str, break_at_end: bool) -> Response {
    let (chunks, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        for (index, part) in parts.into_iter().enumerate() {
            if index == 1 {
                tokio::time::sleep(PAUSE).await;
            }
            if let Some(part) = part {
                let _ = chunks.send(Ok(Bytes::from(part))).await;
            }
        }
        if break_at_end {
            // Let the chunks go out first, as a provider that crashes mid-answer does.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = chunks.send(Err(BusError::UpstreamBroke("test".into()))).await;
        }
    });
    let mut response = Response::new(Body::new(RelayBody { chunks: receiver }));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn ollama_chat(State(fake): State<Fake>, Json(request): Json<Value>) -> Response {
    fake.seen.lock().unwrap().push(request.clone());
    if fake.hang {
        std::future::pending::<()>().await;
    }
    if fake.break_before_data {
        return chunked(Vec::new(), "application/x-ndjson", true);
    }
    if fake.stall_before_data {
        return stalled(String::new(), "application/x-ndjson");
    }
    let model = request["model"].clone();
    if fake.stall && request["stream"] == json!(false) {
        return stalled(format!("{{\"model\": {model}, "), "application/json");
    }
    if request["stream"] == json!(false) {
        return json_response(
            StatusCode::OK,
            &json!({
                "model": model, "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": "Hello"},
                "done": true, "done_reason": "stop", "prompt_eval_count": 7, "eval_count": 2,
            }),
        );
    }
    let line = |content: &str, done: bool| {
        let mut chunk = json!({
            "model": model, "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": content}, "done": done,
        });
        if done {
            chunk["done_reason"] = json!("stop");
            chunk["prompt_eval_count"] = json!(7);
            chunk["eval_count"] = json!(2);
        }
        Some(format!("{chunk}\n"))
    };
    if fake.break_streams {
        return chunked(vec![line("Hel", false)], "application/x-ndjson", true);
    }
    if fake.stall {
        return stalled(line("Hel", false).unwrap(), "application/x-ndjson");
    }
    chunked(
        vec![line("Hel", false), line("lo", false), line("", true)],
        "application/x-ndjson",
        false,
    )
}

async fn openai_chat(State(fake): State<Fake>, Json(request): Json<Value>) -> Response {
    fake.seen.lock().unwrap().push(request.clone());
    let model = request["model"].clone();
    if request["stream"] != json!(true) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }),
        );
    }
    let event = |delta: Value, finish: Value, usage: Option<Value>| {
        let mut chunk = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        Some(format!("data: {chunk}\n\n"))
    };
    let first = event(json!({"role": "assistant", "content": "Hel"}), Value::Null, None);
    if fake.break_streams {
        return chunked(vec![first], "text/event-stream", true);
    }
    if fake.stall {
        return stalled(first.unwrap(), "text/event-stream");
    }
    if fake.cut_short {
        return chunked(vec![first, Some("data: [DONE]\n\n".into())], "text/event-stream", false);
    }
    // As OpenAI does: a stream's usage only when asked for, in a chunk without choices.
    let usage = (request["stream_options"]["include_usage"] == json!(true)).then(|| {
        let mut chunk = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        });
        chunk["choices"] = json!([]);
        format!("data: {chunk}\n\n")
    });
    chunked(
        vec![
            first,
            event(json!({"content": "lo"}), Value::Null, None),
            event(json!({}), json!("stop"), None),
            usage,
            Some("data: [DONE]\n\n".into()),
        ],
        "text/event-stream",
        false,
    )
}

/// Serves a fake Ollama (`api: Ollama`) or OpenAI-style server; its base URL.
pub(super) async fn fake_upstream(api: ProviderApi, fake: Fake) -> String {
    let router = match api {
        ProviderApi::Ollama => Router::new().route("/api/chat", post(ollama_chat)),
        ProviderApi::Openai => Router::new().route("/v1/chat/completions", post(openai_chat)),
    }
    .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    match api {
        ProviderApi::Ollama => format!("http://{address}"),
        ProviderApi::Openai => format!("http://{address}/v1"),
    }
}

pub(super) fn upstream(provider: &str, api: ProviderApi, url: &str, model: &str) -> Upstream {
    Upstream {
        provider: provider.into(),
        api,
        url: url.into(),
        model: model.into(),
        api_key: None,
        local: true,
    }
}

/// A bus where agent `coder` (token [`TOKEN`]) routes to `candidates`; its address and what
/// it metered.
pub(super) async fn start_bus(candidates: Vec<Upstream>) -> (SocketAddr, Arc<Mutex<Vec<Metered>>>) {
    start_bus_timed(candidates, Duration::from_secs(2)).await
}

pub(super) async fn start_bus_timed(
    candidates: Vec<Upstream>,
    header_timeout: Duration,
) -> (SocketAddr, Arc<Mutex<Vec<Metered>>>) {
    let state = BusState::default();
    state.set_header_timeout(header_timeout);
    start_bus_with(state, candidates).await
}

/// A bus on `state` (its timeouts set by the caller) where agent `coder` routes to
/// `candidates`.
pub(super) async fn start_bus_with(
    state: BusState,
    candidates: Vec<Upstream>,
) -> (SocketAddr, Arc<Mutex<Vec<Metered>>>) {
    state.set_token("coder", TOKEN);
    state.set_routes("coder", candidates);
    let metered = Arc::new(Mutex::new(Vec::new()));
    let sink = metered.clone();
    let meter: Meter = Arc::new(move |m| sink.lock().unwrap().push(m));
    let (address, _task) = serve(
        "127.0.0.1:0".parse().unwrap(),
        state,
        meter,
        None,
        std::future::pending(),
    )
    .await
    .unwrap();
    (address, metered)
}

/// Sends a request to the bus; the answer with its body unread.
pub(super) async fn call(
    bus: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> hyper::Response<Incoming> {
    let client = crate::router::http::client(true);
    let mut request = Request::builder()
        .method(if body.is_some() { Method::POST } else { Method::GET })
        .uri(format!("http://{bus}{path}"));
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap()
}

/// The answer's body chunks with when each arrived; Err text when the body broke.
pub(super) async fn chunks_of(answer: hyper::Response<Incoming>) -> (Vec<(Instant, String)>, Option<String>) {
    let mut body = answer.into_body();
    let mut chunks = Vec::new();
    loop {
        match body.frame().await {
            None => return (chunks, None),
            Some(Err(error)) => return (chunks, Some(error.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    chunks.push((Instant::now(), String::from_utf8_lossy(&data).into_owned()));
                }
            }
        }
    }
}

pub(super) async fn text_of(answer: hyper::Response<Incoming>) -> String {
    let (chunks, broke) = chunks_of(answer).await;
    assert_eq!(broke, None);
    chunks.into_iter().map(|(_, text)| text).collect()
}

pub(super) fn route_of(answer: &hyper::Response<Incoming>) -> &str {
    answer.headers()["x-mirror-route"].to_str().unwrap()
}

pub(super) fn ndjson_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The JSON of each `data:` line of an SSE stream, `[DONE]` as a string.
pub(super) fn sse_events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap_or_else(|_| json!(data)))
        .collect()
}

pub(super) fn chat(stream: bool) -> Value {
    json!({"model": "whatever", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

/// A `scripts/fake-llm` process, killed when dropped.
pub(super) struct FakeLlm {
    /// Base URL of its Ollama API; its OpenAI API is under `/v1`.
    pub url: String,
    _process: tokio::process::Child,
    /// Kept open so the process never writes to a closed pipe.
    _stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

pub(super) async fn fake_llm(name: &str, fault: &str) -> FakeLlm {
    use tokio::io::AsyncBufReadExt;
    let mut process = tokio::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fake-llm"))
        .args(["--port", "0", "--name", name, "--fault", fault])
        .args(["--token-delay-ms", "1", "--reply-tokens", "4"])
        .stdout(std::process::Stdio::piped())
        // Its request log would go past libtest's capture.
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs scripts/fake-llm");
    let mut stdout = tokio::io::BufReader::new(process.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).await.unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("fake-llm said {line:?}"))
        .to_string();
    FakeLlm {
        url,
        _process: process,
        _stdout: stdout,
    }
}

pub(super) const FAKE_MODEL: &str = "llama3.2:1b";
