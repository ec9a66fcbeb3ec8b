//! `DocumentService`: knowledge-base documents and the worker queue that
//! processes them.
//!
//! The queue's states: PENDING → (claim) → PROCESSING → COMPLETED or FAILED.
//! A claim is a lease: a PROCESSING document whose lease ran out reads as
//! PENDING at once and is claimable again (see `storage::SELECT`), so a
//! crashed worker never strands a document and no sweeper has to run; the
//! old claim can no longer finish it (`CLAIM_NOT_HELD`).

use std::marker::PhantomData;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::Kind;
use mosaic_api::{AllOk, ApiError, ApiResult, etag, parse};
use mosaic_db::{Database, Resource, TenantContext, create_once};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::{
    ClaimDocumentsRequest, ClaimDocumentsResponse, CompleteDocumentRequest, CreateDocumentRequest,
    DeleteDocumentRequest, Document, DocumentStatus, FailDocumentRequest, GetDocumentRequest,
    ListDocumentsRequest, ListDocumentsResponse, document_service_server::DocumentService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

use crate::ids::{AgentId, ClaimId, DocumentId};

pub(crate) mod storage;

pub(crate) const RESOURCE: Resource<DocumentId> = Resource {
    kind: Kind {
        name: "document",
        not_found: "DOCUMENT_NOT_FOUND",
        deleted: "DOCUMENT_DELETED",
    },
    table: "documents",
    id_column: "document_id",
    select: storage::SELECT,
    constraints: storage::CONSTRAINTS,
    id: PhantomData,
};

/// Most documents one `ClaimDocuments` hands out.
pub const MAX_CLAIM: i32 = 100;
/// The lease when the request names none, and its bounds.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(300);
const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Reason of a finish whose claim is not (or no longer) the document's.
pub const CLAIM_NOT_HELD: &str = "CLAIM_NOT_HELD";
/// Reason of a finish of a document in a state it cannot leave that way.
pub const INVALID_TRANSITION: &str = "INVALID_TRANSITION";
const MAX_NAME: usize = 200;
const MAX_URI: usize = 2048;
const MAX_ERROR: usize = 2000;
const MAX_COUNT: i32 = 10_000_000;
const MAX_METADATA_BYTES: usize = 8 * 1024;

/// A new document, checked.
#[derive(Debug)]
pub(crate) struct NewDocument {
    pub(crate) agent_id: Option<AgentId>,
    pub(crate) display_name: String,
    pub(crate) source_uri: String,
    pub(crate) metadata: serde_json::Value,
}

fn parse_new(document: &Document) -> ApiResult<NewDocument> {
    let (agent_id, display_name, source_uri, metadata) = (
        parse::optional_id("document.agent_id", &document.agent_id),
        parse::name("document.display_name", &document.display_name, MAX_NAME),
        source_uri("document.source_uri", &document.source_uri),
        parse::json_object(
            "document.metadata",
            document.metadata.as_ref(),
            MAX_METADATA_BYTES,
        ),
    )
        .all_ok()?;
    Ok(NewDocument {
        agent_id,
        display_name,
        source_uri,
        metadata,
    })
}

/// An absolute URI (`scheme:rest`), at most [`MAX_URI`] characters, without
/// whitespace or control characters. Its reachability is the worker's business.
fn source_uri(field: &str, raw: &str) -> ApiResult<String> {
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    if raw.len() > MAX_URI {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {MAX_URI} characters"),
        ));
    }
    let scheme_ok = raw.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
    });
    if !scheme_ok || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::invalid_argument(
            field,
            "must be an absolute URI such as https://example.com/guide.pdf",
        ));
    }
    Ok(raw.to_owned())
}

