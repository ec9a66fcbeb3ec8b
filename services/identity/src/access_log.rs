//! identity's side of the access log (`identity.access_changes`, read by every
//! process through `mosaic_db::access`): each decision that ends or restores
//! access is published in the transaction that makes it, so it is published
//! exactly when it commits.

use mosaic_api::ApiResult;
use mosaic_db::{TenantTx, db_error};

/// A decision other processes must learn.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change<'a> {
    TenantCreated,
    TenantDeleted,
    TenantRestored,
    /// Tokens of this principal (`key:<id>`, `user:<id>`) for the
    /// transaction's tenant, issued until now, are refused.
    PrincipalRevoked(&'a str),
}

/// Publishes `change` for the transaction's tenant.
pub(crate) async fn publish(tx: &mut TenantTx, change: Change<'_>) -> ApiResult<()> {
    let (kind, principal) = match change {
        Change::TenantCreated => ("tenant_created", None),
        Change::TenantDeleted => ("tenant_deleted", None),
        Change::TenantRestored => ("tenant_restored", None),
        Change::PrincipalRevoked(principal) => ("principal_revoked", Some(principal)),
    };
    let tenant = tx.tenant_id();
    sqlx::query("INSERT INTO access_changes (tenant_id, kind, principal) VALUES ($1, $2, $3)")
        .bind(tenant)
        .bind(kind)
        .bind(principal)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
    Ok(())
}
