//! The model bus: one stable local endpoint for agents, forwarding each request to the
//! provider the router picked for the calling agent.
//!
//! Agents speak the Ollama API (`/api/...`) or the OpenAI one (`/v1/...`) and are known by
//! `Authorization: Bearer <token>` (looked up by the token's SHA-256 digest). The bus replaces
//! the requested model with the routed one, forwards to the first candidate that answers
//! (retrying the next candidates while nothing has reached the agent yet: refused, reset, 5xx,
//! no headers in time, headers but no first byte, or the provider left the agent's routes while
//! the bus waited), translates chat between the two APIs when the route crosses them, relays
//! streams chunk by chunk, ends a broken or stalled stream with an error event, and meters the
//! tokens of every completed answer.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::http::transport_reason;
use crate::spec::provider::ProviderApi;

/// Where an agent's requests go now (the daemon updates it on every route switch).
#[derive(Clone, Debug)]
pub struct Upstream {
    pub provider: String,
    pub api: ProviderApi,
    /// Base URL: `http://127.0.0.1:11434` for Ollama, `http://host/v1` for OpenAI-style.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// On this host or the local network (`ModelProvider.local`): what an agent over its
    /// budget with `onBudgetExceeded: local-only` may still use.
    pub local: bool,
}

/// Shared, cheap to clone: agent tokens and routes. Routes: agent -> ordered candidates (the
/// current route first, then the other healthy entries of its chain, for retries).
#[derive(Clone)]
pub struct BusState {
    shared: Arc<RwLock<Tables>>,
    /// Bumped whenever routes change, so a request waiting on a provider that has just left its
    /// agent's candidates (failed over) moves on at once.
    routes_changed: Arc<watch::Sender<u64>>,
    /// Budgets and the tool gate.
    governance: super::governance::Governance,
}

/// The SHA-256 digest of an agent token: tokens are looked up by digest, never compared as
/// strings, so how long a lookup takes says nothing about how much of a guess was right.
type TokenDigest = [u8; 32];

fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Default)]
struct Tables {
    /// digest of the token -> agent.
    agents_by_token: HashMap<TokenDigest, String>,
    /// agent -> candidates, current route first.
    routes: HashMap<String, Vec<Upstream>>,
    /// agent -> the memory namespaces it may read and write.
    memory_scopes: HashMap<String, crate::spec::agent::MemoryScope>,
    /// How long to wait for an upstream's response headers before trying the next candidate.
    header_timeout: Duration,
    /// The same for a non-streamed generation, whose headers come with the whole answer.
    answer_timeout: Duration,
    /// How long a relayed answer may send nothing before the bus gives up on it.
    idle_timeout: Duration,
}

/// How long a non-streamed generation may take to answer (its headers come with the answer).
pub const NON_STREAMED_ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// Ollama may load a model before answering; 30 s covers a cold load of a small model.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A provider that sends nothing for this long in the middle of an answer is taken for hung:
/// the agent's stream ends with the broken-stream error event. Generous: a large model on a CPU
/// still produces a token every few seconds, and a hung local provider is usually caught
/// sooner by its generation probe (the daemon then restarts it, which breaks the stream).
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for BusState {
    fn default() -> Self {
        BusState {
            shared: Arc::new(RwLock::new(Tables {
                header_timeout: DEFAULT_HEADER_TIMEOUT,
                answer_timeout: NON_STREAMED_ANSWER_TIMEOUT,
                idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
                ..Tables::default()
            })),
            routes_changed: Arc::new(watch::Sender::new(0)),
            governance: super::governance::Governance::default(),
        }
    }
}

impl BusState {
    pub fn governance(&self) -> &super::governance::Governance {
        &self.governance
    }

    /// The agent's token; replaces its previous one.
    pub fn set_token(&self, agent: &str, token: &str) {
        let mut tables = self.shared.write().unwrap_or_else(|e| e.into_inner());
        tables.agents_by_token.retain(|_, owner| owner != agent);
        tables.agents_by_token.insert(token_digest(token), agent.to_string());
    }

    /// Forgets the agent's token, routes and memory scope.
    pub fn remove_agent(&self, agent: &str) {
        {
            let mut tables = self.shared.write().unwrap_or_else(|e| e.into_inner());
            tables.agents_by_token.retain(|_, owner| owner != agent);
            tables.routes.remove(agent);
            tables.memory_scopes.remove(agent);
        }
        self.routes_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The memory namespaces the agent may read and write (the memory API's scope).
    pub fn set_memory_scope(&self, agent: &str, scope: crate::spec::agent::MemoryScope) {
        let mut tables = self.shared.write().unwrap_or_else(|e| e.into_inner());
        tables.memory_scopes.insert(agent.to_string(), scope);
    }

    /// The memory API's caller behind `Authorization: Bearer <token>`: the agent and its scope.
    pub fn memory_caller(&self, headers: &HeaderMap) -> Option<super::memory_api::Caller> {
        let agent = self.agent_of(bearer(headers)?)?;
        let tables = self.shared.read().unwrap_or_else(|e| e.into_inner());
        let scope = tables.memory_scopes.get(&agent).cloned().unwrap_or_default();
        Some(super::memory_api::Caller::new(agent, &scope))
    }

    /// The agent's candidates, current route first.
    pub fn set_routes(&self, agent: &str, candidates: Vec<Upstream>) {
        {
            let mut tables = self.shared.write().unwrap_or_else(|e| e.into_inner());
            tables.routes.insert(agent.to_string(), candidates);
        }
        self.routes_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How long to wait for an upstream's response headers (default 30 s), also for a
    /// non-streamed generation (default 10 min) unless set apart with `set_answer_timeout`.
    pub fn set_header_timeout(&self, timeout: Duration) {
        let mut tables = self.shared.write().unwrap_or_else(|e| e.into_inner());
        tables.header_timeout = timeout;
        tables.answer_timeout = timeout;
    }

    /// How long a non-streamed generation may take to answer (default 10 min).
    pub fn set_answer_timeout(&self, timeout: Duration) {
        self.shared.write().unwrap_or_else(|e| e.into_inner()).answer_timeout = timeout;
    }

    /// How long a relayed answer (a stream, or the body of a non-streamed one) may send nothing
    /// before the bus ends it as broken (default 60 s).
    pub fn set_stream_idle_timeout(&self, timeout: Duration) {
        self.shared.write().unwrap_or_else(|e| e.into_inner()).idle_timeout = timeout;
    }

    fn agent_of(&self, token: &str) -> Option<String> {
        let digest = token_digest(token);
        let tables = self.shared.read().unwrap_or_else(|e| e.into_inner());
        tables.agents_by_token.get(&digest).cloned()
    }

    fn routes_of(&self, agent: &str) -> (Vec<Upstream>, Timeouts) {
        let tables = self.shared.read().unwrap_or_else(|e| e.into_inner());
        (
            tables.routes.get(agent).cloned().unwrap_or_default(),
            Timeouts {
                header: tables.header_timeout,
                answer: tables.answer_timeout,
                idle: tables.idle_timeout,
            },
        )
    }

    /// Whether `provider` is still among the agent's candidates.
    fn still_routed(&self, agent: &str, provider: &str) -> bool {
        let tables = self.shared.read().unwrap_or_else(|e| e.into_inner());
        tables
            .routes
            .get(agent)
            .is_some_and(|candidates| candidates.iter().any(|c| c.provider == provider))
    }
}

/// The bounds of one forwarded request.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    /// For the upstream's response headers.
    header: Duration,
    /// For a non-streamed generation's answer.
    answer: Duration,
    /// Between two pieces of the upstream's answer.
    idle: Duration,
}

/// Usage of one answered request, for metering (tokens from Ollama
/// prompt_eval_count/eval_count or OpenAI usage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metered {
    pub agent: String,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

pub type Meter = Arc<dyn Fn(Metered) + Send + Sync>;

/// Why a relayed body ended badly (seen by the agent's HTTP client as a broken body).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the upstream answer broke: {0}")]
    UpstreamBroke(String),
}

/// Requests larger than this are refused (chat with images can be large).
const MAX_REQUEST_BYTES: usize = 64 << 20;
/// A non-streamed answer kept for metering or translation; larger ones are not metered.
const MAX_KEPT_ANSWER_BYTES: usize = 64 << 20;
/// Chunks buffered between the upstream reader and the agent: small, so a slow agent slows
/// the upstream read instead of filling memory.
const RELAY_BUFFER_CHUNKS: usize = 16;

/// Serves the bus on `addr` until `shutdown` resolves; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: BusState,
    meter: Meter,
    extra: Option<Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let bus = Arc::new(Bus {
        state,
        meter,
        client: super::http::client(true),
        next_id: AtomicU64::new(1),
    });
    let mut router = routes(bus);
    if let Some(extra) = extra {
        router = router.merge(extra);
    }
    // No Nagle: a response's last small write would otherwise wait for the agent's delayed ACK
    // (~40 ms per request on a keep-alive connection).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
            tracing::error!(%error, "the model bus stopped");
        }
    });
    Ok((bound, task))
}

struct Bus {
    state: BusState,
    meter: Meter,
    client: super::http::HttpClient,
    /// For the ids of translated OpenAI answers.
    next_id: AtomicU64,
}

/// What an agent asked for.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Generate,
    Embed,
}

