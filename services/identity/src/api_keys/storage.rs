//! SQL of API keys. Every statement names `tenant_id = $1` (RLS is the backstop).
use chrono::{DateTime, Utc};
use mosaic_api::{ApiResult, convert};
use mosaic_core::TenantId;
use mosaic_db::{Order, Select, TenantTx, db_error};
use mosaic_proto::identity::ApiKey;
use mosaic_tenant::Role;

use super::Secret;
use crate::ids::ApiKeyId;
use crate::members::pb_role;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    pub(crate) tenant_id: TenantId,
    pub(crate) api_key_id: ApiKeyId,
    pub(crate) display_name: String,
    pub(crate) role: String,
    pub(crate) secret_prefix: String,
    pub(crate) creator: String,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) created_at: DateTime<Utc>,
    #[sqlx(try_from = "mosaic_db::OptTime")]
    pub(crate) expires_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "mosaic_db::OptTime")]
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRow {
    pub(crate) fn into_proto(self) -> ApiKey {
        ApiKey {
            api_key_id: self.api_key_id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            display_name: self.display_name,
            role: pb_role(&self.role) as i32,
            secret_prefix: self.secret_prefix,
            create_time: Some(convert::timestamp(self.created_at)),
            expire_time: convert::opt_timestamp(self.expires_at),
            revoke_time: convert::opt_timestamp(self.revoked_at),
            creator: self.creator,
        }
    }
}

const COLUMNS: &str = "tenant_id, api_key_id, display_name, role, secret_prefix, creator, created_at, expires_at, revoked_at";

pub(crate) async fn insert(
    tx: &mut TenantTx,
    key_id: ApiKeyId,
    display_name: &str,
    role: Role,
    secret: &Secret,
    creator: &str,
    expires_at: Option<DateTime<Utc>>,
) -> ApiResult<ApiKeyRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO api_keys (tenant_id, api_key_id, display_name, role, secret_hash, secret_prefix, creator, \
         expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(tenant)
    .bind(key_id)
    .bind(display_name)
    .bind(role.as_str())
    .bind(&secret.hash)
    .bind(&secret.prefix)
    .bind(creator)
    .bind(expires_at)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

pub(crate) async fn get(tx: &mut TenantTx, key_id: ApiKeyId) -> ApiResult<Option<ApiKeyRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND api_key_id = $2"
    ))
    .bind(tenant)
    .bind(key_id)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

pub(crate) fn list(after: Option<ApiKeyId>, show_revoked: bool, size: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $tenant"
    ));
    if !show_revoked {
        sql.push(" AND revoked_at IS NULL");
    }
    sql.keyset("api_key_id", Order::Asc, after.map(ApiKeyId::uuid), size);
    sql
}

/// The key, newly revoked; `None` when it does not exist or was already revoked.
pub(crate) async fn revoke(tx: &mut TenantTx, key_id: ApiKeyId) -> ApiResult<Option<ApiKeyRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND api_key_id = $2 \
         AND revoked_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(tenant)
    .bind(key_id)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// What the token exchange needs: hash, role, validity, and whether the tenant is live.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ExchangeRow {
    pub(crate) secret_hash: Vec<u8>,
    pub(crate) role: String,
    #[sqlx(try_from = "mosaic_db::OptTime")]
    pub(crate) expires_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "mosaic_db::OptTime")]
    pub(crate) revoked_at: Option<DateTime<Utc>>,
    pub(crate) tenant_deleted: bool,
}

pub(crate) fn for_exchange(key_id: ApiKeyId) -> Select {
    let mut sql = Select::new(
        "SELECT k.secret_hash, k.role, k.expires_at, k.revoked_at, t.deleted_at IS NOT NULL AS tenant_deleted \
         FROM api_keys k JOIN tenants t ON t.tenant_id = k.tenant_id \
         WHERE k.tenant_id = $tenant AND k.api_key_id = ",
    );
    sql.push_bind(key_id.uuid());
    sql
}
