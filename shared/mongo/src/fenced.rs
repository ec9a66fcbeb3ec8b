//! [`Fenced`]: one collection, reached only through a tenant.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Bson, Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use mongodb::options::{FindOneAndUpdateOptions, FindOneOptions, ReturnDocument};
use mosaic_api::{ApiError, ApiResult};
use mosaic_tenant::TenantContext;

pub use mongodb::change_stream::event::ResumeToken;

use crate::TENANT_FIELD;
use crate::connection::Mongo;

/// Stages an aggregation may not use: they read other collections (and so
/// other tenants) or write.
const REFUSED_STAGES: &[&str] = &["$lookup", "$graphLookup", "$unionWith", "$out", "$merge"];
/// Update operators that could move a document to another tenant.
const UPDATE_OPERATORS: &[&str] = &["$set", "$unset", "$rename", "$setOnInsert", "$inc", "$push"];
/// The comment prefix of the one documented cross-tenant read.
pub(crate) const ALL_TENANTS_COMMENT: &str = "mosaic:all-tenants:";

/// A collection whose every command is fenced to one tenant (see the crate
/// docs). Made by [`Mongo::collection`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Fenced {
    mongo: Mongo,
    name: &'static str,
}

/// The tenant filter, as a document's first key, with the rest after it.
fn fenced(tenant: &str, filter: Document) -> Document {
    let mut out = doc! { TENANT_FIELD: tenant };
    for (key, value) in filter {
        if key != TENANT_FIELD {
            out.insert(key, value);
        }
    }
    out
}

fn tenant_of(ctx: &TenantContext) -> ApiResult<String> {
    Ok(ctx.tenant_id()?.to_string())
}

/// Refuses an update that names the tenant field.
fn check_update(update: &Document) -> ApiResult<()> {
    for (operator, fields) in update {
        if !UPDATE_OPERATORS.contains(&operator.as_str()) {
            return Err(ApiError::internal(format_args!(
                "update operator {operator} is not allowed through the fence"
            )));
        }
        if let Bson::Document(fields) = fields
            && fields
                .keys()
                .any(|k| k == TENANT_FIELD || k.starts_with("tenant_id."))
        {
            return Err(ApiError::internal("an update may not change tenant_id"));
        }
    }
    Ok(())
}

impl Fenced {
    pub(crate) fn new(mongo: Mongo, name: &'static str) -> Self {
        Self { mongo, name }
    }

