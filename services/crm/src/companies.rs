//! `CompanyService`: standard methods, and `BatchUpsertCompanies`, the sync
//! path from an outside CRM keyed by `external_id`.

use std::collections::HashMap;

use std::marker::PhantomData;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::{Kind, masked};
use mosaic_api::{AllOk, ApiError, ApiResult, Violations, etag, mask::UpdateMask, parse};
use mosaic_db::{Database, Resource, TenantContext, create_once};
use mosaic_proto::crm::{
    BatchUpsertCompaniesRequest, BatchUpsertCompaniesResponse, Company, CreateCompanyRequest,
    DeleteCompanyRequest, GetCompanyRequest, ListCompaniesRequest, ListCompaniesResponse,
    UndeleteCompanyRequest, UpdateCompanyRequest, company_service_server::CompanyService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

use crate::ids::CompanyId;

pub(crate) mod storage;

pub(crate) const RESOURCE: Resource<CompanyId> = Resource {
    kind: Kind {
        name: "company",
        not_found: "COMPANY_NOT_FOUND",
        deleted: "COMPANY_DELETED",
    },
    table: "companies",
    id_column: "company_id",
    select: storage::SELECT,
    constraints: storage::CONSTRAINTS,
    id: PhantomData,
};

/// Most companies per `BatchUpsertCompanies` call.
pub const MAX_BATCH: usize = 1000;
const MAX_NAME: usize = 200;
const MAX_EXTERNAL_ID: usize = 128;
const MAX_INDUSTRY: usize = 100;
const MAX_EMPLOYEES: i32 = 10_000_000;
mosaic_api::patch! {
    /// The writable fields of a company, checked. Their names are the paths
    /// an update mask may name.
    pub(crate) struct CompanyFields / CompanyPatch {
        display_name: String,
        domain: Option<String>,
        external_id: Option<String>,
        industry: String,
        employee_count: i32,
    }
}

impl CompanyPatch {
    /// Parses the fields of `company` that `wanted` names; violations are
    /// named `{at}.{field}`.
    fn parse(company: &Company, at: &str, wanted: impl Fn(&str) -> bool) -> ApiResult<Self> {
        let field = |name: &str| format!("{at}.{name}");
        let (display_name, domain, external_id, industry, employee_count) = (
            masked(wanted("display_name"), || {
                parse::name(&field("display_name"), &company.display_name, MAX_NAME)
            }),
            masked(wanted("domain"), || {
                parse::domain(&field("domain"), &company.domain)
            }),
            masked(wanted("external_id"), || {
                parse::optional_text(&field("external_id"), &company.external_id, MAX_EXTERNAL_ID)
            }),
            masked(wanted("industry"), || {
                parse::text(&field("industry"), company.industry.trim(), MAX_INDUSTRY)
            }),
            masked(wanted("employee_count"), || {
                parse::int_range(
                    &field("employee_count"),
                    company.employee_count,
                    0,
                    MAX_EMPLOYEES,
                )
            }),
        )
            .all_ok()?;
        Ok(Self {
            display_name,
            domain,
            external_id,
            industry,
            employee_count,
        })
    }

    /// A whole new company: every field parsed.
    fn parse_new(company: &Company, at: &str) -> ApiResult<CompanyFields> {
        Self::parse(company, at, |_| true)?.into_new()
    }
}

#[derive(Debug)]
pub struct Companies {
    db: Database,
}

impl Companies {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl CompanyService for Companies {
    async fn create_company(
        &self,
        req: Request<CreateCompanyRequest>,
    ) -> Result<Response<Company>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let company = request.company.clone().unwrap_or_default();
        let (new, request_id) = (
            CompanyPatch::parse_new(&company, "company"),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;

        let company = create_once(
            &self.db,
            &ctx,
            "CreateCompany",
            request_id,
            &request,
            async |tx| {
                let id = CompanyId::new();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit("company.create", "company", id, serde_json::json!({}))
                    .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(company))
    }

    async fn get_company(
        &self,
        req: Request<GetCompanyRequest>,
    ) -> Result<Response<Company>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = parse::id("company_id", &req.get_ref().company_id)?;
        let row: storage::CompanyRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_companies(
        &self,
        req: Request<ListCompaniesRequest>,
    ) -> Result<Response<ListCompaniesResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let binding = PageBinding::new("ListCompanies")
            .with(ctx.tenant_id()?)
            .with(request.show_deleted);
        let (size, after) = (
            parse::page_size("page_size", request.page_size),
            page::decode::<CompanyId>(&binding, &request.page_token),
        )
            .all_ok()?;
        let rows = self
            .db
            .read(&ctx, storage::list_page(after, request.show_deleted, size))
            .await?;
        let (companies, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |company| company.company_id,
            storage::CompanyRow::into_proto,
        );
        Ok(Response::new(ListCompaniesResponse {
            companies,
            next_page_token,
        }))
    }

    async fn update_company(
        &self,
        req: Request<UpdateCompanyRequest>,
    ) -> Result<Response<Company>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let company = request.company.unwrap_or_default();
        let mask = UpdateMask::parse(request.update_mask.as_ref(), CompanyPatch::PATHS)?;
        let (id, expected, patch) = (
            parse::id("company.company_id", &company.company_id),
            etag::parse("company.etag", &company.etag),
            CompanyPatch::parse(&company, "company", |path| mask.contains(path)),
        )
            .all_ok()?;
        let row = RESOURCE
            .update(
                &self.db,
                &ctx,
                id,
                expected,
                mask.audit_details(),
                async |tx, current: storage::CompanyRow| {
                    storage::update(tx, id, &patch.apply(current.fields())).await
                },
            )
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_company(
        &self,
        req: Request<DeleteCompanyRequest>,
    ) -> Result<Response<Company>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("company_id", &request.company_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let row: storage::CompanyRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, expected, true)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn undelete_company(
        &self,
        req: Request<UndeleteCompanyRequest>,
    ) -> Result<Response<Company>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let id = parse::id("company_id", &req.get_ref().company_id)?;
        let row: storage::CompanyRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, None, false)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn batch_upsert_companies(
        &self,
        req: Request<BatchUpsertCompaniesRequest>,
    ) -> Result<Response<BatchUpsertCompaniesResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let batch = parse_batch(&req.get_ref().companies)?;

        let mut tx = self.db.begin(&ctx).await?;
        // A domain held by a live company outside this batch's keys would fail
        // the statement on the unique index without saying which entry; find
        // it first to name it. The index stays the guard against races.
        let domains: Vec<String> = batch
            .iter()
            .filter_map(|(_, fields)| fields.domain.clone())
            .collect();
        for (domain, holder) in storage::live_domain_holders(&mut tx, &domains).await? {
            let taken_by_other = batch.iter().position(|(_, fields)| {
                fields.domain.as_deref() == Some(domain.as_str()) && fields.external_id != holder
            });
            if let Some(i) = taken_by_other {
                let field = format!("companies[{i}].domain");
                return Err(ApiError::already_exists(
                    "COMPANY_DOMAIN_TAKEN",
                    &field,
                    format!("{field} is already in use"),
                )
                .into());
            }
        }
        let upserted = storage::upsert_batch(&mut tx, &batch).await?;
        // One event per company, as a single create or update would write.
        let (created, updated): (Vec<_>, Vec<_>) =
            upserted.iter().partition(|upsert| upsert.created);
        let ids = |rows: Vec<&storage::Upserted>| -> Vec<CompanyId> {
            rows.into_iter()
                .map(|upsert| upsert.row.company_id)
                .collect()
        };
        let (created, updated) = (ids(created), ids(updated));
        let details = serde_json::json!({ "via": "batch_upsert" });
        tx.audit_many("company.create", "company", &created, details.clone())
            .await?;
        tx.audit_many("company.update", "company", &updated, details)
            .await?;
        tx.commit().await?;

        // Back to request order: every entry has a distinct external_id.
        let mut by_key: HashMap<String, Company> = upserted
            .into_iter()
            .map(|upsert| {
                (
                    upsert.row.external_id.clone().unwrap_or_default(),
                    upsert.row.into_proto(),
                )
            })
            .collect();
        let companies = batch
            .iter()
            .filter_map(|(_, fields)| {
                fields
                    .external_id
                    .as_ref()
                    .and_then(|key| by_key.remove(key))
            })
            .collect();
        Ok(Response::new(BatchUpsertCompaniesResponse {
            companies,
            created_count: created.len() as i32,
            updated_count: updated.len() as i32,
        }))
    }
}

