//! Verification tests: commits signed by the real git and ssh-keygen, checked here and by
//! `ssh-keygen -Y verify`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use git2::{Oid, Repository};

use super::*;
use crate::source::trust::signers::tests::{line_of, FIXED_KEY};

/// The committer (and author) time of every test commit: 2024-06-01 12:00:00 UTC.
const COMMITTED_AT: i64 = 1_717_243_200;
const ALICE: &str = "alice@example.com";

/// A temp dir with a git repository and keys; git and ssh-keygen run isolated from the
/// machine's configuration and ssh-agent.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let sandbox = Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        sandbox.git(&["init", "-q", "repo"], sandbox.dir.path());
        sandbox
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn repo(&self) -> Repository {
        Repository::open(self.path("repo")).expect("open repo")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.dir.path().join("gitconfig"))
            .env_remove("GIT_CONFIG_PARAMETERS")
            .env_remove("GIT_CONFIG_COUNT")
            .env("GIT_AUTHOR_DATE", format!("{COMMITTED_AT} +0000"))
            .env("GIT_COMMITTER_DATE", format!("{COMMITTED_AT} +0000"))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE");
        command
    }

    fn run(&self, mut command: Command) -> String {
        let output = command
            .output()
            .expect("run (git and ssh-keygen are needed for these tests)");
        assert!(
            output.status.success(),
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn git(&self, args: &[&str], dir: &Path) -> String {
        let mut command = self.command("git");
        command.args(args).current_dir(dir);
        self.run(command)
    }

    /// A new key pair (`ssh-keygen -t TYPE`); returns the private key's path.
    fn key(&self, name: &str, key_type: &[&str]) -> PathBuf {
        let path = self.path(name);
        let mut command = self.command("ssh-keygen");
        command
            .args(["-q", "-N", "", "-C", name, "-t"])
            .args(key_type)
            .arg("-f")
            .arg(&path);
        self.run(command);
        path
    }

    fn public_key(&self, key: &Path) -> String {
        std::fs::read_to_string(key.with_extension("pub"))
            .expect("read public key")
            .trim()
            .to_string()
    }

    /// The SHA256 fingerprint as `ssh-keygen -l` prints it.
    fn fingerprint(&self, key: &Path) -> String {
        let mut command = self.command("ssh-keygen");
        command.arg("-lf").arg(key.with_extension("pub"));
        let line = self.run(command);
        line.split_whitespace().nth(1).expect("fingerprint field").to_string()
    }

    /// A commit by `email` on the current branch, signed by `key` with the real git CLI.
    fn commit(&self, key: Option<&Path>, email: &str, message: &str) -> String {
        let repo = self.path("repo");
        let email_config = format!("user.email={email}");
        let mut args = vec![
            "-c",
            "user.name=Test",
            "-c",
            &email_config,
            "-c",
            "commit.gpgsign=false",
            "-c",
            "gpg.format=ssh",
        ];
        let signing_key;
        if let Some(key) = key {
            signing_key = format!("user.signingkey={}", key.with_extension("pub").display());
            args.extend(["-c", &signing_key]);
        }
        args.extend(["commit", "-q", "--allow-empty", "-m", message]);
        if key.is_some() {
            args.push("-S");
        }
        self.git(&args, &repo);
        self.git(&["rev-parse", "HEAD"], &repo)
    }

    /// Writes `text` as `allowed_signers` and loads it.
    fn allowed(&self, text: &str) -> AllowedSigners {
        let path = self.path("allowed_signers");
        std::fs::write(&path, text).expect("write allowed signers");
        AllowedSigners::load(&path).expect("allowed signers")
    }

    /// Whether `ssh-keygen -Y verify` (what git runs) accepts the commit's signature for
    /// `principal` with the `allowed_signers` written last.
    fn ssh_keygen_accepts(&self, commit: &str, principal: &str) -> bool {
        let repo = self.repo();
        let oid = Oid::from_str(commit).expect("oid");
        let (signature, data) = repo.extract_signature(&oid, None).expect("signed commit");
        let signature_path = self.path("commit.sig");
        std::fs::write(&signature_path, &*signature).expect("write signature");
        let mut command = self.command("ssh-keygen");
        command
            .args(["-Y", "verify", "-n", "git", "-I", principal, "-f"])
            .arg(self.path("allowed_signers"))
            .arg("-s")
            .arg(&signature_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("ssh-keygen");
        child.stdin.take().expect("stdin").write_all(&data).expect("write data");
        child.wait().expect("wait for ssh-keygen").success()
    }

    /// A commit object with `signature` in its gpgsig header, written with git2.
    fn commit_with_signature(&self, signature: &str) -> String {
        let repo = self.repo();
        let content = self.unsigned_content(&repo);
        repo.commit_signed(&content, signature, None)
            .expect("commit_signed")
            .to_string()
    }

    fn unsigned_content(&self, repo: &Repository) -> String {
        let tree_id = repo.treebuilder(None).and_then(|b| b.write()).expect("empty tree");
        let tree = repo.find_tree(tree_id).expect("tree");
        let person = git2::Signature::new("Test", ALICE, &git2::Time::new(COMMITTED_AT, 0)).expect("signature");
        let buffer = repo
            .commit_create_buffer(&person, &person, "crafted\n", &tree, &[])
            .expect("commit buffer");
        String::from_utf8(buffer.to_vec()).expect("utf-8 commit")
    }
}

#[test]
fn good_signature_verifies_with_principal_and_fingerprint() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let commit = sandbox.commit(Some(&key), ALICE, "signed");
    let allowed = sandbox.allowed(&format!("# the team\n\n{}", line_of(ALICE, &sandbox.public_key(&key))));

    let verified = verify_commit(&sandbox.repo(), &commit, &allowed).expect("verifies");
    assert_eq!(
        verified,
        Verified {
            principal: ALICE.to_string(),
            fingerprint: sandbox.fingerprint(&key),
            key_type: "ssh-ed25519".to_string(),
        }
    );
    assert!(verified.fingerprint.starts_with("SHA256:"));
    assert!(sandbox.ssh_keygen_accepts(&commit, ALICE), "ssh-keygen agrees");
}

#[test]
fn rsa_signature_verifies() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice-rsa", &["rsa", "-b", "2048"]);
    let commit = sandbox.commit(Some(&key), ALICE, "signed with rsa");
    let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));

    let verified = verify_commit(&sandbox.repo(), &commit, &allowed).expect("verifies");
    assert_eq!(verified.key_type, "ssh-rsa");
    assert_eq!(verified.fingerprint, sandbox.fingerprint(&key));
    assert!(sandbox.ssh_keygen_accepts(&commit, ALICE));
}

