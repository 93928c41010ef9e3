//! mirrorctl: a GitOps reconciliation controller for a sovereign, local-first AI host.
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod cli;
pub mod daemon;
pub mod example;
#[doc(hidden)]
pub mod fuzzing;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod report;
pub mod router;
pub mod source;
pub mod spec;
pub mod state;
pub mod store;
pub mod supervisor;
