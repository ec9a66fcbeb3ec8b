//! A few connections kept beside the pool for [`crate::Database::read`],
//! which share round trips: reads that arrive while every lane connection is
//! busy travel together in the next message.
//!
//! Each read is `SET LOCAL mosaic.tenant_id = '<tenant>'; EXECUTE <its
//! SELECT>(<tenant>, <params>...)`. A connection that comes free takes every
//! read waiting (up to [`MAX_BATCH`]) and sends them as one simple-protocol
//! message, which PostgreSQL runs as one implicit transaction, statement by
//! statement: every SELECT runs under the setting made right before it, so
//! each read sees its own tenant's rows only (RLS reads the setting at each
//! statement; the SELECTs bind their tenant as a parameter too). Nothing is
//! written, so sharing the transaction shares no state; the setting ends with
//! the message. One PostgreSQL wake-up and one pair of socket calls then
//! serve a whole batch instead of each read.
//!
//! Each connection prepares a SELECT (SQL `PREPARE`, its own message) the
//! first time it runs it, so PostgreSQL parses and plans it once per
//! connection rather than once per read. Parameters are written as literals
//! of their declared types ([`crate::select`] says why that is exact), and
//! only as parameters: nothing a client sends becomes SQL text.
//!
//! Results are told apart by PostgreSQL's command-complete messages: two per
//! read (the SET and the EXECUTE). An SQL error ends the message: the reads
//! answered before it keep their rows, the failing read gets the error, and
//! the reads after it, which never ran, go out again in a new message. A
//! connection that went stale while idle (a server restart, a killed
//! backend, a migration that changed a prepared SELECT's result) is replaced
//! once and the unanswered reads retried on the new one: they are reads, so
//! running one twice is harmless.
//!
//! sqlx's pool pings every connection it takes back; the lane does not need
//! to, because a message that PostgreSQL answered leaves its connection idle
//! and clean. Messages are sent from a spawned task, so a caller that goes
//! away cannot cut a batch, which other callers wait on, in half.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{ConnectOptions, Either, PgConnection};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::select::{Param, numbered};

use crate::error::connection_lost;
use crate::error::sqlstate::{FEATURE_NOT_SUPPORTED, INVALID_SQL_STATEMENT_NAME};

/// Most reads sent in one message.
const MAX_BATCH: usize = 32;

/// Most SELECTs prepared on one connection; past it they are all deallocated.
const MAX_PREPARED: usize = 256;

type Answer = Result<Vec<PgRow>, sqlx::Error>;

struct Read {
    /// Tells a queued read from a taken one when its caller gives up.
    seq: u64,
    tenant: Uuid,
    /// What its prepared statement is known by: `<parameter types>:<SELECT>`,
    /// the SELECT with `$tenant` and `$1..$n` (see [`numbered`]).
    key: String,
    params: Vec<Param>,
    reply: oneshot::Sender<Answer>,
}

impl Read {
    fn types(&self) -> &str {
        self.key.split_once(':').map_or("", |(types, _)| types)
    }

    fn select(&self) -> &str {
        self.key.split_once(':').map_or("", |(_, select)| select)
    }
}

/// A lane connection and the SELECTs prepared on it, by [`Read::key`].
struct LaneConn {
    conn: PgConnection,
    prepared: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Read>,
    idle: Vec<LaneConn>,
    /// Tasks sending messages; at most `size`, each with one connection.
    senders: usize,
    next_seq: u64,
    closed: bool,
}

pub(crate) struct ReadLane {
    options: PgConnectOptions,
    size: usize,
    /// How long a read waits in the queue before PoolTimedOut.
    queue_timeout: Duration,
    state: Mutex<State>,
    /// Reads sent, and the messages they travelled in.
    reads_sent: AtomicU64,
    messages_sent: AtomicU64,
}

