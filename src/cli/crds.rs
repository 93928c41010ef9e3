//! `mirrorctl crds`: writes the JSON Schema of every kind to `crds/` (or checks them).

use std::path::PathBuf;

use clap::Args;

use super::{exit, report_error, GlobalArgs};
use crate::spec::schema::all_schema_files;

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Directory to write to [default: crds/ in the repository]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Do not write: exit 1 when a schema file is missing or stale
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
struct WriteSchemaError {
    path: String,
    source: std::io::Error,
}

pub fn run(global: &GlobalArgs, args: &CrdsArgs) -> u8 {
    let dir = args.dir.clone().unwrap_or_else(|| global.repo_dir().join("crds"));
    let mut stale = Vec::new();
    for (name, content) in all_schema_files() {
        let path = dir.join(&name);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(content.as_str()) {
            continue;
        }
        if args.check {
            stale.push(path.display().to_string());
            continue;
        }
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, content));
        if let Err(source) = written {
            report_error(
                global.output,
                &WriteSchemaError {
                    path: path.display().to_string(),
                    source,
                },
            );
            return exit::ERROR;
        }
        println!("wrote {}", path.display());
    }
    if !stale.is_empty() {
        for path in &stale {
            println!("stale: {path}");
        }
        println!("run `mirrorctl crds` to regenerate them");
        return exit::ERROR;
    }
    exit::OK
}
