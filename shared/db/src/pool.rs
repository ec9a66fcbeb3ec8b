//! [`Database`]: one service's pool; [`TenantTx`]: a transaction fenced to one tenant.

use std::time::Duration;

use mosaic_api::{ApiError, ApiResult};
use mosaic_core::{Metrics, Probe, ProbeFuture, TenantId};
use mosaic_tenant::TenantContext;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::config::DbConfig;
use crate::error::{connection_lost, db_error};
use crate::read_lane::ReadLane;
use crate::select::{Select, arguments, numbered};
use crate::write::{Failure, Writes};

/// A service's connection pool, logged in as the service's runtime role.
#[derive(Debug, Clone)]
pub struct Database {
    pool: PgPool,
    reads: std::sync::Arc<ReadLane>,
    writes: std::sync::Arc<Writes>,
    platform_role: Option<&'static str>,
    max_connections: u32,
    /// Calls that found no connection within the acquire timeout (the pool's
    /// or the read lane's queue).
    acquire_timeouts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Database {
    /// A lazy pool: the service starts (and reports NOT_SERVING) while the
    /// database is down, and connects when it comes back.
    pub fn connect_lazy(config: &DbConfig, application_name: &str) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = config
            .url
            .expose()
            .parse::<PgConnectOptions>()?
            .application_name(application_name);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            // sqlx already pings every connection when it is released (that
            // ping also flushes a read's queued rollback); a second ping on
            // acquire would put one more round trip on every call's path.
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            reads: std::sync::Arc::new(ReadLane::new(
                options.application_name(&format!("{application_name}-reads")),
                config.read_connections as usize,
                config.acquire_timeout,
            )),
            writes: std::sync::Arc::default(),
            platform_role: None,
            max_connections: config.max_connections,
            acquire_timeouts: std::sync::Arc::default(),
        })
    }

    /// Allows [`Database::begin_platform`], switching to `role` for
    /// cross-tenant reads by platform admins (identity only).
    pub fn with_platform_role(mut self, role: &'static str) -> Self {
        self.platform_role = Some(role);
        self
    }

    /// Opens a transaction in which only `ctx`'s tenant's rows exist.
    /// `BEGIN` and `SET LOCAL mosaic.tenant_id` travel in one round trip.
    pub async fn begin(&self, ctx: &TenantContext) -> ApiResult<TenantTx> {
        let tenant = ctx.tenant_id()?;
        let span = pg_span(PgOperation::Transaction);
        // `tenant` is a Uuid: its text form is hex and dashes, safe to inline.
        let sql = format!("BEGIN; SET LOCAL mosaic.tenant_id = '{tenant}'");
        let tx = self
            .begin_with(&sql)
            .await
            .inspect_err(|_| failed(&span))
            .map_err(db_error)?;
        Ok(TenantTx {
            tx,
            ctx: ctx.clone(),
            tenant,
            span,
        })
    }

    /// Opens a transaction with `sql`. The pool does not ping connections on
    /// acquire, so after a database restart its idle connections are dead:
    /// `BEGIN` is the first thing sent on one, and nothing has happened yet
    /// when it fails, so it is retried on the next connection (a dead one
    /// fails at once), up to the pool's size.
    async fn begin_with(&self, sql: &str) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut attempts = self.max_connections;
        loop {
            match self.pool.begin_with(sql.to_owned()).await {
                Err(e) if attempts > 0 && connection_lost(&e) => attempts -= 1,
                other => return other.inspect_err(|e| self.note_timeout(e)),
            }
        }
    }

    /// Counts `e` when it is an acquire timeout
    /// (`mosaic_db_pool_acquire_timeouts_total`).
    fn note_timeout(&self, e: &sqlx::Error) {
        if matches!(e, sqlx::Error::PoolTimedOut) {
            self.acquire_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A read in at most one round trip, for Get and List methods: the
    /// SELECT runs right after `SET LOCAL mosaic.tenant_id = '<tenant>'` in
    /// one simple-protocol message, which PostgreSQL runs as one implicit
    /// transaction, so the setting ends with it. Reads that arrive while the
    /// read connections are busy share the next message, and each connection
    /// prepares a SELECT once (see the `read_lane` module). `$tenant` is the
    /// caller's tenant; parameters are bound, never spliced into the text.
    pub async fn read<T>(&self, ctx: &TenantContext, select: Select) -> ApiResult<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let tenant = ctx.tenant_id()?;
        let (sql, params) = select.into_parts();
        if sql.contains(';') || sql.trim().is_empty() {
            return Err(ApiError::internal("Database::read takes one statement"));
        }
        let span = pg_span(PgOperation::Read);
        let rows = self
            .reads
            .read(tenant.uuid(), &sql, params)
            .await
            .inspect_err(|e| {
                self.note_timeout(e);
                failed(&span);
            })
            .map_err(db_error)?;
        drop(span);
        rows.iter()
            .map(|row| T::from_row(row).map_err(db_error))
            .collect()
    }

    /// A write that is one statement, in one round trip: `SET LOCAL
    /// mosaic.tenant_id = '<tenant>'` and the statement travel in one
    /// simple-protocol message on a pool connection, which PostgreSQL runs
    /// and commits as one implicit transaction (see the `write` module). When
    /// this returns the statement's rows, the write has committed; when the
    /// statement fails, nothing was written. `$tenant` is the caller's
    /// tenant; parameters are bound as [`Database::read`]'s are, and each
    /// connection prepares the statement once.
    ///
    /// The outer `Err` is already mapped (no tenant, pool exhausted within
    /// its acquire timeout, database unreachable); the inner one is
    /// PostgreSQL refusing the statement, for the caller to map with its own
    /// constraints ([`crate::db_error_with`]). A statement that must be one
    /// step of a longer transaction runs through [`TenantTx::fetch_all`]
    /// instead, with the same text.
    pub async fn write<T>(
        &self,
        ctx: &TenantContext,
        statement: Select,
    ) -> ApiResult<Result<Vec<T>, sqlx::Error>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let tenant = ctx.tenant_id()?;
        let sql = statement.sql();
        if sql.contains(';') || sql.trim().is_empty() {
            return Err(ApiError::internal("Database::write takes one statement"));
        }
        for param in statement.params() {
            param.check().map_err(db_error)?;
        }
        let Some(prepared) = self.writes.statement(&statement) else {
            // More distinct statements than a connection should keep prepared:
            // an ordinary transaction, same statement, same guarantees.
            let mut tx = self.begin(ctx).await?;
            let rows = match tx.fetch_all(&statement).await {
                Ok(rows) => rows,
                Err(e) if matches!(e, sqlx::Error::Database(_)) && !connection_lost(&e) => {
                    return Ok(Err(e));
                }
                Err(e) => return Err(db_error(e)),
            };
            tx.commit().await?;
            return Ok(Ok(rows));
        };
        let message = Writes::message(&prepared, tenant.uuid(), statement.params());
        // Ends when this function returns, whichever way.
        let span = pg_span(PgOperation::Write);
        let mut attempts = self.max_connections;
        loop {
            let mut conn = self
                .pool
                .acquire()
                .await
                .inspect_err(|e| self.note_timeout(e))
                .map_err(db_error)?;
            match self.writes.send(&mut conn, &prepared, &message).await {
                Ok(rows) => {
                    // Committed; rows that do not fit `T` are the caller's bug.
                    let rows = rows.iter().map(T::from_row).collect::<Result<_, _>>();
                    return rows.map(Ok).map_err(db_error);
                }
                Err(Failure::Unsent(e)) if attempts > 0 => {
                    attempts -= 1;
                    tracing::debug!(error = %e, "dead pool connection; the write goes on another");
                }
                Err(Failure::Unsent(e) | Failure::Other(e)) => {
                    failed(&span);
                    return Err(db_error(e));
                }
                Err(Failure::Statement(e)) => {
                    failed(&span);
                    return Ok(Err(e));
                }
            }
        }
    }

    /// One-message writes: (writes sent, statements prepared on a connection).
    pub fn write_stats(&self) -> (u64, u64) {
        self.writes.stats()
    }

    /// [`Database::read`] of a SELECT whose parameters `$1`, `$2`, ... are `ids`.
    pub async fn read_by_ids<T>(
        &self,
        ctx: &TenantContext,
        sql: &str,
        ids: &[Uuid],
    ) -> ApiResult<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let mut select = Select::new(sql);
        for id in ids {
            select.params_mut().push((*id).into());
        }
        self.read(ctx, select).await
    }

    /// The one path with no tenant at all: `sql` runs outside any tenant
    /// transaction, so `mosaic.tenant_id` is unset and RLS hides every
    /// tenant row; only a SECURITY DEFINER function of the schema (each one
    /// named in the catalog test) can return anything. For agents'
    /// `lookup_public_key`, which an edge service calls before it knows a
    /// tenant. `sql` is a constant of the service, `arg` its one parameter.
    pub async fn call_without_tenant<T>(&self, sql: &'static str, arg: &[u8]) -> ApiResult<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        sqlx::query_as(sql)
            .bind(arg)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
    }

    /// The platform-admin path (the one named exception to tenant scoping):
    /// a read-only transaction under the platform role, whose policies allow
    /// reading across tenants. PERMISSION_DENIED unless the caller is a platform admin.
    pub async fn begin_platform(&self, ctx: &TenantContext) -> ApiResult<PlatformTx> {
        ctx.require_platform_admin()?;
        let role = self
            .platform_role
            .ok_or_else(|| ApiError::internal("platform role not configured"))?;
        let span = pg_span(PgOperation::Transaction);
        let sql = format!("BEGIN READ ONLY; SET LOCAL ROLE {role}");
        let tx = self
            .begin_with(&sql)
            .await
            .inspect_err(|_| failed(&span))
            .map_err(db_error)?;
        Ok(PlatformTx { tx, _span: span })
    }

    /// Pool gauges: (open connections, idle connections, maximum).
    pub fn stats(&self) -> (u32, u32, u32) {
        (
            self.pool.size(),
            self.pool.num_idle() as u32,
            self.max_connections,
        )
    }

    /// One-message reads: (reads sent, messages they were sent in).
    pub fn read_lane_stats(&self) -> (u64, u64) {
        self.reads.stats()
    }

    /// Closes every connection (graceful shutdown).
    pub async fn close(&self) {
        self.reads.close();
        self.pool.close().await;
    }
}

