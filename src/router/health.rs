//! Health probes of one model provider: liveness, then a one-token generation.
//!
//! Liveness alone is not enough: Ollama keeps answering `GET /api/version` while generation
//! hangs (ollama #1863, #3552, #6380), so a provider that names a probe model is also asked to
//! generate one token. Each step is bounded by the provider's timeout, so a whole probe takes at
//! most about twice that.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request};
use serde::Serialize;
use serde_json::{json, Value};

use super::http::{self, base_url, snippet, transport_reason, truncate};
use crate::spec::provider::{ModelProviderSpec, ProviderApi};

/// What a probe needs to know about a provider, resolved from its spec.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// The ModelProvider's name (for messages).
    pub provider: String,
    pub api: ProviderApi,
    /// Base URL: `http://127.0.0.1:11434` for Ollama, `http://127.0.0.1:8080/v1` for OpenAI-style.
    pub url: String,
    /// Sent as `Authorization: Bearer` to OpenAI-style providers.
    pub api_key: Option<String>,
    /// The model of the generation probe; without one, only liveness is probed.
    pub probe_model: Option<String>,
    /// Whether to probe generation at all.
    pub generate: bool,
    /// Bound of each step (liveness, generation).
    pub timeout: Duration,
}

impl ProbeTarget {
    /// The target of a provider as its spec says now. The API key is read from the environment
    /// variable named by `apiKeyEnv` at this call, so a key rotated in the daemon's environment
    /// is picked up at the next probe; an unset or empty variable means no key.
    pub fn from_spec(name: &str, spec: &ModelProviderSpec) -> ProbeTarget {
        let health = spec.health();
        ProbeTarget {
            provider: name.to_string(),
            api: spec.api,
            url: spec.url.clone(),
            api_key: spec
                .api_key_env
                .as_deref()
                .and_then(|var| std::env::var(var).ok())
                .filter(|key| !key.is_empty()),
            probe_model: spec.probe_model().map(str::to_string),
            generate: health.generate(),
            timeout: health.timeout().as_std(),
        }
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Verdict {
    /// Liveness answered and, when probed, generation produced a token.
    Healthy { detail: String },
    /// Liveness failed: connection refused, no answer within the timeout, a non-2xx status or
    /// an answer that is not the expected JSON.
    Down { why: String },
    /// Liveness answers, but generation fails or exceeds the timeout.
    Hung { why: String },
    /// Something answered, but the listener on the port is not the provider's Service: another
    /// process took the port (`why` names it). Never routed to.
    Hijacked { why: String },
}

impl Verdict {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Verdict::Healthy { .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Healthy { detail } => write!(f, "healthy: {detail}"),
            Verdict::Down { why } => write!(f, "down: {why}"),
            Verdict::Hung { why } => write!(f, "hung: {why}"),
            Verdict::Hijacked { why } => write!(f, "hijacked: {why}"),
        }
    }
}

/// Probes `target` with the process-wide [`Prober`].
pub async fn probe(target: &ProbeTarget) -> Verdict {
    static SHARED: OnceLock<Prober> = OnceLock::new();
    SHARED.get_or_init(Prober::new).probe(target).await
}

/// Answers larger than this are a failure (a cloud's model list is a few hundred KiB).
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// An HTTP/1 client for probes, created once.
#[derive(Clone, Debug)]
pub struct Prober {
    client: http::HttpClient,
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

/// Why one request failed.
enum Failure {
    /// No complete answer within the timeout.
    Timeout,
    /// Connecting, sending or reading failed.
    Transport(String),
    /// Not a 2xx status, or not the JSON expected.
    Answer(String),
}

impl Prober {
    pub fn new() -> Prober {
        // No idle connections: see `http::client`.
        Prober {
            client: http::client(false),
        }
    }

    /// A prober over `client` (tests: a client trusting a test CA).
    pub fn with_client(client: http::HttpClient) -> Prober {
        Prober { client }
    }

