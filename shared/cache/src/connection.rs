//! [`Redis`]: the process's one Redis handle, shared by the rate limiter and
//! every service's cache, and its one answer to "is Redis down".
//!
//! - **Connection.** A single node (a `ConnectionManager`, which reconnects
//!   by itself) or, when `MOSAIC_REDIS_URL` lists several seed nodes, a Redis
//!   Cluster connection (which follows the slot map). Made lazily: a process
//!   starts while Redis is down.
//! - **Deadline.** Every call, connecting included, is bounded by
//!   `MOSAIC_REDIS_TIMEOUT_MS`.
//! - **Breaker.** `MOSAIC_REDIS_BREAKER_FAILURES` failed calls (refused,
//!   reset, timed out, cluster down) in a row, or within one second
//!   ([`FAILURE_WINDOW`]) whatever succeeded in between, open it. While it
//!   is open no call touches Redis: [`Redis::run`] answers [`Unavailable`]
//!   at once, so an outage costs a call nothing (the limiter allows, the
//!   cache misses). A background probe PINGs Redis every
//!   `MOSAIC_REDIS_PROBE_INTERVAL_MS` (making a fresh connection when the
//!   last PING failed) and closes the breaker once Redis answers within the
//!   call timeout. A server's error reply to a command (a script error) is
//!   not an outage and does not count.
//! - **Deferred invalidations.** A cache invalidation that cannot reach Redis
//!   is kept (bounded) and opens the breaker at once: the probe deletes the
//!   kept keys before it closes the breaker, so this process never reads a
//!   value that an invalidation it acknowledged should have removed.
//! - **Telling.** Each transition is logged once (opening with its cause;
//!   closing with how long it was open and how many calls went without
//!   Redis), never once per call; a breaker that flaps logs one opening
//!   every 10 s at most (the others at debug level, counted in the next).
//!   The metrics carry `mosaic_redis_up`, `mosaic_redis_breaker_opens_total`,
//!   `mosaic_redis_calls_skipped_total`, `mosaic_redis_errors_total` and
//!   `mosaic_redis_deferred_invalidations`.
//!
//! Each process has one breaker for all of its Redis, a cluster included: a
//! master that is down opens it for every tenant, and every call goes to the
//! store until every master answers PING again. Redis is an accelerator; a
//! per-slot breaker would buy little for its complexity.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use mosaic_core::{ConfigError, Metrics};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::watch;

use crate::config::{REDIS_URL, RedisConfig};
use crate::metrics::CacheMetrics;

/// How long making a connection may take (in the background, or bounded by
/// the call timeout when a call waits for it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Least time between two warnings about errors that do not open the
/// breaker, and between two loudly logged openings.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The window in which `MOSAIC_REDIS_BREAKER_FAILURES` failed calls open the
/// breaker. Successes in between do not reset it: with one Cluster master
/// down, a third of the calls fail and the rest succeed, and the breaker
/// must still open.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(1);
/// Most invalidations kept while Redis cannot be reached; past it those kept
/// are dropped and fall back to the entries' TTL (a warning says so).
const MAX_DEFERRED: usize = 100_000;

/// Why a call went on without Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The breaker is open: Redis was not asked.
    Open,
    /// Redis was asked and failed or did not answer in time.
    Failed,
}

/// The process's Redis handle. Cheap to clone; clones share the connection,
/// the breaker and the probe.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("config", &self.inner.config)
            .field("open", &self.is_open())
            .finish()
    }
}

enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// A connection of either kind; scripts and commands run on it alike.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Inner {
    config: RedisConfig,
    target: Target,
    /// The connection once made; receivers are woken after every attempt.
    conn: watch::Sender<Option<Conn>>,
    connecting: AtomicBool,
    open: AtomicBool,
    /// Whether a probe task is alive (one that died with its runtime is
    /// started again by the next call that finds the breaker open).
    probing: AtomicBool,
    /// Failed calls in the current failure window, and when it began
    /// (milliseconds after `started`).
    failures: AtomicU32,
    window_start: AtomicU64,
    /// Failed calls since the last success.
    consecutive: AtomicU32,
    /// Since when the breaker is open, if it is.
    opened: Mutex<Option<Opened>>,
    /// When a transition was last logged at warn/info level.
    last_loud: Mutex<Option<Instant>>,
    /// Openings logged only at debug level since the last loud one.
    quiet_opens: AtomicU64,
    opens: AtomicU64,
    skipped: AtomicU64,
    errors: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last warning, plus one; 0 = never.
    last_warn: AtomicU64,
    /// Keys whose invalidation could not reach Redis, each with its lease key.
    deferred: Mutex<HashSet<[String; 2]>>,
    pub(crate) cache_metrics: CacheMetrics,
}

