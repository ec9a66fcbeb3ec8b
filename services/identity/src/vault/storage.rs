//! SQL of the tenants' data keys (`tenant_keys`). Every statement names
//! `tenant_id = $1` (RLS is the backstop); the platform reads are the
//! operator path's and see only which master key wraps which key version.

use mosaic_api::{ApiError, ApiResult};
use mosaic_core::TenantId;
use mosaic_db::{PlatformTx, TenantTx, db_error};

use super::{DataKey, MasterKey, VaultError, data_key_aad};

/// A tenant's data key of one version, unwrapped.
#[derive(Debug)]
pub(crate) struct TenantKey {
    pub(crate) version: i32,
    pub(crate) key: DataKey,
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct WrappedRow {
    pub(crate) key_version: i32,
    pub(crate) wrapped_key: Vec<u8>,
    pub(crate) master_key_id: String,
}

/// Unwraps a stored data key; a key the keyring cannot unwrap is an
/// internal error, logged with what an operator needs (no key material).
pub(crate) fn unwrap_row(
    keys: &dyn MasterKey,
    tenant: TenantId,
    row: &WrappedRow,
) -> ApiResult<DataKey> {
    keys.unwrap(
        &row.master_key_id,
        &row.wrapped_key,
        &data_key_aad(tenant, row.key_version),
    )
    .map_err(|e| {
        tracing::error!(
            %tenant,
            key_version = row.key_version,
            master_key_id = %row.master_key_id,
            error = %e,
            "vault: a tenant data key does not unwrap"
        );
        match e {
            VaultError::UnknownMasterKey(_) => ApiError::unavailable(
                "VAULT_KEY_UNAVAILABLE",
                "the vault cannot read this tenant's keys now",
            ),
            _ => ApiError::data_loss("DATA_KEY_UNREADABLE", "the tenant's data key is unreadable"),
        }
    })
}

/// The tenant's newest data key, made (and wrapped under the current master
/// key) on the tenant's first secret. Two first secrets at once both insert
/// version 1; one insert wins, and both use the stored key.
pub(crate) async fn current_key(tx: &mut TenantTx, keys: &dyn MasterKey) -> ApiResult<TenantKey> {
    if let Some(row) = newest(tx).await? {
        let key = unwrap_row(keys, tx.tenant_id(), &row)?;
        return Ok(TenantKey {
            version: row.key_version,
            key,
        });
    }
    let tenant = tx.tenant_id();
    let fresh = DataKey::generate();
    let wrapped = keys
        .wrap(&fresh, &data_key_aad(tenant, 1))
        .map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO tenant_keys (tenant_id, key_version, wrapped_key, master_key_id) \
         VALUES ($1, 1, $2, $3) ON CONFLICT (tenant_id, key_version) DO NOTHING",
    )
    .bind(tenant)
    .bind(&wrapped.bytes)
    .bind(&wrapped.master_key_id)
    .execute(tx.conn())
    .await
    .map_err(db_error)?;
    let row = newest(tx)
        .await?
        .ok_or_else(|| ApiError::internal("tenant key missing after insert"))?;
    let key = unwrap_row(keys, tenant, &row)?;
    Ok(TenantKey {
        version: row.key_version,
        key,
    })
}

async fn newest(tx: &mut TenantTx) -> ApiResult<Option<WrappedRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(
        "SELECT key_version, wrapped_key, master_key_id FROM tenant_keys \
         WHERE tenant_id = $1 ORDER BY key_version DESC LIMIT 1",
    )
    .bind(tenant)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// The data key of `version`, locked against a concurrent re-wrap when
/// `lock` (the rotations); `None` when the tenant has no such version.
pub(crate) async fn key_row(
    tx: &mut TenantTx,
    version: i32,
    lock: bool,
) -> ApiResult<Option<WrappedRow>> {
    let tenant = tx.tenant_id();
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT key_version, wrapped_key, master_key_id FROM tenant_keys \
         WHERE tenant_id = $1 AND key_version = $2{lock}"
    ))
    .bind(tenant)
    .bind(version)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// Stores a data key of `version` wrapped anew (a master-key rotation).