    /// The collection's name (for logs and metrics).
    pub fn name(&self) -> &'static str {
        self.name
    }

    async fn collection(&self) -> ApiResult<mongodb::Collection<Document>> {
        Ok(self.mongo.database().await?.collection(self.name))
    }

    /// Runs `op` (the command `operation`, e.g. `find`) within what is left
    /// of the caller's deadline, in a client span while spans are exported.
    async fn timed<T>(
        &self,
        ctx: &TenantContext,
        operation: &'static str,
        op: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> ApiResult<T> {
        let span = self.span(operation);
        let result =
            match tokio::time::timeout(Mongo::budget(ctx.remaining()), op.into_future()).await {
                Ok(result) => result.map_err(|e| self.mongo.error(e)),
                Err(_) => Err(ApiError::deadline_exceeded(
                    "the document store did not answer in time",
                )),
            };
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        result
    }

    /// The client span of one MongoDB command on this collection (the
    /// conventions' `db.*` attributes; never a filter or a document, which
    /// hold message content), or a disabled span while spans are not exported.
    fn span(&self, operation: &'static str) -> tracing::Span {
        if !mosaic_core::spans::exporting() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            "mongodb",
            otel.name = %format_args!("{operation} {}", self.name),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "mongodb",
            db.collection.name = self.name,
            db.operation.name = operation,
        )
    }

    /// Inserts `document` with the tenant stamped on it. A unique index
    /// refusing it comes back as `Err(Duplicate)`; see [`InsertError`].
    pub async fn insert_one(
        &self,
        ctx: &TenantContext,
        document: Document,
    ) -> Result<(), InsertError> {
        let tenant = tenant_of(ctx)?;
        let document = fenced(&tenant, document);
        let collection = self.collection().await?;
        let span = self.span("insert");
        let result = tokio::time::timeout(
            Mongo::budget(ctx.remaining()),
            collection.insert_one(document),
        )
        .await;
        if !matches!(result, Ok(Ok(_))) {
            span.record("otel.status_code", "error");
        }
        drop(span);
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if crate::is_duplicate_key(&e) => Err(InsertError::Duplicate),
            Ok(Err(e)) => Err(InsertError::Api(self.mongo.error(e))),
            Err(_) => Err(InsertError::Api(ApiError::deadline_exceeded(
                "the document store did not answer in time",
            ))),
        }
    }

    /// The tenant's first document matching `filter`.
    pub async fn find_one(
        &self,
        ctx: &TenantContext,
        filter: Document,
        projection: Option<Document>,
    ) -> ApiResult<Option<Document>> {
        let filter = fenced(&tenant_of(ctx)?, filter);
        let collection = self.collection().await?;
        let options = FindOneOptions::builder().projection(projection).build();
        self.timed(
            ctx,
            "find",
            collection.find_one(filter).with_options(options),
        )
        .await
    }

    /// Up to `limit` of the tenant's documents matching `filter`, in `sort` order.
    pub async fn find(
        &self,
        ctx: &TenantContext,
        filter: Document,
        sort: Document,
        limit: i64,
    ) -> ApiResult<Vec<Document>> {
        let filter = fenced(&tenant_of(ctx)?, filter);
        let collection = self.collection().await?;
        self.timed(ctx, "find", async {
            collection
                .find(filter)
                .sort(sort)
                .limit(limit)
                .batch_size(u32::try_from(limit.clamp(1, 1001)).unwrap_or(1001))
                .await?
                .try_collect()
                .await
        })
        .await
    }

    /// Updates the tenant's one document matching `filter` and returns it as
    /// it is afterwards, or `None` when none matched.
    pub async fn find_one_and_update(
        &self,
        ctx: &TenantContext,
        filter: Document,
        update: Document,
        projection: Option<Document>,
    ) -> ApiResult<Option<Document>> {
        check_update(&update)?;
        let filter = fenced(&tenant_of(ctx)?, filter);
        let collection = self.collection().await?;
        let options = FindOneAndUpdateOptions::builder()
            .return_document(ReturnDocument::After)
            .projection(projection)
            .build();
        self.timed(
            ctx,
            "findAndModify",
            collection
                .find_one_and_update(filter, update)
                .with_options(options),
        )
        .await
    }

    /// Updates the tenant's one document matching `filter`; whether one matched.
    pub async fn update_one(
        &self,
        ctx: &TenantContext,
        filter: Document,
        update: Document,
    ) -> ApiResult<bool> {
        check_update(&update)?;
        let filter = fenced(&tenant_of(ctx)?, filter);
        let collection = self.collection().await?;
        self.timed(ctx, "update", collection.update_one(filter, update))
            .await
            .map(|r| r.matched_count > 0)
    }

    /// Runs `pipeline` over the tenant's documents: a `$match` on the tenant
    /// comes first. Stages that reach other collections or write are refused.
    pub async fn aggregate(
        &self,
        ctx: &TenantContext,
        pipeline: Vec<Document>,
    ) -> ApiResult<Vec<Document>> {
        if let Some(stage) = pipeline
            .iter()
            .flat_map(Document::keys)
            .find(|k| REFUSED_STAGES.contains(&k.as_str()))
        {
            return Err(ApiError::internal(format_args!(
                "aggregation stage {stage} is not allowed through the fence"
            )));
        }
        let tenant = tenant_of(ctx)?;
        let stages = std::iter::once(doc! { "$match": { TENANT_FIELD: tenant } })
            .chain(pipeline)
            .collect::<Vec<_>>();
        let collection = self.collection().await?;
        self.timed(ctx, "aggregate", async {
            collection.aggregate(stages).await?.try_collect().await
        })
        .await
    }

    /// Follows the inserts of the tenant's documents matching `filter`
    /// (fields of the inserted document, e.g. `{"conversation_id": ...}`),
    /// from `resume_after` when given, else from now. The pipeline's first
    /// stage matches `fullDocument.tenant_id`.
    pub async fn watch_inserts(
        &self,
        ctx: &TenantContext,
        filter: Document,
        resume_after: Option<ResumeToken>,
    ) -> ApiResult<Tail> {
        let tenant = tenant_of(ctx)?;
        let mut matched =
            doc! { format!("fullDocument.{TENANT_FIELD}"): tenant, "operationType": "insert" };
        for (key, value) in filter {
            matched.insert(format!("fullDocument.{key}"), value);
        }
        let collection = self.collection().await?;
        let stream = self
            .timed(
                ctx,
                "watch",
                collection
                    .watch()
                    .pipeline([doc! { "$match": matched }])
                    .resume_after(resume_after)
                    .max_await_time(Duration::from_millis(500)),
            )
            .await?;
        Ok(Tail {
            stream,
            mongo: self.mongo.clone(),
        })
    }

    /// The documented exception to the fence, for background sweepers that
    /// look for due work across tenants: up to `limit` documents matching
    /// `filter` (which should match a partial index), in `sort` order. The
    /// command carries the comment `mosaic:all-tenants:<why>`, which the
    /// [`audit`](crate::audit) accepts; every later command on what it found
    /// goes through a tenant again. Each document keeps its `tenant_id`.
    pub async fn scan_all_tenants(
        &self,
        why: &'static str,
        filter: Document,
        sort: Document,
        limit: i64,
        timeout: Duration,
    ) -> ApiResult<Vec<Document>> {
        let collection = self.collection().await?;
        let _span = self.span("find");
        let op = async {
            collection
                .find(filter)
                .sort(sort)
                .limit(limit)
                .comment(Bson::String(format!("{ALL_TENANTS_COMMENT}{why}")))
                .await?
                .try_collect()
                .await
        };
        match tokio::time::timeout(timeout, op).await {
            Ok(result) => result.map_err(|e| self.mongo.error(e)),
            Err(_) => Err(ApiError::deadline_exceeded(
                "the document store did not answer in time",
            )),
        }
    }
}

