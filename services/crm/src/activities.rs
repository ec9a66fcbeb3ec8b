//! `ActivityService`: the append-only activity log about companies, contacts
//! and deals, listed by subject and time, and counted per UTC day.

use chrono::{DateTime, Utc};
use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, ApiResult, validate};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::crm::{
    Activity, ActivityKind, DailyActivityCount, GetActivityCountsRequest,
    GetActivityCountsResponse, ListActivitiesRequest, ListActivitiesResponse, LogActivityRequest,
    activity_service_server::ActivityService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{companies, contacts, deals, fields, lifecycle};

pub(crate) mod storage;

const MAX_SUMMARY: usize = 1000;
/// Encoded size limit of `details`.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;
/// Longest range of GetActivityCounts, in days.
pub const MAX_COUNT_DAYS: i64 = 366;

const KINDS: &[(ActivityKind, &str)] = &[
    (ActivityKind::Email, "email"),
    (ActivityKind::Call, "call"),
    (ActivityKind::Meeting, "meeting"),
    (ActivityKind::Note, "note"),
];

fn kind_name(kind: ActivityKind) -> &'static str {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("note", |(_, n)| n)
}

fn kind_from(name: &str) -> ActivityKind {
    KINDS
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(ActivityKind::Unspecified, |(k, _)| *k)
}

/// The subjects an activity is about, or a listing filters by.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Subjects {
    company_id: Option<Uuid>,
    contact_id: Option<Uuid>,
    deal_id: Option<Uuid>,
}

impl Subjects {
    fn parse(at: &str, company: &str, contact: &str, deal: &str) -> ApiResult<Self> {
        let f = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let (company_id, contact_id, deal_id) = (
            fields::optional_id(&f("company_id"), company),
            fields::optional_id(&f("contact_id"), contact),
            fields::optional_id(&f("deal_id"), deal),
        )
            .all_ok()?;
        Ok(Self {
            company_id,
            contact_id,
            deal_id,
        })
    }

    fn is_empty(&self) -> bool {
        self.company_id.is_none() && self.contact_id.is_none() && self.deal_id.is_none()
    }
}

/// A checked new activity.
#[derive(Debug)]
pub(crate) struct NewActivity {
    kind: ActivityKind,
    subjects: Subjects,
    occurred_at: DateTime<Utc>,
    summary: String,
    details: serde_json::Value,
}

impl NewActivity {
    fn parse(a: &Activity) -> ApiResult<Self> {
        let (kind, subjects, occurred_at, summary, details) = (
            validate::enum_value::<ActivityKind>("activity.kind", a.kind),
            Subjects::parse("activity", &a.company_id, &a.contact_id, &a.deal_id).and_then(|s| {
                if s.is_empty() {
                    Err(ApiError::invalid_argument(
                        "activity.company_id",
                        "at least one of company_id, contact_id, deal_id is required",
                    ))
                } else {
                    Ok(s)
                }
            }),
            fields::event_time("activity.occur_time", a.occur_time.as_ref()),
            validate::text("activity.summary", a.summary.trim(), MAX_SUMMARY),
            fields::json_object("activity.details", a.details.as_ref(), MAX_DETAILS_BYTES),
        )
            .all_ok()?;
        Ok(Self {
            kind,
            subjects,
            occurred_at,
            summary,
            details,
        })
    }
}

#[derive(Debug)]
pub struct Activities {
    db: Database,
}

impl Activities {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl ActivityService for Activities {
    async fn log_activity(
        &self,
        req: Request<LogActivityRequest>,
    ) -> Result<Response<Activity>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.into_inner();
        let a = r.activity.clone().unwrap_or_default();
        let (new, request_id) = (
            NewActivity::parse(&a),
            validate::request_id("request_id", &r.request_id),
        )
            .all_ok()?;

