//! Converting an upstream answer, chunk by chunk, into what the agent receives: NDJSON and SSE
//! lines framed and, across APIs, translated; usage counted; the error event of a stream that
//! broke, stalled or was cut short.

use bytes::Bytes;
use serde_json::{json, Value};

use super::meter::Usage;
use super::translate::{upstream_error_message, AnswerIdentity};
use super::{Endpoint, MAX_KEPT_ANSWER_BYTES};
use crate::spec::provider::ProviderApi;

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
        (ending.is_ok() && !converter.errored).then_some((converter.usage.prompt, converter.usage.completion));
    RelayOutcome {
        per_chunk,
        ending,
        metered,
        hides_usage: converter.hide_usage,
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
pub(super) struct Converter {
    client_api: ProviderApi,
    upstream_api: ProviderApi,
    pub streamed: bool,
    /// The endpoint, the routed model, and the id of translated OpenAI answers.
    identity: AnswerIdentity,
    /// A stream's incomplete last line.
    pending_line: Vec<u8>,
    /// A non-streamed answer, for metering and translation.
    whole: Vec<u8>,
    pub usage: Usage,
    /// The stream's final marker was seen (Ollama `done: true` or an error line, OpenAI `[DONE]`).
    finished: bool,
    /// Translated OpenAI streams name the role in their first chunk.
    sent_role: bool,
    /// The last finish_reason of an OpenAI stream, for the final Ollama line.
    finish_reason: Option<String>,
    /// The answer carried an error (an error line or event): nothing to meter.
    pub errored: bool,
    /// An OpenAI stream reached `[DONE]` without a finish_reason: the server ended the
    /// generation early (llama.cpp's server does when another request comes in).
    cut_short: bool,
    /// The bus asked an OpenAI stream for its usage (to meter it) and the agent did not: the
    /// usage event is kept from the agent.
    hide_usage: bool,
}

impl Converter {
    pub fn new(
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
            streamed,
            identity: AnswerIdentity {
                endpoint,
                model: model.to_string(),
                id: format!("chatcmpl-mirror-{id}"),
                created: unix_seconds(),
            },
            pending_line: Vec::new(),
            whole: Vec::new(),
            usage: Usage::default(),
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
    pub fn on_chunk(&mut self, data: &Bytes) -> Vec<Bytes> {
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
            ProviderApi::Ollama => self.on_ollama_line(text),
            ProviderApi::Openai => self.on_openai_line(text),
        }
    }

    /// One NDJSON line of an Ollama stream.
    fn on_ollama_line(&mut self, text: &str) -> Vec<Bytes> {
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
            self.usage = Usage::from_ollama(&chunk);
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
            let usage = self.usage.openai_json();
            out.push(self.openai_chunk(json!({}), Value::String(reason), Some(usage)));
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        out
    }

    /// One line of an OpenAI SSE stream.
    fn on_openai_line(&mut self, text: &str) -> Vec<Bytes> {
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
            self.usage = Usage::from_openai(&chunk["usage"]);
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
        let answer = self.identity.ollama_answer(content, None, self.usage, &now_rfc3339());
        vec![ndjson(&answer)]
    }

    /// The end of the upstream answer (`broke`: why it broke). Ok: the last pieces of a complete
    /// answer; Err: the last pieces of an answer that did not complete.
    pub fn on_end(&mut self, broke: Option<&str>) -> Result<Vec<Bytes>, Vec<Bytes>> {
        if self.streamed {
            return self.on_stream_end(broke);
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
        self.usage = match self.upstream_api {
            ProviderApi::Ollama => Usage::from_ollama(&answer),
            ProviderApi::Openai => Usage::from_openai(&answer["usage"]),
        };
        if !self.translating() {
            return Ok(Vec::new());
        }
        let translated = self
            .identity
            .whole_answer(self.upstream_api, &answer, self.usage, &now_rfc3339());
        Ok(vec![Bytes::from(translated.to_string())])
    }

    /// `on_end` of a stream: its last line, and the error event of a stream that did not finish.
    fn on_stream_end(&mut self, broke: Option<&str>) -> Result<Vec<Bytes>, Vec<Bytes>> {
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
        Err(out)
    }

    fn openai_chunk(&mut self, mut delta: Value, finish_reason: Value, usage: Option<Value>) -> Bytes {
        if !self.sent_role {
            delta["role"] = json!("assistant");
            self.sent_role = true;
        }
        sse(&self.identity.openai_chunk(delta, finish_reason, usage))
    }

    fn ollama_final_line(&self) -> Bytes {
        let reason = self.finish_reason.clone();
        let done_reason = Some(reason.as_deref().unwrap_or("stop"));
        ndjson(&self.identity.ollama_answer("", done_reason, self.usage, &now_rfc3339()))
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
    use ProviderApi::{Ollama, Openai};

    use super::*;

    /// An upstream answer as the relay sees it.
    struct Answer {
        /// The agent's API, what it asked for, and the API of its route.
        api: ProviderApi,
        endpoint: Endpoint,
        route_api: ProviderApi,
        streamed: bool,
        /// The agent asked for an OpenAI stream's usage itself.
        usage_asked: bool,
        chunks: &'static [&'static str],
        /// Why the answer broke, if it did.
        broke: Option<&'static str>,
    }

    /// What the agent is sent for each chunk (its pieces joined), and at the end (Ok: the
    /// answer completed); the tokens metered.
    struct Sent {
        per_chunk: &'static [&'static str],
        ending: Result<&'static str, &'static str>,
        metered: Option<(u64, u64)>,
    }

    /// A streamed chat.
    const fn stream(
        api: ProviderApi,
        route_api: ProviderApi,
        usage_asked: bool,
        chunks: &'static [&'static str],
        broke: Option<&'static str>,
    ) -> Answer {
        Answer {
            api,
            endpoint: Endpoint::Chat,
            route_api,
            streamed: true,
            usage_asked,
            chunks,
            broke,
        }
    }

    /// A whole (not streamed) chat answer.
    const fn whole(
        api: ProviderApi,
        route_api: ProviderApi,
        chunks: &'static [&'static str],
        broke: Option<&'static str>,
    ) -> Answer {
        Answer {
            streamed: false,
            ..stream(api, route_api, false, chunks, broke)
        }
    }

    const OLLAMA_HEL: &str = "{\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n";
    const OLLAMA_LO_DONE: &str = "{\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":7,\"eval_count\":2}\n";
    const OPENAI_HI: &str =
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    const OPENAI_STOP: &str = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    const OPENAI_USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    /// (name, the upstream's answer, what the agent is sent). Translated answers are compared
    /// without their times (see [`without_times`]).
    const CASES: &[(&str, Answer, Sent)] = &[
        (
            "an ollama stream passes through byte for byte, lines split anywhere",
            stream(Ollama, Ollama, false, &["{\"message\":{\"content\":\"Hel\"},\"done\":false}\n{\"mess", "age\":{\"content\":\"lo\"},\"done\":true,\"prompt_eval_count\":7,\"eval_count\":2}\n"], None),
            Sent {
                per_chunk: &["{\"message\":{\"content\":\"Hel\"},\"done\":false}\n{\"mess", "age\":{\"content\":\"lo\"},\"done\":true,\"prompt_eval_count\":7,\"eval_count\":2}\n"],
                ending: Ok(""),
                metered: Some((7, 2)),
            },
        ),
        (
            "an ollama stream that breaks midway ends with an error line of its own",
            stream(Ollama, Ollama, false, &["{\"message\":{\"content\":\"Hel\"},\"done\":false}\n{\"mess"], Some("reset")),
            Sent {
                per_chunk: &["{\"message\":{\"content\":\"Hel\"},\"done\":false}\n{\"mess"],
                ending: Err("\n{\"error\":\"the model stream broke midway: reset\"}\n"),
                metered: None,
            },
        ),
        (
            "an openai stream's usage event, asked for by the bus only, is kept from the agent",
            stream(Openai, Openai, false, &[OPENAI_HI, "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n"], None),
            Sent {
                per_chunk: &[OPENAI_HI, "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\ndata: [DONE]\n\n"],
                ending: Ok(""),
                metered: Some((5, 3)),
            },
        ),
        (
            "an openai stream's usage event asked for by the agent reaches it",
            stream(Openai, Openai, true, &[OPENAI_HI, OPENAI_STOP, OPENAI_USAGE, DONE], None),
            Sent {
                per_chunk: &[OPENAI_HI, OPENAI_STOP, OPENAI_USAGE, DONE],
                ending: Ok(""),
                metered: Some((5, 3)),
            },
        ),
        (
            "an openai stream cut short gets the error event before its [DONE]",
            stream(Openai, Openai, true, &[OPENAI_HI, DONE], None),
            Sent {
                per_chunk: &[OPENAI_HI, "data: {\"error\":{\"code\":null,\"message\":\"the model stream ended without finishing (no finish_reason before [DONE]): the answer is cut short\",\"type\":\"api_error\"}}\n\ndata: [DONE]\n\n"],
                ending: Ok(""),
                metered: None,
            },
        ),
        (
            "an ollama stream to an openai agent: SSE chunks, the role first, usage last",
            stream(Openai, Ollama, false, &[OLLAMA_HEL, OLLAMA_LO_DONE], None),
            Sent {
                per_chunk: &[
                    "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\",\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0}],\"id\":\"chatcmpl-mirror-0\",\"model\":\"m\",\"object\":\"chat.completion.chunk\"}\n\n",
                    "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":null,\"index\":0}],\"id\":\"chatcmpl-mirror-0\",\"model\":\"m\",\"object\":\"chat.completion.chunk\"}\n\n\
                     data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"id\":\"chatcmpl-mirror-0\",\"model\":\"m\",\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":7,\"total_tokens\":9}}\n\n\
                     data: [DONE]\n\n",
                ],
                ending: Ok(""),
                metered: Some((7, 2)),
            },
        ),
        (
            "an openai stream to an ollama agent: NDJSON lines, the counts on the last",
            stream(Ollama, Openai, false, &[OPENAI_HI, OPENAI_STOP, OPENAI_USAGE, DONE], None),
            Sent {
                per_chunk: &[
                    "{\"done\":false,\"message\":{\"content\":\"Hi\",\"role\":\"assistant\"},\"model\":\"m\"}\n",
                    "",
                    "",
                    "{\"done\":true,\"done_reason\":\"stop\",\"eval_count\":3,\"message\":{\"content\":\"\",\"role\":\"assistant\"},\"model\":\"m\",\"prompt_eval_count\":5}\n",
                ],
                ending: Ok(""),
                metered: Some((5, 3)),
            },
        ),
        (
            "an openai stream ended before [DONE] for an ollama agent: an ollama error line",
            stream(Ollama, Openai, false, &[OPENAI_HI], None),
            Sent {
                per_chunk: &["{\"done\":false,\"message\":{\"content\":\"Hi\",\"role\":\"assistant\"},\"model\":\"m\"}\n"],
                ending: Err("{\"error\":\"the model stream broke midway: the upstream closed the stream before its end\"}\n"),
                metered: None,
            },
        ),
        (
            "a whole ollama answer passes through and is metered",
            whole(Ollama, Ollama, &["{\"message\":{\"content\":\"Hi\"},", "\"done\":true,\"prompt_eval_count\":7,\"eval_count\":2}"], None),
            Sent {
                per_chunk: &["{\"message\":{\"content\":\"Hi\"},", "\"done\":true,\"prompt_eval_count\":7,\"eval_count\":2}"],
                ending: Ok(""),
                metered: Some((7, 2)),
            },
        ),
        (
            "a whole answer that broke is not metered",
            whole(Openai, Ollama, &["{\"message\":"], Some("reset")),
            Sent {
                per_chunk: &[""],
                ending: Err(""),
                metered: None,
            },
        ),
    ];

    /// Each line with its JSON (after an SSE `data: ` prefix, if any) written again without the
    /// times a translated answer carries (`created`, `created_at`), so expected text is exact.
    fn without_times(text: &str) -> String {
        text.split_inclusive('\n')
            .map(|line| {
                let (prefix, rest) = line.strip_prefix("data: ").map_or(("", line), |rest| ("data: ", rest));
                let Ok(mut value) = serde_json::from_str::<Value>(rest.trim_end()) else {
                    return line.to_string();
                };
                if let Some(map) = value.as_object_mut() {
                    map.remove("created");
                    map.remove("created_at");
                }
                let end = if line.ends_with('\n') { "\n" } else { "" };
                format!("{prefix}{value}{end}")
            })
            .collect()
    }

    fn joined(pieces: &[Bytes]) -> String {
        pieces.iter().map(|p| String::from_utf8_lossy(p)).collect()
    }

    #[test]
    fn answers_reach_the_agent_framed_translated_and_metered() {
        for (name, answer, expected) in CASES {
            let chunks: Vec<&[u8]> = answer.chunks.iter().map(|c| c.as_bytes()).collect();
            let outcome = translate_answer(
                answer.api,
                answer.endpoint,
                answer.route_api,
                "m",
                answer.streamed,
                answer.usage_asked,
                &chunks,
                answer.broke,
            );
            let per_chunk: Vec<String> = outcome.per_chunk.iter().map(|p| without_times(&joined(p))).collect();
            let expected_chunks: Vec<String> = expected.per_chunk.iter().map(|p| without_times(p)).collect();
            assert_eq!(per_chunk, expected_chunks, "{name}");
            let ending = match &outcome.ending {
                Ok(pieces) => Ok(without_times(&joined(pieces))),
                Err(pieces) => Err(without_times(&joined(pieces))),
            };
            let expected_ending = expected.ending.map(without_times).map_err(without_times);
            assert_eq!(ending, expected_ending, "{name}");
            assert_eq!(outcome.metered, expected.metered, "{name}");
        }
    }
}
