//! `DealService`: standard methods, contact links (many-to-many) and the
//! pipeline summary.

use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, validate};
use mosaic_db::{Database, TenantContext, TenantTx};
use mosaic_proto::crm::{
    CreateDealRequest, CurrencyTotal, Deal, DealStage, DeleteDealRequest, GetDealRequest,
    GetPipelineSummaryRequest, GetPipelineSummaryResponse, LinkDealContactRequest,
    ListDealsRequest, ListDealsResponse, PipelineStageSummary, UndeleteDealRequest,
    UnlinkDealContactRequest, UpdateDealRequest, deal_service_server::DealService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::lifecycle::{self, Resource, masked};
use crate::{companies, contacts, fields};

pub(crate) mod storage;

pub(crate) const RESOURCE: Resource = Resource {
    table: "deals",
    id_column: "deal_id",
    kind: "deal",
    not_found: "DEAL_NOT_FOUND",
    deleted: "DEAL_DELETED",
    select: storage::SELECT,
    constraints: &[],
};

const MAX_NAME: usize = 200;
/// Most contacts linked to one deal.
pub const MAX_LINKED_CONTACTS: i64 = 100;
const PATHS: &[&str] = &[
    "company_id",
    "primary_contact_id",
    "display_name",
    "stage",
    "probability",
    "value_minor",
    "currency_code",
    "expected_close_date",
];

/// Pipeline order; also the stored names.
const STAGES: &[(DealStage, &str)] = &[
    (DealStage::Lead, "lead"),
    (DealStage::Qualified, "qualified"),
    (DealStage::Proposal, "proposal"),
    (DealStage::Negotiation, "negotiation"),
    (DealStage::ClosedWon, "closed_won"),
    (DealStage::ClosedLost, "closed_lost"),
];

fn stage_name(stage: DealStage) -> &'static str {
    STAGES
        .iter()
        .find(|(s, _)| *s == stage)
        .map_or("lead", |(_, n)| n)
}

fn stage_from(name: &str) -> DealStage {
    STAGES
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(DealStage::Unspecified, |(s, _)| *s)
}

/// The writable fields of a deal, checked.
#[derive(Debug, Clone)]
pub(crate) struct DealFields {
    company_id: Uuid,
    primary_contact_id: Option<Uuid>,
    display_name: String,
    stage: DealStage,
    probability: i16,
    value_minor: i64,
    currency_code: String,
    expected_close_date: Option<chrono::NaiveDate>,
}

/// The fields an update mask names, parsed (`None`: not named).
#[derive(Debug, Default)]
struct DealPatch {
    company_id: Option<Uuid>,
    primary_contact_id: Option<Option<Uuid>>,
    display_name: Option<String>,
    stage: Option<DealStage>,
    probability: Option<i16>,
    value_minor: Option<i64>,
    currency_code: Option<String>,
    expected_close_date: Option<Option<chrono::NaiveDate>>,
}

impl DealPatch {
    /// Parses the fields of `d` that `wanted` names. On create an unset
    /// stage means `lead`; on update a named stage must be set.
    fn parse(d: &Deal, wanted: impl Fn(&str) -> bool, creating: bool) -> ApiResult<Self> {
        let (
            company_id,
            primary_contact_id,
            display_name,
            stage,
            probability,
            value_minor,
            currency_code,
            expected_close_date,
        ) = (
            masked(wanted("company_id"), || {
                validate::id("deal.company_id", &d.company_id)
            }),
            masked(wanted("primary_contact_id"), || {
                fields::optional_id("deal.primary_contact_id", &d.primary_contact_id)
            }),
            masked(wanted("display_name"), || {
                validate::name("deal.display_name", &d.display_name, MAX_NAME)
            }),
            masked(wanted("stage"), || {
                if creating {
                    validate::enum_or("deal.stage", d.stage, DealStage::Lead)
                } else {
                    validate::enum_value("deal.stage", d.stage)
                }
            }),
            masked(wanted("probability"), || {
                fields::int_range("deal.probability", d.probability, 0, 100).map(|p| p as i16)
            }),
            masked(wanted("value_minor"), || {
                fields::value_minor("deal.value_minor", d.value_minor)
            }),
            masked(wanted("currency_code"), || {
                fields::currency("deal.currency_code", &d.currency_code)
            }),
            masked(wanted("expected_close_date"), || {
                fields::optional_date("deal.expected_close_date", &d.expected_close_date)
            }),
        )
            .all_ok()?;
        Ok(Self {
            company_id,
            primary_contact_id,
            display_name,
            stage,
            probability,
            value_minor,
            currency_code,
            expected_close_date,
        })
    }

