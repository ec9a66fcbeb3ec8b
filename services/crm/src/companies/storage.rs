//! SQL of companies. Every statement names `tenant_id = $1` (RLS is the backstop).

use mosaic_api::ApiResult;
use mosaic_db::{Constraint, HasMeta, Order, RowMeta, Select, TenantTx, db_error, db_error_with};
use mosaic_proto::crm::Company;

use super::CompanyFields;
use crate::ids::CompanyId;

/// Select list over the alias `t`.
pub(crate) const SELECT: &str = "t.company_id, t.display_name, t.domain, t.external_id, t.industry, \
     t.employee_count, t.revision, t.created_at, t.updated_at, t.deleted_at";

pub(crate) const CONSTRAINTS: &[Constraint] = &[
    Constraint {
        name: "companies_domain_live",
        field: "company.domain",
        reason: "COMPANY_DOMAIN_TAKEN",
    },
    Constraint {
        name: "companies_external_id_live",
        field: "company.external_id",
        reason: "COMPANY_EXTERNAL_ID_TAKEN",
    },
];

/// The same constraints as met by a batch, where no single entry is known.
const BATCH_CONSTRAINTS: &[Constraint] = &[
    Constraint {
        name: "companies_domain_live",
        field: "companies.domain",
        reason: "COMPANY_DOMAIN_TAKEN",
    },
    Constraint {
        name: "companies_external_id_live",
        field: "companies.external_id",
        reason: "COMPANY_EXTERNAL_ID_TAKEN",
    },
];

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CompanyRow {
    pub(crate) company_id: CompanyId,
    pub(crate) display_name: String,
    pub(crate) domain: Option<String>,
    pub(crate) external_id: Option<String>,
    pub(crate) industry: String,
    pub(crate) employee_count: i32,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for CompanyRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl CompanyRow {
    pub(crate) fn fields(&self) -> CompanyFields {
        CompanyFields {
            display_name: self.display_name.clone(),
            domain: self.domain.clone(),
            external_id: self.external_id.clone(),
            industry: self.industry.clone(),
            employee_count: self.employee_count,
        }
    }

    pub(crate) fn into_proto(self) -> Company {
        Company {
            company_id: self.company_id.to_string(),
            display_name: self.display_name,
            domain: self.domain.unwrap_or_default(),
            external_id: self.external_id.unwrap_or_default(),
            industry: self.industry,
            employee_count: self.employee_count,
            create_time: self.meta.create_time(),
            update_time: self.meta.update_time(),
            delete_time: self.meta.delete_time(),
            expire_time: self.meta.expire_time(),
            etag: self.meta.etag(),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: CompanyId,
    fields: &CompanyFields,
) -> ApiResult<CompanyRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO companies AS t \
         (tenant_id, company_id, display_name, domain, external_id, industry, employee_count) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&fields.display_name)
    .bind(&fields.domain)
    .bind(&fields.external_id)
    .bind(&fields.industry)
    .bind(fields.employee_count)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// Writes every field of a row the caller locked; NOT_FOUND if it vanished.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn update(
    tx: &mut TenantTx,
    id: CompanyId,
    fields: &CompanyFields,
) -> ApiResult<CompanyRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE companies AS t SET display_name = $3, domain = $4, external_id = $5, \
         industry = $6, employee_count = $7, revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.company_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&fields.display_name)
    .bind(&fields.domain)
    .bind(&fields.external_id)
    .bind(&fields.industry)
    .bind(fields.employee_count)
    .fetch_optional(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// One page in id (= creation) order, `limit + 1` rows; only the filters in
/// use become SQL, so each combination gets its own plan.
pub(crate) fn list_page(after: Option<CompanyId>, show_deleted: bool, limit: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM companies t WHERE t.tenant_id = $tenant"
    ));
    if !show_deleted {
        sql.push(" AND t.deleted_at IS NULL");
    }
    sql.keyset(
        "t.company_id",
        Order::Asc,
        after.map(CompanyId::uuid),
        limit,
    );
    sql
}

/// `(domain, external_id)` of live companies holding any of `domains`.
pub(crate) async fn live_domain_holders(
    tx: &mut TenantTx,
    domains: &[String],
) -> ApiResult<Vec<(String, Option<String>)>> {
    if domains.is_empty() {
        return Ok(Vec::new());
    }
    let tenant = tx.tenant_id();
    sqlx::query_as(
        "SELECT domain, external_id FROM companies \
         WHERE tenant_id = $1 AND deleted_at IS NULL AND domain = ANY($2)",
    )
    .bind(tenant)
    .bind(domains)
    .fetch_all(tx.conn())
    .await
    .map_err(db_error)
}

/// A company a batch upsert wrote, and whether it created it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Upserted {
    #[sqlx(flatten)]
    pub(crate) row: CompanyRow,
    pub(crate) created: bool,
}

/// Creates or updates every entry by `external_id` in one statement: the
/// arrays travel as `UNNEST` parameters, one round trip. `(xmax = 0)` is true
/// for a freshly inserted row, false for one the `DO UPDATE` rewrote. Rows
/// go in `external_id` order so concurrent batches lock in the same order
/// (no deadlock between two syncs of overlapping sets).
#[tracing::instrument(level = "debug", skip_all, fields(rows = batch.len()))]
pub(crate) async fn upsert_batch(
    tx: &mut TenantTx,
    batch: &[(CompanyId, CompanyFields)],
) -> ApiResult<Vec<Upserted>> {
    let mut sorted: Vec<&(CompanyId, CompanyFields)> = batch.iter().collect();
    sorted.sort_by(|a, b| a.1.external_id.cmp(&b.1.external_id));
    let n = sorted.len();
    let (mut ids, mut names, mut domains, mut keys, mut industries, mut employees) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (id, fields) in sorted {
        ids.push(*id);
        names.push(fields.display_name.as_str());
        domains.push(fields.domain.as_deref());
        keys.push(fields.external_id.as_deref());
        industries.push(fields.industry.as_str());
        employees.push(fields.employee_count);
    }
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO companies AS t \
         (tenant_id, company_id, display_name, domain, external_id, industry, employee_count) \
         SELECT $1, u.* FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[]) \
             AS u(company_id, display_name, domain, external_id, industry, employee_count) \
         ON CONFLICT (tenant_id, external_id) WHERE deleted_at IS NULL DO UPDATE SET \
             display_name = EXCLUDED.display_name, domain = EXCLUDED.domain, \
             industry = EXCLUDED.industry, employee_count = EXCLUDED.employee_count, \
             revision = t.revision + 1, updated_at = now() \
         RETURNING {SELECT}, (t.xmax = 0) AS created"
    ))
    .bind(tenant)
    .bind(&ids)
    .bind(&names)
    .bind(&domains)
    .bind(&keys)
    .bind(&industries)
    .bind(&employees)
    .fetch_all(tx.conn())
    .await
    .map_err(|e| db_error_with(e, BATCH_CONSTRAINTS))
}