impl std::fmt::Debug for ReadLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLane")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ReadLane {
    pub(crate) fn new(options: PgConnectOptions, size: usize, queue_timeout: Duration) -> Self {
        Self {
            // What makes quoted literals exact (see `crate::select`), whatever
            // the server's default.
            options: options.options([("standard_conforming_strings", "on")]),
            size: size.max(1),
            queue_timeout,
            state: Mutex::new(State::default()),
            reads_sent: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
        }
    }

    /// (reads sent, messages they were sent in), since the start.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.reads_sent.load(Ordering::Relaxed),
            self.messages_sent.load(Ordering::Relaxed),
        )
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the idle connections and fails queued reads; later reads fail
    /// with `PoolClosed`. Messages in flight finish and close their connections.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.idle.clear();
        for read in state.queue.drain(..) {
            let _ = read.reply.send(Err(sqlx::Error::PoolClosed));
        }
    }

    /// Runs `select` under `SET LOCAL mosaic.tenant_id = '<tenant>'` and
    /// returns its rows. `select` is one statement, without `;`, in which
    /// `$tenant` is `tenant` and `$1`, `$2`, ... are `params`.
    pub(crate) async fn read(
        self: &Arc<Self>,
        tenant: Uuid,
        select: &str,
        params: Vec<Param>,
    ) -> Answer {
        debug_assert!(!select.contains(';'));
        for param in &params {
            param.check()?;
        }
        let mut key = String::with_capacity(select.len() + 8 * params.len() + 6);
        key.push_str("uuid");
        for param in &params {
            key.push(',');
            key.push_str(param.type_name());
        }
        key.push(':');
        key.push_str(select);
        let (reply, answer) = oneshot::channel();
        let (seq, sender) = {
            let mut state = self.state();
            if state.closed {
                return Err(sqlx::Error::PoolClosed);
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.queue.push_back(Read {
                seq,
                tenant,
                key,
                params,
                reply,
            });
            let sender = (state.senders < self.size).then(|| {
                state.senders += 1;
                state.idle.pop()
            });
            (seq, sender)
        };
        if let Some(conn) = sender {
            tokio::spawn(Sender::new(Arc::clone(self)).run(conn));
        }
        let mut answer = std::pin::pin!(answer);
        match tokio::time::timeout(self.queue_timeout, &mut answer).await {
            Ok(reply) => reply.unwrap_or(Err(sqlx::Error::PoolClosed)),
            Err(_) => {
                let still_queued = {
                    let mut state = self.state();
                    let at = state.queue.iter().position(|r| r.seq == seq);
                    at.and_then(|at| state.queue.remove(at)).is_some()
                };
                if still_queued {
                    return Err(sqlx::Error::PoolTimedOut);
                }
                // Already sent: PostgreSQL's statement_timeout bounds the rest.
                answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
            }
        }
    }

    /// The next batch, or `None` (and this sender gone, its connection
    /// idle) when nothing waits. Reads whose callers left are dropped.
    fn next_batch(&self, conn: &mut Option<LaneConn>) -> Option<VecDeque<Read>> {
        let mut state = self.state();
        let mut batch = VecDeque::new();
        while batch.len() < MAX_BATCH {
            match state.queue.pop_front() {
                Some(read) if read.reply.is_closed() => {}
                Some(read) => batch.push_back(read),
                None => break,
            }
        }
        if batch.is_empty() {
            if let Some(conn) = conn.take()
                && !state.closed
            {
                state.idle.push(conn);
            }
            state.senders -= 1;
            return None;
        }
        Some(batch)
    }

    /// Answers every read of `batch`; returns the connection if it is still clean.
    async fn send(&self, conn: Option<LaneConn>, mut batch: VecDeque<Read>) -> Option<LaneConn> {
        let mut conn = conn;
        let mut may_replace = conn.is_some();
        loop {
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.options.connect().await {
                    Ok(conn) => LaneConn {
                        conn,
                        prepared: HashMap::new(),
                    },
                    Err(e) => {
                        fail_all(batch, e);
                        return None;
                    }
                },
            };
            let err = match self.send_once(&mut c, &mut batch).await {
                Ok(()) => return Some(c),
                Err(e) => e,
            };
            if stale(&err) {
                // Stale since it was last used: retry what is unanswered on a
                // fresh connection, once.
                if may_replace {
                    may_replace = false;
                    continue;
                }
                fail_all(batch, err);
                return None;
            }
            if matches!(err, sqlx::Error::Database(_)) {
                // PostgreSQL answered with an error for the first unanswered
                // read and skipped the rest; the connection is clean.
                if let Some(failed) = batch.pop_front() {
                    let _ = failed.reply.send(Err(err));
                }
                if batch.is_empty() {
                    return Some(c);
                }
                conn = Some(c);
                continue;
            }
            fail_all(batch, err);
            return None;
        }
    }

    /// One message for the reads of `batch`; pops each read off `batch` as its
    /// answer arrives, so on error the front of `batch` is the read that failed.
    async fn send_once(
        &self,
        c: &mut LaneConn,
        batch: &mut VecDeque<Read>,
    ) -> Result<(), sqlx::Error> {
        c.prepare(batch).await?;
        if batch.is_empty() {
            return Ok(());
        }
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.reads_sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut text = String::with_capacity(batch.len() * 160);
        for read in batch.iter() {
            // A Uuid: hex and dashes, safe to inline.
            let tenant = read.tenant;
            let name = c
                .prepared
                .get(&read.key)
                .ok_or_else(|| sqlx::Error::Protocol("a read's SELECT is not prepared".into()))?;
            let _ = write!(
                text,
                "SET LOCAL mosaic.tenant_id = '{tenant}'; EXECUTE {name}('{tenant}'"
            );
            for param in &read.params {
                text.push_str(", ");
                param.write_literal(&mut text);
            }
            text.push_str(");\n");
        }
        let mut stream = sqlx::Executor::fetch_many(&mut c.conn, text.as_str());
        let (mut rows, mut completed) = (Vec::new(), 0usize);
        while let Some(item) = stream.next().await {
            match item? {
                Either::Right(row) => rows.push(row),
                Either::Left(_) => {
                    completed += 1;
                    if completed % 2 == 0 {
                        let read = batch.pop_front().ok_or_else(|| {
                            sqlx::Error::Protocol("more results than reads".into())
                        })?;
                        let _ = read.reply.send(Ok(std::mem::take(&mut rows)));
                    } else if !rows.is_empty() {
                        return Err(sqlx::Error::Protocol("rows from SET LOCAL".into()));
                    }
                }
            }
        }
        if batch.is_empty() {
            Ok(())
        } else {
            Err(sqlx::Error::Protocol("fewer results than reads".into()))
        }
    }
}