    fn apply(self, mut to: DealFields) -> DealFields {
        if let Some(v) = self.company_id {
            to.company_id = v;
        }
        if let Some(v) = self.primary_contact_id {
            to.primary_contact_id = v;
        }
        if let Some(v) = self.display_name {
            to.display_name = v;
        }
        if let Some(v) = self.stage {
            to.stage = v;
        }
        if let Some(v) = self.probability {
            to.probability = v;
        }
        if let Some(v) = self.value_minor {
            to.value_minor = v;
        }
        if let Some(v) = self.currency_code {
            to.currency_code = v;
        }
        if let Some(v) = self.expected_close_date {
            to.expected_close_date = v;
        }
        to
    }

    /// A whole new deal. Every field was named, so every one is present.
    fn into_new(self) -> ApiResult<DealFields> {
        let missing = || ApiError::internal("a parsed deal lacks a field");
        Ok(DealFields {
            company_id: self.company_id.ok_or_else(missing)?,
            primary_contact_id: self.primary_contact_id.ok_or_else(missing)?,
            display_name: self.display_name.ok_or_else(missing)?,
            stage: self.stage.ok_or_else(missing)?,
            probability: self.probability.ok_or_else(missing)?,
            value_minor: self.value_minor.ok_or_else(missing)?,
            currency_code: self.currency_code.ok_or_else(missing)?,
            expected_close_date: self.expected_close_date.ok_or_else(missing)?,
        })
    }
}

/// NOT_FOUND unless the deal's company (and primary contact, if any) are
/// live rows of this tenant. The composite FKs would stop another tenant's
/// ids anyway; this also refuses soft-deleted ones and names the field.
async fn check_references(
    tx: &mut TenantTx,
    f: &DealFields,
    company: bool,
    contact: bool,
) -> ApiResult<()> {
    if company {
        companies::RESOURCE
            .require_live(tx, f.company_id, "deal.company_id")
            .await?;
    }
    if contact && let Some(c) = f.primary_contact_id {
        // A shared lock: DeleteContact clears this reference and must see it.
        contacts::RESOURCE
            .require_live_shared(tx, c, "deal.primary_contact_id")
            .await?;
    }
    Ok(())
}

#[derive(Debug)]
pub struct Deals {
    db: Database,
}

impl Deals {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl DealService for Deals {
    async fn create_deal(&self, req: Request<CreateDealRequest>) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.into_inner();
        let d = r.deal.clone().unwrap_or_default();
        let (patch, request_id) = (
            DealPatch::parse(&d, |_| true, true),
            validate::request_id("request_id", &r.request_id),
        )
            .all_ok()?;
        let new = patch.into_new()?;

        let deal =
            lifecycle::create_once(&self.db, &ctx, "CreateDeal", request_id, &r, async |tx| {
                check_references(tx, &new, true, true).await?;
                let id = Uuid::now_v7();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit(
                    "deal.create",
                    "deal",
                    id,
                    serde_json::json!({ "stage": stage_name(new.stage) }),
                )
                .await?;
                Ok(row.into_proto())
            })
            .await?;
        Ok(Response::new(deal))
    }

