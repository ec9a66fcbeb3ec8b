//! Two-phase holds, after TigerBeetle's pending transfers: Reserve makes a
//! pending hold (credits leave the available amount, not the balance);
//! Capture posts part or all of it and releases the rest, in one entry;
//! Release voids it; the sweeper expires it. A hold resolves once.

use chrono::{DateTime, Utc};
use mosaic_api::{ApiError, ApiResult};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::billing::{EntryKind, HoldStatus};

use crate::accounts;
use crate::ids::HoldId;
use crate::ledger::storage::{self as ledger, Applied, Change, EntryRow};
use crate::ledger::{insufficient, replay};
use storage::HoldRow;

pub mod storage;

/// A hold a request names.
pub const HOLD: mosaic_api::rules::Kind = mosaic_api::rules::Kind {
    name: "hold",
    not_found: "HOLD_NOT_FOUND",
    deleted: "HOLD_DELETED",
};

/// Shortest and longest `expire_after`, and its default.
pub const MIN_EXPIRE_AFTER: chrono::Duration = chrono::Duration::seconds(1);
pub const MAX_EXPIRE_AFTER: chrono::Duration = chrono::Duration::days(7);
pub const DEFAULT_EXPIRE_AFTER: chrono::Duration = chrono::Duration::minutes(15);

/// A checked Reserve.
#[derive(Debug)]
pub struct NewHold {
    pub amount: i64,
    pub key: String,
    pub reference: String,
    pub expire_after: chrono::Duration,
}

/// Reserves `hold.amount` of `ctx`'s tenant's available credits.
pub async fn reserve(db: &Database, ctx: &TenantContext, hold: &NewHold) -> ApiResult<HoldRow> {
    let hold_id = HoldId::new();
    let change = Change {
        kind: EntryKind::Hold,
        amount: 0,
        held_change: hold.amount,
        key: Some(&hold.key),
        reference: &hold.reference,
        hold_id: Some(hold_id),
        refund_of: None,
        action: "hold.reserve",
        resource_type: "hold",
        resource_id: Some(hold_id.to_string()),
    };
    let mut tx = db.begin(ctx).await?;
    match ledger::apply(&mut tx, &change).await? {
        Applied::Done(entry) => {
            let expires_at: DateTime<Utc> = entry.created_at + hold.expire_after;
            let row = storage::insert(
                &mut tx,
                hold_id,
                hold.amount,
                &hold.key,
                &hold.reference,
                expires_at,
            )
            .await?;
            tx.commit().await?;
            Ok(row)
        }
        Applied::KeyTaken => {
            drop(tx);
            replayed_hold(db, ctx, change).await
        }
        Applied::Refused => {
            let used = ledger::by_key(&mut tx, &hold.key).await?;
            let account = accounts::storage::get_in(&mut tx).await?;
            tx.finish_read();
            match (used, account) {
                (Some(_), _) => replayed_hold(db, ctx, change).await,
                (None, None) => Err(accounts::ACCOUNT.not_found()),
                (None, Some(account)) => Err(insufficient(account.available(), hold.amount)),
            }
        }
    }
}

/// The hold a used Reserve key made, if the key was used by the same request.
async fn replayed_hold(
    db: &Database,
    ctx: &TenantContext,
    mut change: Change<'_>,
) -> ApiResult<HoldRow> {
    let mut tx = db.begin(ctx).await?;
    let key = change.key.unwrap_or_default();
    let entry = ledger::by_key(&mut tx, key).await?;
    let Some(entry) = entry else {
        return Err(ApiError::internal("a used key has no entry"));
    };
    // The first call made the hold id; everything else must match.
    change.hold_id = entry.hold_id;
    ledger::same_request(&entry, &change)?;
    let hold = match entry.hold_id {
        Some(hold) => storage::get_in(&mut tx, hold).await?,
        None => None,
    };
    tx.finish_read();
    hold.ok_or_else(|| ApiError::internal("a hold entry without its hold"))
}

/// A checked Capture.
#[derive(Debug)]
pub struct NewCapture {
    pub hold_id: HoldId,
    pub amount: i64,
    pub key: String,
}

