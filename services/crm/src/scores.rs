//! `ScoreService`: fit, intent and composite scores, one row per company,
//! written in batches by scoring jobs and read one company at a time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mosaic_api::{AllOk, ApiError, ApiResult, Violations, parse};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::crm::{
    GetScoreRequest, Score, UpsertScoresRequest, UpsertScoresResponse,
    score_service_server::ScoreService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

use crate::companies;
use crate::ids::CompanyId;

pub(crate) mod storage;

/// Most entries per UpsertScores call.
pub const MAX_BATCH: usize = 1000;
const MAX_MODEL_VERSION: usize = 64;

/// A checked score entry.
#[derive(Debug)]
pub(crate) struct NewScore {
    company_id: CompanyId,
    fit: i16,
    intent: i16,
    composite: i16,
    model_version: String,
    computed_at: DateTime<Utc>,
}

impl NewScore {
    fn parse(score: &Score, at: &str) -> ApiResult<Self> {
        let field = |name: &str| format!("{at}.{name}");
        let percent = |name: &str, raw: i32| {
            parse::int_range(&field(name), raw, 0, 100).map(|value| value as i16)
        };
        let (company_id, fit, intent, composite, model_version, computed_at) = (
            parse::id(&field("company_id"), &score.company_id),
            percent("fit", score.fit),
            percent("intent", score.intent),
            percent("composite", score.composite),
            parse::text(
                &field("model_version"),
                score.model_version.trim(),
                MAX_MODEL_VERSION,
            ),
            parse::event_time_or_now(&field("compute_time"), score.compute_time.as_ref()),
        )
            .all_ok()?;
        Ok(Self {
            company_id,
            fit,
            intent,
            composite,
            model_version,
            computed_at,
        })
    }
}

#[derive(Debug)]
pub struct Scores {
    db: Database,
}

impl Scores {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl ScoreService for Scores {
    async fn upsert_scores(
        &self,
        req: Request<UpsertScoresRequest>,
    ) -> Result<Response<UpsertScoresResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let raw = &req.get_ref().scores;
        parse::batch_len("scores", raw.len(), MAX_BATCH)?;
        let mut violations = Violations::new();
        let mut seen: HashMap<CompanyId, usize> = HashMap::with_capacity(raw.len());
        let mut batch = Vec::with_capacity(raw.len());
        for (index, entry) in raw.iter().enumerate() {
            let at = format!("scores[{index}]");
            let Some(score) = violations.take(NewScore::parse(entry, &at)) else {
                continue;
            };
            // One statement cannot update the same row twice.
            if let Some(first) = seen.insert(score.company_id, index) {
                violations.add(
                    format!("{at}.company_id"),
                    format!("repeats scores[{first}].company_id"),
                );
            }
            batch.push(score);
        }
        violations.finish()?;

        let mut tx = self.db.begin(&ctx).await?;
        let ids: Vec<CompanyId> = batch.iter().map(|score| score.company_id).collect();
        let live = companies::RESOURCE.live_ids(&mut tx, &ids).await?;
        if let Some(index) = ids.iter().position(|id| !live.contains(id)) {
            return Err(companies::RESOURCE
                .not_found_at(&format!("scores[{index}].company_id"))
                .into());
        }
        let written = storage::upsert(&mut tx, &batch).await?;
        // One event per score written, under its company's id (a score has no
        // other); stale entries changed nothing.
        let (created, updated): (Vec<_>, Vec<_>) = written.iter().partition(|write| write.created);
        let ids_of = |writes: Vec<&storage::Written>| -> Vec<CompanyId> {
            writes
                .into_iter()
                .map(|write| write.row.company_id)
                .collect()
        };
        let (created, updated) = (ids_of(created), ids_of(updated));
        tx.audit_many("score.create", "score", &created, serde_json::json!({}))
            .await?;
        tx.audit_many("score.update", "score", &updated, serde_json::json!({}))
            .await?;
        let stale = batch.len() - written.len();
        tx.commit().await?;

        let mut by_company: HashMap<CompanyId, Score> = written
            .into_iter()
            .map(|write| (write.row.company_id, write.row.into_proto()))
            .collect();
        let scores = ids.iter().filter_map(|id| by_company.remove(id)).collect();
        Ok(Response::new(UpsertScoresResponse {
            scores,
            created_count: created.len() as i32,
            updated_count: updated.len() as i32,
            stale_count: stale as i32,
        }))
    }

    async fn get_score(&self, req: Request<GetScoreRequest>) -> Result<Response<Score>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = parse::id("company_id", &req.get_ref().company_id)?;
        let row: Option<storage::ScoreRow> = self
            .db
            .read(&ctx, storage::get(id))
            .await?
            .into_iter()
            .next();
        let row =
            row.ok_or_else(|| ApiError::not_found("SCORE_NOT_FOUND", "the company has no scores"))?;
        Ok(Response::new(row.into_proto()))
    }
}
