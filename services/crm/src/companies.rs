//! `CompanyService`: standard methods, and `BatchUpsertCompanies`, the sync
//! path from an outside CRM keyed by `external_id`.

use std::collections::HashMap;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, ApiResult, Violations, etag, mask::UpdateMask, validate};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::crm::{
    BatchUpsertCompaniesRequest, BatchUpsertCompaniesResponse, Company, CreateCompanyRequest,
    DeleteCompanyRequest, GetCompanyRequest, ListCompaniesRequest, ListCompaniesResponse,
    UndeleteCompanyRequest, UpdateCompanyRequest, company_service_server::CompanyService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::fields;
use crate::lifecycle::{self, Resource, masked};

pub(crate) mod storage;

pub(crate) const RESOURCE: Resource = Resource {
    table: "companies",
    id_column: "company_id",
    kind: "company",
    not_found: "COMPANY_NOT_FOUND",
    deleted: "COMPANY_DELETED",
    select: storage::SELECT,
    constraints: storage::CONSTRAINTS,
};

/// Most companies per `BatchUpsertCompanies` call.
pub const MAX_BATCH: usize = 1000;
const MAX_NAME: usize = 200;
const MAX_EXTERNAL_ID: usize = 128;
const MAX_INDUSTRY: usize = 100;
const MAX_EMPLOYEES: i32 = 10_000_000;
/// Writable fields, which are also the paths an update mask may name.
const PATHS: &[&str] = &[
    "display_name",
    "domain",
    "external_id",
    "industry",
    "employee_count",
];

/// The writable fields of a company, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompanyFields {
    display_name: String,
    domain: Option<String>,
    external_id: Option<String>,
    industry: String,
    employee_count: i32,
}

/// The fields an update mask names, parsed (`None`: not named).
#[derive(Debug, Default)]
struct CompanyPatch {
    display_name: Option<String>,
    domain: Option<Option<String>>,
    external_id: Option<Option<String>>,
    industry: Option<String>,
    employee_count: Option<i32>,
}

