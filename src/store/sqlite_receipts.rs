//! Reads every receipt of a SQLite store through SQLite's C API, on a connection of the read
//! pool that sqlx lends us (`lock_handle`).
//!
//! Why not sqlx's `fetch_all`: it duplicates every value of every row (`sqlite3_value_dup`) and
//! hands each row from its worker thread to the caller; for 100,000 receipts (`mirrorctl audit`,
//! the chain check) that took 0.75-1 s here, most of it in thread switches. Stepping the statement
//! in place takes a tenth of that (BENCHMARKS.md, "Truth store").

// Unsafe here: Streaming receipts through the SQLite C API (sqlx buffers whole rows). Each block says why it is sound (SAFETY).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};
use std::ptr::{self, NonNull};

use libsqlite3_sys as ffi;
use sqlx::SqlitePool;

use super::Receipt;

/// The same columns, in the same order, as the generic `SELECT_RECEIPTS`.
const SELECT: &str =
    "SELECT id, host, seq, run_id, commit_id, kind, name, action, reason, detail, at_ms, prev_hash, hash \
                      FROM receipts ORDER BY host, seq";

const COLUMNS: [&str; 13] = [
    "id",
    "host",
    "seq",
    "run_id",
    "commit_id",
    "kind",
    "name",
    "action",
    "reason",
    "detail",
    "at_ms",
    "prev_hash",
    "hash",
];

/// Every receipt, ordered by host and sequence number. The error is a message for
/// `StoreError::query` (the SQLite error, or which column of which receipt could not be read).
pub(super) async fn read_all(reader: &SqlitePool) -> Result<Vec<Receipt>, String> {
    let mut connection = reader.acquire().await.map_err(|e| e.to_string())?;
    // While the handle is locked, sqlx's worker thread for this connection waits: nothing else
    // uses the connection. The read blocks this thread (~0.1 s per 100,000 receipts); only
    // `audit` reads the whole chain.
    let mut handle = connection.lock_handle().await.map_err(|e| e.to_string())?;
    let db = handle.as_raw_handle();
    let statement = Statement::prepare(db, SELECT)?;
    let mut receipts = Vec::new();
    while statement.step()? {
        receipts.push(statement.receipt()?);
    }
    Ok(receipts)
}

/// A prepared statement, finalized on drop.
struct Statement {
    db: NonNull<ffi::sqlite3>,
    raw: NonNull<ffi::sqlite3_stmt>,
}

impl Statement {
    fn prepare(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<Statement, String> {
        let mut raw = ptr::null_mut();
        let length = c_int::try_from(sql.len()).map_err(|_| "statement too long".to_string())?;
        // SAFETY: `db` is an open connection we hold the lock of; `sql` is valid for `length`
        // bytes (SQLite copies what it needs); `raw` receives the statement or null.
        let code = unsafe {
            ffi::sqlite3_prepare_v2(
                db.as_ptr(),
                sql.as_ptr().cast::<c_char>(),
                length,
                &mut raw,
                ptr::null_mut(),
            )
        };
        match NonNull::new(raw) {
            Some(raw) if code == ffi::SQLITE_OK => Ok(Statement { db, raw }),
            other => {
                if let Some(raw) = other {
                    // SAFETY: a statement SQLite gave us, finalized once.
                    unsafe { ffi::sqlite3_finalize(raw.as_ptr()) };
                }
                Err(sqlite_error(db, code))
            }
        }
    }

    /// Moves to the next row: `true` when there is one.
    fn step(&self) -> Result<bool, String> {
        // SAFETY: a live statement of a connection whose lock we hold.
        match unsafe { ffi::sqlite3_step(self.raw.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            code => Err(sqlite_error(self.db, code)),
        }
    }

    fn receipt(&self) -> Result<Receipt, String> {
        Ok(Receipt {
            id: self.text(0)?,
            host: self.text(1)?,
            seq: self.integer(2)?,
            run_id: self.optional_text(3)?,
            commit: self.optional_text(4)?,
            kind: self.text(5)?,
            name: self.text(6)?,
            action: self.text(7)?,
            reason: self.text(8)?,
            detail: self.text(9)?,
            at_ms: self.integer(10)?,
            prev_hash: self.text(11)?,
            hash: self.text(12)?,
        })
    }

    fn column_type(&self, column: c_int) -> c_int {
        // SAFETY: the statement is on a row (step returned it) and `column` is below 13.
        unsafe { ffi::sqlite3_column_type(self.raw.as_ptr(), column) }
    }

    fn optional_text(&self, column: c_int) -> Result<Option<String>, String> {
        if self.column_type(column) == ffi::SQLITE_NULL {
            return Ok(None);
        }
        self.text(column).map(Some)
    }

    fn text(&self, column: c_int) -> Result<String, String> {
        if self.column_type(column) != ffi::SQLITE_TEXT {
            return Err(self.bad_column(column, "text"));
        }
        // SAFETY: on a row; text first, then bytes (the order SQLite's documentation asks for);
        // the pointer is valid for `length` bytes until the next step, and copied before it.
        let bytes = unsafe {
            let text = ffi::sqlite3_column_text(self.raw.as_ptr(), column);
            let length = ffi::sqlite3_column_bytes(self.raw.as_ptr(), column);
            if text.is_null() {
                return Err(self.bad_column(column, "text"));
            }
            std::slice::from_raw_parts(text, usize::try_from(length).unwrap_or(0))
        };
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad_column(column, "UTF-8 text"))
    }

    fn integer(&self, column: c_int) -> Result<i64, String> {
        if self.column_type(column) != ffi::SQLITE_INTEGER {
            return Err(self.bad_column(column, "an integer"));
        }
        // SAFETY: on a row, an integer column.
        Ok(unsafe { ffi::sqlite3_column_int64(self.raw.as_ptr(), column) })
    }

    /// "column `detail` of receipt ID: expected UTF-8 text, found ...".
    fn bad_column(&self, column: c_int, expected: &str) -> String {
        let found = match self.column_type(column) {
            ffi::SQLITE_NULL => "NULL",
            ffi::SQLITE_INTEGER => "an integer",
            ffi::SQLITE_FLOAT => "a real",
            ffi::SQLITE_BLOB => "a blob",
            _ => "text that is not UTF-8",
        };
        let id = if column == 0 {
            "?".to_string()
        } else {
            self.text(0).unwrap_or_else(|_| "?".to_string())
        };
        let name = usize::try_from(column)
            .ok()
            .and_then(|i| COLUMNS.get(i))
            .unwrap_or(&"?");
        format!("column `{name}` of receipt {id}: expected {expected}, found {found}")
    }
}

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: finalized once, here; the connection outlives the statement (its lock is held
        // by the caller for the statement's whole life).
        unsafe { ffi::sqlite3_finalize(self.raw.as_ptr()) };
    }
}

fn sqlite_error(db: NonNull<ffi::sqlite3>, code: c_int) -> String {
    // SAFETY: `sqlite3_errmsg` returns a NUL-terminated string owned by the connection, valid
    // until the next call on it; copied at once.
    let message = unsafe {
        let text = ffi::sqlite3_errmsg(db.as_ptr());
        if text.is_null() {
            String::new()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    };
    format!("{message} (SQLite code {code})")
}
