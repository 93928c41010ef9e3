//! The command line: global options (DESIGN.md §4), one file per command, exit codes.

mod audit;
mod completions;
mod crds;
mod drift;
pub mod gate;
mod init;
mod logs;
mod memory;
mod operate;
mod reconcile;
mod run;
mod sandbox_exec;
pub mod source;
mod status;
mod status_detail;
mod status_fleet;
mod validate;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::reconcile::overrides::Verb;
use crate::source::SourceOptions;
use crate::spec::common::ByteSize;
use crate::store::{StoreError, StoreUrl};

#[derive(Debug, Parser)]
#[command(
    name = "mirrorctl",
    version,
    about = "GitOps for a sovereign, local-first AI host: commit the desired state, mirrorctl makes the host match it."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after the command, each also from the environment. Listed under
/// their own heading in every command's help, apart from the command's own options.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The git repository holding the desired state [default: the source in force on this host
    /// (the daemon's, or the one last applied), or the repository around the current directory]
    #[arg(long, global = true, env = "MIRROR_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// The desired state's directory inside the repository [default: the source in force's, or
    /// where you stand in the repository]
    #[arg(long, global = true, env = "MIRROR_PATH", value_name = "SUBDIR")]
    pub path: Option<PathBuf>,
    /// Branch, tag or commit to read [default: HEAD]
    #[arg(long = "ref", global = true, env = "MIRROR_REF", value_name = "REF")]
    pub reference: Option<String>,
    /// Read uncommitted files from the working tree (preview only; never applied)
    #[arg(long, global = true)]
    pub worktree: bool,
    /// Truth store: sqlite://FILE or postgres://... [default: sqlite://<state dir>/truth.db]
    #[arg(long, global = true, env = "MIRROR_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// State directory [default: $XDG_STATE_HOME/mirrorctl or ~/.local/state/mirrorctl]
    #[arg(long, global = true, env = "MIRROR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Largest desired-state file read
    #[arg(
        long,
        global = true,
        env = "MIRROR_MAX_FILE_SIZE",
        value_name = "SIZE",
        default_value = "1Mi"
    )]
    pub max_file_size: ByteSize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new git repository with a working example desired state, committed
    Init(init::InitArgs),
    /// Parse and check the desired state; every error as FILE:LINE:COL: Kind/name: field: message
    Validate,
    /// Regenerate the JSON Schemas of the resource kinds in crds/
    Crds(crds::CrdsArgs),
    /// One reconcile pass: make the host match the commit (--dry-run: show what would change)
    Reconcile(reconcile::ReconcileArgs),
    /// The daemon: watch git, resync, restart what dies, launch agents, drift reports, metrics
    Run(run::RunArgs),
    /// Per resource: sync and health, pid, restarts, uptime; with names, each in detail
    Status(status::StatusArgs),
    /// Stop a service or agent and keep it stopped until `start` or the next commit (recorded,
    /// shown in status and as intentional drift)
    #[command(
        after_help = "Example:\n  mirrorctl stop web      # like `systemctl stop`: the unit stays in the desired state"
    )]
    Stop(operate::OperateArgs),
    /// Start a service or agent again: ends a `stop`
    #[command(after_help = "Example:\n  mirrorctl start web")]
    Start(operate::OperateArgs),
    /// Restart a service or agent now (same spec; recorded with who asked)
    #[command(after_help = "Example:\n  mirrorctl restart web")]
    Restart(operate::OperateArgs),
    /// A service's stdout and stderr
    Logs(logs::LogsArgs),
    /// Drift reports stored in the truth store
    #[command(subcommand)]
    Drift(drift::DriftCommand),
    /// Check the truth store's receipts
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Tool requests of agents that wait for a person: list, approve, deny (needs the daemon)
    #[command(subcommand)]
    Gate(gate::GateCommand),
    /// Memory items in the truth store: add, list, search, show, touch, verify, history
    #[command(subcommand)]
    Memory(memory::MemoryCommand),
    /// Shell completions for bash, zsh or fish
    Completions(completions::CompletionsArgs),
    /// The manual page, in roff (`mirrorctl man | man -l -`)
    Man,
}

