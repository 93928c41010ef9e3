//! `mirrorctl logs NAME [-f] [--tail N] [--output json]`: a service's (or agent's) stdout and
//! stderr, from the state dir. When there is nothing to print, it says why (never started, its
//! start failed and how, or started and silent) instead of printing nothing.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::{exit, GlobalArgs, Output};
use crate::reconcile::failures::Failures;
use crate::spec::{Kind, ResourceId};
use crate::store::inventory::LocalInventory;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  mirrorctl logs web --tail 50\n  mirrorctl logs web -f\n  \
                        mirrorctl logs web --since 10m\n  mirrorctl logs web --output json | jq -r .line"
)]
pub struct LogsArgs {
    /// The service (or agent) name
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::resource_names))]
    pub name: String,
    /// Keep printing what is appended (follows rotation)
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (with -f: then what is appended)
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only what was written within this long (`30s`, `10m`, `2h`), to the second, from the
    /// times the daemon records while it runs
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration_arg)]
    pub since: Option<Duration>,
}

pub fn run(global: &GlobalArgs, args: &LogsArgs) -> u8 {
    let logs = global.state_dir().join("logs");
    // A service's log is NAME.log; an agent's agent-NAME.log (the two may share a name: a
    // service wins, `agent-NAME` names the agent's).
    let found = [
        (Kind::Service, format!("{}.log", args.name)),
        (Kind::Agent, format!("agent-{}.log", args.name)),
    ]
    .into_iter()
    .map(|(kind, file)| (kind, logs.join(file)))
    .find(|(_, path)| path.exists());
    let Some((kind, path)) = found else {
        eprintln!("mirrorctl: error: {}", no_log(&global.state_dir(), &args.name));
        return exit::ERROR;
    };
    let mut printer = Printer {
        out: std::io::stdout().lock(),
        json: global.output == Output::Json,
        name: &args.name,
        partial: Vec::new(),
    };
    let since = match args.since {
        None => None,
        Some(within) => {
            let within_ms = i64::try_from(within.as_millis()).unwrap_or(i64::MAX);
            let since_ms = crate::report::now_ms().saturating_sub(within_ms);
            match crate::supervisor::log_times::offset_since(&path, since_ms) {
                Some(offset) => Some(offset),
                None => {
                    eprintln!(
                        "mirrorctl: error: {}: no times recorded for this log (the daemon records them while it runs, `mirrorctl run`); use --tail N",
                        path.display()
                    );
                    return exit::ERROR;
                }
            }
        }
    };
    let (text, mut position) = match read_start(&path, since, args.tail) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("mirrorctl: error: {}: {e}", path.display());
            return exit::ERROR;
        }
    };
    let whole_file_empty = args.since.is_none() && args.tail.is_none_or(|n| n > 0) && text.is_empty();
    if whole_file_empty && !args.follow {
        // Empty: a failed start is an error (exit 1), a silent process is not.
        let state_dir = global.state_dir();
        let id = ResourceId::new(kind, args.name.as_str());
        let running = LocalInventory::load(&state_dir)
            .ok()
            .and_then(|i| {
                i.get(id.kind.as_str(), &id.name)
                    .and_then(crate::reconcile::process_record)
            })
            .is_some();
        if let Some(failure) = Failures::load(&state_dir).get(&id).filter(|_| !running) {
            let why = failure.describe(crate::report::now_ms());
            eprintln!("mirrorctl: error: {id}: the log is empty: {why}");
            return exit::ERROR;
        }
        eprintln!("mirrorctl: {}", silent(&state_dir, &id));
    }
    if printer.print(&text).is_err() {
        return exit::OK; // the reader went away
    }
    if !args.follow {
        let _ = printer.finish();
        return exit::OK;
    }
    follow(&path, &mut position, &mut printer)
}

/// Prints log text as it is, or as one JSON object a line (`{"name", "line"}`; a line written
/// in two pieces waits for its end, so it stays one object).
struct Printer<'a, W: Write> {
    out: W,
    json: bool,
    name: &'a str,
    partial: Vec<u8>,
}

impl<W: Write> Printer<'_, W> {
    fn print(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.json {
            self.partial.extend_from_slice(bytes);
            let complete = self.partial.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let lines: Vec<u8> = self.partial.drain(..complete).collect();
            for line in lines.split_inclusive(|b| *b == b'\n') {
                self.line(line)?;
            }
        } else {
            self.out.write_all(bytes)?;
        }
        self.out.flush()
    }

    fn line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let line = String::from_utf8_lossy(line);
        let value = serde_json::json!({"name": self.name, "line": line.trim_end_matches('\n')});
        writeln!(self.out, "{value}")
    }

    /// A last line without its newline (not following: nothing more will come).
    fn finish(&mut self) -> std::io::Result<()> {
        if self.json && !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.line(&rest)?;
            self.out.flush()?;
        }
        Ok(())
    }
}

