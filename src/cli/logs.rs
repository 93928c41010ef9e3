//! `mirrorctl logs NAME [-f]`: a service's stdout and stderr, from the state dir.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use clap::Args;

use super::{exit, GlobalArgs};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The service (or agent) name
    pub name: String,
    /// Keep printing what is appended (follows rotation)
    #[arg(short, long)]
    pub follow: bool,
}

pub fn run(global: &GlobalArgs, args: &LogsArgs) -> u8 {
    let logs = global.state_dir().join("logs");
    // A service's log is NAME.log; an agent's agent-NAME.log (the two may share a name: a
    // service wins, `agent-NAME` names the agent's).
    let path = [format!("{}.log", args.name), format!("agent-{}.log", args.name)]
        .into_iter()
        .map(|file| logs.join(file))
        .find(|path| path.exists())
        .unwrap_or_else(|| logs.join(format!("{}.log", args.name)));
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!(
                "mirrorctl: error: {}: {e} (has `{}` been started by mirrorctl?)",
                path.display(),
                args.name
            );
            return exit::ERROR;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut buffer = Vec::new();
    if file.read_to_end(&mut buffer).is_err() || out.write_all(&buffer).is_err() {
        return exit::ERROR;
    }
    let _ = out.flush();
    let mut position = buffer.len() as u64;
    if !args.follow {
        return exit::OK;
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let length = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if length < position {
            // Rotated or truncated: start over with the new file.
            match std::fs::File::open(&path) {
                Ok(reopened) => file = reopened,
                Err(_) => continue,
            }
            position = 0;
        }
        if length > position {
            buffer.clear();
            if file.seek(SeekFrom::Start(position)).is_err() || file.read_to_end(&mut buffer).is_err() {
                continue;
            }
            position += buffer.len() as u64;
            if out.write_all(&buffer).and_then(|()| out.flush()).is_err() {
                return exit::OK; // the reader went away
            }
        }
    }
}