/// Checks a whole batch before anything is written: every entry, every
/// field; `external_id` required and distinct, domains distinct. Each entry
/// gets a fresh id, used only if it creates a company.
fn parse_batch(companies: &[Company]) -> ApiResult<Vec<(CompanyId, CompanyFields)>> {
    parse::batch_len("companies", companies.len(), MAX_BATCH)?;
    let mut violations = Violations::new();
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut domains: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(companies.len());
    for (index, company) in companies.iter().enumerate() {
        let at = format!("companies[{index}]");
        let Some(fields) = violations.take(CompanyPatch::parse_new(company, &at)) else {
            continue;
        };
        match &fields.external_id {
            None => violations.add(format!("{at}.external_id"), "required in a batch upsert"),
            Some(key) => {
                if let Some(first) = keys.insert(key.clone(), index) {
                    violations.add(
                        format!("{at}.external_id"),
                        format!("repeats companies[{first}].external_id"),
                    );
                }
            }
        }
        if let Some(domain) = &fields.domain
            && let Some(first) = domains.insert(domain.clone(), index)
        {
            violations.add(
                format!("{at}.domain"),
                format!("repeats companies[{first}].domain"),
            );
        }
        out.push((CompanyId::new(), fields));
    }
    violations.finish()?;
    Ok(out)
}