        let activity =
            lifecycle::create_once(&self.db, &ctx, "LogActivity", request_id, &r, async |tx| {
                let s = new.subjects;
                if let Some(id) = s.company_id {
                    companies::RESOURCE
                        .require_live(tx, id, "activity.company_id")
                        .await?;
                }
                if let Some(id) = s.contact_id {
                    contacts::RESOURCE
                        .require_live(tx, id, "activity.contact_id")
                        .await?;
                }
                if let Some(id) = s.deal_id {
                    deals::RESOURCE
                        .require_live(tx, id, "activity.deal_id")
                        .await?;
                }
                let id = Uuid::now_v7();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit(
                    "activity.log",
                    "activity",
                    id,
                    serde_json::json!({ "kind": kind_name(new.kind) }),
                )
                .await?;
                Ok(row.into_proto())
            })
            .await?;
        Ok(Response::new(activity))
    }

    async fn list_activities(
        &self,
        req: Request<ListActivitiesRequest>,
    ) -> Result<Response<ListActivitiesResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let binding = PageBinding::new("ListActivities")
            .with(ctx.tenant_id()?)
            .with(&r.company_id)
            .with(&r.contact_id)
            .with(&r.deal_id)
            .with(r.kind)
            .with(
                r.start_time
                    .map(|t| format!("{}.{}", t.seconds, t.nanos))
                    .unwrap_or_default(),
            )
            .with(
                r.end_time
                    .map(|t| format!("{}.{}", t.seconds, t.nanos))
                    .unwrap_or_default(),
            );
        let (size, after, subjects, kind, start, end) = (
            validate::page_size("page_size", r.page_size),
            page::decode::<(DateTime<Utc>, Uuid)>(&binding, &r.page_token),
            Subjects::parse("", &r.company_id, &r.contact_id, &r.deal_id),
            validate::enum_or("kind", r.kind, ActivityKind::Unspecified),
            fields::optional_time("start_time", r.start_time.as_ref()),
            fields::optional_time("end_time", r.end_time.as_ref()),
        )
            .all_ok()?;
        if let (Some(s), Some(e)) = (start, end)
            && e < s
        {
            return Err(
                ApiError::invalid_argument("end_time", "must not be before start_time").into(),
            );
        }
        let filter = storage::ActivityFilter {
            subjects,
            kind: (kind != ActivityKind::Unspecified).then(|| kind_name(kind)),
            start,
            end,
        };
        let mut tx = self.db.begin(&ctx).await?;
        let rows = storage::list_page(&mut tx, &filter, after, size).await?;
        tx.finish_read();
        let (rows, next_page_token) =
            page::split_page(rows, size, &binding, |a| (a.occurred_at, a.activity_id));
        Ok(Response::new(ListActivitiesResponse {
            activities: rows
                .into_iter()
                .map(storage::ActivityRow::into_proto)
                .collect(),
            next_page_token,
        }))
    }

    async fn get_activity_counts(
        &self,
        req: Request<GetActivityCountsRequest>,
    ) -> Result<Response<GetActivityCountsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let (start, end, subjects) = (
            fields::date("start_date", &r.start_date),
            fields::date("end_date", &r.end_date),
            Subjects::parse("", &r.company_id, &r.contact_id, &r.deal_id),
        )
            .all_ok()?;
        let days = (end - start).num_days() + 1;
        if days < 1 {
            return Err(
                ApiError::invalid_argument("end_date", "must not be before start_date").into(),
            );
        }
        if days > MAX_COUNT_DAYS {
            return Err(ApiError::invalid_argument(
                "end_date",
                format!("the range spans at most {MAX_COUNT_DAYS} days"),
            )
            .into());
        }
        let mut tx = self.db.begin(&ctx).await?;
        let rows = storage::daily_counts(&mut tx, start, end, &subjects).await?;
        tx.finish_read();
        Ok(Response::new(GetActivityCountsResponse {
            days: rows
                .into_iter()
                .map(|d| DailyActivityCount {
                    date: fields::format_date(d.day),
                    total_count: d.total,
                    email_count: d.email,
                    call_count: d.call,
                    meeting_count: d.meeting,
                    note_count: d.note,
                })
                .collect(),
        }))
    }
}
