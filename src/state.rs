//! This host's identity and its state directory (platform conventions: XDG on Linux,
//! `~/Library/Application Support` on macOS).

use std::io;
use std::path::{Path, PathBuf};

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

/// Every path in the state dir, named once: what each module reads and writes there, and the
/// whole list (what an agent must never reach, what a backup takes).
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    root: &'a Path,
}

/// One top-level entry of the state dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: &'static str,
    pub dir: bool,
    /// What it holds, for people.
    pub holds: &'static str,
}

/// The state dir's top-level entries (a file's temporary sibling while it is written atomically
/// is not listed).
pub const ENTRIES: &[Entry] = &[
    Entry {
        name: "lock",
        dir: false,
        holds: "the writer lock (flock), with its holder's pid",
    },
    Entry {
        name: "control.sock",
        dir: false,
        holds: "the daemon's control socket (0600)",
    },
    Entry {
        name: "secret.key",
        dir: false,
        holds: "the key spec fingerprints and agent tokens are derived with",
    },
    Entry {
        name: "truth.db",
        dir: false,
        holds: "the default SQLite truth store",
    },
    Entry {
        name: "truth.db-wal",
        dir: false,
        holds: "the SQLite store's write-ahead log",
    },
    Entry {
        name: "truth.db-shm",
        dir: false,
        holds: "the SQLite store's shared-memory index",
    },
    Entry {
        name: "truth.db.migrate-lock",
        dir: false,
        holds: "serializes the SQLite store's migrations between processes",
    },
    Entry {
        name: "inventory.json",
        dir: false,
        holds: "what this host owns (compacted)",
    },
    Entry {
        name: "inventory.log",
        dir: false,
        holds: "inventory changes since the last compaction",
    },
    Entry {
        name: "spool",
        dir: true,
        holds: "the journal of records not yet in the truth store, and the receipt chain's head",
    },
    Entry {
        name: "spawning",
        dir: false,
        holds: "a spawn not yet recorded in the inventory",
    },
    Entry {
        name: "logs",
        dir: true,
        holds: "services', agents' and launch agents' logs, with their time indexes",
    },
    Entry {
        name: "services",
        dir: true,
        holds: "services' default working directories",
    },
    Entry {
        name: "agents",
        dir: true,
        holds: "agents' enrollments, tokens and effective policies",
    },
    Entry {
        name: "sandboxes",
        dir: true,
        holds: "agents' default sandbox directories",
    },
    Entry {
        name: "policies",
        dir: true,
        holds: "policy versions in force",
    },
    Entry {
        name: "reports",
        dir: true,
        holds: "the Markdown drift reports",
    },
    Entry {
        name: "approvals.json",
        dir: false,
        holds: "gate approvals waiting or decided",
    },
    Entry {
        name: "usage-today.json",
        dir: false,
        holds: "agents' budget use today",
    },
    Entry {
        name: "failures.json",
        dir: false,
        holds: "the last failed action of each resource",
    },
    Entry {
        name: "overrides.json",
        dir: false,
        holds: "services and agents a person stopped",
    },
    Entry {
        name: "last-drift-report.json",
        dir: false,
        holds: "the last stored drift report's fingerprint",
    },
    Entry {
        name: "applied-source.json",
        dir: false,
        holds: "the source in force (repository, path, ref)",
    },
    Entry {
        name: "in-force-commit",
        dir: false,
        holds: "the commit in force",
    },
    Entry {
        name: "launch-agents.json",
        dir: false,
        holds: "the launch agents this host owns and their runs",
    },
    Entry {
        name: "launch-agents",
        dir: true,
        holds: "launch agents' default working directories",
    },
];

impl<'a> Layout<'a> {
    pub fn of(root: &'a Path) -> Layout<'a> {
        Layout { root }
    }

    pub fn root(&self) -> &Path {
        self.root
    }

    fn entry(&self, name: &'static str) -> PathBuf {
        debug_assert!(ENTRIES.iter().any(|e| e.name == name), "{name} is not in ENTRIES");
        self.root.join(name)
    }

    pub fn lock(&self) -> PathBuf {
        self.entry("lock")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.entry("control.sock")
    }
    pub fn secret_key(&self) -> PathBuf {
        self.entry("secret.key")
    }
    pub fn truth_db(&self) -> PathBuf {
        self.entry("truth.db")
    }
    pub fn inventory(&self) -> PathBuf {
        self.entry("inventory.json")
    }
    pub fn inventory_log(&self) -> PathBuf {
        self.entry("inventory.log")
    }
    pub fn spool(&self) -> PathBuf {
        self.entry("spool")
    }
    pub fn spawning(&self) -> PathBuf {
        self.entry("spawning")
    }
    pub fn logs(&self) -> PathBuf {
        self.entry("logs")
    }
    /// A service's log (`NAME.log`); an agent's is `agent-NAME.log` (see [`Layout::agent_log`]).
    pub fn service_log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    /// An agent's log: apart from a service's of the same name.
    pub fn agent_log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("agent-{name}.log"))
    }
    pub fn service_dir(&self, name: &str) -> PathBuf {
        self.entry("services").join(name)
    }
    pub fn agents(&self) -> PathBuf {
        self.entry("agents")
    }
    pub fn agent(&self, name: &str) -> PathBuf {
        self.agents().join(name)
    }
    pub fn sandbox(&self, name: &str) -> PathBuf {
        self.entry("sandboxes").join(name)
    }
    pub fn policy(&self, name: &str) -> PathBuf {
        self.entry("policies").join(format!("{name}.json"))
    }
    pub fn reports(&self) -> PathBuf {
        self.entry("reports")
    }
    pub fn approvals(&self) -> PathBuf {
        self.entry("approvals.json")
    }
    pub fn usage_today(&self) -> PathBuf {
        self.entry("usage-today.json")
    }
    pub fn failures(&self) -> PathBuf {
        self.entry("failures.json")
    }
    pub fn overrides(&self) -> PathBuf {
        self.entry("overrides.json")
    }
    pub fn last_drift_report(&self) -> PathBuf {
        self.entry("last-drift-report.json")
    }
    pub fn applied_source(&self) -> PathBuf {
        self.entry("applied-source.json")
    }
    pub fn in_force_commit(&self) -> PathBuf {
        self.entry("in-force-commit")
    }
    pub fn launch_agents_state(&self) -> PathBuf {
        self.entry("launch-agents.json")
    }
    /// A launch agent's log (`NAME.log`, beside the services' logs).
    pub fn launch_agent_log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    pub fn launch_agent_dir(&self, name: &str) -> PathBuf {
        self.entry("launch-agents").join(name)
    }
}