#[test]
fn ecdsa_signatures_verify() {
    for bits in ["256", "384", "521"] {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice-ecdsa", &["ecdsa", "-b", bits]);
        let commit = sandbox.commit(Some(&key), ALICE, "signed with ecdsa");
        let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));
        let verified = verify_commit(&sandbox.repo(), &commit, &allowed).expect("verifies");
        assert_eq!(verified.key_type, format!("ecdsa-sha2-nistp{bits}"));
        assert_eq!(verified.fingerprint, sandbox.fingerprint(&key));
    }
}

#[test]
fn unsigned_commit_is_refused() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let commit = sandbox.commit(None, ALICE, "unsigned");
    let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));

    let error = verify_commit(&sandbox.repo(), &commit, &allowed).unwrap_err();
    assert!(matches!(error, TrustError::Unsigned { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "commit {}: not signed; expected an SSH signature (git commit -S with gpg.format=ssh)",
            &commit[..12]
        )
    );
}

#[test]
fn key_not_in_allowed_signers_is_refused_naming_its_fingerprint() {
    let sandbox = Sandbox::new();
    let alice = sandbox.key("alice", &["ed25519"]);
    let mallory = sandbox.key("mallory", &["ed25519"]);
    let commit = sandbox.commit(Some(&mallory), ALICE, "signed by someone else");
    let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&alice)));

    let error = verify_commit(&sandbox.repo(), &commit, &allowed).unwrap_err();
    let fingerprint = sandbox.fingerprint(&mallory);
    assert!(
        matches!(&error, TrustError::KeyNotAllowed { fingerprint: f, .. } if *f == fingerprint),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&fingerprint), "{message}");
    assert!(message.contains("allowed_signers"), "{message}");
    assert!(!sandbox.ssh_keygen_accepts(&commit, ALICE));
}

