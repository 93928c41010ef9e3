//! `mirrorctl init DIR`: a new git repository holding the example desired state and the
//! schemas, committed. Works offline: everything is embedded in the binary.

use std::path::{Path, PathBuf};

use clap::Args;
use git2::{Repository, RepositoryInitOptions, Signature};

use super::{exit, print_json, report_error, GlobalArgs, Output};
use crate::example;
use crate::source::{self, SourceOptions};
use crate::spec::schema::all_schema_files;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory of the new repository (created; must be empty if it exists)
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}: not empty; `init` creates a new repository (choose another directory)")]
    NotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot create the git repository: {message}")]
    Git { path: PathBuf, message: String },
    #[error("the example desired state does not validate (a bug): {0}")]
    Example(String),
}

pub fn run(global: &GlobalArgs, args: &InitArgs) -> u8 {
    match init(&args.dir) {
        Ok((commit, resources)) => {
            match global.output {
                Output::Text => {
                    println!(
                        "Initialized {} with {resources} resources, commit {}",
                        args.dir.display(),
                        &commit[..12]
                    );
                    println!("Next: mirrorctl --repo {} validate", args.dir.display());
                }
                Output::Json => print_json(&serde_json::json!({
                    "repo": args.dir, "commit": commit, "resources": resources,
                })),
            }
            exit::OK
        }
        Err(e) => {
            report_error(global.output, &e);
            exit::ERROR
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the repository; returns the commit id and the number of resources.
pub fn init(dir: &Path) -> Result<(String, usize), InitError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(InitError::NotEmpty(dir.to_path_buf()));
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let git = |e: git2::Error| InitError::Git {
        path: dir.to_path_buf(),
        message: e.message().to_string(),
    };
    let mut options = RepositoryInitOptions::new();
    options.initial_head("main");
    let repo = Repository::init_opts(dir, &options).map_err(git)?;

    let schemas = all_schema_files();
    let files = example::FILES
        .iter()
        .map(|(path, content)| (path.to_string(), content.to_string()))
        .chain(
            schemas
                .into_iter()
                .map(|(name, content)| (format!("crds/{name}"), content)),
        )
        .chain([("README.md".to_string(), README.to_string())]);
    let mut index = repo.index().map_err(git)?;
    for (path, content) in files {
        let full = dir.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&full, content).map_err(io(&full))?;
        index.add_path(Path::new(&path)).map_err(git)?;
    }
    index.write().map_err(git)?;
    let tree = repo.find_tree(index.write_tree().map_err(git)?).map_err(git)?;
    let signature = repo
        .signature()
        .or_else(|_| Signature::now("mirrorctl", "mirrorctl@localhost"))
        .map_err(git)?;
    let commit = repo
        .commit(
            Some("HEAD"),
            &signature,
            &signature,
            "Initial desired state (mirrorctl init)",
            &tree,
            &[],
        )
        .map_err(git)?;

    let state = source::load(&SourceOptions::new(dir)).map_err(|e| InitError::Example(e.to_string()))?;
    Ok((commit.to_string(), state.resources.len()))
}

const README: &str = "# Desired state of this host\n\n\
This repository is read by mirrorctl. Edit the YAML under `desired/`, then commit: a commit\n\
changes the host, uncommitted edits do nothing.\n\n\
    mirrorctl validate                 # check the committed state\n\
    mirrorctl validate --worktree      # check uncommitted edits\n\
    mirrorctl reconcile --dry-run      # see what would change\n\n\
JSON Schemas for editor completion are in `crds/`.\n";
