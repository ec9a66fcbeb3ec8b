//! `MemberService`: the users of the caller's tenant. Admins manage members;
//! only owners grant or take away the owner role; the last owner stays.

use std::marker::PhantomData;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::{Kind, masked};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, parse};
use mosaic_db::{Database, Resource, TenantContext, TenantTx, create_once};
use mosaic_proto::StoredEnum;
use mosaic_proto::identity::{
    AddMemberRequest, GetMemberRequest, ListMembersRequest, ListMembersResponse, Member,
    RemoveMemberRequest, RemoveMemberResponse, Role as PbRole, UpdateMemberRequest,
    member_service_server::MemberService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

use crate::access_log::{self, Change};
use crate::ids::MemberId;

pub(crate) mod storage;

const MAX_NAME: usize = 200;

/// Memberships have no soft delete: RemoveMember deletes the row. A member is
/// named by its member id (the `user_id` field of the API), never by the
/// global user id.
pub(crate) const RESOURCE: Resource<MemberId> = Resource {
    kind: Kind {
        name: "member",
        not_found: "MEMBER_NOT_FOUND",
        deleted: "MEMBER_DELETED",
    },
    table: "memberships",
    id_column: "member_id",
    select: storage::SELECT,
    constraints: &[],
    id: PhantomData,
};

/// A tenant role as the proto names it; `None` for the zero value.
pub(crate) fn role_of(pb: PbRole) -> Option<Role> {
    Role::parse(pb.stored_name())
}

/// The proto value of a stored role.
pub(crate) fn pb_role(stored: &str) -> PbRole {
    PbRole::from_stored(stored).unwrap_or(PbRole::Unspecified)
}

fn parse_role(field: &str, raw: i32) -> ApiResult<Role> {
    let pb = parse::enum_value::<PbRole>(field, raw)?;
    role_of(pb).ok_or_else(|| ApiError::invalid_argument(field, "required"))
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

#[derive(Debug)]
pub struct Members {
    db: Database,
}

impl Members {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl MemberService for Members {
    async fn add_member(&self, req: Request<AddMemberRequest>) -> Result<Response<Member>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.into_inner();
        let (email, role, display_name, request_id) = (
            parse::email("email", &request.email),
            parse_role("role", request.role),
            parse::text("display_name", request.display_name.trim(), MAX_NAME),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        require_for_role_change(&ctx, None, Some(role))?;

        let member = create_once(
            &self.db,
            &ctx,
            "AddMember",
            request_id,
            &request,
            async |tx| {
                let user = storage::resolve_user(tx, &email).await?;
                let Some(member_id) = storage::insert(tx, user, role, &display_name).await? else {
                    return Err(ApiError::already_exists(
                        "MEMBER_EXISTS",
                        "email",
                        "this user is already a member",
                    ));
                };
                let member: storage::MemberRow = RESOURCE.get_for_update(tx, member_id).await?;
                tx.audit(
                    "member.add",
                    "member",
                    member_id,
                    serde_json::json!({ "role": role.as_str() }),
                )
                .await?;
                Ok(member.into_proto())
            },
        )
        .await?;
        Ok(Response::new(member))
    }

    async fn get_member(&self, req: Request<GetMemberRequest>) -> Result<Response<Member>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let member_id: MemberId = parse::id("user_id", &req.get_ref().user_id)?;
        let row: storage::MemberRow = RESOURCE.read(&self.db, &ctx, member_id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_members(
        &self,
        req: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let binding = PageBinding::new("ListMembers")
            .with(ctx.tenant_id()?)
            .with(request.role);
        let (size, after, role) = (
            parse::page_size("page_size", request.page_size),
            page::decode::<MemberId>(&binding, &request.page_token),
            parse::enum_or::<PbRole>("role", request.role, PbRole::Unspecified),
        )
            .all_ok()?;
        let rows = self
            .db
            .read(&ctx, storage::list(after, role_of(role), size))
            .await?;
        let (members, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |member| member.member_id,
            storage::MemberRow::into_proto,
        );
        Ok(Response::new(ListMembersResponse {
            members,
            next_page_token,
        }))
    }

    async fn update_member(
        &self,
        req: Request<UpdateMemberRequest>,
    ) -> Result<Response<Member>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.into_inner();
        let member = request.member.unwrap_or_default();
        let mask = UpdateMask::parse(request.update_mask.as_ref(), &["role", "display_name"])?;
        let (member_id, role, display_name, expected): (MemberId, _, _, _) = (
            parse::id("member.user_id", &member.user_id),
            masked(mask.contains("role"), || {
                parse_role("member.role", member.role)
            }),
            masked(mask.contains("display_name"), || {
                parse::text("member.display_name", member.display_name.trim(), MAX_NAME)
            }),
            etag::parse("member.etag", &member.etag),
        )
            .all_ok()?;

        let details = serde_json::json!({
            "role": role.map(Role::as_str),
            "display_name_changed": display_name.is_some(),
        });
        let mut tx = self.db.begin(&ctx).await?;
        // The tenant first, as RemoveMember does: the last-owner rule holds
        // under this lock, and both take their locks in the same order.
        storage::lock_tenant(&mut tx).await?;
        let row = RESOURCE
            .update_in(
                &mut tx,
                member_id,
                expected,
                details,
                async |tx, current: storage::MemberRow| {
                    let from = Role::parse(&current.role);
                    if role.is_some() && role != from {
                        require_for_role_change(&ctx, from, role)?;
                        if from == Some(Role::Owner) {
                            ensure_other_owner(tx).await?;
                        }
                    }
                    if role.is_some_and(|to| from.is_some_and(|from| to < from)) {
                        // A lowered role: tokens issued with the old one end.
                        let principal = format!("user:{member_id}");
                        access_log::publish(tx, Change::PrincipalRevoked(&principal)).await?;
                    }
                    let role: &str = match role {
                        Some(role) => role.as_str(),
                        None => &current.role,
                    };
                    let display_name = display_name.as_deref().unwrap_or(&current.display_name);
                    storage::update(tx, member_id, role, display_name).await
                },
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
        let request = req.get_ref();
        let (member_id, expected): (MemberId, _) = (
            parse::id("user_id", &request.user_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let mut tx = self.db.begin(&ctx).await?;
        storage::lock_tenant(&mut tx).await?;
        let current: storage::MemberRow = RESOURCE.get_for_update(&mut tx, member_id).await?;
        RESOURCE.kind.check_etag(current.meta.revision, expected)?;
        let from = Role::parse(&current.role);
        require_for_role_change(&ctx, from, None)?;
        if from == Some(Role::Owner) {
            ensure_other_owner(&mut tx).await?;
        }
        storage::delete(&mut tx, member_id).await?;
        let principal = format!("user:{member_id}");
        access_log::publish(&mut tx, Change::PrincipalRevoked(&principal)).await?;
        tx.audit(
            "member.remove",
            "member",
            member_id,
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
    if storage::count_owners(tx).await? <= 1 {
        return Err(ApiError::failed_precondition(
            "LAST_OWNER",
            "a tenant keeps at least one owner: make another member owner first",
        ));
    }
    Ok(())
}
