//! The journal: every record is appended here (newline-delimited JSON in the state dir) before
//! it goes to the database, and an offset file says how much of it the database has. While the
//! database is away the journal grows; when it is back the rest is replayed in order. Records
//! are idempotent, so a crash between writing to the database and saving the offset only means
//! a few records are written again and skipped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Record, StoreError};

pub struct Journal {
    path: PathBuf,
    offset_path: PathBuf,
    file: File,
    len: u64,
    applied: u64,
    pending: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. A torn last line (a crash mid-append) is cut off.
    pub fn open(dir: &Path) -> Result<Journal, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::local(dir, e))?;
        let path = dir.join("journal.ndjson");
        let offset_path = dir.join("journal.applied");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::local(&path, e))?;
        let mut content = Vec::new();
        file.read_to_end(&mut content)
            .map_err(|e| StoreError::local(&path, e))?;
        let complete = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < content.len() {
            file.set_len(complete as u64).map_err(|e| StoreError::local(&path, e))?;
        }
        let len = complete as u64;
        let applied = match std::fs::read_to_string(&offset_path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| StoreError::local(&offset_path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StoreError::local(&offset_path, e)),
        };
        // An offset past the end: the journal was emptied after everything was applied, and the
        // process stopped before it saved the new offset.
        let applied = applied.min(len);
        let pending = content[applied as usize..complete]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
        Ok(Journal {
            path,
            offset_path,
            file,
            len,
            applied,
            pending,
        })
    }

    /// Appends records and syncs them to disk.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut bytes = Vec::with_capacity(records.len() * 256);
        for record in records {
            serde_json::to_writer(&mut bytes, record).map_err(|e| StoreError::local(&self.path, e))?;
            bytes.push(b'\n');
        }
        self.file
            .write_all(&bytes)
            .map_err(|e| StoreError::local(&self.path, e))?;
        self.file.sync_data().map_err(|e| StoreError::local(&self.path, e))?;
        self.len += bytes.len() as u64;
        self.pending += records.len() as u64;
        Ok(())
    }

    /// The journal file (`journal.ndjson` in the state dir).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records not yet in the database.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Up to `max` records not yet in the database, in order, and the offset after them.
    pub fn read_pending(&mut self, max: usize) -> Result<(Vec<Record>, u64), StoreError> {
        let mut reader = BufReader::new(File::open(&self.path).map_err(|e| StoreError::local(&self.path, e))?);
        reader
            .seek(SeekFrom::Start(self.applied))
            .map_err(|e| StoreError::local(&self.path, e))?;
        let mut records = Vec::new();
        let mut offset = self.applied;
        let mut line = String::new();
        while records.len() < max && offset < self.len {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .map_err(|e| StoreError::local(&self.path, e))?;
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            offset += read as u64;
            let record: Record = serde_json::from_str(&line).map_err(|e| {
                StoreError::local(
                    &self.path,
                    format!("unreadable record at byte {}: {e}", offset - read as u64),
                )
            })?;
            records.push(record);
        }
        Ok((records, offset))
    }

    /// Notes that the database has everything before `offset` (`count` records). When it has
    /// everything, the journal is emptied.
    pub fn mark_applied(&mut self, offset: u64, count: u64) -> Result<(), StoreError> {
        self.applied = offset;
        self.pending = self.pending.saturating_sub(count);
        if self.applied >= self.len {
            self.file.set_len(0).map_err(|e| StoreError::local(&self.path, e))?;
            self.len = 0;
            self.applied = 0;
            self.pending = 0;
        }
        write_atomically(&self.offset_path, self.applied.to_string().as_bytes())
    }
}

/// Reads the records a journal in `dir` still holds for the database, without opening it for
/// writing (another process may own it). Unreadable lines are skipped.
pub fn pending_records(dir: &Path) -> Vec<Record> {
    let applied = std::fs::read_to_string(dir.join("journal.applied"))
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let Ok(content) = std::fs::read(dir.join("journal.ndjson")) else {
        return Vec::new();
    };
    content
        .get(applied..)
        .unwrap_or_default()
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

/// Writes a small file so that a reader sees the old or the new content, never a mix.
pub fn write_atomically(path: &Path, content: &[u8]) -> Result<(), StoreError> {
    let temp = path.with_extension("tmp");
    let mut file = File::create(&temp).map_err(|e| StoreError::local(&temp, e))?;
    file.write_all(content).map_err(|e| StoreError::local(&temp, e))?;
    file.sync_data().map_err(|e| StoreError::local(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| StoreError::local(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunStarted;

    fn run(i: i64) -> Record {
        Record::RunStarted(RunStarted {
            id: format!("run-{i}"),
            host: "h".into(),
            commit: None,
            trigger: "test".into(),
            started_ms: i,
        })
    }

    #[test]
    fn appends_replays_and_empties() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.append(&[run(1), run(2), run(3)]).unwrap();
        let (records, offset) = journal.read_pending(2).unwrap();
        assert_eq!(records, vec![run(1), run(2)]);
        journal.mark_applied(offset, 2).unwrap();
        drop(journal);

        let mut journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.pending(), 1);
        let (records, offset) = journal.read_pending(10).unwrap();
        assert_eq!(records, vec![run(3)]);
        journal.mark_applied(offset, 1).unwrap();
        assert_eq!(journal.pending(), 0);
        assert_eq!(std::fs::metadata(dir.path().join("journal.ndjson")).unwrap().len(), 0);
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.append(&[run(1)]).unwrap();
        drop(journal);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.ndjson"))
            .unwrap();
        file.write_all(b"{\"type\":\"run_sta").unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.pending(), 1);
        assert_eq!(journal.read_pending(10).unwrap().0, vec![run(1)]);
        journal.append(&[run(2)]).unwrap();
        assert_eq!(journal.read_pending(10).unwrap().0, vec![run(1), run(2)]);
    }

    #[test]
    fn a_stale_offset_past_the_end_is_clamped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("journal.applied"), "999").unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.pending(), 0);
        journal.append(&[run(1)]).unwrap();
        assert_eq!(journal.read_pending(10).unwrap().0, vec![run(1)]);
    }
}