fn routes(bus: Arc<Bus>) -> Router {
    use ProviderApi::{Ollama, Openai};
    let call = |api: ProviderApi, endpoint: Endpoint| {
        post(
            move |State(bus): State<Arc<Bus>>, headers: HeaderMap, body: Bytes| async move {
                forward(bus, api, endpoint, headers, body).await
            },
        )
    };
    let list = |api: ProviderApi| {
        get(move |State(bus): State<Arc<Bus>>, headers: HeaderMap| async move { list_models(bus, api, headers) })
    };
    Router::new()
        .route("/api/chat", call(Ollama, Endpoint::Chat))
        .route("/api/generate", call(Ollama, Endpoint::Generate))
        .route("/api/embed", call(Ollama, Endpoint::Embed))
        .route("/api/tags", list(Ollama))
        .route("/v1/chat/completions", call(Openai, Endpoint::Chat))
        .route("/v1/embeddings", call(Openai, Endpoint::Embed))
        .route("/v1/models", list(Openai))
        .route("/v1/gate", post(gate_ask))
        .route("/v1/gate/{id}", get(gate_poll))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(bus)
}

/// The agent behind `Authorization: Bearer <token>`.
fn caller(bus: &Bus, headers: &HeaderMap) -> Option<String> {
    bus.state.agent_of(bearer(headers)?)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An error in the shape of the API the agent called.
fn error_response(api: ProviderApi, status: StatusCode, message: &str) -> Response {
    let body = match api {
        ProviderApi::Ollama => json!({ "error": message }),
        ProviderApi::Openai => json!({
            "error": { "message": message, "type": error_type(status), "code": Value::Null }
        }),
    };
    json_response(status, &body)
}

fn error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "api_error",
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn unauthorized(api: ProviderApi) -> Response {
    error_response(
        api,
        StatusCode::UNAUTHORIZED,
        "missing or unknown bearer token: the model bus serves only agents with a token",
    )
}

fn route_header(upstream: &Upstream) -> HeaderValue {
    HeaderValue::from_str(&format!("{}/{}", upstream.provider, upstream.model))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `/api/tags` and `/v1/models`: the agent's current routed model, not the provider's list,
/// since whatever model the agent asks for is replaced by the routed one anyway.
fn list_models(bus: Arc<Bus>, api: ProviderApi, headers: HeaderMap) -> Response {
    let Some(agent) = caller(&bus, &headers) else {
        return unauthorized(api);
    };
    let (candidates, _) = bus.state.routes_of(&agent);
    let current = candidates.first();
    let body = match api {
        ProviderApi::Ollama => json!({
            "models": current.map(|up| json!({
                "name": up.model, "model": up.model, "modified_at": "1970-01-01T00:00:00Z",
                "size": 0, "digest": "", "details": {},
            })).into_iter().collect::<Vec<_>>()
        }),
        ProviderApi::Openai => json!({
            "object": "list",
            "data": current.map(|up| json!({
                "id": up.model, "object": "model", "created": 0, "owned_by": up.provider,
            })).into_iter().collect::<Vec<_>>()
        }),
    };
    let mut response = json_response(StatusCode::OK, &body);
    if let Some(up) = current {
        response.headers_mut().insert("x-mirror-route", route_header(up));
    }
    response
}

/// `POST /v1/gate {"tool": T, "args": {...}}`: allow or deny (200), or needs-approval (202, with
/// the request's id to poll at `GET /v1/gate/{id}`).
async fn gate_ask(State(bus): State<Arc<Bus>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(agent) = caller(&bus, &headers) else {
        return unauthorized(ProviderApi::Openai);
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(tool) = request["tool"].as_str().filter(|t| !t.is_empty()) else {
        return error_response(
            ProviderApi::Openai,
            StatusCode::BAD_REQUEST,
            "expected a JSON object {\"tool\": NAME, \"args\": {...}}",
        );
    };
    let args = request.get("args").cloned().unwrap_or(json!({}));
    use super::governance::GateAnswer;
    match bus.state.governance.gate(&agent, tool, &args, crate::report::now_ms()) {
        GateAnswer::Decided(decision) => json_response(
            StatusCode::OK,
            &json!({"decision": decision.outcome, "reason": decision.reason, "rule": decision.rule, "risk": decision.risk, "tool": decision.tool}),
        ),
        GateAnswer::Approval(pending) => json_response(StatusCode::ACCEPTED, &approval_json(&pending)),
    }
}

/// `GET /v1/gate/{id}`: where the agent's approval request stands.
async fn gate_poll(
    State(bus): State<Arc<Bus>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(agent) = caller(&bus, &headers) else {
        return unauthorized(ProviderApi::Openai);
    };
    match bus.state.governance.approval(&agent, &id) {
        Some(request) => json_response(StatusCode::OK, &approval_json(&request)),
        None => error_response(
            ProviderApi::Openai,
            StatusCode::NOT_FOUND,
            &format!("no approval request {id} of agent `{agent}`"),
        ),
    }
}

fn approval_json(request: &crate::policy::ApprovalRequest) -> Value {
    let mut answer = json!(request);
    answer["decision"] = json!(match request.state {
        crate::policy::ApprovalState::Pending => "needs-approval",
        crate::policy::ApprovalState::Approved { .. } => "approved",
        crate::policy::ApprovalState::Denied { .. } => "denied",
        crate::policy::ApprovalState::Expired { .. } => "expired",
    });
    answer
}

/// Whether the agent asked for a stream (Ollama streams unless told not to, OpenAI only when told).
fn wants_stream(api: ProviderApi, endpoint: Endpoint, request: &Value) -> bool {
    if endpoint == Endpoint::Embed {
        return false;
    }
    match api {
        ProviderApi::Ollama => request.get("stream") != Some(&Value::Bool(false)),
        ProviderApi::Openai => request.get("stream") == Some(&Value::Bool(true)),
    }
}

async fn forward(bus: Arc<Bus>, api: ProviderApi, endpoint: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
    let Some(agent) = caller(&bus, &headers) else {
        return unauthorized(api);
    };
    let Some(request) = parse_request(&body) else {
        return error_response(api, StatusCode::BAD_REQUEST, "the request body is not a JSON object");
    };
    let streamed = wants_stream(api, endpoint, &request);
    // The budget, before anything is forwarded (usage includes every answer so far).
    let local_only = match bus.state.governance.admission(&agent, crate::report::now_ms()) {
        crate::policy::Admission::Serve => false,
        crate::policy::Admission::ServeLocalOnly => true,
        crate::policy::Admission::Refuse429 { body, retry_after_secs } => {
            let message = body["error"]["message"].as_str().unwrap_or("over budget").to_string();
            let mut response = match api {
                ProviderApi::Openai => json_response(StatusCode::TOO_MANY_REQUESTS, &body),
                ProviderApi::Ollama => json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({"error": message, "budget": body["error"]}),
                ),
            };
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return response;
        }
    };
    // Subscribed before the candidates are read, so no route change in between goes unseen.
    let mut route_changes = bus.state.routes_changed.subscribe();
    let (mut candidates, timeouts) = bus.state.routes_of(&agent);
    if local_only {
        candidates.retain(|c| c.local);
        if candidates.is_empty() {
            return error_response(
                api,
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "agent `{agent}` is over its budget and limited to local models, and no local model is routable"
                ),
            );
        }
    }
    if candidates.is_empty() {
        return error_response(
            api,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no healthy model route for agent `{agent}`"),
        );
    }
    // A non-streamed generation sends nothing until it is done: a long answer from a model on a
    // CPU takes minutes. A hung provider is caught by its probes, and a request waiting on it
    // moves on when it leaves the agent's routes, so the wait can be long.
    let answer_within = if streamed || endpoint == Endpoint::Embed {
        timeouts.header
    } else {
        timeouts.answer
    };
    let mut failures = Vec::new();
    let mut tried = 0;
    loop {
        if tried > 0 {
            // A candidate that became routable while this request was tried (the agent failed
            // over while it waited) is tried too, each at most once.
            for fresh in bus.state.routes_of(&agent).0 {
                if !candidates
                    .iter()
                    .any(|c| c.provider == fresh.provider && c.model == fresh.model)
                {
                    candidates.push(fresh);
                }
            }
        }
        let Some(upstream) = candidates.get(tried).cloned() else {
            break;
        };
        tried += 1;
        let upstream = &upstream;
        let Some((path, upstream_request)) = upstream_request(api, endpoint, upstream, &request, streamed) else {
            failures.push(format!(
                "{}: cannot translate this request to its API",
                upstream.provider
            ));
            continue;
        };
        let sending = send(&bus, upstream, path, &upstream_request, answer_within);
        let answer = match until_unrouted(&bus.state, &agent, upstream, &mut route_changes, sending).await {
            Ok(answer) => answer,
            Err(why) => {
                tracing::warn!(%agent, provider = %upstream.provider, %why, "model bus: trying the next candidate");
                failures.push(format!("{}: {why}", upstream.provider));
                continue;
            }
        };
        let status = answer.status();
        if status.is_server_error() {
            // Nothing has reached the agent yet: another candidate may answer.
            // Bounded: a 5xx whose body stalls must not hold the request.
            let snippet = tokio::time::timeout(timeouts.header, read_whole(answer.into_body()))
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            failures.push(format!(
                "{}: answered {}: {}",
                upstream.provider,
                status.as_u16(),
                String::from_utf8_lossy(&snippet[..snippet.len().min(200)]).trim()
            ));
            continue;
        }
        if !status.is_success() {
            return relay(
                &bus,
                &agent,
                api,
                endpoint,
                upstream,
                streamed,
                asks_for_usage(&request),
                timeouts.idle,
                answer,
                None,
            )
            .await;
        }
        // The agent is answered only once the first byte of the body is here: a provider that
        // sent its headers and then died or hung (killed between its headers and its first
        // token) has still sent nothing that reached the agent, so the next candidate is tried.
        let (parts, mut body) = answer.into_parts();
        let waiting = first_data(&mut body, answer_within);
        let first = match until_unrouted(&bus.state, &agent, upstream, &mut route_changes, waiting).await {
            Ok(first) => first,
            Err(why) => {
                tracing::warn!(%agent, provider = %upstream.provider, %why, "model bus: trying the next candidate");
                failures.push(format!("{}: {why}", upstream.provider));
                continue;
            }
        };
        let answer = hyper::Response::from_parts(parts, body);
        return relay(
            &bus,
            &agent,
            api,
            endpoint,
            upstream,
            streamed,
            asks_for_usage(&request),
            timeouts.idle,
            answer,
            Some(first),
        )
        .await;
    }
    error_response(
        api,
        StatusCode::BAD_GATEWAY,
        &format!(
            "no model provider answered for agent `{agent}`: {}",
            failures.join("; ")
        ),
    )
}

/// An agent's request body, when it is a JSON object (anything else is answered 400).
fn parse_request(body: &[u8]) -> Option<Value> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(Value::Object(map)),
        _ => None,
    }
}