    /// Liveness, then (if `generate` and a probe model) a one-token generation, each bounded by
    /// `target.timeout`.
    pub async fn probe(&self, target: &ProbeTarget) -> Verdict {
        let base = match base_url(&target.url) {
            Ok(base) => base,
            Err(why) => return Verdict::Down { why },
        };
        let key = target.api_key.as_deref();
        let timeout = target.timeout;
        let liveness_path = match target.api {
            ProviderApi::Ollama => "/api/version",
            ProviderApi::Openai => "/models",
        };
        let alive = match self
            .exchange(Method::GET, &base, liveness_path, None, key, timeout)
            .await
            .and_then(|answer| liveness_detail(target.api, &answer))
        {
            Ok(detail) => detail,
            Err(failure) => {
                return Verdict::Down {
                    why: describe(&format!("GET {liveness_path}"), &failure, timeout),
                }
            }
        };
        let model = match (&target.probe_model, target.generate) {
            (Some(model), true) => model,
            _ => {
                return Verdict::Healthy {
                    detail: format!("{alive} (generation not probed)"),
                }
            }
        };
        let (path, body) = match target.api {
            ProviderApi::Ollama => (
                "/api/generate",
                json!({"model": model, "prompt": "ping", "stream": false, "options": {"num_predict": 1}}),
            ),
            ProviderApi::Openai => (
                "/chat/completions",
                json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "ping"}],
                    "max_tokens": 1,
                    "stream": false,
                }),
            ),
        };
        let started = Instant::now();
        let generated = self
            .exchange(Method::POST, &base, path, Some(body), key, timeout)
            .await
            .and_then(|answer| check_generation(target.api, &answer));
        match generated {
            Ok(()) => Verdict::Healthy {
                detail: format!(
                    "{alive}; {model} generated a token in {} ms",
                    started.elapsed().as_millis()
                ),
            },
            Err(failure) => Verdict::Hung {
                why: describe("generation", &failure, timeout),
            },
        }
    }

    /// One request; the parsed JSON of a 2xx answer.
    async fn exchange(
        &self,
        method: Method,
        base: &str,
        path: &str,
        body: Option<Value>,
        api_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header(header::USER_AGENT, "mirrorctl-probe")
            .header(header::ACCEPT, "application/json");
        if let Some(key) = api_key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let payload = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| Failure::Transport(format!("bad request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| Failure::Transport(transport_reason(&e)))?;
            let status = response.status();
            let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| Failure::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(Failure::Answer(format!(
                    "answered {}: {}",
                    status.as_u16(),
                    snippet(&answer)
                )));
            }
            parse_json(&answer).ok_or_else(|| Failure::Answer(format!("answered with no JSON: {}", snippet(&answer))))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// One JSON value, or the last line of NDJSON (an Ollama answer streamed despite `stream: false`).
fn parse_json(answer: &[u8]) -> Option<Value> {
    serde_json::from_slice(answer).ok().or_else(|| {
        let text = std::str::from_utf8(answer).ok()?;
        let last = text.lines().rev().find(|line| !line.trim().is_empty())?;
        serde_json::from_str(last).ok()
    })
}

/// What a liveness answer says, if it has the expected shape.
fn liveness_detail(api: ProviderApi, answer: &Value) -> Result<String, Failure> {
    match api {
        ProviderApi::Ollama => match answer.get("version").and_then(Value::as_str) {
            Some(version) => Ok(format!("ollama {version}")),
            None => Err(unexpected("a `version` string", answer)),
        },
        ProviderApi::Openai => match answer.get("data").and_then(Value::as_array) {
            Some(models) => Ok(format!("{} models listed", models.len())),
            None => Err(unexpected("a `data` list", answer)),
        },
    }
}

/// Whether a generation answer holds a generation.
fn check_generation(api: ProviderApi, answer: &Value) -> Result<(), Failure> {
    // Ollama reports some failures (e.g. running out of memory mid-stream) in a 200 answer.
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        let message = error.get("message").unwrap_or(error);
        let message = message
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| message.to_string());
        return Err(Failure::Answer(format!("answered an error: {}", truncate(&message))));
    }
    let generated = match api {
        ProviderApi::Ollama => answer.get("response").is_some_and(Value::is_string),
        ProviderApi::Openai => answer
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| !choices.is_empty()),
    };
    if generated {
        Ok(())
    } else {
        let expected = match api {
            ProviderApi::Ollama => "a `response` string",
            ProviderApi::Openai => "a non-empty `choices` list",
        };
        Err(unexpected(expected, answer))
    }
}

fn unexpected(expected: &str, answer: &Value) -> Failure {
    Failure::Answer(format!(
        "answered without {expected}: {}",
        truncate(&answer.to_string())
    ))
}

