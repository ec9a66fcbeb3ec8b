//! `ContactService`: standard methods, filtered listing (company, tag,
//! metadata containment, full-text query) with keyset paging, and the
//! client-streaming import in [`import`].

use std::marker::PhantomData;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::{Kind, masked};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, parse};
use mosaic_db::{Database, Resource, TenantContext, TenantTx, create_once};
use mosaic_proto::crm::{
    Contact, CreateContactRequest, DeleteContactRequest, GetContactRequest, ImportContactsRequest,
    ImportContactsResponse, ListContactsRequest, ListContactsResponse, UndeleteContactRequest,
    UpdateContactRequest, contact_service_server::ContactService,
};
use mosaic_server::ClientGone;
use mosaic_tenant::Role;
use tonic::{Request, Response, Status, Streaming};

use crate::companies;
use crate::ids::{CompanyId, ContactId};

pub mod import;
pub(crate) mod storage;

pub(crate) const RESOURCE: Resource<ContactId> = Resource {
    kind: Kind {
        name: "contact",
        not_found: "CONTACT_NOT_FOUND",
        deleted: "CONTACT_DELETED",
    },
    table: "contacts",
    id_column: "contact_id",
    select: storage::SELECT,
    constraints: storage::CONSTRAINTS,
    id: PhantomData,
};

const MAX_NAME: usize = 200;
const MAX_TITLE: usize = 200;
/// Encoded size limit of `metadata`.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
const MAX_FILTER_VALUE_BYTES: usize = 1024;
const MAX_QUERY_CHARS: usize = 200;
const MAX_QUERY_WORDS: usize = 8;

mosaic_api::patch! {
    /// The writable fields of a contact, checked. Their names are the paths
    /// an update mask may name.
    pub(crate) struct ContactFields / ContactPatch {
        company_id: Option<CompanyId>,
        email: String,
        full_name: String,
        title: String,
        phone: String,
        tags: Vec<String>,
        metadata: serde_json::Value,
    }
}

