//! Integration tests: the real binary, real git repositories, in temp dirs.

#[macro_use]
mod support;

mod bus_failover;
mod containment;
mod contract;
mod crds;
mod daemon;
mod everyday;
mod fake_llm;
mod faults;
mod fuzz_corpus;
mod git_source;
mod init;
mod invalid_corpus;
mod memory;
mod memory_rules;
mod real_llm;
mod reconcile;
mod sandbox;
mod scenario;
mod sdk;
mod store_cli;
mod store_contract;
mod validate;