/// The text to print first (all of it from `from`, or the last `tail` lines of that) and where
/// following resumes.
fn read_start(path: &Path, from: Option<u64>, tail: Option<usize>) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = std::fs::File::open(path)?;
    if from.is_some() || tail.is_none() {
        let from = from.unwrap_or(0);
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(from.min(length)))?;
        let mut buffer = Vec::new();
        file.read_to_end(&mut buffer)?;
        let end = from.min(length) + buffer.len() as u64;
        if let Some(n) = tail {
            let lines: Vec<&[u8]> = buffer.split_inclusive(|b| *b == b'\n').collect();
            let kept = lines[lines.len().saturating_sub(n)..].concat();
            return Ok((kept, end));
        }
        return Ok((buffer, end));
    }
    let n = tail.unwrap_or(0);
    // The last N lines, read backwards from the end (a log may be hundreds of MiB); from the
    // rotated file too when the current one holds fewer.
    let length = file.metadata()?.len();
    let (mut text, found) = last_lines(&mut file, length, n)?;
    if found < n {
        let rotated = PathBuf::from(format!("{}.1", path.display()));
        if let Ok(mut older) = std::fs::File::open(&rotated) {
            let older_length = older.metadata()?.len();
            let (mut before, _) = last_lines(&mut older, older_length, n - found)?;
            before.append(&mut text);
            text = before;
        }
    }
    Ok((text, length))
}

/// The last `n` lines of the first `length` bytes of `file` (a last line without its newline
/// counts), and how many there were; reads 64 KiB blocks from the end.
fn last_lines(file: &mut std::fs::File, length: u64, n: usize) -> std::io::Result<(Vec<u8>, usize)> {
    const BLOCK: u64 = 64 * 1024;
    if n == 0 || length == 0 {
        return Ok((Vec::new(), 0));
    }
    let mut start = length;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        block.append(&mut tail);
        tail = block;
        start = from;
        // Newlines that end a line before the last one: n of them mark where the n lines begin.
        let body = if tail.ends_with(b"\n") {
            &tail[..tail.len() - 1]
        } else {
            &tail[..]
        };
        if let Some(cut) = body
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'\n')
            .nth(n - 1)
            .map(|(i, _)| i + 1)
        {
            return Ok((tail[cut..].to_vec(), n));
        }
        if start == 0 {
            let lines = tail.split_inclusive(|b| *b == b'\n').count();
            return Ok((tail, lines));
        }
    }
}

/// Prints what is appended until the reader goes away; follows rotation and truncation.
fn follow<W: Write>(path: &Path, position: &mut u64, printer: &mut Printer<'_, W>) -> u8 {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(_) => return exit::ERROR,
    };
    let mut buffer = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let length = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if length < *position {
            // Rotated or truncated: start over with the new file.
            match std::fs::File::open(path) {
                Ok(reopened) => file = reopened,
                Err(_) => continue,
            }
            *position = 0;
        }
        if length > *position {
            buffer.clear();
            if file.seek(SeekFrom::Start(*position)).is_err() || file.read_to_end(&mut buffer).is_err() {
                continue;
            }
            *position += buffer.len() as u64;
            if printer.print(&buffer).is_err() {
                return exit::OK; // the reader went away
            }
        }
    }
}

/// Why a name has no log at all.
fn no_log(state_dir: &Path, name: &str) -> String {
    let now = crate::report::now_ms();
    let failures = Failures::load(state_dir);
    for kind in [Kind::Service, Kind::Agent] {
        if let Some(failure) = failures.get(&ResourceId::new(kind, name)) {
            return format!("{kind}/{name} has no log: it never started: {}", failure.describe(now));
        }
    }
    format!(
        "no service or agent `{name}` has been started on this host (state dir {}); `mirrorctl status` lists what runs",
        state_dir.display()
    )
}

/// A log that is empty because its process printed nothing (yet).
fn silent(state_dir: &Path, id: &ResourceId) -> String {
    let now = crate::report::now_ms();
    let started = LocalInventory::load(state_dir)
        .ok()
        .and_then(|inventory| inventory.get(id.kind.as_str(), &id.name).cloned())
        .as_ref()
        .and_then(crate::reconcile::process_record)
        .map(|record| {
            format!(
                " since it last started {} ago (pid {})",
                crate::report::elapsed(record.started_ms, now),
                record.identity.pid
            )
        })
        .unwrap_or_default();
    format!("{id}: the log is empty: it has printed nothing{started}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(text: &[u8], n: usize) -> (Vec<u8>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, text).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        last_lines(&mut file, text.len() as u64, n).unwrap()
    }

    #[test]
    fn the_last_lines_are_read_from_the_end() {
        assert_eq!(last(b"a\nb\nc\n", 2), (b"b\nc\n".to_vec(), 2));
        assert_eq!(
            last(b"a\nb\nc", 2),
            (b"b\nc".to_vec(), 2),
            "a last line without its newline"
        );
        assert_eq!(last(b"a\nb\n", 5), (b"a\nb\n".to_vec(), 2), "fewer than asked");
        assert_eq!(last(b"", 3), (Vec::new(), 0));
        assert_eq!(last(b"a\n", 0), (Vec::new(), 0));
        // Across 64 KiB blocks: a long first line, then short ones.
        let mut big = vec![b'x'; 200 * 1024];
        big.extend_from_slice(b"\nlast\n");
        let (text, found) = last(&big, 2);
        assert_eq!((text.len(), found), (200 * 1024 + 6, 2));
        assert!(text.ends_with(b"x\nlast\n"));
    }
}
