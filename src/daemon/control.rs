//! The control socket: while the daemon runs, one-shot commands (`reconcile`, `status`,
//! `drift report`) ask it instead of racing it for the state dir. One JSON line in; out, any
//! progress lines (`{"progress": ...}`: a pass's actions as they start and end), then one JSON
//! line with the answer, over `<state dir>/control.sock` (mode 0600: only this user may drive
//! the host).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Where the desired state is read from, as the asking command was told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRequest {
    pub repo: PathBuf,
    pub path: PathBuf,
    pub reference: String,
    pub worktree: bool,
}

/// What a command asks the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Reconcile {
        dry_run: bool,
        allow_mass_prune: bool,
        verbose: bool,
        json: bool,
        color: bool,
        source: SourceRequest,
    },
    Status {
        json: bool,
        source: SourceRequest,
    },
    DriftReport {
        json: bool,
        source: SourceRequest,
    },
    /// A person's `stop|start|restart NAME`; `by` is filled in from the socket's peer.
    Operate {
        name: String,
        verb: crate::reconcile::overrides::Verb,
        by: String,
        json: bool,
    },
    /// Tool-gate requests waiting for a person.
    GatePending {
        json: bool,
    },
    /// A person's decision on one of them.
    GateDecide {
        id: String,
        approve: bool,
        by: String,
        json: bool,
    },
}

/// What the command prints, and its exit code: the daemon renders exactly what the command
/// would have printed running alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub exit_code: u8,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "{path}: the control socket's path is {len} bytes; Unix sockets allow at most 107: use a shorter --state-dir"
    )]
    PathTooLong { path: PathBuf, len: usize },
    #[error("{path}: binding the control socket: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("{path}: talking to the daemon: {source}")]
    Exchange { path: PathBuf, source: std::io::Error },
    #[error("{path}: the daemon's answer is not understood ({source}); is it another mirrorctl version?")]
    Answer { path: PathBuf, source: serde_json::Error },
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    crate::state::Layout::of(state_dir).control_socket()
}

/// How long a command waits for the daemon's answer (a pass may stop services with long grace
/// periods).
const ANSWER_WAIT: Duration = Duration::from_secs(600);

/// How long the daemon waits for a connection's request line.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// Asks the daemon, if one listens on the state dir's socket: `Ok(None)` when none does (no
/// socket, or a stale one nobody accepts on), and the command runs on its own.
pub fn ask(state_dir: &Path, request: &Request) -> Result<Option<Response>, ControlError> {
    ask_reporting(state_dir, request, &mut |_| {})
}

/// [`ask`], handing each progress line the daemon sends before its answer to `progress`.
pub fn ask_reporting(
    state_dir: &Path,
    request: &Request,
    progress: &mut dyn FnMut(String),
) -> Result<Option<Response>, ControlError> {
    let path = socket_path(state_dir);
    let exchange = |source| ControlError::Exchange {
        path: path.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(exchange(e)),
    };
    stream.set_read_timeout(Some(ANSWER_WAIT)).map_err(exchange)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(exchange)?;
    let mut reader = BufReader::new(&stream);
    loop {
        let mut answer = String::new();
        reader.read_line(&mut answer).map_err(exchange)?;
        if answer.is_empty() {
            return Err(exchange(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection without answering (is it shutting down?)",
            )));
        }
        if let Ok(line) = serde_json::from_str::<Progress>(&answer) {
            progress(line.progress);
            continue;
        }
        return serde_json::from_str(&answer)
            .map(Some)
            .map_err(|source| ControlError::Answer { path, source });
    }
}

/// Told of every connection refused because it came from an agent (records a receipt).
pub type Refused = std::sync::Arc<dyn Fn(&super::peer::Peer, &super::peer::AgentPeer) + Send + Sync>;

/// A request and where its answer goes.
pub type Asked = (Request, Reply);

/// Where a request's answer goes, and its progress lines before it (a pass through the daemon
/// says each action as it starts and ends, as a one-shot pass does on a terminal).
#[derive(Debug)]
pub struct Reply {
    answer: oneshot::Sender<Response>,
    pub progress: mpsc::UnboundedSender<String>,
}

