//! SQL of signals. Every statement names `tenant_id = $1` (RLS is the backstop).

use chrono::{DateTime, Utc};
use mosaic_api::{ApiResult, convert};
use mosaic_db::{Constraint, Order, Select, TenantTx, db_error_with};
use mosaic_proto::crm::Signal;

use crate::ids::{CompanyId, ContactId, SignalId};

use super::NewSignal;

const SELECT: &str = "t.signal_id, t.provider, t.event_id, t.signal_type, t.signal_hash, \
     t.company_id, t.contact_id, t.payload, t.occurred_at, t.created_at";

/// Backstops for the handler's live checks (a purge racing the insert).
const CONSTRAINTS: &[Constraint] = &[
    Constraint {
        name: "signals_company_fk",
        field: "signals.company_id",
        reason: "COMPANY_NOT_FOUND",
    },
    Constraint {
        name: "signals_contact_fk",
        field: "signals.contact_id",
        reason: "CONTACT_NOT_FOUND",
    },
];

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SignalRow {
    pub(crate) signal_id: SignalId,
    pub(crate) provider: String,
    pub(crate) event_id: String,
    pub(crate) signal_type: String,
    pub(crate) signal_hash: Option<String>,
    pub(crate) company_id: Option<CompanyId>,
    pub(crate) contact_id: Option<ContactId>,
    pub(crate) payload: serde_json::Value,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) occurred_at: DateTime<Utc>,
    #[sqlx(try_from = "mosaic_db::Time")]
    pub(crate) created_at: DateTime<Utc>,
}

impl SignalRow {
    pub(crate) fn into_proto(self) -> Signal {
        Signal {
            signal_id: self.signal_id.to_string(),
            provider: self.provider,
            event_id: self.event_id,
            signal_type: self.signal_type,
            signal_hash: self.signal_hash.unwrap_or_default(),
            company_id: self
                .company_id
                .map(|company| company.to_string())
                .unwrap_or_default(),
            contact_id: self
                .contact_id
                .map(|contact| contact.to_string())
                .unwrap_or_default(),
            payload: Some(convert::json_to_struct(self.payload)),
            occur_time: Some(convert::timestamp(self.occurred_at)),
            create_time: Some(convert::timestamp(self.created_at)),
        }
    }
}

/// Inserts the batch in one statement and returns how many rows were new.
/// `ON CONFLICT DO NOTHING` without a target covers both keys, the unique
/// `(provider, event_id)` and the partial unique `signal_hash`, and also a
/// repeat inside the batch itself; a concurrent insert of the same key waits
/// for the other transaction and then counts as a duplicate.
#[tracing::instrument(level = "debug", skip_all, fields(rows = batch.len()))]
pub(crate) async fn insert_new(tx: &mut TenantTx, batch: &[NewSignal]) -> ApiResult<usize> {
    let n = batch.len();
    let mut ids = Vec::with_capacity(n);
    let mut providers = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut companies = Vec::with_capacity(n);
    let mut contacts = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for signal in batch {
        ids.push(SignalId::new());
        providers.push(signal.provider.as_str());
        events.push(signal.event_id.as_str());
        types.push(signal.signal_type.as_str());
        hashes.push(signal.signal_hash.as_deref());
        companies.push(signal.company_id);
        contacts.push(signal.contact_id);
        payloads.push(&signal.payload);
        times.push(signal.occurred_at);
    }
    let tenant = tx.tenant_id();
    let accepted: i64 = sqlx::query_scalar(
        "WITH inserted AS ( \
             INSERT INTO signals (tenant_id, signal_id, provider, event_id, signal_type, signal_hash, \
                                  company_id, contact_id, payload, occurred_at) \
             SELECT $1, u.* FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                        $7::uuid[], $8::uuid[], $9::jsonb[], $10::timestamptz[]) \
                 AS u(signal_id, provider, event_id, signal_type, signal_hash, company_id, \
                      contact_id, payload, occurred_at) \
             ON CONFLICT DO NOTHING \
             RETURNING 1 \
         ) SELECT count(*) FROM inserted",
    )
    .bind(tenant)
    .bind(&ids)
    .bind(&providers)
    .bind(&events)
    .bind(&types)
    .bind(&hashes)
    .bind(&companies)
    .bind(&contacts)
    .bind(&payloads)
    .bind(&times)
    .fetch_one(tx.conn())
    .await
    .map_err(|e| db_error_with(e, CONSTRAINTS))?;
    Ok(usize::try_from(accepted).unwrap_or_default())
}

/// The checked filters of ListSignals.
#[derive(Debug)]
pub(crate) struct SignalFilter {
    pub(crate) provider: Option<String>,
    pub(crate) signal_type: Option<String>,
    pub(crate) company_id: Option<CompanyId>,
    pub(crate) contact_id: Option<ContactId>,
}

/// One page newest first (ids are UUIDv7: receipt order), `limit + 1` rows.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) fn list_page(filter: &SignalFilter, before: Option<SignalId>, limit: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM signals t WHERE t.tenant_id = $tenant"
    ));
    if let Some(provider) = &filter.provider {
        sql.push(" AND t.provider = ").push_bind(provider.as_str());
    }
    if let Some(signal_type) = &filter.signal_type {
        sql.push(" AND t.signal_type = ")
            .push_bind(signal_type.as_str());
    }
    if let Some(company) = filter.company_id {
        sql.push(" AND t.company_id = ").push_bind(company.uuid());
    }
    if let Some(contact) = filter.contact_id {
        sql.push(" AND t.contact_id = ").push_bind(contact.uuid());
    }
    sql.keyset(
        "t.signal_id",
        Order::Desc,
        before.map(SignalId::uuid),
        limit,
    );
    sql
}
