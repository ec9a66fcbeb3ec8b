//! SQL of tenants. A tenant's transaction is scoped to that tenant, so every
//! statement names `tenant_id = $1`, the transaction's own.

use mosaic_api::{ApiResult, convert};
use mosaic_core::TenantId;
use mosaic_db::{HasMeta, RowMeta, TenantTx, db_error};
use mosaic_proto::StoredEnum;
use mosaic_proto::identity::{Plan, Tenant};
use sqlx::PgConnection;

use super::TenantFields;

/// Select list over the alias `t`.
pub(crate) const SELECT: &str = "t.tenant_id, t.display_name, t.plan, t.settings, \
     t.revision, t.created_at, t.updated_at, t.deleted_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TenantRow {
    pub(crate) tenant_id: TenantId,
    pub(crate) display_name: String,
    pub(crate) plan: String,
    pub(crate) settings: serde_json::Value,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for TenantRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl TenantRow {
    fn plan(&self) -> Plan {
        Plan::from_stored(&self.plan).unwrap_or(Plan::Free)
    }

    pub(crate) fn fields(&self) -> TenantFields {
        TenantFields {
            display_name: self.display_name.clone(),
            plan: self.plan(),
            settings: self.settings.clone(),
        }
    }

    pub(crate) fn into_proto(self) -> Tenant {
        let plan = self.plan() as i32;
        Tenant {
            tenant_id: self.tenant_id.to_string(),
            display_name: self.display_name,
            plan,
            settings: Some(convert::json_to_struct(self.settings)),
            create_time: self.meta.create_time(),
            update_time: self.meta.update_time(),
            delete_time: self.meta.delete_time(),
            etag: self.meta.etag(),
        }
    }
}

pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: TenantId,
    fields: &TenantFields,
) -> ApiResult<TenantRow> {
    sqlx::query_as(&format!(
        "INSERT INTO tenants AS t (tenant_id, display_name, plan, settings) \
         VALUES ($1, $2, $3, $4) RETURNING {SELECT}"
    ))
    .bind(id)
    .bind(&fields.display_name)
    .bind(fields.plan.stored_name())
    .bind(&fields.settings)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

/// Platform listing, ordered by id (creation order: ids are UUIDv7).
pub(crate) async fn list(
    conn: &mut PgConnection,
    after: Option<TenantId>,
    show_deleted: bool,
    size: u32,
) -> ApiResult<Vec<TenantRow>> {
    sqlx::query_as(&format!(
        "SELECT {SELECT} FROM tenants t \
         WHERE ($1::uuid IS NULL OR t.tenant_id > $1) AND ($2 OR t.deleted_at IS NULL) \
         ORDER BY t.tenant_id LIMIT $3"
    ))
    .bind(after)
    .bind(show_deleted)
    .bind(i64::from(size) + 1)
    .fetch_all(conn)
    .await
    .map_err(db_error)
}

/// Writes every field of the transaction's tenant, which the caller locked.
pub(crate) async fn update(tx: &mut TenantTx, fields: &TenantFields) -> ApiResult<TenantRow> {
    let id = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE tenants AS t SET display_name = $2, plan = $3, settings = $4, \
         revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 RETURNING {SELECT}"
    ))
    .bind(id)
    .bind(&fields.display_name)
    .bind(fields.plan.stored_name())
    .bind(&fields.settings)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)?
    .ok_or_else(|| super::RESOURCE.not_found())
}
