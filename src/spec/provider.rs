//! `ModelProvider`: an LLM endpoint the model bus routes agents to.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderApi {
    /// Ollama's native API (`/api/...`).
    Ollama,
    /// An OpenAI-compatible API (llama.cpp, vLLM, LM Studio, a cloud); `url` is the base URL with `/v1`.
    Openai,
}

/// Health checking of a provider. The generation probe exists because Ollama keeps answering
/// `/api/version` while generation hangs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderHealth {
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Probe by generating one token, not only by asking for the version. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<bool>,
    /// The model the generation probe uses. Default: the first of `models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_model: Option<String>,
}

impl ProviderHealth {
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(10))
    }
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(5))
    }
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(2)
    }
    pub fn generate(&self) -> bool {
        self.generate.unwrap_or(true)
    }
}

/// Prices used to meter spend against budgets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pricing {
    #[serde(default)]
    pub input_per_million_tokens_usd: f64,
    #[serde(default)]
    pub output_per_million_tokens_usd: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelProviderSpec {
    pub api: ProviderApi,
    /// Base URL: `http://127.0.0.1:11434` for Ollama, `http://host:port/v1` for OpenAI-style.
    pub url: String,
    /// False means a cloud escalation, which policies may forbid. Default: true when the URL's
    /// host is a loopback address or `localhost`, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
    /// The Service that runs this provider; restarted when the provider crashes or hangs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Models ensured present (missing Ollama models are pulled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ProviderHealth>,
    /// Name of an environment variable of the daemon holding the API key (never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
}

impl ModelProviderSpec {
    pub fn is_local(&self) -> bool {
        self.local.unwrap_or_else(|| url_host_is_loopback(&self.url))
    }
    pub fn health(&self) -> ProviderHealth {
        self.health.clone().unwrap_or_default()
    }
    /// The model the generation probe uses.
    pub fn probe_model(&self) -> Option<&str> {
        self.health
            .as_ref()
            .and_then(|h| h.probe_model.as_deref())
            .or_else(|| self.models.first().map(String::as_str))
    }
}

fn url_host_is_loopback(url: &str) -> bool {
    match url::Url::parse(url).ok().and_then(|u| u.host().map(|h| h.to_owned())) {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(url: &str, local: Option<bool>) -> ModelProviderSpec {
        ModelProviderSpec {
            api: ProviderApi::Openai,
            url: url.into(),
            local,
            service: None,
            models: vec![],
            health: None,
            api_key_env: None,
            pricing: None,
        }
    }

    #[test]
    fn locality_defaults_from_the_url() {
        assert!(provider("http://127.0.0.1:11434", None).is_local());
        assert!(provider("http://localhost:8080/v1", None).is_local());
        assert!(!provider("https://api.example.com/v1", None).is_local());
        assert!(provider("https://gpu-box.lan/v1", Some(true)).is_local());
    }
}
