//! Token metering: the usage a provider reports in either API, and what the bus meters for each
//! completed answer.

use std::sync::Arc;

use serde_json::{json, Value};

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

/// The tokens of one answer as its provider counted them (0 where it did not say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

impl Usage {
    /// From an Ollama answer or its final stream chunk: `prompt_eval_count`, `eval_count`.
    pub fn from_ollama(chunk: &Value) -> Usage {
        Usage {
            prompt: chunk["prompt_eval_count"].as_u64().unwrap_or(0),
            completion: chunk["eval_count"].as_u64().unwrap_or(0),
        }
    }

    /// From an OpenAI `usage` object: `prompt_tokens`, `completion_tokens`.
    pub fn from_openai(usage: &Value) -> Usage {
        Usage {
            prompt: usage["prompt_tokens"].as_u64().unwrap_or(0),
            completion: usage["completion_tokens"].as_u64().unwrap_or(0),
        }
    }

    /// As an OpenAI `usage` object (the total saturates instead of overflowing).
    pub fn openai_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt.saturating_add(self.completion),
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::super::testing::*;
    use super::super::{translate_answer, Endpoint};
    use super::*;
    use crate::spec::provider::ProviderApi;

    #[test]
    fn usage_is_read_from_either_api_and_written_in_openai_shape() {
        // (name, (API, what the provider sent), expected usage)
        let cases: &[(&str, (ProviderApi, Value), Usage)] = &[
            (
                "ollama counts",
                (ProviderApi::Ollama, json!({"prompt_eval_count": 7, "eval_count": 2})),
                Usage {
                    prompt: 7,
                    completion: 2,
                },
            ),
            (
                "ollama without counts",
                (ProviderApi::Ollama, json!({"done": true})),
                Usage::default(),
            ),
            (
                "openai usage",
                (
                    ProviderApi::Openai,
                    json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
                ),
                Usage {
                    prompt: 5,
                    completion: 3,
                },
            ),
            (
                "openai usage of an embedding",
                (ProviderApi::Openai, json!({"prompt_tokens": 4, "total_tokens": 4})),
                Usage {
                    prompt: 4,
                    completion: 0,
                },
            ),
            (
                "openai null usage",
                (ProviderApi::Openai, Value::Null),
                Usage::default(),
            ),
        ];
        for (name, (api, reported), expected) in cases {
            let usage = match api {
                ProviderApi::Ollama => Usage::from_ollama(reported),
                ProviderApi::Openai => Usage::from_openai(reported),
            };
            assert_eq!(usage, *expected, "{name}");
            let total = expected.prompt + expected.completion;
            assert_eq!(usage.openai_json()["total_tokens"], json!(total), "{name}");
        }
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
}
