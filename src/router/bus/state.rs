//! The bus's shared tables: agent tokens (by digest), routes, memory scopes and timeouts, as the
//! daemon sets them and the request handlers read them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::Upstream;
use crate::router::governance::Governance;
use crate::router::http::bearer_token;
use crate::router::memory_api::Caller;

/// Shared, cheap to clone: agent tokens and routes. Routes: agent -> ordered candidates (the
/// current route first, then the other healthy entries of its chain, for retries).
#[derive(Clone)]
pub struct BusState {
    shared: Arc<RwLock<Tables>>,
    /// Bumped whenever routes change, so a request waiting on a provider that has just left its
    /// agent's candidates (failed over) moves on at once.
    pub(super) routes_changed: Arc<watch::Sender<u64>>,
    /// Budgets and the tool gate.
    pub(super) governance: Governance,
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
            governance: Governance::default(),
        }
    }
}

impl BusState {
    pub fn governance(&self) -> &Governance {
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
    pub fn memory_caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let agent = self.agent_of(bearer_token(headers)?)?;
        let tables = self.shared.read().unwrap_or_else(|e| e.into_inner());
        let scope = tables.memory_scopes.get(&agent).cloned().unwrap_or_default();
        Some(Caller::new(agent, &scope))
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

    /// The agent whose token this is.
    pub(super) fn agent_of(&self, token: &str) -> Option<String> {
        let digest = token_digest(token);
        let tables = self.shared.read().unwrap_or_else(|e| e.into_inner());
        tables.agents_by_token.get(&digest).cloned()
    }

    /// The agent's candidates (current route first) and the bounds of a request.
    pub(super) fn routes_of(&self, agent: &str) -> (Vec<Upstream>, Timeouts) {
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
    pub(super) fn still_routed(&self, agent: &str, provider: &str) -> bool {
        let tables = self.shared.read().unwrap_or_else(|e| e.into_inner());
        tables
            .routes
            .get(agent)
            .is_some_and(|candidates| candidates.iter().any(|c| c.provider == provider))
    }
}

/// The bounds of one forwarded request.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    /// For the upstream's response headers.
    pub header: Duration,
    /// For a non-streamed generation's answer.
    pub answer: Duration,
    /// Between two pieces of the upstream's answer.
    pub idle: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
