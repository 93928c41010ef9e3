//! `scripts/fake-llm`, the stand-in model provider: a real process, spoken to over plain
//! HTTP/1.1 on a `TcpStream` (no HTTP client library), in both API shapes and every fault mode.

// A measurement or test harness: raw signals and process calls (each block says why it is sound).
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const REPLY: &str = " mirror says hello from a fake model";
const MODEL: &str = "llama3.2:1b";

/// A running `scripts/fake-llm --port 0 --name NAME ...`; killed when dropped.
struct FakeLlm {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl FakeLlm {
    fn start(name: &str, extra: &[&str]) -> FakeLlm {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fake-llm");
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", "0", "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("python3 runs");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let mut fake = FakeLlm { child, port: 0, log };
        let Some(port) = first.trim().strip_prefix("listening on http://127.0.0.1:") else {
            panic!("first line {first:?}; log:\n{}", fake.log());
        };
        fake.port = port.parse().unwrap();
        fake
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    fn get(&self, path: &str) -> Response {
        self.call("GET", path, &[], None)
    }

    fn post(&self, path: &str, body: Value) -> Response {
        self.call("POST", path, &[], Some(&body))
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Response {
        http(self.port, method, path, headers, body, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log()))
    }

    fn fault(&self, body: Value) {
        let response = self.post("/_fault", body);
        assert_eq!(response.status, 200, "{}", response.text());
    }

    /// The exit status, if the process ends within `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended as its framing says (a last chunk, all of Content-Length), not cut short.
    complete: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// NDJSON: one object a line.
    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line not JSON ({e}): {l}")))
            .collect()
    }

    /// Server-sent events: the `data:` payload of each event.
    fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                    .to_string()
            })
            .collect()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end. A read
/// that waits longer than `timeout` fails with `TimedOut`, saying how many bytes had come.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("timed out after {} bytes", raw.len()),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    parse(&raw)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!("{what}: {:?}", String::from_utf8_lossy(raw)),
        )
    };
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
        complete: true,
    };
    let rest = &raw[end + 4..];
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        (response.body, response.complete) = dechunk(rest);
    } else if let Some(length) = response.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        response.complete = rest.len() >= length;
        response.body = rest[..length.min(rest.len())].to_vec();
    } else {
        response.body = rest.to_vec();
    }
    Ok(response)
}

/// A chunked body, and whether its last (empty) chunk came.
fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return (body, false);
        };
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return (body, false) };
        data = &data[eol + 2..];
        if size == 0 {
            return (body, true);
        }
        if data.len() < size + 2 {
            body.extend_from_slice(&data[..size.min(data.len())]);
            return (body, false);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn chat_request(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "why is the sky blue?"}]})
}

