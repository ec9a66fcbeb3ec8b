//! `ScoreService`: fit, intent and composite scores, one row per company,
//! written in batches by scoring jobs and read one company at a time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mosaic_api::{AllOk, ApiResult, Violations, validate};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::crm::{
    GetScoreRequest, Score, UpsertScoresRequest, UpsertScoresResponse,
    score_service_server::ScoreService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{companies, fields};

pub(crate) mod storage;

/// Most entries per UpsertScores call.
pub const MAX_BATCH: usize = 1000;
const MAX_MODEL_VERSION: usize = 64;

/// A checked score entry.
#[derive(Debug)]
pub(crate) struct NewScore {
    company_id: Uuid,
    fit: i16,
    intent: i16,
    composite: i16,
    model_version: String,
    computed_at: DateTime<Utc>,
}

impl NewScore {
    fn parse(s: &Score, at: &str) -> ApiResult<Self> {
        let f = |name: &str| format!("{at}.{name}");
        let score = |name: &str, v: i32| fields::int_range(&f(name), v, 0, 100).map(|v| v as i16);
        let (company_id, fit, intent, composite, model_version, computed_at) = (
            validate::id(&f("company_id"), &s.company_id),
            score("fit", s.fit),
            score("intent", s.intent),
            score("composite", s.composite),
            validate::text(
                &f("model_version"),
                s.model_version.trim(),
                MAX_MODEL_VERSION,
            ),
            fields::event_time_or_now(&f("compute_time"), s.compute_time.as_ref()),
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
        fields::batch_len("scores", raw.len(), MAX_BATCH)?;
        let mut violations = Violations::new();
        let mut seen: HashMap<Uuid, usize> = HashMap::with_capacity(raw.len());
        let mut batch = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let at = format!("scores[{i}]");
            let Some(score) = violations.take(NewScore::parse(s, &at)) else {
                continue;
            };
            // One statement cannot update the same row twice.
            if let Some(first) = seen.insert(score.company_id, i) {
                violations.add(
                    format!("{at}.company_id"),
                    format!("repeats scores[{first}].company_id"),
                );
            }
            batch.push(score);
        }
        violations.finish()?;

        let mut tx = self.db.begin(&ctx).await?;
        let ids: Vec<Uuid> = batch.iter().map(|s| s.company_id).collect();
        let live = companies::RESOURCE.live_ids(&mut tx, &ids).await?;
        if let Some(i) = ids.iter().position(|id| !live.contains(id)) {
            return Err(companies::RESOURCE
                .not_found_at(&format!("scores[{i}].company_id"))
                .into());
        }
        let written = storage::upsert(&mut tx, &batch).await?;
        // One event per score written, under its company's id (a score has no
        // other); stale entries changed nothing.
        let created: Vec<Uuid> = written
            .iter()
            .filter(|r| r.1)
            .map(|r| r.0.company_id)
            .collect();
        let updated: Vec<Uuid> = written
            .iter()
            .filter(|r| !r.1)
            .map(|r| r.0.company_id)
            .collect();
        tx.audit_many("score.create", "score", &created, serde_json::json!({}))
            .await?;
        tx.audit_many("score.update", "score", &updated, serde_json::json!({}))
            .await?;
        let (created, updated) = (created.len(), updated.len());
        let stale = batch.len() - written.len();
        tx.commit().await?;

        let mut by_company: HashMap<Uuid, Score> = written
            .into_iter()
            .map(|(row, _)| (row.company_id, row.into_proto()))
            .collect();
        let scores = ids.iter().filter_map(|id| by_company.remove(id)).collect();
        Ok(Response::new(UpsertScoresResponse {
            scores,
            created_count: created as i32,
            updated_count: updated as i32,
            stale_count: stale as i32,
        }))
    }

    async fn get_score(&self, req: Request<GetScoreRequest>) -> Result<Response<Score>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = validate::id("company_id", &req.get_ref().company_id)?;
        let mut tx = self.db.begin(&ctx).await?;
        let row = storage::get(&mut tx, id).await?;
        tx.finish_read();
        let row = row.ok_or_else(|| {
            mosaic_api::ApiError::not_found("SCORE_NOT_FOUND", "the company has no scores")
        })?;
        Ok(Response::new(row.into_proto()))
    }
}
