//! The ledger's methods: TopUp, Consume, Refund and ListLedger. Each change
//! of an account is one [`storage::apply`] statement; a key that was used
//! before returns the entry it made ([`replay`]).

use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, ApiResult, parse};
use mosaic_db::{Database, TenantContext, TenantTx};
use mosaic_proto::billing::{EntryKind, ListLedgerRequest, ListLedgerResponse};

use crate::accounts;
use crate::ids::EntryId;
use storage::{Applied, Change, EntryRow};

pub mod storage;

/// The ledger entry a request names, when it is not there.
pub const ENTRY: mosaic_api::rules::Kind = mosaic_api::rules::Kind {
    name: "ledger entry",
    not_found: "ENTRY_NOT_FOUND",
    deleted: "ENTRY_DELETED",
};

/// A checked TopUp or Consume.
#[derive(Debug)]
pub struct Movement {
    pub amount: i64,
    pub key: String,
    pub reference: String,
}

/// Credits `ctx`'s tenant, opening its account on the first top-up.
pub async fn top_up(db: &Database, ctx: &TenantContext, top_up: &Movement) -> ApiResult<EntryRow> {
    let change = Change {
        kind: EntryKind::TopUp,
        amount: top_up.amount,
        held_change: 0,
        key: Some(&top_up.key),
        reference: &top_up.reference,
        hold_id: None,
        refund_of: None,
        action: "ledger.top_up",
        resource_type: "ledger_entry",
        resource_id: None,
    };
    let mut tx = db.begin(ctx).await?;
    accounts::storage::open(&mut tx).await?;
    finish(db, ctx, tx, change).await
}

/// Debits `ctx`'s tenant in one conditional statement.
pub async fn consume(
    db: &Database,
    ctx: &TenantContext,
    consume: &Movement,
) -> ApiResult<EntryRow> {
    let change = Change {
        kind: EntryKind::Consumption,
        amount: -consume.amount,
        held_change: 0,
        key: Some(&consume.key),
        reference: &consume.reference,
        hold_id: None,
        refund_of: None,
        action: "ledger.consume",
        resource_type: "ledger_entry",
        resource_id: None,
    };
    finish_alone(db, ctx, change).await
}

/// A checked Refund.
#[derive(Debug)]
pub struct NewRefund {
    pub entry_id: EntryId,
    pub amount: i64,
    pub key: String,
    pub reference: String,
}

/// Gives back `refund.amount` of a consumption or capture: at most what it
/// charged minus what was refunded of it. The account's row is locked first,
/// so concurrent refunds of one charge take turns and each sees the others.
pub async fn refund(db: &Database, ctx: &TenantContext, refund: &NewRefund) -> ApiResult<EntryRow> {
    let change = Change {
        kind: EntryKind::Refund,
        amount: refund.amount,
        held_change: 0,
        key: Some(&refund.key),
        reference: &refund.reference,
        hold_id: None,
        refund_of: Some(refund.entry_id),
        action: "ledger.refund",
        resource_type: "ledger_entry",
        resource_id: None,
    };
    let mut tx = db.begin(ctx).await?;
    if !accounts::storage::lock(&mut tx).await? {
        return Err(accounts::ACCOUNT.not_found());
    }
    if let Some(entry) = storage::by_key(&mut tx, &refund.key).await? {
        storage::same_request(&entry, &change)?;
        return Ok(entry);
    }
    let charge = storage::by_id(&mut tx, refund.entry_id)
        .await?
        .ok_or_else(|| ENTRY.not_found_at("entry_id"))?;
    if !matches!(charge.kind(), EntryKind::Consumption | EntryKind::Capture) {
        return Err(ApiError::failed_precondition(
            "ENTRY_NOT_REFUNDABLE",
            "only a consumption or a capture can be refunded",
        ));
    }
    let refundable = -charge.amount - storage::refunded(&mut tx, refund.entry_id).await?;
    if refund.amount > refundable {
        return Err(ApiError::failed_precondition(
            "REFUND_EXCEEDS_CHARGE",
            format!("at most {refundable} of this charge is left to refund"),
        )
        .with_metadata("refundable", refundable)
        .with_metadata("requested", refund.amount));
    }
    finish(db, ctx, tx, change).await
}

/// A checked Adjust: a signed amount and its reason.
#[derive(Debug)]
pub struct NewAdjustment {
    pub amount: i64,
    pub key: String,
    pub reference: String,
}

/// Corrects the balance by a signed amount (never below what is held).
pub async fn adjust(
    db: &Database,
    ctx: &TenantContext,
    adjustment: &NewAdjustment,
) -> ApiResult<EntryRow> {
    let change = Change {
        kind: EntryKind::Adjustment,
        amount: adjustment.amount,
        held_change: 0,
        key: Some(&adjustment.key),
        reference: &adjustment.reference,
        hold_id: None,
        refund_of: None,
        action: "ledger.adjust",
        resource_type: "ledger_entry",
        resource_id: None,
    };
    finish_alone(db, ctx, change).await
}

