//! SQL of workflows. Every statement names `tenant_id = $1` (RLS is the backstop).

use mosaic_api::{ApiResult, convert};
use mosaic_db::{HasMeta, Order, RowMeta, Select, TenantTx, db_error};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::{TriggerType, Workflow, WorkflowEdge, WorkflowNode};
use sqlx::types::Json;

use super::WorkflowFields;
use super::graph::{Edge, Node};
use crate::ids::WorkflowId;

/// Select list over the alias `t`.
pub(crate) const SELECT: &str = "t.workflow_id, t.display_name, t.description, t.trigger_type, \
     t.trigger_config, t.nodes, t.edges, t.enabled, t.revision, t.created_at, t.updated_at, t.deleted_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct WorkflowRow {
    pub(crate) workflow_id: WorkflowId,
    pub(crate) display_name: String,
    pub(crate) description: String,
    pub(crate) trigger_type: String,
    pub(crate) trigger_config: serde_json::Value,
    pub(crate) nodes: Json<Vec<Node>>,
    pub(crate) edges: Json<Vec<Edge>>,
    pub(crate) enabled: bool,
    #[sqlx(flatten)]
    pub(crate) meta: RowMeta,
}

impl HasMeta for WorkflowRow {
    fn meta(&self) -> &RowMeta {
        &self.meta
    }
}

impl WorkflowRow {
    fn trigger(&self) -> TriggerType {
        TriggerType::from_stored(&self.trigger_type).unwrap_or_default()
    }

    pub(crate) fn fields(&self) -> WorkflowFields {
        WorkflowFields {
            display_name: self.display_name.clone(),
            description: self.description.clone(),
            trigger_type: self.trigger(),
            trigger_config: self.trigger_config.clone(),
            nodes: self.nodes.0.clone(),
            edges: self.edges.0.clone(),
            enabled: self.enabled,
        }
    }

    pub(crate) fn into_proto(self) -> Workflow {
        let trigger_type = self.trigger() as i32;
        Workflow {
            workflow_id: self.workflow_id.to_string(),
            display_name: self.display_name,
            description: self.description,
            trigger_type,
            trigger_config: Some(convert::json_to_struct(self.trigger_config)),
            nodes: self
                .nodes
                .0
                .into_iter()
                .map(|node| WorkflowNode {
                    node_id: node.id,
                    r#type: node.kind,
                    config: Some(convert::json_to_struct(node.config)),
                })
                .collect(),
            edges: self
                .edges
                .0
                .into_iter()
                .map(|edge| WorkflowEdge {
                    from_node_id: edge.from,
                    to_node_id: edge.to,
                })
                .collect(),
            enabled: self.enabled,
            create_time: self.meta.create_time(),
            update_time: self.meta.update_time(),
            delete_time: self.meta.delete_time(),
            expire_time: self.meta.expire_time(),
            etag: self.meta.etag(),
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn insert(
    tx: &mut TenantTx,
    id: WorkflowId,
    fields: &WorkflowFields,
) -> ApiResult<WorkflowRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "INSERT INTO workflows AS t (tenant_id, workflow_id, display_name, description, \
         trigger_type, trigger_config, nodes, edges, enabled) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&fields.display_name)
    .bind(&fields.description)
    .bind(fields.trigger_type.stored_name())
    .bind(&fields.trigger_config)
    .bind(Json(&fields.nodes))
    .bind(Json(&fields.edges))
    .bind(fields.enabled)
    .fetch_one(tx.conn())
    .await
    .map_err(db_error)
}

/// Writes every field of a row the caller locked; NOT_FOUND if it vanished.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn update(
    tx: &mut TenantTx,
    id: WorkflowId,
    fields: &WorkflowFields,
) -> ApiResult<WorkflowRow> {
    let tenant = tx.tenant_id();
    sqlx::query_as(&format!(
        "UPDATE workflows AS t SET display_name = $3, description = $4, trigger_type = $5, \
         trigger_config = $6, nodes = $7, edges = $8, enabled = $9, \
         revision = t.revision + 1, updated_at = now() \
         WHERE t.tenant_id = $1 AND t.workflow_id = $2 RETURNING {SELECT}"
    ))
    .bind(tenant)
    .bind(id)
    .bind(&fields.display_name)
    .bind(&fields.description)
    .bind(fields.trigger_type.stored_name())
    .bind(&fields.trigger_config)
    .bind(Json(&fields.nodes))
    .bind(Json(&fields.edges))
    .bind(fields.enabled)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)?
    .ok_or_else(|| super::RESOURCE.not_found())
}

/// Whether the live workflow `id` is enabled (`None`: no live workflow),
/// keeping it from changing until the transaction ends.
pub(crate) async fn live_enabled_for_share(
    tx: &mut TenantTx,
    id: WorkflowId,
) -> ApiResult<Option<bool>> {
    let tenant = tx.tenant_id();
    sqlx::query_scalar(
        "SELECT enabled FROM workflows \
         WHERE tenant_id = $1 AND workflow_id = $2 AND deleted_at IS NULL FOR SHARE",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(tx.conn())
    .await
    .map_err(db_error)
}

/// The filters of ListWorkflows.
#[derive(Debug)]
pub(crate) struct WorkflowFilter {
    pub(crate) show_deleted: bool,
    pub(crate) enabled: Option<bool>,
    pub(crate) trigger: Option<TriggerType>,
}

/// One page in id (= creation) order, `limit + 1` rows.
pub(crate) fn list_page(filter: &WorkflowFilter, after: Option<WorkflowId>, limit: u32) -> Select {
    let mut sql = Select::new(format!(
        "SELECT {SELECT} FROM workflows t WHERE t.tenant_id = $tenant"
    ));
    if !filter.show_deleted {
        sql.push(" AND t.deleted_at IS NULL");
    }
    if let Some(enabled) = filter.enabled {
        sql.push(" AND t.enabled = ").push_bind(enabled);
    }
    if let Some(trigger) = filter.trigger {
        sql.push(" AND t.trigger_type = ")
            .push_bind(trigger.stored_name());
    }
    sql.keyset(
        "t.workflow_id",
        Order::Asc,
        after.map(WorkflowId::uuid),
        limit,
    );
    sql
}
