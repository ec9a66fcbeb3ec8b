//! SQL of deals and their contact links. Every statement names
//! `tenant_id = $1` (RLS is the backstop).

use chrono::NaiveDate;
use mosaic_api::{ApiResult, convert};
use mosaic_db::{Constraint, HasMeta, Order, RowMeta, Select, TenantTx, db_error, db_error_with};
use mosaic_proto::StoredEnum;
use mosaic_proto::crm::{Deal, DealStage};

use super::DealFields;
use crate::ids::{CompanyId, ContactId, DealId};

/// Select list over the alias `t`; `contact_ids` are the deal's links in
/// link order (a per-row lookup on the `deal_contacts` primary key).
pub(crate) const SELECT: &str = "t.deal_id, t.company_id, t.primary_contact_id, t.display_name, t.stage, \
     t.probability, t.value_minor, t.currency_code, t.expected_close_date, \
     ARRAY(SELECT dc.contact_id FROM deal_contacts dc \
           WHERE dc.tenant_id = t.tenant_id AND dc.deal_id = t.deal_id \
           ORDER BY dc.created_at, dc.contact_id) AS contact_ids, \
     t.revision, t.created_at, t.updated_at, t.deleted_at";

/// Backstops for the handlers' live checks (a purge racing a write).
pub(crate) const CONSTRAINTS: &[Constraint] = &[
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
pub(crate) struct DealRow {
    pub(crate) deal_id: DealId,
    pub(crate) company_id: CompanyId,
    pub(crate) primary_contact_id: Option<ContactId>,
    pub(crate) display_name: String,
    pub(crate) stage: String,
    pub(crate) probability: i16,
    pub(crate) value_minor: i64,
    pub(crate) currency_code: String,
    pub(crate) expected_close_date: Option<NaiveDate>,
    pub(crate) contact_ids: Vec<ContactId>,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for DealRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl DealRow {
    fn stage(&self) -> DealStage {
        DealStage::from_stored(&self.stage).unwrap_or(DealStage::Unspecified)
    }

    pub(crate) fn fields(&self) -> DealFields {
        DealFields {
            company_id: self.company_id,
            primary_contact_id: self.primary_contact_id,
            display_name: self.display_name.clone(),
            stage: self.stage(),
            probability: self.probability,
            value_minor: self.value_minor,
            currency_code: self.currency_code.clone(),
            expected_close_date: self.expected_close_date,
        }
    }

    pub(crate) fn into_proto(self) -> Deal {
        let stage = self.stage() as i32;
        Deal {
            deal_id: self.deal_id.to_string(),
            company_id: self.company_id.to_string(),
            primary_contact_id: self
                .primary_contact_id
                .map(|contact| contact.to_string())
                .unwrap_or_default(),
            display_name: self.display_name,
            stage,
            probability: i32::from(self.probability),
            value_minor: self.value_minor,
            currency_code: self.currency_code,
            expected_close_date: self
                .expected_close_date
                .map(convert::date)
                .unwrap_or_default(),
            contact_ids: self.contact_ids.iter().map(ToString::to_string).collect(),
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
    id: DealId,
    fields: &DealFields,
) -> ApiResult<DealRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO deals AS t (tenant_id, deal_id, company_id, primary_contact_id, display_name, \
             stage, probability, value_minor, currency_code, expected_close_date) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(fields.company_id)
    .bind(fields.primary_contact_id)
    .bind(&fields.display_name)
    .bind(fields.stage.stored_name())
    .bind(fields.probability)
    .bind(fields.value_minor)
    .bind(&fields.currency_code)
    .bind(fields.expected_close_date)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// Writes every field of a row the caller locked; NOT_FOUND if it vanished.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn update(
    tx: &mut TenantTx,
    id: DealId,
    fields: &DealFields,
) -> ApiResult<DealRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE deals AS t SET company_id = $3, primary_contact_id = $4, display_name = $5, \
             stage = $6, probability = $7, value_minor = $8, currency_code = $9, \
             expected_close_date = $10, revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.deal_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(fields.company_id)
    .bind(fields.primary_contact_id)
    .bind(&fields.display_name)
    .bind(fields.stage.stored_name())
    .bind(fields.probability)
    .bind(fields.value_minor)
    .bind(&fields.currency_code)
    .bind(fields.expected_close_date)
    .fetch_optional(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// Bumps the revision after a link change (the etag covers `contact_ids`)
/// and returns the deal as it now reads.
pub(crate) async fn touch(tx: &mut TenantTx, id: DealId) -> ApiResult<DealRow> {
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
/// use become SQL, so each combination gets its own plan.
pub(crate) fn list_page(
    show_deleted: bool,
    company: Option<CompanyId>,
    stage: Option<&str>,
    after: Option<DealId>,
    limit: u32,
) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM deals t WHERE t.tenant_id = $tenant"
    ));
    if !show_deleted {
        sql.push(" AND t.deleted_at IS NULL");
    }
    if let Some(company) = company {
        sql.push(" AND t.company_id = ").push_bind(company.uuid());
    }
    if let Some(stage) = stage {
        sql.push(" AND t.stage = ").push_bind(stage);
    }
    sql.keyset("t.deal_id", Order::Asc, after.map(DealId::uuid), limit);
    sql
}

pub(crate) async fn link(tx: &mut TenantTx, deal: DealId, contact: ContactId) -> ApiResult<()> {
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
pub(crate) async fn unlink(tx: &mut TenantTx, deal: DealId, contact: ContactId) -> ApiResult<bool> {
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
pub(crate) struct StageTotal {
    pub(crate) stage: String,
    pub(crate) currency_code: String,
    pub(crate) deal_count: i64,
    pub(crate) value_minor: i64,
}

/// Count and value of live deals per stage and currency. `sum(bigint)` is
/// numeric; clamping before the cast keeps an absurd total from failing
/// the whole summary.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) fn pipeline(company: Option<CompanyId>) -> Select {
    let mut sql = Select::new(
        "SELECT stage, currency_code, count(*) AS deal_count, \
                LEAST(sum(value_minor), 9223372036854775807)::bigint AS value_minor \
         FROM deals WHERE tenant_id = $tenant AND deleted_at IS NULL",
    );
    if let Some(company) = company {
        sql.push(" AND company_id = ").push_bind(company.uuid());
    }
    sql.push(" GROUP BY stage, currency_code ORDER BY stage, currency_code");
    sql
}
