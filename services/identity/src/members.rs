//! `MemberService`: the users of the caller's tenant. Admins manage members;
//! only owners grant or take away the owner role; the last owner stays.

use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, validate};
use mosaic_db::idempotency::{Claim, fingerprint};
use mosaic_db::{Database, TenantContext, TenantTx};
use mosaic_proto::identity::{
    AddMemberRequest, GetMemberRequest, ListMembersRequest, ListMembersResponse, Member,
    RemoveMemberRequest, RemoveMemberResponse, Role as PbRole, UpdateMemberRequest,
    member_service_server::MemberService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::names;

const MAX_NAME: usize = 200;

fn not_found() -> ApiError {
    ApiError::not_found("MEMBER_NOT_FOUND", "member not found")
}

#[derive(Debug)]
pub struct Members {
    db: Database,
}

impl Members {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

fn parse_role(field: &str, raw: i32) -> ApiResult<Role> {
    let pb = validate::enum_value::<PbRole>(field, raw)?;
    names::role(pb).ok_or_else(|| ApiError::invalid_argument(field, "required"))
}

/// Granting or revoking ownership takes an owner.
fn require_for_role_change(
    ctx: &TenantContext,
    from: Option<Role>,
    to: Option<Role>,
) -> ApiResult<()> {
    if from == Some(Role::Owner) || to == Some(Role::Owner) {
        ctx.require(Role::Owner)
    } else {
        ctx.require(Role::Admin)
    }
}

#[tonic::async_trait]
impl MemberService for Members {
    async fn add_member(&self, req: Request<AddMemberRequest>) -> Result<Response<Member>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let r = req.into_inner();
        let (email, role, display_name, request_id) = (
            validate::email("email", &r.email),
            parse_role("role", r.role),
            validate::text("display_name", r.display_name.trim(), MAX_NAME),
            validate::request_id("request_id", &r.request_id),
        )
            .all_ok()?;
        require_for_role_change(&ctx, None, Some(role))?;

        let mut tx = self.db.begin(&ctx).await?;
        if let Some(rid) = request_id
            && let Claim::Replay(m) = tx
                .claim_request::<Member>("AddMember", rid, &fingerprint(&r))
                .await?
        {
            return Ok(Response::new(m));
        }
        let user_id = store::resolve_user(&mut tx, &email).await?;
        if !store::insert(&mut tx, user_id, role, &display_name).await? {
            return Err(ApiError::already_exists(
                "MEMBER_EXISTS",
                "email",
                "this user is already a member",
            )
            .into());
        }
        let member = store::get(&mut tx, user_id)
            .await?
            .ok_or_else(not_found)?
            .into_proto();
        tx.audit(
            "member.add",
            "member",
            user_id,
            serde_json::json!({ "role": role.as_str() }),
        )
        .await?;
        if let Some(rid) = request_id {
            tx.complete_request("AddMember", rid, &member).await?;
        }
        tx.commit().await?;
        Ok(Response::new(member))
    }

    async fn get_member(&self, req: Request<GetMemberRequest>) -> Result<Response<Member>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let user_id = validate::id("user_id", &req.get_ref().user_id)?;
        let row = store::get_fast(&self.db, &ctx, user_id)
            .await?
            .ok_or_else(not_found)?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_members(
        &self,
        req: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let binding = PageBinding::new("ListMembers")
            .with(ctx.tenant_id()?)
            .with(r.role);
        let (size, after, role) = (
            validate::page_size("page_size", r.page_size),
            page::decode::<Uuid>(&binding, &r.page_token),
            validate::enum_or::<PbRole>("role", r.role, PbRole::Unspecified),
        )
            .all_ok()?;
        let mut tx = self.db.begin(&ctx).await?;
        let rows = store::list(&mut tx, after, names::role(role), size).await?;
        tx.finish_read();
        let (rows, next_page_token) = page::split_page(rows, size, &binding, |m| m.user_id);
        Ok(Response::new(ListMembersResponse {
            members: rows.into_iter().map(store::MemberRow::into_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_member(
        &self,
        req: Request<UpdateMemberRequest>,
    ) -> Result<Response<Member>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let r = req.into_inner();
        let m = r.member.unwrap_or_default();
        let mask = UpdateMask::parse(r.update_mask.as_ref(), &["role", "display_name"])?;
        let (user_id, role, display_name, expected) = (
            validate::id("member.user_id", &m.user_id),
            if mask.contains("role") {
                parse_role("member.role", m.role).map(Some)
            } else {
                Ok(None)
            },
            if mask.contains("display_name") {
                validate::text("member.display_name", m.display_name.trim(), MAX_NAME).map(Some)
            } else {
                Ok(None)
            },
            etag::parse("member.etag", &m.etag),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        store::lock_tenant(&mut tx).await?;
        let current = store::get(&mut tx, user_id).await?.ok_or_else(not_found)?;
        if expected.is_some_and(|e| e != current.revision) {
            return Err(etag::stale("member").into());
        }
        let from = Role::parse(&current.role);
        if role.is_some() && role != from {
            require_for_role_change(&ctx, from, role)?;
            if from == Some(Role::Owner) {
                ensure_other_owner(&mut tx).await?;
            }
        }
        store::update(&mut tx, user_id, role, display_name.as_deref()).await?;
        let row = store::get(&mut tx, user_id).await?.ok_or_else(not_found)?;
        tx.audit(
            "member.update",
            "member",
            user_id,
            serde_json::json!({ "role": role.map(Role::as_str), "display_name_changed": display_name.is_some() }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let r = req.get_ref();
        let (user_id, expected) = (
            validate::id("user_id", &r.user_id),
            etag::parse("etag", &r.etag),
        )
            .all_ok()?;
        let mut tx = self.db.begin(&ctx).await?;
        store::lock_tenant(&mut tx).await?;
        let current = store::get(&mut tx, user_id).await?.ok_or_else(not_found)?;
        if expected.is_some_and(|e| e != current.revision) {
            return Err(etag::stale("member").into());
        }
        let from = Role::parse(&current.role);
        require_for_role_change(&ctx, from, None)?;
        if from == Some(Role::Owner) {
            ensure_other_owner(&mut tx).await?;
        }
        store::delete(&mut tx, user_id).await?;
        tx.audit(
            "member.remove",
            "member",
            user_id,
            serde_json::json!({ "role": current.role }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }
}

/// FAILED_PRECONDITION when the owner about to lose the role is the only one.
/// Callers hold the tenant row lock, so two demotions cannot both pass.
async fn ensure_other_owner(tx: &mut TenantTx) -> ApiResult<()> {
    if store::count_owners(tx).await? <= 1 {
        return Err(ApiError::failed_precondition(
            "LAST_OWNER",
            "a tenant keeps at least one owner: make another member owner first",
        ));
    }
    Ok(())
}

pub(crate) mod store {
    use chrono::{DateTime, Utc};
    use mosaic_api::{ApiError, ApiResult, convert, etag};
    use mosaic_db::{Database, TenantContext, TenantTx, db_error};
    use mosaic_proto::identity::Member;
    use mosaic_tenant::Role;
    use uuid::Uuid;

    use crate::names;

    #[derive(Debug, sqlx::FromRow)]
    pub struct MemberRow {
        pub tenant_id: Uuid,
        pub user_id: Uuid,
        pub email: String,
        pub display_name: String,
        pub role: String,
        pub revision: i64,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    impl MemberRow {
        pub fn into_proto(self) -> Member {
            Member {
                user_id: self.user_id.to_string(),
                tenant_id: self.tenant_id.to_string(),
                email: self.email,
                display_name: self.display_name,
                role: names::role_to_pb(&self.role) as i32,
                create_time: Some(convert::timestamp(self.created_at)),
                update_time: Some(convert::timestamp(self.updated_at)),
                etag: etag::format(self.revision),
            }
        }
    }

    const SELECT: &str = "SELECT m.tenant_id, m.user_id, u.email, m.display_name, m.role, m.revision, \
                          m.created_at, m.updated_at FROM memberships m JOIN users u ON u.user_id = m.user_id";

    /// The id of the user with this email, created if new (see `resolve_user` in the migration).
    pub async fn resolve_user(tx: &mut TenantTx, email: &str) -> ApiResult<Uuid> {
        let id: Option<Uuid> = sqlx::query_scalar("SELECT resolve_user($1, $2)")
            .bind(email)
            .bind(Uuid::now_v7())
            .fetch_one(tx.conn())
            .await
            .map_err(db_error)?;
        id.ok_or_else(|| ApiError::internal("resolve_user returned no id"))
    }

    /// False when the user is already a member.
    pub async fn insert(
        tx: &mut TenantTx,
        user_id: Uuid,
        role: Role,
        display_name: &str,
    ) -> ApiResult<bool> {
        let tenant = tx.tenant_id();
        let n = sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, role, display_name) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, user_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(user_id)
        .bind(role.as_str())
        .bind(display_name)
        .execute(tx.conn())
        .await
        .map_err(db_error)?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn get(tx: &mut TenantTx, user_id: Uuid) -> ApiResult<Option<MemberRow>> {
        let tenant = tx.tenant_id();
        sqlx::query_as(&format!(
            "{SELECT} WHERE m.tenant_id = $1 AND m.user_id = $2"
        ))
        .bind(tenant)
        .bind(user_id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)
    }

    /// The hot read (GetMember): one round trip, see `Database::read_by_ids`.
    pub async fn get_fast(
        db: &Database,
        ctx: &TenantContext,
        user_id: Uuid,
    ) -> ApiResult<Option<MemberRow>> {
        let sql = format!("{SELECT} WHERE m.tenant_id = $tenant AND m.user_id = $1");
        Ok(db
            .read_by_ids(ctx, &sql, &[user_id])
            .await?
            .into_iter()
            .next())
    }

    pub async fn list(
        tx: &mut TenantTx,
        after: Option<Uuid>,
        role: Option<Role>,
        size: u32,
    ) -> ApiResult<Vec<MemberRow>> {
        let tenant = tx.tenant_id();
        sqlx::query_as(&format!(
            "{SELECT} WHERE m.tenant_id = $1 AND ($2::uuid IS NULL OR m.user_id > $2) \
             AND ($3::text IS NULL OR m.role = $3) ORDER BY m.user_id LIMIT $4"
        ))
        .bind(tenant)
        .bind(after)
        .bind(role.map(Role::as_str))
        .bind(i64::from(size) + 1)
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
    }

    /// Serialises membership changes of one tenant (the last-owner rule).
    pub async fn lock_tenant(tx: &mut TenantTx) -> ApiResult<()> {
        let tenant = tx.tenant_id();
        sqlx::query("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE")
            .bind(tenant)
            .execute(tx.conn())
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn count_owners(tx: &mut TenantTx) -> ApiResult<i64> {
        let tenant = tx.tenant_id();
        sqlx::query_scalar(
            "SELECT count(*) FROM memberships WHERE tenant_id = $1 AND role = 'owner'",
        )
        .bind(tenant)
        .fetch_one(tx.conn())
        .await
        .map_err(db_error)
    }

    pub async fn update(
        tx: &mut TenantTx,
        user_id: Uuid,
        role: Option<Role>,
        display_name: Option<&str>,
    ) -> ApiResult<()> {
        let tenant = tx.tenant_id();
        sqlx::query(
            "UPDATE memberships SET role = COALESCE($3, role), display_name = COALESCE($4, display_name), \
             revision = revision + 1, updated_at = now() WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant)
        .bind(user_id)
        .bind(role.map(Role::as_str))
        .bind(display_name)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn delete(tx: &mut TenantTx, user_id: Uuid) -> ApiResult<()> {
        let tenant = tx.tenant_id();
        sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user_id)
            .execute(tx.conn())
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
