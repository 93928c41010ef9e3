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
//!
//! The parts, one job each: `state` (the tables the daemon sets: tokens, routes, memory scopes,
//! timeouts); this module (the server, its routes, the agent's bearer-token check, the model
//! lists); `forward` (admission, candidates, the retry loop before the first byte); `translate`
//! (requests and whole answers between the two APIs, pure); `relay` and `convert` (the answer's
//! copy to the agent, chunk by chunk); `meter` (token usage); `gate` (the tool gate's endpoints).

mod convert;
mod forward;
mod gate;
mod meter;
mod relay;
mod state;
#[cfg(test)]
mod testing;
mod translate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::json;
use tokio::task::JoinHandle;

pub use convert::{translate_answer, RelayOutcome};
pub use meter::{Meter, Metered};
pub use state::{BusState, DEFAULT_HEADER_TIMEOUT, DEFAULT_STREAM_IDLE_TIMEOUT, NON_STREAMED_ANSWER_TIMEOUT};
pub use translate::translate_request;

use crate::router::http::{bearer_token, json_response, openai_error, openai_error_type, HttpClient};
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

/// What an agent asked for.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Generate,
    Embed,
}

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
        client: crate::router::http::client(true),
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

/// What every request handler of the bus shares.
struct Bus {
    state: BusState,
    meter: Meter,
    client: HttpClient,
    /// For the ids of translated OpenAI answers.
    next_id: AtomicU64,
}

fn routes(bus: Arc<Bus>) -> Router {
    use ProviderApi::{Ollama, Openai};
    let call = |api: ProviderApi, endpoint: Endpoint| {
        post(
            move |State(bus): State<Arc<Bus>>, headers: HeaderMap, body: Bytes| async move {
                forward::forward(bus, api, endpoint, headers, body).await
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
        .route("/v1/gate", post(gate::gate_ask))
        .route("/v1/gate/{id}", get(gate::gate_poll))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(bus)
}

/// The agent behind `Authorization: Bearer <token>`.
fn caller(bus: &Bus, headers: &HeaderMap) -> Option<String> {
    bus.state.agent_of(bearer_token(headers)?)
}

/// An error in the shape of the API the agent called.
fn error_response(api: ProviderApi, status: StatusCode, message: &str) -> Response {
    match api {
        ProviderApi::Ollama => json_response(status, &json!({ "error": message })),
        ProviderApi::Openai => openai_error(status, openai_error_type(status), None, message),
    }
}

fn unauthorized(api: ProviderApi) -> Response {
    error_response(
        api,
        StatusCode::UNAUTHORIZED,
        "missing or unknown bearer token: the model bus serves only agents with a token",
    )
}

/// `x-mirror-route: provider/model`, on every answer that went to a route.
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::testing::*;
    use super::*;

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
}
