//! Ctrl-C during a one-shot pass: a flag the pass looks at between actions (and while it
//! waits for the lock or a pull), set by a signal handler that does only async-signal-safe work.

// Installing the handler is the one unsafe operation here (see the SAFETY comments).
#![allow(unsafe_code)]

/// Set by SIGINT during a one-shot pass (see [`interrupt_on_sigint`]).
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the pass should stop before its next action.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Asks the running pass to stop before its next action.
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A one-shot pass: the first Ctrl-C stops it between actions (what was done is recorded and
/// summarized, exit 130); a second one ends the process at once.
#[cfg(unix)]
pub fn interrupt_on_sigint() {
    extern "C" fn on_sigint(_: libc::c_int) {
        // Async-signal-safe: an atomic store and a signal disposition.
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: restoring the default disposition is async-signal-safe.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
        }
    }
    // SAFETY: installs a handler that only does async-signal-safe work.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}
