//! Audit events: written by [`TenantTx::audit`] in the same transaction as the
//! change, listed by [`list`]. Each service schema has an `audit_events` table
//! of the same shape (see `migrations/<service>/0001_*.sql`); the runtime role's
//! `search_path` names its own schema.

use chrono::{DateTime, Utc};
use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiResult, convert, parse};
use mosaic_proto::common::{AuditEvent, ListAuditEventsRequest, ListAuditEventsResponse};
use mosaic_tenant::{Role, TenantContext};
use uuid::Uuid;

use crate::error::db_error;
use crate::pool::TenantTx;
use crate::{Database, Order, Select};

impl TenantTx {
    /// Records a mutation: `action` like `member.add`, the resource, and a
    /// small secret-free `details` object.
    pub async fn audit(
        &mut self,
        action: &str,
        resource_type: &str,
        resource_id: impl std::fmt::Display,
        details: serde_json::Value,
    ) -> ApiResult<()> {
        let tenant = self.tenant_id();
        let actor = self.ctx().principal().to_owned();
        let request_id = self.ctx().request_id().to_owned();
        sqlx::query(
            "INSERT INTO audit_events \
             (tenant_id, event_id, actor, action, resource_type, resource_id, request_id, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(tenant)
        .bind(Uuid::now_v7())
        .bind(actor)
        .bind(action)
        .bind(resource_type)
        .bind(resource_id.to_string())
        .bind(request_id)
        .bind(details)
        .execute(self.conn())
        .await
        .map_err(db_error)?;
        Ok(())
    }
}

impl TenantTx {
    /// Records the same mutation of many resources, one event each, in one
    /// statement (batch operations, the purge).
    pub async fn audit_many<I: std::fmt::Display>(
        &mut self,
        action: &str,
        resource_type: &str,
        resource_ids: &[I],
        details: serde_json::Value,
    ) -> ApiResult<()> {
        if resource_ids.is_empty() {
            return Ok(());
        }
        let tenant = self.tenant_id();
        let actor = self.ctx().principal().to_owned();
        let request_id = self.ctx().request_id().to_owned();
        let event_ids: Vec<Uuid> = resource_ids.iter().map(|_| Uuid::now_v7()).collect();
        let resource_ids: Vec<String> = resource_ids.iter().map(ToString::to_string).collect();
        sqlx::query(
            "INSERT INTO audit_events \
             (tenant_id, event_id, actor, action, resource_type, resource_id, request_id, details) \
             SELECT $1, e, $3, $4, $5, r, $6, $7 FROM unnest($2::uuid[], $8::text[]) AS u(e, r)",
        )
        .bind(tenant)
        .bind(event_ids)
        .bind(actor)
        .bind(action)
        .bind(resource_type)
        .bind(request_id)
        .bind(details)
        .bind(resource_ids)
        .execute(self.conn())
        .await
        .map_err(db_error)?;
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    tenant_id: mosaic_core::TenantId,
    event_id: Uuid,
    actor: String,
    action: String,
    resource_type: String,
    resource_id: String,
    request_id: String,
    #[sqlx(try_from = "crate::Time")]
    created_at: DateTime<Utc>,
    details: serde_json::Value,
}

/// Lists the caller's tenant's audit events, newest first (admins and owners).
pub async fn list(
    db: &Database,
    ctx: &TenantContext,
    req: &ListAuditEventsRequest,
) -> ApiResult<ListAuditEventsResponse> {
    ctx.require(Role::Admin)?;
    let tenant = ctx.tenant_id()?;
    let binding = PageBinding::new("ListAuditEvents")
        .with(tenant)
        .with(&req.resource_type)
        .with(&req.resource_id);
    let (size, resource_type, resource_id, after) = (
        parse::page_size("page_size", req.page_size),
        parse::text("resource_type", &req.resource_type, 64),
        parse::text("resource_id", &req.resource_id, 128),
        page::decode::<Uuid>(&binding, &req.page_token),
    )
        .all_ok()?;

    let mut select = Select::new(
        "SELECT tenant_id, event_id, actor, action, resource_type, resource_id, request_id, \
                created_at, details \
         FROM audit_events WHERE tenant_id = $tenant",
    );
    if !resource_type.is_empty() {
        select
            .push(" AND resource_type = ")
            .push_bind(resource_type);
    }
    if !resource_id.is_empty() {
        select.push(" AND resource_id = ").push_bind(resource_id);
    }
    select.keyset("event_id", Order::Desc, after, size);
    let rows: Vec<Row> = db.read(ctx, select).await?;

    let (events, next_page_token) = page::page(
        rows,
        size,
        &binding,
        |row| row.event_id,
        |row| AuditEvent {
            event_id: row.event_id.to_string(),
            tenant_id: row.tenant_id.to_string(),
            actor: row.actor,
            action: row.action,
            resource_type: row.resource_type,
            resource_id: row.resource_id,
            request_id: row.request_id,
            create_time: Some(convert::timestamp(row.created_at)),
            details: Some(convert::json_to_struct(row.details)),
        },
    );
    Ok(ListAuditEventsResponse {
        events,
        next_page_token,
    })
}
