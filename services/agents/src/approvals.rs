//! `ApprovalService`: actions an agent drafts that a person approves before
//! they run (human in the loop).
//!
//! The states: PENDING → APPROVED or REJECTED (a member holding the tenant's
//! approver role) → EXECUTING (an executor's claim, a lease) → SUCCEEDED or
//! FAILED; a PENDING action past its expiry is EXPIRED. Each transition locks
//! the action's row, checks the state it leaves and writes the one it enters
//! in one conditional UPDATE, with its audit event, in one transaction: two
//! approvers at once take turns on the lock, and the second finds the action
//! decided (FAILED_PRECONDITION `INVALID_TRANSITION`). As with documents, two
//! states are read from the clock: a PENDING action past its expiry reads as
//! EXPIRED (the first decision tried on it writes the expiry down and is
//! refused), and an EXECUTING action whose lease ran out reads as APPROVED and
//! is claimable again (the old claim can no longer complete it): executors
//! must treat `action_id` as the idempotency key of what they do.

use std::marker::PhantomData;
use std::sync::Arc;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::Kind;
use mosaic_api::{AllOk, ApiError, ApiResult, etag, parse};
use mosaic_db::access::AccessView;
use mosaic_db::{Database, Resource, TenantContext, create_once};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::{
    Action, ActionKind, ActionState, ApproveActionRequest, ClaimActionsRequest,
    ClaimActionsResponse, ClearSubjectRequest, ClearSubjectResponse, CompleteActionRequest,
    CreateActionRequest, GetActionRequest, ListActionsRequest, ListActionsResponse,
    RejectActionRequest, SubjectType, approval_service_server::ApprovalService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::documents::{CLAIM_NOT_HELD, INVALID_TRANSITION};
use crate::ids::{ActionId, AgentId, ClaimId};

pub(crate) mod params;
pub(crate) mod storage;

pub(crate) const RESOURCE: Resource<ActionId> = Resource {
    kind: Kind {
        name: "action",
        not_found: "ACTION_NOT_FOUND",
        deleted: "ACTION_DELETED",
    },
    table: "actions",
    id_column: "action_id",
    select: storage::SELECT,
    constraints: storage::CONSTRAINTS,
    id: PhantomData,
};

/// Reason of a decision on an action past its expiry.
pub const ACTION_EXPIRED: &str = "ACTION_EXPIRED";
/// Reason of a decision by a member below the tenant's approver role.
pub const APPROVER_ROLE_REQUIRED: &str = "APPROVER_ROLE_REQUIRED";
/// The service role that may clear subjects in the tenant a request names
/// (crm's subject relay, when it purges a contact or deal).
pub const SUBJECTS_ROLE: &str = "svc:subjects";
/// The approver role when the tenant's settings name none.
pub const DEFAULT_APPROVER_ROLE: Role = Role::Admin;
/// Most actions one `ClaimActions` hands out.
pub const MAX_CLAIM: i32 = 100;
/// A PENDING action's expiry when the request names none, and its bounds.
pub const DEFAULT_EXPIRY: chrono::Duration = chrono::Duration::hours(24);
const MIN_EXPIRY: chrono::Duration = chrono::Duration::minutes(1);
const MAX_EXPIRY: chrono::Duration = chrono::Duration::days(30);
const MAX_REASON: usize = 4000;
const MAX_NOTE: usize = 2000;
const MAX_ERROR: usize = 2000;

/// A new action, checked.
#[derive(Debug)]
pub(crate) struct NewAction {
    pub(crate) agent_id: AgentId,
    pub(crate) kind: ActionKind,
    pub(crate) parameters: serde_json::Value,
    pub(crate) subject: Option<(SubjectType, Uuid)>,
    pub(crate) reason: String,
    pub(crate) expires_at: chrono::DateTime<chrono::Utc>,
}

fn kind(field: &str, raw: i32) -> ApiResult<ActionKind> {
    match parse::enum_value(field, raw)? {
        ActionKind::Unspecified => Err(ApiError::invalid_argument(field, "required")),
        kind => Ok(kind),
    }
}

/// Both or neither of a subject's type and id.
fn subject(prefix: &str, raw_type: i32, raw_id: &str) -> ApiResult<Option<(SubjectType, Uuid)>> {
    let type_field = format!("{prefix}subject_type");
    let id_field = format!("{prefix}subject_id");
    let (subject_type, subject_id) = (
        parse::enum_or(&type_field, raw_type, SubjectType::Unspecified),
        parse::optional_id::<Uuid>(&id_field, raw_id),
    )
        .all_ok()?;
    match (subject_type, subject_id) {
        (SubjectType::Unspecified, None) => Ok(None),
        (SubjectType::Unspecified, Some(_)) => Err(ApiError::invalid_argument(
            type_field,
            "required with a subject id",
        )),
        (_, None) => Err(ApiError::invalid_argument(
            id_field,
            "required with a subject type",
        )),
        (subject_type, Some(id)) => Ok(Some((subject_type, id))),
    }
}

/// The expiry: 1 minute .. 30 days from now; unset is [`DEFAULT_EXPIRY`].
fn expiry(
    field: &str,
    raw: Option<&prost_types::Timestamp>,
) -> ApiResult<chrono::DateTime<chrono::Utc>> {
    let now = chrono::Utc::now();
    let Some(at) = parse::optional_time(field, raw)? else {
        return Ok(now + DEFAULT_EXPIRY);
    };
    if at < now + MIN_EXPIRY || at > now + MAX_EXPIRY {
        return Err(ApiError::invalid_argument(
            field,
            "from 1 minute to 30 days from now",
        ));
    }
    Ok(at)
}

fn parse_new(action: &Action) -> ApiResult<NewAction> {
    let kind = kind("action.kind", action.kind);
    // The parameters' shape is the kind's: checked when the kind is known,
    // beside every other field.
    let parameters = match &kind {
        Ok(kind) => params::parse("action.parameters", *kind, action.parameters.as_ref()),
        Err(_) => Ok(serde_json::Value::Null),
    };
    let (agent_id, kind, parameters, subject, reason, expires_at) = (
        parse::id("action.agent_id", &action.agent_id),
        kind,
        parameters,
        subject("action.", action.subject_type, &action.subject_id),
        parse::name("action.reason", &action.reason, MAX_REASON),
        expiry("action.expire_time", action.expire_time.as_ref()),
    )
        .all_ok()?;
    Ok(NewAction {
        agent_id,
        kind,
        parameters,
        subject,
        reason,
        expires_at,
    })
}

fn state_name(state: ActionState) -> String {
    state.stored_name().to_uppercase()
}

#[derive(Debug)]
pub struct Approvals {
    db: Database,
    access: Arc<AccessView>,
}

impl Approvals {
    pub fn new(db: Database, access: Arc<AccessView>) -> Self {
        Self { db, access }
    }

    /// PERMISSION_DENIED `APPROVER_ROLE_REQUIRED` unless the caller holds the
    /// role the tenant's settings name (`approvals.approver_role`, default
    /// admin), read now (a changed setting holds at once).
    async fn require_approver(&self, ctx: &TenantContext) -> ApiResult<()> {
        let named = self.access.approver_role(ctx.tenant_id()?).await?;
        let role = named
            .as_deref()
            .and_then(Role::parse)
            .filter(|role| *role >= Role::Member)
            .unwrap_or(DEFAULT_APPROVER_ROLE);
        ctx.require(role).map_err(|_| {
            ApiError::permission_denied_with(
                APPROVER_ROLE_REQUIRED,
                format!(
                    "deciding on actions needs the {} role (the tenant's approvals.approver_role)",
                    role.as_str()
                ),
            )
        })
    }

    /// PENDING → `decision.state`, under the row's lock. An action past its
    /// expiry gets its expiry written down (audited) and the decision is
    /// refused; any other state is refused naming it.
    async fn decide(
        &self,
        ctx: &TenantContext,
        id: ActionId,
        expected: Option<i64>,
        state: ActionState,
        note: String,
        edited: Option<&prost_types::Struct>,
    ) -> ApiResult<Action> {
        self.require_approver(ctx).await?;
        let mut tx = self.db.begin(ctx).await?;
        let current: storage::ActionRow = RESOURCE.get_for_update(&mut tx, id).await?;
        RESOURCE.kind.check_etag(current.meta.revision, expected)?;
        let verb = if state == ActionState::Approved {
            "approved"
        } else {
            "rejected"
        };
        match current.state() {
            ActionState::Pending => {}
            ActionState::Expired => {
                if storage::expire(&mut tx, id).await?.is_some() {
                    tx.audit(
                        "action.expire",
                        "action",
                        id,
                        serde_json::json!({ "expired_at": current.expires_at.to_rfc3339() }),
                    )
                    .await?;
                    tx.commit().await?;
                }
                return Err(ApiError::failed_precondition(
                    ACTION_EXPIRED,
                    format!("the action expired; it can no longer be {verb}"),
                ));
            }
            other => {
                return Err(ApiError::failed_precondition(
                    INVALID_TRANSITION,
                    format!(
                        "the action is {}; only a PENDING action can be {verb}",
                        state_name(other)
                    ),
                ));
            }
        }
        let edit = match edited {
            Some(raw) => {
                let parameters = params::parse("parameters", current.kind(), Some(raw))?;
                params::diff(&current.parameters, &parameters).map(|diff| (parameters, diff))
            }
            None => None,
        };
        let decision = storage::Decision {
            state,
            decided_by: ctx.principal().to_owned(),
            note,
            edit,
        };
        let row = storage::decide(&mut tx, id, &decision)
            .await?
            .ok_or_else(|| ApiError::internal("locked pending action not decided"))?;
        let action = if state == ActionState::Approved {
            "action.approve"
        } else {
            "action.reject"
        };
        tx.audit(
            action,
            "action",
            id,
            serde_json::json!({
                "note": decision.note,
                "parameters_diff": decision.edit.map(|(_, diff)| diff),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into_proto())
    }
}

/// Why `claim` could not complete `current`.
fn refusal(current: &storage::ActionRow, claim: ClaimId) -> ApiError {
    if current.last_claim_id == Some(claim) && current.claim_id.is_none() {
        ApiError::failed_precondition(
            CLAIM_NOT_HELD,
            "the claim's lease ran out; the action cannot be completed with it",
        )
    } else if current.state() != ActionState::Executing {
        ApiError::failed_precondition(
            INVALID_TRANSITION,
            format!(
                "the action is {}; only an EXECUTING action can be completed",
                state_name(current.state())
            ),
        )
    } else {
        ApiError::failed_precondition(
            CLAIM_NOT_HELD,
            "the action is EXECUTING under another claim; it cannot be completed with this one",
        )
    }
}

#[tonic::async_trait]
impl ApprovalService for Approvals {
    async fn create_action(
        &self,
        req: Request<CreateActionRequest>,
    ) -> Result<Response<Action>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let action = request.action.clone().unwrap_or_default();
        let (new, request_id) = (
            parse_new(&action),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        let action = create_once(
            &self.db,
            &ctx,
            "CreateAction",
            request_id,
            &request,
            async |tx| {
                crate::agents::RESOURCE
                    .require_live_shared(tx, new.agent_id, "action.agent_id")
                    .await?;
                let id = ActionId::new();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit(
                    "action.create",
                    "action",
                    id,
                    serde_json::json!({
                        "kind": new.kind.stored_name(),
                        "agent_id": new.agent_id.to_string(),
                    }),
                )
                .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(action))
    }

    async fn get_action(&self, req: Request<GetActionRequest>) -> Result<Response<Action>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = parse::id("action_id", &req.get_ref().action_id)?;
        let row: storage::ActionRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_actions(
        &self,
        req: Request<ListActionsRequest>,
    ) -> Result<Response<ListActionsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let (size, state, agent, kind, subject, created_before) = (
            parse::page_size("page_size", request.page_size),
            parse::enum_or("state", request.state, ActionState::Unspecified),
            parse::optional_id::<AgentId>("agent_id", &request.agent_id),
            parse::enum_or("kind", request.kind, ActionKind::Unspecified),
            subject("", request.subject_type, &request.subject_id),
            parse::optional_time("created_before", request.created_before.as_ref()),
        )
            .all_ok()?;
        let binding = PageBinding::new("ListActions")
            .with(ctx.tenant_id()?)
            .with(state.stored_name())
            .with(request.agent_id.as_str())
            .with(kind.stored_name())
            .with(format_args!("{subject:?}"))
            .with(format_args!("{created_before:?}"));
        let after = page::decode::<ActionId>(&binding, &request.page_token)?;
        let filter = storage::ActionFilter {
            state: (state != ActionState::Unspecified).then_some(state),
            agent,
            kind: (kind != ActionKind::Unspecified).then_some(kind),
            subject,
            created_before,
        };
        let rows = self
            .db
            .read(&ctx, storage::list_page(&filter, after, size))
            .await?;
        let (actions, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |action| action.action_id,
            storage::ActionRow::into_proto,
        );
        Ok(Response::new(ListActionsResponse {
            actions,
            next_page_token,
        }))
    }

    async fn approve_action(
        &self,
        req: Request<ApproveActionRequest>,
    ) -> Result<Response<Action>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (id, expected, note) = (
            parse::id("action_id", &request.action_id),
            etag::parse("etag", &request.etag),
            parse::text("note", &request.note, MAX_NOTE),
        )
            .all_ok()?;
        let action = self
            .decide(
                &ctx,
                id,
                expected,
                ActionState::Approved,
                note,
                request.parameters.as_ref(),
            )
            .await?;
        Ok(Response::new(action))
    }

    async fn reject_action(
        &self,
        req: Request<RejectActionRequest>,
    ) -> Result<Response<Action>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (id, expected, note) = (
            parse::id("action_id", &request.action_id),
            etag::parse("etag", &request.etag),
            parse::text("note", &request.note, MAX_NOTE),
        )
            .all_ok()?;
        let action = self
            .decide(&ctx, id, expected, ActionState::Rejected, note, None)
            .await?;
        Ok(Response::new(action))
    }

    async fn claim_actions(
        &self,
        req: Request<ClaimActionsRequest>,
    ) -> Result<Response<ClaimActionsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (max, lease) = (
            parse::int_range("max_actions", request.max_actions, 1, MAX_CLAIM),
            crate::documents::lease("lease", request.lease.as_ref()),
        )
            .all_ok()?;
        let claim = ClaimId::new();
        let mut tx = self.db.begin(&ctx).await?;
        let mut rows = storage::claim(&mut tx, claim, max, lease).await?;
        if rows.is_empty() {
            tx.finish_read();
            return Ok(Response::new(ClaimActionsResponse::default()));
        }
        rows.sort_by_key(|row| row.action_id);
        let ids: Vec<String> = rows.iter().map(|row| row.action_id.to_string()).collect();
        tx.audit(
            "action.claim",
            "claim",
            claim,
            serde_json::json!({ "action_ids": ids, "lease_ms": lease.as_millis() as u64 }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(ClaimActionsResponse {
            claim_id: claim.to_string(),
            actions: rows
                .into_iter()
                .map(storage::ActionRow::into_proto)
                .collect(),
        }))
    }

    async fn complete_action(
        &self,
        req: Request<CompleteActionRequest>,
    ) -> Result<Response<Action>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (id, claim, outcome) = (
            parse::id::<ActionId>("action_id", &request.action_id),
            parse::id::<ClaimId>("claim_id", &request.claim_id),
            outcome(request),
        )
            .all_ok()?;
        let mut tx = self.db.begin(&ctx).await?;
        let Some(row) = storage::complete(&mut tx, id, claim, &outcome).await? else {
            let current: storage::ActionRow = RESOURCE.get_for_update(&mut tx, id).await?;
            return Err(refusal(&current, claim).into());
        };
        let action = match outcome {
            storage::Outcome::Succeeded { .. } => "action.succeed",
            storage::Outcome::Failed { .. } => "action.fail",
        };
        tx.audit(
            action,
            "action",
            id,
            serde_json::json!({ "claim_id": claim.to_string() }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn clear_subject(
        &self,
        req: Request<ClearSubjectRequest>,
    ) -> Result<Response<ClearSubjectResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        if !ctx.has_service_role(SUBJECTS_ROLE) {
            ctx.require(Role::Member)?;
        }
        let request = req.get_ref();
        let ctx =
            ctx.for_service_request("tenant_id", &request.tenant_id, SUBJECTS_ROLE, || {
                ApiError::not_found("TENANT_NOT_FOUND", "tenant not found")
            })?;
        let (subject_type, subject_id) = (
            parse::enum_value::<SubjectType>("subject_type", request.subject_type).and_then(
                |subject_type| match subject_type {
                    SubjectType::Unspecified => {
                        Err(ApiError::invalid_argument("subject_type", "required"))
                    }
                    subject_type => Ok(subject_type),
                },
            ),
            parse::id::<Uuid>("subject_id", &request.subject_id),
        )
            .all_ok()?;
        let mut tx = self.db.begin(&ctx).await?;
        let cleared = storage::clear_subject(&mut tx, subject_type, subject_id).await?;
        if cleared.is_empty() {
            tx.finish_read();
            return Ok(Response::new(ClearSubjectResponse::default()));
        }
        tx.audit_many(
            "action.clear_subject",
            "action",
            &cleared,
            serde_json::json!({
                "subject_type": subject_type.stored_name(),
                "subject_id": subject_id.to_string(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(ClearSubjectResponse {
            cleared_count: cleared.len() as i32,
        }))
    }
}

/// SUCCEEDED with an optional result, or FAILED with an error.
fn outcome(request: &CompleteActionRequest) -> ApiResult<storage::Outcome> {
    match parse::enum_value::<ActionState>("outcome", request.outcome)? {
        ActionState::Succeeded => {
            if !request.error.is_empty() {
                return Err(ApiError::invalid_argument(
                    "error",
                    "must be empty with SUCCEEDED",
                ));
            }
            let result = parse::json_object(
                "result",
                request.result.as_ref(),
                params::MAX_PARAMETERS_BYTES,
            )?;
            Ok(storage::Outcome::Succeeded { result })
        }
        ActionState::Failed => Ok(storage::Outcome::Failed {
            error: parse::name("error", &request.error, MAX_ERROR)?,
        }),
        _ => Err(ApiError::invalid_argument(
            "outcome",
            "must be SUCCEEDED or FAILED",
        )),
    }
}
