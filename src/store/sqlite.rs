//! SQLite: the default truth store, a file in the state dir, in WAL mode.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::Executor;

use super::sql::{self, SqlStore};
use super::{Backend, StoreError, StoreUrl};

pub use super::migrations::SQLITE_MIGRATOR as MIGRATOR;

pub async fn open(url: &StoreUrl) -> Result<SqlStore, StoreError> {
    sqlx::any::install_default_drivers();
    let connect_error = |e: &dyn std::fmt::Display| StoreError::Connect {
        url: url.to_string(),
        message: e.to_string(),
    };
    let path = url
        .sqlite_path()
        .ok_or_else(|| connect_error(&"expected sqlite://FILE"))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| connect_error(&format!("{}: {e}", parent.display())))?;
    }
    // `mode=rwc` creates the file; WAL lets readers (status, drift list) run beside the writer.
    let connect_url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(sqlx::raw_sql(
                    "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                ))
                .await?;
                Ok(())
            })
        })
        .connect(&connect_url)
        .await
        .map_err(|e| connect_error(&e))?;
    // Two openers of a new store (a pass's recorder and its memory step, or two commands) would
    // both see migration 1 unapplied and one would fail ("table runs already exists"), or find
    // the switch to WAL busy: SQLite has no lock for sqlx to take, so both are serialized with a
    // file lock beside the store.
    let lock_path = std::path::PathBuf::from(format!("{}.migrate-lock", path.display()));
    let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(file)
    })
    .await
    .map_err(|e| connect_error(&e))?
    .map_err(|e| connect_error(&format!("locking the store for its migrations: {e}")))?;
    pool.execute(sqlx::raw_sql("PRAGMA journal_mode = WAL;"))
        .await
        .map_err(|e| connect_error(&e))?;
    let migrated = sql::migrate(&pool, url, &MIGRATOR).await;
    drop(lock);
    migrated?;
    let reader_options = SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10))
        .row_buffer_size(4096);
    // Opened on first use: the daemon rarely reads receipts, and each connection costs memory.
    let reader = SqlitePoolOptions::new()
        .max_connections(2)
        .idle_timeout(Duration::from_secs(60))
        .connect_lazy_with(reader_options);
    Ok(SqlStore {
        pool,
        url: url.clone(),
        backend: Backend::Sqlite,
        sqlite_reader: Some(reader),
    })
}