/// A reason for a failed step: "GET /api/version answered 503: ...", "generation timed out after 5s".
fn describe(step: &str, failure: &Failure, timeout: Duration) -> String {
    match failure {
        Failure::Timeout => format!("{step} timed out after {}", humantime::format_duration(timeout)),
        Failure::Transport(why) => format!("{step}: {why}"),
        Failure::Answer(why) => format!("{step} {why}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::{Json, Router};

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

    /// Serves `router` on 127.0.0.1 for the rest of the test; its base URL.
    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{address}")
    }

    fn target(api: ProviderApi, url: &str) -> ProbeTarget {
        ProbeTarget {
            provider: "test".into(),
            api,
            url: url.into(),
            api_key: None,
            probe_model: Some("llama3.2:3b".into()),
            generate: true,
            timeout: TIMEOUT,
        }
    }

    async fn ollama_version() -> Json<Value> {
        Json(json!({"version": "0.5.7"}))
    }

    /// Answers as Ollama does to a non-streamed generation, after checking the request is one.
    async fn ollama_generate(
        State(seen): State<Arc<Mutex<Vec<Value>>>>,
        Json(request): Json<Value>,
    ) -> impl IntoResponse {
        seen.lock().unwrap().push(request.clone());
        if request["stream"] != json!(false) || request["options"]["num_predict"] != json!(1) {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "expected a one-token, non-streamed request"})),
            );
        }
        (
            StatusCode::OK,
            Json(json!({
                "model": request["model"], "created_at": "2025-01-01T00:00:00Z", "response": "Pong",
                "done": true, "done_reason": "length", "total_duration": 1000, "load_duration": 10,
                "prompt_eval_count": 1, "prompt_eval_duration": 10, "eval_count": 1, "eval_duration": 10,
            })),
        )
    }

    async fn never() -> &'static str {
        std::future::pending::<()>().await;
        "never"
    }

    fn ollama(generate: Router<Arc<Mutex<Vec<Value>>>>) -> (Router, Arc<Mutex<Vec<Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new()
            .route("/api/version", get(ollama_version))
            .merge(generate)
            .with_state(seen.clone());
        (router, seen)
    }

    #[tokio::test]
    async fn ollama_that_answers_and_generates_is_healthy() {
        let (router, seen) = ollama(Router::new().route("/api/generate", post(ollama_generate)));
        let url = serve(router).await;
        let verdict = probe(&target(ProviderApi::Ollama, &url)).await;
        let Verdict::Healthy { detail } = &verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            detail.starts_with("ollama 0.5.7; llama3.2:3b generated a token in "),
            "{detail}"
        );
        let requests = seen.lock().unwrap();
        assert_eq!(
            requests.as_slice(),
            [json!({"model": "llama3.2:3b", "prompt": "ping", "stream": false, "options": {"num_predict": 1}})]
        );
    }

    #[tokio::test]
    async fn ollama_whose_generation_hangs_is_hung_within_the_timeout() {
        let (router, _) = ollama(Router::new().route("/api/generate", post(never)));
        let url = serve(router).await;
        let started = Instant::now();
        let verdict = probe(&target(ProviderApi::Ollama, &url)).await;
        let took = started.elapsed();
        assert_eq!(
            verdict,
            Verdict::Hung {
                why: "generation timed out after 300ms".into()
            }
        );
        assert_eq!(verdict.to_string(), "hung: generation timed out after 300ms");
        assert!(took >= TIMEOUT && took < TIMEOUT * 2, "took {took:?}");
    }

    #[tokio::test]
    async fn ollama_whose_generation_fails_is_hung_with_the_status_and_answer() {
        let generate = || async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "model \"llama3.2:3b\" not found, try pulling it first"})),
            )
        };
        let (router, _) = ollama(Router::new().route("/api/generate", post(generate)));
        let url = serve(router).await;
        assert_eq!(
            probe(&target(ProviderApi::Ollama, &url)).await,
            Verdict::Hung {
                why: r#"generation answered 404: {"error":"model \"llama3.2:3b\" not found, try pulling it first"}"#
                    .into()
            }
        );
    }

    #[tokio::test]
    async fn an_error_inside_a_200_generation_answer_is_hung() {
        let generate = || async { Json(json!({"error": "llama runner process has terminated"})) };
        let (router, _) = ollama(Router::new().route("/api/generate", post(generate)));
        let url = serve(router).await;
        assert_eq!(
            probe(&target(ProviderApi::Ollama, &url)).await,
            Verdict::Hung {
                why: "generation answered an error: llama runner process has terminated".into()
            }
        );
    }

    #[tokio::test]
    async fn ollama_answering_503_is_down() {
        let router = Router::new().route(
            "/api/version",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "loading ".repeat(100)) }),
        );
        let url = serve(router).await;
        let verdict = probe(&target(ProviderApi::Ollama, &url)).await;
        let Verdict::Down { why } = &verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            why.starts_with("GET /api/version answered 503: loading loading"),
            "{why}"
        );
        // The quoted answer is cut at 200 bytes.
        assert!(why.len() < 260 && why.ends_with("..."), "{why}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        assert_eq!(
            probe(&target(ProviderApi::Ollama, &url)).await,
            Verdict::Down {
                why: "GET /api/version: connection refused".into()
            }
        );
    }

    #[tokio::test]
    async fn a_liveness_answer_that_never_comes_is_down_after_the_timeout() {
        let url = serve(Router::new().route("/api/version", get(never))).await;
        let started = Instant::now();
        assert_eq!(
            probe(&target(ProviderApi::Ollama, &url)).await,
            Verdict::Down {
                why: "GET /api/version timed out after 300ms".into()
            }
        );
        assert!(started.elapsed() < TIMEOUT * 2);
    }

    #[tokio::test]
    async fn a_liveness_answer_of_the_wrong_shape_is_down() {
        let url = serve(Router::new().route("/api/version", get(|| async { "<html>ok</html>" }))).await;
        assert_eq!(
            probe(&target(ProviderApi::Ollama, &url)).await,
            Verdict::Down {
                why: "GET /api/version answered with no JSON: <html>ok</html>".into()
            }
        );
        let url = serve(Router::new().route("/api/version", get(|| async { Json(json!({"ok": true})) }))).await;
        assert_eq!(
            probe(&target(ProviderApi::Ollama, &url)).await,
            Verdict::Down {
                why: r#"GET /api/version answered without a `version` string: {"ok":true}"#.into()
            }
        );
    }

    #[tokio::test]
    async fn generation_is_not_probed_when_turned_off_or_without_a_model() {
        let (router, seen) = ollama(Router::new().route("/api/generate", post(never)));
        let url = serve(router).await;
        let mut no_generation = target(ProviderApi::Ollama, &url);
        no_generation.generate = false;
        let mut no_model = target(ProviderApi::Ollama, &url);
        no_model.probe_model = None;
        for target in [no_generation, no_model] {
            assert_eq!(
                probe(&target).await,
                Verdict::Healthy {
                    detail: "ollama 0.5.7 (generation not probed)".into()
                }
            );
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unsupported_scheme_is_a_clear_verdict() {
        let verdict = probe(&target(ProviderApi::Openai, "ftp://models.example/v1")).await;
        assert_eq!(
            verdict,
            Verdict::Down {
                why: "ftp://models.example/v1: unsupported scheme `ftp` (expected http or https)".into()
            }
        );
    }

    /// An OpenAI-style server that wants `Authorization: Bearer sk-test`; its completions hang
    /// if told to.
    fn openai(completions_hang: bool) -> Router {
        fn authorized(headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
            match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
                Some("Bearer sk-test") => Ok(()),
                _ => Err((
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})),
                )),
            }
        }
        let models = |headers: HeaderMap| async move {
            authorized(&headers)?;
            Ok::<_, (StatusCode, Json<Value>)>(Json(
                json!({"object": "list", "data": [{"id": "qwen2.5:0.5b", "object": "model", "owned_by": "me"}]}),
            ))
        };
        let completions = move |headers: HeaderMap, Json(request): Json<Value>| async move {
            authorized(&headers)?;
            if completions_hang {
                std::future::pending::<()>().await;
            }
            if request["max_tokens"] != json!(1) || request["messages"][0]["content"] != json!("ping") {
                return Err((
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": {"message": "unexpected request"}})),
                ));
            }
            Ok::<_, (StatusCode, Json<Value>)>(Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "P"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })))
        };
        Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(completions))
    }

    #[tokio::test]
    async fn openai_with_the_right_key_is_healthy() {
        let url = serve(openai(false)).await;
        // With and without a trailing slash on the base URL.
        for base in [format!("{url}/v1"), format!("{url}/v1/")] {
            let mut target = target(ProviderApi::Openai, &base);
            target.api_key = Some("sk-test".into());
            target.probe_model = Some("qwen2.5:0.5b".into());
            let verdict = probe(&target).await;
            let Verdict::Healthy { detail } = &verdict else {
                panic!("{verdict:?}")
            };
            assert!(
                detail.starts_with("1 models listed; qwen2.5:0.5b generated a token in "),
                "{detail}"
            );
        }
    }

    #[tokio::test]
    async fn openai_without_the_key_is_down() {
        let url = serve(openai(false)).await;
        let verdict = probe(&target(ProviderApi::Openai, &format!("{url}/v1"))).await;
        assert_eq!(
            verdict,
            Verdict::Down {
                why: r#"GET /models answered 401: {"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#.into()
            }
        );
    }

    #[tokio::test]
    async fn openai_whose_completions_hang_is_hung() {
        let url = serve(openai(true)).await;
        let mut target = target(ProviderApi::Openai, &format!("{url}/v1"));
        target.api_key = Some("sk-test".into());
        assert_eq!(
            probe(&target).await,
            Verdict::Hung {
                why: "generation timed out after 300ms".into()
            }
        );
    }

    #[test]
    fn targets_come_from_the_spec_with_the_key_read_now() {
        let yaml =
            "api: openai\nurl: http://127.0.0.1:8080/v1\nmodels: [qwen, llama]\napiKeyEnv: MIRRORCTL_ROUTER_TEST_KEY\n";
        let spec: ModelProviderSpec = serde_yaml::from_str(yaml).unwrap();
        let target = ProbeTarget::from_spec("backup", &spec);
        assert_eq!(target.provider, "backup");
        assert_eq!(target.api_key, None);
        assert_eq!(target.probe_model.as_deref(), Some("qwen"));
        assert!(target.generate);
        assert_eq!(target.timeout, Duration::from_secs(5));
        // Only this test uses this variable.
        std::env::set_var("MIRRORCTL_ROUTER_TEST_KEY", "sk-rotated");
        let target = ProbeTarget::from_spec("backup", &spec);
        assert_eq!(target.api_key.as_deref(), Some("sk-rotated"));

        let yaml = "api: ollama\nurl: http://127.0.0.1:11434\nmodels: [llama3.2:3b]\nhealth: {timeout: 3s, generate: false, probeModel: tiny}\n";
        let spec: ModelProviderSpec = serde_yaml::from_str(yaml).unwrap();
        let target = ProbeTarget::from_spec("ollama", &spec);
        assert_eq!(target.probe_model.as_deref(), Some("tiny"));
        assert!(!target.generate);
        assert_eq!(target.timeout, Duration::from_secs(3));
    }

    #[test]
    fn verdicts_serialize_with_their_state() {
        let verdict = Verdict::Hung {
            why: "generation timed out after 5s".into(),
        };
        assert_eq!(
            serde_json::to_value(&verdict).unwrap(),
            json!({"state": "hung", "why": "generation timed out after 5s"})
        );
    }
}