/// The request side of `forward` without the network (for the fuzz targets and their replay
/// test): the body parsed as the bus parses it (None: answered 400), whether the agent wants a
/// stream, and the path and body sent to a route of `upstream_api` serving `model` (None: the
/// request cannot cross to that API).
#[doc(hidden)]
pub fn translate_request(
    api: ProviderApi,
    endpoint: Endpoint,
    upstream_api: ProviderApi,
    model: &str,
    body: &[u8],
) -> Option<(bool, Option<(&'static str, Value)>)> {
    let request = parse_request(body)?;
    let streamed = wants_stream(api, endpoint, &request);
    let upstream = Upstream {
        provider: "fuzz".into(),
        api: upstream_api,
        url: String::new(),
        model: model.into(),
        api_key: None,
        local: true,
    };
    Some((streamed, upstream_request(api, endpoint, &upstream, &request, streamed)))
}

/// What `relay` makes of a successful answer arriving in `chunks` (the first one is the first
/// data `forward` waited for), without the network (for the fuzz targets and their replay test).
#[doc(hidden)]
#[derive(Debug)]
pub struct RelayOutcome {
    /// What the agent is sent for each chunk, in order.
    pub per_chunk: Vec<Vec<Bytes>>,
    /// The last pieces: Ok for a complete answer, Err for one that did not complete.
    pub ending: Result<Vec<Bytes>, Vec<Bytes>>,
    /// The tokens metered (prompt, completion), None when nothing is metered.
    pub metered: Option<(u64, u64)>,
    /// The usage event the bus asked for is kept from the agent.
    pub hides_usage: bool,
}

#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn translate_answer(
    api: ProviderApi,
    endpoint: Endpoint,
    upstream_api: ProviderApi,
    model: &str,
    streamed: bool,
    usage_asked: bool,
    chunks: &[&[u8]],
    broke: Option<&str>,
) -> RelayOutcome {
    let mut converter = Converter::new(api, upstream_api, endpoint, model, streamed, usage_asked, 0);
    let per_chunk = chunks
        .iter()
        .map(|chunk| converter.on_chunk(&Bytes::copy_from_slice(chunk)))
        .collect();
    let ending = converter.on_end(broke);
    let metered =
        (ending.is_ok() && !converter.errored).then_some((converter.prompt_tokens, converter.completion_tokens));
    RelayOutcome {
        per_chunk,
        ending,
        metered,
        hides_usage: converter.hide_usage,
    }
}

/// Waits for `sending`, unless `upstream`'s provider leaves the agent's candidates first (the
/// daemon failed the agent over: its probes found the provider down or hung). Then the request
/// is abandoned (dropping it closes the upstream connection) and the next candidate is tried at
/// once, instead of waiting out the header timeout on a provider known to be hung.
async fn until_unrouted<T>(
    state: &BusState,
    agent: &str,
    upstream: &Upstream,
    route_changes: &mut watch::Receiver<u64>,
    sending: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::pin!(sending);
    loop {
        tokio::select! {
            result = &mut sending => return result,
            changed = route_changes.changed() => {
                if changed.is_err() {
                    return sending.await; // The state is gone: nothing will change any more.
                }
                if !state.still_routed(agent, &upstream.provider) {
                    return Err("no answer yet, and no longer a healthy route (failed over)".into());
                }
            }
        }
    }
}

/// The first data of an answer's body; Err when the body ended, broke or stayed silent for
/// `timeout` before any.
async fn first_data(body: &mut Incoming, timeout: Duration) -> Result<Bytes, String> {
    loop {
        match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                return Err(format!(
                    "headers, then nothing within {}",
                    humantime::format_duration(timeout)
                ))
            }
            Ok(None) => return Err("the answer ended before its first byte".into()),
            Ok(Some(Err(error))) => return Err(format!("the answer broke before its first byte: {error}")),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        return Ok(data);
                    }
                }
            }
        }
    }
}

/// The path (relative to the upstream's base URL) and body for `upstream`, or None when the
/// request cannot cross to its API.
fn upstream_request(
    api: ProviderApi,
    endpoint: Endpoint,
    upstream: &Upstream,
    request: &Value,
    streamed: bool,
) -> Option<(&'static str, Value)> {
    let model = Value::String(upstream.model.clone());
    let path = match (upstream.api, endpoint) {
        (ProviderApi::Ollama, Endpoint::Chat) => "/api/chat",
        (ProviderApi::Ollama, Endpoint::Generate) => "/api/generate",
        (ProviderApi::Ollama, Endpoint::Embed) => "/api/embed",
        // An Ollama generation becomes a chat of one user message on an OpenAI route.
        (ProviderApi::Openai, Endpoint::Chat | Endpoint::Generate) => "/chat/completions",
        (ProviderApi::Openai, Endpoint::Embed) => "/embeddings",
    };
    if api == upstream.api {
        let mut same = request.clone();
        same["model"] = model;
        if api == ProviderApi::Openai && endpoint == Endpoint::Chat && streamed && !asks_for_usage(request) {
            // Metering needs the stream's token counts; the agent will not see them (hide_usage).
            if !same["stream_options"].is_object() {
                same["stream_options"] = json!({});
            }
            same["stream_options"]["include_usage"] = json!(true);
        }
        return Some((path, same));
    }
    match (api, endpoint) {
        (ProviderApi::Ollama, Endpoint::Chat) => Some((path, chat_ollama_to_openai(request, model, streamed))),
        (ProviderApi::Openai, Endpoint::Chat) => Some((path, chat_openai_to_ollama(request, model, streamed))),
        // Both embed APIs take `{model, input}` with a string or a list of strings.
        (_, Endpoint::Embed) => Some((path, json!({"model": model, "input": request["input"]}))),
        (ProviderApi::Ollama, Endpoint::Generate) => Some((path, generate_to_openai_chat(request, model, streamed))),
        (ProviderApi::Openai, Endpoint::Generate) => None, // No OpenAI route serves /api/generate.
    }
}

fn chat_ollama_to_openai(request: &Value, model: Value, streamed: bool) -> Value {
    let messages: Vec<Value> = request["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .map(|message| {
                    let mut message = message.clone();
                    // OpenAI takes images as content parts; dropped rather than misplaced.
                    if let Some(map) = message.as_object_mut() {
                        map.remove("images");
                    }
                    message
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = json!({"model": model, "messages": messages, "stream": streamed});
    if streamed {
        // OpenAI servers send a stream's token counts only when asked (for metering).
        out["stream_options"] = json!({"include_usage": true});
    }
    let options = &request["options"];
    for name in ["temperature", "top_p", "seed", "stop"] {
        if let Some(value) = options.get(name) {
            out[name] = value.clone();
        }
    }
    if let Some(limit) = options.get("num_predict") {
        out["max_tokens"] = limit.clone();
    }
    if let Some(tools) = request.get("tools") {
        out["tools"] = tools.clone();
    }
    out
}

fn generate_to_openai_chat(request: &Value, model: Value, streamed: bool) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = request["system"].as_str() {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": request["prompt"].as_str().unwrap_or("")}));
    let mut as_chat = request.clone();
    as_chat["messages"] = Value::Array(messages);
    chat_ollama_to_openai(&as_chat, model, streamed)
}

fn chat_openai_to_ollama(request: &Value, model: Value, streamed: bool) -> Value {
    let messages: Vec<Value> = request["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .map(|message| {
                    let mut message = message.clone();
                    // OpenAI content may be a list of parts; Ollama wants the text.
                    if let Some(parts) = message["content"].as_array() {
                        let text: String = parts
                            .iter()
                            .filter_map(|part| part["text"].as_str())
                            .collect::<Vec<_>>()
                            .join("\n");
                        message["content"] = Value::String(text);
                    }
                    message
                })
                .collect()
        })
        .unwrap_or_default();
    let mut options = Map::new();
    for name in ["temperature", "top_p", "seed", "stop"] {
        if let Some(value) = request.get(name) {
            options.insert(name.to_string(), value.clone());
        }
    }
    if let Some(limit) = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
    {
        options.insert("num_predict".into(), limit.clone());
    }
    let mut out = json!({"model": model, "messages": messages, "stream": streamed});
    if !options.is_empty() {
        out["options"] = Value::Object(options);
    }
    if let Some(tools) = request.get("tools") {
        out["tools"] = tools.clone();
    }
    out
}

