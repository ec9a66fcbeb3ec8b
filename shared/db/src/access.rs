//! [`AccessView`]: what every process knows about the access decisions made
//! after a token was issued, so that they end the token's access everywhere
//! within seconds, without a call to identity on the request path.
//!
//! identity publishes each decision in the same transaction that makes it, in
//! `identity.access_changes` (migration `identity/0003_access.sql`): a tenant
//! created, deleted or restored, a principal revoked (an API key revoked, a
//! member removed or its role lowered). Every process reads that log through
//! the `mosaic_access` login, which may read nothing else but the id and
//! delete time of tenants:
//!
//! - a background task ([`AccessView::run`]) follows the log every
//!   `MOSAIC_ACCESS_POLL_MS` (default 1 s), in `(xid, seq)` order and only up
//!   to its snapshot's xmin, so a change that commits late is never skipped;
//! - tenant states are kept for the tenants this process has seen (at most
//!   [`MAX_TENANTS`]); a tenant seen for the first time is looked up once in
//!   `identity.tenants` (one indexed read) and then followed by the log, and
//!   re-read after [`TENANT_TTL`] in any case;
//! - revocations are kept for the longest token lifetime (a token issued
//!   before it has expired by then).
//!
//! A token is refused when its tenant was never created or is deleted
//! (PERMISSION_DENIED `TENANT_INACTIVE`; the methods a module lists in
//! `allowed_for_deleted_tenants` still work, so an owner can undelete), or
//! when its principal was revoked for its tenant at or after the token's `iat`
//! (UNAUTHENTICATED `TOKEN_REVOKED`; `iat` has one-second resolution, so a
//! token issued in the same second as the revocation is refused too).
//! Platform admins skip the tenant check (they manage tenants), not revocation.
//!
//! Worst cases: identity being down changes nothing (the log is read from
//! PostgreSQL, and no decision can be made while identity is down). While this
//! process cannot read PostgreSQL it keeps its last view, so a decision made
//! meanwhile reaches it when it can read again; a tenant it has never seen is
//! UNAVAILABLE `ACCESS_UNAVAILABLE` until then. Redis is not involved.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mosaic_api::ApiError;
use mosaic_core::TenantId;
use mosaic_tenant::{AccessPolicy, Claims};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::Mutex as AsyncMutex;

use crate::config::DbConfig;

/// Tenants whose state one process keeps.
pub const MAX_TENANTS: usize = 100_000;
/// How long a tenant's state is trusted without the log saying anything.
pub const TENANT_TTL: Duration = Duration::from_secs(60);
/// Log rows read per query.
const PAGE: i64 = 1000;

/// Reason of a refused token whose tenant was never created or is deleted.
pub const TENANT_INACTIVE: &str = "TENANT_INACTIVE";
/// Reason of a refused token whose principal was revoked.
pub const TOKEN_REVOKED: &str = "TOKEN_REVOKED";

#[derive(Debug, Clone, Copy)]
struct TenantState {
    /// `None`: never created.
    deleted: Option<bool>,
    checked: Instant,
}

#[derive(Debug, Default)]
struct State {
    tenants: HashMap<TenantId, TenantState>,
    /// `(tenant, principal)` → unix seconds of the revocation.
    revoked: HashMap<(TenantId, String), f64>,
    /// Where the log was read up to: `(xid, seq)`.
    cursor: (String, i64),
    synced: Option<Instant>,
}

/// The process's view of tenant states and revocations. Cheap to share (`Arc`).
pub struct AccessView {
    pool: PgPool,
    state: Mutex<State>,
    /// One sync at a time (the poller, or a first request before it ran).
    syncing: AsyncMutex<()>,
    max_lifetime: Duration,
    /// Method paths a deleted tenant may still call.
    allowed_when_deleted: Vec<String>,
}

impl std::fmt::Debug for AccessView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessView")
            .field("allowed_when_deleted", &self.allowed_when_deleted)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct Change {
    xid: String,
    seq: i64,
    tenant_id: TenantId,
    kind: String,
    principal: Option<String>,
    at: f64,
}

