//! The life cycle companies, contacts and deals share: creates made
//! idempotent by `request_id`, reads by id, soft delete and undelete, and the
//! checks that turn "no row" into NOT_FOUND (never success) and a changed
//! revision into ABORTED.
//!
//! Every statement here names `tenant_id = $1` itself, so the planner uses the
//! `(tenant_id, id)` primary key; RLS is the backstop, and another tenant's
//! row simply does not exist.

use std::collections::HashSet;

use mosaic_api::{ApiError, ApiResult, etag};
use mosaic_db::idempotency::{Claim, fingerprint};
use mosaic_db::{Constraint, Database, TenantContext, TenantTx, db_error, db_error_with};
use sqlx::postgres::PgRow;
use uuid::Uuid;

/// How soft-deleted rows are described: eligible for purging this long after
/// `deleted_at`, when [`crate::purge`] removes them.
pub const RETENTION: chrono::Duration = chrono::Duration::days(30);

/// A soft-deletable table and how its errors read.
#[derive(Debug)]
pub struct Resource {
    pub table: &'static str,
    pub id_column: &'static str,
    /// Audit resource type and the noun in messages: `company`.
    pub kind: &'static str,
    /// Reason of NOT_FOUND: `COMPANY_NOT_FOUND`.
    pub not_found: &'static str,
    /// Reason of FAILED_PRECONDITION on writes to a deleted row: `COMPANY_DELETED`.
    pub deleted: &'static str,
    /// The select list, written against the alias `t`.
    pub select: &'static str,
    /// Unique constraints an undelete can hit.
    pub constraints: &'static [Constraint],
}

/// A row type any [`Resource`] select list decodes into.
pub trait Row: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin {}
impl<T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin> Row for T {}

impl Resource {
    pub fn not_found(&self) -> ApiError {
        ApiError::not_found(self.not_found, format!("{} not found", self.kind))
    }

    /// NOT_FOUND naming the request field that referred to the row.
    pub fn not_found_at(&self, field: &str) -> ApiError {
        ApiError::not_found(self.not_found, format!("{field}: {} not found", self.kind))
    }

    pub fn is_deleted(&self) -> ApiError {
        ApiError::failed_precondition(
            self.deleted,
            format!("the {} is deleted; undelete it first", self.kind),
        )
    }