/// The state dir's writer lock (`<state dir>/lock`, an exclusive `flock`): one pass at a time
/// writes the inventory and the journal. Released when dropped (or when the process dies).
pub struct StateLock {
    _file: std::fs::File,
}

/// Takes the writer lock, waiting for another mirrorctl that holds it (said on stderr, with its
/// pid, and again every [`STILL_WAITING_EVERY`]).
pub fn lock_state_dir(state_dir: &std::path::Path) -> std::io::Result<StateLock> {
    lock_state_dir_unless(state_dir, &|| false)
}

/// `<state dir>/lock`, made with the state dir if need be (never truncated: it names its holder).
fn open_lock_file(state_dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(state_dir)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(Layout::of(state_dir).lock())
}

/// What the lock file says of its holder (`PID` or `PID daemon`).
fn holder_of(file: &mut std::fs::File) -> String {
    let mut holder = String::new();
    let _ = std::io::Read::read_to_string(file, &mut holder);
    holder
}

/// How often a wait for the lock says it is still waiting.
const STILL_WAITING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// [`lock_state_dir`], giving up (an `Interrupted` error) when `give_up` says so: a Ctrl-C while
/// waiting ends the wait, which a blocking `flock` (restarted after the signal) would not.
pub fn lock_state_dir_unless(state_dir: &std::path::Path, give_up: &dyn Fn() -> bool) -> std::io::Result<StateLock> {
    use rustix::fs::{flock, FlockOperation};
    use std::io::{Seek, Write};

    let mut file = open_lock_file(state_dir)?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = holder_of(&mut file);
        let pid = holder.split_whitespace().next().unwrap_or("?").to_string();
        eprintln!(
            "mirrorctl: waiting for another mirrorctl (pid {pid}) to finish with {}",
            state_dir.display()
        );
        let began = std::time::Instant::now();
        let mut said = began;
        // Polled: the wait is rare (two writers at once) and must notice `give_up`.
        while flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            if give_up() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    format!("interrupted while waiting for another mirrorctl (pid {pid}) to finish; nothing was done"),
                ));
            }
            if said.elapsed() >= STILL_WAITING_EVERY {
                said = std::time::Instant::now();
                eprintln!(
                    "mirrorctl: still waiting for pid {pid} ({} s)",
                    began.elapsed().as_secs()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(StateLock { _file: file })
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("held by a mirrorctl daemon (pid {pid})")]
    Held { pid: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Takes the writer lock for a daemon's whole life. Another daemon holding it is an error naming
/// its pid; a one-shot pass holding it is waited for. The lock file says `PID daemon`.
pub fn lock_state_dir_for_daemon(state_dir: &std::path::Path) -> Result<StateLock, LockError> {
    use rustix::fs::{flock, FlockOperation};
    use std::io::{Seek, Write};

    let mut file = open_lock_file(state_dir)?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = holder_of(&mut file);
        let mut words = holder.split_whitespace();
        let pid = words.next().unwrap_or("?").to_string();
        if words.next() == Some("daemon") {
            // A daemon that was just killed can leave its lock, for a moment, with a child it
            // was starting (forked, not yet exec'd): wait for that instead of refusing.
            let gone = pid
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|p| rustix::process::test_kill_process(p).is_err());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                if gone && flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
                    break;
                }
                if !gone || std::time::Instant::now() >= deadline {
                    return Err(LockError::Held { pid });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{} daemon", std::process::id())?;
            file.sync_all()?;
            return Ok(StateLock { _file: file });
        }
        eprintln!(
            "mirrorctl: waiting for another mirrorctl (pid {pid}) to finish with {}",
            state_dir.display()
        );
        flock(&file, FlockOperation::LockExclusive).map_err(std::io::Error::from)?;
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{} daemon", std::process::id())?;
    file.sync_all()?;
    Ok(StateLock { _file: file })
}

/// Writes `path` with mode 0600 from creation (never wider), atomically and durably: a reader
/// sees the old or the new content; errors name the file.
pub fn write_private_file(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::fs::{self, File, OpenOptions};
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    let at = |path: &Path, error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", path.display()));
    // Unique per call: two writers of the same report must not share a temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(
        ".{file_name}.{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(content)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(at(&temp, e));
    }
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(at(path, e));
    }
    // The rename is durable only once the directory entry is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| at(dir, e))
}
