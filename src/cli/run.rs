//! `mirrorctl run`: the daemon. Runs until SIGTERM or SIGINT; services keep running after it
//! (a new daemon adopts them) unless `--stop-services-on-exit`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::{exit, report_error, GlobalArgs, Output};
use crate::daemon::control::{Request, Response};
use crate::daemon::{self, Answer, Config, Renderer};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Stop every owned service when the daemon ends (default: leave them running)
    #[arg(long)]
    pub stop_services_on_exit: bool,
    /// Apply only commits whose SSH signature verifies against --allowed-signers
    #[arg(long, requires = "allowed_signers")]
    pub require_signed: bool,
    /// Allowed signers, in the format of ssh-keygen and git's gpg.ssh.allowedSignersFile
    #[arg(long, value_name = "FILE", env = "MIRROR_ALLOWED_SIGNERS")]
    pub allowed_signers: Option<PathBuf>,
    /// Serve Prometheus metrics and /healthz on this address (e.g. 127.0.0.1:9464)
    #[arg(long, value_name = "ADDR", env = "MIRROR_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "MIRROR_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn run(global: &GlobalArgs, args: &RunArgs) -> u8 {
    if global.worktree {
        eprintln!("mirrorctl: error: --worktree is a preview: the daemon applies commits only");
        return exit::ERROR;
    }
    init_tracing(args.log_format);
    let context = match global.reconcile_context() {
        Ok(context) => context,
        Err(e) => {
            report_error(global.output, &e);
            return exit::ERROR;
        }
    };
    let config = Config {
        context,
        stop_services_on_exit: args.stop_services_on_exit,
        allowed_signers: if args.require_signed {
            args.allowed_signers.clone()
        } else {
            None
        },
        metrics_addr: args.metrics_addr,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(daemon::run(config, renderer())) {
        Ok(()) => exit::OK,
        Err(e) => {
            report_error(Output::Text, &e);
            exit::ERROR
        }
    }
}

/// The daemon answers exactly what each command prints when it runs alone.
fn renderer() -> Renderer {
    Arc::new(|request: &Request, answer: Answer| {
        let json = match request {
            Request::Reconcile { json, .. }
            | Request::Status { json, .. }
            | Request::DriftReport { json, .. }
            | Request::GatePending { json }
            | Request::GateDecide { json, .. }
            | Request::Operate { json, .. } => *json,
        };
        match (request, answer) {
            (Request::Reconcile { .. }, Answer::Pass(outcome)) => super::reconcile::render(request, &outcome),
            (Request::DriftReport { .. }, Answer::Pass(outcome)) => super::drift::render(request, &outcome),
            (Request::Operate { .. }, Answer::Pass(outcome)) => super::operate::render(request, &outcome),
            (Request::Status { .. }, Answer::Status(report)) => {
                super::status::render(request, &report, Some(std::process::id()))
            }
            (_, Answer::Error(message)) => error_response(json, &message),
            (_, _) => error_response(json, "the daemon answered with the wrong kind of result"),
        }
    })
}

fn error_response(json: bool, message: &str) -> Response {
    if json {
        Response {
            exit_code: exit::ERROR,
            stdout: super::json_text(&serde_json::json!({"error": message})),
            stderr: String::new(),
        }
    } else {
        Response {
            exit_code: exit::ERROR,
            stdout: String::new(),
            stderr: format!("mirrorctl: error: {message}\n"),
        }
    }
}

/// Logs on stderr, text or JSON; `MIRROR_LOG` (or `RUST_LOG`) filters, default `info`.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("MIRROR_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
