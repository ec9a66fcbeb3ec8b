//! identity's part of the purge (`mosaic purge`): the list of every tenant,
//! which the purge walks, the removal of `request_id` claims older than
//! [`REQUEST_RETENTION`], and of connections (with their ciphertexts) 30
//! days after their soft delete. Soft-deleted tenants themselves are not purged:
//! removing a tenant means removing its data in every service, which no job
//! does yet.

use chrono::{DateTime, Utc};
use mosaic_api::ApiResult;
use mosaic_core::TenantId;
use mosaic_db::idempotency::REQUEST_RETENTION;
use mosaic_db::purge::{Expiring, purge_expired};
use mosaic_db::{Database, TenantContext, db_error};
use mosaic_server::{BoxFuture, PurgeTenant};

/// Where platform operations (CreateTenant) keep their `request_id` claims.
pub use crate::tenants::PLATFORM_SCOPE;

/// Up to `limit` tenant ids after `after`, deleted ones included, in id
/// order (the platform read path). `db` needs the platform role.
pub async fn tenant_ids(
    db: &Database,
    after: Option<TenantId>,
    limit: i64,
) -> ApiResult<Vec<TenantId>> {
    let ctx = TenantContext::system_platform("purge");
    let mut tx = db.begin_platform(&ctx).await?;
    let ids = sqlx::query_scalar(
        "SELECT tenant_id FROM tenants WHERE ($1::uuid IS NULL OR tenant_id > $1) \
         ORDER BY tenant_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(tx.conn())
    .await
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(ids)
}

/// What expires of identity's soft-deleted rows.
const EXPIRING: &[Expiring] = &[Expiring {
    table: "connections",
    id_column: "connection_id",
    kind: "connection",
    extra: "",
}];

/// Forgets `tenant`'s `request_id` claims, and its access changes, older
/// than [`REQUEST_RETENTION`] (far longer than any token lives, the only
/// thing an access change is for), and removes its connections deleted
/// more than 30 days ago; returns how many of each.
pub async fn purge_tenant(
    db: &Database,
    tenant: TenantId,
    now: DateTime<Utc>,
) -> ApiResult<(u64, u64, u64)> {
    let (connections, requests) = purge_expired(db, tenant, now, EXPIRING).await?;
    let mut tx = db.begin(&TenantContext::system(tenant, "purge")).await?;
    let changes = sqlx::query("DELETE FROM access_changes WHERE tenant_id = $1 AND at < $2")
        .bind(tenant)
        .bind(now - REQUEST_RETENTION)
        .execute(tx.conn())
        .await
        .map_err(db_error)?
        .rows_affected();
    tx.commit().await?;
    Ok((requests, changes, connections[0]))
}

/// identity's part of `mosaic purge`.
#[derive(Debug)]
pub struct Purge {
    db: Database,
}

impl Purge {
    /// `db` with the platform role, for the tenant list.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The pool, for walking the tenants ([`tenant_ids`]).
    pub fn db(&self) -> &Database {
        &self.db
    }
}

impl PurgeTenant for Purge {
    fn purge_tenant(
        &self,
        tenant: TenantId,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, ApiResult<Vec<(&'static str, u64)>>> {
        Box::pin(async move {
            let (requests, changes, connections) = purge_tenant(&self.db, tenant, now).await?;
            Ok(vec![
                ("request_ids", requests),
                ("access_changes", changes),
                ("connections", connections),
            ])
        })
    }
}
