//! The macOS equivalent of a [`Profile`]: a Seatbelt (`sandbox-exec -p`) profile in SBPL.
//! Text only and pure, so it is unit-tested on every platform; the supervisor would start
//! agents through `sandbox-exec -p PROFILE PROGRAM...` behind `cfg(target_os = "macos")`. In
//! SBPL a later rule wins over an earlier one, so the denials come after `(allow default)` and
//! the exceptions after the denials.

use std::fmt::Write;
use std::path::Path;

use super::Profile;

/// An SBPL string literal.
fn quoted(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The SBPL profile of `profile`.
pub fn profile_text(profile: &Profile) -> String {
    let mut out = String::from("(version 1)\n(allow default)\n");
    let subpaths = |paths: &[std::path::PathBuf]| -> String {
        paths
            .iter()
            .map(|p| format!(" (subpath {})", quoted(p)))
            .collect::<String>()
    };
    // Writes: only the sandbox, declared paths and the usual devices.
    let _ = writeln!(
        out,
        "(deny file-write*)\n(allow file-write*{} (literal \"/dev/null\") (literal \"/dev/zero\") (literal \"/dev/tty\") (subpath \"/dev/fd\"))",
        subpaths(&profile.writes)
    );
    if !profile.hide.is_empty() {
        let _ = writeln!(out, "(deny file-read*{})", subpaths(&profile.hide));
        let mut allowed = profile.writes.clone();
        allowed.extend(profile.reads.iter().cloned());
        if !allowed.is_empty() {
            let _ = writeln!(out, "(allow file-read*{})", subpaths(&allowed));
        }
    }
    if profile.network {
        out.push_str("(deny network-outbound (remote tcp))\n(deny network-bind (local tcp))\n");
        for port in &profile.connect {
            let _ = writeln!(out, "(allow network-outbound (remote tcp \"*:{port}\"))");
        }
        for port in &profile.bind {
            let _ = writeln!(out, "(allow network-bind (local tcp \"*:{port}\"))");
        }
    }
    if profile.scope {
        out.push_str("(deny signal (target others))\n(allow signal (target same-sandbox))\n");
    }
    // Other processes' memory and task ports (the ptrace of Landlock).
    out.push_str("(deny process-info* (target others))\n(deny mach-priv-task-port)\n");
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_full_profile_denies_then_allows_what_the_agent_needs() {
        let profile = Profile {
            writes: vec![PathBuf::from(
                "/Users/me/Library/Application Support/mirrorctl/sandboxes/a",
            )],
            reads: vec![PathBuf::from("/Users/me/docs")],
            hide: vec![
                PathBuf::from("/Users/me/Library/Application Support/mirrorctl"),
                PathBuf::from("/Users/me/.ssh"),
            ],
            network: true,
            connect: vec![11500],
            bind: vec![8600],
            scope: true,
        };
        let text = profile_text(&profile);
        let expected = r#"(version 1)
(allow default)
(deny file-write*)
(allow file-write* (subpath "/Users/me/Library/Application Support/mirrorctl/sandboxes/a") (literal "/dev/null") (literal "/dev/zero") (literal "/dev/tty") (subpath "/dev/fd"))
(deny file-read* (subpath "/Users/me/Library/Application Support/mirrorctl") (subpath "/Users/me/.ssh"))
(allow file-read* (subpath "/Users/me/Library/Application Support/mirrorctl/sandboxes/a") (subpath "/Users/me/docs"))
(deny network-outbound (remote tcp))
(deny network-bind (local tcp))
(allow network-outbound (remote tcp "*:11500"))
(allow network-bind (local tcp "*:8600"))
(deny signal (target others))
(allow signal (target same-sandbox))
(deny process-info* (target others))
(deny mach-priv-task-port)
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn quotes_in_paths_are_escaped_and_an_open_profile_restricts_only_writes() {
        let profile = Profile {
            writes: vec![PathBuf::from("/tmp/a\"b\\c")],
            ..Profile::default()
        };
        let text = profile_text(&profile);
        assert!(text.contains(r#"(subpath "/tmp/a\"b\\c")"#), "{text}");
        assert!(!text.contains("file-read"));
        assert!(!text.contains("network"));
        assert!(!text.contains("(deny signal"));
    }
}
