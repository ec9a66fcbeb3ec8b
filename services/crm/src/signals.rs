//! `SignalService`: batch ingestion of webhook and intent events that drops
//! duplicates in the database (by `(provider, event_id)` and by optional
//! `signal_hash`), and listing.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiResult, Violations, validate};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::crm::{
    IngestSignalsRequest, IngestSignalsResponse, ListSignalsRequest, ListSignalsResponse, Signal,
    signal_service_server::SignalService,
};
use mosaic_tenant::Role;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{companies, contacts, fields};

pub(crate) mod storage;

/// Most signals per IngestSignals call.
pub const MAX_BATCH: usize = 1000;
const MAX_SLUG: usize = 64;
const MAX_EVENT_ID: usize = 200;
/// Encoded size limit of `payload`.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Attempts of an ingest that lost a deadlock (see [`SignalService::ingest_signals`]).
const INGEST_ATTEMPTS: usize = 3;

/// A checked signal.
#[derive(Debug)]
pub(crate) struct NewSignal {
    provider: String,
    event_id: String,
    signal_type: String,
    signal_hash: Option<String>,
    company_id: Option<Uuid>,
    contact_id: Option<Uuid>,
    payload: serde_json::Value,
    occurred_at: DateTime<Utc>,
}

impl NewSignal {
    fn parse(s: &Signal, at: &str) -> ApiResult<Self> {
        let f = |name: &str| format!("{at}.{name}");
        let (
            provider,
            event_id,
            signal_type,
            signal_hash,
            company_id,
            contact_id,
            payload,
            occurred_at,
        ) = (
            fields::slug(&f("provider"), &s.provider, MAX_SLUG),
            validate::name(&f("event_id"), &s.event_id, MAX_EVENT_ID),
            fields::slug(&f("signal_type"), &s.signal_type, MAX_SLUG),
            fields::optional_hash(&f("signal_hash"), &s.signal_hash),
            fields::optional_id(&f("company_id"), &s.company_id),
            fields::optional_id(&f("contact_id"), &s.contact_id),
            fields::json_object(&f("payload"), s.payload.as_ref(), MAX_PAYLOAD_BYTES),
            fields::event_time_or_now(&f("occur_time"), s.occur_time.as_ref()),
        )
            .all_ok()?;
        Ok(Self {
            provider,
            event_id,
            signal_type,
            signal_hash,
            company_id,
            contact_id,
            payload,
            occurred_at,
        })
    }
}

#[derive(Debug)]
pub struct Signals {
    db: Database,
}

impl Signals {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// One attempt: check references, insert, audit, commit; returns the
    /// number of signals stored.
    async fn ingest_once(&self, ctx: &TenantContext, batch: &[NewSignal]) -> ApiResult<usize> {
        let mut tx = self.db.begin(ctx).await?;
        let company_ids: Vec<Uuid> = distinct(batch.iter().filter_map(|s| s.company_id));
        let contact_ids: Vec<Uuid> = distinct(batch.iter().filter_map(|s| s.contact_id));
        let live_companies = companies::RESOURCE.live_ids(&mut tx, &company_ids).await?;
        let live_contacts = contacts::RESOURCE.live_ids(&mut tx, &contact_ids).await?;
        for (i, s) in batch.iter().enumerate() {
            if s.company_id.is_some_and(|c| !live_companies.contains(&c)) {
                return Err(companies::RESOURCE.not_found_at(&format!("signals[{i}].company_id")));
            }
            if s.contact_id.is_some_and(|c| !live_contacts.contains(&c)) {
                return Err(contacts::RESOURCE.not_found_at(&format!("signals[{i}].contact_id")));
            }
        }
        let accepted = storage::insert_new(&mut tx, batch).await?;
        tx.audit(
            "signal.ingest",
            "signal",
            "batch",
            serde_json::json!({ "accepted": accepted, "duplicates": batch.len() - accepted }),
        )
        .await?;
        tx.commit().await?;
        Ok(accepted)
    }
}

fn distinct(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    ids.collect::<HashSet<_>>().into_iter().collect()
}

#[tonic::async_trait]
impl SignalService for Signals {
    async fn ingest_signals(
        &self,
        req: Request<IngestSignalsRequest>,
    ) -> Result<Response<IngestSignalsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let raw = &req.get_ref().signals;
        fields::batch_len("signals", raw.len(), MAX_BATCH)?;
        let mut violations = Violations::new();
        let mut batch: Vec<NewSignal> = raw
            .iter()
            .enumerate()
            .filter_map(|(i, s)| violations.take(NewSignal::parse(s, &format!("signals[{i}]"))))
            .collect();
        violations.finish()?;
        // Inserting in key order makes concurrent batches of the same events
        // wait on each other instead of deadlocking.
        batch.sort_by(|a, b| (&a.provider, &a.event_id).cmp(&(&b.provider, &b.event_id)));

        // Two batches can still deadlock when their hashes cross their event
        // keys. Postgres then aborts one; ingestion is idempotent, so that
        // one is simply run again.
        let mut attempt = 1;
        let accepted = loop {
            match self.ingest_once(&ctx, &batch).await {
                Err(e) if e.code() == Code::Aborted && attempt < INGEST_ATTEMPTS => {
                    tracing::warn!(attempt, "signal ingest retried after a lost race");
                    attempt += 1;
                }
                other => break other?,
            }
        };
        Ok(Response::new(IngestSignalsResponse {
            accepted_count: accepted as i32,
            duplicate_count: (batch.len() - accepted) as i32,
        }))
    }

    async fn list_signals(
        &self,
        req: Request<ListSignalsRequest>,
    ) -> Result<Response<ListSignalsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let binding = PageBinding::new("ListSignals")
            .with(ctx.tenant_id()?)
            .with(&r.provider)
            .with(&r.signal_type)
            .with(&r.company_id)
            .with(&r.contact_id);
        let optional_slug = |field: &str, raw: &str| -> ApiResult<Option<String>> {
            if raw.is_empty() {
                Ok(None)
            } else {
                fields::slug(field, raw, MAX_SLUG).map(Some)
            }
        };
        let (size, after, provider, signal_type, company_id, contact_id) = (
            validate::page_size("page_size", r.page_size),
            page::decode::<Uuid>(&binding, &r.page_token),
            optional_slug("provider", &r.provider),
            optional_slug("signal_type", &r.signal_type),
            fields::optional_id("company_id", &r.company_id),
            fields::optional_id("contact_id", &r.contact_id),
        )
            .all_ok()?;
        let filter = storage::SignalFilter {
            provider,
            signal_type,
            company_id,
            contact_id,
        };
        let mut tx = self.db.begin(&ctx).await?;
        let rows = storage::list_page(&mut tx, &filter, after, size).await?;
        tx.finish_read();
        let (rows, next_page_token) = page::split_page(rows, size, &binding, |s| s.signal_id);
        Ok(Response::new(ListSignalsResponse {
            signals: rows
                .into_iter()
                .map(storage::SignalRow::into_proto)
                .collect(),
            next_page_token,
        }))
    }
}