impl LaneConn {
    /// Prepares the SELECTs of `batch` this connection has not prepared yet.
    /// A SELECT that does not prepare (an SQL error) fails its reads, which
    /// leave `batch`; `Err` is a problem with the connection.
    async fn prepare(&mut self, batch: &mut VecDeque<Read>) -> Result<(), sqlx::Error> {
        let mut i = 0;
        while i < batch.len() {
            if self.prepared.contains_key(&batch[i].key) {
                i += 1;
                continue;
            }
            if self.prepared.len() >= MAX_PREPARED {
                sqlx::Executor::execute(&mut self.conn, "DEALLOCATE ALL").await?;
                self.prepared.clear();
                i = 0; // the reads before this one need theirs again
                continue;
            }
            let read = &batch[i];
            let key = read.key.clone();
            let name = format!("mosaic_read_{}", self.prepared.len() + 1);
            let text = format!(
                "PREPARE {name}({}) AS {}",
                read.types(),
                numbered(read.select())
            );
            match sqlx::Executor::execute(&mut self.conn, text.as_str()).await {
                Ok(_) => {
                    self.prepared.insert(key, name);
                    i += 1;
                }
                Err(e) if matches!(e, sqlx::Error::Database(_)) && !stale(&e) => {
                    let (failed, kept) = std::mem::take(batch)
                        .into_iter()
                        .partition::<Vec<_>, _>(|read| read.key == key);
                    *batch = kept.into();
                    fail_all(failed, e);
                    i = 0;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
/// Gives every read the error: the first the error itself, the others a copy.
fn fail_all(reads: impl IntoIterator<Item = Read>, err: sqlx::Error) {
    let mut err = Some(err);
    let mut reads = reads.into_iter().peekable();
    while let Some(read) = reads.next() {
        let e = match (&err, reads.peek()) {
            (Some(e), Some(_)) => copy_error(e),
            _ => err.take().unwrap_or(sqlx::Error::PoolClosed),
        };
        let _ = read.reply.send(Err(e));
    }
}

/// sqlx errors are not `Clone`; a copy keeps what the gRPC mapping looks at.
fn copy_error(err: &sqlx::Error) -> sqlx::Error {
    match err {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        e if stale(e) || matches!(e, sqlx::Error::Tls(_)) => {
            sqlx::Error::Io(std::io::Error::other(e.to_string()))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// The connection must be replaced: it is gone, a prepared SELECT's result
/// changed under it (SQLSTATE 0A000, "cached plan must not change result
/// type", after a migration), or its prepared SELECTs are gone (26000, after
/// a `DEALLOCATE` or `DISCARD` by someone else).
fn stale(e: &sqlx::Error) -> bool {
    connection_lost(e)
        || matches!(e, sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some(FEATURE_NOT_SUPPORTED | INVALID_SQL_STATEMENT_NAME)))
}

/// A task sending batches until the queue is empty. If it ends any other
/// way (a panic, the runtime shutting down), its slot is given back on drop.
struct Sender {
    lane: Arc<ReadLane>,
    done: bool,
}

impl Sender {
    fn new(lane: Arc<ReadLane>) -> Self {
        Self { lane, done: false }
    }

    async fn run(mut self, mut conn: Option<LaneConn>) {
        while let Some(batch) = self.lane.next_batch(&mut conn) {
            conn = self.lane.send(conn, batch).await;
        }
        // `next_batch` gave the slot back under the same lock that saw the
        // queue empty, so no read can be left waiting without a sender.
        self.done = true;
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.done {
            self.lane.state().senders -= 1;
        }
    }
}
