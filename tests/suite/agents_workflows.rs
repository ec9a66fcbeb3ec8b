//! WorkflowService: workflows whose graphs must be DAGs and whose trigger
//! configs fit their trigger types, enable/disable, recorded executions,
//! isolation.

use mosaic_proto::agents::{
    CreateWorkflowRequest, DeleteWorkflowRequest, DisableWorkflowRequest, EnableWorkflowRequest,
    Execution, ExecutionStatus, GetWorkflowRequest, ListExecutionsRequest, ListWorkflowsRequest,
    RecordExecutionRequest, TriggerType, UndeleteWorkflowRequest, UpdateWorkflowRequest, Workflow,
    WorkflowEdge, WorkflowNode,
};
use prost_types::{FieldMask, Timestamp};
use tonic::Code;

use crate::agents_support::{AgentsTenant, nested, object, workflows};
use crate::harness::{assert_bad_field, assert_error};

fn node(id: &str) -> WorkflowNode {
    WorkflowNode {
        node_id: id.into(),
        r#type: "send_message".into(),
        config: Some(object(serde_json::json!({"template": "hi"}))),
    }
}

fn edge(from: &str, to: &str) -> WorkflowEdge {
    WorkflowEdge {
        from_node_id: from.into(),
        to_node_id: to.into(),
    }
}

fn workflow(nodes: Vec<WorkflowNode>, edges: Vec<WorkflowEdge>) -> Workflow {
    Workflow {
        display_name: "Follow up".into(),
        trigger_type: TriggerType::Schedule as i32,
        trigger_config: Some(object(serde_json::json!({"cron": "0 9 * * 1-5"}))),
        nodes,
        edges,
        ..Default::default()
    }
}

fn create(w: Workflow) -> CreateWorkflowRequest {
    CreateWorkflowRequest {
        workflow: Some(w),
        request_id: String::new(),
    }
}