/// Sends one request; Err when it failed before any answer (refused, reset, no headers in time).
async fn send(
    bus: &Bus,
    upstream: &Upstream,
    path: &str,
    body: &Value,
    header_timeout: Duration,
) -> Result<hyper::Response<Incoming>, String> {
    let url = format!("{}{path}", upstream.url.trim_end_matches('/'));
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(header::USER_AGENT, "mirrorctl-bus")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = &upstream.api_key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("bad upstream request to {url}: {e}"))?;
    match tokio::time::timeout(header_timeout, bus.client.request(request)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(transport_reason(&error)),
        Err(_) => Err(format!(
            "no response headers within {}",
            humantime::format_duration(header_timeout)
        )),
    }
}

async fn read_whole(body: Incoming) -> Option<Bytes> {
    Some(
        Limited::new(body, MAX_KEPT_ANSWER_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes(),
    )
}

/// The agent's side of a relayed answer: chunks as they come from the relay task.
struct RelayBody {
    chunks: mpsc::Receiver<Result<Bytes, BusError>>,
}

impl hyper::body::Body for RelayBody {
    type Data = Bytes;
    type Error = BusError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BusError>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}

/// Answers the agent with `answer` (2xx or 4xx; `first`: the body's first data, already read),
/// relayed by a task so chunks reach the agent as they arrive; meters the tokens once the answer
/// completed. An answer that sends nothing for `idle_timeout` is ended as broken.
#[allow(clippy::too_many_arguments)]
async fn relay(
    bus: &Arc<Bus>,
    agent: &str,
    api: ProviderApi,
    endpoint: Endpoint,
    upstream: &Upstream,
    streamed: bool,
    usage_asked: bool,
    idle_timeout: Duration,
    answer: hyper::Response<Incoming>,
    first: Option<Bytes>,
) -> Response {
    let status = answer.status();
    let route = route_header(upstream);
    if !status.is_success() {
        // A client error (unknown model, bad request): passed on in the agent's API shape.
        let body = tokio::time::timeout(idle_timeout, read_whole(answer.into_body()))
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut response = if api == upstream.api {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        } else {
            error_response(api, status, &upstream_error_message(&body))
        };
        response.headers_mut().insert("x-mirror-route", route);
        return response;
    }
    let content_type = if api == upstream.api {
        answer.headers().get(header::CONTENT_TYPE).cloned()
    } else {
        None
    }
    .unwrap_or_else(|| {
        HeaderValue::from_static(match (api, streamed) {
            (ProviderApi::Ollama, true) => "application/x-ndjson",
            (ProviderApi::Openai, true) => "text/event-stream",
            (_, false) => "application/json",
        })
    });
    let mut converter = Converter::new(
        api,
        upstream.api,
        endpoint,
        &upstream.model,
        streamed,
        usage_asked,
        bus.next_id.fetch_add(1, Ordering::Relaxed),
    );
    let (chunks, receiver) = mpsc::channel(RELAY_BUFFER_CHUNKS);
    let meter = bus.meter.clone();
    let metered = Metered {
        agent: agent.to_string(),
        provider: upstream.provider.clone(),
        model: upstream.model.clone(),
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let mut body = answer.into_body();
    tokio::spawn(async move {
        for piece in first.map(|data| converter.on_chunk(&data)).unwrap_or_default() {
            if chunks.send(Ok(piece)).await.is_err() {
                return;
            }
        }
        let broke = loop {
            let Ok(frame) = tokio::time::timeout(idle_timeout, body.frame()).await else {
                // Dropping the body below closes the upstream connection.
                break Some(format!(
                    "nothing from the model for {} (hung?)",
                    humantime::format_duration(idle_timeout)
                ));
            };
            match frame {
                None => break None,
                Some(Err(error)) => break Some(error.to_string()),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    for piece in converter.on_chunk(&data) {
                        if chunks.send(Ok(piece)).await.is_err() {
                            return; // The agent went away; dropping the body ends the upstream request.
                        }
                    }
                }
            }
        };
        drop(body);
        let ending = converter.on_end(broke.as_deref());
        let complete = ending.is_ok();
        for piece in ending.unwrap_or_else(|pieces| pieces) {
            if chunks.send(Ok(piece)).await.is_err() {
                return;
            }
        }
        if complete && !converter.errored {
            meter(Metered {
                prompt_tokens: converter.prompt_tokens,
                completion_tokens: converter.completion_tokens,
                ..metered
            });
        } else if !converter.streamed {
            // A non-streamed answer has no error event: break the agent's body instead.
            let why = broke.unwrap_or_else(|| "ended early".into());
            let _ = chunks.send(Err(BusError::UpstreamBroke(why))).await;
        }
    });
    let mut response = Response::new(Body::new(RelayBody { chunks: receiver }));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response.headers_mut().insert("x-mirror-route", route);
    response
}

/// The message of an upstream error answer in either API's shape.
fn upstream_error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    match error {
        Some(Value::String(message)) => message.clone(),
        Some(error) => error["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string()),
        None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Turns upstream chunks into what the agent receives, and counts tokens on the way.
struct Converter {
    client_api: ProviderApi,
    upstream_api: ProviderApi,
    endpoint: Endpoint,
    streamed: bool,
    /// The routed model, named in translated answers.
    model: String,
    /// Of translated OpenAI answers.
    id: String,
    created: u64,
    /// A stream's incomplete last line.
    pending_line: Vec<u8>,
    /// A non-streamed answer, for metering and translation.
    whole: Vec<u8>,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// The stream's final marker was seen (Ollama `done: true` or an error line, OpenAI `[DONE]`).
    finished: bool,
    /// Translated OpenAI streams name the role in their first chunk.
    sent_role: bool,
    /// The last finish_reason of an OpenAI stream, for the final Ollama line.
    finish_reason: Option<String>,
    /// The answer carried an error (an error line or event): nothing to meter.
    errored: bool,
    /// An OpenAI stream reached `[DONE]` without a finish_reason: the server ended the
    /// generation early (llama.cpp's server does when another request comes in).
    cut_short: bool,
    /// The bus asked an OpenAI stream for its usage (to meter it) and the agent did not: the
    /// usage event is kept from the agent.
    hide_usage: bool,
}

impl Converter {
    fn new(
        client_api: ProviderApi,
        upstream_api: ProviderApi,
        endpoint: Endpoint,
        model: &str,
        streamed: bool,
        usage_asked: bool,
        id: u64,
    ) -> Self {
        Converter {
            client_api,
            upstream_api,
            endpoint,
            streamed,
            model: model.to_string(),
            id: format!("chatcmpl-mirror-{id}"),
            created: unix_seconds(),
            pending_line: Vec::new(),
            whole: Vec::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            finished: false,
            sent_role: false,
            finish_reason: None,
            cut_short: false,
            hide_usage: client_api == ProviderApi::Openai
                && upstream_api == ProviderApi::Openai
                && streamed
                && !usage_asked,
            errored: false,
        }
    }

    fn translating(&self) -> bool {
        self.client_api != self.upstream_api
    }

    /// What to send the agent for one upstream chunk.
    fn on_chunk(&mut self, data: &Bytes) -> Vec<Bytes> {
        if !self.streamed {
            if self.whole.len() + data.len() <= MAX_KEPT_ANSWER_BYTES {
                self.whole.extend_from_slice(data);
            }
            // Same API: relayed as is; translated answers go out whole at the end.
            return if self.translating() {
                Vec::new()
            } else {
                vec![data.clone()]
            };
        }
        self.pending_line.extend_from_slice(data);
        let mut out = Vec::new();
        let mut passed = Vec::new();
        while let Some(end) = self.pending_line.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending_line.drain(..=end).collect();
            out.extend(self.on_line(&line));
            if self.hide_usage && !usage_only_event(&line) {
                passed.extend_from_slice(&line);
            }
        }
        if !self.translating() {
            // Passthrough streams go out as they came (lines were only read): byte for byte,
            // or line by line without the usage event the bus asked for and the agent did not.
            let data = if self.hide_usage {
                Bytes::from(passed)
            } else {
                data.clone()
            };
            // A stream cut short gets the error event before its `[DONE]`.
            if self.cut_short && !self.errored {
                self.errored = true;
                if let Some(at) = find(&data, b"data: [DONE]") {
                    return vec![data.slice(..at), self.error_event(CUT_SHORT), data.slice(at..)];
                }
            }
            return vec![data];
        }
        out
    }

    /// One complete line of a stream: counted, and translated when crossing APIs.
    fn on_line(&mut self, line: &[u8]) -> Vec<Bytes> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return Vec::new();
        }
        match self.upstream_api {
            ProviderApi::Ollama => {
                let Ok(chunk) = serde_json::from_str::<Value>(text) else {
                    return Vec::new();
                };
                if chunk.get("error").is_some() {
                    self.finished = true;
                    self.errored = true;
                    return vec![self.error_event(&upstream_error_message(text.as_bytes()))];
                }
                let done = chunk["done"].as_bool().unwrap_or(false);
                if done {
                    self.finished = true;
                    self.count_ollama(&chunk);
                }
                if !self.translating() {
                    return Vec::new();
                }
                // Ollama -> OpenAI SSE.
                let mut out = Vec::new();
                let content = chunk["message"]["content"].as_str().unwrap_or("");
                if !content.is_empty() || !self.sent_role {
                    out.push(self.openai_chunk(json!({"content": content}), Value::Null, None));
                }
                if done {
                    let reason = chunk["done_reason"].as_str().unwrap_or("stop").to_string();
                    let usage = self.openai_usage();
                    out.push(self.openai_chunk(json!({}), Value::String(reason), Some(usage)));
                    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                out
            }
            ProviderApi::Openai => {
                let Some(data) = text.strip_prefix("data:") else {
                    return Vec::new(); // SSE comments, `event:` lines.
                };
                let data = data.trim();
                if data == "[DONE]" {
                    self.finished = true;
                    self.cut_short = self.finish_reason.is_none();
                    if self.translating() {
                        if self.cut_short {
                            self.errored = true;
                            return vec![self.error_event(CUT_SHORT)];
                        }
                        return vec![self.ollama_final_line()];
                    }
                    return Vec::new();
                }
                let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                    return Vec::new();
                };
                if let Some(error) = chunk.get("error") {
                    self.finished = true;
                    self.errored = true;
                    if self.translating() {
                        let message = error["message"].as_str().unwrap_or("upstream error");
                        return vec![self.error_event(message)];
                    }
                    return Vec::new();
                }
                if chunk["usage"].is_object() {
                    self.count_openai(&chunk["usage"]);
                }
                let choice = &chunk["choices"][0];
                if let Some(reason) = choice["finish_reason"].as_str() {
                    self.finish_reason = Some(reason.to_string());
                }
                if !self.translating() {
                    return Vec::new();
                }
                let content = choice["delta"]["content"].as_str().unwrap_or("");
                if content.is_empty() {
                    return Vec::new();
                }
                vec![ndjson(&self.ollama_answer(content, None))]
            }
        }
    }

    /// The end of the upstream answer (`broke`: why it broke). Ok: the last pieces of a complete
    /// answer; Err: the last pieces of an answer that did not complete.
    fn on_end(&mut self, broke: Option<&str>) -> Result<Vec<Bytes>, Vec<Bytes>> {
        if self.streamed {
            let mut out = Vec::new();
            let partial_line = !self.pending_line.is_empty();
            if partial_line {
                let rest = std::mem::take(&mut self.pending_line);
                let pieces = self.on_line(&rest);
                if self.translating() {
                    out = pieces;
                } else if self.hide_usage && !usage_only_event(&rest) {
                    out.push(Bytes::from(rest)); // held back until its line ended
                }
            }
            if self.finished {
                return Ok(out);
            }
            if partial_line && !self.translating() {
                // The cut line went out as is; the error event goes on a line of its own.
                // (A blank line also ends the cut SSE event, so the error is an event of its own.)
                out.push(Bytes::from_static(match self.client_api {
                    ProviderApi::Ollama => b"\n",
                    ProviderApi::Openai => b"\n\n",
                }));
            }
            let why = broke.unwrap_or("the upstream closed the stream before its end");
            out.push(self.error_event(&format!("the model stream broke midway: {why}")));
            return Err(out);
        }
        if broke.is_some() {
            return Err(Vec::new());
        }
        let Ok(answer) = serde_json::from_slice::<Value>(&self.whole) else {
            if self.translating() {
                return Err(Vec::new());
            }
            return Ok(Vec::new()); // Passed on already; nothing to count.
        };
        match self.upstream_api {
            ProviderApi::Ollama => self.count_ollama(&answer),
            ProviderApi::Openai => self.count_openai(&answer["usage"]),
        }
        if !self.translating() {
            return Ok(Vec::new());
        }
        Ok(vec![Bytes::from(self.translate_whole(&answer).to_string())])
    }

    fn translate_whole(&self, answer: &Value) -> Value {
        match (self.upstream_api, self.endpoint) {
            (ProviderApi::Openai, Endpoint::Embed) => json!({
                "model": self.model,
                "embeddings": answer["data"].as_array().map(|data| data.iter().map(|d| d["embedding"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
                "prompt_eval_count": self.prompt_tokens,
            }),
            (ProviderApi::Ollama, Endpoint::Embed) => json!({
                "object": "list",
                "model": self.model,
                "data": answer["embeddings"].as_array().map(|all| all.iter().enumerate().map(|(index, e)| json!({"object": "embedding", "index": index, "embedding": e})).collect::<Vec<_>>()).unwrap_or_default(),
                "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens},
            }),
            (ProviderApi::Openai, _) => {
                let choice = &answer["choices"][0];
                self.ollama_answer(
                    choice["message"]["content"].as_str().unwrap_or(""),
                    Some(choice["finish_reason"].as_str().unwrap_or("stop")),
                )
            }
            (ProviderApi::Ollama, _) => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": answer["message"]["content"].as_str().unwrap_or("")},
                    "finish_reason": answer["done_reason"].as_str().unwrap_or("stop"),
                }],
                "usage": self.openai_usage(),
            }),
        }
    }

    fn count_ollama(&mut self, chunk: &Value) {
        self.prompt_tokens = chunk["prompt_eval_count"].as_u64().unwrap_or(0);
        self.completion_tokens = chunk["eval_count"].as_u64().unwrap_or(0);
    }

    fn count_openai(&mut self, usage: &Value) {
        self.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
        self.completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    }

    fn openai_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        })
    }

    fn openai_chunk(&mut self, mut delta: Value, finish_reason: Value, usage: Option<Value>) -> Bytes {
        if !self.sent_role {
            delta["role"] = json!("assistant");
            self.sent_role = true;
        }
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        sse(&chunk)
    }

    fn ollama_final_line(&self) -> Bytes {
        let reason = self.finish_reason.clone();
        ndjson(&self.ollama_answer("", Some(reason.as_deref().unwrap_or("stop"))))
    }

    /// An Ollama chat or generate answer (or stream chunk); `done_reason` makes it the last one.
    fn ollama_answer(&self, content: &str, done_reason: Option<&str>) -> Value {
        let mut answer = json!({"model": self.model, "created_at": now_rfc3339()});
        if self.endpoint == Endpoint::Generate {
            answer["response"] = json!(content);
        } else {
            answer["message"] = json!({"role": "assistant", "content": content});
        }
        answer["done"] = json!(done_reason.is_some());
        if let Some(reason) = done_reason {
            answer["done_reason"] = json!(reason);
            answer["prompt_eval_count"] = json!(self.prompt_tokens);
            answer["eval_count"] = json!(self.completion_tokens);
        }
        answer
    }

    /// A stream's error event in the agent's API.
    fn error_event(&self, message: &str) -> Bytes {
        match self.client_api {
            ProviderApi::Ollama => ndjson(&json!({ "error": message })),
            ProviderApi::Openai => sse(&json!({
                "error": {"message": message, "type": "api_error", "code": Value::Null}
            })),
        }
    }
}

