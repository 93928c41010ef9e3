//! `mirrorctl completions SHELL` and `mirrorctl man`: the shell completions (clap_complete) and
//! the manual page (clap_mangen, roff) of the command line as clap knows it, so both follow
//! every new command and option without a hand-kept copy.
//!
//! Completions are clap_complete's dynamic ones: the script a shell sources asks `mirrorctl`
//! itself (`MIRRORCTL_COMPLETE=bash mirrorctl -- WORDS`), so resource names (`mirrorctl stop <TAB>`) come
//! from this host's inventory, and the script never goes stale after an upgrade.

use clap::{Args, CommandFactory};
use clap_complete::env::EnvCompleter;

use super::{exit, Cli};

/// The variable the completion script sets when it asks: mirrorctl's own, so that a `COMPLETE`
/// some other tool left in the environment does not turn every command into a completion.
const VARIABLE: &str = "MIRRORCTL_COMPLETE";

/// Answers a shell's completion request and exits, when `MIRRORCTL_COMPLETE` is set; returns
/// otherwise.
pub fn answer_shell() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(VARIABLE)
        .complete();
}

/// The services and agents this host runs or ran (the inventory of the state dir named by
/// `MIRROR_STATE_DIR`, or the default one): what `status`, `logs`, `stop`, `start` and
/// `restart` complete.
pub fn resource_names() -> Vec<clap_complete::CompletionCandidate> {
    let state_dir = std::env::var_os("MIRROR_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(crate::state::default_state_dir);
    let Ok(inventory) = crate::store::inventory::LocalInventory::load(&state_dir) else {
        return Vec::new();
    };
    let mut names: Vec<(String, String)> = inventory
        .entries()
        .filter(|e| e.kind == "Service" || e.kind == "Agent")
        .map(|e| (e.name.clone(), e.kind.clone()))
        .collect();
    names.sort();
    names.dedup_by(|a, b| a.0 == b.0);
    names
        .into_iter()
        .map(|(name, kind)| clap_complete::CompletionCandidate::new(name).help(Some(kind.into())))
        .collect()
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  mirrorctl completions bash > ~/.local/share/bash-completion/completions/mirrorctl\n  mirrorctl completions zsh > \"${fpath[1]}/_mirrorctl\"\n  mirrorctl completions fish > ~/.config/fish/completions/mirrorctl.fish\n\nResource names (`mirrorctl stop <TAB>`) come from this host's inventory."
)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn run(args: &CompletionsArgs) -> u8 {
    let shell: &dyn EnvCompleter = match args.shell {
        Shell::Bash => &clap_complete::env::Bash,
        Shell::Zsh => &clap_complete::env::Zsh,
        Shell::Fish => &clap_complete::env::Fish,
    };
    let mut out = std::io::stdout().lock();
    match shell.write_registration(VARIABLE, "mirrorctl", "mirrorctl", "mirrorctl", &mut out) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("mirrorctl: error: writing the completion script: {e}");
            exit::ERROR
        }
    }
}

/// `mirrorctl man`: the manual page, in roff (`mirrorctl man | man -l -`).
pub fn man() -> u8 {
    let page = clap_mangen::Man::new(Cli::command());
    let mut out = Vec::new();
    match page.render(&mut out) {
        Ok(()) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&out);
            exit::OK
        }
        Err(e) => {
            eprintln!("mirrorctl: error: rendering the manual page: {e}");
            exit::ERROR
        }
    }
}
