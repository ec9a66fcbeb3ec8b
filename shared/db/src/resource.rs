//! The standard methods of a PostgreSQL resource, written once: creates made
//! idempotent by `request_id` ([`create_once`]), reads by id, the one update
//! idiom ([`Resource::update`]), soft delete and undelete with their audit
//! events, and the checks that turn "no row" into NOT_FOUND (never success)
//! and a changed revision into ABORTED. The rules themselves are
//! `mosaic_api::rules`; this module applies them to rows.
//!
//! Every statement here names `tenant_id = $1` itself, so the planner uses the
//! `(tenant_id, id)` primary key; RLS is the backstop, and another tenant's
//! row simply does not exist.
//!
//! A resource's table has the columns of [`RowMeta`] (`revision`,
//! `created_at`, `updated_at`, `deleted_at`; a table without soft delete
//! selects `NULL::timestamptz AS deleted_at`).

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use mosaic_api::rules::{self, Kind};
use mosaic_api::{ApiError, ApiResult, convert, etag};
use mosaic_tenant::TenantContext;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::{Constraint, db_error, db_error_with};
use crate::idempotency::{Claim, fingerprint};
use crate::pool::{Database, TenantTx};

/// A row type any [`Resource`] select list decodes into.
pub trait Row: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin {}
impl<T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin> Row for T {}

/// A resource's id type: a `define_id!` newtype (or a bare `Uuid`).
pub trait RowId:
    Copy + Eq + Hash + Display + From<Uuid> + Into<Uuid> + Send + Sync + 'static
{
}
impl<T: Copy + Eq + Hash + Display + From<Uuid> + Into<Uuid> + Send + Sync + 'static> RowId for T {}