impl AccessView {
    /// A view reading through `config` (the `mosaic_access` login), lazily:
    /// nothing is connected until the first sync.
    pub fn connect_lazy(
        config: &DbConfig,
        max_lifetime: Duration,
        allowed_when_deleted: Vec<String>,
    ) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = config
            .url
            .expose()
            .parse::<PgConnectOptions>()?
            .application_name("mosaic-access");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            state: Mutex::new(State {
                cursor: ("0".to_owned(), 0),
                ..State::default()
            }),
            syncing: AsyncMutex::new(()),
            max_lifetime,
            allowed_when_deleted,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows the log every `interval` until `stop` completes; a failed
    /// round is logged (at most every 10 s) and retried at the next tick.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_warning: Option<Instant> = None;
        let mut failures = 0u64;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {}
            }
            match self.sync().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "access log readable again");
                        failures = 0;
                    }
                }
                Err(e) => {
                    failures += 1;
                    if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, failures, "cannot read the access log; keeping the last view");
                        last_warning = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Reads the log from the cursor to its end.
    pub async fn sync(&self) -> Result<(), sqlx::Error> {
        let _one = self.syncing.lock().await;
        loop {
            let cursor = self.state().cursor.clone();
            let changes: Vec<Change> = sqlx::query_as(
                "SELECT xid::text AS xid, seq, tenant_id, kind, principal, \
                        extract(epoch FROM at)::float8 AS at \
                 FROM identity.access_changes \
                 WHERE (xid, seq) > ($1::xid8, $2) \
                   AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY xid, seq LIMIT $3",
            )
            .bind(&cursor.0)
            .bind(cursor.1)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            let done = (changes.len() as i64) < PAGE;
            self.apply(changes);
            if done {
                self.state().synced = Some(Instant::now());
                return Ok(());
            }
        }
    }

    fn apply(&self, changes: Vec<Change>) {
        let now_unix = unix_now();
        let retention = self.max_lifetime.as_secs_f64();
        let mut state = self.state();
        for change in changes {
            state.cursor = (change.xid, change.seq);
            match change.kind.as_str() {
                "principal_revoked" => {
                    if let Some(principal) = change.principal
                        && now_unix - change.at <= retention
                    {
                        let at = state
                            .revoked
                            .entry((change.tenant_id, principal))
                            .or_insert(change.at);
                        *at = at.max(change.at);
                    }
                }
                kind => {
                    let deleted = kind == "tenant_deleted";
                    state.tenants.insert(
                        change.tenant_id,
                        TenantState {
                            deleted: Some(deleted),
                            checked: Instant::now(),
                        },
                    );
                }
            }
        }
        state.revoked.retain(|_, at| now_unix - *at <= retention);
        if state.tenants.len() > MAX_TENANTS {
            // Forget the least recently checked half.
            let mut checked: Vec<Instant> = state.tenants.values().map(|t| t.checked).collect();
            checked.sort_unstable();
            let cutoff = checked[checked.len() / 2];
            state.tenants.retain(|_, t| t.checked > cutoff);
        }
    }

    /// The state of `tenant`: from the view, else read once.
    async fn tenant(&self, tenant: TenantId) -> Result<Option<bool>, ApiError> {
        let known = self.state().tenants.get(&tenant).copied();
        if let Some(state) = known
            && state.checked.elapsed() < TENANT_TTL
        {
            return Ok(state.deleted);
        }
        let read: Result<Option<bool>, sqlx::Error> = sqlx::query_scalar(
            "SELECT deleted_at IS NOT NULL FROM identity.tenants WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await;
        match read {
            Ok(deleted) => {
                let mut state = self.state();
                if state.tenants.len() >= MAX_TENANTS {
                    state.tenants.clear();
                }
                state.tenants.insert(
                    tenant,
                    TenantState {
                        deleted,
                        checked: Instant::now(),
                    },
                );
                Ok(deleted)
            }
            // Keep what was known rather than refuse everyone.
            Err(_) if known.is_some() => Ok(known.and_then(|state| state.deleted)),
            Err(e) => {
                tracing::debug!(error = %e, %tenant, "tenant state unreadable");
                Err(unavailable())
            }
        }
    }

    /// The tenant setting `approvals.approver_role` (`member`, `admin` or
    /// `owner`, checked by identity when written), `None` when unset or the
    /// tenant unknown. Read from identity's `tenants.approver_role` on every
    /// call, not kept: an approval is a person's decision, rare enough that
    /// one indexed read costs nothing, and a changed setting holds at once.
    /// UNAVAILABLE when it cannot be read.
    pub async fn approver_role(&self, tenant: TenantId) -> Result<Option<String>, ApiError> {
        let read: Result<Option<Option<String>>, sqlx::Error> =
            sqlx::query_scalar("SELECT approver_role FROM identity.tenants WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await;
        read.map(Option::flatten).map_err(|e| {
            tracing::debug!(error = %e, %tenant, "approver role unreadable");
            unavailable()
        })
    }

    /// Whether `tenant` exists and is not deleted, as this view knows it (for
    /// a path that learns its tenant from the database, not from a token:
    /// agents' public-key lookup). UNAVAILABLE when it cannot be known.
    pub async fn tenant_is_active(&self, tenant: TenantId) -> Result<bool, ApiError> {
        Ok(self.tenant(tenant).await? == Some(false))
    }

    fn revoked(&self, tenant: TenantId, principal: &str, issued_at: u64) -> bool {
        self.state()
            .revoked
            .get(&(tenant, principal.to_owned()))
            .is_some_and(|at| issued_at as f64 <= at.floor())
    }

    async fn decide(&self, claims: &Claims, method: &str) -> Result<(), ApiError> {
        let Some(tenant) = claims.tid else {
            return Ok(());
        };
        if self.state().synced.is_none() {
            // Before the first round the revocations are unknown: read them now.
            self.sync().await.map_err(|e| {
                tracing::debug!(error = %e, "access log unreadable");
                unavailable()
            })?;
        }
        if self.revoked(tenant, &claims.sub, claims.iat) {
            return Err(ApiError::unauthenticated(
                TOKEN_REVOKED,
                "the token was revoked; get a new one",
            ));
        }
        if claims.is_platform_admin() {
            return Ok(());
        }
        match self.tenant(tenant).await? {
            Some(false) => Ok(()),
            Some(true) if self.allowed_when_deleted.iter().any(|m| m == method) => Ok(()),
            _ => Err(ApiError::permission_denied_with(
                TENANT_INACTIVE,
                "the token's tenant does not exist or is deleted",
            )),
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl AccessPolicy for AccessView {
    fn check<'a>(
        &'a self,
        claims: &'a Claims,
        method: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>> {
        Box::pin(self.decide(claims, method))
    }
}

fn unavailable() -> ApiError {
    ApiError::unavailable(
        "ACCESS_UNAVAILABLE",
        "the tenant's access state cannot be read right now; retry shortly",
    )
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