    /// The row, also while soft-deleted; NOT_FOUND when absent (or another tenant's).
    /// The row, read in one round trip outside any transaction of the
    /// caller's (Get methods: see `Database::read_by_ids`).
    pub async fn read<R: Row>(&self, db: &Database, ctx: &TenantContext, id: Uuid) -> ApiResult<R> {
        let Resource {
            table,
            id_column,
            select,
            ..
        } = self;
        let sql = format!(
            "SELECT {select} FROM {table} t WHERE t.tenant_id = $tenant AND t.{id_column} = $1"
        );
        db.read_by_ids(ctx, &sql, &[id])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| self.not_found())
    }

    /// The row, locked until the transaction ends, for read-merge-write updates.
    pub async fn get_for_update<R: Row>(&self, tx: &mut TenantTx, id: Uuid) -> ApiResult<R> {
        self.fetch(tx, id, " FOR UPDATE").await
    }

    async fn fetch<R: Row>(&self, tx: &mut TenantTx, id: Uuid, lock: &str) -> ApiResult<R> {
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
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)?
        .ok_or_else(|| self.not_found())
    }

    /// NOT_FOUND (naming `field`) unless `id` is a live row of the tenant.
    pub async fn require_live(&self, tx: &mut TenantTx, id: Uuid, field: &str) -> ApiResult<()> {
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
        id: Uuid,
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
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)?;
        found.map(|_| ()).ok_or_else(|| self.not_found_at(field))
    }

    /// Which of `ids` are live rows of the tenant (one round trip).
    pub async fn live_ids(&self, tx: &mut TenantTx, ids: &[Uuid]) -> ApiResult<HashSet<Uuid>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let Resource {
            table, id_column, ..
        } = self;
        let tenant = tx.tenant_id();
        let found: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT {id_column} FROM {table} \
             WHERE tenant_id = $1 AND {id_column} = ANY($2) AND deleted_at IS NULL"
        ))
        .bind(tenant)
        .bind(ids)
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)?;
        Ok(found.into_iter().collect())
    }

    /// Soft delete (`deleted = true`) or undelete. Repeating either returns
    /// the row unchanged and `false` (nothing to audit). The row is locked
    /// first, so the etag check and the write see the same revision.
    pub async fn set_deleted<R: Row>(
        &self,
        tx: &mut TenantTx,
        id: Uuid,
        expected: Option<i64>,
        deleted: bool,
    ) -> ApiResult<(R, bool)> {
        let Resource {
            table,
            id_column,
            select,
            ..
        } = self;
        let tenant = tx.tenant_id();
        let state: Option<(i64, bool)> = sqlx::query_as(&format!(
            "SELECT revision, deleted_at IS NOT NULL FROM {table} \
             WHERE tenant_id = $1 AND {id_column} = $2 FOR UPDATE"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .map_err(db_error)?;
        let (revision, is_deleted) = state.ok_or_else(|| self.not_found())?;
        if expected.is_some_and(|e| e != revision) {
            return Err(etag::stale(self.kind));
        }
        if is_deleted == deleted {
            return Ok((self.fetch(tx, id, "").await?, false));
        }
        let row = sqlx::query_as(&format!(
            "UPDATE {table} AS t SET deleted_at = CASE WHEN $3 THEN now() END, \
             revision = t.revision + 1, updated_at = now() \
             WHERE t.tenant_id = $1 AND t.{id_column} = $2 RETURNING {select}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(deleted)
        .fetch_optional(tx.conn())
        .await
        // Undelete can collide with a live row that took the unique value meanwhile.
        .map_err(|e| db_error_with(e, self.constraints))?
        .ok_or_else(|| self.not_found())?;
        Ok((row, true))
    }
}

impl Resource {
    /// Soft delete (`deleted`) or undelete in a transaction of its own, with
    /// its audit event (`<kind>.delete` / `<kind>.undelete`) when it changed
    /// anything. Repeating either is a no-op that returns the row.
    pub async fn delete_or_undelete<R: Row>(
        &self,
        db: &Database,
        ctx: &TenantContext,
        id: Uuid,
        expected: Option<i64>,
        deleted: bool,
    ) -> ApiResult<R> {
        let mut tx = db.begin(ctx).await?;
        let (row, changed) = self.set_deleted(&mut tx, id, expected, deleted).await?;
        if changed {
            let action = format!(
                "{}.{}",
                self.kind,
                if deleted { "delete" } else { "undelete" }
            );
            tx.audit(&action, self.kind, id, serde_json::json!({}))
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }
}

/// Checks a locked row before an update: NOT_FOUND was handled by the read;
/// here a deleted row is FAILED_PRECONDITION and a changed revision ABORTED.
pub fn check_writable(
    res: &Resource,
    revision: i64,
    deleted: bool,
    expected: Option<i64>,
) -> ApiResult<()> {
    if expected.is_some_and(|e| e != revision) {
        return Err(etag::stale(res.kind));
    }
    if deleted {
        return Err(res.is_deleted());
    }
    Ok(())
}

/// Runs a create in one transaction, idempotent by `request_id` (AIP-155):
/// a retry of the same request gets the first response back, and the effect,
/// its audit event and the stored response commit together.
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
        tx.complete_request(method, rid, &out).await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// Runs a field's parser only when the update mask names it.
pub fn masked<T>(wanted: bool, parse: impl FnOnce() -> ApiResult<T>) -> ApiResult<Option<T>> {
    if wanted { parse().map(Some) } else { Ok(None) }
}

/// `delete_time + RETENTION`, the `expire_time` of a soft-deleted resource.
pub fn expire_time(
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<prost_types::Timestamp> {
    deleted_at.map(|d| mosaic_api::convert::timestamp(d + RETENTION))
}
