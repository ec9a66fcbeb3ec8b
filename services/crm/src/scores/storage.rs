//! SQL of scores. Every statement names `tenant_id = $1` (RLS is the backstop).

use chrono::{DateTime, Utc};
use mosaic_api::{ApiResult, convert};
use mosaic_db::{Constraint, Select, TenantTx, db_error_with};
use mosaic_proto::crm::Score;

use super::NewScore;
use crate::ids::CompanyId;

const SELECT: &str =
    "t.company_id, t.fit, t.intent, t.composite, t.model_version, t.computed_at, t.updated_at";

/// Backstop for the handler's live check (a purge racing the upsert).
const CONSTRAINTS: &[Constraint] = &[Constraint {
    name: "scores_company_fk",
    field: "scores.company_id",
    reason: "COMPANY_NOT_FOUND",
}];

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ScoreRow {
    pub(crate) company_id: CompanyId,
    pub(crate) fit: i16,
    pub(crate) intent: i16,
    pub(crate) composite: i16,
    pub(crate) model_version: String,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) computed_at: DateTime<Utc>,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) updated_at: DateTime<Utc>,
}

impl ScoreRow {
    pub(crate) fn into_proto(self) -> Score {
        Score {
            company_id: self.company_id.to_string(),
            fit: i32::from(self.fit),
            intent: i32::from(self.intent),
            composite: i32::from(self.composite),
            model_version: self.model_version,
            compute_time: Some(convert::timestamp(self.computed_at)),
            update_time: Some(convert::timestamp(self.updated_at)),
        }
    }
}

/// A score an upsert wrote, and whether it created it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Written {
    #[sqlx(flatten)]
    pub(crate) row: ScoreRow,
    pub(crate) created: bool,
}

/// Upserts the batch in one statement (distinct companies). The `WHERE` on
/// `DO UPDATE` skips entries older than the stored score, so they come back
/// neither created nor updated: stale. Rows go in company order so
/// concurrent batches lock in the same order.
#[tracing::instrument(level = "debug", skip_all, fields(rows = batch.len()))]
pub(crate) async fn upsert(tx: &mut TenantTx, batch: &[NewScore]) -> ApiResult<Vec<Written>> {
    let mut sorted: Vec<&NewScore> = batch.iter().collect();
    sorted.sort_by_key(|score| score.company_id);
    let n = sorted.len();
    let (mut ids, mut fits, mut intents, mut composites, mut models, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for score in sorted {
        ids.push(score.company_id);
        fits.push(score.fit);
        intents.push(score.intent);
        composites.push(score.composite);
        models.push(score.model_version.as_str());
        times.push(score.computed_at);
    }
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO scores AS t (tenant_id, company_id, fit, intent, composite, model_version, computed_at) \
         SELECT $1, u.* FROM UNNEST($2::uuid[], $3::smallint[], $4::smallint[], $5::smallint[], \
                                    $6::text[], $7::timestamptz[]) \
             AS u(company_id, fit, intent, composite, model_version, computed_at) \
         ON CONFLICT (tenant_id, company_id) DO UPDATE SET \
             fit = EXCLUDED.fit, intent = EXCLUDED.intent, composite = EXCLUDED.composite, \
             model_version = EXCLUDED.model_version, computed_at = EXCLUDED.computed_at, \
             updated_at = now() \
         WHERE t.computed_at <= EXCLUDED.computed_at \
         RETURNING {SELECT}, (t.xmax = 0) AS created"
    ))
    .bind(tenant)
    .bind(&ids)
    .bind(&fits)
    .bind(&intents)
    .bind(&composites)
    .bind(&models)
    .bind(&times)
    .fetch_all(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

pub(crate) fn get(company: CompanyId) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM scores t WHERE t.tenant_id = $tenant AND t.company_id = "
    ));
    sql.push_bind(company.uuid());
    sql
}
