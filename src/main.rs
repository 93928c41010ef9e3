// Unsafe here: Restoring SIGPIPE's default disposition. Each block says why it is sound (SAFETY).
#![allow(unsafe_code)]
fn main() -> std::process::ExitCode {
    // Like other Unix tools, end quietly when the reader goes away (`mirrorctl status | head`).
    // SAFETY: restoring a signal's default disposition before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    mirrorctl::cli::main()
}
