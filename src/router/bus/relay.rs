//! Relaying an upstream answer to the agent: a task copies it chunk by chunk (NDJSON or SSE
//! streams, or a whole answer) through the [`Converter`], ends a broken or stalled answer, and
//! meters the tokens of a completed one; an upstream client error is passed on in the agent's
//! API shape.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header;
use tokio::sync::mpsc;

use super::convert::Converter;
use super::forward::read_whole;
use super::meter::{Meter, Metered};
use super::translate::upstream_error_message;
use super::{error_response, route_header, Bus, BusError, Endpoint, Upstream};
use crate::router::http::json_bytes_response;
use crate::spec::provider::ProviderApi;

/// Chunks buffered between the upstream reader and the agent: small, so a slow agent slows
/// the upstream read instead of filling memory.
const RELAY_BUFFER_CHUNKS: usize = 16;

/// The agent's side of a relayed answer: chunks as they come from the relay task.
pub(super) struct RelayBody {
    pub chunks: mpsc::Receiver<Result<Bytes, BusError>>,
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
pub(super) async fn relay(
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
        let mut response = client_error(api, upstream, status, answer.into_body(), idle_timeout).await;
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
    let converter = Converter::new(
        api,
        upstream.api,
        endpoint,
        &upstream.model,
        streamed,
        usage_asked,
        bus.next_id.fetch_add(1, Ordering::Relaxed),
    );
    let (chunks, receiver) = mpsc::channel(RELAY_BUFFER_CHUNKS);
    let metered = Metered {
        agent: agent.to_string(),
        provider: upstream.provider.clone(),
        model: upstream.model.clone(),
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let copying = Copying {
        converter,
        chunks,
        idle_timeout,
        meter: bus.meter.clone(),
        metered,
    };
    tokio::spawn(copying.run(first, answer.into_body()));
    let mut response = Response::new(Body::new(RelayBody { chunks: receiver }));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response.headers_mut().insert("x-mirror-route", route);
    response
}

/// A client error (unknown model, bad request): passed on in the agent's API shape.
async fn client_error(
    api: ProviderApi,
    upstream: &Upstream,
    status: StatusCode,
    body: Incoming,
    idle_timeout: Duration,
) -> Response {
    let body = tokio::time::timeout(idle_timeout, read_whole(body))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    if api == upstream.api {
        json_bytes_response(status, body)
    } else {
        error_response(api, status, &upstream_error_message(&body))
    }
}

/// The relay task's side: copies the upstream body to the agent through the converter, then
/// meters a completed answer.
struct Copying {
    converter: Converter,
    chunks: mpsc::Sender<Result<Bytes, BusError>>,
    idle_timeout: Duration,
    meter: Meter,
    /// The agent, provider and model; the tokens are filled in at the end.
    metered: Metered,
}

impl Copying {
    async fn run(mut self, first: Option<Bytes>, mut body: Incoming) {
        let converter = &mut self.converter;
        let chunks = &self.chunks;
        for piece in first.map(|data| converter.on_chunk(&data)).unwrap_or_default() {
            if chunks.send(Ok(piece)).await.is_err() {
                return;
            }
        }
        let broke = loop {
            let Ok(frame) = tokio::time::timeout(self.idle_timeout, body.frame()).await else {
                // Dropping the body below closes the upstream connection.
                break Some(format!(
                    "nothing from the model for {} (hung?)",
                    humantime::format_duration(self.idle_timeout)
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
            (self.meter)(Metered {
                prompt_tokens: converter.usage.prompt,
                completion_tokens: converter.usage.completion,
                ..self.metered
            });
        } else if !converter.streamed {
            // A non-streamed answer has no error event: break the agent's body instead.
            let why = broke.unwrap_or_else(|| "ended early".into());
            let _ = chunks.send(Err(BusError::UpstreamBroke(why))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::{json, Value};

    use super::super::testing::*;
    use super::super::BusState;
    use super::*;

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