/// Applies `change` in `tx` and commits; a refused change becomes the
/// replay of its key or the reason it was refused.
pub(crate) async fn finish(
    db: &Database,
    ctx: &TenantContext,
    mut tx: TenantTx,
    change: Change<'_>,
) -> ApiResult<EntryRow> {
    let applied = storage::apply(&mut tx, &change).await?;
    match applied {
        Applied::Done(entry) => {
            tx.commit().await?;
            Ok(*entry)
        }
        Applied::KeyTaken => {
            drop(tx);
            replay(db, ctx, &change).await
        }
        Applied::Refused => {
            if let Some(key) = change.key
                && let Some(entry) = storage::by_key(&mut tx, key).await?
            {
                tx.finish_read();
                storage::same_request(&entry, &change)?;
                return Ok(entry);
            }
            let account = accounts::storage::get_in(&mut tx).await?;
            tx.finish_read();
            Err(refusal(account, &change))
        }
    }
}

/// Applies `change` on its own, committed in the round trip that makes it
/// ([`storage::apply_alone`]); a refused change becomes the replay of its key
/// or the reason it was refused, read afterwards (at READ COMMITTED each read
/// of [`finish`]'s transaction sees what had committed when it ran, too).
pub(crate) async fn finish_alone(
    db: &Database,
    ctx: &TenantContext,
    change: Change<'_>,
) -> ApiResult<EntryRow> {
    match storage::apply_alone(db, ctx, &change).await? {
        Applied::Done(entry) => Ok(*entry),
        Applied::KeyTaken => replay(db, ctx, &change).await,
        Applied::Refused => {
            let mut tx = db.begin(ctx).await?;
            if let Some(key) = change.key
                && let Some(entry) = storage::by_key(&mut tx, key).await?
            {
                tx.finish_read();
                storage::same_request(&entry, &change)?;
                return Ok(entry);
            }
            let account = accounts::storage::get_in(&mut tx).await?;
            tx.finish_read();
            Err(refusal(account, &change))
        }
    }
}

/// Why a change that found nothing to change was refused: no account, or
/// too few credits available.
fn refusal(account: Option<accounts::storage::AccountRow>, change: &Change<'_>) -> ApiError {
    match account {
        None => accounts::ACCOUNT.not_found(),
        Some(account) => insufficient(
            account.available(),
            (-change.amount).max(0) + change.held_change.max(0),
        ),
    }
}

/// The entry a committed transaction made with `change`'s key, read in a new
/// transaction, if it answers the same request.
pub(crate) async fn replay(
    db: &Database,
    ctx: &TenantContext,
    change: &Change<'_>,
) -> ApiResult<EntryRow> {
    let key = change
        .key
        .ok_or_else(|| ApiError::internal("a keyless change lost a key race"))?;
    let mut tx = db.begin(ctx).await?;
    let entry = storage::by_key(&mut tx, key).await?;
    tx.finish_read();
    let entry = entry.ok_or_else(|| ApiError::internal("a taken key has no entry"))?;
    storage::same_request(&entry, change)?;
    Ok(entry)
}

/// FAILED_PRECONDITION `INSUFFICIENT_CREDITS`, with what is available.
pub fn insufficient(available: i64, requested: i64) -> ApiError {
    ApiError::failed_precondition(
        "INSUFFICIENT_CREDITS",
        format!("{available} credits available, {requested} asked for"),
    )
    .with_metadata("available", available)
    .with_metadata("requested", requested)
}

/// ListLedger: newest first, filtered by kind and time range.
pub async fn list(
    db: &Database,
    ctx: &TenantContext,
    request: &ListLedgerRequest,
) -> ApiResult<ListLedgerResponse> {
    let binding = PageBinding::new("ListLedger")
        .with(ctx.tenant_id()?)
        .with(request.kind)
        .with(format_args!("{:?}", request.start_time))
        .with(format_args!("{:?}", request.end_time));
    let (size, before, kind, start, end) = (
        parse::page_size("page_size", request.page_size),
        page::decode::<i64>(&binding, &request.page_token),
        parse::enum_or::<EntryKind>("kind", request.kind, EntryKind::Unspecified),
        parse::optional_time("start_time", request.start_time.as_ref()),
        parse::optional_time("end_time", request.end_time.as_ref()),
    )
        .all_ok()?;
    if let (Some(start), Some(end)) = (start, end)
        && end < start
    {
        return Err(ApiError::invalid_argument(
            "end_time",
            "must not be before start_time",
        ));
    }
    let filter = storage::LedgerFilter {
        kind: (kind != EntryKind::Unspecified).then_some(kind),
        start,
        end,
    };
    let rows: Vec<EntryRow> = db
        .read(ctx, storage::list_page(&filter, before, size))
        .await?;
    let (entries, next_page_token) = page::page(
        rows,
        size,
        &binding,
        |entry| entry.seq,
        EntryRow::into_proto,
    );
    Ok(ListLedgerResponse {
        entries,
        next_page_token,
    })
}