#[test]
fn ollama_api_version_tags_chat_generate_pull_embed() {
    let fake = FakeLlm::start("A", &["--pullable", "qwen2.5:0.5b"]);

    let version = fake.get("/api/version");
    assert_eq!(version.status, 200);
    assert_eq!(version.json(), json!({"version": "0.5.7"}));

    let tags = fake.get("/api/tags").json();
    let models = tags["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{tags}");
    assert_eq!(models[0]["name"], MODEL);
    assert_eq!(models[0]["model"], MODEL);
    for field in ["modified_at", "size", "digest", "details"] {
        assert!(!models[0][field].is_null(), "{field} in {tags}");
    }

    // Streamed by default, as in Ollama: one NDJSON object a token, then the statistics.
    let chat = fake.post("/api/chat", chat_request(MODEL));
    assert_eq!(chat.status, 200, "{}", chat.text());
    assert_eq!(chat.header("content-type"), Some("application/x-ndjson"));
    assert!(chat.complete, "the stream ends properly");
    let lines = chat.lines();
    assert_eq!(lines.len(), 9, "8 tokens and the last object: {}", chat.text());
    let (last, tokens) = lines.split_last().unwrap();
    for line in tokens {
        assert_eq!(line["done"], false, "{line}");
        assert_eq!(line["model"], MODEL);
        assert_eq!(line["message"]["role"], "assistant");
        assert!(line["created_at"].is_string());
    }
    let content: String = tokens
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, format!("[A]{REPLY}"));
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["eval_count"], 8);
    for field in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[field].as_u64().is_some_and(|n| n > 0), "{field} in {last}");
    }

    // stream false: one object; num_predict cuts the reply.
    let generate = fake.post(
        "/api/generate",
        json!({"model": MODEL, "prompt": "why?", "stream": false, "options": {"num_predict": 3}}),
    );
    assert_eq!(generate.status, 200);
    assert_eq!(generate.header("content-type"), Some("application/json; charset=utf-8"));
    let generate = generate.json();
    assert_eq!(generate["response"], "[A] mirror says");
    assert_eq!(generate["done"], true);
    assert_eq!(generate["done_reason"], "length");
    assert_eq!(generate["eval_count"], 3);

    let unknown = fake.post("/api/chat", chat_request("nope:7b"));
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json(),
        json!({"error": "model \"nope:7b\" not found, try pulling it first"})
    );

    // Pull: progress, then the model is there (and answers).
    let pull = fake.post("/api/pull", json!({"model": "qwen2.5:0.5b"}));
    assert_eq!(pull.status, 200);
    assert_eq!(pull.header("content-type"), Some("application/x-ndjson"));
    let progress = pull.lines();
    let statuses: Vec<&str> = progress.iter().map(|l| l["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.first(), Some(&"pulling manifest"));
    assert_eq!(
        statuses[statuses.len() - 3..],
        ["verifying sha256 digest", "writing manifest", "success"]
    );
    let downloads: Vec<&Value> = progress.iter().filter(|l| l["digest"].is_string()).collect();
    assert!(downloads.len() >= 3, "{}", pull.text());
    for line in &downloads {
        let digest = line["digest"].as_str().unwrap();
        assert!(digest.starts_with("sha256:"), "{line}");
        assert_eq!(line["status"], format!("pulling {}", &digest[7..19]));
        assert!(line["total"].as_u64().unwrap() >= line["completed"].as_u64().unwrap_or(0));
    }
    assert!(downloads
        .iter()
        .any(|l| l["completed"].is_u64() && l["completed"] == l["total"]));
    let names: Vec<Value> = fake.get("/api/tags").json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(names, [json!(MODEL), json!("qwen2.5:0.5b")]);
    let pulled = fake.post(
        "/api/generate",
        json!({"model": "qwen2.5:0.5b", "prompt": "hi", "stream": false}),
    );
    assert_eq!(pulled.json()["response"], format!("[A]{REPLY}"));

    // Not in --pullable: the error comes in the stream (200), or as a 500 without streaming.
    let missing = fake.post("/api/pull", json!({"name": "nope:7b"}));
    assert_eq!(missing.status, 200);
    assert_eq!(
        missing.lines().last().unwrap()["error"],
        "pull model manifest: file does not exist"
    );
    let missing = fake.post("/api/pull", json!({"model": "nope:7b", "stream": false}));
    assert_eq!(missing.status, 500);
    assert!(missing.json()["error"].is_string());
    assert_eq!(fake.get("/api/tags").json()["models"].as_array().unwrap().len(), 2);

    let embed = fake
        .post("/api/embed", json!({"model": MODEL, "input": ["a", "b"]}))
        .json();
    assert_eq!(embed["model"], MODEL);
    let vectors = embed["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].as_array().unwrap().len(), 8);
    assert_ne!(vectors[0], vectors[1]);
    let again = fake.post("/api/embed", json!({"model": MODEL, "input": "a"})).json();
    assert_eq!(again["embeddings"][0], vectors[0], "deterministic");

    let log = fake.log();
    assert!(log.contains("POST /api/chat 200 mode=none"), "{log}");
    assert!(log.contains("POST /api/chat 404 mode=none"), "{log}");
}

#[test]
fn openai_api_models_chat_stream_embeddings_and_api_key() {
    let fake = FakeLlm::start("B", &["--api-key", "sk-fake-key"]);
    let auth = [("Authorization", "Bearer sk-fake-key")];

    let anonymous = fake.get("/v1/models");
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"]["type"], "invalid_request_error");
    let wrong = fake.call("GET", "/v1/models", &[("Authorization", "Bearer sk-wrong-key")], None);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    let wrong = fake.call("POST", "/v1/chat/completions", &[], Some(&chat_request(MODEL)));
    assert_eq!(wrong.status, 401);
    // The Ollama API has no keys.
    assert_eq!(fake.get("/api/version").status, 200);

    let models = fake.call("GET", "/v1/models", &auth, None);
    assert_eq!(models.status, 200);
    let models = models.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");
    assert!(models["data"][0]["created"].is_u64() && models["data"][0]["owned_by"].is_string());

    let mut request = chat_request(MODEL);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    request["max_tokens"] = json!(3);
    let stream = fake.call("POST", "/v1/chat/completions", &auth, Some(&request));
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert!(stream.header("content-type").unwrap().starts_with("text/event-stream"));
    assert!(stream.complete);
    let events = stream.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{}", stream.text());
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (usage, chunks) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    let mut content = String::new();
    for chunk in chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert_eq!(chunk["choices"][0]["index"], 0);
        content.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(content, "[B] mirror says");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");

    let completion = fake
        .call("POST", "/v1/chat/completions", &auth, Some(&chat_request(MODEL)))
        .json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], MODEL);
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(completion["choices"][0]["message"]["content"], format!("[B]{REPLY}"));
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    let usage = &completion["usage"];
    assert_eq!(usage["completion_tokens"], 8);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + 8)
    );

    let unknown = fake.call("POST", "/v1/chat/completions", &auth, Some(&chat_request("gpt-4o")));
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");

    let embeddings = fake
        .call(
            "POST",
            "/v1/embeddings",
            &auth,
            Some(&json!({"model": MODEL, "input": "hi"})),
        )
        .json();
    assert_eq!(embeddings["object"], "list");
    assert_eq!(embeddings["data"][0]["object"], "embedding");
    assert_eq!(embeddings["data"][0]["embedding"].as_array().unwrap().len(), 8);
}

