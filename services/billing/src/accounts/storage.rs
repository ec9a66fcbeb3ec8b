//! SQL of accounts. Every statement names `tenant_id = $1` (or `$tenant`).

use chrono::{DateTime, Utc};
use mosaic_api::{ApiResult, convert};
use mosaic_core::TenantId;
use mosaic_db::{Select, TenantTx, db_error};
use mosaic_proto::billing::{Account, AccountDrift};
use serde_json::json;

const COLUMNS: &str = "tenant_id, balance, held, entries, created_at, updated_at";

#[derive(Debug, sqlx::FromRow)]
pub struct AccountRow {
    pub tenant_id: TenantId,
    pub balance: i64,
    pub held: i64,
    pub entries: i64,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub updated_at: DateTime<Utc>,
}

impl AccountRow {
    pub fn available(&self) -> i64 {
        self.balance - self.held
    }

    pub fn into_proto(self) -> Account {
        Account {
            tenant_id: self.tenant_id.to_string(),
            balance: self.balance,
            held: self.held,
            available: self.available(),
            entry_count: self.entries,
            create_time: Some(convert::timestamp(self.created_at)),
            update_time: Some(convert::timestamp(self.updated_at)),
        }
    }
}

/// Opens the tenant's account unless it exists; audits an opening. Returns
/// the account it opened.
pub(crate) async fn open(tx: &mut TenantTx) -> ApiResult<Option<AccountRow>> {
    let tenant = tx.tenant_id();
    let opened: Option<AccountRow> = sqlx::query_as(&format!(
        "INSERT INTO accounts (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(tenant)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)?;
    if opened.is_some() {
        tx.audit("account.create", "account", tenant, json!({}))
            .await?;
    }
    Ok(opened)
}

/// Locks the tenant's account row for the rest of the transaction; false
/// when there is none.
pub(crate) async fn lock(tx: &mut TenantTx) -> ApiResult<bool> {
    let tenant = tx.tenant_id();
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM accounts WHERE tenant_id = $1 FOR UPDATE")
            .bind(tenant)
            .fetch_optional(tx.conn())
            .await
            .map_err(db_error)?;
    Ok(found.is_some())
}

/// The account, read in `tx`.
pub(crate) async fn get_in(tx: &mut TenantTx) -> ApiResult<Option<AccountRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM accounts WHERE tenant_id = $1"
    ))
    .bind(tenant)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// The account, for the read lane.
pub(crate) fn get() -> Select {
    Select::new(format!(
        "SELECT {COLUMNS} FROM accounts WHERE tenant_id = $tenant"
    ))
}

/// What Reconcile compares, per account: the stored numbers and what the
/// ledger and the pending holds add up to, from one snapshot.
const RECONCILE: &str = "SELECT a.tenant_id, a.balance, a.held, \
       coalesce((SELECT sum(l.amount) FROM ledger_entries l WHERE l.tenant_id = a.tenant_id), 0)::int8 \
           AS ledger_balance, \
       coalesce((SELECT sum(l.held_change) FROM ledger_entries l WHERE l.tenant_id = a.tenant_id), 0)::int8 \
           AS ledger_held, \
       coalesce((SELECT sum(h.amount) FROM holds h \
                 WHERE h.tenant_id = a.tenant_id AND h.status = 'pending'), 0)::int8 AS pending_holds \
     FROM accounts a";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReconcileRow {
    pub(crate) tenant_id: TenantId,
    pub(crate) balance: i64,
    pub(crate) held: i64,
    pub(crate) ledger_balance: i64,
    pub(crate) ledger_held: i64,
    pub(crate) pending_holds: i64,
}

impl ReconcileRow {
    /// |balance - ledger| + |held - ledger held| + |held - pending holds|.
    pub(crate) fn drift(&self) -> i64 {
        (self.balance - self.ledger_balance).abs()
            + (self.held - self.ledger_held).abs()
            + (self.held - self.pending_holds).abs()
    }

    pub(crate) fn into_proto(self) -> AccountDrift {
        AccountDrift {
            tenant_id: self.tenant_id.to_string(),
            balance: self.balance,
            ledger_balance: self.ledger_balance,
            held: self.held,
            ledger_held: self.ledger_held,
            pending_holds: self.pending_holds,
            drift: self.balance - self.ledger_balance,
        }
    }
}

/// One tenant's account, reconciled (read lane).
pub(crate) fn reconcile_one() -> Select {
    Select::new(format!("{RECONCILE} WHERE a.tenant_id = $tenant"))
}

/// Accounts reconciled per statement by [`reconcile_batch`].
pub(crate) const RECONCILE_BATCH: i64 = 200;

/// Up to [`RECONCILE_BATCH`] accounts after `after` in tenant order,
/// reconciled, through the platform role. One statement per batch, so the
/// whole ledger is never one statement (which the statement timeout ends
/// on a large database); each account is read in one snapshot.
pub(crate) async fn reconcile_batch(
    tx: &mut mosaic_db::pool::PlatformTx,
    after: Option<TenantId>,
) -> ApiResult<Vec<ReconcileRow>> {
    sqlx::query_as(&format!(
        "{RECONCILE} WHERE $1::uuid IS NULL OR a.tenant_id > $1 ORDER BY a.tenant_id LIMIT $2"
    ))
    .bind(after)
    .bind(RECONCILE_BATCH)
    .fetch_all(tx.conn())
    .await
    .map_err(db_error)
}
