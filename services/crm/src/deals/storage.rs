//! SQL of deals and their contact links. Every statement names
//! `tenant_id = $1` (RLS is the backstop).

use chrono::{DateTime, NaiveDate, Utc};
use mosaic_api::{ApiResult, convert, etag};
use mosaic_db::{Constraint, TenantTx, db_error, db_error_with};
use mosaic_proto::crm::Deal;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{DealFields, stage_from, stage_name};
use crate::{fields, lifecycle};

/// Select list over the alias `t`; `contact_ids` are the deal's links in
/// link order (a per-row lookup on the `deal_contacts` primary key).
pub const SELECT: &str = "t.deal_id, t.company_id, t.primary_contact_id, t.display_name, t.stage, \
     t.probability, t.value_minor, t.currency_code, t.expected_close_date, \
     ARRAY(SELECT dc.contact_id FROM deal_contacts dc \
           WHERE dc.tenant_id = t.tenant_id AND dc.deal_id = t.deal_id \
           ORDER BY dc.created_at, dc.contact_id) AS contact_ids, \
     t.revision, t.created_at, t.updated_at, t.deleted_at";

/// Backstops for the handlers' live checks (a purge racing a write).
const CONSTRAINTS: &[Constraint] = &[
    Constraint {
        name: "deals_company_fk",
        field: "deal.company_id",
        reason: "COMPANY_NOT_FOUND",
    },
    Constraint {
        name: "deals_primary_contact_fk",
        field: "deal.primary_contact_id",
        reason: "CONTACT_NOT_FOUND",
    },
    Constraint {
        name: "deal_contacts_contact_fk",
        field: "contact_id",
        reason: "CONTACT_NOT_FOUND",
    },
];