impl GlobalArgs {
    pub fn repo_dir(&self) -> PathBuf {
        self.repo.clone().unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn reference(&self) -> &str {
        self.reference.as_deref().unwrap_or("HEAD")
    }

    /// Absolute: agents' sandboxes hide it by path, and a relative one would name another place
    /// from their working directory.
    pub fn state_dir(&self) -> PathBuf {
        let dir = self.state_dir.clone().unwrap_or_else(crate::state::default_state_dir);
        std::path::absolute(&dir).unwrap_or(dir)
    }

    pub fn store_url(&self) -> Result<StoreUrl, StoreError> {
        match &self.store {
            Some(url) => StoreUrl::parse(url),
            None => Ok(StoreUrl::default_in(&self.state_dir())),
        }
    }

    /// Where a reconcile pass (or `status`) reads and writes.
    pub fn reconcile_context(&self) -> Result<crate::reconcile::Context, StoreError> {
        Ok(crate::reconcile::Context {
            source: self.source_options(),
            state_dir: self.state_dir(),
            store: self.store_url()?,
            host: crate::state::host_name(),
        })
    }

    /// The source as a control request names it (the daemon reads it with its own limits).
    pub fn source_request(&self) -> crate::daemon::control::SourceRequest {
        crate::daemon::control::SourceRequest {
            repo: self.repo_dir().canonicalize().unwrap_or_else(|_| self.repo_dir()),
            path: self.path(),
            reference: self.reference().to_string(),
            worktree: self.worktree,
        }
    }

    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            repo: self.repo_dir(),
            path: self.path(),
            reference: self.reference().to_string(),
            worktree: self.worktree,
            max_file_size: self.max_file_size.0,
            host_base: Some(self.state_dir()),
        }
    }
}

/// Exit codes shared by all commands (DESIGN.md §4).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const CHANGES: u8 = 2;
    /// Stopped by Ctrl-C (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

pub fn main() -> ExitCode {
    // The supervisor's trampoline is not a command of the CLI: parsed on its own (no clap tree
    // for every agent start, and never in completions or the manual).
    if std::env::args_os().nth(1).is_some_and(|a| a == sandbox_exec::COMMAND) {
        return ExitCode::from(sandbox_exec::main());
    }
    completions::answer_shell();
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 1, not clap's 2: 2 means "changes pending" to scripts.
            return ExitCode::from(if e.use_stderr() { exit::ERROR } else { exit::OK });
        }
    };
    let prefer = match &cli.command {
        Command::Reconcile(args) if !args.dry_run => Some(source::Prefer::Apply),
        Command::Reconcile(_)
        | Command::Status(_)
        | Command::Stop(_)
        | Command::Start(_)
        | Command::Restart(_)
        | Command::Drift(drift::DriftCommand::Report) => Some(source::Prefer::Host),
        Command::Validate | Command::Run(_) | Command::Crds(_) => Some(source::Prefer::Here),
        _ => None,
    };
    if let Some(prefer) = prefer {
        if let Some(note) = source::resolve(&mut cli.global, prefer) {
            eprintln!("mirrorctl: {note}");
        }
    }
    let code = match &cli.command {
        Command::Init(args) => init::run(&cli.global, args),
        Command::Validate => validate::run(&cli.global),
        Command::Crds(args) => crds::run(&cli.global, args),
        Command::Reconcile(args) => reconcile::run(&cli.global, args),
        Command::Run(args) => run::run(&cli.global, args),
        Command::Status(args) => status::run(&cli.global, args),
        Command::Stop(args) => operate::run(&cli.global, args, Verb::Stop),
        Command::Start(args) => operate::run(&cli.global, args, Verb::Start),
        Command::Restart(args) => operate::run(&cli.global, args, Verb::Restart),
        Command::Logs(args) => logs::run(&cli.global, args),
        Command::Drift(command) => drift::run(&cli.global, command),
        Command::Audit(command) => audit::run(&cli.global, command),
        Command::Gate(command) => gate::run(&cli.global, command),
        Command::Memory(command) => memory::run(&cli.global, command),
        Command::Completions(args) => completions::run(args),
        Command::Man => completions::man(),
    };
    ExitCode::from(code)
}

/// Runs an async command body on a runtime of its own.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(future)
}

/// Opens the truth store named by the global options; reports why not (redacted) on failure.
async fn open_store(global: &GlobalArgs) -> Option<Box<dyn crate::store::Store>> {
    let opened = match global.store_url() {
        Ok(url) => crate::store::open(&url).await,
        Err(e) => Err(e),
    };
    opened.map_err(|e: StoreError| report_error(global.output, &e)).ok()
}

/// Asks a running daemon (one writer at a time); prints its answer and returns the exit code,
/// or None when no daemon runs on the state dir.
fn ask_daemon(global: &GlobalArgs, request: &crate::daemon::control::Request) -> Option<u8> {
    match crate::daemon::control::ask(&global.state_dir(), request) {
        Ok(Some(response)) => Some(emit(&response)),
        Ok(None) => None,
        Err(e) => {
            report_error(global.output, &e);
            Some(exit::ERROR)
        }
    }
}

