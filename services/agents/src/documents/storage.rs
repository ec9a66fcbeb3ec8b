//! SQL of documents. Every statement names `tenant_id = $1` (RLS is the backstop).

use std::time::Duration;

use mosaic_api::{ApiResult, convert};
use mosaic_db::{
    Constraint, HasMeta, OptTime, Order, RowMeta, Select, TenantTx, db_error, db_error_with,
};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::{Document, DocumentStatus};

use super::NewDocument;
use crate::ids::{AgentId, ClaimId, DocumentId};

/// A PROCESSING row whose lease ran out: it reads as PENDING, without its
/// claim, and is claimable again.
macro_rules! expired {
    () => {
        "(t.status = 'processing' AND t.lease_expires_at <= now())"
    };
}
const EXPIRED: &str = expired!();

/// Select list over the alias `t`: the status as it stands now (see [`EXPIRED`]).
pub(crate) const SELECT: &str = concat!(
    "t.document_id, t.agent_id, t.display_name, t.source_uri, t.metadata, ",
    "CASE WHEN ",
    expired!(),
    " THEN 'pending' ELSE t.status END AS status, ",
    "CASE WHEN ",
    expired!(),
    " THEN NULL ELSE t.claim_id END AS claim_id, ",
    "CASE WHEN ",
    expired!(),
    " THEN NULL ELSE t.lease_expires_at END AS lease_expires_at, ",
    "t.claim_id AS last_claim_id, t.attempt_count, t.chunk_count, t.vector_count, t.error, ",
    "t.revision, t.created_at, t.updated_at, t.deleted_at"
);

/// Backstop for the handler's live check of the agent (a purge racing the insert).
pub(crate) const CONSTRAINTS: &[Constraint] = &[Constraint {
    name: "documents_agent_fk",
    field: "document.agent_id",
    reason: "AGENT_NOT_FOUND",
}];

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DocumentRow {
    pub(crate) document_id: DocumentId,
    pub(crate) agent_id: Option<AgentId>,
    pub(crate) display_name: String,
    pub(crate) source_uri: String,
    pub(crate) metadata: serde_json::Value,
    pub(crate) status: String,
    pub(crate) claim_id: Option<ClaimId>,
    #[sqlx(try_from = "OptTime")]
    pub(crate) lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The claim last written, also when its lease ran out.
    pub(crate) last_claim_id: Option<ClaimId>,
    pub(crate) attempt_count: i32,
    pub(crate) chunk_count: i32,
    pub(crate) vector_count: i32,
    pub(crate) error: String,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for DocumentRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl DocumentRow {
    pub(crate) fn into_proto(self) -> Document {
        let status = DocumentStatus::from_stored(&self.status).unwrap_or_default();
        Document {
            document_id: self.document_id.to_string(),
            agent_id: self.agent_id.map(|id| id.to_string()).unwrap_or_default(),
            display_name: self.display_name,
            source_uri: self.source_uri,
            metadata: Some(convert::json_to_struct(self.metadata)),
            status: status as i32,
            claim_id: self.claim_id.map(|id| id.to_string()).unwrap_or_default(),
            lease_expire_time: convert::opt_timestamp(self.lease_expires_at),
            attempt_count: self.attempt_count,
            chunk_count: self.chunk_count,
            vector_count: self.vector_count,
            error: self.error,
            create_time: self.meta.create_time(),
            update_time: self.meta.update_time(),
            delete_time: self.meta.delete_time(),
            expire_time: self.meta.expire_time(),
            etag: self.meta.etag(),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: DocumentId,
    new: &NewDocument,
) -> ApiResult<DocumentRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO documents AS t (tenant_id, document_id, agent_id, display_name, source_uri, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(new.agent_id)
    .bind(&new.display_name)
    .bind(&new.source_uri)
    .bind(&new.metadata)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// The filters of ListDocuments.
#[derive(Debug)]
pub(crate) struct DocumentFilter {
    pub(crate) show_deleted: bool,
    pub(crate) status: Option<DocumentStatus>,
    pub(crate) agent: Option<AgentId>,
}

/// One page in id (= creation) order, `limit + 1` rows; the status filter
/// is on the status as reads show it.
pub(crate) fn list_page(filter: &DocumentFilter, after: Option<DocumentId>, limit: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM documents t WHERE t.tenant_id = $tenant"
    ));
    if !filter.show_deleted {
        sql.push(" AND t.deleted_at IS NULL");
    }
    match filter.status {
        None | Some(DocumentStatus::Unspecified) => {}
        Some(DocumentStatus::Pending) => {
            sql.push(&format!(" AND (t.status = 'pending' OR {EXPIRED})"));
        }
        Some(DocumentStatus::Processing) => {
            sql.push(&format!(" AND t.status = 'processing' AND NOT {EXPIRED}"));
        }
        Some(status) => {
            sql.push(" AND t.status = ").push_bind(status.stored_name());
        }
    }
    if let Some(agent) = filter.agent {
        sql.push(" AND t.agent_id = ").push_bind(agent.uuid());
    }
    sql.keyset(
        "t.document_id",
        Order::Asc,
        after.map(DocumentId::uuid),
        limit,
    );
    sql
}

/// The claim: up to `$2` documents for claim `$3` and a lease of `$4`
/// seconds. Those whose lease ran out first (longest expired first), then
/// PENDING ones, oldest first; `SKIP LOCKED` passes over rows another
/// claimer is taking right now, so no row is ever handed out twice. Each CTE
/// reads its own partial index, and CTEs run only as far as they are read:
/// the pending one not at all when expired leases fill the claim.
pub(crate) const CLAIM: &str = "WITH expired AS ( \
         SELECT c.document_id FROM documents c \
         WHERE c.tenant_id = $1 AND c.status = 'processing' AND c.lease_expires_at <= now() \
           AND c.deleted_at IS NULL \
         ORDER BY c.lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
     pending AS ( \
         SELECT c.document_id FROM documents c \
         WHERE c.tenant_id = $1 AND c.status = 'pending' AND c.deleted_at IS NULL \
         ORDER BY c.created_at, c.document_id LIMIT $2 FOR UPDATE SKIP LOCKED) \
     UPDATE documents AS t SET status = 'processing', claim_id = $3, \
         lease_expires_at = now() + make_interval(secs => $4), \
         attempt_count = t.attempt_count + 1, revision = t.revision + 1, updated_at = now() \
     FROM (SELECT document_id FROM expired UNION ALL SELECT document_id FROM pending LIMIT $2) picked \
     WHERE t.tenant_id = $1 AND t.document_id = picked.document_id";

/// Runs [`CLAIM`]; the rows come back in no particular order.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn claim(
    tx: &mut TenantTx,
    claim: ClaimId,
    max: i32,
    lease: Duration,
) -> ApiResult<Vec<DocumentRow>> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!("{CLAIM} RETURNING {SELECT}"))
        .bind(tenant)
        .bind(i64::from(max))
        .bind(claim)
        .bind(lease.as_secs_f64())
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
}

