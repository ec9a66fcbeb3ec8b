//! `TenantService`: create (platform admins, with the first owner, in one
//! transaction), get, list (platform admins), update with mask and etag, soft
//! delete and undelete.

use std::marker::PhantomData;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::{Kind, masked};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, parse};
use mosaic_core::TenantId;
use mosaic_db::{Database, Resource, TenantContext, create_once};
use mosaic_proto::StoredEnum;
use mosaic_proto::identity::{
    CreateTenantRequest, DeleteTenantRequest, GetTenantRequest, ListTenantsRequest,
    ListTenantsResponse, Plan, Tenant, UndeleteTenantRequest, UpdateTenantRequest,
    tenant_service_server::TenantService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

pub(crate) mod storage;

use crate::access_log::{self, Change};

/// The idempotency scope of platform operations that precede any tenant.
pub const PLATFORM_SCOPE: TenantId = TenantId::nil();
const MAX_SETTINGS_BYTES: usize = 16 * 1024;
const MAX_NAME: usize = 200;

/// A tenant is its own row: the id column is the tenant id.
pub(crate) const RESOURCE: Resource<TenantId> = Resource {
    kind: Kind {
        name: "tenant",
        not_found: "TENANT_NOT_FOUND",
        deleted: "TENANT_DELETED",
    },
    table: "tenants",
    id_column: "tenant_id",
    select: storage::SELECT,
    constraints: &[],
    id: PhantomData,
};

mosaic_api::patch! {
    /// The writable fields of a tenant, checked. Their names are the paths an
    /// update mask may name.
    pub(crate) struct TenantFields / TenantPatch {
        display_name: String,
        plan: Plan,
        settings: serde_json::Value,
    }
}

impl TenantPatch {
    /// Parses the fields of `tenant` that `wanted` names. On create an unset
    /// plan means free; on update a named plan must be set.
    fn parse(tenant: &Tenant, wanted: impl Fn(&str) -> bool, creating: bool) -> ApiResult<Self> {
        let (display_name, plan, settings) = (
            masked(wanted("display_name"), || {
                parse::name("tenant.display_name", &tenant.display_name, MAX_NAME)
            }),
            masked(wanted("plan"), || {
                if creating {
                    parse::enum_or("tenant.plan", tenant.plan, Plan::Free)
                } else {
                    parse::enum_value("tenant.plan", tenant.plan)
                }
            }),
            masked(wanted("settings"), || {
                let settings = parse::json_object(
                    "tenant.settings",
                    tenant.settings.as_ref(),
                    MAX_SETTINGS_BYTES,
                )?;
                check_approvals(&settings)?;
                Ok(settings)
            }),
        )
            .all_ok()?;
        Ok(Self {
            display_name,
            plan,
            settings,
        })
    }
}

/// The roles `settings.approvals.approver_role` may name: who approves an
/// AI-drafted action in agents (viewers only read).
pub const APPROVER_ROLES: [&str; 3] = ["member", "admin", "owner"];

/// `settings.approvals`, when present, is an object whose `approver_role`,
/// when present, is one of [`APPROVER_ROLES`] (agents reads it through the
/// access view; see `migrations/identity/0006_approver_role.sql`).
fn check_approvals(settings: &serde_json::Value) -> ApiResult<()> {
    let Some(approvals) = settings.get("approvals") else {
        return Ok(());
    };
    let field = "tenant.settings.approvals.approver_role";
    let Some(approvals) = approvals.as_object() else {
        return Err(ApiError::invalid_argument(
            "tenant.settings.approvals",
            "must be an object",
        ));
    };
    match approvals.get("approver_role") {
        None => Ok(()),
        Some(serde_json::Value::String(role)) if APPROVER_ROLES.contains(&role.as_str()) => Ok(()),
        Some(_) => Err(ApiError::invalid_argument(
            field,
            "must be one of member, admin, owner",
        )),
    }
}

#[derive(Debug)]
pub struct Tenants {
    db: Database,
}

impl Tenants {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Soft delete or undelete, with its audit event and, so that every
    /// service refuses or accepts the tenant's tokens again, its access change.
    async fn set_deleted(
        &self,
        ctx: &TenantContext,
        expected: Option<i64>,
        deleted: bool,
    ) -> ApiResult<storage::TenantRow> {
        let mut tx = self.db.begin(ctx).await?;
        let id = tx.tenant_id();
        let (row, changed) = RESOURCE.set_deleted(&mut tx, id, expected, deleted).await?;
        if changed {
            let (action, change) = if deleted {
                ("tenant.delete", Change::TenantDeleted)
            } else {
                ("tenant.undelete", Change::TenantRestored)
            };
            tx.audit(action, "tenant", id, serde_json::json!({}))
                .await?;
            access_log::publish(&mut tx, change).await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    /// The context for acting on the tenant named in a request: the caller's
    /// own, or any for platform admins; another tenant is NOT_FOUND.
    fn scope(ctx: &TenantContext, field: &str, raw: &str, min: Role) -> ApiResult<TenantContext> {
        let id = parse::id(field, raw)?;
        let scoped = ctx.scoped_to(id, || RESOURCE.not_found())?;
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
        let request = req.into_inner();
        let tenant = request.tenant.clone().unwrap_or_default();
        let (new, owner_email, owner_name, request_id) = (
            TenantPatch::parse(&tenant, |_| true, true).and_then(TenantPatch::into_new),
            parse::email("owner_email", &request.owner_email),
            parse::text(
                "owner_display_name",
                request.owner_display_name.trim(),
                MAX_NAME,
            ),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;

        // The request id is claimed in the platform scope (the tenant does
        // not exist yet); the tenant's rows are written in its own.
        let platform = ctx.scoped_to(PLATFORM_SCOPE, || RESOURCE.not_found())?;
        let tenant = create_once(
            &self.db,
            &platform,
            "CreateTenant",
            request_id,
            &request,
            async |tx| {
                let tenant_id = TenantId::new();
                tx.switch_tenant(tenant_id).await?;
                let row = storage::insert(tx, tenant_id, &new).await?;
                access_log::publish(tx, Change::TenantCreated).await?;
                let user = crate::members::storage::resolve_user(tx, &owner_email).await?;
                let owner = crate::members::storage::insert(tx, user, Role::Owner, &owner_name)
                    .await?
                    .ok_or_else(|| ApiError::internal("a new tenant already had a member"))?;
                let plan = new.plan.stored_name();
                tx.audit(
                    "tenant.create",
                    "tenant",
                    tenant_id,
                    serde_json::json!({ "plan": plan }),
                )
                .await?;
                tx.audit(
                    "member.add",
                    "member",
                    owner,
                    serde_json::json!({ "role": "owner" }),
                )
                .await?;
                tracing::info!(tenant = %tenant_id, "tenant created");
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(tenant))
    }

    async fn get_tenant(&self, req: Request<GetTenantRequest>) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        let scoped = Self::scope(&ctx, "tenant_id", &req.get_ref().tenant_id, Role::Viewer)?;
        let row: storage::TenantRow = RESOURCE
            .read(&self.db, &scoped, scoped.tenant_id()?)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_tenants(
        &self,
        req: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_platform_admin()?;
        let request = req.get_ref();
        let binding = PageBinding::new("ListTenants").with(request.show_deleted);
        let (size, after) = (
            parse::page_size("page_size", request.page_size),
            page::decode::<TenantId>(&binding, &request.page_token),
        )
            .all_ok()?;
        let mut tx = self.db.begin_platform(&ctx).await?;
        let rows = storage::list(tx.conn(), after, request.show_deleted, size).await?;
        tx.commit().await?;
        let (tenants, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |tenant| tenant.tenant_id,
            storage::TenantRow::into_proto,
        );
        Ok(Response::new(ListTenantsResponse {
            tenants,
            next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        req: Request<UpdateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        let request = req.into_inner();
        let tenant = request.tenant.unwrap_or_default();
        let scoped = Self::scope(&ctx, "tenant.tenant_id", &tenant.tenant_id, Role::Admin)?;
        let mask = UpdateMask::parse(request.update_mask.as_ref(), TenantPatch::PATHS)?;
        let (patch, expected) = (
            TenantPatch::parse(&tenant, |path| mask.contains(path), false),
            etag::parse("tenant.etag", &tenant.etag),
        )
            .all_ok()?;
        if patch.plan.is_some() {
            // The plan is what the tenant pays for: owners (and platform admins) only.
            scoped.require(Role::Owner)?;
        }
        let id = scoped.tenant_id()?;
        let row = RESOURCE
            .update(
                &self.db,
                &scoped,
                id,
                expected,
                mask.audit_details(),
                async |tx, current: storage::TenantRow| {
                    storage::update(tx, &patch.apply(current.fields())).await
                },
            )
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_tenant(
        &self,
        req: Request<DeleteTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        let request = req.get_ref();
        let scoped = Self::scope(&ctx, "tenant_id", &request.tenant_id, Role::Owner)?;
        let expected = etag::parse("etag", &request.etag)?;
        let row = self.set_deleted(&scoped, expected, true).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn undelete_tenant(
        &self,
        req: Request<UndeleteTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let ctx = TenantContext::of(&req)?;
        let scoped = Self::scope(&ctx, "tenant_id", &req.get_ref().tenant_id, Role::Owner)?;
        let row = self.set_deleted(&scoped, None, false).await?;
        Ok(Response::new(row.into_proto()))
    }
}
