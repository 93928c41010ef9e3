//! Verifying a commit: read it, decode its SSH signature, check the signature with the key it
//! carries, then check that the allowed signers list that key for the committer, the namespace
//! and the commit time.

use std::fmt;

use git2::{ErrorCode, Oid, Repository};
use ssh_key::{HashAlg, PublicKey, SshSig};

use super::patterns::match_pattern_list;
use super::signature::{decode_ssh_signature, foreign_signature_kind};
use super::signers::{AllowedSigner, AllowedSigners};
use super::{SignerLine, TrustError};

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
const GIT_NAMESPACE: &str = "git";

/// Who signed a verified commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The committer email, which a principal pattern of the key's entry matched.
    pub principal: String,
    /// `SHA256:...`, as ssh-keygen -l prints it.
    pub fingerprint: String,
    /// The SSH key type, e.g. `ssh-ed25519`.
    pub key_type: String,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "good signature for {} with {} key {}",
            self.principal, self.key_type, self.fingerprint
        )
    }
}

/// Verifies the signature of `commit` (a full SHA) in `repo`: an SSH signature in namespace "git"
/// over the commit's signed data, made by a key in `allowed` that is listed for the committer
/// email, allowed for namespace "git", and valid at the committer time. Several entries may list
/// the same key; any one that allows the commit is enough (as for ssh-keygen).
pub fn verify_commit(repo: &Repository, commit: &str, allowed: &AllowedSigners) -> Result<Verified, TrustError> {
    let (oid, committer) = read_commit(repo, commit)?;
    let (signature, signed_data) = ssh_signature(repo, commit, oid)?;
    let signer = check_signature(commit, &signature, &signed_data)?;
    allow_signer(commit, allowed, &signature, signer, committer)
}

/// The committer of a commit: who claims to have made it, and when.
struct Committer {
    email: String,
    /// Seconds since the epoch.
    committed_at: i64,
}

/// The key a signature was made with, as messages name it.
struct SigningKey {
    /// `SHA256:...`.
    fingerprint: String,
    key_type: String,
}

fn read_error(commit: &str, message: impl Into<String>) -> TrustError {
    TrustError::ReadCommit {
        commit: commit.to_string(),
        message: message.into(),
    }
}

/// Finds the commit named by a full id and reads its committer.
fn read_commit(repo: &Repository, commit: &str) -> Result<(Oid, Committer), TrustError> {
    // A short id would be padded with zeros by Oid::from_str; only a full one names one commit.
    if !matches!(commit.len(), 40 | 64) || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(read_error(commit, "not a full commit id (40 or 64 hex digits)"));
    }
    let oid = Oid::from_str(commit).map_err(|e| read_error(commit, e.message()))?;
    let found = repo.find_commit(oid).map_err(|e| read_error(commit, e.message()))?;
    let committer = found.committer();
    Ok((
        oid,
        Committer {
            email: String::from_utf8_lossy(committer.email_bytes()).into_owned(),
            committed_at: committer.when().seconds(),
        },
    ))
}

/// The commit's SSH signature, decoded and made in namespace "git", and the data it signs.
fn ssh_signature(repo: &Repository, commit: &str, oid: Oid) -> Result<(SshSig, git2::Buf), TrustError> {
    let (signature, signed_data) = match repo.extract_signature(&oid, None) {
        Ok(parts) => parts,
        Err(e) if e.code() == ErrorCode::NotFound => {
            return Err(TrustError::Unsigned {
                commit: commit.to_string(),
            })
        }
        Err(e) => return Err(read_error(commit, e.message())),
    };
    let malformed = |message: String| TrustError::MalformedSignature {
        commit: commit.to_string(),
        message,
    };
    let signature = std::str::from_utf8(&signature).map_err(|_| malformed("not UTF-8 text".to_string()))?;
    if let Some(kind) = foreign_signature_kind(signature) {
        return Err(TrustError::NotSsh {
            commit: commit.to_string(),
            kind,
        });
    }
    let signature = decode_ssh_signature(signature).map_err(malformed)?;
    if signature.namespace() != GIT_NAMESPACE {
        return Err(TrustError::SignatureNamespace {
            commit: commit.to_string(),
            namespace: signature.namespace().to_string(),
        });
    }
    Ok((signature, signed_data))
}

