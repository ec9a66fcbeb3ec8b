//! The agents service: agent configs (with their public keys), knowledge-base
//! documents and their worker queue, workflows and their executions. Schema
//! `agents`, runtime role `mosaic_agents`.
//!
//! Layout: one module per resource, each with its handlers (take the tenant
//! context, parse the request into checked values, call storage, map the
//! rows) and a `storage` submodule holding its SQL:
//!
//! - [`agents`]: standard methods, `RotatePublicKey` / `ClearPublicKey`, and
//!   `LookupAgentByPublicKey`, the one documented cross-tenant read;
//! - [`documents`]: standard methods and the lease-based worker queue
//!   (`ClaimDocuments`, `CompleteDocument`, `FailDocument`);
//! - [`approvals`]: actions an agent drafts, approved or rejected by the
//!   tenant's approver role, then claimed by an executor with a lease;
//! - [`workflows`]: standard methods, enable/disable, the DAG and trigger
//!   rules (`workflows::graph`), executions (`workflows::executions`);
//! - [`audit`]: `AgentsAuditService`, the audit trail every mutation writes to;
//! - `purge`: what `mosaic purge` removes for each tenant;
//! - [`ids`]: the id newtypes of agents' resources.
//!
//! The standard-method rules are `mosaic_db::resource`'s, the request
//! parsers `mosaic_api::parse`'s. [`Agents`] describes the service to the kit.

use std::sync::Arc;

use mosaic_core::StartupError;
use mosaic_db::{Database, Migrations, ServiceSchema};
use mosaic_proto::agents::{
    agent_service_server::AgentServiceServer,
    agents_audit_service_server::AgentsAuditServiceServer,
    approval_service_server::ApprovalServiceServer, document_service_server::DocumentServiceServer,
    workflow_service_server::WorkflowServiceServer,
};
use mosaic_server::{Deps, ExpiredRows, PurgeTenant, Service, ServiceModule, add_services};

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod documents;
pub mod ids;
mod purge;
pub mod workflows;

pub static MIGRATIONS: Migrations = sqlx::migrate!("../../migrations/agents");

pub const SCHEMA: ServiceSchema = ServiceSchema {
    name: "agents",
    role: "mosaic_agents",
    extra_roles: &[],
    migrations: &MIGRATIONS,
    superseded: &[],
};

/// The agents service, for the kit.
#[derive(Debug, Clone, Copy)]
pub struct Agents;

impl ServiceModule for Agents {
    fn name(&self) -> &'static str {
        "agents"
    }

    fn schema(&self) -> Option<ServiceSchema> {
        Some(SCHEMA)
    }

    fn build(&self, deps: &Deps) -> Result<Service, StartupError> {
        let db = deps.db()?;
        let mut service = Service::new(deps);
        add_services!(
            service,
            AgentServiceServer::new(agents::Agents::new(
                db.clone(),
                deps.access.clone(),
                deps.cache.clone(),
            )),
            DocumentServiceServer::new(documents::Documents::new(db.clone())),
            WorkflowServiceServer::new(workflows::Workflows::new(db.clone())),
            ApprovalServiceServer::new(approvals::Approvals::new(db.clone(), deps.access.clone())),
            AgentsAuditServiceServer::new(audit::Audit::new(db)),
        );
        Ok(service)
    }

    fn purger(&self, db: &Database) -> Option<Arc<dyn PurgeTenant>> {
        Some(Arc::new(ExpiredRows::new(db.clone(), purge::TABLES)))
    }
}