/// A transaction in which `mosaic.tenant_id` is the caller's tenant. Rolled
/// back unless [`TenantTx::commit`] is called.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    ctx: TenantContext,
    tenant: TenantId,
    /// Ends with the transaction (commit, or the rollback of a drop).
    span: tracing::Span,
}

/// The PostgreSQL work a client span covers.
#[derive(Clone, Copy)]
enum PgOperation {
    /// `BEGIN` to `COMMIT` (or rollback): a [`TenantTx`] or [`PlatformTx`].
    Transaction,
    /// A one-message read ([`Database::read`]).
    Read,
    /// A one-message write ([`Database::write`]).
    Write,
}

/// The client span of one PostgreSQL transaction, read or write, a child of
/// the calling RPC's span (OpenTelemetry's database conventions; no SQL text,
/// which would carry no secret but is not needed to find a slow call), or a
/// disabled span while spans are not exported.
fn pg_span(operation: PgOperation) -> tracing::Span {
    if !mosaic_core::spans::exporting() {
        return tracing::Span::none();
    }
    let (name, op) = match operation {
        PgOperation::Transaction => ("postgresql transaction", "transaction"),
        PgOperation::Read => ("postgresql read", "read"),
        PgOperation::Write => ("postgresql write", "write"),
    };
    tracing::info_span!(
        "postgresql",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "postgresql",
        db.operation.name = op,
    )
}

