//! The agents service under test, and helpers shared by the `agents_*` tests.

use mosaic_core::TenantId;
use mosaic_proto::agents::{
    Agent, CreateAgentRequest, agent_service_client::AgentServiceClient,
    agents_audit_service_client::AgentsAuditServiceClient,
    document_service_client::DocumentServiceClient, workflow_service_client::WorkflowServiceClient,
};
use tonic::Request;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::harness::{app, authed};

pub(crate) fn agents() -> AgentServiceClient<Channel> {
    AgentServiceClient::new(app().channel())
}
pub(crate) fn documents() -> DocumentServiceClient<Channel> {
    DocumentServiceClient::new(app().channel())
}
pub(crate) fn workflows() -> WorkflowServiceClient<Channel> {
    WorkflowServiceClient::new(app().channel())
}
pub(crate) fn audit() -> AgentsAuditServiceClient<Channel> {
    AgentsAuditServiceClient::new(app().channel())
}

/// A token of the edge service allowed to look up public keys (no tenant).
pub(crate) fn edge_token() -> String {
    app().token(None, "service:edge", &["svc:agent_lookup"])
}

/// A fresh tenant, with nothing in agents.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AgentsTenant {
    pub(crate) id: TenantId,
}

impl AgentsTenant {
    pub(crate) async fn new() -> Self {
        Self {
            id: app().new_tenant().await.id,
        }
    }

    pub(crate) fn token(&self, role: &str) -> String {
        app().token(Some(self.id), &format!("user:{}", Uuid::now_v7()), &[role])
    }

    /// `msg` as an admin of this tenant (admins may call every agents method).
    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        authed(msg, &self.token("admin"))
    }

    pub(crate) fn as_role<T>(&self, role: &str, msg: T) -> Request<T> {
        authed(msg, &self.token(role))
    }

    pub(crate) async fn agent(&self, name: &str) -> Agent {
        agents()
            .create_agent(self.req(CreateAgentRequest {
                agent: Some(Agent {
                    display_name: name.into(),
                    model: "gpt-4o-mini".into(),
                    enabled: true,
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .expect("create agent")
            .into_inner()
    }

    /// Rows of `agents.<table>` in this tenant, counted behind the API (superuser).
    pub(crate) async fn count(&self, table: &str) -> i64 {
        let mut db = app().admin_db().await;
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM agents.{table} WHERE tenant_id = $1"
        ))
        .bind(self.id)
        .fetch_one(&mut db)
        .await
        .expect("count")
    }
}

/// A `google.protobuf.Struct` from a JSON object.
pub(crate) fn object(json: serde_json::Value) -> prost_types::Struct {
    mosaic_api::convert::json_to_struct(json)
}

/// A JSON object nested `depth` levels deep.
pub(crate) fn nested(depth: usize) -> prost_types::Struct {
    let mut json = serde_json::json!({});
    for _ in 0..depth {
        json = serde_json::json!({ "a": json });
    }
    object(json)
}
