//! A small builder that runs the real `mirrorctl` binary against a real git repository in a
//! temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use git2::{Repository, RepositoryInitOptions, Signature};

/// A scratch git repository with its own state dir and an isolated HOME.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// What a run of the binary printed, and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl Sandbox {
    /// An empty git repository (no commits), branch `main`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("repo")).unwrap();
        let mut options = RepositoryInitOptions::new();
        options.initial_head("main");
        Repository::init_opts(dir.path().join("repo"), &options).expect("git init");
        Sandbox { dir }
    }

    /// A directory with nothing in it (not a repository).
    pub fn bare_dir() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Sandbox { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Writes a file in the working tree (not committed).
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) -> &Self {
        let full = self.repo().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.repo().join(path)).unwrap();
        self
    }

    /// Stages everything in the working tree (deletions too) and commits; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        let repo = Repository::open(self.repo()).unwrap();
        let mut index = repo.index().unwrap();
        index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let signature = Signature::now("test", "test@localhost").unwrap();
        let parents: Vec<git2::Commit> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(Some("HEAD"), &signature, &signature, message, &tree, &parents)
            .unwrap()
            .to_string()
    }

    pub fn tag(&self, name: &str) {
        let repo = Repository::open(self.repo()).unwrap();
        let head = repo.head().unwrap().peel_to_commit().unwrap();
        repo.tag_lightweight(name, head.as_object(), false).unwrap();
    }

    /// A command for the real binary, run in the repository with an isolated HOME and state dir.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mirrorctl"));
        command
            .args(args)
            .current_dir(if self.repo().exists() {
                self.repo()
            } else {
                self.root().to_path_buf()
            })
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root().join("home"))
            .env("MIRROR_STATE_DIR", self.root().join("state"));
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.cmd(args).output().expect("run mirrorctl");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The project's own files, e.g. `desired/`.
pub fn project_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Copies every file of a project directory into the sandbox's working tree under `to`.
pub fn copy_dir(sandbox: &Sandbox, from: &Path, to: &str) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = if to.is_empty() {
            name.clone()
        } else {
            format!("{to}/{name}")
        };
        if entry.file_type().unwrap().is_dir() {
            copy_dir(sandbox, &entry.path(), &target);
        } else {
            sandbox.write(&target, std::fs::read(entry.path()).unwrap());
        }
    }
}

/// Runs each async test function (taking a `TestDb`) once on SQLite and once on PostgreSQL
/// (skipped, with a note, when no PostgreSQL test server is configured).
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::store_contract::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(mirror_ci_parts), ignore = "needs PostgreSQL: MIRROR_TEST_POSTGRES_URL (scripts/throwaway-postgres start; .ci/run provides it)")]
                async fn $test() {
                    super::$test(crate::store_contract::TestDb::postgres().await).await;
                }
            )*
        }
    };
}

/// Kills every process working in this sandbox (the daemon runs in its repository, services in
/// its state dir), whatever happens in the test.
pub(crate) struct Cleanup(pub(crate) PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for _ in 0..3 {
            for pid in working_in(&self.0) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Processes whose working directory is under `root`.
pub(crate) fn working_in(root: &std::path::Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|cwd| cwd.starts_with(root))
                .unwrap_or(false)
        })
        .collect()
}

pub(crate) fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads lines of a child's output into `seen` until it holds `what` (fails at the end of the
/// output).
pub(crate) fn read_until(output: &mut dyn std::io::BufRead, seen: &mut String, what: &str) {
    while !seen.contains(what) {
        let mut line = String::new();
        assert!(output.read_line(&mut line).unwrap() > 0, "no `{what}`: {seen}");
        seen.push_str(&line);
    }
}
