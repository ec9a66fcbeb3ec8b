//! `SignalService`: batch ingestion of webhook and intent events that drops
//! duplicates in the database (by `(provider, event_id)` and by optional
//! `signal_hash`), and listing.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use mosaic_api::page::{self, PageBinding};
use mosaic_api::{AllOk, ApiResult, Violations, parse};
use mosaic_db::{Database, TenantContext};
use mosaic_proto::crm::{
    IngestSignalsRequest, IngestSignalsResponse, ListSignalsRequest, ListSignalsResponse, Signal,
    signal_service_server::SignalService,
};
use mosaic_tenant::Role;
use tonic::{Code, Request, Response, Status};

use crate::ids::{CompanyId, ContactId, SignalId};
use crate::{companies, contacts};

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
    company_id: Option<CompanyId>,
    contact_id: Option<ContactId>,
    payload: serde_json::Value,
    occurred_at: DateTime<Utc>,
}

impl NewSignal {
    fn parse(signal: &Signal, at: &str) -> ApiResult<Self> {
        let field = |name: &str| format!("{at}.{name}");
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
            parse::slug(&field("provider"), &signal.provider, MAX_SLUG),
            parse::name(&field("event_id"), &signal.event_id, MAX_EVENT_ID),
            parse::slug(&field("signal_type"), &signal.signal_type, MAX_SLUG),
            parse::optional_hash(&field("signal_hash"), &signal.signal_hash),
            parse::optional_id(&field("company_id"), &signal.company_id),
            parse::optional_id(&field("contact_id"), &signal.contact_id),
            parse::json_object(
                &field("payload"),
                signal.payload.as_ref(),
                MAX_PAYLOAD_BYTES,
            ),
            parse::event_time_or_now(&field("occur_time"), signal.occur_time.as_ref()),
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
        let company_ids = distinct(batch.iter().filter_map(|signal| signal.company_id));
        let contact_ids = distinct(batch.iter().filter_map(|signal| signal.contact_id));
        let live_companies = companies::RESOURCE.live_ids(&mut tx, &company_ids).await?;
        let live_contacts = contacts::RESOURCE.live_ids(&mut tx, &contact_ids).await?;
        for (index, signal) in batch.iter().enumerate() {
            if signal
                .company_id
                .is_some_and(|company| !live_companies.contains(&company))
            {
                return Err(
                    companies::RESOURCE.not_found_at(&format!("signals[{index}].company_id"))
                );
            }
            if signal
                .contact_id
                .is_some_and(|contact| !live_contacts.contains(&contact))
            {
                return Err(
                    contacts::RESOURCE.not_found_at(&format!("signals[{index}].contact_id"))
                );
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

fn distinct<Id: Eq + std::hash::Hash>(ids: impl Iterator<Item = Id>) -> Vec<Id> {
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
        parse::batch_len("signals", raw.len(), MAX_BATCH)?;
        let mut violations = Violations::new();
        let mut batch: Vec<NewSignal> = raw
            .iter()
            .enumerate()
            .filter_map(|(index, signal)| {
                violations.take(NewSignal::parse(signal, &format!("signals[{index}]")))
            })
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
                Err(error) if error.code() == Code::Aborted && attempt < INGEST_ATTEMPTS => {
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
        let request = req.get_ref();
        let binding = PageBinding::new("ListSignals")
            .with(ctx.tenant_id()?)
            .with(&request.provider)
            .with(&request.signal_type)
            .with(&request.company_id)
            .with(&request.contact_id);
        let optional_slug = |field: &str, raw: &str| -> ApiResult<Option<String>> {
            if raw.is_empty() {
                Ok(None)
            } else {
                parse::slug(field, raw, MAX_SLUG).map(Some)
            }
        };
        let (size, after, provider, signal_type, company_id, contact_id) = (
            parse::page_size("page_size", request.page_size),
            page::decode::<SignalId>(&binding, &request.page_token),
            optional_slug("provider", &request.provider),
            optional_slug("signal_type", &request.signal_type),
            parse::optional_id("company_id", &request.company_id),
            parse::optional_id("contact_id", &request.contact_id),
        )
            .all_ok()?;
        let filter = storage::SignalFilter {
            provider,
            signal_type,
            company_id,
            contact_id,
        };
        let rows = self
            .db
            .read(&ctx, storage::list_page(&filter, after, size))
            .await?;
        let (signals, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |signal| signal.signal_id,
            storage::SignalRow::into_proto,
        );
        Ok(Response::new(ListSignalsResponse {
            signals,
            next_page_token,
        }))
    }
}
