//! SQL of activities. Every statement names `tenant_id = $1` (RLS is the backstop).

use chrono::{DateTime, NaiveDate, Utc};
use mosaic_api::{ApiResult, convert};
use mosaic_db::{Constraint, Select, TenantTx, db_error_with};
use mosaic_proto::StoredEnum;
use mosaic_proto::crm::{Activity, ActivityKind};

use super::{NewActivity, Subjects};
use crate::ids::{ActivityId, CompanyId, ContactId, DealId};

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
pub(crate) struct ActivityRow {
    pub(crate) activity_id: ActivityId,
    pub(crate) kind: String,
    pub(crate) company_id: Option<CompanyId>,
    pub(crate) contact_id: Option<ContactId>,
    pub(crate) deal_id: Option<DealId>,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) summary: String,
    pub(crate) details: serde_json::Value,
    pub(crate) actor: String,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) created_at: DateTime<Utc>,
}

fn id_text(id: Option<impl ToString>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

impl ActivityRow {
    pub(crate) fn into_proto(self) -> Activity {
        let kind = ActivityKind::from_stored(&self.kind).unwrap_or(ActivityKind::Unspecified);
        Activity {
            activity_id: self.activity_id.to_string(),
            kind: kind as i32,
            company_id: id_text(self.company_id),
            contact_id: id_text(self.contact_id),
            deal_id: id_text(self.deal_id),
            occur_time: Some(convert::timestamp(self.occurred_at)),
            summary: self.summary,
            details: Some(convert::json_to_struct(self.details)),
            creator: self.actor,
            create_time: Some(convert::timestamp(self.created_at)),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: ActivityId,
    activity: &NewActivity,
) -> ApiResult<ActivityRow> {
    let tenant = tx.tenant_id();
    let actor = tx.ctx().principal().to_owned();
    sqlx::query_as(&format!(
        "INSERT INTO activities AS t (tenant_id, activity_id, kind, company_id, contact_id, deal_id, \
             occurred_at, summary, details, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(activity.kind.stored_name())
    .bind(activity.subjects.company_id)
    .bind(activity.subjects.contact_id)
    .bind(activity.subjects.deal_id)
    .bind(activity.occurred_at)
    .bind(&activity.summary)
    .bind(&activity.details)
    .bind(actor)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// The checked filters of ListActivities.
#[derive(Debug)]
pub(crate) struct ActivityFilter {
    pub(crate) subjects: Subjects,
    pub(crate) kind: Option<&'static str>,
    pub(crate) start: Option<DateTime<Utc>>,
    pub(crate) end: Option<DateTime<Utc>>,
}

fn push_subjects(sql: &mut Select, subjects: &Subjects) {
    if let Some(id) = subjects.company_id {
        sql.push(" AND t.company_id = ").push_bind(id.uuid());
    }
    if let Some(id) = subjects.contact_id {
        sql.push(" AND t.contact_id = ").push_bind(id.uuid());
    }
    if let Some(id) = subjects.deal_id {
        sql.push(" AND t.deal_id = ").push_bind(id.uuid());
    }
}

/// One page newest first by `(occurred_at, activity_id)` (the key of the
/// per-subject indexes), `limit + 1` rows; only the filters in use become SQL.
pub(crate) fn list_page(
    filter: &ActivityFilter,
    after: Option<(DateTime<Utc>, ActivityId)>,
    limit: u32,
) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM activities t WHERE t.tenant_id = $tenant"
    ));
    push_subjects(&mut sql, &filter.subjects);
    if let Some(kind) = filter.kind {
        sql.push(" AND t.kind = ").push_bind(kind);
    }
    if let Some(start) = filter.start {
        sql.push(" AND t.occurred_at >= ").push_bind(start);
    }
    if let Some(end) = filter.end {
        sql.push(" AND t.occurred_at < ").push_bind(end);
    }
    if let Some((at, id)) = after {
        sql.push(" AND (t.occurred_at, t.activity_id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id.uuid())
            .push(")");
    }
    sql.push(" ORDER BY t.occurred_at DESC, t.activity_id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    sql
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DayCount {
    pub(crate) day: NaiveDate,
    pub(crate) total: i64,
    pub(crate) email: i64,
    pub(crate) call: i64,
    pub(crate) meeting: i64,
    pub(crate) note: i64,
}

/// Counts per UTC day from `start` to `end` (both inclusive), every day
/// present. Days are cut in UTC explicitly, whatever the session time zone.
pub(crate) fn daily_counts(start: NaiveDate, end: NaiveDate, subjects: &Subjects) -> Select {
    let mut sql = Select::new(
        "WITH counts AS ( \
             SELECT (t.occurred_at AT TIME ZONE 'UTC')::date AS day, count(*) AS total, \
                    count(*) FILTER (WHERE t.kind = 'email') AS email, \
                    count(*) FILTER (WHERE t.kind = 'call') AS call, \
                    count(*) FILTER (WHERE t.kind = 'meeting') AS meeting, \
                    count(*) FILTER (WHERE t.kind = 'note') AS note \
             FROM activities t WHERE t.tenant_id = $tenant",
    );
    sql.push(" AND t.occurred_at >= (")
        .push_bind(start)
        .push("::date::timestamp AT TIME ZONE 'UTC')");
    sql.push(" AND t.occurred_at < ((")
        .push_bind(end)
        .push("::date + 1)::timestamp AT TIME ZONE 'UTC')");
    push_subjects(&mut sql, subjects);
    sql.push(
        " GROUP BY 1) SELECT d.day::date AS day, COALESCE(c.total, 0) AS total, \
             COALESCE(c.email, 0) AS email, COALESCE(c.call, 0) AS call, \
             COALESCE(c.meeting, 0) AS meeting, COALESCE(c.note, 0) AS note \
         FROM generate_series(",
    );
    sql.push_bind(start).push("::date, ").push_bind(end).push(
        "::date, interval '1 day') AS d(day) \
         LEFT JOIN counts c ON c.day = d.day::date ORDER BY 1",
    );
    sql
}