/// Marks a PostgreSQL span failed.
fn failed(span: &tracing::Span) {
    span.record("otel.status_code", "error");
}

impl std::fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl TenantTx {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    pub fn ctx(&self) -> &TenantContext {
        &self.ctx
    }

    /// The connection, for sqlx queries: `query.fetch_one(tx.conn())`.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Moves this transaction to another tenant. Platform admins only: used
    /// where one platform operation touches a tenant that does not exist yet
    /// (CreateTenant) and the platform scope (its idempotency record).
    pub async fn switch_tenant(&mut self, tenant: TenantId) -> ApiResult<()> {
        self.ctx.require_platform_admin()?;
        sqlx::query("SELECT set_config('mosaic.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(db_error)?;
        self.tenant = tenant;
        Ok(())
    }

    /// Runs `statement` in this transaction (`$tenant` is its tenant) and
    /// returns its rows: the same text [`Database::write`] sends in one
    /// message, for a write that is one step of a longer transaction.
    /// Parameters are bound in binary; sqlx prepares the statement once per
    /// connection.
    pub async fn fetch_all<T>(&mut self, statement: &Select) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let sql = numbered(statement.sql());
        let args = arguments(self.tenant.uuid(), statement.params())?;
        sqlx::query_as_with(&sql, args)
            .fetch_all(&mut *self.tx)
            .await
    }

