//! `ActivityService`: the append-only activity log about companies, contacts
//! and deals, listed by subject and time, and counted per UTC day.

use chrono::{DateTime, Utc};
use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, ApiResult, convert, parse};
use mosaic_db::{Database, TenantContext, create_once};
use mosaic_proto::StoredEnum;
use mosaic_proto::crm::{
    Activity, ActivityKind, DailyActivityCount, GetActivityCountsRequest,
    GetActivityCountsResponse, ListActivitiesRequest, ListActivitiesResponse, LogActivityRequest,
    activity_service_server::ActivityService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

use crate::ids::{ActivityId, CompanyId, ContactId, DealId};
use crate::{companies, contacts, deals};

pub(crate) mod storage;

const MAX_SUMMARY: usize = 1000;
/// Encoded size limit of `details`.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;
/// Longest range of GetActivityCounts, in days.
pub const MAX_COUNT_DAYS: i64 = 366;

/// The subjects an activity is about, or a listing filters by.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Subjects {
    company_id: Option<CompanyId>,
    contact_id: Option<ContactId>,
    deal_id: Option<DealId>,
}

impl Subjects {
    fn parse(at: &str, company: &str, contact: &str, deal: &str) -> ApiResult<Self> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let (company_id, contact_id, deal_id) = (
            parse::optional_id(&field("company_id"), company),
            parse::optional_id(&field("contact_id"), contact),
            parse::optional_id(&field("deal_id"), deal),
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
    fn parse(activity: &Activity) -> ApiResult<Self> {
        let subjects = Subjects::parse(
            "activity",
            &activity.company_id,
            &activity.contact_id,
            &activity.deal_id,
        );
        let (kind, subjects, occurred_at, summary, details) = (
            parse::enum_value::<ActivityKind>("activity.kind", activity.kind),
            subjects.and_then(|subjects| {
                if subjects.is_empty() {
                    Err(ApiError::invalid_argument(
                        "activity.company_id",
                        "at least one of company_id, contact_id, deal_id is required",
                    ))
                } else {
                    Ok(subjects)
                }
            }),
            parse::event_time("activity.occur_time", activity.occur_time.as_ref()),
            parse::text("activity.summary", activity.summary.trim(), MAX_SUMMARY),
            parse::json_object(
                "activity.details",
                activity.details.as_ref(),
                MAX_DETAILS_BYTES,
            ),
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
        let request = req.into_inner();
        let activity = request.activity.clone().unwrap_or_default();
        let (new, request_id) = (
            NewActivity::parse(&activity),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;

        let activity = create_once(
            &self.db,
            &ctx,
            "LogActivity",
            request_id,
            &request,
            async |tx| {
                let subjects = new.subjects;
                if let Some(id) = subjects.company_id {
                    companies::RESOURCE
                        .require_live(tx, id, "activity.company_id")
                        .await?;
                }
                if let Some(id) = subjects.contact_id {
                    contacts::RESOURCE
                        .require_live(tx, id, "activity.contact_id")
                        .await?;
                }
                if let Some(id) = subjects.deal_id {
                    deals::RESOURCE
                        .require_live(tx, id, "activity.deal_id")
                        .await?;
                }
                let id = ActivityId::new();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit(
                    "activity.log",
                    "activity",
                    id,
                    serde_json::json!({ "kind": new.kind.stored_name() }),
                )
                .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(activity))
    }

    async fn list_activities(
        &self,
        req: Request<ListActivitiesRequest>,
    ) -> Result<Response<ListActivitiesResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let time = |t: Option<prost_types::Timestamp>| {
            t.map(|at| format!("{}.{}", at.seconds, at.nanos))
                .unwrap_or_default()
        };
        let binding = PageBinding::new("ListActivities")
            .with(ctx.tenant_id()?)
            .with(&request.company_id)
            .with(&request.contact_id)
            .with(&request.deal_id)
            .with(request.kind)
            .with(time(request.start_time))
            .with(time(request.end_time));
        let (size, after, subjects, kind, start, end) = (
            parse::page_size("page_size", request.page_size),
            page::decode::<(DateTime<Utc>, ActivityId)>(&binding, &request.page_token),
            Subjects::parse(
                "",
                &request.company_id,
                &request.contact_id,
                &request.deal_id,
            ),
            parse::enum_or("kind", request.kind, ActivityKind::Unspecified),
            parse::optional_time("start_time", request.start_time.as_ref()),
            parse::optional_time("end_time", request.end_time.as_ref()),
        )
            .all_ok()?;
        if let (Some(start), Some(end)) = (start, end)
            && end < start
        {
            return Err(
                ApiError::invalid_argument("end_time", "must not be before start_time").into(),
            );
        }
        let filter = storage::ActivityFilter {
            subjects,
            kind: (kind != ActivityKind::Unspecified).then(|| kind.stored_name()),
            start,
            end,
        };
        let rows = self
            .db
            .read(&ctx, storage::list_page(&filter, after, size))
            .await?;
        let (activities, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |activity| (activity.occurred_at, activity.activity_id),
            storage::ActivityRow::into_proto,
        );
        Ok(Response::new(ListActivitiesResponse {
            activities,
            next_page_token,
        }))
    }

    async fn get_activity_counts(
        &self,
        req: Request<GetActivityCountsRequest>,
    ) -> Result<Response<GetActivityCountsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let (start, end, subjects) = (
            parse::date("start_date", &request.start_date),
            parse::date("end_date", &request.end_date),
            Subjects::parse(
                "",
                &request.company_id,
                &request.contact_id,
                &request.deal_id,
            ),
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
        let rows: Vec<storage::DayCount> = self
            .db
            .read(&ctx, storage::daily_counts(start, end, &subjects))
            .await?;
        Ok(Response::new(GetActivityCountsResponse {
            days: rows
                .into_iter()
                .map(|day| DailyActivityCount {
                    date: convert::date(day.day),
                    total_count: day.total,
                    email_count: day.email,
                    call_count: day.call,
                    meeting_count: day.meeting,
                    note_count: day.note,
                })
                .collect(),
        }))
    }
}