/// Why an insert did not happen.
#[derive(Debug)]
pub enum InsertError {
    /// A unique index already holds a document with the same key.
    Duplicate,
    Api(ApiError),
}

impl From<ApiError> for InsertError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

/// An open change stream of one tenant's inserts.
pub struct Tail {
    stream: ChangeStream<ChangeStreamEvent<Document>>,
    mongo: Mongo,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail").finish_non_exhaustive()
    }
}

/// One insert a [`Tail`] saw, with the token to resume after it.
#[derive(Debug)]
pub struct TailEvent {
    pub document: Document,
    pub token: ResumeToken,
}

/// A resume token as JSON (MongoDB's relaxed extended JSON of it), to carry
/// in a client's cursor.
pub fn token_to_json(token: &ResumeToken) -> serde_json::Value {
    mongodb::bson::to_bson(token)
        .map(Bson::into_relaxed_extjson)
        .unwrap_or(serde_json::Value::Null)
}

/// The resume token [`token_to_json`] wrote; `None` when it is not one.
pub fn token_from_json(json: serde_json::Value) -> Option<ResumeToken> {
    let bson = Bson::try_from(json).ok()?;
    mongodb::bson::from_bson(bson).ok()
}

/// Reason of OUT_OF_RANGE when a resume token is older than the change history kept.
pub const CURSOR_EXPIRED: &str = "CURSOR_EXPIRED";

impl Tail {
    /// The next insert; `None` if the stream ended.
    pub async fn next(&mut self) -> Option<ApiResult<TailEvent>> {
        loop {
            let event = match self.stream.next().await? {
                Ok(event) => event,
                Err(e) => return Some(Err(self.error(e))),
            };
            if event.operation_type != OperationType::Insert {
                continue;
            }
            if let Some(document) = event.full_document {
                return Some(Ok(TailEvent {
                    document,
                    token: event.id,
                }));
            }
        }
    }

    fn error(&self, e: mongodb::error::Error) -> ApiError {
        const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
        const CHANGE_STREAM_FATAL: i32 = 280;
        match e.kind.as_ref() {
            mongodb::error::ErrorKind::Command(c)
                if c.code == CHANGE_STREAM_HISTORY_LOST || c.code == CHANGE_STREAM_FATAL =>
            {
                ApiError::out_of_range(
                    CURSOR_EXPIRED,
                    "the cursor is older than the change history kept; list the messages after your last one and tail from there",
                )
            }
            _ => self.mongo.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_comes_first_and_cannot_be_overridden() {
        let f = fenced("a", doc! { "tenant_id": "b", "x": 1 });
        assert_eq!(f, doc! { "tenant_id": "a", "x": 1 });
        assert_eq!(f.keys().next().map(String::as_str), Some("tenant_id"));
    }

    #[test]
    fn updates_may_not_touch_the_tenant() {
        assert!(check_update(&doc! { "$set": { "status": "ended" } }).is_ok());
        assert!(check_update(&doc! { "$set": { "tenant_id": "b" } }).is_err());
        assert!(check_update(&doc! { "$unset": { "tenant_id": "" } }).is_err());
        assert!(check_update(&doc! { "$rename": { "tenant_id": "t" } }).is_err());
        assert!(check_update(&doc! { "$currentDate": { "x": true } }).is_err());
    }
}