impl Redis {
    /// A handle for `config`. Does not connect (the first call does). Fails
    /// only on a malformed URL.
    pub fn new(config: RedisConfig) -> Result<Self, ConfigError> {
        let invalid = |e: RedisError| ConfigError::invalid_secret(REDIS_URL, e);
        let target = if config.is_cluster() {
            let urls: Vec<&str> = config.urls.iter().map(|url| url.expose()).collect();
            let client = ClusterClientBuilder::new(urls)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(config.timeout)
                .retries(2)
                .min_retry_wait(5)
                .max_retry_wait(50)
                .build()
                .map_err(invalid)?;
            Target::Cluster(client)
        } else {
            Target::Single(redis::Client::open(config.urls[0].expose()).map_err(invalid)?)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                target,
                conn: watch::Sender::new(None),
                connecting: AtomicBool::new(false),
                open: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                window_start: AtomicU64::new(0),
                consecutive: AtomicU32::new(0),
                opened: Mutex::new(None),
                last_loud: Mutex::new(None),
                quiet_opens: AtomicU64::new(0),
                opens: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                started: Instant::now(),
                last_warn: AtomicU64::new(0),
                deferred: Mutex::new(HashSet::new()),
                cache_metrics: CacheMetrics::new(),
            }),
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Whether the breaker is open (calls skip Redis).
    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::Acquire)
    }

    pub(crate) fn cache_metrics(&self) -> &CacheMetrics {
        &self.inner.cache_metrics
    }

    /// Registers the breaker's and the caches' metrics in `metrics` (once per
    /// process).
    pub fn register_metrics(&self, metrics: &Metrics) -> Result<(), prometheus::Error> {
        let weak = Arc::downgrade(&self.inner);
        let sample = |read: fn(&Inner) -> f64| -> mosaic_core::GaugeFn {
            let weak = weak.clone();
            Arc::new(move || weak.upgrade().map_or(0.0, |inner| read(&inner)))
        };
        metrics.register_gauge_fn(
            "mosaic_redis_up",
            "1 while the Redis breaker is closed (calls use Redis), 0 while it is open.",
            &[],
            sample(|i| {
                if i.open.load(Ordering::Relaxed) {
                    0.0
                } else {
                    1.0
                }
            }),
        )?;
        metrics.register_counter_fn(
            "mosaic_redis_breaker_opens_total",
            "Times the Redis breaker opened.",
            &[],
            sample(|i| i.opens.load(Ordering::Relaxed) as f64),
        )?;
        metrics.register_counter_fn(
            "mosaic_redis_calls_skipped_total",
            "Calls that went on without asking Redis because the breaker was open.",
            &[],
            sample(|i| i.skipped.load(Ordering::Relaxed) as f64),
        )?;
        metrics.register_counter_fn(
            "mosaic_redis_errors_total",
            "Redis calls that failed or did not answer within the timeout.",
            &[],
            sample(|i| i.errors.load(Ordering::Relaxed) as f64),
        )?;
        metrics.register_gauge_fn(
            "mosaic_redis_deferred_invalidations",
            "Cache invalidations waiting for Redis to come back.",
            &[],
            sample(|i| i.deferred_len() as f64),
        )?;
        self.inner.cache_metrics.register(metrics)
    }

    /// Runs `op` on the connection within the call timeout, unless the
    /// breaker is open. Outage-like failures count towards opening it.
    ///
    /// `operation` names the command group in its trace span (`cache.get`,
    /// `ratelimit`, ...): one client span per group while spans are
    /// exported, none while the breaker keeps Redis out of it.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        op: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &self.inner;
        if self.is_open() {
            inner.skipped.fetch_add(1, Ordering::Relaxed);
            self.ensure_probe();
            return Err(Unavailable::Open);
        }
        let span = redis_span(operation);
        let attempt = async {
            let conn = self.connection().await?;
            op(conn).await
        };
        let result = match tokio::time::timeout(inner.config.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((
                ErrorKind::IoError,
                "no answer within the timeout",
            ))),
        };
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        drop(span);
        match result {
            Ok(value) => {
                // Read first: a write on every call would bounce the cache line.
                if inner.consecutive.load(Ordering::Relaxed) != 0 {
                    inner.consecutive.store(0, Ordering::Relaxed);
                }
                Ok(value)
            }
            Err(e) => {
                inner.errors.fetch_add(1, Ordering::Relaxed);
                if is_outage(&e) {
                    let in_window = inner.count_failure();
                    let in_a_row = inner.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                    if in_window.max(in_a_row) >= inner.config.breaker_failures {
                        self.open(&e);
                    }
                } else {
                    inner.warn_now_and_then(&e);
                }
                Err(Unavailable::Failed)
            }
        }
    }

    /// Keeps `keys` to delete once Redis answers, and opens the breaker so
    /// that nothing is read from Redis before they are gone.
    pub(crate) fn defer_invalidation(&self, keys: [String; 2], cause: &dyn std::fmt::Display) {
        {
            let mut deferred = self
                .inner
                .deferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if deferred.len() >= MAX_DEFERRED {
                tracing::warn!(
                    kept = deferred.len(),
                    "too many cache invalidations waiting for redis: those kept fall back to the entries' TTL"
                );
                deferred.clear();
            }
            deferred.insert(keys);
        }
        self.open(cause);
    }

    /// The shared connection: the one made, or a fresh attempt (one at a
    /// time; callers wait for it within their own timeout).
    async fn connection(&self) -> redis::RedisResult<Conn> {
        if let Some(conn) = self.inner.conn.borrow().clone() {
            return Ok(conn);
        }
        let mut rx = self.inner.conn.subscribe();
        if !self.inner.connecting.swap(true, Ordering::AcqRel) {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                let made = inner.connect().await;
                inner.connecting.store(false, Ordering::Release);
                match made {
                    Ok(conn) => {
                        inner.conn.send_replace(Some(conn));
                    }
                    // Wake the calls waiting on this attempt.
                    Err(_) => inner.conn.send_modify(|_| {}),
                }
            });
        }
        // The connection may have landed between the first look and subscribing.
        if let Some(conn) = rx.borrow_and_update().clone() {
            return Ok(conn);
        }
        let _ = rx.changed().await;
        let conn = rx.borrow().clone();
        conn.ok_or_else(|| RedisError::from((ErrorKind::IoError, "cannot connect")))
    }

    /// Opens the breaker (once: later calls while open do nothing) and
    /// starts the probe that will close it.
    fn open(&self, cause: &dyn std::fmt::Display) {
        let inner = &self.inner;
        if inner.open.swap(true, Ordering::AcqRel) {
            return;
        }
        inner.opens.fetch_add(1, Ordering::Relaxed);
        let loud = inner.loud_now();
        *inner.opened.lock().unwrap_or_else(PoisonError::into_inner) = Some(Opened {
            at: Instant::now(),
            skipped_before: inner.skipped.load(Ordering::Relaxed),
            loud,
        });
        let probe_every_ms = inner.config.probe_interval.as_millis() as u64;
        if loud {
            tracing::warn!(
                redis = %inner.config.urls[0],
                error = %cause,
                probe_every_ms,
                reopened_quietly = inner.quiet_opens.swap(0, Ordering::Relaxed),
                "redis breaker open: calls go on without redis until it answers again"
            );
        } else {
            inner.quiet_opens.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %cause, "redis breaker open again");
        }
        self.ensure_probe();
    }

    /// Starts the probe unless one is running.
    fn ensure_probe(&self) {
        let probing = &self.inner.probing;
        if !probing.load(Ordering::Acquire) && !probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe(Arc::downgrade(&self.inner)));
        }
    }
}

