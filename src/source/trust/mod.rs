//! Optional trust (DESIGN.md §6): verifies a commit's SSH signature against an allowed-signers
//! file, as `git verify-commit` does with `gpg.format=ssh` and `gpg.ssh.allowedSignersFile`
//! (which runs `ssh-keygen -Y verify -n git`). A commit that does not verify is not applied.
//!
//! Stricter than git in one way: git reports whichever principal the allowed-signers file lists
//! for the key, whoever committed; here a principal pattern must match the committer email, so a
//! key allowed for alice cannot vouch for a commit that claims to be bob's.
//!
//! The parts: `signers` reads the allowed-signers file (with `cursor` walking one line of it),
//! `time` its `valid-after`/`valid-before` times, `patterns` its principal and namespace patterns,
//! `signature` decodes a commit's armored signature, and `verify` checks a commit against it all.

mod cursor;
mod patterns;
mod signature;
mod signers;
mod time;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};

pub use signers::AllowedSigners;
pub use verify::{verify_commit, Verified};

use time::format_utc;

/// Why a commit is not trusted, or why the allowed-signers file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the allowed signers file {}: {message}", path.display())]
    ReadAllowedSigners { path: PathBuf, message: String },
    #[error("{}: {message}", place_column(file.as_deref(), *line, *column))]
    ParseAllowedSigners {
        file: Option<PathBuf>,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot read commit {commit}: {message}")]
    ReadCommit { commit: String, message: String },
    #[error(
        "commit {}: not signed; expected an SSH signature (git commit -S with gpg.format=ssh)",
        short(commit)
    )]
    Unsigned { commit: String },
    #[error(
        "commit {}: the signature is {kind} signature; only SSH signatures are supported (sign with gpg.format=ssh)",
        short(commit)
    )]
    NotSsh { commit: String, kind: &'static str },
    #[error("commit {}: malformed SSH signature: {message}", short(commit))]
    MalformedSignature { commit: String, message: String },
    #[error(
        "commit {}: the signature was made for namespace \"{namespace}\"; commit signatures must use namespace \"git\"",
        short(commit)
    )]
    SignatureNamespace { commit: String, namespace: String },
    #[error("commit {}: signed with a {key_type} key ({fingerprint}), which cannot be verified here; supported key types: ssh-ed25519, sk-ssh-ed25519@openssh.com, ssh-rsa, ecdsa-sha2-nistp256/384/521", short(commit))]
    UnsupportedKeyType {
        commit: String,
        key_type: String,
        fingerprint: String,
    },
    #[error("commit {}: the signature does not verify with its key {fingerprint}: the commit was changed after signing, or the signature is corrupt", short(commit))]
    BadSignature { commit: String, fingerprint: String },
    #[error("commit {}: signed with {key_type} key {fingerprint}, which is not listed in {}", short(commit), signers_file(file.as_deref()))]
    KeyNotAllowed {
        commit: String,
        key_type: String,
        fingerprint: String,
        file: Option<PathBuf>,
    },
    #[error(
        "commit {}: key {fingerprint} is allowed only for {principals}, not for committer email {email}",
        short(commit)
    )]
    PrincipalMismatch {
        commit: String,
        fingerprint: String,
        principals: String,
        email: String,
    },
    #[error("commit {}: {entry}: key {fingerprint} is allowed only for namespaces \"{namespaces}\", which do not include \"git\"", short(commit))]
    NamespaceNotAllowed {
        commit: String,
        fingerprint: String,
        entry: SignerLine,
        namespaces: String,
    },
    #[error("commit {}: {entry}: key {fingerprint} is not valid yet at the commit time: committed {}, valid-after=\"{valid_after}\"", short(commit), format_utc(*committed_at))]
    NotYetValid {
        commit: String,
        fingerprint: String,
        entry: SignerLine,
        valid_after: String,
        /// Committer time, seconds since the epoch.
        committed_at: i64,
    },
    #[error("commit {}: {entry}: key {fingerprint} had expired at the commit time: committed {}, valid-before=\"{valid_before}\"", short(commit), format_utc(*committed_at))]
    Expired {
        commit: String,
        fingerprint: String,
        entry: SignerLine,
        valid_before: String,
        /// Committer time, seconds since the epoch.
        committed_at: i64,
    },
}

/// The allowed-signers line an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerLine {
    /// None when the entries were parsed from text.
    pub file: Option<PathBuf>,
    pub line: usize,
}

impl fmt::Display for SignerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&place(self.file.as_deref(), self.line))
    }
}

/// `FILE:LINE` for a loaded file, `allowed signers line LINE` for parsed text.
fn place(file: Option<&Path>, line: usize) -> String {
    match file {
        Some(file) => format!("{}:{line}", file.display()),
        None => format!("allowed signers line {line}"),
    }
}

/// `FILE:LINE:COLUMN`, or `allowed signers line LINE, column COLUMN` for parsed text.
fn place_column(file: Option<&Path>, line: usize, column: usize) -> String {
    match file {
        Some(file) => format!("{}:{line}:{column}", file.display()),
        None => format!("allowed signers line {line}, column {column}"),
    }
}

fn signers_file(file: Option<&Path>) -> String {
    match file {
        Some(file) => format!("the allowed signers file {}", file.display()),
        None => "the allowed signers".to_string(),
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
