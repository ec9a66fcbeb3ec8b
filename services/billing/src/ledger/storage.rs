//! SQL of the ledger. Every statement names `tenant_id = $1` (RLS is the
//! backstop). [`apply`] is the one statement that changes an account.

use chrono::{DateTime, Utc};
use mosaic_api::{ApiError, ApiResult, convert};
use mosaic_core::TenantId;
use mosaic_db::error::sqlstate::UNIQUE_VIOLATION;
use mosaic_db::{Constraint, Database, Select, TenantContext, TenantTx, db_error_with};
use mosaic_proto::StoredEnum;
use mosaic_proto::billing::{EntryKind, LedgerEntry};
use uuid::Uuid;

use crate::ids::{EntryId, HoldId};

/// The columns of an entry, as [`EntryRow`] reads them.
pub(crate) const ENTRY_COLUMNS: &str = "tenant_id, seq, entry_id, kind, amount, held_change, \
     balance_after, held_after, idempotency_key, reference, hold_id, refund_of, actor, \
     request_id, created_at";

/// The unique index that gives an idempotency key one effect.
pub(crate) const KEY_INDEX: &str = "ledger_entries_key";

/// `accounts_balance_max`: a top-up or refund that would take the balance past 10^18.
const CONSTRAINTS: &[Constraint] = &[Constraint {
    name: "accounts_balance_max",
    field: "amount",
    reason: "BALANCE_LIMIT",
}];

/// One ledger entry as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntryRow {
    pub tenant_id: TenantId,
    pub seq: i64,
    pub entry_id: EntryId,
    pub kind: String,
    pub amount: i64,
    pub held_change: i64,
    pub balance_after: i64,
    pub held_after: i64,
    pub idempotency_key: Option<String>,
    pub reference: String,
    pub hold_id: Option<HoldId>,
    pub refund_of: Option<EntryId>,
    pub actor: String,
    pub request_id: String,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub created_at: DateTime<Utc>,
}

impl EntryRow {
    pub fn kind(&self) -> EntryKind {
        EntryKind::from_stored(&self.kind).unwrap_or(EntryKind::Unspecified)
    }

    pub fn into_proto(self) -> LedgerEntry {
        LedgerEntry {
            kind: self.kind() as i32,
            entry_id: self.entry_id.to_string(),
            seq: self.seq,
            amount: self.amount,
            held_change: self.held_change,
            balance_after: self.balance_after,
            held_after: self.held_after,
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            reference: self.reference,
            hold_id: self.hold_id.map(|h| h.to_string()).unwrap_or_default(),
            refund_of: self.refund_of.map(|e| e.to_string()).unwrap_or_default(),
            actor: self.actor,
            request_id: self.request_id,
            create_time: Some(convert::timestamp(self.created_at)),
            tenant_id: self.tenant_id.to_string(),
        }
    }
}

/// One change of an account and the entry that records it.
#[derive(Debug, Clone)]
pub(crate) struct Change<'a> {
    pub(crate) kind: EntryKind,
    /// Signed change of the balance.
    pub(crate) amount: i64,
    /// Signed change of the held amount.
    pub(crate) held_change: i64,
    pub(crate) key: Option<&'a str>,
    pub(crate) reference: &'a str,
    pub(crate) hold_id: Option<HoldId>,
    pub(crate) refund_of: Option<EntryId>,
    /// The audit event: action (`ledger.consume`), resource type and id.
    pub(crate) action: &'a str,
    pub(crate) resource_type: &'a str,
    /// `None`: the new entry's id.
    pub(crate) resource_id: Option<String>,
}

/// What [`apply`] did.
#[derive(Debug)]
pub(crate) enum Applied {
    /// The account changed; the entry recording it.
    Done(Box<EntryRow>),
    /// Nothing changed: no account, too few credits available, or the key
    /// was used by a committed entry (the caller finds out which).
    Refused,
    /// The key was taken by a transaction that committed while this one
    /// ran. This transaction is aborted; the caller reads the key's entry in
    /// a new one.
    KeyTaken,
}

