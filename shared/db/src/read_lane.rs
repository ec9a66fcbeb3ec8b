//! A few connections kept beside the pool for [`crate::Database::read_by_ids`].
//!
//! sqlx's pool pings every connection it takes back (a round trip and a
//! wake-up of the PostgreSQL backend per call). A one-message read leaves its
//! connection idle and clean once PostgreSQL has answered — the message is one
//! implicit transaction — so this lane puts it straight back. A connection is
//! only returned after PostgreSQL answered (rows or an SQL error); if a call
//! is dropped mid-flight, or the connection fails, it is closed instead. A
//! connection that went stale while idle (a server restart) is replaced once.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{ConnectOptions, PgConnection};
use tokio::sync::Semaphore;

#[derive(Debug)]
pub(crate) struct ReadLane {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    permits: Semaphore,
    acquire_timeout: Duration,
}

impl ReadLane {
    pub(crate) fn new(options: PgConnectOptions, size: usize, acquire_timeout: Duration) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
            acquire_timeout,
        }
    }

    /// Closes the idle connections; later reads fail with `PoolClosed`.
    pub(crate) fn close(&self) {
        self.permits.close();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Runs `text` (no arguments: one simple-protocol message).
    pub(crate) async fn fetch_all(&self, text: &str) -> Result<Vec<PgRow>, sqlx::Error> {
        let _permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(conn) = idle {
            match self.run(conn, text).await {
                // A stale connection: try once more on a fresh one.
                Err(e) if connection_lost(&e) => {}
                other => return other,
            }
        }
        let conn = self.options.connect().await?;
        self.run(conn, text).await
    }

    async fn run(&self, mut conn: PgConnection, text: &str) -> Result<Vec<PgRow>, sqlx::Error> {
        let result = sqlx::Executor::fetch_all(&mut conn, text).await;
        // PostgreSQL answered (rows or an SQL error, after which the implicit
        // transaction is already rolled back): the connection is clean.
        let clean = match &result {
            Ok(_) => true,
            Err(e) => matches!(e, sqlx::Error::Database(_)) && !connection_lost(e),
        };
        if clean {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
        result
    }
}

/// The connection is gone: an I/O error, or the server ending the session
/// (SQLSTATE class 08, or 57P01..57P03: terminated, crash, not accepting).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}
