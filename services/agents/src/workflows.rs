//! `WorkflowService`: workflows (standard methods, enable/disable) and the
//! executions recorded for them. The shape rules (trigger config per trigger
//! type, the DAG) are `graph`'s; they are checked on the workflow as it will
//! be stored, so an update of `edges` alone is checked against the stored nodes.

use std::marker::PhantomData;

use mosaic_api::page::{self, PageBinding};
use mosaic_api::rules::{Kind, masked};
use mosaic_api::{AllOk, ApiError, ApiResult, etag, mask::UpdateMask, parse};
use mosaic_db::{Changed, Database, Resource, TenantContext, create_once};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::{
    CreateWorkflowRequest, DeleteWorkflowRequest, DisableWorkflowRequest, EnableWorkflowRequest,
    Execution, ExecutionStatus, GetWorkflowRequest, ListExecutionsRequest, ListExecutionsResponse,
    ListWorkflowsRequest, ListWorkflowsResponse, RecordExecutionRequest, TriggerType,
    UndeleteWorkflowRequest, UpdateWorkflowRequest, Workflow,
    workflow_service_server::WorkflowService,
};
use mosaic_tenant::Role;
use tonic::{Request, Response, Status};

use crate::ids::{ExecutionId, WorkflowId};

pub(crate) mod executions;
pub(crate) mod graph;
pub(crate) mod storage;

pub(crate) const RESOURCE: Resource<WorkflowId> = Resource {
    kind: Kind {
        name: "workflow",
        not_found: "WORKFLOW_NOT_FOUND",
        deleted: "WORKFLOW_DELETED",
    },
    table: "workflows",
    id_column: "workflow_id",
    select: storage::SELECT,
    constraints: &[],
    id: PhantomData,
};

/// Reason of RecordExecution for a disabled workflow.
pub const WORKFLOW_DISABLED: &str = "WORKFLOW_DISABLED";
const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2000;
const MAX_TRIGGER_CONFIG_BYTES: usize = 8 * 1024;

mosaic_api::patch! {
    /// The writable fields of a workflow, each checked on its own; the
    /// whole is checked by [`check_whole`].
    pub(crate) struct WorkflowFields / WorkflowPatch {
        display_name: String,
        description: String,
        trigger_type: TriggerType,
        trigger_config: serde_json::Value,
        nodes: Vec<graph::Node>,
        edges: Vec<graph::Edge>,
        enabled: bool,
    }
}

impl WorkflowPatch {
    fn parse(workflow: &Workflow, wanted: impl Fn(&str) -> bool) -> ApiResult<Self> {
        let (display_name, description, trigger_type, trigger_config, nodes, edges) = (
            masked(wanted("display_name"), || {
                parse::name("workflow.display_name", &workflow.display_name, MAX_NAME)
            }),
            masked(wanted("description"), || {
                parse::text(
                    "workflow.description",
                    &workflow.description,
                    MAX_DESCRIPTION,
                )
            }),
            masked(wanted("trigger_type"), || {
                match parse::enum_value("workflow.trigger_type", workflow.trigger_type)? {
                    TriggerType::Unspecified => Err(ApiError::invalid_argument(
                        "workflow.trigger_type",
                        "required",
                    )),
                    trigger => Ok(trigger),
                }
            }),
            masked(wanted("trigger_config"), || {
                parse::json_object(
                    "workflow.trigger_config",
                    workflow.trigger_config.as_ref(),
                    MAX_TRIGGER_CONFIG_BYTES,
                )
            }),
            masked(wanted("nodes"), || graph::nodes(&workflow.nodes)),
            masked(wanted("edges"), || graph::edges(&workflow.edges)),
        )
            .all_ok()?;
        Ok(Self {
            display_name,
            description,
            trigger_type,
            trigger_config,
            nodes,
            edges,
            enabled: wanted("enabled").then_some(workflow.enabled),
        })
    }
}

