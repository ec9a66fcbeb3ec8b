//! `ContactService`: standard methods, filtered listing (company, tag,
//! metadata containment, full-text query) with keyset paging, and the
//! client-streaming import in [`import`].

use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, validate};
use mosaic_db::{Database, TenantContext, TenantTx};
use mosaic_proto::crm::{
    Contact, CreateContactRequest, DeleteContactRequest, GetContactRequest, ImportContactsRequest,
    ImportContactsResponse, ListContactsRequest, ListContactsResponse, UndeleteContactRequest,
    UpdateContactRequest, contact_service_server::ContactService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::companies;
use crate::fields;
use crate::lifecycle::{self, Resource, masked};

pub mod import;
pub(crate) mod storage;

pub(crate) const RESOURCE: Resource = Resource {
    table: "contacts",
    id_column: "contact_id",
    kind: "contact",
    not_found: "CONTACT_NOT_FOUND",
    deleted: "CONTACT_DELETED",
    select: storage::SELECT,
    constraints: storage::CONSTRAINTS,
};

const MAX_NAME: usize = 200;
const MAX_TITLE: usize = 200;
/// Encoded size limit of `metadata`.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
const MAX_FILTER_VALUE_BYTES: usize = 1024;
const MAX_QUERY_CHARS: usize = 200;
const MAX_QUERY_WORDS: usize = 8;
const PATHS: &[&str] = &[
    "company_id",
    "email",
    "full_name",
    "title",
    "phone",
    "tags",
    "metadata",
];

/// The writable fields of a contact, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContactFields {
    company_id: Option<Uuid>,
    email: String,
    full_name: String,
    title: String,
    phone: String,
    tags: Vec<String>,
    metadata: serde_json::Value,
}

/// The fields an update mask names, parsed (`None`: not named).
#[derive(Debug, Default)]
struct ContactPatch {
    company_id: Option<Option<Uuid>>,
    email: Option<String>,
    full_name: Option<String>,
    title: Option<String>,
    phone: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<serde_json::Value>,
}

impl ContactPatch {
    /// Parses the fields of `c` that `wanted` names. Violations are named
    /// `{at}.{field}`, or just `{field}` when `at` is empty (import rows).
    fn parse(c: &Contact, at: &str, wanted: impl Fn(&str) -> bool) -> ApiResult<Self> {
        let f = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let (company_id, email, full_name, title, phone, tags, metadata) = (
            masked(wanted("company_id"), || {
                fields::optional_id(&f("company_id"), &c.company_id)
            }),
            masked(wanted("email"), || validate::email(&f("email"), &c.email)),
            masked(wanted("full_name"), || {
                validate::text(&f("full_name"), c.full_name.trim(), MAX_NAME)
            }),
            masked(wanted("title"), || {
                validate::text(&f("title"), c.title.trim(), MAX_TITLE)
            }),
            masked(wanted("phone"), || fields::phone(&f("phone"), &c.phone)),
            masked(wanted("tags"), || fields::tags(&f("tags"), &c.tags)),
            masked(wanted("metadata"), || {
                fields::json_object(&f("metadata"), c.metadata.as_ref(), MAX_METADATA_BYTES)
            }),
        )
            .all_ok()?;
        Ok(Self {
            company_id,
            email,
            full_name,
            title,
            phone,
            tags,
            metadata,
        })
    }

    /// A whole new contact: every field parsed.
    fn parse_new(c: &Contact, at: &str) -> ApiResult<ContactFields> {
        Ok(Self::parse(c, at, |_| true)?.apply(ContactFields::default()))
    }

    fn apply(self, mut to: ContactFields) -> ContactFields {
        if let Some(v) = self.company_id {
            to.company_id = v;
        }
        if let Some(v) = self.email {
            to.email = v;
        }
        if let Some(v) = self.full_name {
            to.full_name = v;
        }
        if let Some(v) = self.title {
            to.title = v;
        }
        if let Some(v) = self.phone {
            to.phone = v;
        }
        if let Some(v) = self.tags {
            to.tags = v;
        }
        if let Some(v) = self.metadata {
            to.metadata = v;
        }
        to
    }
}