/// Posts `capture.amount` of a pending hold and releases the rest.
pub async fn capture(
    db: &Database,
    ctx: &TenantContext,
    capture: &NewCapture,
) -> ApiResult<EntryRow> {
    let mut tx = db.begin(ctx).await?;
    let Some(hold) = storage::capture(&mut tx, capture.hold_id, capture.amount).await? else {
        // Not capturable now: a retry of a capture that happened, or why not.
        let used = ledger::by_key(&mut tx, &capture.key).await?;
        let hold = storage::get_in(&mut tx, capture.hold_id).await?;
        tx.finish_read();
        let hold = hold.ok_or_else(|| HOLD.not_found_at("hold_id"))?;
        if let Some(entry) = used {
            let change = capture_change(capture, &hold);
            ledger::same_request(&entry, &change)?;
            return Ok(entry);
        }
        return Err(not_capturable(&hold, capture.amount));
    };
    let change = capture_change(capture, &hold);
    match ledger::apply(&mut tx, &change).await? {
        Applied::Done(entry) => {
            tx.commit().await?;
            Ok(*entry)
        }
        // The key was used by another request (or is being used right now).
        Applied::KeyTaken | Applied::Refused => {
            drop(tx);
            replay(db, ctx, &change).await
        }
    }
}

fn capture_change<'a>(capture: &'a NewCapture, hold: &'a HoldRow) -> Change<'a> {
    Change {
        kind: EntryKind::Capture,
        amount: -capture.amount,
        held_change: -hold.amount,
        key: Some(&capture.key),
        reference: &hold.reference,
        hold_id: Some(capture.hold_id),
        refund_of: None,
        action: "hold.capture",
        resource_type: "hold",
        resource_id: Some(capture.hold_id.to_string()),
    }
}

/// Why `hold` cannot be captured for `amount`.
fn not_capturable(hold: &HoldRow, amount: i64) -> ApiError {
    match hold.status() {
        HoldStatus::Captured => resolved("HOLD_CAPTURED", "captured"),
        HoldStatus::Released => resolved("HOLD_RELEASED", "released"),
        HoldStatus::Expired => resolved("HOLD_EXPIRED", "expired"),
        _ if hold.expires_at <= Utc::now() => resolved("HOLD_EXPIRED", "expired"),
        _ if amount > hold.amount => {
            ApiError::invalid_argument("amount", format!("at most the hold's {}", hold.amount))
        }
        _ => ApiError::aborted("CONCURRENT_UPDATE", "the hold changed meanwhile; retry"),
    }
}

fn resolved(reason: &str, how: &str) -> ApiError {
    ApiError::failed_precondition(reason, format!("the hold was {how} already"))
}

/// Releases a pending hold. `expired`: the sweeper's release of a hold past
/// its expire_time (status `expired`). Releasing a released or expired hold
/// again returns the entry that released it.
pub async fn release(
    db: &Database,
    ctx: &TenantContext,
    hold_id: HoldId,
    expired: bool,
) -> ApiResult<EntryRow> {
    let mut tx = db.begin(ctx).await?;
    let Some(hold) = storage::release(&mut tx, hold_id, expired).await? else {
        let hold = storage::get_in(&mut tx, hold_id).await?;
        let hold = hold.ok_or_else(|| HOLD.not_found_at("hold_id"))?;
        let result = match hold.status() {
            HoldStatus::Released | HoldStatus::Expired => storage::release_entry(&mut tx, hold_id)
                .await?
                .ok_or_else(|| ApiError::internal("a released hold without its entry")),
            HoldStatus::Captured => Err(resolved("HOLD_CAPTURED", "captured")),
            _ => Err(ApiError::failed_precondition(
                "HOLD_PENDING",
                "the hold has not expired yet",
            )),
        };
        tx.finish_read();
        return result;
    };
    let change = Change {
        kind: EntryKind::Release,
        amount: 0,
        held_change: -hold.amount,
        key: None,
        reference: &hold.reference,
        hold_id: Some(hold_id),
        refund_of: None,
        action: if expired {
            "hold.expire"
        } else {
            "hold.release"
        },
        resource_type: "hold",
        resource_id: Some(hold_id.to_string()),
    };
    match ledger::apply(&mut tx, &change).await? {
        Applied::Done(entry) => {
            tx.commit().await?;
            Ok(*entry)
        }
        _ => Err(ApiError::internal("a release was refused by its account")),
    }
}

/// One hold of `ctx`'s tenant.
pub async fn get(db: &Database, ctx: &TenantContext, hold: HoldId) -> ApiResult<HoldRow> {
    let rows: Vec<HoldRow> = db.read(ctx, storage::get(hold)).await?;
    rows.into_iter()
        .next()
        .ok_or_else(|| HOLD.not_found_at("hold_id"))
}