/// A lease of 1 s .. 1 h; unset is [`DEFAULT_LEASE`]. (Approvals' claims
/// take the same.)
pub(crate) fn lease(
    field: &str,
    raw: Option<&prost_types::Duration>,
) -> ApiResult<std::time::Duration> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LEASE);
    };
    let lease = std::time::Duration::try_from(*raw)
        .ok()
        .filter(|d| (MIN_LEASE..=MAX_LEASE).contains(d));
    lease.ok_or_else(|| ApiError::invalid_argument(field, "from 1 second to 1 hour"))
}

fn status_name(status: &str) -> String {
    DocumentStatus::from_stored(status)
        .map_or_else(|| status.to_uppercase(), |s| s.stored_name().to_uppercase())
}

#[derive(Debug)]
pub struct Documents {
    db: Database,
}

impl Documents {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Finishes a PROCESSING document held by `claim` with `outcome`: one
    /// conditional UPDATE; only when it finds nothing is the row read, to
    /// refuse with a reason that names its state.
    async fn finish(
        &self,
        ctx: &TenantContext,
        id: DocumentId,
        claim: ClaimId,
        outcome: storage::Outcome,
    ) -> ApiResult<Document> {
        let mut tx = self.db.begin(ctx).await?;
        let Some(row) = storage::finish(&mut tx, id, claim, &outcome).await? else {
            let current: storage::DocumentRow = RESOURCE.get_for_update(&mut tx, id).await?;
            return Err(refusal(&current, claim, outcome.verb()));
        };
        tx.audit(
            &format!("document.{}", outcome.action()),
            "document",
            id,
            serde_json::json!({ "claim_id": claim.to_string() }),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into_proto())
    }
}

/// Why `claim` could not finish `current` (`verb`: "completed", "failed").
fn refusal(current: &storage::DocumentRow, claim: ClaimId, verb: &str) -> ApiError {
    if current.meta.deleted_at.is_some() {
        RESOURCE.kind.is_deleted()
    } else if current.last_claim_id == Some(claim) {
        // The claim is still written on the row (finishing clears it), so the
        // UPDATE missed it for its lease alone.
        ApiError::failed_precondition(
            CLAIM_NOT_HELD,
            format!("the claim's lease ran out; the document cannot be {verb} with it"),
        )
    } else if current.status != "processing" {
        ApiError::failed_precondition(
            INVALID_TRANSITION,
            format!(
                "the document is {}; only a PROCESSING document can be {verb}",
                status_name(&current.status)
            ),
        )
    } else {
        ApiError::failed_precondition(
            CLAIM_NOT_HELD,
            format!(
                "the document is PROCESSING under another claim; it cannot be {verb} with this one"
            ),
        )
    }
}

