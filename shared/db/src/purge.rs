//! What soft delete promises to remove, written once: rows of a service's
//! tables [`RETENTION`] after `deleted_at`, and `request_id` claims after
//! [`REQUEST_RETENTION`]. `mosaic purge` (an operator job, daily) runs it
//! one tenant at a time through the runtime role and RLS like any request,
//! in transactions of at most [`BATCH`] rows per table, each purged row with
//! an audit event (`<kind>.purge`). What goes with a purged row is what its
//! foreign keys say (`ON DELETE` in the service's migrations).

use chrono::{DateTime, Utc};
use mosaic_api::ApiResult;
pub use mosaic_api::rules::RETENTION;
use mosaic_core::TenantId;
use serde_json::json;
use uuid::Uuid;

use crate::error::db_error;
use crate::idempotency::REQUEST_RETENTION;
use crate::pool::Database;
use mosaic_tenant::TenantContext;

/// Most rows of one table removed in one transaction.
pub const BATCH: i64 = 1000;

/// A soft-deletable table the purge empties of expired rows.
#[derive(Debug, Clone, Copy)]
pub struct Expiring {
    pub table: &'static str,
    pub id_column: &'static str,
    /// The audit resource type (`contact`): events are `<kind>.purge`.
    pub kind: &'static str,
    /// More SQL ANDed to the candidate `t`'s condition (a row something
    /// still points at may have to stay), or empty.
    pub extra: &'static str,
}

/// Purges `tenant`'s rows of `tables` that expired by `now`, in that order
/// (a table whose rows pin another's goes first, so both can go in one run),
/// and its old request ids. One transaction takes up to [`BATCH`] rows of
/// each table; another follows only while a table had more. Returns how many
/// rows of each table went, and how many request ids.
pub async fn purge_expired(
    db: &Database,
    tenant: TenantId,
    now: DateTime<Utc>,
    tables: &[Expiring],
) -> ApiResult<(Vec<u64>, u64)> {
    let ctx = TenantContext::system(tenant, "purge");
    let mut counts = vec![0u64; tables.len()];
    let mut requests = 0;
    loop {
        let mut tx = db.begin(&ctx).await?;
        let mut more = false;
        for (expiring, count) in tables.iter().zip(&mut counts) {
            let Expiring {
                table,
                id_column: id,
                kind,
                extra,
            } = expiring;
            let ids: Vec<Uuid> = sqlx::query_scalar(&format!(
                "DELETE FROM {table} WHERE tenant_id = $1 AND {id} IN \
                 (SELECT t.{id} FROM {table} t \
                  WHERE t.tenant_id = $1 AND t.deleted_at < $2{extra} LIMIT $3) \
                 RETURNING {id}"
            ))
            .bind(tenant)
            .bind(now - RETENTION)
            .bind(BATCH)
            .fetch_all(tx.conn())
            .await
            .map_err(db_error)?;
            tx.audit_many(
                &format!("{kind}.purge"),
                kind,
                &ids,
                json!({ "retention_days": RETENTION.num_days() }),
            )
            .await?;
            *count += ids.len() as u64;
            more |= ids.len() == BATCH as usize;
        }
        requests += tx.expire_requests(now - REQUEST_RETENTION).await?;
        tx.commit().await?;
        if !more {
            break;
        }
    }
    Ok((counts, requests))
}
