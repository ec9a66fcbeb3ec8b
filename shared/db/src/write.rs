//! One-message writes for [`crate::Database::write`]: a write that is one
//! statement travels as one simple-protocol message on a pool connection,
//!
//! ```text
//! SET LOCAL mosaic.tenant_id = '<tenant>'; EXECUTE mosaic_write_<n>('<tenant>', <params>...)
//! ```
//!
//! which PostgreSQL runs as one implicit transaction: the setting holds for
//! the statement only, RLS reads it, and the transaction commits when the
//! message ends, before PostgreSQL says it is ready for the next one. So a
//! write is one round trip instead of four (`BEGIN` + `SET LOCAL`, the
//! statement, `COMMIT`, and the pool's ping on release, which remains, off
//! the caller's path). An error anywhere rolls the whole message back and
//! leaves the connection idle and clean; no `BEGIN`/`COMMIT` text is needed,
//! so there is no transaction block to abort.
//!
//! The answer is read to its end (`ReadyForQuery`): a failure of the commit
//! itself arrives after the statement's rows, and only then is the write
//! known to have committed.
//!
//! Each statement is prepared once per connection (SQL `PREPARE`), named by a
//! number this `Database` gives it the first time it is written, so every
//! connection of the pool knows it by the same name. A connection learns it
//! lazily: `EXECUTE` of a name it has not prepared fails (SQLSTATE 26000,
//! nothing ran), and the message goes again after a `PREPARE`. A migration
//! that changed what a prepared statement returns (0A000) is handled the same
//! way after a `DEALLOCATE`. Statements are meant to be a service's
//! constants; past [`MAX_STATEMENTS`] distinct ones, writes fall back to an
//! ordinary transaction rather than prepare without end.
//!
//! Parameters are literals of their declared types, exactly as on the read
//! lane ([`crate::select`] says why that is exact); nothing a client sends
//! becomes SQL text.
//!
//! A connection that died while idle (a restart, a killed backend) answers
//! with the server's FATAL error before anything else: nothing of the message
//! ran, so it goes again on another connection, as `BEGIN` does. Anything
//! else that loses the connection after the first answer is not retried: the
//! write may have committed, and only the caller (with its idempotency key)
//! can tell.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use sqlx::postgres::PgRow;
use sqlx::{Either, PgConnection};
use uuid::Uuid;

use crate::error::connection_lost;
use crate::error::sqlstate::{FEATURE_NOT_SUPPORTED, INVALID_SQL_STATEMENT_NAME};
use crate::select::{Param, Select, numbered, push_uuid, types};

/// Most distinct statements one `Database` prepares for one-message writes.
pub(crate) const MAX_STATEMENTS: usize = 256;

/// A write statement as every connection of the pool knows it.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// `mosaic_write_<n>`.
    name: String,
    /// `PREPARE <name>(<types>) AS <statement>`.
    prepare: String,
}

/// How a message failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing of it ran (the connection was dead before it arrived): send
    /// it on another connection.
    Unsent(sqlx::Error),
    /// PostgreSQL refused the statement (a constraint, a bad value, ...):
    /// nothing was written. The caller maps it.
    Statement(sqlx::Error),
    /// Anything else: the connection, or a write whose outcome is unknown.
    Other(sqlx::Error),
}

/// The statements of one-message writes, and their counters.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    statements: Mutex<Statements>,
    writes: AtomicU64,
    prepares: AtomicU64,
}

#[derive(Debug, Default)]
struct Statements {
    /// By `<types>:<statement>`.
    by_text: HashMap<String, Arc<Prepared>>,
    /// By the address and length of a constant ([`Select::constant`]) and
    /// its types: a constant's text never changes, so a hit needs no hashing
    /// of the text (a kilobyte or two for a statement like billing's).
    by_address: HashMap<(usize, usize, String), Arc<Prepared>>,
}

