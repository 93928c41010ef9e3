//! Forwarding an agent's request: its budget first, then its candidates in order, retrying the
//! next one while nothing has reached the agent yet (refused, reset, 5xx, no headers in time,
//! headers but no first byte, or the provider left the agent's routes while the bus waited).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{header, Method, Request};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::relay::relay;
use super::state::Timeouts;
use super::translate::{asks_for_usage, parse_request, upstream_request, wants_stream};
use super::{caller, error_response, unauthorized, Bus, BusState, Endpoint, Upstream, MAX_KEPT_ANSWER_BYTES};
use crate::policy::Admission;
use crate::router::http::{json_response, transport_reason};
use crate::spec::provider::ProviderApi;

/// Answers one agent request (`POST` of a chat, generation or embedding) from the first of its
/// candidates that answers.
pub(super) async fn forward(
    bus: Arc<Bus>,
    api: ProviderApi,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(agent) = caller(&bus, &headers) else {
        return unauthorized(api);
    };
    let Some(request) = parse_request(&body) else {
        return error_response(api, StatusCode::BAD_REQUEST, "the request body is not a JSON object");
    };
    let streamed = wants_stream(api, endpoint, &request);
    // The budget, before anything is forwarded (usage includes every answer so far).
    let local_only = match bus.state.governance.admission(&agent, crate::report::now_ms()) {
        Admission::Serve => false,
        Admission::ServeLocalOnly => true,
        Admission::Refuse429 { body, retry_after_secs } => return over_budget(api, &body, retry_after_secs),
    };
    // Subscribed before the candidates are read, so no route change in between goes unseen.
    let mut route_changes = bus.state.routes_changed.subscribe();
    let (candidates, timeouts) = bus.state.routes_of(&agent);
    let candidates = match usable(candidates, &agent, local_only) {
        Ok(candidates) => candidates,
        Err((status, message)) => return error_response(api, status, &message),
    };
    // A non-streamed generation sends nothing until it is done: a long answer from a model on a
    // CPU takes minutes. A hung provider is caught by its probes, and a request waiting on it
    // moves on when it leaves the agent's routes, so the wait can be long.
    let answer_within = if streamed || endpoint == Endpoint::Embed {
        timeouts.header
    } else {
        timeouts.answer
    };
    let forwarding = Forwarding {
        bus: &bus,
        agent: &agent,
        api,
        endpoint,
        request: &request,
        streamed,
        timeouts,
        answer_within,
    };
    forwarding.try_candidates(candidates, &mut route_changes).await
}

/// The 429 of an agent over its budget, in its API, with `Retry-After`.
fn over_budget(api: ProviderApi, body: &Value, retry_after_secs: u64) -> Response {
    let message = body["error"]["message"].as_str().unwrap_or("over budget").to_string();
    let mut response = match api {
        ProviderApi::Openai => json_response(StatusCode::TOO_MANY_REQUESTS, body),
        ProviderApi::Ollama => json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"error": message, "budget": body["error"]}),
        ),
    };
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// The candidates the request may use (only local ones when the agent's budget says so), or
/// the status and message of the answer when there is none.
fn usable(mut candidates: Vec<Upstream>, agent: &str, local_only: bool) -> Result<Vec<Upstream>, (StatusCode, String)> {
    if local_only {
        candidates.retain(|c| c.local);
        if candidates.is_empty() {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "agent `{agent}` is over its budget and limited to local models, and no local model is routable"
                ),
            ));
        }
    }
    if candidates.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy model route for agent `{agent}`"),
        ));
    }
    Ok(candidates)
}

/// One admitted agent request, as it is tried on its candidates.
struct Forwarding<'a> {
    bus: &'a Arc<Bus>,
    agent: &'a str,
    api: ProviderApi,
    endpoint: Endpoint,
    request: &'a Value,
    streamed: bool,
    timeouts: Timeouts,
    /// How long a candidate may take to answer: its headers, then its first byte.
    answer_within: Duration,
}

