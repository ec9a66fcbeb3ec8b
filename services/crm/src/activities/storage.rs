//! SQL of activities. Every statement names `tenant_id = $1` (RLS is the backstop).

use chrono::{DateTime, NaiveDate, Utc};
use mosaic_api::{ApiResult, convert};
use mosaic_db::{Constraint, TenantTx, db_error, db_error_with};
use mosaic_proto::crm::Activity;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{NewActivity, Subjects, kind_from, kind_name};

const SELECT: &str = "t.activity_id, t.kind, t.company_id, t.contact_id, t.deal_id, t.occurred_at, \
     t.summary, t.details, t.actor, t.created_at";

/// Backstops for the handler's live checks (a purge racing the insert).
const CONSTRAINTS: &[Constraint] = &[
    Constraint {
        name: "activities_company_fk",
        field: "activity.company_id",
        reason: "COMPANY_NOT_FOUND",
    },
    Constraint {
        name: "activities_contact_fk",
        field: "activity.contact_id",
        reason: "CONTACT_NOT_FOUND",
    },
    Constraint {
        name: "activities_deal_fk",
        field: "activity.deal_id",
        reason: "DEAL_NOT_FOUND",
    },
];

#[derive(Debug, sqlx::FromRow)]
pub struct ActivityRow {
    pub activity_id: Uuid,
    pub kind: String,
    pub company_id: Option<Uuid>,
    pub contact_id: Option<Uuid>,
    pub deal_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub summary: String,
    pub details: serde_json::Value,
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

fn id_text(id: Option<Uuid>) -> String {
    id.map(|i| i.to_string()).unwrap_or_default()
}

impl ActivityRow {
    pub fn into_proto(self) -> Activity {
        Activity {
            activity_id: self.activity_id.to_string(),
            kind: kind_from(&self.kind) as i32,
            company_id: id_text(self.company_id),
            contact_id: id_text(self.contact_id),
            deal_id: id_text(self.deal_id),
            occur_time: Some(convert::timestamp(self.occurred_at)),
            summary: self.summary,
            details: Some(convert::json_to_struct(&self.details)),
            creator: self.actor,
            create_time: Some(convert::timestamp(self.created_at)),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert(tx: &mut TenantTx, id: Uuid, a: &NewActivity) -> ApiResult<ActivityRow> {
    let tenant = tx.tenant_id();
    let actor = tx.ctx().principal().to_owned();
    sqlx::query_as(&format!(
        "INSERT INTO activities AS t (tenant_id, activity_id, kind, company_id, contact_id, deal_id, \
             occurred_at, summary, details, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(kind_name(a.kind))
    .bind(a.subjects.company_id)
    .bind(a.subjects.contact_id)
    .bind(a.subjects.deal_id)
    .bind(a.occurred_at)
    .bind(&a.summary)
    .bind(&a.details)
    .bind(actor)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// The checked filters of ListActivities.
#[derive(Debug)]
pub struct ActivityFilter {
    pub subjects: Subjects,
    pub kind: Option<&'static str>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

fn push_subjects(q: &mut QueryBuilder<Postgres>, s: &Subjects) {
    if let Some(id) = s.company_id {
        q.push(" AND t.company_id = ").push_bind(id);
    }
    if let Some(id) = s.contact_id {
        q.push(" AND t.contact_id = ").push_bind(id);
    }
    if let Some(id) = s.deal_id {
        q.push(" AND t.deal_id = ").push_bind(id);
    }
}

/// One page newest first by `(occurred_at, activity_id)` (the key of the
/// per-subject indexes), `limit + 1` rows; only the filters in use become SQL.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_page(
    tx: &mut TenantTx,
    f: &ActivityFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: u32,
) -> ApiResult<Vec<ActivityRow>> {
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {SELECT} FROM activities t WHERE t.tenant_id = "
    ));
    q.push_bind(tx.tenant_id());
    push_subjects(&mut q, &f.subjects);
    if let Some(kind) = f.kind {
        q.push(" AND t.kind = ").push_bind(kind);
    }
    if let Some(start) = f.start {
        q.push(" AND t.occurred_at >= ").push_bind(start);
    }
    if let Some(end) = f.end {
        q.push(" AND t.occurred_at < ").push_bind(end);
    }
    if let Some((at, id)) = after {
        q.push(" AND (t.occurred_at, t.activity_id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY t.occurred_at DESC, t.activity_id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    q.build_query_as()
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
}

#[derive(Debug, sqlx::FromRow)]
pub struct DayCount {
    pub day: NaiveDate,
    pub total: i64,
    pub email: i64,
    pub call: i64,
    pub meeting: i64,
    pub note: i64,
}

/// Counts per UTC day from `start` to `end` (both inclusive), every day
/// present. Days are cut in UTC explicitly, whatever the session time zone.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn daily_counts(
    tx: &mut TenantTx,
    start: NaiveDate,
    end: NaiveDate,
    s: &Subjects,
) -> ApiResult<Vec<DayCount>> {
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
        "WITH counts AS ( \
             SELECT (t.occurred_at AT TIME ZONE 'UTC')::date AS day, count(*) AS total, \
                    count(*) FILTER (WHERE t.kind = 'email') AS email, \
                    count(*) FILTER (WHERE t.kind = 'call') AS call, \
                    count(*) FILTER (WHERE t.kind = 'meeting') AS meeting, \
                    count(*) FILTER (WHERE t.kind = 'note') AS note \
             FROM activities t WHERE t.tenant_id = ",
    );
    q.push_bind(tx.tenant_id());
    q.push(" AND t.occurred_at >= (")
        .push_bind(start)
        .push("::date::timestamp AT TIME ZONE 'UTC')");
    q.push(" AND t.occurred_at < ((")
        .push_bind(end)
        .push("::date + 1)::timestamp AT TIME ZONE 'UTC')");
    push_subjects(&mut q, s);
    q.push(
        " GROUP BY 1) SELECT d.day::date AS day, COALESCE(c.total, 0) AS total, \
             COALESCE(c.email, 0) AS email, COALESCE(c.call, 0) AS call, \
             COALESCE(c.meeting, 0) AS meeting, COALESCE(c.note, 0) AS note \
         FROM generate_series(",
    );
    q.push_bind(start).push("::date, ").push_bind(end).push(
        "::date, interval '1 day') AS d(day) \
         LEFT JOIN counts c ON c.day = d.day::date ORDER BY 1",
    );
    q.build_query_as()
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
}
