//! `mirrorctl completions SHELL` and `mirrorctl man`: the shell completions (clap_complete) and
//! the manual page (clap_mangen, roff) of the command line as clap knows it, so both follow
//! every new command and option without a hand-kept copy.

use clap::{Args, CommandFactory};

use super::{exit, Cli};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  mirrorctl completions bash > ~/.local/share/bash-completion/completions/mirrorctl\n  mirrorctl completions zsh > \"${fpath[1]}/_mirrorctl\"\n  mirrorctl completions fish > ~/.config/fish/completions/mirrorctl.fish"
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
    let mut command = Cli::command();
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, "mirrorctl", &mut std::io::stdout());
    exit::OK
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