impl Forwarding<'_> {
    /// Tries `candidates` in order (and any that became routable meanwhile) until one answers;
    /// 502 with every candidate's reason when none did.
    async fn try_candidates(
        &self,
        mut candidates: Vec<Upstream>,
        route_changes: &mut watch::Receiver<u64>,
    ) -> Response {
        let mut failures = Vec::new();
        let mut tried = 0;
        loop {
            if tried > 0 {
                // A candidate that became routable while this request was tried (the agent failed
                // over while it waited) is tried too, each at most once.
                for fresh in self.bus.state.routes_of(self.agent).0 {
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
            match self.attempt(&upstream, route_changes).await {
                Ok(answer) => return answer,
                Err(failure) => failures.push(failure),
            }
        }
        error_response(
            self.api,
            StatusCode::BAD_GATEWAY,
            &format!(
                "no model provider answered for agent `{}`: {}",
                self.agent,
                failures.join("; ")
            ),
        )
    }

    /// One candidate: Ok with the agent's answer once something can reach the agent, Err with
    /// why this candidate did not answer (nothing has reached the agent: the next one is tried).
    async fn attempt(&self, upstream: &Upstream, route_changes: &mut watch::Receiver<u64>) -> Result<Response, String> {
        let Some((path, upstream_request)) =
            upstream_request(self.api, self.endpoint, upstream, self.request, self.streamed)
        else {
            return Err(format!(
                "{}: cannot translate this request to its API",
                upstream.provider
            ));
        };
        let sending = send(self.bus, upstream, path, &upstream_request, self.answer_within);
        let answer = self.while_routed(upstream, route_changes, sending).await?;
        let status = answer.status();
        if status.is_server_error() {
            // Nothing has reached the agent yet: another candidate may answer.
            // Bounded: a 5xx whose body stalls must not hold the request.
            let snippet = tokio::time::timeout(self.timeouts.header, read_whole(answer.into_body()))
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            return Err(format!(
                "{}: answered {}: {}",
                upstream.provider,
                status.as_u16(),
                String::from_utf8_lossy(&snippet[..snippet.len().min(200)]).trim()
            ));
        }
        if !status.is_success() {
            return Ok(self.relay(upstream, answer, None).await);
        }
        // The agent is answered only once the first byte of the body is here: a provider that
        // sent its headers and then died or hung (killed between its headers and its first
        // token) has still sent nothing that reached the agent, so the next candidate is tried.
        let (parts, mut body) = answer.into_parts();
        let waiting = first_data(&mut body, self.answer_within);
        let first = self.while_routed(upstream, route_changes, waiting).await?;
        let answer = hyper::Response::from_parts(parts, body);
        Ok(self.relay(upstream, answer, Some(first)).await)
    }

    /// [`until_unrouted`], a failure logged and named after the provider.
    async fn while_routed<T>(
        &self,
        upstream: &Upstream,
        route_changes: &mut watch::Receiver<u64>,
        waiting: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        until_unrouted(&self.bus.state, self.agent, upstream, route_changes, waiting)
            .await
            .map_err(|why| {
                let agent = self.agent;
                tracing::warn!(%agent, provider = %upstream.provider, %why, "model bus: trying the next candidate");
                format!("{}: {why}", upstream.provider)
            })
    }

    async fn relay(&self, upstream: &Upstream, answer: hyper::Response<Incoming>, first: Option<Bytes>) -> Response {
        relay(
            self.bus,
            self.agent,
            self.api,
            self.endpoint,
            upstream,
            self.streamed,
            asks_for_usage(self.request),
            self.timeouts.idle,
            answer,
            first,
        )
        .await
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

/// A whole answer body (at most [`MAX_KEPT_ANSWER_BYTES`]), or None when it broke or was larger.
pub(super) async fn read_whole(body: Incoming) -> Option<Bytes> {
    Some(
        Limited::new(body, MAX_KEPT_ANSWER_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::testing::*;
    use super::*;

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
}
