//! Approvals: an action's way from PENDING to SUCCEEDED or FAILED, at most
//! once per transition (two approvers at once: one wins), the approver role
//! from the tenant's settings, edits recorded as a diff, expiry, the
//! executor's lease, subject deletion, lists, another tenant, bad input.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use mosaic_proto::agents::{
    Action, ActionKind, ActionState, ApproveActionRequest, ClaimActionsRequest,
    ClearSubjectRequest, CompleteActionRequest, CreateActionRequest, GetActionRequest,
    ListActionsRequest, RejectActionRequest, SubjectType,
    approval_service_client::ApprovalServiceClient,
};
use mosaic_proto::common::ListAuditEventsRequest;
use mosaic_proto::identity::{
    Tenant, UpdateTenantRequest, tenant_service_client::TenantServiceClient,
};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::agents_support::{AgentsTenant, audit, object};
use crate::harness::{app, assert_bad_field, assert_error, authed};

pub(crate) fn approvals() -> ApprovalServiceClient<Channel> {
    ApprovalServiceClient::new(app().channel())
}

fn email(subject: &str) -> prost_types::Struct {
    object(json!({"to": ["ada@example.com"], "subject": subject, "body": "Hello"}))
}

pub(crate) async fn draft(
    t: &AgentsTenant,
    agent: &str,
    subject: Option<(SubjectType, Uuid)>,
) -> Action {
    let (subject_type, subject_id) = subject
        .map(|(kind, id)| (kind as i32, id.to_string()))
        .unwrap_or_default();
    approvals()
        .create_action(t.as_role(
            "member",
            CreateActionRequest {
                action: Some(Action {
                    agent_id: agent.into(),
                    kind: ActionKind::SendEmail as i32,
                    parameters: Some(email("Hi")),
                    subject_type,
                    subject_id,
                    reason: "the contact asked for the price list".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect("create action")
        .into_inner()
}

fn approve(id: &str, parameters: Option<prost_types::Struct>) -> ApproveActionRequest {
    ApproveActionRequest {
        action_id: id.into(),
        etag: String::new(),
        parameters,
        note: "looks right".into(),
    }
}

fn claim(max: i32, lease_secs: i64) -> ClaimActionsRequest {
    ClaimActionsRequest {
        max_actions: max,
        lease: Some(prost_types::Duration {
            seconds: lease_secs,
            nanos: 0,
        }),
    }
}

fn complete(id: &str, claim: &str, outcome: ActionState) -> CompleteActionRequest {
    CompleteActionRequest {
        action_id: id.into(),
        claim_id: claim.into(),
        outcome: outcome as i32,
        result: Some(object(json!({"message_id": "m-1"}))),
        error: String::new(),
    }
}

pub(crate) async fn get(t: &AgentsTenant, id: &str) -> Action {
    approvals()
        .get_action(t.as_role(
            "viewer",
            GetActionRequest {
                action_id: id.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn an_action_goes_from_draft_through_approval_to_success() {
    let t = AgentsTenant::new().await;
    let agent = t.agent("Drafter").await;
    let drafted = draft(&t, &agent.agent_id, None).await;
    assert_eq!(drafted.state, ActionState::Pending as i32);
    assert!(drafted.expire_time.is_some());
    assert_eq!(drafted.agent_id, agent.agent_id);

    // The approver edits the subject: recorded as a diff.
    let approved = approvals()
        .approve_action(t.req(approve(&drafted.action_id, Some(email("Hello there")))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state, ActionState::Approved as i32);
    assert!(approved.decided_by.starts_with("user:"));
    assert_eq!(approved.decision_note, "looks right");
    assert_eq!(
        approved.parameters_diff,
        Some(object(json!({
            "changed": {"subject": {"from": "Hi", "to": "Hello there"}},
            "added": {},
            "removed": [],
        })))
    );
    assert_eq!(
        approved.parameters.as_ref().unwrap().fields["subject"],
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("Hello there".into()))
        }
    );

    let claimed = approvals()
        .claim_actions(t.as_role("member", claim(10, 60)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claimed.actions.len(), 1);
    let executing = &claimed.actions[0];
    assert_eq!(executing.state, ActionState::Executing as i32);
    assert_eq!(executing.claim_id, claimed.claim_id);
    assert_eq!(executing.attempt_count, 1);
    let done = approvals()
        .complete_action(t.as_role(
            "member",
            complete(
                &drafted.action_id,
                &claimed.claim_id,
                ActionState::Succeeded,
            ),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, ActionState::Succeeded as i32);
    assert_eq!(done.result, Some(object(json!({"message_id": "m-1"}))));
    assert!(done.claim_id.is_empty());
    // Nothing is left to claim; a finished action takes no other transition.
    let empty = approvals()
        .claim_actions(t.as_role("member", claim(10, 60)))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.actions.is_empty() && empty.claim_id.is_empty());
    let again = approvals()
        .approve_action(t.req(approve(&drafted.action_id, None)))
        .await
        .unwrap_err();
    assert_error(&again, Code::FailedPrecondition, "INVALID_TRANSITION");
    assert!(again.message().contains("SUCCEEDED"), "{again:?}");

    // Every transition is audited with its actor.
    let events = audit()
        .list_audit_events(t.req(ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "action.create",
        "action.approve",
        "action.claim",
        "action.succeed",
    ] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    let approve_event = events
        .iter()
        .find(|e| e.action == "action.approve")
        .unwrap();
    assert_eq!(approve_event.actor, approved.decided_by);
    assert!(format!("{:?}", approve_event.details).contains("Hello there"));
}

#[tokio::test]
async fn two_approvers_at_once_one_wins() {
    let t = AgentsTenant::new().await;
    let agent = t.agent("Racer").await;
    for _round in 0..5 {
        let action = draft(&t, &agent.agent_id, None).await;
        let calls = (0..6).map(|n| {
            let (id, req_t) = (action.action_id.clone(), t);
            async move {
                if n % 2 == 0 {
                    approvals()
                        .approve_action(req_t.req(approve(&id, None)))
                        .await
                        .map(|r| r.into_inner())
                } else {
                    approvals()
                        .reject_action(req_t.req(RejectActionRequest {
                            action_id: id,
                            etag: String::new(),
                            note: String::new(),
                        }))
                        .await
                        .map(|r| r.into_inner())
                }
            }
        });
        let results = join_all(calls).await;
        let winners: Vec<&Action> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for loser in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_error(loser, Code::FailedPrecondition, "INVALID_TRANSITION");
        }
        let stored = get(&t, &action.action_id).await;
        assert_eq!(stored.state, winners[0].state);
        let decided: i64 = {
            let mut db = app().admin_db().await;
            sqlx::query_scalar(
                "SELECT count(*) FROM agents.audit_events WHERE tenant_id = $1 \
                 AND resource_id = $2 AND action IN ('action.approve', 'action.reject')",
            )
            .bind(t.id)
            .bind(&action.action_id)
            .fetch_one(&mut db)
            .await
            .unwrap()
        };
        assert_eq!(decided, 1, "one decision audited");
    }
}

async fn set_approver_role(t: &AgentsTenant, role: Option<&str>) -> Result<Tenant, tonic::Status> {
    let settings = match role {
        Some(role) => json!({"approvals": {"approver_role": role}}),
        None => json!({}),
    };
    TenantServiceClient::new(app().channel())
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(Tenant {
                    tenant_id: t.id.to_string(),
                    settings: Some(object(settings)),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["settings".into()],
                }),
            },
            &t.token("owner"),
        ))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn the_approver_role_comes_from_the_tenant_settings() {
    let t = AgentsTenant::new().await;
    let agent = t.agent("Settings").await;
    let action = draft(&t, &agent.agent_id, None).await;
    // Default: admin.
    let member = approvals()
        .approve_action(t.as_role("member", approve(&action.action_id, None)))
        .await
        .unwrap_err();
    assert_error(&member, Code::PermissionDenied, "APPROVER_ROLE_REQUIRED");
    // Owners only.
    set_approver_role(&t, Some("owner")).await.unwrap();
    let admin = approvals()
        .reject_action(t.as_role(
            "admin",
            RejectActionRequest {
                action_id: action.action_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_error(&admin, Code::PermissionDenied, "APPROVER_ROLE_REQUIRED");
    // Members: at once.
    set_approver_role(&t, Some("member")).await.unwrap();
    approvals()
        .approve_action(t.as_role("member", approve(&action.action_id, None)))
        .await
        .unwrap();
    // Viewers never; an unknown role is refused by identity, naming the field.
    for bad in ["viewer", "root"] {
        let err = set_approver_role(&t, Some(bad)).await.unwrap_err();
        assert_bad_field(&err, "tenant.settings.approvals.approver_role");
    }
    let viewer = approvals()
        .approve_action(t.as_role("viewer", approve(&action.action_id, None)))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_pending_action_expires() {
    let t = AgentsTenant::new().await;
    let agent = t.agent("Expiry").await;
    let action = draft(&t, &agent.agent_id, None).await;
    let fresh = draft(&t, &agent.agent_id, None).await;
    let mut db = app().admin_db().await;
    sqlx::query(
        "UPDATE agents.actions SET expires_at = now() - interval '1 second' \
         WHERE tenant_id = $1 AND action_id = $2",
    )
    .bind(t.id)
    .bind(action.action_id.parse::<Uuid>().unwrap())
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(
        get(&t, &action.action_id).await.state,
        ActionState::Expired as i32
    );
    let list = |state: ActionState| {
        t.req(ListActionsRequest {
            state: state as i32,
            ..Default::default()
        })
    };
    let expired = approvals()
        .list_actions(list(ActionState::Expired))
        .await
        .unwrap()
        .into_inner()
        .actions;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].action_id, action.action_id);
    let pending = approvals()
        .list_actions(list(ActionState::Pending))
        .await
        .unwrap()
        .into_inner()
        .actions;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].action_id, fresh.action_id);
    let late = approvals()
        .approve_action(t.req(approve(&action.action_id, None)))
        .await
        .unwrap_err();
    assert_error(&late, Code::FailedPrecondition, "ACTION_EXPIRED");
    // The expiry is written down and audited once.
    let stored: String = sqlx::query_scalar(
        "SELECT state FROM agents.actions WHERE tenant_id = $1 AND action_id = $2",
    )
    .bind(t.id)
    .bind(action.action_id.parse::<Uuid>().unwrap())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(stored, "expired");
    let again = approvals()
        .reject_action(t.req(RejectActionRequest {
            action_id: action.action_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_error(&again, Code::FailedPrecondition, "ACTION_EXPIRED");
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agents.audit_events WHERE tenant_id = $1 AND action = 'action.expire'",
    )
    .bind(t.id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(events, 1);
    // Nothing expired is claimable.
    let claimed = approvals()
        .claim_actions(t.as_role("member", claim(10, 60)))
        .await
        .unwrap()
        .into_inner();
    assert!(claimed.actions.is_empty());
}

#[tokio::test]
async fn the_executor_lease_runs_out_and_claims_never_overlap() {
    let t = AgentsTenant::new().await;
    let agent = t.agent("Executor").await;
    let first = draft(&t, &agent.agent_id, None).await;
    approvals()
        .approve_action(t.req(approve(&first.action_id, None)))
        .await
        .unwrap();
    let claimed = approvals()
        .claim_actions(t.as_role("member", claim(1, 1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claimed.actions.len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The lease ran out: it reads APPROVED, the old claim cannot finish it.
    assert_eq!(
        get(&t, &first.action_id).await.state,
        ActionState::Approved as i32
    );
    let stale = approvals()
        .complete_action(t.as_role(
            "member",
            complete(&first.action_id, &claimed.claim_id, ActionState::Succeeded),
        ))
        .await
        .unwrap_err();
    assert_error(&stale, Code::FailedPrecondition, "CLAIM_NOT_HELD");
    let reclaimed = approvals()
        .claim_actions(t.as_role("member", claim(1, 60)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reclaimed.actions[0].action_id, first.action_id);
    assert_eq!(reclaimed.actions[0].attempt_count, 2);
    let other_claim = approvals()
        .complete_action(t.as_role(
            "member",
            complete(
                &first.action_id,
                &Uuid::now_v7().to_string(),
                ActionState::Succeeded,
            ),
        ))
        .await
        .unwrap_err();
    assert_error(&other_claim, Code::FailedPrecondition, "CLAIM_NOT_HELD");
    let failed = approvals()
        .complete_action(t.as_role(
            "member",
            CompleteActionRequest {
                action_id: first.action_id.clone(),
                claim_id: reclaimed.claim_id.clone(),
                outcome: ActionState::Failed as i32,
                result: None,
                error: "smtp 550".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state, ActionState::Failed as i32);
    assert_eq!(failed.error, "smtp 550");

    // 8 executors over 40 approved actions: each handed out exactly once.
    let mut ids = HashSet::new();
    for _ in 0..40 {
        let action = draft(&t, &agent.agent_id, None).await;
        approvals()
            .approve_action(t.req(approve(&action.action_id, None)))
            .await
            .unwrap();
        ids.insert(action.action_id);
    }
    let executors = (0..8).map(|_| async move {
        let mut mine = Vec::new();
        loop {
            let claimed = approvals()
                .claim_actions(t.as_role("member", claim(3, 60)))
                .await
                .unwrap()
                .into_inner();
            if claimed.actions.is_empty() {
                return mine;
            }
            mine.extend(claimed.actions.into_iter().map(|a| a.action_id));
        }
    });
    let handed: Vec<String> = join_all(executors).await.into_iter().flatten().collect();
    assert_eq!(handed.len(), ids.len(), "every action exactly once");
    assert_eq!(handed.into_iter().collect::<HashSet<_>>(), ids);
}

#[tokio::test]
async fn deleting_the_subject_clears_it_and_keeps_the_action() {
    let t = AgentsTenant::new().await;
    let agent = t.agent("Subject").await;
    let contact = Uuid::now_v7();
    let one = draft(&t, &agent.agent_id, Some((SubjectType::Contact, contact))).await;
    let two = draft(&t, &agent.agent_id, Some((SubjectType::Contact, contact))).await;
    let deal = draft(&t, &agent.agent_id, Some((SubjectType::Deal, contact))).await;
    assert_eq!(one.subject_id, contact.to_string());
    let cleared = approvals()
        .clear_subject(t.as_role(
            "member",
            ClearSubjectRequest {
                subject_type: SubjectType::Contact as i32,
                subject_id: contact.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.cleared_count, 2);
    for id in [&one.action_id, &two.action_id] {
        let action = get(&t, id).await;
        assert_eq!(action.subject_type, SubjectType::Unspecified as i32);
        assert!(action.subject_id.is_empty());
        assert_eq!(action.state, ActionState::Pending as i32);
    }
    // The deal with the same id is another subject.
    assert_eq!(
        get(&t, &deal.action_id).await.subject_id,
        contact.to_string()
    );
    let listed = approvals()
        .list_actions(t.req(ListActionsRequest {
            subject_type: SubjectType::Contact as i32,
            subject_id: contact.to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.actions.is_empty());
}

#[tokio::test]
async fn lists_filter_by_agent_kind_subject_and_age_in_pages() {
    let t = AgentsTenant::new().await;
    let (a, b) = (t.agent("A").await, t.agent("B").await);
    let deal = Uuid::now_v7();
    let mut of_a = Vec::new();
    for _ in 0..3 {
        of_a.push(draft(&t, &a.agent_id, None).await.action_id);
    }
    let cutoff = prost_types::Timestamp::from(std::time::SystemTime::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let of_b = draft(&t, &b.agent_id, Some((SubjectType::Deal, deal))).await;
    let task = approvals()
        .create_action(t.req(CreateActionRequest {
            action: Some(Action {
                agent_id: b.agent_id.clone(),
                kind: ActionKind::CreateTask as i32,
                parameters: Some(object(
                    json!({"title": "Call Ada", "due_date": "2026-12-31"}),
                )),
                reason: "follow up".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let list = |request: ListActionsRequest| async move {
        approvals()
            .list_actions(t.req(request))
            .await
            .unwrap()
            .into_inner()
    };
    // By agent, in pages of two, oldest first.
    let page = list(ListActionsRequest {
        page_size: 2,
        agent_id: a.agent_id.clone(),
        ..Default::default()
    })
    .await;
    let next = list(ListActionsRequest {
        page_size: 2,
        agent_id: a.agent_id.clone(),
        page_token: page.next_page_token.clone(),
        ..Default::default()
    })
    .await;
    let ids: Vec<String> = page
        .actions
        .iter()
        .chain(&next.actions)
        .map(|a| a.action_id.clone())
        .collect();
    assert_eq!(ids, of_a);
    assert!(next.next_page_token.is_empty());
    // A page token is bound to its filters.
    let rebound = approvals()
        .list_actions(t.req(ListActionsRequest {
            page_size: 2,
            agent_id: b.agent_id.clone(),
            page_token: page.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&rebound, "page_token");
    let by_kind = list(ListActionsRequest {
        kind: ActionKind::CreateTask as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(by_kind.actions.len(), 1);
    assert_eq!(by_kind.actions[0].action_id, task.action_id);
    let by_subject = list(ListActionsRequest {
        subject_type: SubjectType::Deal as i32,
        subject_id: deal.to_string(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_subject.actions.len(), 1);
    assert_eq!(by_subject.actions[0].action_id, of_b.action_id);
    let older = list(ListActionsRequest {
        created_before: Some(cutoff),
        ..Default::default()
    })
    .await;
    let older: Vec<String> = older.actions.into_iter().map(|a| a.action_id).collect();
    assert_eq!(older, of_a);
}

#[tokio::test]
async fn another_tenant_reaches_no_action() {
    let (a, b) = (AgentsTenant::new().await, AgentsTenant::new().await);
    let agent = a.agent("A's").await;
    let subject = Uuid::now_v7();
    let action = draft(&a, &agent.agent_id, Some((SubjectType::Contact, subject))).await;
    let approved = draft(&a, &agent.agent_id, None).await;
    approvals()
        .approve_action(a.req(approve(&approved.action_id, None)))
        .await
        .unwrap();
    let id = action.action_id.clone();
    let not_found =
        |status: tonic::Status| assert_error(&status, Code::NotFound, "ACTION_NOT_FOUND");
    not_found(
        approvals()
            .get_action(b.req(GetActionRequest {
                action_id: id.clone(),
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        approvals()
            .approve_action(b.req(approve(&id, None)))
            .await
            .unwrap_err(),
    );
    not_found(
        approvals()
            .reject_action(b.req(RejectActionRequest {
                action_id: id.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        approvals()
            .complete_action(b.req(complete(
                &approved.action_id,
                &Uuid::now_v7().to_string(),
                ActionState::Succeeded,
            )))
            .await
            .unwrap_err(),
    );
    let claimed = approvals()
        .claim_actions(b.req(claim(10, 60)))
        .await
        .unwrap()
        .into_inner();
    assert!(claimed.actions.is_empty(), "B claims none of A's actions");
    let listed = approvals()
        .list_actions(b.req(ListActionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.actions.is_empty());
    let cleared = approvals()
        .clear_subject(b.req(ClearSubjectRequest {
            subject_type: SubjectType::Contact as i32,
            subject_id: subject.to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.cleared_count, 0);
    // Naming A's tenant: a member of B is told A does not exist.
    let named = approvals()
        .clear_subject(b.req(ClearSubjectRequest {
            subject_type: SubjectType::Contact as i32,
            subject_id: subject.to_string(),
            tenant_id: a.id.to_string(),
        }))
        .await
        .unwrap_err();
    assert_error(&named, Code::NotFound, "TENANT_NOT_FOUND");
    assert_eq!(get(&a, &id).await.subject_id, subject.to_string());
    // B cannot draft an action for A's agent.
    let foreign = approvals()
        .create_action(b.req(CreateActionRequest {
            action: Some(Action {
                agent_id: agent.agent_id.clone(),
                kind: ActionKind::Custom as i32,
                reason: "x".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_error(&foreign, Code::NotFound, "AGENT_NOT_FOUND");
    // A's approved action is still there for A's executor.
    let mine = approvals()
        .claim_actions(a.as_role("member", claim(10, 60)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.actions.len(), 1);
}

#[tokio::test]
async fn bad_input_of_every_kind_is_named() {
    let t = AgentsTenant::new().await;
    let agent = t.agent("Bad").await;
    let create = |action: Action, request_id: &str| {
        let request = t.req(CreateActionRequest {
            action: Some(action),
            request_id: request_id.into(),
        });
        async move { approvals().create_action(request).await }
    };
    let err = create(
        Action {
            agent_id: "nope".into(),
            kind: 0,
            subject_id: Uuid::now_v7().to_string(),
            reason: String::new(),
            expire_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
        "bad",
    )
    .await
    .unwrap_err();
    for field in [
        "action.agent_id",
        "action.kind",
        "action.subject_type",
        "action.reason",
        "action.expire_time",
        "request_id",
    ] {
        assert_bad_field(&err, field);
    }
    let shape = create(
        Action {
            agent_id: agent.agent_id.clone(),
            kind: ActionKind::SendEmail as i32,
            parameters: Some(object(
                json!({"to": ["not an email"], "subject": "s", "bcc": 1}),
            )),
            subject_type: SubjectType::Deal as i32,
            reason: "r".into(),
            ..Default::default()
        },
        "",
    )
    .await
    .unwrap_err();
    for field in [
        "action.parameters.to[0]",
        "action.parameters.body",
        "action.parameters.bcc",
        "action.subject_id",
    ] {
        assert_bad_field(&shape, field);
    }
    let stage = create(
        Action {
            agent_id: agent.agent_id.clone(),
            kind: ActionKind::UpdateDealStage as i32,
            parameters: Some(object(json!({"deal_id": "x", "stage": "won"}))),
            reason: "r".into(),
            ..Default::default()
        },
        "",
    )
    .await
    .unwrap_err();
    assert_bad_field(&stage, "action.parameters.deal_id");
    assert_bad_field(&stage, "action.parameters.stage");
    let post = create(
        Action {
            agent_id: agent.agent_id.clone(),
            kind: ActionKind::PostMessage as i32,
            parameters: None,
            reason: "r".into(),
            ..Default::default()
        },
        "",
    )
    .await
    .unwrap_err();
    assert_bad_field(&post, "action.parameters");
    // An approver's edit is checked as the draft was.
    let action = draft(&t, &agent.agent_id, None).await;
    let edit = approvals()
        .approve_action(t.req(approve(
            &action.action_id,
            Some(object(json!({"to": [], "subject": "", "body": "b"}))),
        )))
        .await
        .unwrap_err();
    assert_bad_field(&edit, "parameters.to");
    assert_bad_field(&edit, "parameters.subject");
    assert_eq!(
        get(&t, &action.action_id).await.state,
        ActionState::Pending as i32
    );
    let claim_err = approvals()
        .claim_actions(t.as_role("member", claim(0, 0)))
        .await
        .unwrap_err();
    assert_bad_field(&claim_err, "max_actions");
    assert_bad_field(&claim_err, "lease");
    let outcome = approvals()
        .complete_action(t.as_role(
            "member",
            CompleteActionRequest {
                action_id: "x".into(),
                claim_id: String::new(),
                outcome: ActionState::Approved as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    for field in ["action_id", "claim_id", "outcome"] {
        assert_bad_field(&outcome, field);
    }
    let no_error = approvals()
        .complete_action(t.as_role(
            "member",
            CompleteActionRequest {
                action_id: action.action_id.clone(),
                claim_id: Uuid::now_v7().to_string(),
                outcome: ActionState::Failed as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_bad_field(&no_error, "error");
    let list = approvals()
        .list_actions(t.req(ListActionsRequest {
            page_size: -1,
            state: 42,
            agent_id: "x".into(),
            subject_type: SubjectType::Alert as i32,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    for field in ["page_size", "state", "agent_id", "subject_id"] {
        assert_bad_field(&list, field);
    }
    let clear = approvals()
        .clear_subject(t.as_role("member", ClearSubjectRequest::default()))
        .await
        .unwrap_err();
    assert_bad_field(&clear, "subject_type");
    assert_bad_field(&clear, "subject_id");
    // A retried create returns the first action.
    let request_id = Uuid::now_v7().to_string();
    let make = || Action {
        agent_id: agent.agent_id.clone(),
        kind: ActionKind::Custom as i32,
        parameters: Some(object(json!({"anything": true}))),
        reason: "retry".into(),
        ..Default::default()
    };
    let first = create(make(), &request_id).await.unwrap().into_inner();
    let retry = create(make(), &request_id).await.unwrap().into_inner();
    assert_eq!(first.action_id, retry.action_id);
}
