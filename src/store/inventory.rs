//! The local inventory: what this host owns, kept in the state dir so that planning never
//! depends on reaching the truth store, and mirrored to the store through the recorder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::journal::write_atomically;
use super::{InventoryEntry, Record, Recorder, StoreError};

pub struct LocalInventory {
    path: PathBuf,
    entries: BTreeMap<(String, String), InventoryEntry>,
}

impl LocalInventory {
    /// Loads `<state dir>/inventory.json` (empty when it does not exist yet).
    pub fn load(state_dir: &Path) -> Result<LocalInventory, StoreError> {
        let path = state_dir.join("inventory.json");
        let entries: Vec<InventoryEntry> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::local(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::local(&path, e)),
        };
        let entries = entries
            .into_iter()
            .map(|e| ((e.kind.clone(), e.name.clone()), e))
            .collect();
        Ok(LocalInventory { path, entries })
    }

    pub fn entries(&self) -> impl Iterator<Item = &InventoryEntry> {
        self.entries.values()
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<&InventoryEntry> {
        self.entries.get(&(kind.to_string(), name.to_string()))
    }

    /// Records that this host owns `entry` (or updates it): saved locally first, then mirrored.
    pub fn upsert(&mut self, entry: InventoryEntry, recorder: &Recorder) -> Result<(), StoreError> {
        self.entries
            .insert((entry.kind.clone(), entry.name.clone()), entry.clone());
        self.save()?;
        recorder.record(Record::Inventory(entry));
        Ok(())
    }

    /// Records that this host no longer owns `kind/name`.
    pub fn remove(&mut self, host: &str, kind: &str, name: &str, recorder: &Recorder) -> Result<(), StoreError> {
        if self.entries.remove(&(kind.to_string(), name.to_string())).is_some() {
            self.save()?;
            recorder.record(Record::InventoryRemoved {
                host: host.into(),
                kind: kind.into(),
                name: name.into(),
            });
        }
        Ok(())
    }

    fn save(&self) -> Result<(), StoreError> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::local(parent, e))?;
        }
        let entries: Vec<&InventoryEntry> = self.entries.values().collect();
        let bytes = serde_json::to_vec_pretty(&entries).map_err(|e| StoreError::local(&self.path, e))?;
        write_atomically(&self.path, &bytes)
    }
}
