//! Accounts: CreateAccount, GetAccount and Reconcile.

use mosaic_api::{ApiError, ApiResult};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::billing::{Account, ReconcileResponse};

use storage::{AccountRow, ReconcileRow};

pub mod storage;

/// A tenant's credit account.
pub const ACCOUNT: mosaic_api::rules::Kind = mosaic_api::rules::Kind {
    name: "account",
    not_found: "ACCOUNT_NOT_FOUND",
    deleted: "ACCOUNT_DELETED",
};

/// Most drifted accounts one Reconcile lists.
pub const MAX_DRIFTED: usize = 1000;

/// Opens `ctx`'s tenant's account; ALREADY_EXISTS `ACCOUNT_EXISTS` if it is open.
pub async fn create(db: &Database, ctx: &TenantContext) -> ApiResult<Account> {
    let mut tx = db.begin(ctx).await?;
    let opened = storage::open(&mut tx).await?;
    let account = opened.ok_or_else(|| {
        ApiError::already_exists("ACCOUNT_EXISTS", "tenant_id", "the tenant has an account")
    })?;
    tx.commit().await?;
    Ok(account.into_proto())
}

/// `ctx`'s tenant's account.
pub async fn get(db: &Database, ctx: &TenantContext) -> ApiResult<Account> {
    let rows: Vec<AccountRow> = db.read(ctx, storage::get()).await?;
    rows.into_iter()
        .next()
        .map(AccountRow::into_proto)
        .ok_or_else(|| ACCOUNT.not_found())
}

/// Reconciles one tenant's account (`Some`) or every account (`None`,
/// through the platform role).
pub async fn reconcile(
    db: &Database,
    ctx: &TenantContext,
    one: bool,
) -> ApiResult<ReconcileResponse> {
    let mut reply = ReconcileResponse::default();
    let mut check = |rows: Vec<ReconcileRow>| {
        reply.accounts_checked += rows.len() as i64;
        for row in rows {
            let drift = row.drift();
            reply.drift_total += drift;
            if drift != 0 && reply.drifted.len() < MAX_DRIFTED {
                reply.drifted.push(row.into_proto());
            }
        }
    };
    if one {
        let rows: Vec<ReconcileRow> = db.read(ctx, storage::reconcile_one()).await?;
        if rows.is_empty() {
            return Err(ACCOUNT.not_found());
        }
        check(rows);
    } else {
        let mut after = None;
        loop {
            let mut tx = db.begin_platform(ctx).await?;
            let rows = storage::reconcile_batch(&mut tx, after).await?;
            tx.commit().await?;
            let full = rows.len() as i64 == storage::RECONCILE_BATCH;
            after = rows.last().map(|row| row.tenant_id);
            check(rows);
            if !full {
                break;
            }
        }
    }
    let (drift_total, drifted) = (reply.drift_total, reply.drifted.len());
    if drift_total != 0 {
        tracing::error!(drift_total, accounts = drifted, "ledger drift found");
    }
    Ok(reply)
}
