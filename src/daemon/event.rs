//! The loop's vocabulary: the events it reacts to and the work it queues.

use super::*;

/// The closed set of things the loop reacts to.
pub(super) enum Event {
    /// The repository's refs moved (debounced).
    SourceChanged,
    /// The periodic resync (Controller `resync`).
    Resync,
    /// A supervised process ended, noticed the moment it did.
    ChildExited {
        id: ResourceId,
        identity: ProcessIdentity,
        ended: Ended,
    },
    /// A restart held back by its backoff is due.
    RestartDue,
    /// A health probe of a running service answered.
    Probed {
        id: ResourceId,
        identity: ProcessIdentity,
        result: Result<String, String>,
    },
    /// The Controller's drift-report schedule fired.
    DriftReportDue,
    /// The Controller's `memory.schedule` fired: MemoryRules run over the truth store.
    MemoryRulesDue,
    /// A one-shot command asks (through the control socket).
    Control(Asked),
    /// A pass finished on its blocking thread.
    PassDone(Box<Finished>),
    /// A model provider's health probe answered.
    ProviderProbed(routing::Probed),
    /// A failback may have come due.
    RouteCheck,
    /// A status read while a pass ran, to complete and answer.
    StatusRead(Box<StatusRead>),
    /// SIGTERM or SIGINT.
    Shutdown(&'static str),
}

/// A status request, its report read from disk (or why it could not be), and where to answer.
pub(super) type StatusRead = (Request, Result<StatusReport, String>, Reply);

/// Work waiting for the reconciler, one at a time.
pub(super) enum Work {
    /// A pass over everything, the source read again (unless `reload` is false: the last state).
    Full { trigger: &'static str, reload: bool },
    /// A pass over one service or agent that ended or fails its probe, on the last state.
    One { id: ResourceId, trigger: &'static str },
    /// A control request.
    Asked(Asked),
    /// The scheduled observe-only drift report.
    ScheduledReport,
}

pub(super) struct Finished {
    pub(super) reconciler: Reconciler,
    pub(super) work: Work,
    pub(super) result: Answer,
    /// The state the pass applied, when it was read again and trusted.
    pub(super) applied: Option<Arc<DesiredState>>,
    pub(super) took: Duration,
}

/// Per service: its probe task, and the consecutive failures of the process it probes.
pub(super) struct Probing {
    pub(super) identity: ProcessIdentity,
    pub(super) task: AbortHandle,
    pub(super) failures: u32,
    pub(super) threshold: u32,
    /// When the process started and how long its probe's start period lasts (ms).
    pub(super) started_ms: i64,
    pub(super) start_period_ms: i64,
}
