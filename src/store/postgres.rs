//! PostgreSQL: the truth store a fleet of hosts shares.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::Connection;

use super::sql::{self, SqlStore};
use super::{Backend, StoreError, StoreUrl};

pub use super::migrations::POSTGRES_MIGRATOR as MIGRATOR;

pub async fn open(url: &StoreUrl) -> Result<SqlStore, StoreError> {
    sqlx::any::install_default_drivers();
    let connect_error = |e: sqlx::Error| StoreError::Connect {
        url: url.to_string(),
        message: super::redact(&e.to_string()),
    };
    // One direct connection first: a pool would only say "timed out", hiding "connection refused".
    let probe = tokio::time::timeout(Duration::from_secs(5), sqlx::AnyConnection::connect(url.secret()))
        .await
        .map_err(|_| StoreError::Connect {
            url: url.to_string(),
            message: "no answer within 5s".into(),
        })?
        .map_err(connect_error)?;
    let _ = probe.close().await;
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url.secret())
        .await
        .map_err(connect_error)?;
    sql::migrate(&pool, url, &MIGRATOR).await?;
    Ok(SqlStore {
        pool,
        url: url.clone(),
        backend: Backend::Postgres,
        sqlite_reader: None,
    })
}