pub(crate) async fn rewrap(
    tx: &mut TenantTx,
    version: i32,
    wrapped: &super::Wrapped,
) -> ApiResult<()> {
    let tenant = tx.tenant_id();
    sqlx::query(
        "UPDATE tenant_keys SET wrapped_key = $3, master_key_id = $4, wrapped_at = now() \
         WHERE tenant_id = $1 AND key_version = $2",
    )
    .bind(tenant)
    .bind(version)
    .bind(&wrapped.bytes)
    .bind(&wrapped.master_key_id)
    .execute(tx.conn())
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Adds the tenant's next data key version (a data-key rotation): one more
/// than the newest, under the tenant's lock of its newest row, so two
/// rotations of one tenant take turns. Returns the new version and key.
pub(crate) async fn add_version(tx: &mut TenantTx, keys: &dyn MasterKey) -> ApiResult<TenantKey> {
    let tenant = tx.tenant_id();
    let newest: Option<i32> = sqlx::query_scalar(
        "SELECT key_version FROM tenant_keys WHERE tenant_id = $1 \
         ORDER BY key_version DESC LIMIT 1 FOR UPDATE",
    )
    .bind(tenant)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)?;
    let version = newest.unwrap_or(0) + 1;
    let fresh = DataKey::generate();
    let wrapped = keys
        .wrap(&fresh, &data_key_aad(tenant, version))
        .map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO tenant_keys (tenant_id, key_version, wrapped_key, master_key_id) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant)
    .bind(version)
    .bind(&wrapped.bytes)
    .bind(&wrapped.master_key_id)
    .execute(tx.conn())
    .await
    .map_err(db_error)?;
    Ok(TenantKey {
        version,
        key: fresh,
    })
}

/// Removes the tenant's key versions older than `version` that no secret
/// uses any more; returns how many. (The foreign key from `connections`
/// refuses to remove one that a secret written meanwhile uses.)
pub(crate) async fn retire_older(tx: &mut TenantTx, version: i32) -> ApiResult<u64> {
    let tenant = tx.tenant_id();
    sqlx::query(
        "DELETE FROM tenant_keys k WHERE k.tenant_id = $1 AND k.key_version < $2 \
         AND NOT EXISTS (SELECT 1 FROM connections c \
                         WHERE c.tenant_id = $1 AND c.key_version = k.key_version)",
    )
    .bind(tenant)
    .bind(version)
    .execute(tx.conn())
    .await
    .map(|done| done.rows_affected())
    .map_err(db_error)
}

/// The master key ids that wrap data keys, across tenants (platform role).
pub(crate) async fn master_key_ids(tx: &mut PlatformTx) -> ApiResult<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT master_key_id FROM tenant_keys ORDER BY 1")
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
}

/// Up to `limit` `(tenant, version)` of data keys not wrapped under
/// `current`, after `after` in that order (platform role).
pub(crate) async fn wrapped_elsewhere(
    tx: &mut PlatformTx,
    current: &str,
    after: Option<(TenantId, i32)>,
    limit: i64,
) -> ApiResult<Vec<(TenantId, i32)>> {
    let (after_tenant, after_version) = after.unzip();
    sqlx::query_as(
        "SELECT tenant_id, key_version FROM tenant_keys WHERE master_key_id <> $1 \
         AND ($2::uuid IS NULL OR (tenant_id, key_version) > ($2, $3)) \
         ORDER BY tenant_id, key_version LIMIT $4",
    )
    .bind(current)
    .bind(after_tenant)
    .bind(after_version.unwrap_or(0))
    .bind(limit)
    .fetch_all(tx.conn())
    .await
    .map_err(db_error)
}