/// The filters of a ListContacts call, checked. Every one narrows (AND).
#[derive(Debug, Default)]
pub(crate) struct ContactFilter {
    show_deleted: bool,
    company_id: Option<Uuid>,
    tag: Option<String>,
    /// `{key: value}`, matched with JSON containment (`@>`).
    metadata: Option<serde_json::Value>,
    /// A `to_tsquery('simple', ...)` text built only from letters and digits.
    query: Option<String>,
}

impl ContactFilter {
    fn parse(r: &ListContactsRequest) -> ApiResult<Self> {
        let (company_id, tag, metadata, query) = (
            fields::optional_id("company_id", &r.company_id),
            fields::optional_text("tag", &r.tag, fields::MAX_TAG_CHARS),
            metadata_filter(&r.metadata_key, r.metadata_value.as_ref()),
            text_query(&r.query),
        )
            .all_ok()?;
        Ok(Self {
            show_deleted: r.show_deleted,
            company_id,
            tag,
            metadata,
            query,
        })
    }
}

fn metadata_filter(
    key: &str,
    value: Option<&prost_types::Value>,
) -> ApiResult<Option<serde_json::Value>> {
    match (key.is_empty(), value) {
        (true, None) => Ok(None),
        (true, Some(_)) => Err(ApiError::invalid_argument(
            "metadata_key",
            "required with metadata_value",
        )),
        (false, None) => Err(ApiError::invalid_argument(
            "metadata_value",
            "required with metadata_key",
        )),
        (false, Some(v)) => {
            let key = validate::name("metadata_key", key, 64)?;
            // Wrapping the value in an object reuses the Struct checks (finite
            // numbers, depth) and yields exactly the containment pattern.
            let pattern = prost_types::Struct {
                fields: [(key, v.clone())].into(),
            };
            fields::json_object("metadata_value", Some(&pattern), MAX_FILTER_VALUE_BYTES).map(Some)
        }
    }
}

/// A full-text query as a prefix-matching `tsquery`: every word must match
/// the start of a word of the name or email. Only runs of letters and digits
/// are kept, so the text can never carry tsquery operators.
fn text_query(raw: &str) -> ApiResult<Option<String>> {
    let raw = validate::text("query", raw.trim(), MAX_QUERY_CHARS)?;
    if raw.is_empty() {
        return Ok(None);
    }
    let words: Vec<String> = raw
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| format!("{}:*", w.to_lowercase()))
        .collect();
    if words.is_empty() {
        return Err(ApiError::invalid_argument(
            "query",
            "must contain a letter or digit",
        ));
    }
    if words.len() > MAX_QUERY_WORDS {
        return Err(ApiError::invalid_argument(
            "query",
            format!("at most {MAX_QUERY_WORDS} words"),
        ));
    }
    Ok(Some(words.join(" & ")))
}

#[derive(Debug)]
pub struct Contacts {
    db: Database,
}