/// Marks the probe gone when its task ends, however it ends.
struct Probing(Weak<Inner>);

impl Drop for Probing {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.probing.store(false, Ordering::Release);
        }
    }
}

/// PINGs Redis every probe interval until it answers in time, deletes the
/// deferred invalidations, then closes the breaker. Ends early when every
/// handle is gone.
async fn probe(weak: Weak<Inner>) {
    let _probing = Probing(weak.clone());
    loop {
        let interval = match weak.upgrade() {
            Some(inner) => inner.config.probe_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        match inner.ping_and_flush().await {
            Ok(()) => {
                // Close only with nothing deferred, under the lock a deferral
                // takes: one that lands after this reopens the breaker.
                let deferred = inner
                    .deferred
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !deferred.is_empty() {
                    continue;
                }
                inner.failures.store(0, Ordering::Relaxed);
                inner.consecutive.store(0, Ordering::Relaxed);
                inner.open.store(false, Ordering::Release);
                drop(deferred);
                let opened = inner
                    .opened
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                if let Some(opened) = opened {
                    let open_ms = opened.at.elapsed().as_millis() as u64;
                    let calls_skipped = inner
                        .skipped
                        .load(Ordering::Relaxed)
                        .saturating_sub(opened.skipped_before);
                    if opened.loud {
                        tracing::info!(
                            redis = %inner.config.urls[0],
                            open_ms,
                            calls_skipped,
                            "redis breaker closed: redis answers again"
                        );
                    } else {
                        tracing::debug!(open_ms, calls_skipped, "redis breaker closed again");
                    }
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "redis probe failed; breaker stays open");
                // Start from a fresh connection next time.
                inner.conn.send_replace(None);
            }
        }
    }
}

/// An open breaker's record.
struct Opened {
    at: Instant,
    /// `skipped` when it opened.
    skipped_before: u64,
    /// Whether its opening was logged at warn level (its closing then is at info).
    loud: bool,
}

impl Inner {
    /// Counts one failed call; returns the failures in the current window
    /// of [`FAILURE_WINDOW`] (a new window starts with this one when the
    /// last is over). Approximate under races, which only shifts the
    /// opening by a call.
    fn count_failure(&self) -> u32 {
        let now = self.millis();
        let start = self.window_start.load(Ordering::Relaxed);
        let window = u64::try_from(FAILURE_WINDOW.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(start) >= window
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.failures.store(1, Ordering::Relaxed);
            return 1;
        }
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Milliseconds since `started`, plus one (so 0 can mean "never").
    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Whether a transition may be logged loudly now: at most one opening
    /// every [`WARN_EVERY`], so a flapping Redis logs a few lines, not two
    /// per probe interval (the metrics count every opening).
    fn loud_now(&self) -> bool {
        let mut last = self
            .last_loud
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        let made = async {
            match &self.target {
                Target::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(CONNECT_TIMEOUT)
                        .set_response_timeout(self.config.timeout)
                        .set_number_of_retries(1)
                        .set_max_delay(500);
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, made)
            .await
            .unwrap_or_else(|_| Err(RedisError::from((ErrorKind::IoError, "connect timed out"))))
    }

    async fn ping_and_flush(&self) -> redis::RedisResult<()> {
        let existing = self.conn.borrow().clone();
        let mut conn = match existing {
            Some(conn) => conn,
            None => {
                let conn = self.connect().await?;
                self.conn.send_replace(Some(conn.clone()));
                conn
            }
        };
        let within = |what: &'static str| {
            move |_| RedisError::from((ErrorKind::IoError, what, "no answer in time".to_owned()))
        };
        tokio::time::timeout(
            self.config.timeout,
            redis::cmd("PING").query_async::<()>(&mut conn),
        )
        .await
        .map_err(within("ping"))??;
        let keys: Vec<[String; 2]> = self
            .deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for pair in keys {
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                redis::cmd("DEL")
                    .arg(&pair[..])
                    .query_async::<()>(&mut conn),
            )
            .await
            .map_err(within("deferred invalidation"))??;
            self.deferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pair);
        }
        Ok(())
    }

    fn deferred_len(&self) -> usize {
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Logs an error that does not open the breaker, at most every [`WARN_EVERY`].
    fn warn_now_and_then(&self, error: &RedisError) {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_warn.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
        if self
            .last_warn
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(error = %error, "redis call failed; going on without redis");
        }
    }
}

/// Whether `e` says Redis cannot be reached (as opposed to an error reply
/// to one command).
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_cluster_error()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::MasterDown
                | ErrorKind::ReadOnly
                | ErrorKind::ClusterConnectionNotFound
        )
}

/// The client span of one Redis command group (a script, a DEL), a child of
/// the calling RPC's span, or a disabled span while spans are not exported.
/// No key in it: keys carry tenant and resource ids, the tenant is already on
/// the RPC's span.
fn redis_span(operation: &'static str) -> tracing::Span {
    if !mosaic_core::spans::exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "redis",
        otel.name = operation,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "redis",
        db.operation.name = operation,
    )
}