#[test]
fn fault_modes_hang_break_slow_503_and_exit() {
    let mut fake = FakeLlm::start("C", &[]);
    let port = fake.port;

    // hang-generate: generation takes the request and never answers; the cheap routes still do.
    fake.fault(json!({"mode": "hang-generate"}));
    let hung = std::thread::spawn(move || {
        let body = json!({"model": MODEL, "prompt": "hello"});
        http(
            port,
            "POST",
            "/api/generate",
            &[],
            Some(&body),
            Duration::from_millis(800),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fake.get("/api/version").status, 200);
    assert_eq!(fake.get("/v1/models").status, 200);
    let error = hung.join().unwrap().expect_err("a hung request times out");
    assert_eq!(error.kind(), ErrorKind::TimedOut);
    assert_eq!(error.to_string(), "timed out after 0 bytes");

    // break-stream: two chunks, then the connection closes mid-body.
    fake.fault(json!({"mode": "break-stream"}));
    let broken = fake.post("/api/chat", chat_request(MODEL));
    assert_eq!(broken.status, 200);
    assert!(!broken.complete, "no last chunk: {}", broken.text());
    assert_eq!(broken.lines().len(), 2);

    fake.fault(json!({"mode": "slow", "slow_ms": 300}));
    let start = Instant::now();
    assert_eq!(fake.get("/api/version").status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));

    fake.fault(json!({"mode": "error-503"}));
    let busy = fake.get("/api/version");
    assert_eq!(busy.status, 503);
    assert!(busy.json()["error"].is_string());
    let busy = fake.get("/v1/models");
    assert_eq!(busy.status, 503);
    assert_eq!(busy.json()["error"]["type"], "server_error");
    assert_eq!(fake.post("/api/chat", chat_request(MODEL)).status, 503);

    fake.fault(json!({"mode": "none"}));
    let mut request = chat_request(MODEL);
    request["stream"] = json!(false);
    let healed = fake.post("/api/chat", request);
    assert_eq!(healed.status, 200);
    assert_eq!(healed.json()["message"]["content"], format!("[C]{REPLY}"));

    let stats = fake.get("/_stats").json();
    assert_eq!(stats["name"], "C");
    assert_eq!(stats["routes"]["POST /api/generate"], 1);
    assert_eq!(stats["routes"]["POST /api/chat"], 3);
    assert_eq!(stats["modes"]["error-503"], 3);
    assert_eq!(
        stats["route_modes"]["POST /api/chat"],
        json!({"break-stream": 1, "error-503": 1, "none": 1})
    );

    // exit: the process ends at once with status 1, as a crash.
    let _ = http(
        port,
        "POST",
        "/_fault",
        &[],
        Some(&json!({"mode": "exit"})),
        Duration::from_secs(2),
    );
    let status = fake.wait_exit(Duration::from_secs(3)).expect("the process exits");
    assert_eq!(status.code(), Some(1));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn sigterm_exits_cleanly_and_fault_exit_at_start() {
    let mut fake = FakeLlm::start("D", &[]);
    // A request hanging in another thread does not hold up the exit.
    fake.fault(json!({"mode": "hang-generate"}));
    let port = fake.port;
    let hung = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/api/embed",
            &[],
            Some(&json!({"model": MODEL, "input": "x"})),
            Duration::from_secs(5),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) on the pid of our own child.
    assert_eq!(unsafe { libc::kill(fake.child.id() as i32, libc::SIGTERM) }, 0);
    let status = fake.wait_exit(Duration::from_secs(3)).expect("SIGTERM stops it");
    assert_eq!(status.code(), Some(0));
    assert!(hung.join().unwrap().is_err(), "the hung request got no reply");
    assert!(fake.log().contains("SIGTERM, exiting"), "{}", fake.log());

    let mut crashing = FakeLlm::start("E", &["--fault", "exit"]);
    let status = crashing.wait_exit(Duration::from_secs(3)).expect("--fault exit exits");
    assert_eq!(status.code(), Some(1));
}
