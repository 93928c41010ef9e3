//! Translation between the Ollama and OpenAI APIs, as pure functions: what the agent asked for
//! (a JSON object, streamed or not), the request sent to a route of either API, and a whole
//! answer or an answer chunk written in the agent's API.

use serde_json::{json, Map, Value};

use super::meter::Usage;
use super::{Endpoint, Upstream};
use crate::spec::provider::ProviderApi;

/// An agent's request body, when it is a JSON object (anything else is answered 400).
pub(super) fn parse_request(body: &[u8]) -> Option<Value> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(Value::Object(map)),
        _ => None,
    }
}

/// Whether the agent asked for a stream (Ollama streams unless told not to, OpenAI only when told).
pub(super) fn wants_stream(api: ProviderApi, endpoint: Endpoint, request: &Value) -> bool {
    if endpoint == Endpoint::Embed {
        return false;
    }
    match api {
        ProviderApi::Ollama => request.get("stream") != Some(&Value::Bool(false)),
        ProviderApi::Openai => request.get("stream") == Some(&Value::Bool(true)),
    }
}

/// Whether an OpenAI chat request asks for its stream's usage.
pub(super) fn asks_for_usage(request: &Value) -> bool {
    request["stream_options"]["include_usage"] == json!(true)
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

/// The path (relative to the upstream's base URL) and body for `upstream`, or None when the
/// request cannot cross to its API.
pub(super) fn upstream_request(
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

/// The message of an upstream error answer in either API's shape.
pub(super) fn upstream_error_message(body: &[u8]) -> String {
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

/// What a translated answer says of itself: the routed model, and the id and creation time
/// (Unix seconds) of an OpenAI answer; the endpoint makes an Ollama answer a chat or a
/// generation.
pub(super) struct AnswerIdentity {
    pub endpoint: Endpoint,
    pub model: String,
    pub id: String,
    pub created: u64,
}

impl AnswerIdentity {
    /// A whole (not streamed) answer from an `upstream_api` route, in the other API.
    /// `created_at`: the RFC 3339 time an Ollama answer carries.
    pub fn whole_answer(&self, upstream_api: ProviderApi, answer: &Value, usage: Usage, created_at: &str) -> Value {
        match (upstream_api, self.endpoint) {
            (ProviderApi::Openai, Endpoint::Embed) => json!({
                "model": self.model,
                "embeddings": answer["data"].as_array().map(|data| data.iter().map(|d| d["embedding"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
                "prompt_eval_count": usage.prompt,
            }),
            (ProviderApi::Ollama, Endpoint::Embed) => json!({
                "object": "list",
                "model": self.model,
                "data": answer["embeddings"].as_array().map(|all| all.iter().enumerate().map(|(index, e)| json!({"object": "embedding", "index": index, "embedding": e})).collect::<Vec<_>>()).unwrap_or_default(),
                "usage": {"prompt_tokens": usage.prompt, "total_tokens": usage.prompt},
            }),
            (ProviderApi::Openai, _) => {
                let choice = &answer["choices"][0];
                self.ollama_answer(
                    choice["message"]["content"].as_str().unwrap_or(""),
                    Some(choice["finish_reason"].as_str().unwrap_or("stop")),
                    usage,
                    created_at,
                )
            }
            (ProviderApi::Ollama, _) => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": answer["message"]["content"].as_str().unwrap_or("")},
                    "finish_reason": answer["done_reason"].as_str().unwrap_or("stop"),
                }],
                "usage": usage.openai_json(),
            }),
        }
    }

    /// An Ollama chat or generate answer (or stream chunk); `done_reason` makes it the last one,
    /// which carries the token counts.
    pub fn ollama_answer(&self, content: &str, done_reason: Option<&str>, usage: Usage, created_at: &str) -> Value {
        let mut answer = json!({"model": self.model, "created_at": created_at});
        if self.endpoint == Endpoint::Generate {
            answer["response"] = json!(content);
        } else {
            answer["message"] = json!({"role": "assistant", "content": content});
        }
        answer["done"] = json!(done_reason.is_some());
        if let Some(reason) = done_reason {
            answer["done_reason"] = json!(reason);
            answer["prompt_eval_count"] = json!(usage.prompt);
            answer["eval_count"] = json!(usage.completion);
        }
        answer
    }

    /// An OpenAI stream chunk.
    pub fn openai_chunk(&self, delta: Value, finish_reason: Value, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use ProviderApi::{Ollama, Openai};

    use super::*;

    /// The routed model every case's route serves.
    const MODEL: &str = "m";

    /// A request as the agent sends it: its API, what it asked for, the API of its route, and
    /// the body (JSON text).
    type RequestInput = (ProviderApi, Endpoint, ProviderApi, &'static str);
    /// The path and body (JSON text) sent to the route; None: the request cannot cross.
    type SentRequest = Option<(&'static str, &'static str)>;

    /// (name, the agent's request, what the route is sent). A new translation is one more line.
    const REQUEST_CASES: &[(&str, RequestInput, SentRequest)] = &[
        (
            "same API (ollama): only the model is replaced",
            (
                Ollama,
                Endpoint::Chat,
                Ollama,
                r#"{"model": "x", "messages": [{"role": "user", "content": "hi"}], "options": {"temperature": 0.2}}"#,
            ),
            Some((
                "/api/chat",
                r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "options": {"temperature": 0.2}}"#,
            )),
        ),
        (
            "same API (ollama generate)",
            (
                Ollama,
                Endpoint::Generate,
                Ollama,
                r#"{"model": "x", "prompt": "hi", "raw": true}"#,
            ),
            Some(("/api/generate", r#"{"model": "m", "prompt": "hi", "raw": true}"#)),
        ),
        (
            "same API (openai), streamed: the bus asks for the usage to meter it",
            (
                Openai,
                Endpoint::Chat,
                Openai,
                r#"{"model": "x", "messages": [], "stream": true}"#,
            ),
            Some((
                "/chat/completions",
                r#"{"model": "m", "messages": [], "stream": true, "stream_options": {"include_usage": true}}"#,
            )),
        ),
        (
            "same API (openai), streamed: other stream options are kept",
            (
                Openai,
                Endpoint::Chat,
                Openai,
                r#"{"model": "x", "messages": [], "stream": true, "stream_options": {"other": 1}}"#,
            ),
            Some((
                "/chat/completions",
                r#"{"model": "m", "messages": [], "stream": true, "stream_options": {"other": 1, "include_usage": true}}"#,
            )),
        ),
        (
            "same API (openai), not streamed: no stream options",
            (Openai, Endpoint::Chat, Openai, r#"{"model": "x", "messages": []}"#),
            Some(("/chat/completions", r#"{"model": "m", "messages": []}"#)),
        ),
        (
            "ollama chat to openai: options at the top, images dropped, streamed by default",
            (
                Ollama,
                Endpoint::Chat,
                Openai,
                r#"{"model": "x", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}], "options": {"temperature": 0.5, "top_p": 0.9, "seed": 1, "stop": ["\n"], "num_predict": 12, "num_ctx": 4096}, "tools": [{"type": "function"}]}"#,
            ),
            Some((
                "/chat/completions",
                r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": true}, "temperature": 0.5, "top_p": 0.9, "seed": 1, "stop": ["\n"], "max_tokens": 12, "tools": [{"type": "function"}]}"#,
            )),
        ),
        (
            "ollama chat to openai, not streamed",
            (
                Ollama,
                Endpoint::Chat,
                Openai,
                r#"{"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": false}"#,
            ),
            Some((
                "/chat/completions",
                r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": false}"#,
            )),
        ),
        (
            "ollama generate to an openai chat: system and prompt become messages",
            (
                Ollama,
                Endpoint::Generate,
                Openai,
                r#"{"model": "x", "system": "be brief", "prompt": "hi", "stream": false, "options": {"num_predict": 3}}"#,
            ),
            Some((
                "/chat/completions",
                r#"{"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "stream": false, "max_tokens": 3}"#,
            )),
        ),
        (
            "openai chat to ollama: text parts joined, max_completion_tokens first, stream explicit",
            (
                Openai,
                Endpoint::Chat,
                Ollama,
                r#"{"model": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}]}], "max_tokens": 5, "max_completion_tokens": 9, "temperature": 0.1, "tools": []}"#,
            ),
            Some((
                "/api/chat",
                r#"{"model": "m", "messages": [{"role": "user", "content": "a\nb"}], "stream": false, "options": {"temperature": 0.1, "num_predict": 9}, "tools": []}"#,
            )),
        ),
        (
            "openai chat to ollama without options: no options object",
            (
                Openai,
                Endpoint::Chat,
                Ollama,
                r#"{"model": "x", "messages": [], "stream": true}"#,
            ),
            Some(("/api/chat", r#"{"model": "m", "messages": [], "stream": true}"#)),
        ),
        (
            "openai embeddings to ollama: {model, input} only",
            (
                Openai,
                Endpoint::Embed,
                Ollama,
                r#"{"model": "x", "input": ["a", "b"], "encoding_format": "float"}"#,
            ),
            Some(("/api/embed", r#"{"model": "m", "input": ["a", "b"]}"#)),
        ),
        (
            "ollama embeddings to openai: {model, input} only",
            (
                Ollama,
                Endpoint::Embed,
                Openai,
                r#"{"model": "x", "input": "a", "truncate": true}"#,
            ),
            Some(("/embeddings", r#"{"model": "m", "input": "a"}"#)),
        ),
        (
            "an openai agent's generation cannot cross to ollama",
            (Openai, Endpoint::Generate, Ollama, r#"{"model": "x", "prompt": "hi"}"#),
            None,
        ),
    ];

    #[test]
    fn requests_are_translated_for_the_route() {
        for (name, (api, endpoint, route_api, body), expected) in REQUEST_CASES {
            let (_, sent) = translate_request(*api, *endpoint, *route_api, MODEL, body.as_bytes())
                .unwrap_or_else(|| panic!("{name}: a JSON object is forwarded"));
            let expected = expected.map(|(path, body)| (path, serde_json::from_str::<Value>(body).unwrap()));
            assert_eq!(sent, expected, "{name}");
        }
    }

    /// A body as the agent sends it: its API, what it asked for, and the text.
    type BodyInput = (ProviderApi, Endpoint, &'static str);

    /// (name, the agent's body, None when it is refused, else whether it wants a stream)
    const BODY_CASES: &[(&str, BodyInput, Option<bool>)] = &[
        ("not JSON", (Ollama, Endpoint::Chat, "hi"), None),
        ("a JSON array", (Ollama, Endpoint::Chat, "[1]"), None),
        ("ollama streams by default", (Ollama, Endpoint::Chat, "{}"), Some(true)),
        (
            "ollama told not to stream",
            (Ollama, Endpoint::Generate, r#"{"stream": false}"#),
            Some(false),
        ),
        (
            "ollama: only false stops a stream",
            (Ollama, Endpoint::Chat, r#"{"stream": "false"}"#),
            Some(true),
        ),
        (
            "openai does not stream by default",
            (Openai, Endpoint::Chat, "{}"),
            Some(false),
        ),
        (
            "openai told to stream",
            (Openai, Endpoint::Chat, r#"{"stream": true}"#),
            Some(true),
        ),
        (
            "embeddings never stream",
            (Ollama, Endpoint::Embed, r#"{"stream": true}"#),
            Some(false),
        ),
    ];

    #[test]
    fn only_a_json_object_is_a_request_and_streaming_follows_each_api_default() {
        for (name, (api, endpoint, body), expected) in BODY_CASES {
            let streamed =
                translate_request(*api, *endpoint, *api, MODEL, body.as_bytes()).map(|(streamed, _)| streamed);
            assert_eq!(streamed, *expected, "{name}");
        }
    }

    /// A whole answer from a route: its API, what the agent asked for, the answer (JSON text),
    /// and its usage (prompt, completion).
    type AnswerInput = (ProviderApi, Endpoint, &'static str, (u64, u64));

    /// (name, the route's answer, the agent's answer: JSON text, `created_at` "T", `created` 100)
    const ANSWER_CASES: &[(&str, AnswerInput, &str)] = &[
        (
            "openai chat to an ollama chat",
            (
                Openai,
                Endpoint::Chat,
                r#"{"choices": [{"message": {"content": "Hello"}, "finish_reason": "length"}]}"#,
                (5, 3),
            ),
            r#"{"model": "m", "created_at": "T", "message": {"role": "assistant", "content": "Hello"}, "done": true, "done_reason": "length", "prompt_eval_count": 5, "eval_count": 3}"#,
        ),
        (
            "openai chat to an ollama generation, finish_reason missing",
            (
                Openai,
                Endpoint::Generate,
                r#"{"choices": [{"message": {"content": "Hello"}}]}"#,
                (5, 3),
            ),
            r#"{"model": "m", "created_at": "T", "response": "Hello", "done": true, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 3}"#,
        ),
        (
            "ollama chat to an openai chat completion",
            (
                Ollama,
                Endpoint::Chat,
                r#"{"message": {"content": "Hi"}, "done_reason": "stop"}"#,
                (7, 2),
            ),
            r#"{"id": "chatcmpl-mirror-1", "object": "chat.completion", "created": 100, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}"#,
        ),
        (
            "openai embeddings to ollama",
            (
                Openai,
                Endpoint::Embed,
                r#"{"data": [{"embedding": [0.5]}, {"embedding": [1.5]}]}"#,
                (4, 0),
            ),
            r#"{"model": "m", "embeddings": [[0.5], [1.5]], "prompt_eval_count": 4}"#,
        ),
        (
            "ollama embeddings to openai",
            (Ollama, Endpoint::Embed, r#"{"embeddings": [[0.5]]}"#, (4, 0)),
            r#"{"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}], "usage": {"prompt_tokens": 4, "total_tokens": 4}}"#,
        ),
    ];

    #[test]
    fn whole_answers_are_translated_to_the_agents_api() {
        for (name, (route_api, endpoint, answer, (prompt, completion)), expected) in ANSWER_CASES {
            let identity = AnswerIdentity {
                endpoint: *endpoint,
                model: MODEL.into(),
                id: "chatcmpl-mirror-1".into(),
                created: 100,
            };
            let usage = Usage {
                prompt: *prompt,
                completion: *completion,
            };
            let answer: Value = serde_json::from_str(answer).unwrap();
            let expected: Value = serde_json::from_str(expected).unwrap();
            assert_eq!(
                identity.whole_answer(*route_api, &answer, usage, "T"),
                expected,
                "{name}"
            );
        }
    }

    /// (name, the upstream's error body, the message the agent is given)
    const ERROR_CASES: &[(&str, &str, &str)] = &[
        ("ollama", r#"{"error": "model not found"}"#, "model not found"),
        (
            "openai",
            r#"{"error": {"message": "bad request", "type": "x"}}"#,
            "bad request",
        ),
        (
            "an error without a message",
            r#"{"error": {"code": 1}}"#,
            r#"{"code":1}"#,
        ),
        ("not JSON", "oops", "oops"),
    ];

    #[test]
    fn upstream_errors_are_read_in_either_shape() {
        for (name, body, expected) in ERROR_CASES {
            assert_eq!(upstream_error_message(body.as_bytes()), *expected, "{name}");
        }
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
}