impl Contacts {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

/// NOT_FOUND unless the referenced company is live in this tenant.
async fn check_company(tx: &mut TenantTx, company: Option<Uuid>, field: &str) -> ApiResult<()> {
    match company {
        Some(id) => companies::RESOURCE.require_live(tx, id, field).await,
        None => Ok(()),
    }
}

#[tonic::async_trait]
impl ContactService for Contacts {
    async fn create_contact(
        &self,
        req: Request<CreateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.into_inner();
        let c = r.contact.clone().unwrap_or_default();
        let (new, request_id) = (
            ContactPatch::parse_new(&c, "contact"),
            validate::request_id("request_id", &r.request_id),
        )
            .all_ok()?;

        let contact = lifecycle::create_once(
            &self.db,
            &ctx,
            "CreateContact",
            request_id,
            &r,
            async |tx| {
                check_company(tx, new.company_id, "contact.company_id").await?;
                let id = Uuid::now_v7();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit("contact.create", "contact", id, serde_json::json!({}))
                    .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(contact))
    }

    async fn get_contact(
        &self,
        req: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = validate::id("contact_id", &req.get_ref().contact_id)?;
        let row: storage::ContactRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_contacts(
        &self,
        req: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        // The token is bound to every filter as sent, so reusing it with
        // other filters is refused rather than silently skipping rows.
        let binding = PageBinding::new("ListContacts")
            .with(ctx.tenant_id()?)
            .with(r.show_deleted)
            .with(&r.company_id)
            .with(&r.tag)
            .with(&r.metadata_key)
            .with(
                r.metadata_value
                    .as_ref()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default(),
            )
            .with(&r.query);
        let (size, after, filter) = (
            validate::page_size("page_size", r.page_size),
            page::decode::<Uuid>(&binding, &r.page_token),
            ContactFilter::parse(r),
        )
            .all_ok()?;
        let mut tx = self.db.begin(&ctx).await?;
        let rows = storage::list_page(&mut tx, &filter, after, size).await?;
        tx.finish_read();
        let (rows, next_page_token) = page::split_page(rows, size, &binding, |c| c.contact_id);
        Ok(Response::new(ListContactsResponse {
            contacts: rows
                .into_iter()
                .map(storage::ContactRow::into_proto)
                .collect(),
            next_page_token,
        }))
    }

    async fn update_contact(
        &self,
        req: Request<UpdateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.into_inner();
        let c = r.contact.unwrap_or_default();
        let mask = UpdateMask::parse(r.update_mask.as_ref(), PATHS)?;
        let (id, expected, patch) = (
            validate::id("contact.contact_id", &c.contact_id),
            etag::parse("contact.etag", &c.etag),
            ContactPatch::parse(&c, "contact", |p| mask.contains(p)),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        let current: storage::ContactRow = RESOURCE.get_for_update(&mut tx, id).await?;
        lifecycle::check_writable(
            &RESOURCE,
            current.revision,
            current.deleted_at.is_some(),
            expected,
        )?;
        if let Some(company) = patch.company_id
            && company != current.company_id
        {
            check_company(&mut tx, company, "contact.company_id").await?;
        }
        let merged = patch.apply(current.fields());
        let row = storage::update(&mut tx, id, &merged).await?;
        let changed: Vec<&str> = PATHS.iter().copied().filter(|p| mask.contains(p)).collect();
        tx.audit(
            "contact.update",
            "contact",
            id,
            serde_json::json!({ "fields": changed }),
        )
        .await?;
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_contact(
        &self,
        req: Request<DeleteContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let r = req.get_ref();
        let (id, expected) = (
            validate::id("contact_id", &r.contact_id),
            etag::parse("etag", &r.etag),
        )
            .all_ok()?;

        let mut tx = self.db.begin(&ctx).await?;
        let (row, changed): (storage::ContactRow, bool) =
            RESOURCE.set_deleted(&mut tx, id, expected, true).await?;
        if changed {
            // What a purge does through the FKs' ON DELETE clauses, done here
            // because a soft delete fires none of them.
            let deals = storage::detach_from_deals(&mut tx, id).await?;
            tx.audit(
                "contact.delete",
                "contact",
                id,
                serde_json::json!({ "deals_updated": deals.len() }),
            )
            .await?;
            tx.audit_many(
                "deal.update",
                "deal",
                &deals,
                serde_json::json!({ "via": "contact.delete", "contact_id": id }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn undelete_contact(
        &self,
        req: Request<UndeleteContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let id = validate::id("contact_id", &req.get_ref().contact_id)?;
        let row: storage::ContactRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, None, false)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn import_contacts(
        &self,
        req: Request<Streaming<ImportContactsRequest>>,
    ) -> Result<Response<ImportContactsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let reply = import::run(&self.db, &ctx, req.into_inner()).await?;
        Ok(Response::new(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_queries_are_prefix_words_only() {
        assert_eq!(text_query("").unwrap(), None);
        assert_eq!(
            text_query(" Ada  Lov ").unwrap().as_deref(),
            Some("ada:* & lov:*")
        );
        assert_eq!(
            text_query("x@Example.com").unwrap().as_deref(),
            Some("x:* & example:* & com:*")
        );
        // Operators are never passed through.
        assert_eq!(
            text_query("a|b & !c:*").unwrap().as_deref(),
            Some("a:* & b:* & c:*")
        );
        assert!(text_query("&&&").is_err());
        assert!(text_query("a b c d e f g h i").is_err());
    }

    #[test]
    fn metadata_filter_needs_both_halves() {
        let v = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("gold".into())),
        };
        assert_eq!(
            metadata_filter("tier", Some(&v)).unwrap(),
            Some(serde_json::json!({"tier": "gold"}))
        );
        assert!(metadata_filter("tier", None).is_err());
        assert!(metadata_filter("", Some(&v)).is_err());
        assert_eq!(metadata_filter("", None).unwrap(), None);
    }
}
