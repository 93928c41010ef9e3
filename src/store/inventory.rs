//! The local inventory: what this host owns, kept in the state dir so that planning never
//! depends on reaching the truth store, and mirrored to the store through the recorder.
//!
//! `inventory.json` is a snapshot; every change is first appended to `inventory.log` (one
//! synced JSON line), so recording a start costs the same for the first service as for the
//! thousandth, and a crash loses nothing that was recorded. `compact` folds the log into the
//! snapshot at the end of a pass.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::journal::write_atomically;
use super::{InventoryEntry, Record, Recorder, StoreError};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Upsert(InventoryEntry),
    Remove { kind: String, name: String },
}

pub struct LocalInventory {
    path: PathBuf,
    log_path: PathBuf,
    log: Option<File>,
    entries: BTreeMap<(String, String), InventoryEntry>,
}

impl LocalInventory {
    /// Loads `<state dir>/inventory.json` and replays `inventory.log` over it (a torn last line,
    /// from a crash mid-append, is ignored).
    pub fn load(state_dir: &Path) -> Result<LocalInventory, StoreError> {
        let path = crate::state::Layout::of(state_dir).inventory();
        let log_path = crate::state::Layout::of(state_dir).inventory_log();
        let entries: Vec<InventoryEntry> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::local(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::local(&path, e)),
        };
        let mut entries: BTreeMap<_, _> = entries
            .into_iter()
            .map(|e| ((e.kind.clone(), e.name.clone()), e))
            .collect();
        match std::fs::read(&log_path) {
            Ok(bytes) => {
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    match serde_json::from_slice::<Change>(line) {
                        Ok(Change::Upsert(e)) => {
                            entries.insert((e.kind.clone(), e.name.clone()), e);
                        }
                        Ok(Change::Remove { kind, name }) => {
                            entries.remove(&(kind, name));
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::local(&log_path, e)),
        }
        Ok(LocalInventory {
            path,
            log_path,
            log: None,
            entries,
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = &InventoryEntry> {
        self.entries.values()
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<&InventoryEntry> {
        self.entries.get(&(kind.to_string(), name.to_string()))
    }

    /// Records that this host owns `entry` (or updates it): on disk first, then mirrored.
    pub fn upsert(&mut self, entry: InventoryEntry, recorder: &Recorder) -> Result<(), StoreError> {
        self.append(&Change::Upsert(entry.clone()))?;
        self.entries
            .insert((entry.kind.clone(), entry.name.clone()), entry.clone());
        recorder.record(Record::Inventory(entry));
        Ok(())
    }

    /// Records that this host no longer owns `kind/name`.
    pub fn remove(&mut self, host: &str, kind: &str, name: &str, recorder: &Recorder) -> Result<(), StoreError> {
        if self.entries.contains_key(&(kind.to_string(), name.to_string())) {
            self.append(&Change::Remove {
                kind: kind.into(),
                name: name.into(),
            })?;
            self.entries.remove(&(kind.to_string(), name.to_string()));
            recorder.record(Record::InventoryRemoved {
                host: host.into(),
                kind: kind.into(),
                name: name.into(),
            });
        }
        Ok(())
    }

    /// Writes the snapshot and empties the log (in that order: a crash in between replays
    /// changes the snapshot already has, which changes nothing).
    pub fn compact(&mut self) -> Result<(), StoreError> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::local(parent, e))?;
        }
        let entries: Vec<&InventoryEntry> = self.entries.values().collect();
        let bytes = serde_json::to_vec(&entries).map_err(|e| StoreError::local(&self.path, e))?;
        write_atomically(&self.path, &bytes)?;
        match self.log.as_ref() {
            Some(log) => log.set_len(0).and_then(|()| log.sync_data()),
            None => match std::fs::remove_file(&self.log_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
        .map_err(|e| StoreError::local(&self.log_path, e))
    }

    fn append(&mut self, change: &Change) -> Result<(), StoreError> {
        if self.log.is_none() {
            if let Some(parent) = self.log_path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::local(parent, e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .map_err(|e| StoreError::local(&self.log_path, e))?;
            self.log = Some(file);
        }
        let mut line = serde_json::to_vec(change).map_err(|e| StoreError::local(&self.log_path, e))?;
        line.push(b'\n');
        let log = self.log.as_mut().expect("opened above");
        log.write_all(&line)
            .and_then(|()| log.sync_data())
            .map_err(|e| StoreError::local(&self.log_path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::recorder::RecorderConfig;
    use crate::store::StoreUrl;

    fn entry(name: &str, hash: &str) -> InventoryEntry {
        InventoryEntry {
            host: "h".into(),
            kind: "Service".into(),
            name: name.into(),
            spec_hash: hash.into(),
            last_applied: "{}".into(),
            process: None,
            updated_ms: 0,
        }
    }

    #[tokio::test]
    async fn changes_survive_without_compaction_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreUrl::parse(&format!("sqlite://{}/truth.db", dir.path().display())).unwrap();
        let (recorder, _) = Recorder::start(RecorderConfig::new(dir.path().into(), "h".into(), store)).unwrap();
        let mut inventory = LocalInventory::load(dir.path()).unwrap();
        inventory.upsert(entry("a", "1"), &recorder).unwrap();
        inventory.upsert(entry("b", "1"), &recorder).unwrap();
        inventory.compact().unwrap();
        inventory.upsert(entry("a", "2"), &recorder).unwrap();
        inventory.remove("h", "Service", "b", &recorder).unwrap();
        drop(inventory); // as if the process died before the end of its pass
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("inventory.log"))
            .unwrap()
            .write_all(b"{\"upsert\":{\"host\"")
            .unwrap();

        let inventory = LocalInventory::load(dir.path()).unwrap();
        let names: Vec<(&str, &str)> = inventory
            .entries()
            .map(|e| (e.name.as_str(), e.spec_hash.as_str()))
            .collect();
        assert_eq!(names, [("a", "2")]);
    }
}
