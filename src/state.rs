//! This host's identity and its state directory (platform conventions: XDG on Linux,
//! `~/Library/Application Support` on macOS).

use std::path::PathBuf;

/// The state directory when none is given: `$XDG_STATE_HOME/mirrorctl`, else
/// `~/.local/state/mirrorctl` (Linux) or `~/Library/Application Support/mirrorctl` (macOS).
pub fn default_state_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("mirrorctl");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    if cfg!(target_os = "macos") {
        home.join("Library/Application Support/mirrorctl")
    } else {
        home.join(".local/state/mirrorctl")
    }
}

/// This host's name in the truth store: `MIRROR_HOST`, else the system's host name.
pub fn host_name() -> String {
    if let Some(name) = std::env::var("MIRROR_HOST").ok().filter(|v| !v.is_empty()) {
        return name;
    }
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}