#[derive(Debug, sqlx::FromRow)]
pub struct DealRow {
    pub deal_id: Uuid,
    pub company_id: Uuid,
    pub primary_contact_id: Option<Uuid>,
    pub display_name: String,
    pub stage: String,
    pub probability: i16,
    pub value_minor: i64,
    pub currency_code: String,
    pub expected_close_date: Option<NaiveDate>,
    pub contact_ids: Vec<Uuid>,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl DealRow {
    pub fn fields(&self) -> DealFields {
        DealFields {
            company_id: self.company_id,
            primary_contact_id: self.primary_contact_id,
            display_name: self.display_name.clone(),
            stage: stage_from(&self.stage),
            probability: self.probability,
            value_minor: self.value_minor,
            currency_code: self.currency_code.clone(),
            expected_close_date: self.expected_close_date,
        }
    }

    pub fn into_proto(self) -> Deal {
        Deal {
            deal_id: self.deal_id.to_string(),
            company_id: self.company_id.to_string(),
            primary_contact_id: self
                .primary_contact_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            display_name: self.display_name,
            stage: stage_from(&self.stage) as i32,
            probability: i32::from(self.probability),
            value_minor: self.value_minor,
            currency_code: self.currency_code,
            expected_close_date: self
                .expected_close_date
                .map(fields::format_date)
                .unwrap_or_default(),
            contact_ids: self.contact_ids.iter().map(Uuid::to_string).collect(),
            create_time: Some(convert::timestamp(self.created_at)),
            update_time: Some(convert::timestamp(self.updated_at)),
            delete_time: convert::opt_timestamp(self.deleted_at),
            expire_time: lifecycle::expire_time(self.deleted_at),
            etag: etag::format(self.revision),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert(tx: &mut TenantTx, id: Uuid, f: &DealFields) -> ApiResult<DealRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO deals AS t (tenant_id, deal_id, company_id, primary_contact_id, display_name, \
             stage, probability, value_minor, currency_code, expected_close_date) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(f.company_id)
    .bind(f.primary_contact_id)
    .bind(&f.display_name)
    .bind(stage_name(f.stage))
    .bind(f.probability)
    .bind(f.value_minor)
    .bind(&f.currency_code)
    .bind(f.expected_close_date)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// Writes every field of a row the caller locked; NOT_FOUND if it vanished.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn update(tx: &mut TenantTx, id: Uuid, f: &DealFields) -> ApiResult<DealRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE deals AS t SET company_id = $3, primary_contact_id = $4, display_name = $5, \
             stage = $6, probability = $7, value_minor = $8, currency_code = $9, \
             expected_close_date = $10, revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.deal_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(f.company_id)
    .bind(f.primary_contact_id)
    .bind(&f.display_name)
    .bind(stage_name(f.stage))
    .bind(f.probability)
    .bind(f.value_minor)
    .bind(&f.currency_code)
    .bind(f.expected_close_date)
    .fetch_optional(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// Bumps the revision after a link change (the etag covers `contact_ids`)
/// and returns the deal as it now reads.
pub async fn touch(tx: &mut TenantTx, id: Uuid) -> ApiResult<DealRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE deals AS t SET revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.deal_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// One page in id (= creation) order, `limit + 1` rows; only the filters in
/// use become SQL.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_page(
    tx: &mut TenantTx,
    show_deleted: bool,
    company: Option<Uuid>,
    stage: Option<&str>,
    after: Option<Uuid>,
    limit: u32,
) -> ApiResult<Vec<DealRow>> {
    let mut q: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("SELECT {SELECT} FROM deals t WHERE t.tenant_id = "));
    q.push_bind(tx.tenant_id());
    if !show_deleted {
        q.push(" AND t.deleted_at IS NULL");
    }
    if let Some(company) = company {
        q.push(" AND t.company_id = ").push_bind(company);
    }
    if let Some(stage) = stage {
        q.push(" AND t.stage = ").push_bind(stage.to_owned());
    }
    if let Some(after) = after {
        q.push(" AND t.deal_id > ").push_bind(after);
    }
    q.push(" ORDER BY t.deal_id LIMIT ")
        .push_bind(i64::from(limit) + 1);
    q.build_query_as()
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
}

pub async fn link(tx: &mut TenantTx, deal: Uuid, contact: Uuid) -> ApiResult<()> {
    let tenant = tx.tenant_id();
    sqlx::query(
        "INSERT INTO deal_contacts (tenant_id, deal_id, contact_id) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(deal)
    .bind(contact)
    .execute(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))?;
    Ok(())
}

/// False when there was no such link (0 rows is never success).
pub async fn unlink(tx: &mut TenantTx, deal: Uuid, contact: Uuid) -> ApiResult<bool> {
    let tenant = tx.tenant_id();
    let deleted = sqlx::query(
        "DELETE FROM deal_contacts WHERE tenant_id = $1 AND deal_id = $2 AND contact_id = $3",
    )
    .bind(tenant)
    .bind(deal)
    .bind(contact)
    .execute(tx.conn())
    .await
    .map_err(db_error)?
    .rows_affected();
    Ok(deleted == 1)
}

#[derive(Debug, sqlx::FromRow)]
pub struct StageTotal {
    pub stage: String,
    pub currency_code: String,
    pub deal_count: i64,
    pub value_minor: i64,
}

/// Count and value of live deals per stage and currency. `sum(bigint)` is
/// numeric; clamping before the cast keeps an absurd total from failing
/// the whole summary.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn pipeline(tx: &mut TenantTx, company: Option<Uuid>) -> ApiResult<Vec<StageTotal>> {
    let tenant = tx.tenant_id();
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT stage, currency_code, count(*) AS deal_count, \
                LEAST(sum(value_minor), 9223372036854775807)::bigint AS value_minor \
         FROM deals WHERE tenant_id = ",
    );
    q.push_bind(tenant).push(" AND deleted_at IS NULL");
    if let Some(company) = company {
        q.push(" AND company_id = ").push_bind(company);
    }
    q.push(" GROUP BY stage, currency_code ORDER BY stage, currency_code");
    q.build_query_as()
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
}