/// The statement every change of an account is: a conditional UPDATE of the
/// account (available stays >= 0; the key was never used), the ledger entry
/// from its RETURNING (balance and held after it, and the next seq), and the
/// audit event from the entry's. Nothing is written unless all three are.
/// It returns only what it computed of the entry ([`Written`]); the rest of
/// the entry is what it was given.
/// `$tenant` is the caller's tenant. Consume and Adjust send it alone in one
/// round trip ([`apply_alone`]); the other changes run it as one step of a
/// transaction ([`apply`]). `tests/bench/billing.sh` runs this text under pgbench.
pub const APPLY_SQL: &str = "WITH changed AS ( \
         UPDATE accounts SET balance = balance + $3, held = held + $4, entries = entries + 1, \
                updated_at = now() \
         WHERE tenant_id = $tenant AND balance + $3 - (held + $4) >= 0 \
           AND ($5::text IS NULL OR NOT EXISTS ( \
                SELECT 1 FROM ledger_entries WHERE tenant_id = $tenant AND idempotency_key = $5)) \
         RETURNING balance, held, entries \
     ), entry AS ( \
         INSERT INTO ledger_entries (tenant_id, seq, entry_id, kind, amount, held_change, \
                balance_after, held_after, idempotency_key, reference, hold_id, refund_of, actor, \
                request_id) \
         SELECT $tenant, entries, $1, $2, $3, $4, balance, held, $5, $6, $7, $8, $9, $10 FROM changed \
         RETURNING seq, entry_id, kind, amount, held_change, balance_after, held_after, \
                reference, created_at \
     ), audit AS ( \
         INSERT INTO audit_events (tenant_id, event_id, actor, action, resource_type, resource_id, \
                request_id, details) \
         SELECT $tenant, $11, $9, $12, $13, $14, $10, jsonb_build_object('entry_id', entry_id, \
                'seq', seq, 'kind', kind, 'amount', amount, 'held_change', held_change, \
                'balance_after', balance_after, 'held_after', held_after, 'reference', reference) \
         FROM entry \
     ) \
     SELECT seq, balance_after, held_after, created_at FROM entry";

/// What [`APPLY_SQL`] computes of the entry it writes.
#[derive(Debug, sqlx::FromRow)]
struct Written {
    seq: i64,
    balance_after: i64,
    held_after: i64,
    #[sqlx(try_from = "mosaic_db::Time")]
    created_at: DateTime<Utc>,
}

/// [`APPLY_SQL`] for `change` as a new entry `entry_id`, made by `ctx`'s
/// principal in its request.
fn apply_statement(ctx: &TenantContext, change: &Change<'_>, entry_id: EntryId) -> Select {
    let resource_id = change
        .resource_id
        .clone()
        .unwrap_or_else(|| entry_id.to_string());
    let mut statement = Select::constant(APPLY_SQL);
    statement
        .bind(entry_id.uuid())
        .bind(change.kind.stored_name())
        .bind(change.amount)
        .bind(change.held_change)
        .bind(change.key)
        .bind(change.reference)
        .bind(change.hold_id.map(HoldId::uuid))
        .bind(change.refund_of.map(EntryId::uuid))
        .bind(ctx.principal())
        .bind(ctx.request_id())
        .bind(Uuid::now_v7())
        .bind(change.action)
        .bind(change.resource_type)
        .bind(resource_id);
    statement
}

/// What the statement's answer means; a written entry is `change` as bound
/// plus what the statement computed.
fn applied(
    ctx: &TenantContext,
    tenant_id: TenantId,
    change: &Change<'_>,
    entry_id: EntryId,
    rows: Result<Vec<Written>, sqlx::Error>,
) -> ApiResult<Applied> {
    let written = match rows {
        Ok(rows) => rows.into_iter().next(),
        Err(e) if is_key_taken(&e) => return Ok(Applied::KeyTaken),
        Err(e) => return Err(db_error_with(e, CONSTRAINTS)),
    };
    let Some(written) = written else {
        return Ok(Applied::Refused);
    };
    Ok(Applied::Done(Box::new(EntryRow {
        tenant_id,
        seq: written.seq,
        entry_id,
        kind: change.kind.stored_name().to_owned(),
        amount: change.amount,
        held_change: change.held_change,
        balance_after: written.balance_after,
        held_after: written.held_after,
        idempotency_key: change.key.map(str::to_owned),
        reference: change.reference.to_owned(),
        hold_id: change.hold_id,
        refund_of: change.refund_of,
        actor: ctx.principal().to_owned(),
        request_id: ctx.request_id().to_owned(),
        created_at: written.created_at,
    })))
}