#[tonic::async_trait]
impl DocumentService for Documents {
    async fn create_document(
        &self,
        req: Request<CreateDocumentRequest>,
    ) -> Result<Response<Document>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let document = request.document.clone().unwrap_or_default();
        let (new, request_id) = (
            parse_new(&document),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        let document = create_once(
            &self.db,
            &ctx,
            "CreateDocument",
            request_id,
            &request,
            async |tx| {
                if let Some(agent) = new.agent_id {
                    crate::agents::RESOURCE
                        .require_live_shared(tx, agent, "document.agent_id")
                        .await?;
                }
                let id = DocumentId::new();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit("document.create", "document", id, serde_json::json!({}))
                    .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(document))
    }

    async fn get_document(
        &self,
        req: Request<GetDocumentRequest>,
    ) -> Result<Response<Document>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = parse::id("document_id", &req.get_ref().document_id)?;
        let row: storage::DocumentRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_documents(
        &self,
        req: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let (size, status, agent) = (
            parse::page_size("page_size", request.page_size),
            parse::enum_or("status", request.status, DocumentStatus::Unspecified),
            parse::optional_id::<AgentId>("agent_id", &request.agent_id),
        )
            .all_ok()?;
        let binding = PageBinding::new("ListDocuments")
            .with(ctx.tenant_id()?)
            .with(request.show_deleted)
            .with(status.stored_name())
            .with(request.agent_id.as_str());
        let after = page::decode::<DocumentId>(&binding, &request.page_token)?;
        let filter = storage::DocumentFilter {
            show_deleted: request.show_deleted,
            status: (status != DocumentStatus::Unspecified).then_some(status),
            agent,
        };
        let rows = self
            .db
            .read(&ctx, storage::list_page(&filter, after, size))
            .await?;
        let (documents, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |document| document.document_id,
            storage::DocumentRow::into_proto,
        );
        Ok(Response::new(ListDocumentsResponse {
            documents,
            next_page_token,
        }))
    }

    async fn delete_document(
        &self,
        req: Request<DeleteDocumentRequest>,
    ) -> Result<Response<Document>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("document_id", &request.document_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let row: storage::DocumentRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, expected, true)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn claim_documents(
        &self,
        req: Request<ClaimDocumentsRequest>,
    ) -> Result<Response<ClaimDocumentsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (max, lease) = (
            parse::int_range("max_documents", request.max_documents, 1, MAX_CLAIM),
            lease("lease", request.lease.as_ref()),
        )
            .all_ok()?;
        let claim = ClaimId::new();
        let mut tx = self.db.begin(&ctx).await?;
        let mut rows = storage::claim(&mut tx, claim, max, lease).await?;
        if rows.is_empty() {
            tx.finish_read();
            return Ok(Response::new(ClaimDocumentsResponse::default()));
        }
        rows.sort_by_key(|row| row.document_id);
        let ids: Vec<String> = rows.iter().map(|row| row.document_id.to_string()).collect();
        tx.audit(
            "document.claim",
            "claim",
            claim,
            serde_json::json!({ "document_ids": ids, "lease_ms": lease.as_millis() as u64 }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(ClaimDocumentsResponse {
            claim_id: claim.to_string(),
            documents: rows
                .into_iter()
                .map(storage::DocumentRow::into_proto)
                .collect(),
        }))
    }

    async fn complete_document(
        &self,
        req: Request<CompleteDocumentRequest>,
    ) -> Result<Response<Document>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (id, claim, chunks, vectors) = (
            parse::id("document_id", &request.document_id),
            parse::id("claim_id", &request.claim_id),
            parse::int_range("chunk_count", request.chunk_count, 0, MAX_COUNT),
            parse::int_range("vector_count", request.vector_count, 0, MAX_COUNT),
        )
            .all_ok()?;
        let outcome = storage::Outcome::Completed { chunks, vectors };
        Ok(Response::new(self.finish(&ctx, id, claim, outcome).await?))
    }

    async fn fail_document(
        &self,
        req: Request<FailDocumentRequest>,
    ) -> Result<Response<Document>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (id, claim, error) = (
            parse::id("document_id", &request.document_id),
            parse::id("claim_id", &request.claim_id),
            parse::name("error", &request.error, MAX_ERROR),
        )
            .all_ok()?;
        let outcome = storage::Outcome::Failed { error };
        Ok(Response::new(self.finish(&ctx, id, claim, outcome).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_uris_are_absolute() {
        for good in [
            "https://example.com/a.pdf",
            "s3://bucket/key",
            "gs://b/k",
            "urn:isbn:123",
        ] {
            assert!(source_uri("u", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "example.com/a",
            "/a/b",
            "https://a b",
            "1http://x",
            "https:",
            "a\u{7}:b",
        ] {
            assert!(source_uri("u", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn leases_are_bounded() {
        assert_eq!(lease("l", None).unwrap(), DEFAULT_LEASE);
        let d = |seconds| prost_types::Duration { seconds, nanos: 0 };
        assert!(lease("l", Some(&d(0))).is_err());
        assert!(lease("l", Some(&d(-5))).is_err());
        assert!(lease("l", Some(&d(3601))).is_err());
        assert_eq!(lease("l", Some(&d(30))).unwrap().as_secs(), 30);
    }
}