/// How a claimed document ends.
#[derive(Debug)]
pub(crate) enum Outcome {
    Completed { chunks: i32, vectors: i32 },
    Failed { error: String },
}

impl Outcome {
    /// For messages: "completed" / "failed".
    pub(crate) fn verb(&self) -> &'static str {
        match self {
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
        }
    }

    /// The audit action's verb.
    pub(crate) fn action(&self) -> &'static str {
        match self {
            Self::Completed { .. } => "complete",
            Self::Failed { .. } => "fail",
        }
    }
}

/// Ends a document still PROCESSING under `claim` with a lease not run out;
/// `None` when it is not (the lease ran out since the caller looked).
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn finish(
    tx: &mut TenantTx,
    id: DocumentId,
    claim: ClaimId,
    outcome: &Outcome,
) -> ApiResult<Option<DocumentRow>> {
    let tenant = tx.tenant_id();
    let (status, chunks, vectors, error) = match outcome {
        Outcome::Completed { chunks, vectors } => ("completed", *chunks, *vectors, ""),
        Outcome::Failed { error } => ("failed", 0, 0, error.as_str()),
    };
    sqlx::query_as(&format!(
        "UPDATE documents AS t SET status = $4, chunk_count = $5, vector_count = $6, error = $7, \
         claim_id = NULL, lease_expires_at = NULL, revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.document_id = $2 AND t.status = 'processing' \
           AND t.claim_id = $3 AND t.lease_expires_at > now() AND t.deleted_at IS NULL \
         RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(claim)
    .bind(status)
    .bind(chunks)
    .bind(vectors)
    .bind(error)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}