/// https providers (clouds): a TLS server with a certificate made for the test.
#[cfg(test)]
mod tls_tests {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    use super::*;

    /// Answers every GET with Ollama's `/api/version` JSON, over TLS.
    const TLS_SERVER: &str = r#"
import http.server, ssl, sys
class Version(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"version": "0.5.7"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Version)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = tls.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

    struct Killed(std::process::Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn an_https_provider_is_probed_when_its_certificate_is_trusted_and_refused_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ])
            .args([
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            // A leaf, not a CA: webpki refuses a CA certificate presented by a server.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(made.success());
        let mut child = Command::new("python3")
            .args(["-c", TLS_SERVER])
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut port = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        let _server = Killed(child);
        let target = ProbeTarget {
            provider: "cloud".into(),
            api: ProviderApi::Ollama,
            url: format!("https://127.0.0.1:{}", port.trim()),
            api_key: None,
            probe_model: None,
            generate: false,
            timeout: Duration::from_secs(5),
        };

        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&cert).unwrap() {
            roots.add(der.unwrap()).unwrap();
        }
        let trusting = Prober::with_client(http::client_trusting(false, Arc::new(roots)));
        let verdict = trusting.probe(&target).await;
        assert!(verdict.is_healthy(), "{verdict}");

        let verdict = Prober::with_client(http::client_trusting(false, Arc::new(rustls::RootCertStore::empty())))
            .probe(&target)
            .await;
        assert!(
            matches!(&verdict, Verdict::Down { why } if why.to_lowercase().contains("certificate")),
            "an untrusted certificate is named: {verdict}"
        );
    }
}
