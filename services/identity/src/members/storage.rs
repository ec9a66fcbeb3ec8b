//! SQL of memberships (and the global users they point at). Every statement
//! names `tenant_id = $1` (RLS is the backstop).

use mosaic_api::{ApiError, ApiResult};
use mosaic_core::TenantId;
use mosaic_db::{HasMeta, Order, RowMeta, Select, TenantTx, db_error};
use mosaic_proto::identity::Member;
use mosaic_tenant::Role;
use uuid::Uuid;

use crate::ids::{MemberId, UserId};

/// Select list over the alias `t` (a membership). The email comes from the
/// global user, which RLS shows only through a membership of this tenant
/// (its id never leaves identity); memberships have no soft delete.
pub(crate) const SELECT: &str = "t.tenant_id, t.member_id, \
     (SELECT u.email FROM users u WHERE u.user_id = t.user_id) AS email, \
     t.display_name, t.role, t.revision, t.created_at, t.updated_at, \
     NULL::timestamptz AS deleted_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MemberRow {
    pub(crate) tenant_id: TenantId,
    pub(crate) member_id: MemberId,
    pub(crate) email: String,
    pub(crate) display_name: String,
    pub(crate) role: String,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for MemberRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl MemberRow {
    pub(crate) fn into_proto(self) -> Member {
        Member {
            user_id: self.member_id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            email: self.email,
            display_name: self.display_name,
            role: super::pb_role(&self.role) as i32,
            create_time: self.meta.create_time(),
            update_time: self.meta.update_time(),
            etag: self.meta.etag(),
        }
    }
}

/// The id of the user with this email, created if new (see `resolve_user` in the migration).
pub(crate) async fn resolve_user(tx: &mut TenantTx, email: &str) -> ApiResult<UserId> {
    let id: Option<Uuid> = sqlx::query_scalar("SELECT resolve_user($1, $2)")
        .bind(email)
        .bind(UserId::new())
        .fetch_one(tx.conn())
        .await
        .map_err(db_error)?;
    id.map(UserId::from)
        .ok_or_else(|| ApiError::internal("resolve_user returned no id"))
}

/// The new member's id; `None` when the user is already a member.
pub(crate) async fn insert(
    tx: &mut TenantTx,
    user_id: UserId,
    role: Role,
    display_name: &str,
) -> ApiResult<Option<MemberId>> {
    let tenant = tx.tenant_id();
    sqlx::query_scalar(
        "INSERT INTO memberships (tenant_id, user_id, member_id, role, display_name) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id, user_id) DO NOTHING RETURNING member_id",
    )
    .bind(tenant)
    .bind(user_id)
    .bind(MemberId::new())
    .bind(role.as_str())
    .bind(display_name)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

pub(crate) fn list(after: Option<MemberId>, role: Option<Role>, size: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM memberships t WHERE t.tenant_id = $tenant"
    ));
    if let Some(role) = role {
        sql.push(" AND t.role = ").push_bind(role.as_str());
    }
    sql.keyset("t.member_id", Order::Asc, after.map(MemberId::uuid), size);
    sql
}

/// Serialises membership changes of one tenant (the last-owner rule).
pub(crate) async fn lock_tenant(tx: &mut TenantTx) -> ApiResult<()> {
    let tenant = tx.tenant_id();
    sqlx::query("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn count_owners(tx: &mut TenantTx) -> ApiResult<i64> {
    let tenant = tx.tenant_id();
    sqlx::query_scalar("SELECT count(*) FROM memberships WHERE tenant_id = $1 AND role = 'owner'")
        .bind(tenant)
        .fetch_one(tx.conn())
        .await
        .map_err(db_error)
}

/// Writes the role and display name of a membership the caller locked.
pub(crate) async fn update(
    tx: &mut TenantTx,
    member: MemberId,
    role: &str,
    display_name: &str,
) -> ApiResult<MemberRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE memberships AS t SET role = $3, display_name = $4, \
         revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.member_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(member)
    .bind(role)
    .bind(display_name)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)?
    .ok_or_else(|| super::RESOURCE.not_found())
}

pub(crate) async fn delete(tx: &mut TenantTx, member: MemberId) -> ApiResult<()> {
    let tenant = tx.tenant_id();
    sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND member_id = $2")
        .bind(tenant)
        .bind(member)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
    Ok(())
}