/// A pass asked of the daemon if one runs, else run here (taking the state dir's lock); either
/// way rendered by `render` and printed. Returns the exit code.
fn pass_via_daemon_or_here(
    global: &GlobalArgs,
    request: &crate::daemon::control::Request,
    options: crate::reconcile::PassOptions,
    render: fn(&crate::daemon::control::Request, &crate::reconcile::PassOutcome) -> crate::daemon::control::Response,
) -> u8 {
    // Through a daemon, its pass says each action as it starts and ends too.
    let mut printer = pull_progress_printer();
    match crate::daemon::control::ask_reporting(&global.state_dir(), request, &mut printer) {
        Ok(Some(response)) => return emit(&response),
        Ok(None) => {}
        Err(e) => {
            report_error(global.output, &e);
            return exit::ERROR;
        }
    }
    let context = match global.reconcile_context() {
        Ok(context) => context,
        Err(e) => {
            report_error(global.output, &e);
            return exit::ERROR;
        }
    };
    // Ctrl-C stops an applying pass between actions: what was done is recorded and shown.
    #[cfg(unix)]
    if !options.dry_run {
        crate::reconcile::interrupt_on_sigint();
    }
    let mut progress = pull_progress_printer();
    match block_on(crate::reconcile::run_pass(&context, &options, &mut progress)) {
        Ok(outcome) if crate::reconcile::interrupted() => {
            emit(&render(request, &outcome));
            eprintln!(
                "mirrorctl: interrupted: {} action(s) done and recorded (run {}); `mirrorctl reconcile` finishes the rest",
                outcome.applied.len(),
                outcome.report.run_id.as_deref().unwrap_or("-")
            );
            exit::INTERRUPTED
        }
        Ok(outcome) => emit(&render(request, &outcome)),
        Err(e @ crate::reconcile::ReconcileError::Interrupted(_)) => {
            eprintln!("mirrorctl: {e}");
            exit::INTERRUPTED
        }
        Err(e) => {
            report_error(global.output, &e);
            exit::ERROR
        }
    }
}

/// A `--since`-style duration argument (`30s`, `10m`, `2h`, `1d`).
fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected a duration such as 30s, 10m, 2h or 1d)"))
}

/// Whether to print each action of a pass as it starts and ends: on a terminal, or when
/// `MIRROR_PROGRESS` is set (`1`).
fn show_actions() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("MIRROR_PROGRESS").is_some_and(|v| v != "0") || std::io::stderr().is_terminal()
}

/// Pull progress on stderr: a line per status change and at most one a second otherwise (a
/// pull reports many times a second).
fn pull_progress_printer() -> impl FnMut(String) + Send {
    let mut last: Option<(std::time::Instant, String)> = None;
    let actions = show_actions();
    move |line: String| {
        // Each action as it starts (→) and ends (✓ or ✗): only where a person watches.
        if line.starts_with(['→', '✓', '✗']) {
            if actions {
                eprintln!("{line}");
            }
            return;
        }
        // "ollama: llama3.2:1b: pulling 6a0746a1ec1a 42% (...)" -> "... pulling 6a0746a1ec1a"
        let status = line
            .split('%')
            .next()
            .unwrap_or(&line)
            .trim_end_matches(|c: char| c.is_ascii_digit());
        let due = last
            .as_ref()
            .is_none_or(|(at, seen)| seen != status || at.elapsed() >= std::time::Duration::from_secs(1));
        if due {
            eprintln!("{line}");
            last = Some((std::time::Instant::now(), status.to_string()));
        }
    }
}

/// Prints a rendered answer; returns its exit code.
fn emit(response: &crate::daemon::control::Response) -> u8 {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(response.stdout.as_bytes());
    let _ = out.flush();
    eprint!("{}", response.stderr);
    response.exit_code
}

/// A JSON value as `--output json` prints it.
fn json_text(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("values serialize");
    text.push('\n');
    text
}

/// Prints a JSON value on stdout.
fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// Prints an error on stderr as `mirrorctl: error: ...` (or as JSON on stdout).
fn report_error(output: Output, error: &dyn std::error::Error) {
    match output {
        Output::Text => eprintln!("mirrorctl: error: {error}"),
        Output::Json => print_json(&serde_json::json!({"error": error.to_string()})),
    }
}
