//! SQL of holds. Every statement names `tenant_id = $1` (or `$tenant`). A
//! hold resolves once: each resolving UPDATE requires `status = 'pending'`
//! and holds the hold's row lock until its transaction ends.

use chrono::{DateTime, Utc};
use mosaic_api::{ApiResult, convert};
use mosaic_core::TenantId;
use mosaic_db::{Select, TenantTx, db_error};
use mosaic_proto::StoredEnum;
use mosaic_proto::billing::{Hold, HoldStatus};

use crate::ids::HoldId;

const COLUMNS: &str = "tenant_id, hold_id, amount, status, captured, idempotency_key, reference, \
     expires_at, created_at, resolved_at";

#[derive(Debug, sqlx::FromRow)]
pub struct HoldRow {
    pub tenant_id: TenantId,
    pub hold_id: HoldId,
    pub amount: i64,
    pub status: String,
    pub captured: i64,
    pub idempotency_key: String,
    pub reference: String,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub expires_at: DateTime<Utc>,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "mosaic_db::OptTime")]
    pub resolved_at: Option<DateTime<Utc>>,
}

impl HoldRow {
    pub fn status(&self) -> HoldStatus {
        HoldStatus::from_stored(&self.status).unwrap_or(HoldStatus::Unspecified)
    }

    pub fn into_proto(self) -> Hold {
        Hold {
            status: self.status() as i32,
            hold_id: self.hold_id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            amount: self.amount,
            captured_amount: self.captured,
            idempotency_key: self.idempotency_key,
            reference: self.reference,
            expire_time: Some(convert::timestamp(self.expires_at)),
            create_time: Some(convert::timestamp(self.created_at)),
            resolve_time: convert::opt_timestamp(self.resolved_at),
        }
    }
}

/// Records the hold that the `hold` entry just reserved.
pub(crate) async fn insert(
    tx: &mut TenantTx,
    hold: HoldId,
    amount: i64,
    key: &str,
    reference: &str,
    expires_at: DateTime<Utc>,
) -> ApiResult<HoldRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO holds (tenant_id, hold_id, amount, idempotency_key, reference, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(tenant)
    .bind(hold)
    .bind(amount)
    .bind(key)
    .bind(reference)
    .bind(expires_at)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

/// Marks a pending, unexpired hold of at least `amount` captured; `None`
/// when it is not (the caller finds out why).
pub(crate) async fn capture(
    tx: &mut TenantTx,
    hold: HoldId,
    amount: i64,
) -> ApiResult<Option<HoldRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE holds SET status = 'captured', captured = $3, resolved_at = now() \
         WHERE tenant_id = $1 AND hold_id = $2 AND status = 'pending' \
           AND expires_at > now() AND amount >= $3 \
         RETURNING {COLUMNS}"
    ))
    .bind(tenant)
    .bind(hold)
    .bind(amount)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// Marks a pending hold released (`expired`: only one past its expire_time,
/// as the sweeper's); `None` when it is not pending.
pub(crate) async fn release(
    tx: &mut TenantTx,
    hold: HoldId,
    expired: bool,
) -> ApiResult<Option<HoldRow>> {
    let tenant = tx.tenant_id();
    let status = if expired {
        HoldStatus::Expired
    } else {
        HoldStatus::Released
    };
    sqlx::query_as(&format!(
        "UPDATE holds SET status = $3, resolved_at = now() \
         WHERE tenant_id = $1 AND hold_id = $2 AND status = 'pending' \
           AND (NOT $4 OR expires_at <= now()) \
         RETURNING {COLUMNS}"
    ))
    .bind(tenant)
    .bind(hold)
    .bind(status.stored_name())
    .bind(expired)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// One hold, read in `tx`.
pub(crate) async fn get_in(tx: &mut TenantTx, hold: HoldId) -> ApiResult<Option<HoldRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM holds WHERE tenant_id = $1 AND hold_id = $2"
    ))
    .bind(tenant)
    .bind(hold)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// One hold, for the read lane.
pub(crate) fn get(hold: HoldId) -> Select {
    let mut select = Select::new(format!(
        "SELECT {COLUMNS} FROM holds WHERE tenant_id = $tenant AND hold_id = "
    ));
    select.push_bind(hold.uuid());
    select
}

/// The entry that released `hold`.
pub(crate) async fn release_entry(
    tx: &mut TenantTx,
    hold: HoldId,
) -> ApiResult<Option<crate::ledger::storage::EntryRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "SELECT {} FROM ledger_entries WHERE tenant_id = $1 AND hold_id = $2 AND kind = 'release'",
        crate::ledger::storage::ENTRY_COLUMNS
    ))
    .bind(tenant)
    .bind(hold)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// `(tenant, hold)` of pending holds past their expire_time, oldest first,
/// across tenants (the platform role's read).
pub(crate) async fn expired(
    tx: &mut mosaic_db::pool::PlatformTx,
    limit: i64,
) -> ApiResult<Vec<(TenantId, HoldId)>> {
    sqlx::query_as(
        "SELECT tenant_id, hold_id FROM holds \
         WHERE status = 'pending' AND expires_at <= now() ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(tx.conn())
    .await
    .map_err(db_error)
}
