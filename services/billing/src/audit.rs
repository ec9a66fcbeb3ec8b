//! `BillingAuditService`: the audit trail of billing mutations, listed by the shared
//! implementation (`mosaic_db::audit::list`, admins and owners).

use mosaic_db::{Database, TenantContext};
use mosaic_proto::billing::billing_audit_service_server::BillingAuditService;
use mosaic_proto::common::{ListAuditEventsRequest, ListAuditEventsResponse};
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
impl BillingAuditService for Audit {
    async fn list_audit_events(
        &self,
        req: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        let page = mosaic_db::audit::list(&self.db, &ctx, req.get_ref()).await?;
        Ok(Response::new(page))
    }
}