#[test]
fn tampered_commit_does_not_verify() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let commit = sandbox.commit(Some(&key), ALICE, "deploy v1");
    sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));
    let repo = sandbox.repo();

    // Same object, gpgsig header kept, message changed: what an attacker with push access could write.
    let odb = repo.odb().expect("odb");
    let original = odb.read(Oid::from_str(&commit).expect("oid")).expect("read commit");
    let text = std::str::from_utf8(original.data()).expect("utf-8 commit");
    assert!(text.contains("-----BEGIN SSH SIGNATURE-----"));
    let tampered_text = text.replace("deploy v1", "deploy v2");
    let tampered = odb
        .write(git2::ObjectType::Commit, tampered_text.as_bytes())
        .expect("write tampered commit")
        .to_string();
    assert_ne!(tampered, commit);

    let allowed = AllowedSigners::load(&sandbox.path("allowed_signers")).expect("allowed");
    let error = verify_commit(&repo, &tampered, &allowed).unwrap_err();
    assert!(matches!(error, TrustError::BadSignature { .. }), "{error:?}");
    assert!(error.to_string().contains("changed after signing"), "{error}");
    assert!(
        verify_commit(&repo, &commit, &allowed).is_ok(),
        "the original still verifies"
    );
    assert!(sandbox.ssh_keygen_accepts(&commit, ALICE));
    assert!(
        !sandbox.ssh_keygen_accepts(&tampered, ALICE),
        "ssh-keygen agrees: tampered"
    );
}

#[test]
fn namespaces_must_allow_git() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let public = sandbox.public_key(&key);
    let commit = sandbox.commit(Some(&key), ALICE, "signed");
    let repo = sandbox.repo();

    let file_only = sandbox.allowed(&line_of(&format!("{ALICE} namespaces=\"file\""), &public));
    let error = verify_commit(&repo, &commit, &file_only).unwrap_err();
    assert!(
        matches!(&error, TrustError::NamespaceNotAllowed { namespaces, entry, .. } if namespaces == "file" && entry.line == 1),
        "{error:?}"
    );
    assert!(error.to_string().contains("allowed_signers:1"), "{error}");
    assert!(!sandbox.ssh_keygen_accepts(&commit, ALICE), "ssh-keygen agrees");

    // Another entry for the same key that allows git is enough, as for ssh-keygen.
    let two_entries = sandbox.allowed(&format!(
        "{}{}",
        line_of(&format!("{ALICE} namespaces=\"file\""), &public),
        line_of(&format!("{ALICE} NAMESPACES=\"file,g?t\""), &public)
    ));
    assert!(verify_commit(&repo, &commit, &two_entries).is_ok());
    assert!(sandbox.ssh_keygen_accepts(&commit, ALICE), "ssh-keygen agrees");
}

#[test]
fn validity_window_must_contain_the_commit_time() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let public = sandbox.public_key(&key);
    let commit = sandbox.commit(Some(&key), ALICE, "signed 2024-06-01");
    let repo = sandbox.repo();
    let with = |options: &str| AllowedSigners::parse(&line_of(&format!("{ALICE} {options}"), &public)).expect("parse");

    let error = verify_commit(&repo, &commit, &with("valid-before=\"20240101Z\"")).unwrap_err();
    assert!(matches!(error, TrustError::Expired { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("committed 2024-06-01 12:00:00 UTC"), "{message}");
    assert!(message.contains("valid-before=\"20240101Z\""), "{message}");
    assert!(message.contains("allowed signers line 1"), "{message}");

    let error = verify_commit(&repo, &commit, &with("valid-after=\"20250101Z\"")).unwrap_err();
    assert!(matches!(error, TrustError::NotYetValid { .. }), "{error:?}");

    let window = with("valid-after=\"20240101Z\",valid-before=\"202406011200Z\"");
    assert!(
        verify_commit(&repo, &commit, &window).is_ok(),
        "both bounds are inclusive"
    );
    let error = verify_commit(&repo, &commit, &with("valid-before=\"20240601115959Z\"")).unwrap_err();
    assert!(matches!(error, TrustError::Expired { .. }), "{error:?}");
}

#[test]
fn principal_patterns_match_the_committer_email() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let public = sandbox.public_key(&key);
    let commit = sandbox.commit(Some(&key), ALICE, "signed");
    let repo = sandbox.repo();

    let wildcard = AllowedSigners::parse(&line_of("*@example.com", &public)).expect("parse");
    let verified = verify_commit(&repo, &commit, &wildcard).expect("wildcard matches");
    assert_eq!(verified.principal, ALICE);

    let quoted = AllowedSigners::parse(&line_of("\"bob@example.com,alice@example.???\"", &public)).expect("parse");
    assert_eq!(
        verify_commit(&repo, &commit, &quoted).expect("matches").principal,
        ALICE
    );

    let negated = AllowedSigners::parse(&line_of("!alice@example.com,*@example.com", &public)).expect("parse");
    let error = verify_commit(&repo, &commit, &negated).unwrap_err();
    assert!(matches!(error, TrustError::PrincipalMismatch { .. }), "{error:?}");
}