impl ContactPatch {
    /// Parses the fields of `contact` that `wanted` names. Violations are
    /// named `{at}.{field}`, or just `{field}` when `at` is empty (import rows).
    fn parse(contact: &Contact, at: &str, wanted: impl Fn(&str) -> bool) -> ApiResult<Self> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let (company_id, email, full_name, title, phone, tags, metadata) = (
            masked(wanted("company_id"), || {
                parse::optional_id(&field("company_id"), &contact.company_id)
            }),
            masked(wanted("email"), || {
                parse::email(&field("email"), &contact.email)
            }),
            masked(wanted("full_name"), || {
                parse::text(&field("full_name"), contact.full_name.trim(), MAX_NAME)
            }),
            masked(wanted("title"), || {
                parse::text(&field("title"), contact.title.trim(), MAX_TITLE)
            }),
            masked(wanted("phone"), || {
                parse::phone(&field("phone"), &contact.phone)
            }),
            masked(wanted("tags"), || {
                parse::tags(&field("tags"), &contact.tags)
            }),
            masked(wanted("metadata"), || {
                parse::json_object(
                    &field("metadata"),
                    contact.metadata.as_ref(),
                    MAX_METADATA_BYTES,
                )
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
    fn parse_new(contact: &Contact, at: &str) -> ApiResult<ContactFields> {
        Self::parse(contact, at, |_| true)?.into_new()
    }
}

/// The filters of a ListContacts call, checked. Every one narrows (AND).
#[derive(Debug, Default)]
pub(crate) struct ContactFilter {
    show_deleted: bool,
    company_id: Option<CompanyId>,
    tag: Option<String>,
    /// `{key: value}`, matched with JSON containment (`@>`).
    metadata: Option<serde_json::Value>,
    /// A `to_tsquery('simple', ...)` text built only from letters and digits.
    query: Option<String>,
}

impl ContactFilter {
    fn parse(request: &ListContactsRequest) -> ApiResult<Self> {
        let (company_id, tag, metadata, query) = (
            parse::optional_id("company_id", &request.company_id),
            parse::optional_text("tag", &request.tag, parse::MAX_TAG_CHARS),
            metadata_filter(&request.metadata_key, request.metadata_value.as_ref()),
            text_query(&request.query),
        )
            .all_ok()?;
        Ok(Self {
            show_deleted: request.show_deleted,
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
        (false, Some(value)) => {
            let key = parse::name("metadata_key", key, 64)?;
            // Wrapping the value in an object reuses the Struct checks (finite
            // numbers, depth) and yields exactly the containment pattern.
            let pattern = prost_types::Struct {
                fields: [(key, value.clone())].into(),
            };
            parse::json_object("metadata_value", Some(&pattern), MAX_FILTER_VALUE_BYTES).map(Some)
        }
    }
}

/// A full-text query as a prefix-matching `tsquery`: every word must match
/// the start of a word of the name or email. Only runs of letters and digits
/// are kept, so the text can never carry tsquery operators.
fn text_query(raw: &str) -> ApiResult<Option<String>> {
    let raw = parse::text("query", raw.trim(), MAX_QUERY_CHARS)?;
    if raw.is_empty() {
        return Ok(None);
    }
    let words: Vec<String> = raw
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| format!("{}:*", word.to_lowercase()))
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
async fn check_company(
    tx: &mut TenantTx,
    company: Option<CompanyId>,
    field: &str,
) -> ApiResult<()> {
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
        let request = req.into_inner();
        let contact = request.contact.clone().unwrap_or_default();
        let (new, request_id) = (
            ContactPatch::parse_new(&contact, "contact"),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;

        let contact = create_once(
            &self.db,
            &ctx,
            "CreateContact",
            request_id,
            &request,
            async |tx| {
                check_company(tx, new.company_id, "contact.company_id").await?;
                let id = ContactId::new();
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
        let id = parse::id("contact_id", &req.get_ref().contact_id)?;
        let row: storage::ContactRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_contacts(
        &self,
        req: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        // The token is bound to every filter as sent, so reusing it with
        // other filters is refused rather than silently skipping rows.
        let binding = PageBinding::new("ListContacts")
            .with(ctx.tenant_id()?)
            .with(request.show_deleted)
            .with(&request.company_id)
            .with(&request.tag)
            .with(&request.metadata_key)
            .with(
                request
                    .metadata_value
                    .as_ref()
                    .map(|value| format!("{value:?}"))
                    .unwrap_or_default(),
            )
            .with(&request.query);
        let (size, after, filter) = (
            parse::page_size("page_size", request.page_size),
            page::decode::<ContactId>(&binding, &request.page_token),
            ContactFilter::parse(request),
        )
            .all_ok()?;
        let rows: Vec<storage::ListedRow> = self
            .db
            .read(&ctx, storage::list_page(&filter, after, size))
            .await?;
        // Where a filtered scan stopped when its window filled: the next page
        // resumes after it, also when this one holds fewer rows than asked.
        let window_end = rows
            .iter()
            .find(|row| row.window_end)
            .map(|row| row.contact.contact_id);
        let hits: Vec<storage::ContactRow> = rows
            .into_iter()
            .filter(|row| row.hit)
            .map(|row| row.contact)
            .collect();
        let full = hits.len() > size as usize;
        let (contacts, mut next_page_token) = page::page(
            hits,
            size,
            &binding,
            |contact| contact.contact_id,
            storage::ContactRow::into_proto,
        );
        if !full
            && next_page_token.is_empty()
            && let Some(end) = window_end
        {
            next_page_token = page::encode(&binding, &end);
        }
        Ok(Response::new(ListContactsResponse {
            contacts,
            next_page_token,
        }))
    }

    async fn update_contact(
        &self,
        req: Request<UpdateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let contact = request.contact.unwrap_or_default();
        let mask = UpdateMask::parse(request.update_mask.as_ref(), ContactPatch::PATHS)?;
        let (id, expected, patch) = (
            parse::id("contact.contact_id", &contact.contact_id),
            etag::parse("contact.etag", &contact.etag),
            ContactPatch::parse(&contact, "contact", |path| mask.contains(path)),
        )
            .all_ok()?;
        let row = RESOURCE
            .update(
                &self.db,
                &ctx,
                id,
                expected,
                mask.audit_details(),
                async |tx, current: storage::ContactRow| {
                    if let Some(company) = patch.company_id
                        && company != current.company_id
                    {
                        check_company(tx, company, "contact.company_id").await?;
                    }
                    storage::update(tx, id, &patch.apply(current.fields())).await
                },
            )
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_contact(
        &self,
        req: Request<DeleteContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("contact_id", &request.contact_id),
            etag::parse("etag", &request.etag),
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
        let id = parse::id("contact_id", &req.get_ref().contact_id)?;
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
        let gone = ClientGone::of(&req);
        let reply = import::run(&self.db, &ctx, req.into_inner(), gone).await?;
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
        let gold = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("gold".into())),
        };
        assert_eq!(
            metadata_filter("tier", Some(&gold)).unwrap(),
            Some(serde_json::json!({"tier": "gold"}))
        );
        assert!(metadata_filter("tier", None).is_err());
        assert!(metadata_filter("", Some(&gold)).is_err());
        assert_eq!(metadata_filter("", None).unwrap(), None);
    }
}
