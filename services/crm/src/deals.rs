//! `DealService`: standard methods, contact links (many-to-many) and the
//! pipeline summary.

use std::marker::PhantomData;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::{Kind, masked};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, parse};
use mosaic_db::{Database, HasMeta, Resource, TenantContext, TenantTx, create_once};
use mosaic_proto::StoredEnum;
use mosaic_proto::crm::{
    CreateDealRequest, CurrencyTotal, Deal, DealStage, DeleteDealRequest, GetDealRequest,
    GetPipelineSummaryRequest, GetPipelineSummaryResponse, LinkDealContactRequest,
    ListDealsRequest, ListDealsResponse, PipelineStageSummary, UndeleteDealRequest,
    UnlinkDealContactRequest, UpdateDealRequest, deal_service_server::DealService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

use crate::ids::{CompanyId, ContactId, DealId};
use crate::{companies, contacts};

pub(crate) mod storage;

pub(crate) const RESOURCE: Resource<DealId> = Resource {
    kind: Kind {
        name: "deal",
        not_found: "DEAL_NOT_FOUND",
        deleted: "DEAL_DELETED",
    },
    table: "deals",
    id_column: "deal_id",
    select: storage::SELECT,
    constraints: storage::CONSTRAINTS,
    id: PhantomData,
};

const MAX_NAME: usize = 200;
/// Most contacts linked to one deal.
pub const MAX_LINKED_CONTACTS: i64 = 100;
mosaic_api::patch! {
    /// The writable fields of a deal, checked. Their names are the paths an
    /// update mask may name.
    pub(crate) struct DealFields / DealPatch {
        company_id: CompanyId,
        primary_contact_id: Option<ContactId>,
        display_name: String,
        stage: DealStage,
        probability: i16,
        value_minor: i64,
        currency_code: String,
        expected_close_date: Option<chrono::NaiveDate>,
    }
}

impl DealPatch {
    /// Parses the fields of `deal` that `wanted` names. On create an unset
    /// stage means `lead`; on update a named stage must be set.
    fn parse(deal: &Deal, wanted: impl Fn(&str) -> bool, creating: bool) -> ApiResult<Self> {
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
                parse::id("deal.company_id", &deal.company_id)
            }),
            masked(wanted("primary_contact_id"), || {
                parse::optional_id("deal.primary_contact_id", &deal.primary_contact_id)
            }),
            masked(wanted("display_name"), || {
                parse::name("deal.display_name", &deal.display_name, MAX_NAME)
            }),
            masked(wanted("stage"), || {
                if creating {
                    parse::enum_or("deal.stage", deal.stage, DealStage::Lead)
                } else {
                    parse::enum_value("deal.stage", deal.stage)
                }
            }),
            masked(wanted("probability"), || {
                parse::int_range("deal.probability", deal.probability, 0, 100)
                    .map(|percent| percent as i16)
            }),
            masked(wanted("value_minor"), || {
                parse::money_minor("deal.value_minor", deal.value_minor)
            }),
            masked(wanted("currency_code"), || {
                parse::currency("deal.currency_code", &deal.currency_code)
            }),
            masked(wanted("expected_close_date"), || {
                parse::optional_date("deal.expected_close_date", &deal.expected_close_date)
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
}

/// NOT_FOUND unless the deal's company (and primary contact, if any) are
/// live rows of this tenant. The composite FKs would stop another tenant's
/// ids anyway; this also refuses soft-deleted ones and names the field.
async fn check_references(
    tx: &mut TenantTx,
    fields: &DealFields,
    company: bool,
    contact: bool,
) -> ApiResult<()> {
    if company {
        companies::RESOURCE
            .require_live(tx, fields.company_id, "deal.company_id")
            .await?;
    }
    if contact && let Some(primary) = fields.primary_contact_id {
        // A shared lock: DeleteContact clears this reference and must see it.
        contacts::RESOURCE
            .require_live_shared(tx, primary, "deal.primary_contact_id")
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
        let request = req.into_inner();
        let deal = request.deal.clone().unwrap_or_default();
        let (patch, request_id) = (
            DealPatch::parse(&deal, |_| true, true),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        let new = patch.into_new()?;

        let deal = create_once(
            &self.db,
            &ctx,
            "CreateDeal",
            request_id,
            &request,
            async |tx| {
                check_references(tx, &new, true, true).await?;
                let id = DealId::new();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit(
                    "deal.create",
                    "deal",
                    id,
                    serde_json::json!({ "stage": new.stage.stored_name() }),
                )
                .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(deal))
    }

    async fn get_deal(&self, req: Request<GetDealRequest>) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = parse::id("deal_id", &req.get_ref().deal_id)?;
        let row: storage::DealRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_deals(
        &self,
        req: Request<ListDealsRequest>,
    ) -> Result<Response<ListDealsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let binding = PageBinding::new("ListDeals")
            .with(ctx.tenant_id()?)
            .with(request.show_deleted)
            .with(&request.company_id)
            .with(request.stage);
        let (size, after, company, stage) = (
            parse::page_size("page_size", request.page_size),
            page::decode::<DealId>(&binding, &request.page_token),
            parse::optional_id("company_id", &request.company_id),
            parse::enum_or("stage", request.stage, DealStage::Unspecified),
        )
            .all_ok()?;
        let stage = (stage != DealStage::Unspecified).then(|| stage.stored_name());
        let rows = self
            .db
            .read(
                &ctx,
                storage::list_page(request.show_deleted, company, stage, after, size),
            )
            .await?;
        let (deals, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |deal| deal.deal_id,
            storage::DealRow::into_proto,
        );
        Ok(Response::new(ListDealsResponse {
            deals,
            next_page_token,
        }))
    }

    async fn update_deal(&self, req: Request<UpdateDealRequest>) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let deal = request.deal.unwrap_or_default();
        let mask = UpdateMask::parse(request.update_mask.as_ref(), DealPatch::PATHS)?;
        let (id, expected, patch) = (
            parse::id("deal.deal_id", &deal.deal_id),
            etag::parse("deal.etag", &deal.etag),
            DealPatch::parse(&deal, |path| mask.contains(path), false),
        )
            .all_ok()?;
        let row = RESOURCE
            .update(
                &self.db,
                &ctx,
                id,
                expected,
                mask.audit_details(),
                async |tx, current: storage::DealRow| {
                    let before = current.fields();
                    let merged = patch.apply(before.clone());
                    check_references(
                        tx,
                        &merged,
                        merged.company_id != before.company_id,
                        merged.primary_contact_id != before.primary_contact_id,
                    )
                    .await?;
                    storage::update(tx, id, &merged).await
                },
            )
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_deal(&self, req: Request<DeleteDealRequest>) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("deal_id", &request.deal_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let row: storage::DealRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, expected, true)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn undelete_deal(
        &self,
        req: Request<UndeleteDealRequest>,
    ) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let id = parse::id("deal_id", &req.get_ref().deal_id)?;
        let row: storage::DealRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, None, false)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn link_deal_contact(
        &self,
        req: Request<LinkDealContactRequest>,
    ) -> Result<Response<Deal>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let (deal, contact): (DealId, ContactId) = (
            parse::id("deal_id", &request.deal_id),
            parse::id("contact_id", &request.contact_id),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        // Locking the deal serialises links to it, so the limit holds.
        let current: storage::DealRow = RESOURCE.get_for_update(&mut tx, deal).await?;
        let meta = current.meta();
        RESOURCE
            .kind
            .check_writable(meta.revision, meta.is_deleted(), None)?;
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
        let request = req.get_ref();
        let (deal, contact): (DealId, ContactId) = (
            parse::id("deal_id", &request.deal_id),
            parse::id("contact_id", &request.contact_id),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        let current: storage::DealRow = RESOURCE.get_for_update(&mut tx, deal).await?;
        let meta = current.meta();
        RESOURCE
            .kind
            .check_writable(meta.revision, meta.is_deleted(), None)?;
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
        let company = parse::optional_id("company_id", &req.get_ref().company_id)?;
        let rows: Vec<storage::StageTotal> = self.db.read(&ctx, storage::pipeline(company)).await?;

        // Pipeline order is the enum's declaration order.
        let stages = DealStage::stored_names()
            .iter()
            .map(|(stage, name)| {
                let totals: Vec<CurrencyTotal> = rows
                    .iter()
                    .filter(|total| total.stage == *name)
                    .map(|total| CurrencyTotal {
                        currency_code: total.currency_code.clone(),
                        value_minor: total.value_minor,
                        deal_count: total.deal_count,
                    })
                    .collect();
                PipelineStageSummary {
                    stage: *stage as i32,
                    deal_count: totals.iter().map(|total| total.deal_count).sum(),
                    totals,
                }
            })
            .collect();
        Ok(Response::new(GetPipelineSummaryResponse { stages }))
    }
}