fn diamond() -> Workflow {
    workflow(
        vec![node("start"), node("left"), node("right"), node("end")],
        vec![
            edge("start", "left"),
            edge("start", "right"),
            edge("left", "end"),
            edge("right", "end"),
        ],
    )
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn now() -> Timestamp {
    mosaic_api::convert::timestamp(chrono::Utc::now())
}

fn execution(workflow: &str, status: ExecutionStatus) -> RecordExecutionRequest {
    let ended = status != ExecutionStatus::Running;
    RecordExecutionRequest {
        execution: Some(Execution {
            workflow_id: workflow.into(),
            status: status as i32,
            start_time: Some(now()),
            finish_time: ended.then(now),
            input: Some(object(serde_json::json!({"contact": "c-1"}))),
            error: if status == ExecutionStatus::Failed {
                "timeout".into()
            } else {
                String::new()
            },
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn workflows_keep_their_graph_and_record_executions() {
    let t = AgentsTenant::new().await;
    let w = workflows()
        .create_workflow(t.as_role("member", create(diamond())))
        .await
        .unwrap()
        .into_inner();
    assert!(!w.enabled, "disabled unless asked");
    assert_eq!(w.nodes.len(), 4);
    assert_eq!(w.edges[3], edge("right", "end"));
    let got = workflows()
        .get_workflow(t.req(GetWorkflowRequest {
            workflow_id: w.workflow_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, w);

    // Executions need an enabled workflow.
    let disabled = workflows()
        .record_execution(t.req(execution(&w.workflow_id, ExecutionStatus::Running)))
        .await
        .unwrap_err();
    assert_error(&disabled, Code::FailedPrecondition, "WORKFLOW_DISABLED");
    let enabled = workflows()
        .enable_workflow(t.req(EnableWorkflowRequest {
            workflow_id: w.workflow_id.clone(),
            etag: w.etag.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(enabled.enabled);
    let mut recorded = Vec::new();
    for status in [
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::Running,
        ExecutionStatus::Succeeded,
    ] {
        let e = workflows()
            .record_execution(t.req(execution(&w.workflow_id, status)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.status, status as i32);
        recorded.push(e.execution_id);
    }
    let other = workflows()
        .create_workflow(t.req(create(Workflow {
            enabled: true,
            ..diamond()
        })))
        .await
        .unwrap()
        .into_inner();
    workflows()
        .record_execution(t.req(execution(&other.workflow_id, ExecutionStatus::Succeeded)))
        .await
        .unwrap();

    // Newest first, by workflow and status, in pages.
    let list = |workflow: &str, status: ExecutionStatus, size: i32, token: String| {
        let req = t.req(ListExecutionsRequest {
            workflow_id: workflow.into(),
            status: status as i32,
            page_size: size,
            page_token: token,
        });
        async move { workflows().list_executions(req).await.unwrap().into_inner() }
    };
    let all = list(
        &w.workflow_id,
        ExecutionStatus::Unspecified,
        0,
        String::new(),
    )
    .await;
    let ids: Vec<String> = all
        .executions
        .iter()
        .map(|e| e.execution_id.clone())
        .collect();
    let mut newest_first = recorded.clone();
    newest_first.reverse();
    assert_eq!(ids, newest_first);
    let succeeded = list(&w.workflow_id, ExecutionStatus::Succeeded, 0, String::new()).await;
    assert_eq!(succeeded.executions.len(), 2);
    let first = list("", ExecutionStatus::Unspecified, 3, String::new()).await;
    assert_eq!(first.executions.len(), 3);
    let rest = list("", ExecutionStatus::Unspecified, 3, first.next_page_token).await;
    assert_eq!(rest.executions.len(), 2);
    assert!(rest.next_page_token.is_empty());

    // Updating edges alone is checked against the stored nodes.
    let cyclic = workflows()
        .update_workflow(t.req(UpdateWorkflowRequest {
            workflow: Some(Workflow {
                workflow_id: w.workflow_id.clone(),
                edges: vec![edge("start", "end"), edge("end", "start")],
                ..Default::default()
            }),
            update_mask: mask(&["edges"]),
        }))
        .await
        .unwrap_err();
    assert_bad_field(&cyclic, "workflow.edges[1]");
    let changed = workflows()
        .update_workflow(t.req(UpdateWorkflowRequest {
            workflow: Some(Workflow {
                workflow_id: w.workflow_id.clone(),
                edges: vec![edge("start", "end")],
                ..Default::default()
            }),
            update_mask: mask(&["edges"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.edges, [edge("start", "end")]);
    assert_eq!(changed.nodes.len(), 4);
    // The trigger config is checked against the trigger type it will have.
    let mismatched = workflows()
        .update_workflow(t.req(UpdateWorkflowRequest {
            workflow: Some(Workflow {
                workflow_id: w.workflow_id.clone(),
                trigger_type: TriggerType::DealStageChanged as i32,
                ..Default::default()
            }),
            update_mask: mask(&["trigger_type"]),
        }))
        .await
        .unwrap_err();
    assert_bad_field(&mismatched, "workflow.trigger_config.cron");

    // Filters, disable, delete, undelete.
    let listed = workflows()
        .list_workflows(t.req(ListWorkflowsRequest {
            enabled: Some(true),
            trigger_type: TriggerType::Schedule as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .workflows;
    assert_eq!(listed.len(), 2);
    workflows()
        .disable_workflow(t.req(DisableWorkflowRequest {
            workflow_id: w.workflow_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let enabled_now = workflows()
        .list_workflows(t.req(ListWorkflowsRequest {
            enabled: Some(true),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .workflows;
    assert_eq!(enabled_now.len(), 1);
    workflows()
        .delete_workflow(t.req(DeleteWorkflowRequest {
            workflow_id: other.workflow_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let gone = workflows()
        .record_execution(t.req(execution(&other.workflow_id, ExecutionStatus::Succeeded)))
        .await
        .unwrap_err();
    assert_error(&gone, Code::NotFound, "WORKFLOW_NOT_FOUND");
    workflows()
        .undelete_workflow(t.req(UndeleteWorkflowRequest {
            workflow_id: other.workflow_id.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(t.count("executions").await, 5);
}

#[tokio::test]
async fn executions_are_idempotent_by_request_id() {
    let t = AgentsTenant::new().await;
    let w = workflows()
        .create_workflow(t.req(create(Workflow {
            enabled: true,
            ..diamond()
        })))
        .await
        .unwrap()
        .into_inner();
    let mut req = execution(&w.workflow_id, ExecutionStatus::Succeeded);
    req.request_id = uuid::Uuid::new_v4().to_string();
    let first = workflows()
        .record_execution(t.req(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = workflows()
        .record_execution(t.req(req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(t.count("executions").await, 1);
}

#[tokio::test]
async fn bad_graphs_and_triggers_name_the_fault_and_write_nothing() {
    let t = AgentsTenant::new().await;
    let many: Vec<WorkflowNode> = (0..501).map(|i| node(&format!("n{i}"))).collect();
    let cases: Vec<(Workflow, &str)> = vec![
        (
            workflow(
                vec![node("a"), node("b"), node("c")],
                vec![edge("a", "b"), edge("b", "c"), edge("c", "a")],
            ),
            "workflow.edges[2]",
        ),
        (
            workflow(vec![node("a")], vec![edge("a", "missing")]),
            "workflow.edges[0].to_node_id",
        ),
        (workflow(many, vec![]), "workflow.nodes"),
        (
            workflow(vec![node("a"), node("a")], vec![]),
            "workflow.nodes[1].node_id",
        ),
        (
            workflow(vec![node("A b")], vec![]),
            "workflow.nodes[0].node_id",
        ),
        (
            Workflow {
                trigger_type: 99,
                ..diamond()
            },
            "workflow.trigger_type",
        ),
        (
            Workflow {
                trigger_type: TriggerType::Unspecified as i32,
                ..diamond()
            },
            "workflow.trigger_type",
        ),
        (
            Workflow {
                trigger_config: Some(object(serde_json::json!({}))),
                ..diamond()
            },
            "workflow.trigger_config.cron",
        ),
        (
            Workflow {
                trigger_type: TriggerType::MessageReceived as i32,
                trigger_config: Some(object(serde_json::json!({"channel": "fax"}))),
                ..diamond()
            },
            "workflow.trigger_config.channel",
        ),
        (
            Workflow {
                trigger_config: Some(nested(100)),
                ..diamond()
            },
            "workflow.trigger_config",
        ),
        (
            workflow(
                vec![WorkflowNode {
                    config: Some(nested(100)),
                    ..node("a")
                }],
                vec![],
            ),
            // The decoder's recursion limit refuses it before the handler
            // sees it; the decoder knows the path, not the index.
            "workflow.nodes.config",
        ),
    ];
    for (w, field) in cases {
        let err = workflows()
            .create_workflow(t.req(create(w)))
            .await
            .unwrap_err();
        assert_bad_field(&err, field);
    }
    let edges: Vec<WorkflowEdge> = (0..2001).map(|i| edge(&format!("n{i}"), "x")).collect();
    let err = workflows()
        .create_workflow(t.req(create(workflow(vec![], edges))))
        .await
        .unwrap_err();
    assert_bad_field(&err, "workflow.edges");
    assert_eq!(t.count("workflows").await, 0);
    assert_eq!(t.count("audit_events").await, 0);

    // Executions: times and statuses are checked.
    let w = workflows()
        .create_workflow(t.req(create(Workflow {
            enabled: true,
            ..diamond()
        })))
        .await
        .unwrap()
        .into_inner();
    let mut running_with_end = execution(&w.workflow_id, ExecutionStatus::Running);
    running_with_end.execution.as_mut().unwrap().finish_time = Some(now());
    let mut ended_without = execution(&w.workflow_id, ExecutionStatus::Succeeded);
    ended_without.execution.as_mut().unwrap().finish_time = None;
    let mut no_status = execution(&w.workflow_id, ExecutionStatus::Succeeded);
    no_status.execution.as_mut().unwrap().status = 0;
    let mut big_input = execution(&w.workflow_id, ExecutionStatus::Succeeded);
    big_input.execution.as_mut().unwrap().input =
        Some(object(serde_json::json!({"x": "y".repeat(70_000)})));
    for (req, field) in [
        (running_with_end, "execution.finish_time"),
        (ended_without, "execution.finish_time"),
        (no_status, "execution.status"),
        (big_input, "execution.input"),
    ] {
        let err = workflows().record_execution(t.req(req)).await.unwrap_err();
        assert_bad_field(&err, field);
    }
    assert_eq!(t.count("executions").await, 0);
}

#[tokio::test]
async fn another_tenant_s_workflows_do_not_exist() {
    let (a, b) = (AgentsTenant::new().await, AgentsTenant::new().await);
    let w = workflows()
        .create_workflow(a.req(create(Workflow {
            enabled: true,
            ..diamond()
        })))
        .await
        .unwrap()
        .into_inner();
    workflows()
        .record_execution(a.req(execution(&w.workflow_id, ExecutionStatus::Succeeded)))
        .await
        .unwrap();
    let id = w.workflow_id.clone();
    let not_found = |err: tonic::Status| assert_error(&err, Code::NotFound, "WORKFLOW_NOT_FOUND");
    not_found(
        workflows()
            .get_workflow(b.req(GetWorkflowRequest {
                workflow_id: id.clone(),
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        workflows()
            .update_workflow(b.req(UpdateWorkflowRequest {
                workflow: Some(Workflow {
                    workflow_id: id.clone(),
                    ..diamond()
                }),
                update_mask: None,
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        workflows()
            .disable_workflow(b.req(DisableWorkflowRequest {
                workflow_id: id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        workflows()
            .enable_workflow(b.req(EnableWorkflowRequest {
                workflow_id: id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        workflows()
            .delete_workflow(b.req(DeleteWorkflowRequest {
                workflow_id: id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        workflows()
            .undelete_workflow(b.req(UndeleteWorkflowRequest {
                workflow_id: id.clone(),
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        workflows()
            .record_execution(b.req(execution(&id, ExecutionStatus::Succeeded)))
            .await
            .unwrap_err(),
    );
    let executions = workflows()
        .list_executions(b.req(ListExecutionsRequest {
            workflow_id: id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .executions;
    assert!(executions.is_empty());
    let listed = workflows()
        .list_workflows(b.req(ListWorkflowsRequest {
            show_deleted: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .workflows;
    assert!(listed.is_empty());
    let after = workflows()
        .get_workflow(a.req(GetWorkflowRequest { workflow_id: id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, w);
    assert_eq!(b.count("executions").await, 0);
}

/// agents' part of `mosaic purge` removes agents, documents and workflows
/// (with their executions) 30 days after their soft delete, and keeps
/// younger ones. (`purge.rs` runs the walk over every tenant.)
#[tokio::test]
async fn mosaic_purge_removes_expired_agents_rows() {
    use mosaic_proto::agents::{
        CreateDocumentRequest, DeleteAgentRequest, DeleteDocumentRequest, Document,
    };

    let t = AgentsTenant::new().await;
    let agent = t.agent("old").await;
    let kept = t.agent("recent").await;
    let doc = crate::agents_support::documents()
        .create_document(t.req(CreateDocumentRequest {
            document: Some(Document {
                display_name: "old".into(),
                source_uri: "https://example.com/old".into(),
                agent_id: agent.agent_id.clone(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let w = workflows()
        .create_workflow(t.req(create(Workflow {
            enabled: true,
            ..diamond()
        })))
        .await
        .unwrap()
        .into_inner();
    workflows()
        .record_execution(t.req(execution(&w.workflow_id, ExecutionStatus::Succeeded)))
        .await
        .unwrap();
    crate::agents_support::documents()
        .delete_document(t.req(DeleteDocumentRequest {
            document_id: doc.document_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    workflows()
        .delete_workflow(t.req(DeleteWorkflowRequest {
            workflow_id: w.workflow_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let delete_agent = |id: String| async move {
        crate::agents_support::agents()
            .delete_agent(t.req(DeleteAgentRequest {
                agent_id: id,
                etag: String::new(),
            }))
            .await
            .unwrap();
    };
    delete_agent(agent.agent_id.clone()).await;
    let mut db = crate::harness::app().admin_db().await;
    for table in ["documents", "workflows", "agents"] {
        sqlx::query(&format!(
            "UPDATE agents.{table} SET deleted_at = deleted_at - interval '31 days' \
             WHERE tenant_id = $1 AND deleted_at IS NOT NULL"
        ))
        .bind(t.id)
        .execute(&mut db)
        .await
        .unwrap();
    }
    delete_agent(kept.agent_id.clone()).await;
    // This tenant's part of `mosaic purge`, as the walk over every tenant
    // runs it (another test's walk may get here first: the rows are gone
    // either way, each with its audit event).
    let pool =
        mosaic_db::Database::connect_lazy(&crate::harness::app().db_config("agents"), "purge-test")
            .unwrap();
    let purger = mosaic_server::ServiceModule::purger(&mosaic_agents::Agents, &pool).unwrap();
    purger.purge_tenant(t.id, chrono::Utc::now()).await.unwrap();
    pool.close().await;
    let purged: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM agents.audit_events WHERE tenant_id = $1 AND action LIKE '%.purge' ORDER BY action",
    )
    .bind(t.id)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(purged, ["agent.purge", "document.purge", "workflow.purge"]);
    assert_eq!(t.count("agents").await, 1, "deleted a moment ago: kept");
    assert_eq!(t.count("documents").await, 0);
    assert_eq!(t.count("workflows").await, 0);
    assert_eq!(
        t.count("executions").await,
        0,
        "executions go with their workflow"
    );
}