/// The rules across fields: the trigger config fits the trigger type, the
/// nodes and edges form a DAG.
fn check_whole(fields: &WorkflowFields) -> ApiResult<()> {
    graph::check_trigger_config(fields.trigger_type, &fields.trigger_config)?;
    graph::check_graph(&fields.nodes, &fields.edges)
}

#[derive(Debug)]
pub struct Workflows {
    db: Database,
}

impl Workflows {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Sets `enabled` on a live workflow; the same value again changes nothing.
    async fn set_enabled(
        &self,
        ctx: &TenantContext,
        raw_id: &str,
        raw_etag: &str,
        enabled: bool,
    ) -> ApiResult<Workflow> {
        ctx.require(Role::Member)?;
        let (id, expected) = (
            parse::id("workflow_id", raw_id),
            etag::parse("etag", raw_etag),
        )
            .all_ok()?;
        let action = if enabled {
            "workflow.enable"
        } else {
            "workflow.disable"
        };
        let row = RESOURCE
            .change(
                &self.db,
                ctx,
                id,
                expected,
                action,
                serde_json::json!({}),
                async |tx, current: storage::WorkflowRow| {
                    if current.enabled == enabled {
                        return Ok(Changed::Unchanged(current));
                    }
                    let fields = WorkflowFields {
                        enabled,
                        ..current.fields()
                    };
                    storage::update(tx, id, &fields).await.map(Changed::Written)
                },
            )
            .await?;
        Ok(row.into_proto())
    }
}

