//! `AuditService`: the identity audit trail of the caller's tenant.

use mosaic_db::{Database, TenantContext};
use mosaic_proto::common::{ListAuditEventsRequest, ListAuditEventsResponse};
use mosaic_proto::identity::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct Audit {
    db: Database,
}

impl Audit {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl AuditService for Audit {
    async fn list_audit_events(
        &self,
        req: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        Ok(Response::new(
            mosaic_db::audit::list(&self.db, &ctx, req.get_ref()).await?,
        ))
    }
}