impl Reply {
    pub fn new() -> (Reply, oneshot::Receiver<Response>, mpsc::UnboundedReceiver<String>) {
        let (answer, answered) = oneshot::channel();
        let (progress, lines) = mpsc::unbounded_channel();
        (Reply { answer, progress }, answered, lines)
    }

    /// The answer (the last line the command reads).
    pub fn send(self, response: Response) -> Result<(), Response> {
        self.answer.send(response)
    }
}

/// A progress line on the socket, before the answer: `{"progress": "..."}`.
#[derive(Serialize, Deserialize)]
struct Progress {
    progress: String,
}

/// Binds the socket with mode 0600 from the start (bound under a temporary name, restricted,
/// then renamed into place, so it is never reachable with a wider mode). Call only while
/// holding the state dir's daemon lock: a leftover socket is removed.
pub fn bind(state_dir: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    let path = socket_path(state_dir);
    let len = path.as_os_str().len();
    if len > 107 {
        return Err(ControlError::PathTooLong { path, len });
    }
    let bind_error = |source| ControlError::Bind {
        path: path.clone(),
        source,
    };
    let staging = state_dir.join(format!(".control.{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = tokio::net::UnixListener::bind(&staging).map_err(bind_error)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    std::fs::rename(&staging, &path).map_err(bind_error)?;
    Ok(listener)
}

/// Accepts connections and hands each request to the event loop; runs until the listener
/// fails or the loop is gone.
///
/// The socket answers people, not agents: a connection from a process of an agent (see
/// `daemon::peer`) is refused with a clear error and `refused` is told (a receipt); its request
/// line is read (within 10 s) but never acted on. A gate decision is recorded as made by the peer's user, whatever the
/// request says.
pub async fn serve(listener: tokio::net::UnixListener, requests: mpsc::UnboundedSender<Asked>, refused: Refused) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let requests = requests.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let peer = stream.peer_cred().ok().map(|cred| super::peer::Peer {
                pid: cred.pid(),
                uid: cred.uid(),
            });
            let (read, mut write) = stream.into_split();
            // The request line first (bounded in time), also from a peer about to be refused:
            // a client whose request is not read sees a broken pipe instead of the refusal.
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read);
            let reading = reader.read_line(&mut line);
            if !matches!(tokio::time::timeout(REQUEST_WAIT, reading).await, Ok(Ok(_))) {
                return;
            }
            if let Some((peer, agent)) = peer.as_ref().and_then(|p| super::peer::agent_of(p).map(|a| (p, a))) {
                refused(peer, &agent);
                let response = Response {
                    exit_code: 1,
                    stdout: String::new(),
                    stderr: format!(
                        "mirrorctl: error: the control socket answers people, not agents: {}\n",
                        agent.evidence
                    ),
                };
                let mut answer = serde_json::to_string(&response).expect("responses serialize");
                answer.push('\n');
                let _ = write.write_all(answer.as_bytes()).await;
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(mut request) => {
                    if let Request::GateDecide { by, .. } | Request::Operate { by, .. } = &mut request {
                        *by = peer
                            .as_ref()
                            .map_or_else(|| "unknown peer".to_string(), |p| p.describe());
                    }
                    let (reply, mut answered, mut lines) = Reply::new();
                    if requests.send((request, reply)).is_err() {
                        return;
                    }
                    // Progress lines as they come, then the answer.
                    loop {
                        tokio::select! {
                            answer = &mut answered => match answer {
                                Ok(response) => break response,
                                Err(_) => return,
                            },
                            Some(progress) = lines.recv() => {
                                let mut text = serde_json::to_string(&Progress { progress }).expect("progress serializes");
                                text.push('\n');
                                if write.write_all(text.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(e) => Response {
                    exit_code: 1,
                    stdout: String::new(),
                    stderr: format!("mirrorctl: error: the daemon does not understand this request: {e}\n"),
                },
            };
            let mut answer = serde_json::to_string(&response).expect("responses serialize");
            answer.push('\n');
            let _ = write.write_all(answer.as_bytes()).await;
        });
    }
}
