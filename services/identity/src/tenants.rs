//! `TenantService`: create (platform admins, with the first owner, in one
//! transaction), get, list (platform admins), update with mask and etag, soft
//! delete and undelete.

use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, ApiResult, convert, etag, mask::UpdateMask, validate};
use mosaic_db::idempotency::{Claim, fingerprint};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::identity::{
    CreateTenantRequest, DeleteTenantRequest, GetTenantRequest, ListTenantsRequest,
    ListTenantsResponse, Plan, Tenant, UndeleteTenantRequest, UpdateTenantRequest,
    tenant_service_server::TenantService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::names;

/// The idempotency scope of platform operations that precede any tenant.
pub const PLATFORM_SCOPE: Uuid = Uuid::nil();
const MAX_SETTINGS_BYTES: usize = 16 * 1024;
const MAX_NAME: usize = 200;

fn not_found() -> ApiError {
    ApiError::not_found("TENANT_NOT_FOUND", "tenant not found")
}

#[derive(Debug)]
pub struct Tenants {
    db: Database,
}

impl Tenants {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The context for acting on the tenant named in a request: the caller's
    /// own, or any for platform admins; another tenant is NOT_FOUND.
    fn scope(ctx: &TenantContext, field: &str, raw: &str, min: Role) -> ApiResult<TenantContext> {
        let id = validate::id(field, raw)?;
        let scoped = ctx.scoped_to(id, not_found)?;
        scoped.require(min)?;
        Ok(scoped)
    }
}

#[tonic::async_trait]
impl TenantService for Tenants {
    async fn create_tenant(
        &self,
        req: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_platform_admin()?;
        let r = req.into_inner();
        let t = r.tenant.clone().unwrap_or_default();
        let (display_name, plan, settings, owner_email, owner_name, request_id) = (
            validate::name("tenant.display_name", &t.display_name, MAX_NAME),
            validate::enum_or("tenant.plan", t.plan, Plan::Free),
            convert::json_object("tenant.settings", t.settings.as_ref(), MAX_SETTINGS_BYTES),
            validate::email("owner_email", &r.owner_email),
            validate::text("owner_display_name", r.owner_display_name.trim(), MAX_NAME),
            validate::request_id("request_id", &r.request_id),
        )
            .all_ok()?;

        let mut tx = self
            .db
            .begin(&ctx.scoped_to(PLATFORM_SCOPE, not_found)?)
            .await?;
        if let Some(rid) = request_id
            && let Claim::Replay(t) = tx
                .claim_request::<Tenant>("CreateTenant", rid, &fingerprint(&r))
                .await?
        {
            return Ok(Response::new(t));
        }
        let tenant_id = Uuid::now_v7();
        tx.switch_tenant(tenant_id).await?;
        let row = store::insert(
            &mut tx,
            tenant_id,
            &display_name,
            names::plan(plan),
            &settings,
        )
        .await?;
        let owner = crate::members::store::resolve_user(&mut tx, &owner_email).await?;
        crate::members::store::insert(&mut tx, owner, Role::Owner, &owner_name).await?;
        tx.audit(
            "tenant.create",
            "tenant",
            tenant_id,
            serde_json::json!({ "plan": names::plan(plan) }),
        )
        .await?;
        tx.audit(
            "member.add",
            "member",
            owner,
            serde_json::json!({ "role": "owner" }),
        )
        .await?;
        let tenant = row.into_proto();
        if let Some(rid) = request_id {
            tx.switch_tenant(PLATFORM_SCOPE).await?;
            tx.complete_request("CreateTenant", rid, &tenant).await?;
        }
        tx.commit().await?;
        tracing::info!(tenant = %tenant_id, "tenant created");
        Ok(Response::new(tenant))
    }

    async fn get_tenant(&self, req: Request<GetTenantRequest>) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        let scoped = Self::scope(&ctx, "tenant_id", &req.get_ref().tenant_id, Role::Viewer)?;
        let row = store::get_fast(&self.db, &scoped)
            .await?
            .ok_or_else(not_found)?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_tenants(
        &self,
        req: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_platform_admin()?;
        let r = req.get_ref();
        let binding = PageBinding::new("ListTenants").with(r.show_deleted);
        let (size, after) = (
            validate::page_size("page_size", r.page_size),
            page::decode::<Uuid>(&binding, &r.page_token),
        )
            .all_ok()?;
        let mut tx = self.db.begin_platform(&ctx).await?;
        let rows = store::list(tx.conn(), after, r.show_deleted, size).await?;
        tx.commit().await?;
        let (rows, next_page_token) = page::split_page(rows, size, &binding, |t| t.tenant_id);
        Ok(Response::new(ListTenantsResponse {
            tenants: rows.into_iter().map(store::TenantRow::into_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        req: Request<UpdateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        let r = req.into_inner();
        let t = r.tenant.unwrap_or_default();
        let scoped = Self::scope(&ctx, "tenant.tenant_id", &t.tenant_id, Role::Admin)?;
        let mask = UpdateMask::parse(
            r.update_mask.as_ref(),
            &["display_name", "plan", "settings"],
        )?;
        let (display_name, plan, settings, expected) = (
            opt(mask.contains("display_name"), || {
                validate::name("tenant.display_name", &t.display_name, MAX_NAME)
            }),
            opt(mask.contains("plan"), || {
                validate::enum_value::<Plan>("tenant.plan", t.plan)
            }),
            opt(mask.contains("settings"), || {
                convert::json_object("tenant.settings", t.settings.as_ref(), MAX_SETTINGS_BYTES)
            }),
            etag::parse("tenant.etag", &t.etag),
        )
            .all_ok()?;
        if plan.is_some() {
            // The plan is what the tenant pays for: owners (and platform admins) only.
            scoped.require(Role::Owner)?;
        }

        let mut tx = self.db.begin(&scoped).await?;
        let current = store::get_for_update(&mut tx)
            .await?
            .ok_or_else(not_found)?;
        if expected.is_some_and(|e| e != current.revision) {
            return Err(etag::stale("tenant").into());
        }
        if current.deleted_at.is_some() {
            return Err(ApiError::failed_precondition(
                "TENANT_DELETED",
                "the tenant is deleted; undelete it first",
            )
            .into());
        }
        let row = store::update(
            &mut tx,
            display_name.as_deref(),
            plan.map(names::plan),
            settings.as_ref(),
        )
        .await?;
        let changed: Vec<&str> = ["display_name", "plan", "settings"]
            .into_iter()
            .filter(|p| mask.contains(p))
            .collect();
        tx.audit(
            "tenant.update",
            "tenant",
            row.tenant_id,
            serde_json::json!({ "fields": changed }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_tenant(
        &self,
        req: Request<DeleteTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        let r = req.get_ref();
        let scoped = Self::scope(&ctx, "tenant_id", &r.tenant_id, Role::Owner)?;
        let expected = etag::parse("etag", &r.etag)?;
        self.set_deleted(&scoped, expected, true)
            .await
            .map(Response::new)
            .map_err(Into::into)
    }

    async fn undelete_tenant(
        &self,
        req: Request<UndeleteTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        let scoped = Self::scope(&ctx, "tenant_id", &req.get_ref().tenant_id, Role::Owner)?;
        self.set_deleted(&scoped, None, false)
            .await
            .map(Response::new)
            .map_err(Into::into)
    }
}

impl Tenants {
    /// Soft delete or undelete; repeating either is a no-op that returns the tenant.
    async fn set_deleted(
        &self,
        ctx: &TenantContext,
        expected: Option<i64>,
        deleted: bool,
    ) -> ApiResult<Tenant> {
        let mut tx = self.db.begin(ctx).await?;
        let current = store::get_for_update(&mut tx)
            .await?
            .ok_or_else(not_found)?;
        if expected.is_some_and(|e| e != current.revision) {
            return Err(etag::stale("tenant"));
        }
        if current.deleted_at.is_some() == deleted {
            tx.commit().await?;
            return Ok(current.into_proto());
        }
        let row = store::set_deleted(&mut tx, deleted).await?;
        let action = if deleted {
            "tenant.delete"
        } else {
            "tenant.undelete"
        };
        tx.audit(action, "tenant", row.tenant_id, serde_json::json!({}))
            .await?;
        tx.commit().await?;
        Ok(row.into_proto())
    }
}

/// Runs a field's parser only when the mask names it.
fn opt<T>(wanted: bool, parse: impl FnOnce() -> ApiResult<T>) -> ApiResult<Option<T>> {
    if wanted { parse().map(Some) } else { Ok(None) }
}

pub(crate) mod store {
    use chrono::{DateTime, Utc};
    use mosaic_api::{ApiResult, convert, etag};
    use mosaic_db::{Database, TenantContext, TenantTx, db_error};
    use mosaic_proto::identity::Tenant;
    use sqlx::PgConnection;
    use uuid::Uuid;

    use crate::names;

    #[derive(Debug, sqlx::FromRow)]
    pub struct TenantRow {
        pub tenant_id: Uuid,
        pub display_name: String,
        pub plan: String,
        pub settings: serde_json::Value,
        pub revision: i64,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
        pub deleted_at: Option<DateTime<Utc>>,
    }

    impl TenantRow {
        pub fn into_proto(self) -> Tenant {
            Tenant {
                tenant_id: self.tenant_id.to_string(),
                display_name: self.display_name,
                plan: names::plan_from(&self.plan) as i32,
                settings: Some(convert::json_to_struct(&self.settings)),
                create_time: Some(convert::timestamp(self.created_at)),
                update_time: Some(convert::timestamp(self.updated_at)),
                delete_time: convert::opt_timestamp(self.deleted_at),
                etag: etag::format(self.revision),
            }
        }
    }

    const COLUMNS: &str =
        "tenant_id, display_name, plan, settings, revision, created_at, updated_at, deleted_at";

    pub async fn insert(
        tx: &mut TenantTx,
        id: Uuid,
        display_name: &str,
        plan: &str,
        settings: &serde_json::Value,
    ) -> ApiResult<TenantRow> {
        sqlx::query_as(&format!(
            "INSERT INTO tenants (tenant_id, display_name, plan, settings) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(display_name)
        .bind(plan)
        .bind(settings)
        .fetch_one(tx.conn())
        .await
        .map_err(db_error)
    }

    /// The hot read (GetTenant): one round trip, see `Database::read_by_ids`.
    pub async fn get_fast(db: &Database, ctx: &TenantContext) -> ApiResult<Option<TenantRow>> {
        let rows = db
            .read_by_ids(
                ctx,
                &format!("SELECT {COLUMNS} FROM tenants WHERE tenant_id = $tenant"),
                &[],
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    pub async fn get_for_update(tx: &mut TenantTx) -> ApiResult<Option<TenantRow>> {
        let id = tx.tenant_id();
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tenants WHERE tenant_id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)
    }

    /// Platform listing, ordered by id (creation order: ids are UUIDv7).
    pub async fn list(
        conn: &mut PgConnection,
        after: Option<Uuid>,
        show_deleted: bool,
        size: u32,
    ) -> ApiResult<Vec<TenantRow>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tenants \
             WHERE ($1::uuid IS NULL OR tenant_id > $1) AND ($2 OR deleted_at IS NULL) \
             ORDER BY tenant_id LIMIT $3"
        ))
        .bind(after)
        .bind(show_deleted)
        .bind(i64::from(size) + 1)
        .fetch_all(conn)
        .await
        .map_err(db_error)
    }

    pub async fn update(
        tx: &mut TenantTx,
        display_name: Option<&str>,
        plan: Option<&str>,
        settings: Option<&serde_json::Value>,
    ) -> ApiResult<TenantRow> {
        let id = tx.tenant_id();
        sqlx::query_as(&format!(
            "UPDATE tenants SET display_name = COALESCE($2, display_name), plan = COALESCE($3, plan), \
             settings = COALESCE($4, settings), revision = revision + 1, updated_at = now() \
             WHERE tenant_id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(display_name)
        .bind(plan)
        .bind(settings)
        .fetch_one(tx.conn())
        .await
        .map_err(db_error)
    }

    pub async fn set_deleted(tx: &mut TenantTx, deleted: bool) -> ApiResult<TenantRow> {
        let id = tx.tenant_id();
        sqlx::query_as(&format!(
            "UPDATE tenants SET deleted_at = CASE WHEN $2 THEN now() END, revision = revision + 1, \
             updated_at = now() WHERE tenant_id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(deleted)
        .fetch_one(tx.conn())
        .await
        .map_err(db_error)
    }
}
