//! SQL of contacts. Every statement names `tenant_id = $1` (RLS is the backstop).

use mosaic_api::{ApiResult, convert};
use mosaic_db::{
    Constraint, HasMeta, Order, Param, RowMeta, Select, TenantTx, db_error, db_error_with,
};
use mosaic_proto::crm::Contact;

use super::{ContactFields, ContactFilter};
use crate::ids::{CompanyId, ContactId, DealId};

/// Select list over the alias `t` (the `search` vector stays in the database).
pub(crate) const SELECT: &str = "t.contact_id, t.company_id, t.email, t.full_name, t.title, t.phone, \
     t.tags, t.metadata, t.revision, t.created_at, t.updated_at, t.deleted_at";

pub(crate) const CONSTRAINTS: &[Constraint] = &[
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

/// How many rows a batch upsert created and updated.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub(crate) struct UpsertCounts {
    pub(crate) created: i64,
    pub(crate) updated: i64,
}

/// Tags of one import row travel as one text joined by this separator
/// (tags cannot contain control characters), because a Postgres array of
/// arrays must be rectangular and cannot be `UNNEST`ed row by row.
const TAG_SEPARATOR: &str = "\u{1f}";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ContactRow {
    pub(crate) contact_id: ContactId,
    pub(crate) company_id: Option<CompanyId>,
    pub(crate) email: String,
    pub(crate) full_name: String,
    pub(crate) title: String,
    pub(crate) phone: String,
    pub(crate) tags: Vec<String>,
    pub(crate) metadata: serde_json::Value,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for ContactRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl ContactRow {
    pub(crate) fn fields(&self) -> ContactFields {
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

    pub(crate) fn into_proto(self) -> Contact {
        Contact {
            contact_id: self.contact_id.to_string(),
            company_id: self
                .company_id
                .map(|company| company.to_string())
                .unwrap_or_default(),
            email: self.email,
            full_name: self.full_name,
            title: self.title,
            phone: self.phone,
            tags: self.tags,
            metadata: Some(convert::json_to_struct(self.metadata)),
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
    id: ContactId,
    fields: &ContactFields,
) -> ApiResult<ContactRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO contacts AS t \
         (tenant_id, contact_id, company_id, email, full_name, title, phone, tags, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(fields.company_id)
    .bind(&fields.email)
    .bind(&fields.full_name)
    .bind(&fields.title)
    .bind(&fields.phone)
    .bind(&fields.tags)
    .bind(&fields.metadata)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))
}

/// Writes every field of a row the caller locked; NOT_FOUND if it vanished.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn update(
    tx: &mut TenantTx,
    id: ContactId,
    fields: &ContactFields,
) -> ApiResult<ContactRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE contacts AS t SET company_id = $3, email = $4, full_name = $5, title = $6, \
         phone = $7, tags = $8, metadata = $9, revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.contact_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(fields.company_id)
    .bind(&fields.email)
    .bind(&fields.full_name)
    .bind(&fields.title)
    .bind(&fields.phone)
    .bind(&fields.tags)
    .bind(&fields.metadata)
    .fetch_optional(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// How many contacts a filtered page reads at most: a filter the index
/// order cannot serve (tag, metadata, full-text) rejects rows as the keyset
/// scan passes them, and a filter that matches few rows of a large tenant
/// would otherwise read the whole tenant for one page (a tag on 100 of
/// 1,000,000 contacts: 2 s). Past this many rows a page ends, short or
/// empty, with a token that resumes where the scan stopped (AIP-158).
pub(crate) const SCAN_WINDOW: u32 = 10_000;

/// A row of a page: the contact, and for a filtered page whether it passed
/// the filter (`hit`) and whether it is the scan window's last row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ListedRow {
    #[sqlx(flatten)]
    pub(crate) contact: ContactRow,
    pub(crate) hit: bool,
    pub(crate) window_end: bool,
}

/// One page in id (= creation) order, `limit + 1` hits; only the filters in
/// use become SQL. Without tag, metadata or query filters the scan is exact
/// (every row it reads is a hit). With them, at most [`SCAN_WINDOW`] rows are
/// read: the rows that pass, and the window's last row when the window
/// fills, so that the caller knows where the scan stopped.
pub(crate) fn list_page(filter: &ContactFilter, after: Option<ContactId>, limit: u32) -> Select {
    let windowed = filter.tag.is_some() || filter.metadata.is_some() || filter.query.is_some();
    let mut sql = Select::new("SELECT ");
    if windowed {
        sql.push("* FROM (SELECT ");
    }
    sql.push(SELECT);
    if windowed {
        sql.push(", true");
        if let Some(tag) = &filter.tag {
            sql.push(" AND t.tags @> ARRAY[")
                .push_bind(tag.as_str())
                .push("]::text[]");
        }
        if let Some(pattern) = &filter.metadata {
            sql.push(" AND t.metadata @> ")
                .push_bind(Param::json(pattern));
        }
        if let Some(query) = &filter.query {
            sql.push(" AND t.search @@ to_tsquery('simple', ")
                .push_bind(query.as_str())
                .push(")");
        }
        sql.push(" AS hit, row_number() OVER (ORDER BY t.contact_id) = ")
            .push_bind(i64::from(SCAN_WINDOW))
            .push(" AS window_end");
    } else {
        sql.push(", true AS hit, false AS window_end");
    }
    sql.push(" FROM contacts t WHERE t.tenant_id = $tenant");
    if !filter.show_deleted {
        sql.push(" AND t.deleted_at IS NULL");
    }
    if let Some(company) = filter.company_id {
        sql.push(" AND t.company_id = ").push_bind(company.uuid());
    }
    let after = after.map(ContactId::uuid);
    if windowed {
        // The window holds SCAN_WINDOW rows (`keyset` asks for one more).
        sql.keyset("t.contact_id", Order::Asc, after, SCAN_WINDOW - 1)
            .push(") w WHERE w.hit OR w.window_end ORDER BY w.contact_id LIMIT ")
            .push_bind(i64::from(limit) + 1);
    } else {
        sql.keyset("t.contact_id", Order::Asc, after, limit);
    }
    sql
}

/// After a soft delete: clears `primary_contact_id` on the contact's deals
/// and removes its deal links, bumping each touched deal's revision (its
/// etag changes with its contacts). Returns the deals that changed.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn detach_from_deals(
    tx: &mut TenantTx,
    contact: ContactId,
) -> ApiResult<Vec<DealId>> {
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
/// makes them so. `xmax = 0` marks a row the statement inserted rather than
/// updated.
#[tracing::instrument(level = "debug", skip_all, fields(rows = rows.len()))]
pub(crate) async fn upsert_batch(
    tx: &mut TenantTx,
    rows: &[&ContactFields],
) -> ApiResult<UpsertCounts> {
    let n = rows.len();
    let mut ids = Vec::with_capacity(n);
    let mut companies = Vec::with_capacity(n);
    let mut emails = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut titles = Vec::with_capacity(n);
    let mut phones = Vec::with_capacity(n);
    let mut tags = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for fields in rows {
        ids.push(ContactId::new());
        companies.push(fields.company_id);
        emails.push(fields.email.as_str());
        names.push(fields.full_name.as_str());
        titles.push(fields.title.as_str());
        phones.push(fields.phone.as_str());
        tags.push(fields.tags.join(TAG_SEPARATOR));
        metadata.push(&fields.metadata);
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
         ) SELECT count(*) FILTER (WHERE created) AS created, \
                  count(*) FILTER (WHERE NOT created) AS updated FROM upserted",
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
