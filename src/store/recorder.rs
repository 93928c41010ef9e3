//! The recorder: how the controller writes to the truth store without waiting on it.
//!
//! `record` and `receipt` put the record on a channel and return. One writer task takes them in
//! order, seals receipts into the host's hash chain, appends them to the journal (synced), then
//! writes everything the database does not have yet. When the database is away the journal
//! grows and the writer retries with backoff; when it is back the backlog is replayed in order.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::chain::{ChainHead, Receipt, ReceiptDraft};
use super::journal::{write_atomically, Journal};
use super::{new_id, Record, Store, StoreError, StoreUrl};
use crate::report::now_ms;

/// Records per database transaction when replaying a backlog.
const RECORDS_PER_WRITE: usize = 500;
/// Commands taken off the channel per journal append.
const COMMANDS_PER_BATCH: usize = 4096;

#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// The journal and the chain head live in `<state dir>/spool`.
    pub state_dir: PathBuf,
    pub host: String,
    pub store: StoreUrl,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Drift reports older than this are deleted after new ones are written.
    pub report_retention: Option<Duration>,
}

impl RecorderConfig {
    pub fn new(state_dir: PathBuf, host: String, store: StoreUrl) -> Self {
        RecorderConfig {
            state_dir,
            host,
            store,
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(30),
            report_retention: None,
        }
    }
}

/// What a flush found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushReport {
    /// Records in the journal that the database does not have yet.
    pub pending: u64,
    /// Why the database could not be written, if it could not.
    pub store_error: Option<String>,
}

enum Command {
    Record(Box<Record>),
    Receipt(Box<ReceiptDraft>),
    Flush(oneshot::Sender<FlushReport>),
    Retention(Duration),
}

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    commands: mpsc::UnboundedSender<Command>,
}

impl Recorder {
    /// Opens the journal and starts the writer on the current tokio runtime. Fails only when the
    /// state dir cannot hold the journal; an unreachable database is retried in the background.
    pub fn start(config: RecorderConfig) -> Result<(Recorder, tokio::task::JoinHandle<()>), StoreError> {
        let spool = crate::state::Layout::of(&config.state_dir).spool();
        let journal = Journal::open(&spool)?;
        let head_path = spool.join("chain-head.json");
        let head = read_head(&head_path, &config.host)?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let writer = Writer {
            retention: config.report_retention,
            config,
            journal,
            head,
            head_path,
            store: None,
            next_attempt: Instant::now(),
            backoff: Duration::ZERO,
            last_error: None,
            down_since: None,
        };
        let task = tokio::spawn(writer.run(receiver));
        Ok((Recorder { commands }, task))
    }

    /// Records something; returns at once.
    pub fn record(&self, record: Record) {
        let _ = self.commands.send(Command::Record(Box::new(record)));
    }

    /// Records an action as the next receipt of this host's chain; returns at once.
    pub fn receipt(&self, draft: ReceiptDraft) {
        let _ = self.commands.send(Command::Receipt(Box::new(draft)));
    }

    /// Sets how long drift reports are kept.
    pub fn set_report_retention(&self, retention: Duration) {
        let _ = self.commands.send(Command::Retention(retention));
    }

    /// Waits until everything recorded before is in the journal and the database has been tried
    /// once more (now, whatever the backoff).
    pub async fn flush(&self) -> FlushReport {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Flush(tx)).is_err() {
            return FlushReport {
                pending: 0,
                store_error: Some("the recorder has stopped".into()),
            };
        }
        rx.await.unwrap_or_else(|_| FlushReport {
            pending: 0,
            store_error: Some("the recorder has stopped".into()),
        })
    }
}

/// The last receipt seq this host has sealed and sent to the database (for `audit verify`):
/// the chain head, less any receipts still waiting in the journal. None when nothing is known.
pub fn local_chain_end(state_dir: &std::path::Path, host: &str) -> Option<i64> {
    let spool = crate::state::Layout::of(state_dir).spool();
    let head = read_head(&spool.join("chain-head.json"), host).ok()?;
    if head.seq == 0 {
        return None;
    }
    let pending_first = super::journal::pending_records(&spool)
        .into_iter()
        .filter_map(|r| match r {
            Record::Receipt(r) if r.host == host => Some(r.seq),
            _ => None,
        })
        .min();
    Some(pending_first.map_or(head.seq, |first| first - 1))
}