    async fn get_deal(&self, req: Request<GetDealRequest>) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = validate::id("deal_id", &req.get_ref().deal_id)?;
        let row: storage::DealRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_deals(
        &self,
        req: Request<ListDealsRequest>,
    ) -> Result<Response<ListDealsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let binding = PageBinding::new("ListDeals")
            .with(ctx.tenant_id()?)
            .with(r.show_deleted)
            .with(&r.company_id)
            .with(r.stage);
        let (size, after, company, stage) = (
            validate::page_size("page_size", r.page_size),
            page::decode::<Uuid>(&binding, &r.page_token),
            fields::optional_id("company_id", &r.company_id),
            validate::enum_or("stage", r.stage, DealStage::Unspecified),
        )
            .all_ok()?;
        let stage = (stage != DealStage::Unspecified).then(|| stage_name(stage));
        let mut tx = self.db.begin(&ctx).await?;
        let rows = storage::list_page(&mut tx, r.show_deleted, company, stage, after, size).await?;
        tx.finish_read();
        let (rows, next_page_token) = page::split_page(rows, size, &binding, |d| d.deal_id);
        Ok(Response::new(ListDealsResponse {
            deals: rows.into_iter().map(storage::DealRow::into_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_deal(&self, req: Request<UpdateDealRequest>) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.into_inner();
        let d = r.deal.unwrap_or_default();
        let mask = UpdateMask::parse(r.update_mask.as_ref(), PATHS)?;
        let (id, expected, patch) = (
            validate::id("deal.deal_id", &d.deal_id),
            etag::parse("deal.etag", &d.etag),
            DealPatch::parse(&d, |p| mask.contains(p), false),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        let current: storage::DealRow = RESOURCE.get_for_update(&mut tx, id).await?;
        lifecycle::check_writable(
            &RESOURCE,
            current.revision,
            current.deleted_at.is_some(),
            expected,
        )?;
        let before = current.fields();
        let merged = patch.apply(before.clone());
        check_references(
            &mut tx,
            &merged,
            merged.company_id != before.company_id,
            merged.primary_contact_id != before.primary_contact_id,
        )
        .await?;
        let row = storage::update(&mut tx, id, &merged).await?;
        let changed: Vec<&str> = PATHS.iter().copied().filter(|p| mask.contains(p)).collect();
        tx.audit(
            "deal.update",
            "deal",
            id,
            serde_json::json!({ "fields": changed }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_deal(&self, req: Request<DeleteDealRequest>) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let r = req.get_ref();
        let (id, expected) = (
            validate::id("deal_id", &r.deal_id),
            etag::parse("etag", &r.etag),
        )
            .all_ok()?;
        RESOURCE
            .delete_or_undelete::<storage::DealRow>(&self.db, &ctx, id, expected, true)
            .await
            .map(|row| Response::new(row.into_proto()))
            .map_err(Into::into)
    }

    async fn undelete_deal(
        &self,
        req: Request<UndeleteDealRequest>,
    ) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let id = validate::id("deal_id", &req.get_ref().deal_id)?;
        RESOURCE
            .delete_or_undelete::<storage::DealRow>(&self.db, &ctx, id, None, false)
            .await
            .map(|row| Response::new(row.into_proto()))
            .map_err(Into::into)
    }

    async fn link_deal_contact(
        &self,
        req: Request<LinkDealContactRequest>,
    ) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.get_ref();
        let (deal, contact) = (
            validate::id("deal_id", &r.deal_id),
            validate::id("contact_id", &r.contact_id),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        // Locking the deal serialises links to it, so the limit holds.
        let current: storage::DealRow = RESOURCE.get_for_update(&mut tx, deal).await?;
        lifecycle::check_writable(
            &RESOURCE,
            current.revision,
            current.deleted_at.is_some(),
            None,
        )?;
        // A shared lock: DeleteContact removes links and must see this one.
        contacts::RESOURCE
            .require_live_shared(&mut tx, contact, "contact_id")
            .await?;
        if current.contact_ids.contains(&contact) {
            tx.finish_read();
            return Ok(Response::new(current.into_proto()));
        }
        if current.contact_ids.len() as i64 >= MAX_LINKED_CONTACTS {
            return Err(ApiError::failed_precondition(
                "DEAL_CONTACT_LIMIT",
                format!("a deal links at most {MAX_LINKED_CONTACTS} contacts"),
            )
            .into());
        }
        storage::link(&mut tx, deal, contact).await?;
        let row = storage::touch(&mut tx, deal).await?;
        tx.audit(
            "deal.link_contact",
            "deal",
            deal,
            serde_json::json!({ "contact_id": contact }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn unlink_deal_contact(
        &self,
        req: Request<UnlinkDealContactRequest>,
    ) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.get_ref();
        let (deal, contact) = (
            validate::id("deal_id", &r.deal_id),
            validate::id("contact_id", &r.contact_id),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        let current: storage::DealRow = RESOURCE.get_for_update(&mut tx, deal).await?;
        lifecycle::check_writable(
            &RESOURCE,
            current.revision,
            current.deleted_at.is_some(),
            None,
        )?;
        if !storage::unlink(&mut tx, deal, contact).await? {
            return Err(ApiError::not_found(
                "DEAL_CONTACT_NOT_LINKED",
                "the contact is not linked to the deal",
            )
            .into());
        }
        let row = storage::touch(&mut tx, deal).await?;
        tx.audit(
            "deal.unlink_contact",
            "deal",
            deal,
            serde_json::json!({ "contact_id": contact }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn get_pipeline_summary(
        &self,
        req: Request<GetPipelineSummaryRequest>,
    ) -> Result<Response<GetPipelineSummaryResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let company = fields::optional_id("company_id", &req.get_ref().company_id)?;
        let mut tx = self.db.begin(&ctx).await?;
        let rows = storage::pipeline(&mut tx, company).await?;
        tx.finish_read();

        let stages = STAGES
            .iter()
            .map(|(stage, name)| {
                let totals: Vec<CurrencyTotal> = rows
                    .iter()
                    .filter(|r| r.stage == *name)
                    .map(|r| CurrencyTotal {
                        currency_code: r.currency_code.clone(),
                        value_minor: r.value_minor,
                        deal_count: r.deal_count,
                    })
                    .collect();
                PipelineStageSummary {
                    stage: *stage as i32,
                    deal_count: totals.iter().map(|t| t.deal_count).sum(),
                    totals,
                }
            })
            .collect();
        Ok(Response::new(GetPipelineSummaryResponse { stages }))
    }
}