    pub async fn commit(self) -> ApiResult<()> {
        let span = self.span;
        self.tx
            .commit()
            .await
            .inspect_err(|_| failed(&span))
            .map_err(db_error)
    }

    /// Ends a transaction that only read. There is nothing to commit, so the
    /// rollback is queued and travels with the pool's release check, off the
    /// caller's path: one round trip fewer than `commit` on every read.
    pub fn finish_read(self) {
        drop(self.tx);
    }
}

/// A read-only cross-tenant transaction for platform admins.
pub struct PlatformTx {
    tx: Transaction<'static, Postgres>,
    _span: tracing::Span,
}

impl std::fmt::Debug for PlatformTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlatformTx")
    }
}

impl PlatformTx {
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> ApiResult<()> {
        self.tx.commit().await.map_err(db_error)
    }
}

impl Probe for Database {
    fn name(&self) -> &str {
        "postgres"
    }

    fn check(&self) -> ProbeFuture<'_> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

impl Database {
    /// Pool gauges, sampled at scrape time: `mosaic_db_pool_connections{service,state}`,
    /// `mosaic_db_pool_acquire_timeouts_total{service}` (calls answered
    /// UNAVAILABLE for want of a connection), and the read lane's `mosaic_db_read_lane_{reads,messages}_total{service}`
    /// (their ratio is how many reads share a message).
    pub fn register_metrics(
        &self,
        metrics: &Metrics,
        service: &str,
    ) -> Result<(), prometheus::Error> {
        for (index, state) in ["open", "idle", "max"].into_iter().enumerate() {
            let db = self.clone();
            metrics.register_gauge_fn(
                "mosaic_db_pool_connections",
                "database pool connections by state",
                &[("service", service), ("state", state)],
                std::sync::Arc::new(move || {
                    let (open, idle, max) = db.stats();
                    f64::from([open, idle, max][index])
                }),
            )?;
        }
        for (index, what) in ["writes", "write_prepares"].into_iter().enumerate() {
            let db = self.clone();
            metrics.register_counter_fn(
                &format!("mosaic_db_{what}_total"),
                &format!(
                    "one-message writes: {}",
                    ["writes sent", "statements prepared on a connection"][index]
                ),
                &[("service", service)],
                std::sync::Arc::new(move || {
                    let (writes, prepares) = db.write_stats();
                    [writes, prepares][index] as f64
                }),
            )?;
        }
        let timeouts = self.acquire_timeouts.clone();
        metrics.register_counter_fn(
            "mosaic_db_pool_acquire_timeouts_total",
            "Calls that found no database connection within the acquire timeout (answered UNAVAILABLE).",
            &[("service", service)],
            std::sync::Arc::new(move || {
                timeouts.load(std::sync::atomic::Ordering::Relaxed) as f64
            }),
        )?;
        for (index, what) in ["reads", "messages"].into_iter().enumerate() {
            let db = self.clone();
            metrics.register_counter_fn(
                &format!("mosaic_db_read_lane_{what}_total"),
                &format!("one-message reads: {what} sent"),
                &[("service", service)],
                std::sync::Arc::new(move || {
                    let (reads, messages) = db.read_lane_stats();
                    [reads, messages][index] as f64
                }),
            )?;
        }
        Ok(())
    }
}