impl Writes {
    /// (writes sent, statements prepared on a connection).
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.prepares.load(Ordering::Relaxed),
        )
    }

    /// The prepared form of `statement`, or `None` past [`MAX_STATEMENTS`].
    pub(crate) fn statement(&self, statement: &Select) -> Option<Arc<Prepared>> {
        let (sql, params) = (statement.sql(), statement.params());
        let types = types(params);
        let mut statements = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let address = statement
            .as_constant()
            .map(|c| (c.as_ptr() as usize, c.len(), types.clone()));
        if let Some(prepared) = address.as_ref().and_then(|a| statements.by_address.get(a)) {
            return Some(Arc::clone(prepared));
        }
        let mut key = String::with_capacity(types.len() + 1 + sql.len());
        key.push_str(&types);
        key.push(':');
        key.push_str(sql);
        let prepared = match statements.by_text.get(&key) {
            Some(prepared) => Arc::clone(prepared),
            None if statements.by_text.len() >= MAX_STATEMENTS => return None,
            None => {
                let name = format!("mosaic_write_{}", statements.by_text.len() + 1);
                let prepared = Arc::new(Prepared {
                    prepare: format!("PREPARE {name}({types}) AS {}", numbered(sql)),
                    name,
                });
                statements.by_text.insert(key, Arc::clone(&prepared));
                prepared
            }
        };
        if let Some(address) = address {
            statements.by_address.insert(address, Arc::clone(&prepared));
        }
        Some(prepared)
    }

    /// The message of one write: the tenant's setting, then the statement.
    pub(crate) fn message(prepared: &Prepared, tenant: Uuid, params: &[Param]) -> String {
        let mut text = String::with_capacity(128 + prepared.name.len() + 24 * params.len());
        // A Uuid: hex and dashes, safe to inline.
        text.push_str("SET LOCAL mosaic.tenant_id = '");
        push_uuid(tenant, &mut text);
        text.push_str("'; EXECUTE ");
        text.push_str(&prepared.name);
        text.push_str("('");
        push_uuid(tenant, &mut text);
        text.push('\'');
        for param in params {
            text.push_str(", ");
            param.write_literal(&mut text);
        }
        text.push(')');
        text
    }

    /// Sends `message` on `conn` (preparing its statement there first if the
    /// connection does not know it) and returns the statement's rows once
    /// the write has committed.
    pub(crate) async fn send(
        &self,
        conn: &mut PgConnection,
        prepared: &Prepared,
        message: &str,
    ) -> Result<Vec<PgRow>, Failure> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut prepared_here = false;
        loop {
            let (err, answered) = match run(conn, message).await {
                Ok(rows) => return Ok(rows),
                Err(failed) => failed,
            };
            let code = match &err {
                sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                _ => None,
            };
            match code.as_deref() {
                Some(INVALID_SQL_STATEMENT_NAME | FEATURE_NOT_SUPPORTED) if !prepared_here => {
                    prepared_here = true;
                    if code.as_deref() == Some(FEATURE_NOT_SUPPORTED) {
                        let deallocate = format!("DEALLOCATE {}", prepared.name);
                        sqlx::Executor::execute(&mut *conn, deallocate.as_str())
                            .await
                            .map_err(Failure::Other)?;
                    }
                    self.prepares.fetch_add(1, Ordering::Relaxed);
                    match sqlx::Executor::execute(&mut *conn, prepared.prepare.as_str()).await {
                        Ok(_) => continue,
                        Err(e) if connection_lost(&e) => return Err(Failure::Other(e)),
                        // The statement itself is wrong; nothing ran.
                        Err(e @ sqlx::Error::Database(_)) => return Err(Failure::Statement(e)),
                        Err(e) => return Err(Failure::Other(e)),
                    }
                }
                _ if connection_lost(&err) => {
                    // The server's FATAL as the very first answer: the
                    // backend ended before it ran even the SET LOCAL.
                    if answered == 0 && code.is_some() {
                        return Err(Failure::Unsent(err));
                    }
                    return Err(Failure::Other(err));
                }
                Some(_) => return Err(Failure::Statement(err)),
                None => return Err(Failure::Other(err)),
            }
        }
    }
}

/// One message, read to its end: the rows of its statement, or the error
/// and how many statements had completed before it.
async fn run(conn: &mut PgConnection, message: &str) -> Result<Vec<PgRow>, (sqlx::Error, usize)> {
    let mut stream = sqlx::Executor::fetch_many(conn, message);
    let (mut rows, mut completed) = (Vec::new(), 0usize);
    while let Some(item) = stream.next().await {
        match item {
            Ok(Either::Right(row)) => rows.push(row),
            Ok(Either::Left(_)) => completed += 1,
            Err(e) => return Err((e, completed)),
        }
    }
    if completed == 2 {
        Ok(rows)
    } else {
        Err((
            sqlx::Error::Protocol(format!("a write answered {completed} results, not 2")),
            completed,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_prepared_under_one_name_with_the_tenant_first() {
        let writes = Writes::default();
        const SQL: &str = "UPDATE t SET n = n + $1 WHERE tenant_id = $tenant AND ref = $2";
        let statement = |constant: bool, second: Param| {
            let mut s = if constant {
                Select::constant(SQL)
            } else {
                Select::new(SQL)
            };
            s.bind(5_i64).bind(second);
            s
        };
        let first = writes
            .statement(&statement(true, None::<Uuid>.into()))
            .unwrap();
        assert_eq!(first.name, "mosaic_write_1");
        assert_eq!(
            first.prepare,
            "PREPARE mosaic_write_1(uuid,int8,uuid) AS \
             UPDATE t SET n = n + $2 WHERE tenant_id = $1 AND ref = $3"
        );
        let again = writes
            .statement(&statement(true, None::<Uuid>.into()))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let copied = writes
            .statement(&statement(false, None::<Uuid>.into()))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &copied));
        let other = writes.statement(&statement(true, "x".into()));
        assert_eq!(other.unwrap().name, "mosaic_write_2");
        let tenant = Uuid::nil();
        assert_eq!(
            Writes::message(&first, tenant, &[Param::from(-1_i64), Param::from("it's")]),
            "SET LOCAL mosaic.tenant_id = '00000000-0000-0000-0000-000000000000'; \
             EXECUTE mosaic_write_1('00000000-0000-0000-0000-000000000000', -1, 'it''s')"
        );
    }

    #[test]
    fn distinct_statements_are_bounded() {
        let writes = Writes::default();
        for n in 0..MAX_STATEMENTS {
            assert!(
                writes
                    .statement(&Select::new(format!("SELECT {n}")))
                    .is_some()
            );
        }
        assert!(
            writes
                .statement(&Select::new("SELECT 'one more'"))
                .is_none()
        );
        assert!(writes.statement(&Select::new("SELECT 0")).is_some());
    }
}
