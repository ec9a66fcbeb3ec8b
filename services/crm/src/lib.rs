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
//! - [`audit`]: `CrmAuditService`, the audit trail every mutation above writes to.
//!
//! Shared by those: `lifecycle` (request-id idempotent creates, soft delete
//! and undelete, turning "0 rows" into NOT_FOUND or ABORTED) and `fields`
//! (parsers for domains, money, dates, tags, ...). [`routes`] builds the
//! gRPC router from a [`CrmState`]; `main.rs` only serves it.

use mosaic_db::{Database, Migrations, ServiceSchema};
use mosaic_proto::crm::{
    activity_service_server::ActivityServiceServer, company_service_server::CompanyServiceServer,
    contact_service_server::ContactServiceServer, crm_audit_service_server::CrmAuditServiceServer,
    deal_service_server::DealServiceServer, score_service_server::ScoreServiceServer,
    signal_service_server::SignalServiceServer,
};

pub mod activities;
pub mod audit;
pub mod companies;
pub mod contacts;
pub mod deals;
mod fields;
mod lifecycle;
pub mod purge;
pub mod scores;
pub mod signals;

pub static MIGRATIONS: Migrations = sqlx::migrate!("../../migrations/crm");

pub const SCHEMA: ServiceSchema = ServiceSchema {
    name: "crm",
    role: "mosaic_crm",
    extra_roles: &[],
    migrations: &MIGRATIONS,
};

/// Fully-qualified gRPC service names, for health reporting.
pub const SERVICE_NAMES: &[&str] = &[
    "mosaic.crm.v1.CompanyService",
    "mosaic.crm.v1.ContactService",
    "mosaic.crm.v1.DealService",
    "mosaic.crm.v1.ActivityService",
    "mosaic.crm.v1.SignalService",
    "mosaic.crm.v1.ScoreService",
    "mosaic.crm.v1.CrmAuditService",
];

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct CrmState {
    pub db: Database,
}

/// The crm router: every crm gRPC service over one state. Requests and
/// replies larger than `max_message_bytes` are refused by tonic (a request
/// with OUT_OF_RANGE).
pub fn routes(state: CrmState, max_message_bytes: usize) -> tonic::service::Routes {
    let mut builder = tonic::service::Routes::builder();
    add_routes(&mut builder, state, max_message_bytes);
    builder.routes()
}

/// Adds every crm service to `builder` (the all-in-one binary mounts several services).
pub fn add_routes(
    builder: &mut tonic::service::RoutesBuilder,
    state: CrmState,
    max_message_bytes: usize,
) {
    macro_rules! limited {
        ($server:expr) => {
            $server
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes)
        };
    }
    let db = state.db;
    let companies = CompanyServiceServer::new(companies::Companies::new(db.clone()));
    let contacts = ContactServiceServer::new(contacts::Contacts::new(db.clone()));
    let deals = DealServiceServer::new(deals::Deals::new(db.clone()));
    let activities = ActivityServiceServer::new(activities::Activities::new(db.clone()));
    let signals = SignalServiceServer::new(signals::Signals::new(db.clone()));
    let scores = ScoreServiceServer::new(scores::Scores::new(db.clone()));
    let audit = CrmAuditServiceServer::new(audit::Audit::new(db));
    builder
        .add_service(limited!(companies))
        .add_service(limited!(contacts))
        .add_service(limited!(deals))
        .add_service(limited!(activities))
        .add_service(limited!(signals))
        .add_service(limited!(scores))
        .add_service(limited!(audit));
}
