//! SQL of contacts. Every statement names `tenant_id = $1` (RLS is the backstop).

use chrono::{DateTime, Utc};
use mosaic_api::{ApiResult, convert, etag};
use mosaic_db::{Constraint, TenantTx, db_error, db_error_with};
use mosaic_proto::crm::Contact;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{ContactFields, ContactFilter};
use crate::lifecycle;

/// Select list over the alias `t` (the `search` vector stays in the database).
pub const SELECT: &str = "t.contact_id, t.company_id, t.email, t.full_name, t.title, t.phone, \
     t.tags, t.metadata, t.revision, t.created_at, t.updated_at, t.deleted_at";

pub const CONSTRAINTS: &[Constraint] = &[
    Constraint {
        name: "contacts_email_live",
        field: "contact.email",
        reason: "CONTACT_EMAIL_TAKEN",
    },
    Constraint {
        name: "contacts_company_fk",
        field: "contact.company_id",
        reason: "COMPANY_NOT_FOUND",
    },
];

/// Tags of one import row travel as one text joined by this separator
/// (tags cannot contain control characters), because a Postgres array of
/// arrays must be rectangular and cannot be `UNNEST`ed row by row.
const TAG_SEPARATOR: &str = "\u{1f}";

#[derive(Debug, sqlx::FromRow)]
pub struct ContactRow {
    pub contact_id: Uuid,
    pub company_id: Option<Uuid>,
    pub email: String,
    pub full_name: String,
    pub title: String,
    pub phone: String,
    pub tags: Vec<String>,
    pub metadata: serde_json::Value,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl ContactRow {
    pub fn fields(&self) -> ContactFields {
        ContactFields {
            company_id: self.company_id,
            email: self.email.clone(),
            full_name: self.full_name.clone(),
            title: self.title.clone(),
            phone: self.phone.clone(),
            tags: self.tags.clone(),
            metadata: self.metadata.clone(),
        }
    }

    pub fn into_proto(self) -> Contact {
        Contact {
            contact_id: self.contact_id.to_string(),
            company_id: self.company_id.map(|c| c.to_string()).unwrap_or_default(),
            email: self.email,
            full_name: self.full_name,
            title: self.title,
            phone: self.phone,
            tags: self.tags,
            metadata: Some(convert::json_to_struct(&self.metadata)),
            create_time: Some(convert::timestamp(self.created_at)),
            update_time: Some(convert::timestamp(self.updated_at)),
            delete_time: convert::opt_timestamp(self.deleted_at),
            expire_time: lifecycle::expire_time(self.deleted_at),
            etag: etag::format(self.revision),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert(tx: &mut TenantTx, id: Uuid, f: &ContactFields) -> ApiResult<ContactRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO contacts AS t \
         (tenant_id, contact_id, company_id, email, full_name, title, phone, tags, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(f.company_id)
    .bind(&f.email)
    .bind(&f.full_name)
    .bind(&f.title)
    .bind(&f.phone)
    .bind(&f.tags)
    .bind(&f.metadata)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// Writes every field of a row the caller locked; NOT_FOUND if it vanished.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn update(tx: &mut TenantTx, id: Uuid, f: &ContactFields) -> ApiResult<ContactRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE contacts AS t SET company_id = $3, email = $4, full_name = $5, title = $6, \
         phone = $7, tags = $8, metadata = $9, revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.contact_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(f.company_id)
    .bind(&f.email)
    .bind(&f.full_name)
    .bind(&f.title)
    .bind(&f.phone)
    .bind(&f.tags)
    .bind(&f.metadata)
    .fetch_optional(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// One page in id (= creation) order, `limit + 1` rows. Only the filters in
/// use become SQL, so each combination gets its own prepared statement and
/// plan (a generic plan over `($2 IS NULL OR ...)` would scan).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_page(
    tx: &mut TenantTx,
    filter: &ContactFilter,
    after: Option<Uuid>,
    limit: u32,
) -> ApiResult<Vec<ContactRow>> {
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {SELECT} FROM contacts t WHERE t.tenant_id = "
    ));
    q.push_bind(tx.tenant_id());
    if !filter.show_deleted {
        q.push(" AND t.deleted_at IS NULL");
    }
    if let Some(company) = filter.company_id {
        q.push(" AND t.company_id = ").push_bind(company);
    }
    if let Some(tag) = &filter.tag {
        q.push(" AND t.tags @> ARRAY[")
            .push_bind(tag.clone())
            .push("]::text[]");
    }
    if let Some(pattern) = &filter.metadata {
        q.push(" AND t.metadata @> ")
            .push_bind(pattern.clone())
            .push("::jsonb");
    }
    if let Some(query) = &filter.query {
        q.push(" AND t.search @@ to_tsquery('simple', ")
            .push_bind(query.clone())
            .push(")");
    }
    if let Some(after) = after {
        q.push(" AND t.contact_id > ").push_bind(after);
    }
    q.push(" ORDER BY t.contact_id LIMIT ")
        .push_bind(i64::from(limit) + 1);
    q.build_query_as()
        .fetch_all(tx.conn())
        .await
        .map_err(db_error)
}

/// After a soft delete: clears `primary_contact_id` on the contact's deals
/// and removes its deal links, bumping each touched deal's revision (its
/// etag changes with its contacts). Returns the deals that changed.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn detach_from_deals(tx: &mut TenantTx, contact: Uuid) -> ApiResult<Vec<Uuid>> {
    let tenant = tx.tenant_id();
    sqlx::query_scalar(
        "WITH unlinked AS ( \
             DELETE FROM deal_contacts WHERE tenant_id = $1 AND contact_id = $2 RETURNING deal_id \
         ) \
         UPDATE deals SET \
             primary_contact_id = CASE WHEN primary_contact_id = $2 THEN NULL ELSE primary_contact_id END, \
             revision = revision + 1, updated_at = now() \
         WHERE tenant_id = $1 \
           AND (primary_contact_id = $2 OR deal_id IN (SELECT deal_id FROM unlinked)) \
         RETURNING deal_id",
    )
    .bind(tenant)
    .bind(contact)
    .fetch_all(tx.conn())
    .await
    .map_err(db_error)
}

/// Upserts import rows by email in one statement (one round trip): the
/// columns travel as arrays and `UNNEST` turns them back into rows. Emails
/// must be distinct (a `DO UPDATE` cannot touch a row twice); the caller
/// makes them so. Returns `(created, updated)`; `xmax = 0` marks a row the
/// statement inserted rather than updated.
#[tracing::instrument(level = "debug", skip_all, fields(rows = rows.len()))]
pub async fn upsert_batch(tx: &mut TenantTx, rows: &[&ContactFields]) -> ApiResult<(i64, i64)> {
    let n = rows.len();
    let mut ids = Vec::with_capacity(n);
    let mut companies = Vec::with_capacity(n);
    let mut emails = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut titles = Vec::with_capacity(n);
    let mut phones = Vec::with_capacity(n);
    let mut tags = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for f in rows {
        ids.push(Uuid::now_v7());
        companies.push(f.company_id);
        emails.push(f.email.as_str());
        names.push(f.full_name.as_str());
        titles.push(f.title.as_str());
        phones.push(f.phone.as_str());
        tags.push(f.tags.join(TAG_SEPARATOR));
        metadata.push(&f.metadata);
    }
    let tenant = tx.tenant_id();
    sqlx::query_as(
        "WITH upserted AS ( \
             INSERT INTO contacts AS t \
                 (tenant_id, contact_id, company_id, email, full_name, title, phone, tags, metadata) \
             SELECT $1, u.contact_id, u.company_id, u.email, u.full_name, u.title, u.phone, \
                    string_to_array(u.tags, E'\\x1f'), u.metadata \
             FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], \
                         $8::text[], $9::jsonb[]) \
                  AS u(contact_id, company_id, email, full_name, title, phone, tags, metadata) \
             ON CONFLICT (tenant_id, email) WHERE deleted_at IS NULL DO UPDATE SET \
                 company_id = EXCLUDED.company_id, full_name = EXCLUDED.full_name, \
                 title = EXCLUDED.title, phone = EXCLUDED.phone, tags = EXCLUDED.tags, \
                 metadata = EXCLUDED.metadata, revision = t.revision + 1, updated_at = now() \
             RETURNING (t.xmax = 0) AS created \
         ) SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM upserted",
    )
    .bind(tenant)
    .bind(&ids)
    .bind(&companies)
    .bind(&emails)
    .bind(&names)
    .bind(&titles)
    .bind(&phones)
    .bind(&tags)
    .bind(&metadata)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}
