//! The billing service: each tenant's credit account, its append-only
//! ledger, two-phase holds, refunds and reconciliation. Schema `billing`,
//! runtime role `mosaic_billing`.
//!
//! Layout: the handlers of `CreditService` are in [`credits`] (take the
//! tenant context, check the role, parse the request, call storage, map the
//! rows); the SQL is in one `storage` module per resource:
//!
//! - [`accounts`]: CreateAccount, GetAccount and Reconcile;
//! - [`ledger`]: TopUp, Consume, Refund, Adjust and ListLedger;
//! - [`holds`]: Reserve, Capture, Release and GetHold;
//! - [`sweeper`]: the background task that releases expired holds;
//! - [`input`]: billing's request values (amounts, idempotency keys,
//!   references, the tenant a request acts for);
//! - [`audit`]: `BillingAuditService`, the audit trail of every mutation;
//! - [`ids`]: the id newtypes.
//!
//! The books stay exact under concurrency because every change of an account
//! is one conditional `UPDATE ... WHERE balance - held >= $n` whose
//! `RETURNING` feeds the ledger insert and the audit insert of the same
//! statement (see `migrations/billing/0001_ledger.sql`); a key's first effect
//! is the only one because the ledger's `(tenant_id, idempotency_key)` is
//! unique. [`Billing`] describes the service to the kit.

use mosaic_core::StartupError;
use mosaic_db::{Migrations, ServiceSchema};
use mosaic_proto::billing::{
    billing_audit_service_server::BillingAuditServiceServer,
    credit_service_server::CreditServiceServer,
};
use mosaic_server::{Deps, Service, ServiceModule, add_services};

pub mod accounts;
pub mod audit;
pub mod credits;
pub mod holds;
pub mod ids;
pub mod input;
pub mod ledger;
pub mod sweeper;

pub static MIGRATIONS: Migrations = sqlx::migrate!("../../migrations/billing");

/// The read-only role the cross-tenant reads switch to (the sweeper's scan
/// for expired holds, Reconcile of every account).
pub const PLATFORM_ROLE: &str = "mosaic_billing_platform";

pub const SCHEMA: ServiceSchema = ServiceSchema {
    name: "billing",
    role: "mosaic_billing",
    extra_roles: &[PLATFORM_ROLE],
    migrations: &MIGRATIONS,
    superseded: &[],
};

/// How often the sweeper looks for expired holds (milliseconds).
pub const SWEEP_INTERVAL_MS: &str = "MOSAIC_BILLING_SWEEP_INTERVAL_MS";
/// Its default: one second.
pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 1000;

/// The billing service, for the kit.
#[derive(Debug, Clone, Copy)]
pub struct Billing;

impl ServiceModule for Billing {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn schema(&self) -> Option<ServiceSchema> {
        Some(SCHEMA)
    }

    fn build(&self, deps: &Deps) -> Result<Service, StartupError> {
        let db = deps.db()?.with_platform_role(PLATFORM_ROLE);
        let interval = std::time::Duration::from_millis(
            deps.env
                .positive(SWEEP_INTERVAL_MS, DEFAULT_SWEEP_INTERVAL_MS)?,
        );
        let mut service = Service::new(deps);
        add_services!(
            service,
            CreditServiceServer::new(credits::Credits::new(db.clone())),
            BillingAuditServiceServer::new(audit::Audit::new(db.clone())),
        );
        service.background("billing-hold-sweeper", move |stop| {
            sweeper::run(db, interval, stop)
        });
        Ok(service)
    }
}