/// Runs [`APPLY_SQL`] for `change` as one step of `tx`.
#[tracing::instrument(level = "debug", skip_all, fields(kind = change.kind.stored_name()))]
pub(crate) async fn apply(tx: &mut TenantTx, change: &Change<'_>) -> ApiResult<Applied> {
    let entry_id = EntryId::new();
    let statement = apply_statement(tx.ctx(), change, entry_id);
    let rows = tx.fetch_all(&statement).await;
    applied(tx.ctx(), tx.tenant_id(), change, entry_id, rows)
}

/// Runs [`APPLY_SQL`] for `change` on its own, committed in one round trip
/// ([`Database::write`]). `KeyTaken` has no transaction to abort here; the
/// caller reads the key's entry as it would after [`apply`].
#[tracing::instrument(level = "debug", skip_all, fields(kind = change.kind.stored_name()))]
pub(crate) async fn apply_alone(
    db: &Database,
    ctx: &TenantContext,
    change: &Change<'_>,
) -> ApiResult<Applied> {
    let entry_id = EntryId::new();
    let rows = db
        .write(ctx, apply_statement(ctx, change, entry_id))
        .await?;
    applied(ctx, ctx.tenant_id()?, change, entry_id, rows)
}

/// A unique violation of [`KEY_INDEX`].
pub(crate) fn is_key_taken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some(UNIQUE_VIOLATION) && db.constraint() == Some(KEY_INDEX))
}

/// The entry that used `key`, if any.
pub(crate) async fn by_key(tx: &mut TenantTx, key: &str) -> ApiResult<Option<EntryRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE tenant_id = $1 AND idempotency_key = $2"
    ))
    .bind(tenant)
    .bind(key)
    .fetch_optional(tx.conn())
    .await
    .map_err(mosaic_db::db_error)
}

/// One entry by id.
pub(crate) async fn by_id(tx: &mut TenantTx, entry: EntryId) -> ApiResult<Option<EntryRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE tenant_id = $1 AND entry_id = $2"
    ))
    .bind(tenant)
    .bind(entry)
    .fetch_optional(tx.conn())
    .await
    .map_err(mosaic_db::db_error)
}

/// What was refunded of the charge `entry` so far.
pub(crate) async fn refunded(tx: &mut TenantTx, entry: EntryId) -> ApiResult<i64> {
    let tenant = tx.tenant_id();
    sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0)::int8 FROM ledger_entries \
         WHERE tenant_id = $1 AND refund_of = $2",
    )
    .bind(tenant)
    .bind(entry)
    .fetch_one(tx.conn())
    .await
    .map_err(mosaic_db::db_error)
}

/// The checked filters of ListLedger.
#[derive(Debug)]
pub(crate) struct LedgerFilter {
    pub(crate) kind: Option<EntryKind>,
    pub(crate) start: Option<DateTime<Utc>>,
    pub(crate) end: Option<DateTime<Utc>>,
}

/// One page newest first (by seq), `limit + 1` rows.
pub(crate) fn list_page(filter: &LedgerFilter, before: Option<i64>, limit: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE tenant_id = $tenant"
    ));
    if let Some(kind) = filter.kind {
        sql.push(" AND kind = ").push_bind(kind.stored_name());
    }
    if let Some(start) = filter.start {
        sql.push(" AND created_at >= ").push_bind(start);
    }
    if let Some(end) = filter.end {
        sql.push(" AND created_at < ").push_bind(end);
    }
    if let Some(before) = before {
        sql.push(" AND seq < ").push_bind(before);
    }
    sql.push(" ORDER BY seq DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    sql
}

/// Whether a replayed entry answers the same request: same kind, amount,
/// reference, hold and refunded charge.
pub(crate) fn same_request(entry: &EntryRow, change: &Change<'_>) -> ApiResult<()> {
    let same = entry.kind() == change.kind
        && entry.amount == change.amount
        && (entry.kind() == EntryKind::Capture || entry.held_change == change.held_change)
        && entry.reference == change.reference
        && entry.hold_id == change.hold_id
        && entry.refund_of == change.refund_of;
    if same {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(
            "idempotency_key",
            "already used for a different request",
        ))
    }
}
