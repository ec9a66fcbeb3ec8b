//! The purge: what soft delete promises to remove (`mosaic_db::purge`).
//! Companies, contacts and deals go [`RETENTION`] after `deleted_at`,
//! `request_id` claims after `REQUEST_RETENTION`.
//!
//! What goes with a purged row is what its foreign keys say (see
//! `migrations/crm/0002_resources.sql`): a contact takes its deal links and
//! activities, a company its scores and activities; references from deals and
//! signals are cleared. A company stays while any deal still points at it.

use chrono::{DateTime, Utc};
use mosaic_api::ApiResult;
use mosaic_core::TenantId;
use mosaic_db::Database;
pub use mosaic_db::purge::RETENTION;
use mosaic_db::purge::{Expiring, purge_expired};

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub deals: u64,
    pub contacts: u64,
    pub companies: u64,
    pub requests: u64,
}

/// Deals first, so that companies they pinned can go in the same run.
pub(crate) const TABLES: &[Expiring] = &[
    Expiring {
        table: "deals",
        id_column: "deal_id",
        kind: "deal",
        extra: "",
    },
    Expiring {
        table: "contacts",
        id_column: "contact_id",
        kind: "contact",
        extra: "",
    },
    Expiring {
        table: "companies",
        id_column: "company_id",
        kind: "company",
        extra: " AND NOT EXISTS (SELECT 1 FROM deals d \
                WHERE d.tenant_id = t.tenant_id AND d.company_id = t.company_id)",
    },
];

/// Purges `tenant`'s crm rows that expired by `now`.
pub async fn purge_tenant(
    db: &Database,
    tenant: TenantId,
    now: DateTime<Utc>,
) -> ApiResult<Purged> {
    let (counts, requests) = purge_expired(db, tenant, now, TABLES).await?;
    let count = |i: usize| counts.get(i).copied().unwrap_or_default();
    Ok(Purged {
        deals: count(0),
        contacts: count(1),
        companies: count(2),
        requests,
    })
}