/// Checks the signature with the key it carries (whether that key is allowed comes after).
fn check_signature(commit: &str, signature: &SshSig, signed_data: &[u8]) -> Result<SigningKey, TrustError> {
    let signing_key = PublicKey::from(signature.public_key().clone());
    let fingerprint = signing_key.fingerprint(HashAlg::Sha256).to_string();
    let key_type = signing_key.algorithm().as_str().to_string();
    match signing_key.verify(GIT_NAMESPACE, signed_data, signature) {
        Ok(()) => Ok(SigningKey { fingerprint, key_type }),
        Err(ssh_key::Error::AlgorithmUnsupported { algorithm }) => Err(TrustError::UnsupportedKeyType {
            commit: commit.to_string(),
            key_type: algorithm.as_str().to_string(),
            fingerprint,
        }),
        Err(_) => Err(TrustError::BadSignature {
            commit: commit.to_string(),
            fingerprint,
        }),
    }
}

/// Whether an entry of `allowed` lists the signing key for the committer and allows the commit.
fn allow_signer(
    commit: &str,
    allowed: &AllowedSigners,
    signature: &SshSig,
    signer: SigningKey,
    committer: Committer,
) -> Result<Verified, TrustError> {
    let SigningKey { fingerprint, key_type } = signer;
    let Committer { email, committed_at } = committer;
    let listed: Vec<&AllowedSigner> = allowed
        .entries
        .iter()
        .filter(|entry| entry.key.key_data() == signature.public_key())
        .collect();
    if listed.is_empty() {
        return Err(TrustError::KeyNotAllowed {
            commit: commit.to_string(),
            key_type,
            fingerprint,
            file: allowed.file.clone(),
        });
    }
    // Any entry that names the committer and allows the commit is enough (as for ssh-keygen);
    // when all refuse it, the first one's reason is reported.
    let mut first_refusal: Option<(usize, Refusal)> = None;
    for entry in listed
        .iter()
        .filter(|entry| match_pattern_list(&email, &entry.principals))
    {
        match entry_refusal(entry, committed_at) {
            None => {
                return Ok(Verified {
                    principal: email,
                    fingerprint,
                    key_type,
                })
            }
            Some(refusal) => {
                first_refusal.get_or_insert((entry.line, refusal));
            }
        }
    }
    let Some((line, refusal)) = first_refusal else {
        let principals: Vec<&str> = listed.iter().map(|entry| entry.principals.as_str()).collect();
        return Err(TrustError::PrincipalMismatch {
            commit: commit.to_string(),
            fingerprint,
            principals: principals.join(", "),
            email,
        });
    };
    let entry = SignerLine {
        file: allowed.file.clone(),
        line,
    };
    Err(refusal.into_error(commit.to_string(), fingerprint, entry, committed_at))
}

/// Why an entry (whose key and principal match) does not allow a commit.
enum Refusal {
    Namespace(String),
    NotYetValid(String),
    Expired(String),
}

impl Refusal {
    fn into_error(self, commit: String, fingerprint: String, entry: SignerLine, committed_at: i64) -> TrustError {
        match self {
            Refusal::Namespace(namespaces) => TrustError::NamespaceNotAllowed {
                commit,
                fingerprint,
                entry,
                namespaces,
            },
            Refusal::NotYetValid(valid_after) => TrustError::NotYetValid {
                commit,
                fingerprint,
                entry,
                valid_after,
                committed_at,
            },
            Refusal::Expired(valid_before) => TrustError::Expired {
                commit,
                fingerprint,
                entry,
                valid_before,
                committed_at,
            },
        }
    }
}

/// ssh-keygen's order: namespaces, then valid-after, then valid-before (both bounds inclusive).
fn entry_refusal(entry: &AllowedSigner, committed_at: i64) -> Option<Refusal> {
    if let Some(namespaces) = &entry.namespaces {
        if !match_pattern_list(GIT_NAMESPACE, namespaces) {
            return Some(Refusal::Namespace(namespaces.clone()));
        }
    }
    if let Some(after) = &entry.valid_after {
        if committed_at < after.seconds {
            return Some(Refusal::NotYetValid(after.text.clone()));
        }
    }
    if let Some(before) = &entry.valid_before {
        if committed_at > before.seconds {
            return Some(Refusal::Expired(before.text.clone()));
        }
    }
    None
}

#[cfg(test)]
mod tests;