/// The columns every resource row ends with: its revision (the etag) and
/// its times. Flatten it into a row type (`#[sqlx(flatten)] meta: RowMeta`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RowMeta {
    pub revision: i64,
    #[sqlx(try_from = "crate::Time")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "crate::Time")]
    pub updated_at: DateTime<Utc>,
    #[sqlx(try_from = "crate::OptTime")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl RowMeta {
    /// The select list of these columns over the alias `t`.
    pub const SELECT: &'static str = "t.revision, t.created_at, t.updated_at, t.deleted_at";

    pub fn etag(&self) -> String {
        etag::format(self.revision)
    }

    pub fn create_time(&self) -> Option<prost_types::Timestamp> {
        Some(convert::timestamp(self.created_at))
    }

    pub fn update_time(&self) -> Option<prost_types::Timestamp> {
        Some(convert::timestamp(self.updated_at))
    }

    pub fn delete_time(&self) -> Option<prost_types::Timestamp> {
        convert::opt_timestamp(self.deleted_at)
    }

    /// `delete_time + RETENTION` while soft-deleted.
    pub fn expire_time(&self) -> Option<prost_types::Timestamp> {
        rules::expire_time(self.deleted_at)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

/// A row that carries its [`RowMeta`].
pub trait HasMeta {
    fn meta(&self) -> &RowMeta;
}

/// A soft-deletable table and how its errors read.
#[derive(Debug)]
pub struct Resource<Id> {
    pub kind: Kind,
    pub table: &'static str,
    pub id_column: &'static str,
    /// The select list, written against the alias `t`.
    pub select: &'static str,
    /// Unique constraints an insert, update or undelete can hit.
    pub constraints: &'static [Constraint],
    pub id: PhantomData<fn() -> Id>,
}

impl<Id: RowId> Resource<Id> {
    pub fn not_found(&self) -> ApiError {
        self.kind.not_found()
    }

    /// NOT_FOUND naming the request field that referred to the row.
    pub fn not_found_at(&self, field: &str) -> ApiError {
        self.kind.not_found_at(field)
    }

    /// The row, also while soft-deleted; NOT_FOUND when absent (or another
    /// tenant's). Read in one round trip outside any transaction of the
    /// caller's (Get methods: see `Database::read`).
    pub async fn read<R: Row>(&self, db: &Database, ctx: &TenantContext, id: Id) -> ApiResult<R> {
        let Resource {
            table,
            id_column,
            select,
            ..
        } = self;
        let sql = format!(
            "SELECT {select} FROM {table} t WHERE t.tenant_id = $tenant AND t.{id_column} = $1"
        );
        db.read_by_ids(ctx, &sql, &[id.into()])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| self.not_found())
    }

    /// The row, locked until the transaction ends, for read-merge-write updates.
    pub async fn get_for_update<R: Row>(&self, tx: &mut TenantTx, id: Id) -> ApiResult<R> {
        self.fetch(tx, id, " FOR UPDATE").await
    }

    async fn fetch<R: Row>(&self, tx: &mut TenantTx, id: Id, lock: &str) -> ApiResult<R> {
        let Resource {
            table,
            id_column,
            select,
            ..
        } = self;
        let tenant = tx.tenant_id();
        sqlx::query_as(&format!(
            "SELECT {select} FROM {table} t WHERE t.tenant_id = $1 AND t.{id_column} = $2{lock}"
        ))
        .bind(tenant)
        .bind(id.into())
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)?
        .ok_or_else(|| self.not_found())
    }

    /// NOT_FOUND (naming `field`) unless `id` is a live row of the tenant.
    pub async fn require_live(&self, tx: &mut TenantTx, id: Id, field: &str) -> ApiResult<()> {
        if self.live_ids(tx, &[id]).await?.contains(&id) {
            Ok(())
        } else {
            Err(self.not_found_at(field))
        }
    }

    /// Like [`Resource::require_live`], and keeps the row from being
    /// soft-deleted until this transaction ends (`FOR SHARE`). For references
    /// that a delete cleans up: without the lock, a link written while the
    /// delete runs could survive it. A delete that committed first makes
    /// the re-checked row fail `deleted_at IS NULL`: NOT_FOUND.
    pub async fn require_live_shared(
        &self,
        tx: &mut TenantTx,
        id: Id,
        field: &str,
    ) -> ApiResult<()> {
        let Resource {
            table, id_column, ..
        } = self;
        let tenant = tx.tenant_id();
        let found: Option<Uuid> = sqlx::query_scalar(&format!(
            "SELECT {id_column} FROM {table} \
             WHERE tenant_id = $1 AND {id_column} = $2 AND deleted_at IS NULL FOR SHARE"
        ))
        .bind(tenant)
        .bind(id.into())
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)?;
        found.map(|_| ()).ok_or_else(|| self.not_found_at(field))
    }

    /// Which of `ids` are live rows of the tenant (one round trip).
    pub async fn live_ids(&self, tx: &mut TenantTx, ids: &[Id]) -> ApiResult<HashSet<Id>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let Resource {
            table, id_column, ..
        } = self;
        let tenant = tx.tenant_id();
        let ids: Vec<Uuid> = ids.iter().map(|&id| id.into()).collect();
        let found: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT {id_column} FROM {table} \
             WHERE tenant_id = $1 AND {id_column} = ANY($2) AND deleted_at IS NULL"
        ))
        .bind(tenant)
        .bind(ids)
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)?;
        Ok(found.into_iter().map(Id::from).collect())
    }

    /// The one update idiom, in a transaction of its own: lock the row, check
    /// its etag and that it is live, let `write` store the new row computed
    /// from the current one, record `<kind>.update` with `details` (usually
    /// the mask's `{"fields": [...]}`), commit.
    pub async fn update<R, F>(
        &self,
        db: &Database,
        ctx: &TenantContext,
        id: Id,
        expected: Option<i64>,
        details: serde_json::Value,
        write: F,
    ) -> ApiResult<R>
    where
        R: Row + HasMeta,
        F: AsyncFnOnce(&mut TenantTx, R) -> ApiResult<R>,
    {
        let mut tx = db.begin(ctx).await?;
        let row = self
            .update_in(&mut tx, id, expected, details, write)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// [`Resource::update`] inside the caller's transaction, for updates that
    /// must take another lock first (a member's tenant, to keep its last owner).
    pub async fn update_in<R, F>(
        &self,
        tx: &mut TenantTx,
        id: Id,
        expected: Option<i64>,
        details: serde_json::Value,
        write: F,
    ) -> ApiResult<R>
    where
        R: Row + HasMeta,
        F: AsyncFnOnce(&mut TenantTx, R) -> ApiResult<R>,
    {
        let action = format!("{}.update", self.kind.name);
        self.change_in(tx, id, expected, &action, details, async |tx, current| {
            write(tx, current).await.map(Changed::Written)
        })
        .await
    }

    /// A named change of a live row (`workflow.enable`,
    /// `agent.rotate_public_key`), in a transaction of its own: as
    /// [`Resource::update`], but audited as `action`, and `write` may find
    /// nothing to change ([`Changed::Unchanged`]: the row is returned as it
    /// is and nothing is audited).
    #[allow(clippy::too_many_arguments)]
    pub async fn change<R, F>(
        &self,
        db: &Database,
        ctx: &TenantContext,
        id: Id,
        expected: Option<i64>,
        action: &str,
        details: serde_json::Value,
        write: F,
    ) -> ApiResult<R>
    where
        R: Row + HasMeta,
        F: AsyncFnOnce(&mut TenantTx, R) -> ApiResult<Changed<R>>,
    {
        let mut tx = db.begin(ctx).await?;
        let row = self
            .change_in(&mut tx, id, expected, action, details, write)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn change_in<R, F>(
        &self,
        tx: &mut TenantTx,
        id: Id,
        expected: Option<i64>,
        action: &str,
        details: serde_json::Value,
        write: F,
    ) -> ApiResult<R>
    where
        R: Row + HasMeta,
        F: AsyncFnOnce(&mut TenantTx, R) -> ApiResult<Changed<R>>,
    {
        let current: R = self.get_for_update(tx, id).await?;
        let meta = current.meta();
        self.kind
            .check_writable(meta.revision, meta.is_deleted(), expected)?;
        match write(tx, current).await? {
            Changed::Unchanged(row) => Ok(row),
            Changed::Written(row) => {
                tx.audit(action, self.kind.name, id, details).await?;
                Ok(row)
            }
        }
    }

    /// Soft delete (`deleted = true`) or undelete. Repeating either returns
    /// the row unchanged and `false` (nothing to audit). The row is locked
    /// first, so the etag check and the write see the same revision.
    pub async fn set_deleted<R: Row>(
        &self,
        tx: &mut TenantTx,
        id: Id,
        expected: Option<i64>,
        deleted: bool,
    ) -> ApiResult<(R, bool)> {
        let Resource {
            table,
            id_column,
            select,
            constraints,
            ..
        } = self;
        let tenant = tx.tenant_id();
        let state: Option<(i64, bool)> = sqlx::query_as(&format!(
            "SELECT revision, deleted_at IS NOT NULL FROM {table} \
             WHERE tenant_id = $1 AND {id_column} = $2 FOR UPDATE"
        ))
        .bind(tenant)
        .bind(id.into())
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)?;
        let (revision, is_deleted) = state.ok_or_else(|| self.not_found())?;
        self.kind.check_etag(revision, expected)?;
        if is_deleted == deleted {
            return Ok((self.fetch(tx, id, "").await?, false));
        }
        let row = sqlx::query_as(&format!(
            "UPDATE {table} AS t SET deleted_at = CASE WHEN $3 THEN now() END, \
             revision = t.revision + 1, updated_at = now() \
             WHERE t.tenant_id = $1 AND t.{id_column} = $2 RETURNING {select}"
        ))
        .bind(tenant)
        .bind(id.into())
        .bind(deleted)
        .fetch_optional(tx.conn())
        .await
        // Undelete can collide with a live row that took the unique value meanwhile.
        .map_err(|e| db_error_with(e, constraints))?
        .ok_or_else(|| self.not_found())?;
        Ok((row, true))
    }

    /// Soft delete (`deleted`) or undelete in a transaction of its own, with
    /// its audit event (`<kind>.delete` / `<kind>.undelete`) when it changed
    /// anything. Repeating either is a no-op that returns the row.
    pub async fn delete_or_undelete<R: Row>(
        &self,
        db: &Database,
        ctx: &TenantContext,
        id: Id,
        expected: Option<i64>,
        deleted: bool,
    ) -> ApiResult<R> {
        let mut tx = db.begin(ctx).await?;
        let (row, changed) = self.set_deleted(&mut tx, id, expected, deleted).await?;
        if changed {
            let verb = if deleted { "delete" } else { "undelete" };
            let action = format!("{}.{verb}", self.kind.name);
            tx.audit(&action, self.kind.name, id, serde_json::json!({}))
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }
}

/// What the `write` of [`Resource::change`] did.
#[derive(Debug)]
pub enum Changed<R> {
    /// Stored this row: the change is audited.
    Written(R),
    /// Nothing to change (the row already is so): not audited.
    Unchanged(R),
}

/// Runs a create in one transaction, idempotent by `request_id` (AIP-155):
/// a retry of the same request gets the first response back, and the effect,
/// its audit event and the stored response commit together.
///
/// The claim is made in `ctx`'s tenant. `work` may move the transaction to
/// another tenant (platform admins creating a tenant); the response is then
/// stored back in the claim's tenant.
pub async fn create_once<T, F>(
    db: &Database,
    ctx: &TenantContext,
    method: &str,
    request_id: Option<Uuid>,
    request: &impl prost::Message,
    work: F,
) -> ApiResult<T>
where
    T: prost::Message + Default,
    F: AsyncFnOnce(&mut TenantTx) -> ApiResult<T>,
{
    let mut tx = db.begin(ctx).await?;
    let claimed_in = tx.tenant_id();
    if let Some(rid) = request_id
        && let Claim::Replay(first) = tx
            .claim_request::<T>(method, rid, &fingerprint(request))
            .await?
    {
        tx.finish_read();
        return Ok(first);
    }
    let out = work(&mut tx).await?;
    if let Some(rid) = request_id {
        if tx.tenant_id() != claimed_in {
            tx.switch_tenant(claimed_in).await?;
        }
        tx.complete_request(method, rid, &out).await?;
    }
    tx.commit().await?;
    Ok(out)
}
