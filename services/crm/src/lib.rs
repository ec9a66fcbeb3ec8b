//! The crm service: companies, contacts, deals, activities, signals and
//! scores of each tenant. Schema `crm`, runtime role `mosaic_crm`.
//!
//! Layout: one module per resource, each with its handlers (take the tenant
//! context, parse the request into checked values, call storage, map the
//! rows) and a `storage` submodule holding its SQL:
//!
//! - [`companies`]: standard methods and `BatchUpsertCompanies` by `external_id`;
//! - [`contacts`]: standard methods, filtered keyset listing with full-text
//!   search, and the client-streaming `ImportContacts` (`contacts::import`);
//! - [`deals`]: standard methods, contact links, the pipeline summary;
//! - [`activities`]: the activity log, listing by subject and time, daily counts;
//! - [`signals`]: duplicate-dropping batch ingestion and listing;
//! - [`scores`]: batch upsert and get;
//! - [`audit`]: `CrmAuditService`, the audit trail every mutation above writes to;
//! - [`purge`]: what `mosaic purge` removes for each tenant;
//! - [`subjects`]: the relay that tells agents about purged contacts and
//!   deals, so approvals naming them have the subject cleared;
//! - [`ids`]: the id newtypes of crm's resources.
//!
//! The standard-method rules (request-id idempotent creates, updates, soft
//! delete and undelete) are `mosaic_db::resource`'s, the request parsers
//! `mosaic_api::parse`'s. [`Crm`] describes the service to the kit.

use std::sync::Arc;

use mosaic_core::StartupError;
use mosaic_db::{Database, Migrations, ServiceSchema};
use mosaic_proto::crm::{
    activity_service_server::ActivityServiceServer, company_service_server::CompanyServiceServer,
    contact_service_server::ContactServiceServer, crm_audit_service_server::CrmAuditServiceServer,
    deal_service_server::DealServiceServer, score_service_server::ScoreServiceServer,
    signal_service_server::SignalServiceServer,
};
use mosaic_server::{Deps, ExpiredRows, PurgeTenant, Service, ServiceModule, add_services};

pub mod activities;
pub mod audit;
pub mod companies;
pub mod contacts;
pub mod deals;
pub mod ids;
pub mod purge;
pub mod scores;
pub mod signals;
pub mod subjects;

pub static MIGRATIONS: Migrations = sqlx::migrate!("../../migrations/crm");

/// The read-only role the relay's cross-tenant read of deleted subjects
/// switches to.
pub const PLATFORM_ROLE: &str = "mosaic_crm_platform";

pub const SCHEMA: ServiceSchema = ServiceSchema {
    name: "crm",
    role: "mosaic_crm",
    extra_roles: &[PLATFORM_ROLE],
    migrations: &MIGRATIONS,
    // 0001 and 0002 before audit_events, idempotency_keys and the fencing
    // moved into the migrator (same objects, written once); 0004 before its
    // idempotency_keys index moved into the base.
    superseded: &[
        (
            1,
            "8e7795fe4a58d876d7904938a776306826506b3c126de16758b00aa5aa65405a",
        ),
        (
            2,
            "27066027a031914bef6d173791855be592560450d78c03160a5f3c1159bdb37d",
        ),
        (
            4,
            "6c7a4c2efc30730c5ac850a14db8f69c6125d19908c63e2fc035943bd720f337",
        ),
    ],
};

/// The crm service, for the kit.
#[derive(Debug, Clone, Copy)]
pub struct Crm;

impl ServiceModule for Crm {
    fn name(&self) -> &'static str {
        "crm"
    }

    fn schema(&self) -> Option<ServiceSchema> {
        Some(SCHEMA)
    }

    fn build(&self, deps: &Deps) -> Result<Service, StartupError> {
        let db = deps.db()?;
        let mut service = Service::new(deps);
        add_services!(
            service,
            CompanyServiceServer::new(companies::Companies::new(db.clone())),
            ContactServiceServer::new(contacts::Contacts::new(db.clone())),
            DealServiceServer::new(deals::Deals::new(db.clone())),
            ActivityServiceServer::new(activities::Activities::new(db.clone())),
            SignalServiceServer::new(signals::Signals::new(db.clone())),
            ScoreServiceServer::new(scores::Scores::new(db.clone())),
            CrmAuditServiceServer::new(audit::Audit::new(db.clone())),
        );
        let relay = subjects::Relay::new(
            db.with_platform_role(PLATFORM_ROLE),
            deps.peers.channel("agents")?,
            deps.tokens.signer()?,
            deps.tokens.verify.clone(),
        );
        let interval = subjects::Relay::interval(&deps.env)?;
        service.background("crm-subject-relay", move |stop| relay.run(interval, stop));
        Ok(service)
    }

    fn purger(&self, db: &Database) -> Option<Arc<dyn PurgeTenant>> {
        Some(Arc::new(ExpiredRows::new(db.clone(), purge::TABLES)))
    }
}