impl CompanyPatch {
    /// Parses the fields of `c` that `wanted` names; violations are named `{at}.{field}`.
    fn parse(c: &Company, at: &str, wanted: impl Fn(&str) -> bool) -> ApiResult<Self> {
        let f = |name: &str| format!("{at}.{name}");
        let (display_name, domain, external_id, industry, employee_count) = (
            masked(wanted("display_name"), || {
                validate::name(&f("display_name"), &c.display_name, MAX_NAME)
            }),
            masked(wanted("domain"), || fields::domain(&f("domain"), &c.domain)),
            masked(wanted("external_id"), || {
                fields::optional_text(&f("external_id"), &c.external_id, MAX_EXTERNAL_ID)
            }),
            masked(wanted("industry"), || {
                validate::text(&f("industry"), c.industry.trim(), MAX_INDUSTRY)
            }),
            masked(wanted("employee_count"), || {
                fields::int_range(&f("employee_count"), c.employee_count, 0, MAX_EMPLOYEES)
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
    fn parse_new(c: &Company, at: &str) -> ApiResult<CompanyFields> {
        Ok(Self::parse(c, at, |_| true)?.apply(CompanyFields::default()))
    }

    fn apply(self, mut to: CompanyFields) -> CompanyFields {
        if let Some(v) = self.display_name {
            to.display_name = v;
        }
        if let Some(v) = self.domain {
            to.domain = v;
        }
        if let Some(v) = self.external_id {
            to.external_id = v;
        }
        if let Some(v) = self.industry {
            to.industry = v;
        }
        if let Some(v) = self.employee_count {
            to.employee_count = v;
        }
        to
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
        let r = req.into_inner();
        let c = r.company.clone().unwrap_or_default();
        let (new, request_id) = (
            CompanyPatch::parse_new(&c, "company"),
            validate::request_id("request_id", &r.request_id),
        )
            .all_ok()?;

        let company = lifecycle::create_once(
            &self.db,
            &ctx,
            "CreateCompany",
            request_id,
            &r,
            async |tx| {
                let id = Uuid::now_v7();
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
        let id = validate::id("company_id", &req.get_ref().company_id)?;
        let row: storage::CompanyRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_companies(
        &self,
        req: Request<ListCompaniesRequest>,
    ) -> Result<Response<ListCompaniesResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let binding = PageBinding::new("ListCompanies")
            .with(ctx.tenant_id()?)
            .with(r.show_deleted);
        let (size, after) = (
            validate::page_size("page_size", r.page_size),
            page::decode::<Uuid>(&binding, &r.page_token),
        )
            .all_ok()?;
        let mut tx = self.db.begin(&ctx).await?;
        let rows = storage::list_page(&mut tx, after, r.show_deleted, size).await?;
        tx.finish_read();
        let (rows, next_page_token) = page::split_page(rows, size, &binding, |c| c.company_id);
        Ok(Response::new(ListCompaniesResponse {
            companies: rows
                .into_iter()
                .map(storage::CompanyRow::into_proto)
                .collect(),
            next_page_token,
        }))
    }

    async fn update_company(
        &self,
        req: Request<UpdateCompanyRequest>,
    ) -> Result<Response<Company>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.into_inner();
        let c = r.company.unwrap_or_default();
        let mask = UpdateMask::parse(r.update_mask.as_ref(), PATHS)?;
        let (id, expected, patch) = (
            validate::id("company.company_id", &c.company_id),
            etag::parse("company.etag", &c.etag),
            CompanyPatch::parse(&c, "company", |p| mask.contains(p)),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        let current: storage::CompanyRow = RESOURCE.get_for_update(&mut tx, id).await?;
        lifecycle::check_writable(
            &RESOURCE,
            current.revision,
            current.deleted_at.is_some(),
            expected,
        )?;
        let merged = patch.apply(current.fields());
        let row = storage::update(&mut tx, id, &merged).await?;
        let changed: Vec<&str> = PATHS.iter().copied().filter(|p| mask.contains(p)).collect();
        tx.audit(
            "company.update",
            "company",
            id,
            serde_json::json!({ "fields": changed }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_company(
        &self,
        req: Request<DeleteCompanyRequest>,
    ) -> Result<Response<Company>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let r = req.get_ref();
        let (id, expected) = (
            validate::id("company_id", &r.company_id),
            etag::parse("etag", &r.etag),
        )
            .all_ok()?;
        RESOURCE
            .delete_or_undelete::<storage::CompanyRow>(&self.db, &ctx, id, expected, true)
            .await
            .map(|row| Response::new(row.into_proto()))
            .map_err(Into::into)
    }

    async fn undelete_company(
        &self,
        req: Request<UndeleteCompanyRequest>,
    ) -> Result<Response<Company>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let id = validate::id("company_id", &req.get_ref().company_id)?;
        RESOURCE
            .delete_or_undelete::<storage::CompanyRow>(&self.db, &ctx, id, None, false)
            .await
            .map(|row| Response::new(row.into_proto()))
            .map_err(Into::into)
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
        let domains: Vec<String> = batch.iter().filter_map(|(_, f)| f.domain.clone()).collect();
        for (domain, holder) in storage::live_domain_holders(&mut tx, &domains).await? {
            let taken_by_other = batch.iter().position(|(_, f)| {
                f.domain.as_deref() == Some(domain.as_str()) && f.external_id != holder
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
        let rows = storage::upsert_batch(&mut tx, &batch).await?;
        // One event per company, as a single create or update would write.
        let created: Vec<Uuid> = rows
            .iter()
            .filter(|r| r.1)
            .map(|r| r.0.company_id)
            .collect();
        let updated: Vec<Uuid> = rows
            .iter()
            .filter(|r| !r.1)
            .map(|r| r.0.company_id)
            .collect();
        let details = serde_json::json!({ "via": "batch_upsert" });
        tx.audit_many("company.create", "company", &created, details.clone())
            .await?;
        tx.audit_many("company.update", "company", &updated, details)
            .await?;
        let (created, updated) = (created.len(), updated.len());
        tx.commit().await?;

        // Back to request order: every entry has a distinct external_id.
        let mut by_key: HashMap<String, Company> = rows
            .into_iter()
            .map(|(row, _)| {
                (
                    row.external_id.clone().unwrap_or_default(),
                    row.into_proto(),
                )
            })
            .collect();
        let companies = batch
            .iter()
            .filter_map(|(_, f)| f.external_id.as_ref().and_then(|k| by_key.remove(k)))
            .collect();
        Ok(Response::new(BatchUpsertCompaniesResponse {
            companies,
            created_count: created as i32,
            updated_count: updated as i32,
        }))
    }
}

/// Checks a whole batch before anything is written: every entry, every
/// field; `external_id` required and distinct, domains distinct. Each entry
/// gets a fresh id, used only if it creates a company.
fn parse_batch(companies: &[Company]) -> ApiResult<Vec<(Uuid, CompanyFields)>> {
    fields::batch_len("companies", companies.len(), MAX_BATCH)?;
    let mut violations = Violations::new();
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut domains: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(companies.len());
    for (i, c) in companies.iter().enumerate() {
        let at = format!("companies[{i}]");
        let Some(f) = violations.take(CompanyPatch::parse_new(c, &at)) else {
            continue;
        };
        match &f.external_id {
            None => violations.add(format!("{at}.external_id"), "required in a batch upsert"),
            Some(k) => {
                if let Some(first) = keys.insert(k.clone(), i) {
                    violations.add(
                        format!("{at}.external_id"),
                        format!("repeats companies[{first}].external_id"),
                    );
                }
            }
        }
        if let Some(d) = &f.domain
            && let Some(first) = domains.insert(d.clone(), i)
        {
            violations.add(
                format!("{at}.domain"),
                format!("repeats companies[{first}].domain"),
            );
        }
        out.push((Uuid::now_v7(), f));
    }
    violations.finish()?;
    Ok(out)
}