#[test]
fn committer_email_not_listed_for_the_key_is_refused() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let commit = sandbox.commit(Some(&key), "bob@example.com", "alice's key, bob's name");
    let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));

    let error = verify_commit(&sandbox.repo(), &commit, &allowed).unwrap_err();
    assert!(matches!(error, TrustError::PrincipalMismatch { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("is allowed only for alice@example.com, not for committer email bob@example.com"),
        "{message}"
    );
}

#[test]
fn gpg_and_x509_signatures_are_not_supported() {
    let sandbox = Sandbox::new();
    let allowed = AllowedSigners::parse(&line_of(ALICE, FIXED_KEY)).expect("parse");
    let repo = sandbox.repo();

    let pgp = sandbox.commit_with_signature(
        "-----BEGIN PGP SIGNATURE-----\n\niHUEABYKAB0WIQQ=\n=abcd\n-----END PGP SIGNATURE-----\n",
    );
    let error = verify_commit(&repo, &pgp, &allowed).unwrap_err();
    assert!(matches!(error, TrustError::NotSsh { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("OpenPGP"), "{message}");
    assert!(message.contains("only SSH signatures are supported"), "{message}");

    let x509 = sandbox.commit_with_signature("-----BEGIN SIGNED MESSAGE-----\nMIAG\n-----END SIGNED MESSAGE-----\n");
    let error = verify_commit(&repo, &x509, &allowed).unwrap_err();
    assert!(error.to_string().contains("X.509"), "{error}");
}

#[test]
fn malformed_ssh_signatures_are_reported() {
    let sandbox = Sandbox::new();
    let allowed = AllowedSigners::parse(&line_of(ALICE, FIXED_KEY)).expect("parse");
    let repo = sandbox.repo();
    for signature in [
        "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n",
        "-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n",
        "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n",
        "-----BEGIN SSH SIGNATURE-----\n!!!\n-----END SSH SIGNATURE-----\n",
    ] {
        let commit = sandbox.commit_with_signature(signature);
        let error = verify_commit(&repo, &commit, &allowed).unwrap_err();
        assert!(
            matches!(error, TrustError::MalformedSignature { .. }),
            "{signature}: {error:?}"
        );
    }
}

#[test]
fn signature_for_another_namespace_is_refused() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let allowed = AllowedSigners::parse(&line_of(ALICE, &sandbox.public_key(&key))).expect("parse");
    let repo = sandbox.repo();

    // The commit's exact content, signed with `ssh-keygen -Y sign -n file` instead of git's namespace.
    let content = sandbox.unsigned_content(&repo);
    let content_path = sandbox.path("content");
    std::fs::write(&content_path, &content).expect("write content");
    let mut command = sandbox.command("ssh-keygen");
    command
        .args(["-q", "-Y", "sign", "-n", "file", "-f"])
        .arg(&key)
        .arg(&content_path);
    sandbox.run(command);
    let signature = std::fs::read_to_string(sandbox.path("content.sig")).expect("signature");
    let commit = repo
        .commit_signed(&content, &signature, None)
        .expect("commit")
        .to_string();

    let error = verify_commit(&repo, &commit, &allowed).unwrap_err();
    assert!(
        matches!(&error, TrustError::SignatureNamespace { namespace, .. } if namespace == "file"),
        "{error:?}"
    );
    assert!(error.to_string().contains("must use namespace \"git\""), "{error}");
}

#[test]
fn commit_ids_must_be_full_and_present() {
    let sandbox = Sandbox::new();
    let key = sandbox.key("alice", &["ed25519"]);
    let commit = sandbox.commit(Some(&key), ALICE, "signed");
    let allowed = AllowedSigners::parse(&line_of(ALICE, &sandbox.public_key(&key))).expect("parse");
    let repo = sandbox.repo();
    for id in [
        &commit[..12],
        "HEAD",
        "",
        "0000000000000000000000000000000000000000",
        "é",
    ] {
        let error = verify_commit(&repo, id, &allowed).unwrap_err();
        assert!(matches!(error, TrustError::ReadCommit { .. }), "{id}: {error:?}");
    }
}