const CUT_SHORT: &str =
    "the model stream ended without finishing (no finish_reason before [DONE]): the answer is cut short";

/// An OpenAI stream's usage event: `data: {"choices": [], "usage": {...}}`.
fn usage_only_event(line: &[u8]) -> bool {
    let Some(data) = line.strip_prefix(b"data:") else {
        return false;
    };
    serde_json::from_slice::<Value>(data.trim_ascii())
        .is_ok_and(|chunk| chunk["usage"].is_object() && chunk["choices"].as_array().is_some_and(Vec::is_empty))
}

/// Whether an OpenAI chat request asks for its stream's usage.
fn asks_for_usage(request: &Value) -> bool {
    request["stream_options"]["include_usage"] == json!(true)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn ndjson(value: &Value) -> Bytes {
    let mut line = value.to_string();
    line.push('\n');
    Bytes::from(line)
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use axum::extract::State;
    use axum::Json;

    use super::*;

    const TOKEN: &str = "tok-coder";
    /// The pause between an upstream stream's first chunk and the rest.
    const PAUSE: Duration = Duration::from_millis(300);

    type Seen = Arc<Mutex<Vec<Value>>>;

    /// A fake upstream: what it was sent, and whether its streams break after the first chunk,
    /// its answers stall after the first chunk (never ending), it sends its headers and then
    /// breaks or stalls before any data, or it never answers at all.
    #[derive(Clone, Default)]
    struct Fake {
        seen: Seen,
        break_streams: bool,
        stall: bool,
        break_before_data: bool,
        stall_before_data: bool,
        hang: bool,
        /// OpenAI streams end with `[DONE]` without a finish_reason (llama.cpp's server, when
        /// another request interrupts the generation).
        cut_short: bool,
    }

    /// A body that sends `first` and then nothing, without ending (a provider hung midway).
    fn stalled(first: String, content_type: &'static str) -> Response {
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
    fn chunked(parts: Vec<Option<String>>, content_type: &'static str, break_at_end: bool) -> Response {
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
    async fn fake_upstream(api: ProviderApi, fake: Fake) -> String {
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

    fn upstream(provider: &str, api: ProviderApi, url: &str, model: &str) -> Upstream {
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
    async fn start_bus(candidates: Vec<Upstream>) -> (SocketAddr, Arc<Mutex<Vec<Metered>>>) {
        start_bus_timed(candidates, Duration::from_secs(2)).await
    }

    async fn start_bus_timed(
        candidates: Vec<Upstream>,
        header_timeout: Duration,
    ) -> (SocketAddr, Arc<Mutex<Vec<Metered>>>) {
        let state = BusState::default();
        state.set_header_timeout(header_timeout);
        start_bus_with(state, candidates).await
    }

    /// A bus on `state` (its timeouts set by the caller) where agent `coder` routes to
    /// `candidates`.
    async fn start_bus_with(state: BusState, candidates: Vec<Upstream>) -> (SocketAddr, Arc<Mutex<Vec<Metered>>>) {
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
    async fn call(bus: SocketAddr, path: &str, token: Option<&str>, body: Option<Value>) -> hyper::Response<Incoming> {
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
    async fn chunks_of(answer: hyper::Response<Incoming>) -> (Vec<(Instant, String)>, Option<String>) {
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

    async fn text_of(answer: hyper::Response<Incoming>) -> String {
        let (chunks, broke) = chunks_of(answer).await;
        assert_eq!(broke, None);
        chunks.into_iter().map(|(_, text)| text).collect()
    }

    fn route_of(answer: &hyper::Response<Incoming>) -> &str {
        answer.headers()["x-mirror-route"].to_str().unwrap()
    }

    fn ndjson_lines(text: &str) -> Vec<Value> {
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The JSON of each `data:` line of an SSE stream, `[DONE]` as a string.
    fn sse_events(text: &str) -> Vec<Value> {
        text.lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| serde_json::from_str(data).unwrap_or_else(|_| json!(data)))
            .collect()
    }

    fn chat(stream: bool) -> Value {
        json!({"model": "whatever", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    }

    #[test]
    fn numbers_reach_the_provider_with_the_value_the_agent_sent() {
        // Found by fuzzing (fuzz/regressions/bus_request/request-number-round-trip): without
        // serde_json's `float_roundtrip`, 222...220 (39 digits) was parsed one ULP off, so the
        // provider got 2.2222222222222218e38 instead of 2.222222222222222e38. Test builds had
        // the feature all along (a dev-dependency, jsonschema, turns it on), release builds did
        // not: the fuzz target, built without dev-dependencies, is what catches a regression.
        let body = br#"{"model":"m","messages":[],"options":{"seed":222222222222222222222222222222222222220,"temperature":0.30000000000000004}}"#;
        let Some((_, Some((_, upstream)))) =
            translate_request(ProviderApi::Ollama, Endpoint::Chat, ProviderApi::Ollama, "m", body)
        else {
            panic!("a JSON object is forwarded");
        };
        assert_eq!(upstream["options"]["seed"].as_f64(), Some(2.222222222222222e38));
        assert_eq!(upstream["options"]["temperature"].as_f64(), Some(0.30000000000000004));
        let sent: Value = serde_json::from_str(&upstream.to_string()).unwrap();
        assert_eq!(sent, upstream, "what goes out reads back the same");
    }

    #[test]
    fn usage_counts_near_u64_max_do_not_overflow_the_total() {
        // Found by fuzzing (fuzz/regressions/bus_request/usage-total-overflow-*).
        let line =
            br#"{"message":{"content":"hi"},"done":true,"prompt_eval_count":18446744073709551615,"eval_count":1}"#;
        let outcome = translate_answer(
            ProviderApi::Openai,
            Endpoint::Chat,
            ProviderApi::Ollama,
            "m",
            false,
            false,
            &[line],
            None,
        );
        let whole: Value = serde_json::from_slice(&outcome.ending.unwrap()[0]).unwrap();
        assert_eq!(whole["usage"]["total_tokens"], u64::MAX);
        assert_eq!(outcome.metered, Some((u64::MAX, 1)));
    }

    #[test]
    fn agents_are_found_by_the_digest_of_their_token_only() {
        let state = BusState::default();
        state.set_token("coder", "tok-1");
        state.set_token("writer", "tok-2");
        assert_eq!(state.agent_of("tok-1").as_deref(), Some("coder"));
        assert_eq!(state.agent_of("tok-2").as_deref(), Some("writer"));
        for guess in ["", "tok-", "tok-12", "tok-1 ", "TOK-1"] {
            assert_eq!(state.agent_of(guess), None, "{guess:?}");
        }
        {
            // The table keeps digests, not the tokens.
            let tables = state.shared.read().unwrap();
            let mut keys: Vec<&TokenDigest> = tables.agents_by_token.keys().collect();
            keys.sort();
            let mut expected = [token_digest("tok-1"), token_digest("tok-2")];
            expected.sort();
            assert_eq!(keys, expected.iter().collect::<Vec<_>>());
        }
        // A new token replaces the old one; a removed agent has none.
        state.set_token("coder", "tok-3");
        assert_eq!(state.agent_of("tok-1"), None);
        assert_eq!(state.agent_of("tok-3").as_deref(), Some("coder"));
        state.remove_agent("writer");
        assert_eq!(state.agent_of("tok-2"), None);
    }

    #[tokio::test]
    async fn callers_without_a_known_token_get_401_in_the_api_shape() {
        let (bus, _) = start_bus(vec![]).await;
        for token in [None, Some("wrong")] {
            let answer = call(bus, "/api/chat", token, Some(chat(false))).await;
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
            let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
            assert!(body["error"].as_str().unwrap().contains("bearer token"), "{body}");

            let answer = call(bus, "/v1/chat/completions", token, Some(chat(false))).await;
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
            let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
            assert_eq!(body["error"]["type"], json!("authentication_error"), "{body}");

            let answer = call(bus, "/v1/models", token, None).await;
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[tokio::test]
    async fn the_routed_model_replaces_the_requested_one_and_is_metered() {
        let fake = Fake::default();
        let url = fake_upstream(ProviderApi::Ollama, fake.clone()).await;
        let (bus, metered) = start_bus(vec![upstream("local", ProviderApi::Ollama, &url, "llama3.2:3b")]).await;
        let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(false))).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(route_of(&answer), "local/llama3.2:3b");
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        assert_eq!(body["message"]["content"], json!("Hello"));
        assert_eq!(fake.seen.lock().unwrap()[0]["model"], json!("llama3.2:3b"));
        assert_eq!(
            metered.lock().unwrap().as_slice(),
            [Metered {
                agent: "coder".into(),
                provider: "local".into(),
                model: "llama3.2:3b".into(),
                prompt_tokens: 7,
                completion_tokens: 2,
            }]
        );
    }

    #[tokio::test]
    async fn an_ollama_stream_reaches_the_agent_chunk_by_chunk() {
        let fake = Fake::default();
        let url = fake_upstream(ProviderApi::Ollama, fake.clone()).await;
        let (bus, metered) = start_bus(vec![upstream("local", ProviderApi::Ollama, &url, "llama3.2:3b")]).await;
        let started = Instant::now();
        let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(true))).await;
        assert_eq!(route_of(&answer), "local/llama3.2:3b");
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/x-ndjson");
        let (chunks, broke) = chunks_of(answer).await;
        assert_eq!(broke, None);
        let (first_at, first) = &chunks[0];
        let (last_at, _) = chunks.last().unwrap();
        // The first chunk came before the upstream's pause ended, the last one after it.
        assert!(first.contains("Hel"), "{first}");
        assert!(*first_at - started < PAUSE, "{:?}", *first_at - started);
        assert!(*last_at - started >= PAUSE);
        let text: String = chunks.iter().map(|(_, t)| t.as_str()).collect();
        let lines = ndjson_lines(&text);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["done"], json!(true));
        let metered = metered.lock().unwrap();
        assert_eq!((metered[0].prompt_tokens, metered[0].completion_tokens), (7, 2));
    }

    #[tokio::test]
    async fn an_openai_stream_passes_through_and_its_usage_is_metered() {
        let fake = Fake::default();
        let url = fake_upstream(ProviderApi::Openai, fake.clone()).await;
        let (bus, metered) = start_bus(vec![upstream("cloud", ProviderApi::Openai, &url, "gpt-x")]).await;
        let started = Instant::now();
        let answer = call(bus, "/v1/chat/completions", Some(TOKEN), Some(chat(true))).await;
        assert_eq!(route_of(&answer), "cloud/gpt-x");
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "text/event-stream");
        let (chunks, broke) = chunks_of(answer).await;
        assert_eq!(broke, None);
        assert!(chunks[0].0 - started < PAUSE);
        let text: String = chunks.iter().map(|(_, t)| t.as_str()).collect();
        let events = sse_events(&text);
        assert_eq!(events.len(), 4);
        assert_eq!(events[0]["choices"][0]["delta"]["content"], json!("Hel"));
        assert_eq!(events[3], json!("[DONE]"));
        assert_eq!(fake.seen.lock().unwrap()[0]["model"], json!("gpt-x"));
        // The bus asks for the usage (to meter it) and keeps the usage event from the agent,
        // who did not ask for it.
        assert_eq!(
            fake.seen.lock().unwrap()[0]["stream_options"],
            json!({"include_usage": true})
        );
        assert!(!text.contains("\"usage\""), "{text}");
        let metered = metered.lock().unwrap();
        assert_eq!((metered[0].prompt_tokens, metered[0].completion_tokens), (5, 3));
    }

    #[tokio::test]
    async fn ollama_chat_is_translated_to_an_openai_route() {
        let fake = Fake::default();
        let url = fake_upstream(ProviderApi::Openai, fake.clone()).await;
        let (bus, metered) = start_bus(vec![upstream("cloud", ProviderApi::Openai, &url, "gpt-x")]).await;

        let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(false))).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(route_of(&answer), "cloud/gpt-x");
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        assert_eq!(body["message"], json!({"role": "assistant", "content": "Hello"}));
        assert_eq!(body["done"], json!(true));
        assert_eq!(
            (body["prompt_eval_count"].clone(), body["eval_count"].clone()),
            (json!(5), json!(3))
        );
        let sent = fake.seen.lock().unwrap()[0].clone();
        assert_eq!(sent["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(sent["stream"], json!(false));

        let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(true))).await;
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/x-ndjson");
        let lines = ndjson_lines(&text_of(answer).await);
        let content: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
        assert_eq!(content, "Hello");
        let last = lines.last().unwrap();
        assert_eq!(last["done"], json!(true));
        assert_eq!(
            (last["prompt_eval_count"].clone(), last["eval_count"].clone()),
            (json!(5), json!(3))
        );
        assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == json!(false)));
        assert_eq!(metered.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_stream_cut_short_before_its_finish_reason_ends_with_an_error_event() {
        let fake = Fake {
            cut_short: true,
            ..Fake::default()
        };
        let url = fake_upstream(ProviderApi::Openai, fake).await;
        let (bus, metered) = start_bus(vec![upstream("local", ProviderApi::Openai, &url, "smol")]).await;

        // Translated for an Ollama agent: no `done: true` that would read as complete.
        let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(true))).await;
        let lines = ndjson_lines(&text_of(answer).await);
        let last = lines.last().unwrap();
        assert!(last["error"].as_str().unwrap().contains("cut short"), "{lines:?}");
        assert!(lines.iter().all(|l| l["done"] != json!(true)), "{lines:?}");

        // Passed through to an OpenAI agent: the error event comes before `[DONE]`.
        let mut request = chat(true);
        request["model"] = json!("anything");
        let answer = call(bus, "/v1/chat/completions", Some(TOKEN), Some(request)).await;
        let text = text_of(answer).await;
        let error_at = text.find("cut short").expect("an error event");
        assert!(error_at < text.rfind("data: [DONE]").unwrap(), "{text}");
        assert!(
            metered.lock().unwrap().is_empty(),
            "a cut answer is not metered as complete"
        );
    }

    #[tokio::test]
    async fn openai_chat_is_translated_to_an_ollama_route() {
        let fake = Fake::default();
        let url = fake_upstream(ProviderApi::Ollama, fake.clone()).await;
        let (bus, metered) = start_bus(vec![upstream("local", ProviderApi::Ollama, &url, "llama3.2:3b")]).await;

        let mut request = chat(false);
        request["max_tokens"] = json!(12);
        let answer = call(bus, "/v1/chat/completions", Some(TOKEN), Some(request)).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        assert_eq!(body["object"], json!("chat.completion"));
        assert_eq!(body["choices"][0]["message"]["content"], json!("Hello"));
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9})
        );
        let sent = fake.seen.lock().unwrap()[0].clone();
        // Ollama streams by default: `stream: false` must be explicit.
        assert_eq!(sent["stream"], json!(false));
        assert_eq!(sent["options"]["num_predict"], json!(12));

        let answer = call(bus, "/v1/chat/completions", Some(TOKEN), Some(chat(true))).await;
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "text/event-stream");
        let events = sse_events(&text_of(answer).await);
        assert_eq!(events.last().unwrap(), &json!("[DONE]"));
        let content: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Hello");
        assert_eq!(events[0]["choices"][0]["delta"]["role"], json!("assistant"));
        let last = &events[events.len() - 2];
        assert_eq!(last["choices"][0]["finish_reason"], json!("stop"));
        assert_eq!(last["usage"]["completion_tokens"], json!(2));
        let metered = metered.lock().unwrap();
        assert_eq!((metered[1].prompt_tokens, metered[1].completion_tokens), (7, 2));
    }

    #[tokio::test]
    async fn a_refused_candidate_is_skipped_before_the_first_byte() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let url = fake_upstream(ProviderApi::Openai, Fake::default()).await;
        let (bus, _) = start_bus(vec![
            upstream("local", ProviderApi::Ollama, &refused, "llama3.2:3b"),
            upstream("cloud", ProviderApi::Openai, &url, "gpt-x"),
        ])
        .await;
        let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(false))).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(route_of(&answer), "cloud/gpt-x");
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        assert_eq!(body["message"]["content"], json!("Hello"));
    }

    #[tokio::test]
    async fn when_every_candidate_fails_the_agent_gets_502_with_the_reasons() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let (bus, _) = start_bus(vec![upstream("local", ProviderApi::Ollama, &refused, "m")]).await;
        let answer = call(bus, "/v1/chat/completions", Some(TOKEN), Some(chat(false))).await;
        assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("local: connection refused"), "{message}");
    }

    #[tokio::test]
    async fn a_stream_that_breaks_midway_ends_with_an_error_event() {
        let fake = Fake {
            break_streams: true,
            ..Fake::default()
        };
        let ollama = fake_upstream(ProviderApi::Ollama, fake.clone()).await;
        let openai = fake_upstream(ProviderApi::Openai, fake).await;
        let (ollama_bus, metered) = start_bus(vec![upstream("local", ProviderApi::Ollama, &ollama, "m")]).await;
        let (openai_bus, _) = start_bus(vec![upstream("cloud", ProviderApi::Openai, &openai, "m")]).await;

        let answer = call(ollama_bus, "/api/chat", Some(TOKEN), Some(chat(true))).await;
        let lines = ndjson_lines(&text_of(answer).await);
        assert_eq!(lines[0]["message"]["content"], json!("Hel"));
        let error = lines.last().unwrap()["error"].as_str().unwrap();
        assert!(error.starts_with("the model stream broke midway"), "{error}");
        assert!(metered.lock().unwrap().is_empty());

        let answer = call(openai_bus, "/v1/chat/completions", Some(TOKEN), Some(chat(true))).await;
        let events = sse_events(&text_of(answer).await);
        let error = events.last().unwrap()["error"]["message"].as_str().unwrap();
        assert!(error.starts_with("the model stream broke midway"), "{error}");

        // Translated: an Ollama agent on an OpenAI route gets an Ollama error line.
        let (crossing_bus, _) = start_bus(vec![upstream("cloud", ProviderApi::Openai, &openai, "m")]).await;
        let answer = call(crossing_bus, "/api/chat", Some(TOKEN), Some(chat(true))).await;
        let lines = ndjson_lines(&text_of(answer).await);
        assert!(lines.last().unwrap()["error"].is_string(), "{lines:?}");
    }

    #[tokio::test]
    async fn a_stream_that_stalls_midway_ends_with_the_error_event_after_the_idle_timeout() {
        const IDLE: Duration = Duration::from_millis(300);
        let fake = Fake {
            stall: true,
            ..Fake::default()
        };
        let ollama = fake_upstream(ProviderApi::Ollama, fake.clone()).await;
        let openai = fake_upstream(ProviderApi::Openai, fake).await;
        let bus_on = |url: &str, api: ProviderApi| {
            let state = BusState::default();
            state.set_stream_idle_timeout(IDLE);
            start_bus_with(state, vec![upstream("stuck", api, url, "m")])
        };
        let (ollama_bus, metered) = bus_on(&ollama, ProviderApi::Ollama).await;
        let (openai_bus, _) = bus_on(&openai, ProviderApi::Openai).await;

        let started = Instant::now();
        let answer = call(ollama_bus, "/api/chat", Some(TOKEN), Some(chat(true))).await;
        let lines = ndjson_lines(&text_of(answer).await);
        let took = started.elapsed();
        assert_eq!(lines[0]["message"]["content"], json!("Hel"));
        let error = lines.last().unwrap()["error"].as_str().unwrap();
        assert!(
            error.starts_with("the model stream broke midway: nothing from the model for 300ms"),
            "{error}"
        );
        assert!(took >= IDLE && took < IDLE * 10, "{took:?}");

        let answer = call(openai_bus, "/v1/chat/completions", Some(TOKEN), Some(chat(true))).await;
        let events = sse_events(&text_of(answer).await);
        assert_eq!(events[0]["choices"][0]["delta"]["content"], json!("Hel"));
        let error = events.last().unwrap()["error"]["message"].as_str().unwrap();
        assert!(error.starts_with("the model stream broke midway"), "{error}");

        // Across APIs: an Ollama agent on an OpenAI route gets an Ollama error line.
        let answer = call(openai_bus, "/api/chat", Some(TOKEN), Some(chat(true))).await;
        let lines = ndjson_lines(&text_of(answer).await);
        let error = lines.last().unwrap()["error"].as_str().unwrap();
        assert!(error.starts_with("the model stream broke midway"), "{error}");

        // Not streamed: the agent's body breaks instead of hanging.
        let answer = call(ollama_bus, "/api/chat", Some(TOKEN), Some(chat(false))).await;
        let (_, broke) = chunks_of(answer).await;
        assert!(broke.is_some(), "a stalled non-streamed answer breaks the agent's body");
        assert!(metered.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn headers_without_data_are_not_an_answer_the_next_candidate_is_tried() {
        let healthy = fake_upstream(ProviderApi::Openai, Fake::default()).await;
        let healthy = upstream("cloud", ProviderApi::Openai, &healthy, "gpt-x");
        for fake in [
            Fake {
                break_before_data: true,
                ..Fake::default()
            },
            Fake {
                stall_before_data: true,
                ..Fake::default()
            },
        ] {
            let url = fake_upstream(ProviderApi::Ollama, fake).await;
            let (bus, metered) = start_bus_timed(
                vec![upstream("local", ProviderApi::Ollama, &url, "m"), healthy.clone()],
                Duration::from_millis(300),
            )
            .await;
            let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(true))).await;
            assert_eq!(route_of(&answer), "cloud/gpt-x");
            let lines = ndjson_lines(&text_of(answer).await);
            let content: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
            assert_eq!(content, "Hello", "{lines:?}");
            assert!(lines.iter().all(|l| l.get("error").is_none()), "{lines:?}");

            let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(false))).await;
            assert_eq!(route_of(&answer), "cloud/gpt-x");
            let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
            assert_eq!(body["message"]["content"], json!("Hello"));
            assert_eq!(metered.lock().unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn a_request_waiting_on_a_provider_that_fails_over_moves_on_at_once() {
        let hung = fake_upstream(
            ProviderApi::Ollama,
            Fake {
                hang: true,
                ..Fake::default()
            },
        )
        .await;
        let healthy = fake_upstream(ProviderApi::Openai, Fake::default()).await;
        let (hung, healthy) = (
            upstream("local", ProviderApi::Ollama, &hung, "llama3.2:3b"),
            upstream("cloud", ProviderApi::Openai, &healthy, "gpt-x"),
        );
        // The default header timeout (30 s): only the route change can end the wait early.
        let state = BusState::default();
        let (bus, metered) = start_bus_with(state.clone(), vec![hung.clone(), healthy.clone()]).await;
        let started = Instant::now();
        let pending = tokio::spawn(call(bus, "/api/chat", Some(TOKEN), Some(chat(false))));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A change that keeps the hung provider routed does not end the wait.
        state.set_routes("coder", vec![hung.clone(), healthy.clone()]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "still waiting on the current route");
        // The daemon fails the agent over: the hung provider is no longer a candidate.
        state.set_routes("coder", vec![healthy.clone()]);
        let answer = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("the request moved on without waiting out the header timeout")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(route_of(&answer), "cloud/gpt-x");
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        assert_eq!(body["message"]["content"], json!("Hello"));
        assert_eq!(metered.lock().unwrap().len(), 1);

        // The failover's new route was not a candidate when the request came: it is tried too.
        state.set_routes("coder", vec![hung]);
        let pending = tokio::spawn(call(bus, "/v1/chat/completions", Some(TOKEN), Some(chat(false))));
        tokio::time::sleep(Duration::from_millis(300)).await;
        state.set_routes("coder", vec![healthy]);
        let answer = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("the request moved on to the new route")
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(route_of(&answer), "cloud/gpt-x");
    }

    #[tokio::test]
    async fn model_lists_name_the_routed_model() {
        let (bus, _) = start_bus(vec![
            upstream("local", ProviderApi::Ollama, "http://127.0.0.1:1", "llama3.2:3b"),
            upstream("cloud", ProviderApi::Openai, "http://127.0.0.1:1/v1", "gpt-x"),
        ])
        .await;
        let answer = call(bus, "/api/tags", Some(TOKEN), None).await;
        assert_eq!(route_of(&answer), "local/llama3.2:3b");
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        let names: Vec<&str> = body["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["llama3.2:3b"]);

        let answer = call(bus, "/v1/models", Some(TOKEN), None).await;
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        assert_eq!(body["object"], json!("list"));
        assert_eq!(
            body["data"],
            json!([{"id": "llama3.2:3b", "object": "model", "created": 0, "owned_by": "local"}])
        );
    }

    /// A `scripts/fake-llm` process, killed when dropped.
    struct FakeLlm {
        /// Base URL of its Ollama API; its OpenAI API is under `/v1`.
        url: String,
        _process: tokio::process::Child,
        /// Kept open so the process never writes to a closed pipe.
        _stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
    }

    async fn fake_llm(name: &str, fault: &str) -> FakeLlm {
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

    const FAKE_MODEL: &str = "llama3.2:1b";

    #[tokio::test]
    async fn a_503_or_a_hang_before_the_headers_moves_the_request_on() {
        let (busy, hung, healthy) = tokio::join!(
            fake_llm("A", "error-503"),
            fake_llm("B", "hang-generate"),
            fake_llm("C", "none")
        );
        let (bus, metered) = start_bus_timed(
            vec![
                upstream("A", ProviderApi::Ollama, &busy.url, FAKE_MODEL),
                upstream("B", ProviderApi::Openai, &format!("{}/v1", hung.url), FAKE_MODEL),
                upstream("C", ProviderApi::Ollama, &healthy.url, FAKE_MODEL),
            ],
            Duration::from_millis(300),
        )
        .await;
        let answer = call(bus, "/api/chat", Some(TOKEN), Some(chat(false))).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(route_of(&answer), "C/llama3.2:1b");
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        let content = body["message"]["content"].as_str().unwrap();
        assert!(content.starts_with("[C]"), "{content}");

        let answer = call(bus, "/v1/chat/completions", Some(TOKEN), Some(chat(true))).await;
        assert_eq!(route_of(&answer), "C/llama3.2:1b");
        let events = sse_events(&text_of(answer).await);
        assert_eq!(events.last().unwrap(), &json!("[DONE]"));
        let metered = metered.lock().unwrap();
        assert_eq!(metered.len(), 2);
        assert!(
            metered.iter().all(|m| m.provider == "C" && m.completion_tokens > 0),
            "{metered:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_cut_by_a_crashing_provider_ends_with_an_error_event() {
        let breaking = fake_llm("D", "break-stream").await;
        let (ollama_bus, metered) =
            start_bus(vec![upstream("D", ProviderApi::Ollama, &breaking.url, FAKE_MODEL)]).await;
        let openai_url = format!("{}/v1", breaking.url);
        let (openai_bus, _) = start_bus(vec![upstream("D", ProviderApi::Openai, &openai_url, FAKE_MODEL)]).await;

        let lines = ndjson_lines(&text_of(call(ollama_bus, "/api/chat", Some(TOKEN), Some(chat(true))).await).await);
        assert!(lines[0]["message"]["content"].is_string(), "{lines:?}");
        assert!(lines.last().unwrap()["error"].is_string(), "{lines:?}");

        let answer = call(openai_bus, "/v1/chat/completions", Some(TOKEN), Some(chat(true))).await;
        let events = sse_events(&text_of(answer).await);
        assert!(events.last().unwrap()["error"]["message"].is_string(), "{events:?}");

        // Across APIs: an OpenAI agent on an Ollama route gets an OpenAI error event.
        let answer = call(ollama_bus, "/v1/chat/completions", Some(TOKEN), Some(chat(true))).await;
        let events = sse_events(&text_of(answer).await);
        assert!(events.last().unwrap()["error"]["message"].is_string(), "{events:?}");
        assert!(metered.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn embeddings_are_forwarded_within_and_across_apis() {
        let provider = fake_llm("E", "none").await;
        let openai_url = format!("{}/v1", provider.url);
        let (ollama_bus, _) = start_bus(vec![upstream("E", ProviderApi::Ollama, &provider.url, FAKE_MODEL)]).await;
        let (openai_bus, metered) = start_bus(vec![upstream("E", ProviderApi::Openai, &openai_url, FAKE_MODEL)]).await;
        let request = json!({"model": "whatever", "input": ["a", "b"]});
        for bus in [ollama_bus, openai_bus] {
            let answer = call(bus, "/api/embed", Some(TOKEN), Some(request.clone())).await;
            assert_eq!(answer.status(), StatusCode::OK);
            let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
            assert_eq!(body["embeddings"].as_array().unwrap().len(), 2, "{body}");
            assert_eq!(body["embeddings"][0].as_array().unwrap().len(), 8, "{body}");

            let answer = call(bus, "/v1/embeddings", Some(TOKEN), Some(request.clone())).await;
            assert_eq!(answer.status(), StatusCode::OK);
            let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
            assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
            assert_eq!(body["data"][1]["embedding"].as_array().unwrap().len(), 8, "{body}");
        }
        let metered = metered.lock().unwrap();
        assert_eq!(metered.len(), 2);
        assert!(
            metered.iter().all(|m| m.prompt_tokens > 0 && m.completion_tokens == 0),
            "{metered:?}"
        );
    }

    #[tokio::test]
    async fn generate_on_an_openai_route_is_answered_as_a_chat() {
        let provider = fake_llm("F", "none").await;
        let openai_url = format!("{}/v1", provider.url);
        let (bus, metered) = start_bus(vec![upstream("F", ProviderApi::Openai, &openai_url, FAKE_MODEL)]).await;
        let request = json!({"model": "whatever", "prompt": "hi", "stream": false});
        let answer = call(bus, "/api/generate", Some(TOKEN), Some(request)).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        assert!(body["response"].as_str().unwrap().starts_with("[F]"), "{body}");
        assert_eq!(body["done"], json!(true));

        let request = json!({"model": "whatever", "prompt": "hi"});
        let lines = ndjson_lines(&text_of(call(bus, "/api/generate", Some(TOKEN), Some(request)).await).await);
        let response: String = lines.iter().filter_map(|l| l["response"].as_str()).collect();
        assert!(response.starts_with("[F]"), "{lines:?}");
        assert_eq!(lines.last().unwrap()["done"], json!(true));
        assert_eq!(metered.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_upstream_client_error_reaches_the_agent_in_its_api_shape() {
        let provider = fake_llm("G", "none").await;
        let (bus, metered) = start_bus(vec![upstream("G", ProviderApi::Ollama, &provider.url, "missing:1b")]).await;
        let answer = call(bus, "/v1/chat/completions", Some(TOKEN), Some(chat(false))).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        assert_eq!(route_of(&answer), "G/missing:1b");
        let body: Value = serde_json::from_str(&text_of(answer).await).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("not found"), "{body}");
        assert!(metered.lock().unwrap().is_empty());
    }
}