#[tonic::async_trait]
impl WorkflowService for Workflows {
    async fn create_workflow(
        &self,
        req: Request<CreateWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let workflow = request.workflow.clone().unwrap_or_default();
        let (new, request_id) = (
            WorkflowPatch::parse(&workflow, |_| true).and_then(WorkflowPatch::into_new),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        check_whole(&new)?;
        let workflow = create_once(
            &self.db,
            &ctx,
            "CreateWorkflow",
            request_id,
            &request,
            async |tx| {
                let id = WorkflowId::new();
                let row = storage::insert(tx, id, &new).await?;
                tx.audit("workflow.create", "workflow", id, serde_json::json!({}))
                    .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(workflow))
    }

    async fn get_workflow(
        &self,
        req: Request<GetWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id = parse::id("workflow_id", &req.get_ref().workflow_id)?;
        let row: storage::WorkflowRow = RESOURCE.read(&self.db, &ctx, id).await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn list_workflows(
        &self,
        req: Request<ListWorkflowsRequest>,
    ) -> Result<Response<ListWorkflowsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let (size, trigger) = (
            parse::page_size("page_size", request.page_size),
            parse::enum_or(
                "trigger_type",
                request.trigger_type,
                TriggerType::Unspecified,
            ),
        )
            .all_ok()?;
        let binding = PageBinding::new("ListWorkflows")
            .with(ctx.tenant_id()?)
            .with(request.show_deleted)
            .with(format_args!("{:?}", request.enabled))
            .with(trigger.stored_name());
        let after = page::decode::<WorkflowId>(&binding, &request.page_token)?;
        let filter = storage::WorkflowFilter {
            show_deleted: request.show_deleted,
            enabled: request.enabled,
            trigger: (trigger != TriggerType::Unspecified).then_some(trigger),
        };
        let rows = self
            .db
            .read(&ctx, storage::list_page(&filter, after, size))
            .await?;
        let (workflows, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |workflow| workflow.workflow_id,
            storage::WorkflowRow::into_proto,
        );
        Ok(Response::new(ListWorkflowsResponse {
            workflows,
            next_page_token,
        }))
    }

    async fn update_workflow(
        &self,
        req: Request<UpdateWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let workflow = request.workflow.unwrap_or_default();
        let mask = UpdateMask::parse(request.update_mask.as_ref(), WorkflowPatch::PATHS)?;
        let (id, expected, patch) = (
            parse::id("workflow.workflow_id", &workflow.workflow_id),
            etag::parse("workflow.etag", &workflow.etag),
            WorkflowPatch::parse(&workflow, |path| mask.contains(path)),
        )
            .all_ok()?;
        let row = RESOURCE
            .update(
                &self.db,
                &ctx,
                id,
                expected,
                mask.audit_details(),
                async |tx, current: storage::WorkflowRow| {
                    let fields = patch.apply(current.fields());
                    check_whole(&fields)?;
                    storage::update(tx, id, &fields).await
                },
            )
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn delete_workflow(
        &self,
        req: Request<DeleteWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let request = req.get_ref();
        let (id, expected) = (
            parse::id("workflow_id", &request.workflow_id),
            etag::parse("etag", &request.etag),
        )
            .all_ok()?;
        let row: storage::WorkflowRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, expected, true)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn undelete_workflow(
        &self,
        req: Request<UndeleteWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Admin)?;
        let id = parse::id("workflow_id", &req.get_ref().workflow_id)?;
        let row: storage::WorkflowRow = RESOURCE
            .delete_or_undelete(&self.db, &ctx, id, None, false)
            .await?;
        Ok(Response::new(row.into_proto()))
    }

    async fn enable_workflow(
        &self,
        req: Request<EnableWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let ctx = TenantContext::of(&req)?;
        let request = req.get_ref();
        let workflow = self
            .set_enabled(&ctx, &request.workflow_id, &request.etag, true)
            .await?;
        Ok(Response::new(workflow))
    }

    async fn disable_workflow(
        &self,
        req: Request<DisableWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let ctx = TenantContext::of(&req)?;
        let request = req.get_ref();
        let workflow = self
            .set_enabled(&ctx, &request.workflow_id, &request.etag, false)
            .await?;
        Ok(Response::new(workflow))
    }

    async fn record_execution(
        &self,
        req: Request<RecordExecutionRequest>,
    ) -> Result<Response<Execution>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.into_inner();
        let execution = request.execution.clone().unwrap_or_default();
        let (new, request_id) = (
            executions::parse_new(&execution),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        let execution = create_once(
            &self.db,
            &ctx,
            "RecordExecution",
            request_id,
            &request,
            async |tx| {
                // FOR SHARE: the workflow stays live and enabled until this commits.
                let enabled = storage::live_enabled_for_share(tx, new.workflow_id).await?;
                match enabled {
                    None => return Err(RESOURCE.not_found_at("execution.workflow_id")),
                    Some(false) => {
                        return Err(ApiError::failed_precondition(
                            WORKFLOW_DISABLED,
                            "the workflow is disabled; enable it before recording executions",
                        ));
                    }
                    Some(true) => {}
                }
                let id = ExecutionId::new();
                let row = executions::insert(tx, id, &new).await?;
                tx.audit(
                    "execution.record",
                    "execution",
                    id,
                    serde_json::json!({ "workflow_id": new.workflow_id.to_string() }),
                )
                .await?;
                Ok(row.into_proto())
            },
        )
        .await?;
        Ok(Response::new(execution))
    }

    async fn list_executions(
        &self,
        req: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let request = req.get_ref();
        let (size, workflow, status) = (
            parse::page_size("page_size", request.page_size),
            parse::optional_id::<WorkflowId>("workflow_id", &request.workflow_id),
            parse::enum_or("status", request.status, ExecutionStatus::Unspecified),
        )
            .all_ok()?;
        let binding = PageBinding::new("ListExecutions")
            .with(ctx.tenant_id()?)
            .with(request.workflow_id.as_str())
            .with(status.stored_name());
        let after = page::decode::<ExecutionId>(&binding, &request.page_token)?;
        let status = (status != ExecutionStatus::Unspecified).then_some(status);
        let rows = self
            .db
            .read(&ctx, executions::list_page(workflow, status, after, size))
            .await?;
        let (executions, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |execution| execution.execution_id,
            executions::ExecutionRow::into_proto,
        );
        Ok(Response::new(ListExecutionsResponse {
            executions,
            next_page_token,
        }))
    }
}