fn read_head(path: &std::path::Path, host: &str) -> Result<ChainHead, StoreError> {
    #[derive(serde::Deserialize)]
    struct Saved {
        host: String,
        #[serde(flatten)]
        head: ChainHead,
    }
    match std::fs::read(path) {
        Ok(bytes) => {
            let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| StoreError::local(path, e))?;
            // A state dir moved to another host name starts that host's own chain.
            Ok(if saved.host == host {
                saved.head
            } else {
                ChainHead::default()
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ChainHead::default()),
        Err(e) => Err(StoreError::local(path, e)),
    }
}

struct Writer {
    config: RecorderConfig,
    retention: Option<Duration>,
    journal: Journal,
    head: ChainHead,
    head_path: PathBuf,
    store: Option<Box<dyn Store>>,
    next_attempt: Instant,
    backoff: Duration,
    last_error: Option<String>,
    /// Since when the database has refused writes (the daemon logs the outage and its end once).
    down_since: Option<Instant>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Command>) {
        // Records journaled but not yet accepted by a failing journal append are kept here.
        let mut unjournaled: Vec<Record> = Vec::new();
        loop {
            let waiting = self.journal.pending() > 0 || !unjournaled.is_empty();
            let first = if waiting {
                match tokio::time::timeout_at(self.next_attempt, receiver.recv()).await {
                    Ok(command) => command,
                    Err(_) => {
                        self.try_journal(&mut unjournaled);
                        self.apply(false).await;
                        continue;
                    }
                }
            } else {
                receiver.recv().await
            };
            let Some(first) = first else { break };

            let mut flushes = Vec::new();
            let mut wrote_report = false;
            let mut command = Some(first);
            let mut taken = 0;
            while let Some(c) = command.take() {
                match c {
                    Command::Record(record) => {
                        wrote_report |= matches!(*record, Record::DriftReport(_));
                        unjournaled.push(*record);
                    }
                    Command::Receipt(draft) => {
                        let receipt = Receipt::seal(*draft, new_id(), &self.config.host, now_ms(), &self.head);
                        self.head = receipt.head();
                        unjournaled.push(Record::Receipt(receipt));
                    }
                    Command::Flush(reply) => flushes.push(reply),
                    Command::Retention(retention) => self.retention = Some(retention),
                }
                taken += 1;
                if taken < COMMANDS_PER_BATCH {
                    command = receiver.try_recv().ok();
                }
            }
            self.try_journal(&mut unjournaled);
            let force = !flushes.is_empty();
            if force || Instant::now() >= self.next_attempt {
                self.apply(force).await;
            }
            if wrote_report && self.store.is_some() {
                self.apply_retention().await;
            }
            let report = FlushReport {
                pending: self.journal.pending() + unjournaled.len() as u64,
                store_error: self.last_error.clone(),
            };
            for reply in flushes {
                let _ = reply.send(report.clone());
            }
        }
        // The channel closed: one last attempt, so a clean shutdown leaves little behind.
        self.try_journal(&mut unjournaled);
        self.apply(true).await;
    }

    /// Appends to the journal and saves the chain head; on failure the records stay in memory
    /// and are tried again with the next batch.
    fn try_journal(&mut self, unjournaled: &mut Vec<Record>) {
        if unjournaled.is_empty() {
            return;
        }
        match self.journal.append(unjournaled) {
            Ok(()) => {
                unjournaled.clear();
                let head = serde_json::json!({"host": self.config.host, "seq": self.head.seq, "hash": self.head.hash});
                if let Err(e) = write_atomically(&self.head_path, head.to_string().as_bytes()) {
                    self.last_error = Some(e.to_string());
                }
            }
            Err(e) => self.last_error = Some(e.to_string()),
        }
    }

    /// Writes the journal's backlog to the database, in order, in chunks.
    async fn apply(&mut self, force: bool) {
        if self.journal.pending() == 0 || (!force && Instant::now() < self.next_attempt) {
            return;
        }
        if self.store.is_none() {
            match super::open(&self.config.store).await {
                Ok(store) => self.store = Some(store),
                Err(e) => return self.failed(e),
            }
        }
        let store = self.store.as_ref().expect("opened above");
        let backlog = self.journal.pending();
        while self.journal.pending() > 0 {
            let (records, offset) = match self.journal.read_pending(RECORDS_PER_WRITE) {
                Ok(read) => read,
                Err(e) => return self.failed(e),
            };
            if records.is_empty() {
                break;
            }
            if let Err(e) = store.write(&records).await {
                return self.failed(e);
            }
            if let Err(e) = self.journal.mark_applied(offset, records.len() as u64) {
                return self.failed(e);
            }
        }
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                down_for = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                written = backlog,
                "the truth store answers again: the journal's records are written"
            );
        }
        self.backoff = Duration::ZERO;
        self.last_error = None;
        self.next_attempt = Instant::now();
    }

    fn failed(&mut self, error: StoreError) {
        self.backoff = (self.backoff * 2).clamp(self.config.retry_min, self.config.retry_max);
        self.next_attempt = Instant::now() + self.backoff;
        let error = error.to_string();
        // Once per outage, not once per retry (every 30 s at most, for as long as it lasts).
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!(
                %error,
                pending = self.journal.pending(),
                journal = %self.journal.path().display(),
                "the truth store cannot be written: records wait in the journal and are written when it answers"
            );
        } else {
            tracing::debug!(%error, pending = self.journal.pending(), retry_in = ?self.backoff, "the truth store is still unavailable");
        }
        self.last_error = Some(error);
    }

    async fn apply_retention(&mut self) {
        let (Some(retention), Some(store)) = (self.retention, self.store.as_ref()) else {
            return;
        };
        let before = now_ms() - retention.as_millis() as i64;
        if let Err(e) = store.delete_drift_reports_before(before).await {
            self.last_error = Some(e.to_string());
        }
    }
}
