//! The model router: which model provider each agent talks to right now.
//!
//! - [`health`] probes one `ModelProvider` (async, over HTTP/1): liveness (`GET /api/version` for
//!   Ollama, `GET /models` for OpenAI-style servers), then a one-token generation, because Ollama
//!   keeps answering `/api/version` while generation hangs (ollama #1863, #3552, #6380). Each
//!   probe ends in a [`health::Verdict`]: healthy, down (liveness failed) or hung (liveness
//!   answers, generation does not).
//! - [`route`] is pure: it turns verdicts into per-provider health with a failure threshold
//!   ([`route::ProviderState`]) and picks each agent's route from its chain (primary, then the
//!   ordered fallbacks) with [`route::decide`]: failover at once, failback only after the better
//!   entry has been healthy for a stable window, every switch returned as a [`route::Change`] to
//!   be recorded. Time is an input, so the rules are tested with explicit clocks.
//!
//! The daemon owns the loop: it probes every provider on its interval, feeds verdicts to the
//! provider states, restarts a provider's Service on its `Unhealthy` transition, asks `decide`
//! for each agent and wakes up at [`route::failback_due_ms`].

pub mod bus;
pub mod governance;
pub mod health;
pub mod http;
pub mod memory_api;
pub mod models;
pub mod preview;
pub mod route;
