//! `CreditService`: each method takes the tenant context, checks the role,
//! settles the tenant it acts for, parses the request (bad input stops here
//! with the field named), and calls [`accounts`], [`ledger`] or [`holds`].
//!
//! Who may call what: reads (GetAccount, GetHold, ListLedger) viewer;
//! Consume, Reserve, Capture, Release member (Consume also [`CHARGING_ROLE`]); TopUp platform admin or
//! [`PAYMENTS_ROLE`]; CreateAccount, Refund, Adjust and Reconcile platform admin. A
//! platform admin acts on any tenant by naming it.

use mosaic_api::{AllOk, ApiResult, parse};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::billing::{
    Account, AdjustRequest, CaptureRequest, ConsumeRequest, CreateAccountRequest,
    GetAccountRequest, GetHoldRequest, Hold, LedgerEntry, ListLedgerRequest, ListLedgerResponse,
    ReconcileRequest, ReconcileResponse, RefundRequest, ReleaseRequest, ReserveRequest,
    TopUpRequest, credit_service_server::CreditService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

use crate::accounts;
use crate::holds::{self, NewCapture, NewHold};
use crate::ids::{EntryId, HoldId};
use crate::input::{self, scope, scope_for_service};
use crate::ledger::{self, Movement, NewAdjustment, NewRefund};

/// The service role of the payment integration, which may top up any tenant.
pub const PAYMENTS_ROLE: &str = "svc:payments";
/// The service role of a service that charges usage (conversations charging
/// AI usage), which may consume the credits of any tenant it names.
pub const CHARGING_ROLE: &str = "svc:charging";

#[derive(Debug)]
pub struct Credits {
    db: Database,
}

impl Credits {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

/// Parses `Movement`'s three fields.
fn movement(amount: i64, key: &str, reference: &str) -> ApiResult<Movement> {
    let (amount, key, reference) = (
        input::amount("amount", amount),
        input::key("idempotency_key", key),
        input::reference("reference", reference),
    )
        .all_ok()?;
    Ok(Movement {
        amount,
        key,
        reference,
    })
}

/// `expire_after`: 1 s ..= 7 days; unset is the default.
fn expire_after(raw: Option<&prost_types::Duration>) -> ApiResult<chrono::Duration> {
    let Some(raw) = raw else {
        return Ok(holds::DEFAULT_EXPIRE_AFTER);
    };
    let bad =
        || mosaic_api::ApiError::invalid_argument("expire_after", "must be between 1 s and 7 days");
    if !(0..1_000_000_000).contains(&raw.nanos) {
        return Err(bad());
    }
    let after = chrono::Duration::try_seconds(raw.seconds)
        .and_then(|s| s.checked_add(&chrono::Duration::nanoseconds(i64::from(raw.nanos))))
        .ok_or_else(bad)?;
    if after < holds::MIN_EXPIRE_AFTER || after > holds::MAX_EXPIRE_AFTER {
        return Err(bad());
    }
    Ok(after)
}

#[tonic::async_trait]
impl CreditService for Credits {
    async fn create_account(
        &self,
        req: Request<CreateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_platform_admin()?;
        parse::id::<mosaic_core::TenantId>("tenant_id", &req.get_ref().tenant_id)?;
        let ctx = scope(&ctx, &req.get_ref().tenant_id)?;
        Ok(Response::new(accounts::create(&self.db, &ctx).await?))
    }

    async fn get_account(
        &self,
        req: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let ctx = scope(&ctx, &req.get_ref().tenant_id)?;
        Ok(Response::new(accounts::get(&self.db, &ctx).await?))
    }

    async fn top_up(&self, req: Request<TopUpRequest>) -> Result<Response<LedgerEntry>, Status> {
        let ctx = TenantContext::of(&req)?;
        if !ctx.has_service_role(PAYMENTS_ROLE) {
            ctx.require_platform_admin()?;
        }
        let request = req.get_ref();
        let ctx = scope_for_service(&ctx, &request.tenant_id, PAYMENTS_ROLE)?;
        let top_up = movement(request.amount, &request.idempotency_key, &request.reference)?;
        let entry = ledger::top_up(&self.db, &ctx, &top_up).await?;
        Ok(Response::new(entry.into_proto()))
    }

    async fn consume(&self, req: Request<ConsumeRequest>) -> Result<Response<LedgerEntry>, Status> {
        let ctx = TenantContext::of(&req)?;
        if !ctx.has_service_role(CHARGING_ROLE) {
            ctx.require(Role::Member)?;
        }
        let request = req.get_ref();
        let ctx = scope_for_service(&ctx, &request.tenant_id, CHARGING_ROLE)?;
        let consume = movement(request.amount, &request.idempotency_key, &request.reference)?;
        let entry = ledger::consume(&self.db, &ctx, &consume).await?;
        Ok(Response::new(entry.into_proto()))
    }

    async fn reserve(&self, req: Request<ReserveRequest>) -> Result<Response<Hold>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let ctx = scope(&ctx, &request.tenant_id)?;
        let (movement, expire_after) = (
            movement(request.amount, &request.idempotency_key, &request.reference),
            expire_after(request.expire_after.as_ref()),
        )
            .all_ok()?;
        let hold = NewHold {
            amount: movement.amount,
            key: movement.key,
            reference: movement.reference,
            expire_after,
        };
        let row = holds::reserve(&self.db, &ctx, &hold).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn capture(&self, req: Request<CaptureRequest>) -> Result<Response<LedgerEntry>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let ctx = scope(&ctx, &request.tenant_id)?;
        let (hold_id, amount, key) = (
            parse::id::<HoldId>("hold_id", &request.hold_id),
            input::amount("amount", request.amount),
            input::key("idempotency_key", &request.idempotency_key),
        )
            .all_ok()?;
        let capture = NewCapture {
            hold_id,
            amount,
            key,
        };
        let entry = holds::capture(&self.db, &ctx, &capture).await?;
        Ok(Response::new(entry.into_proto()))
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<LedgerEntry>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let ctx = scope(&ctx, &request.tenant_id)?;
        let hold_id = parse::id::<HoldId>("hold_id", &request.hold_id)?;
        let entry = holds::release(&self.db, &ctx, hold_id, false).await?;
        Ok(Response::new(entry.into_proto()))
    }

    async fn get_hold(&self, req: Request<GetHoldRequest>) -> Result<Response<Hold>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let ctx = scope(&ctx, &request.tenant_id)?;
        let hold_id = parse::id::<HoldId>("hold_id", &request.hold_id)?;
        let row = holds::get(&self.db, &ctx, hold_id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn refund(&self, req: Request<RefundRequest>) -> Result<Response<LedgerEntry>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_platform_admin()?;
        let request = req.get_ref();
        let ctx = scope(&ctx, &request.tenant_id)?;
        let (entry_id, movement) = (
            parse::id::<EntryId>("entry_id", &request.entry_id),
            movement(request.amount, &request.idempotency_key, &request.reference),
        )
            .all_ok()?;
        let refund = NewRefund {
            entry_id,
            amount: movement.amount,
            key: movement.key,
            reference: movement.reference,
        };
        let entry = ledger::refund(&self.db, &ctx, &refund).await?;
        Ok(Response::new(entry.into_proto()))
    }

    async fn adjust(&self, req: Request<AdjustRequest>) -> Result<Response<LedgerEntry>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_platform_admin()?;
        let request = req.get_ref();
        let ctx = scope(&ctx, &request.tenant_id)?;
        let (amount, key, reference) = (
            input::signed_amount("amount", request.amount),
            input::key("idempotency_key", &request.idempotency_key),
            parse::name("reference", &request.reference, input::MAX_REFERENCE_CHARS),
        )
            .all_ok()?;
        let adjustment = NewAdjustment {
            amount,
            key,
            reference,
        };
        let entry = ledger::adjust(&self.db, &ctx, &adjustment).await?;
        Ok(Response::new(entry.into_proto()))
    }

    async fn list_ledger(
        &self,
        req: Request<ListLedgerRequest>,
    ) -> Result<Response<ListLedgerResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let ctx = scope(&ctx, &request.tenant_id)?;
        Ok(Response::new(ledger::list(&self.db, &ctx, request).await?))
    }

    async fn reconcile(
        &self,
        req: Request<ReconcileRequest>,
    ) -> Result<Response<ReconcileResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require_platform_admin()?;
        let request = req.get_ref();
        let reply = if request.tenant_id.is_empty() {
            accounts::reconcile(&self.db, &ctx, false).await?
        } else {
            let ctx = scope(&ctx, &request.tenant_id)?;
            accounts::reconcile(&self.db, &ctx, true).await?
        };
        Ok(Response::new(reply))
    }
}
