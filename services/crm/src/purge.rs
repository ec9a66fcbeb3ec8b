//! The purge: what soft delete promises to remove. Companies, contacts and
//! deals go [`RETENTION`] after `deleted_at`, `request_id` claims after
//! [`REQUEST_RETENTION`]. Run by `mosaic purge` (an operator job, daily),
//! one tenant at a time through the runtime role and RLS like any request,
//! in transactions of at most [`BATCH`] rows per table, each purged resource
//! with an audit event (`<kind>.purge`).
//!
//! What goes with a purged row is what its foreign keys say (see
//! `migrations/crm/0002_resources.sql`): a contact takes its deal links and
//! activities, a company its scores and activities; references from deals and
//! signals are cleared. A company stays while any deal still points at it.

use chrono::{DateTime, Utc};
use mosaic_api::ApiResult;
pub use mosaic_api::rules::RETENTION;
use mosaic_core::TenantId;
use mosaic_db::idempotency::REQUEST_RETENTION;
use mosaic_db::{Database, TenantContext, db_error};
use mosaic_server::{BoxFuture, PurgeTenant};
use serde_json::json;
use uuid::Uuid;

/// Most rows of one table removed in one transaction.
pub const BATCH: i64 = 1000;

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub deals: u64,
    pub contacts: u64,
    pub companies: u64,
    pub requests: u64,
}

/// crm's part of `mosaic purge`.
#[derive(Debug)]
pub struct Purge {
    db: Database,
}

impl Purge {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl PurgeTenant for Purge {
    fn purge_tenant(
        &self,
        tenant: TenantId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, ApiResult<Vec<(&'static str, u64)>>> {
        Box::pin(async move {
            let purged = purge_tenant(&self.db, tenant, now).await?;
            Ok(vec![
                ("deals", purged.deals),
                ("contacts", purged.contacts),
                ("companies", purged.companies),
                ("request_ids", purged.requests),
            ])
        })
    }
}

/// (table, id column, audit kind, extra condition on the candidate `t`).
/// Deals first, so that companies they pinned can go in the same run.
const TABLES: [(&str, &str, &str, &str); 3] = [
    ("deals", "deal_id", "deal", ""),
    ("contacts", "contact_id", "contact", ""),
    (
        "companies",
        "company_id",
        "company",
        " AND NOT EXISTS (SELECT 1 FROM deals d \
           WHERE d.tenant_id = t.tenant_id AND d.company_id = t.company_id)",
    ),
];

/// Purges `tenant`'s rows that expired by `now`: one transaction takes up to
/// [`BATCH`] rows of each table (deals first, so a company they pinned can go
/// in the same transaction) and the old request ids; another follows only
/// while a table had more.
pub async fn purge_tenant(
    db: &Database,
    tenant: TenantId,
    now: DateTime<Utc>,
) -> ApiResult<Purged> {
    let ctx = TenantContext::system(tenant, "purge");
    let mut counts = [0u64; TABLES.len()];
    let mut requests = 0;
    loop {
        let mut tx = db.begin(&ctx).await?;
        let mut more = false;
        for ((table, id, kind, extra), count) in TABLES.into_iter().zip(&mut counts) {
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
    let [deals, contacts, companies] = counts;
    Ok(Purged {
        deals,
        contacts,
        companies,
        requests,
    })
}
