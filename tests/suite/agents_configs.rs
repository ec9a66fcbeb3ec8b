//! AgentService: standard methods, exact temperatures, bounded prompts and
//! JSON, public keys and the cross-tenant lookup by key, isolation, audit.

use std::time::Duration;

use mosaic_proto::agents::{
    Agent, ClearPublicKeyRequest, CreateAgentRequest, DeleteAgentRequest, GetAgentRequest,
    ListAgentsRequest, LookupAgentByPublicKeyRequest, RotatePublicKeyRequest, UndeleteAgentRequest,
    UpdateAgentRequest,
};
use mosaic_proto::common::ListAuditEventsRequest;
use mosaic_proto::identity::{DeleteTenantRequest, tenant_service_client::TenantServiceClient};
use prost_types::FieldMask;
use tonic::Code;

use crate::agents_support::{AgentsTenant, agents, audit, edge_token, nested, object};
use crate::harness::{app, assert_bad_field, assert_error, authed};

fn agent(name: &str, model: &str, temperature: &str) -> Agent {
    Agent {
        display_name: name.into(),
        model: model.into(),
        temperature: temperature.into(),
        enabled: true,
        ..Default::default()
    }
}

fn create(a: Agent) -> CreateAgentRequest {
    CreateAgentRequest {
        agent: Some(a),
        request_id: String::new(),
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn get(id: &str) -> GetAgentRequest {
    GetAgentRequest {
        agent_id: id.into(),
    }
}

fn lookup(key: &str) -> tonic::Request<LookupAgentByPublicKeyRequest> {
    authed(
        LookupAgentByPublicKeyRequest {
            public_key: key.into(),
        },
        &edge_token(),
    )
}

async fn rotate(t: &AgentsTenant, id: &str) -> (Agent, String) {
    let out = agents()
        .rotate_public_key(t.req(RotatePublicKeyRequest {
            agent_id: id.into(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    (out.agent.unwrap(), out.public_key)
}

#[tokio::test]
async fn create_get_list_update_delete_undelete() {
    let t = AgentsTenant::new().await;
    let a = agents()
        .create_agent(t.as_role(
            "member",
            create(Agent {
                system_prompt: "You are helpful.\nBe brief.".into(),
                voice_settings: Some(object(serde_json::json!({"voice": "alloy", "speed": 1.1}))),
                metadata: Some(object(serde_json::json!({"team": "support"}))),
                ..agent(" Helper ", "gpt-4o", "0.7")
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.display_name, "Helper");
    assert_eq!(a.temperature, "0.70", "two decimals, exactly");
    assert_eq!(
        a.voice_settings,
        Some(object(serde_json::json!({"voice": "alloy", "speed": 1.1})))
    );
    assert!(a.public_key_prefix.is_empty() && a.public_key_create_time.is_none());
    let got = agents()
        .get_agent(t.req(get(&a.agent_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, a);

    // Temperatures keep their exact value through a write and a read.
    for (raw, stored) in [
        ("0", "0.00"),
        ("2", "2.00"),
        ("1.25", "1.25"),
        ("0.07", "0.07"),
    ] {
        let b = agents()
            .create_agent(t.req(create(agent("T", "m", raw))))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(b.temperature, stored);
        let read = agents()
            .get_agent(t.req(get(&b.agent_id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.temperature, stored);
    }

    // Update by mask, with the etag.
    let updated = agents()
        .update_agent(t.req(UpdateAgentRequest {
            agent: Some(Agent {
                agent_id: a.agent_id.clone(),
                etag: a.etag.clone(),
                temperature: "1.5".into(),
                enabled: false,
                display_name: "ignored: not in the mask".into(),
                ..Default::default()
            }),
            update_mask: mask(&["temperature", "enabled"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.temperature, "1.50");
    assert!(!updated.enabled);
    assert_eq!(updated.display_name, "Helper");
    assert_eq!(updated.system_prompt, a.system_prompt);
    let stale = agents()
        .update_agent(t.req(UpdateAgentRequest {
            agent: Some(Agent {
                agent_id: a.agent_id.clone(),
                etag: a.etag.clone(),
                ..agent("X", "m", "")
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    // Filters: enabled and model.
    let list = |enabled: Option<bool>, model: &str| {
        let req = t.req(ListAgentsRequest {
            enabled,
            model: model.into(),
            ..Default::default()
        });
        async move { agents().list_agents(req).await.unwrap().into_inner().agents }
    };
    assert_eq!(list(None, "").await.len(), 5);
    let disabled = list(Some(false), "").await;
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0].agent_id, a.agent_id);
    assert_eq!(list(None, "gpt-4o").await.len(), 1);
    assert_eq!(list(Some(true), "m").await.len(), 4);

    // Pages of two, in creation order, every agent once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = agents()
            .list_agents(t.req(ListAgentsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.agents.into_iter().map(|a| a.agent_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0], a.agent_id);

    // Delete (admin), hidden from lists, still readable; undelete.
    let member_delete = agents()
        .delete_agent(t.as_role(
            "member",
            DeleteAgentRequest {
                agent_id: a.agent_id.clone(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(member_delete.code(), Code::PermissionDenied);
    let deleted = agents()
        .delete_agent(t.req(DeleteAgentRequest {
            agent_id: a.agent_id.clone(),
            etag: updated.etag.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some() && deleted.expire_time.is_some());
    assert_eq!(list(None, "").await.len(), 4);
    let update_deleted = agents()
        .update_agent(t.req(UpdateAgentRequest {
            agent: Some(Agent {
                agent_id: a.agent_id.clone(),
                ..agent("X", "m", "")
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .unwrap_err();
    assert_error(&update_deleted, Code::FailedPrecondition, "AGENT_DELETED");
    let restored = agents()
        .undelete_agent(t.req(UndeleteAgentRequest {
            agent_id: a.agent_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.delete_time.is_none());

    // Every mutation is in the audit trail.
    let events = audit()
        .list_audit_events(t.req(ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "agent.create",
        "agent.update",
        "agent.delete",
        "agent.undelete",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn create_is_idempotent_by_request_id() {
    let t = AgentsTenant::new().await;
    let rid = uuid::Uuid::new_v4().to_string();
    let req = || CreateAgentRequest {
        agent: Some(agent("Once", "m", "0.5")),
        request_id: rid.clone(),
    };
    let first = agents()
        .create_agent(t.req(req()))
        .await
        .unwrap()
        .into_inner();
    let again = agents()
        .create_agent(t.req(req()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(t.count("agents").await, 1);
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let t = AgentsTenant::new().await;
    let cases: Vec<(Agent, &str)> = vec![
        (agent("A", "m", "2.01"), "agent.temperature"),
        (agent("A", "m", "-0.01"), "agent.temperature"),
        (agent("A", "m", "0.333"), "agent.temperature"),
        (agent("A", "m", "0,5"), "agent.temperature"),
        (
            Agent {
                system_prompt: "x".repeat(33 * 1024),
                ..agent("A", "m", "")
            },
            "agent.system_prompt",
        ),
        (
            Agent {
                voice_settings: Some(nested(100)),
                ..agent("A", "m", "")
            },
            "agent.voice_settings",
        ),
        (
            Agent {
                metadata: Some(object(serde_json::json!({"big": "x".repeat(9000)}))),
                ..agent("A", "m", "")
            },
            "agent.metadata",
        ),
        (agent("", "m", ""), "agent.display_name"),
        (agent("A", "", ""), "agent.model"),
        (agent("A", "gpt 4", ""), "agent.model"),
        (agent("A", &"m".repeat(101), ""), "agent.model"),
    ];
    for (a, field) in cases {
        let err = agents().create_agent(t.req(create(a))).await.unwrap_err();
        assert_bad_field(&err, field);
    }
    // A prompt of exactly 32 KiB is fine.
    agents()
        .create_agent(t.req(create(Agent {
            system_prompt: "y".repeat(32 * 1024),
            ..agent("A", "m", "")
        })))
        .await
        .unwrap();
    assert_eq!(t.count("agents").await, 1);
    assert_eq!(t.count("audit_events").await, 1);

    let bad_id = agents().get_agent(t.req(get("nope"))).await.unwrap_err();
    assert_bad_field(&bad_id, "agent_id");
    let bad_mask = agents()
        .update_agent(t.req(UpdateAgentRequest {
            agent: Some(agent("A", "m", "")),
            update_mask: mask(&["public_key_prefix"]),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_mask.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn public_keys_resolve_only_while_current_and_the_agent_serves() {
    let t = AgentsTenant::new().await;
    let a = t.agent("Widget").await;
    let (with_key, key) = rotate(&t, &a.agent_id).await;
    assert!(key.starts_with("mpk_") && key.len() == 47, "{key}");
    assert!(key.starts_with(&with_key.public_key_prefix));
    assert!(with_key.public_key_create_time.is_some());

    let found = agents()
        .lookup_agent_by_public_key(lookup(&key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.tenant_id, t.id.to_string());
    assert_eq!(found.agent_id, a.agent_id);
    assert_eq!(found.display_name, "Widget");

    // The key is never stored in clear, nor shown again.
    let mut db = app().admin_db().await;
    let row: String =
        sqlx::query_scalar("SELECT row_to_json(a)::text FROM agents.agents a WHERE tenant_id = $1")
            .bind(t.id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(!row.contains(&key[4..]), "the clear key is in the table");
    let got = agents()
        .get_agent(t.req(get(&a.agent_id)))
        .await
        .unwrap()
        .into_inner();
    assert!(!format!("{got:?}").contains(&key[4..]));

    let not_found = |k: String| async move {
        let err = agents()
            .lookup_agent_by_public_key(lookup(&k))
            .await
            .unwrap_err();
        assert_error(&err, Code::NotFound, "PUBLIC_KEY_NOT_FOUND");
    };
    // Rotated away: the old key is dead at once, the new one works.
    let (_, new_key) = rotate(&t, &a.agent_id).await;
    not_found(key.clone()).await;
    agents()
        .lookup_agent_by_public_key(lookup(&new_key))
        .await
        .unwrap();
    // Unknown and malformed keys.
    not_found(format!("mpk_{}", "A".repeat(43))).await;
    not_found("not-a-key".into()).await;
    let empty = agents()
        .lookup_agent_by_public_key(lookup(""))
        .await
        .unwrap_err();
    assert_bad_field(&empty, "public_key");

    // Disabled, then deleted: not served.
    let current = agents()
        .get_agent(t.req(get(&a.agent_id)))
        .await
        .unwrap()
        .into_inner();
    agents()
        .update_agent(t.req(UpdateAgentRequest {
            agent: Some(Agent {
                agent_id: a.agent_id.clone(),
                enabled: false,
                ..current
            }),
            update_mask: mask(&["enabled"]),
        }))
        .await
        .unwrap();
    not_found(new_key.clone()).await;
    let current = agents()
        .get_agent(t.req(get(&a.agent_id)))
        .await
        .unwrap()
        .into_inner();
    agents()
        .update_agent(t.req(UpdateAgentRequest {
            agent: Some(Agent {
                agent_id: a.agent_id.clone(),
                enabled: true,
                ..current
            }),
            update_mask: mask(&["enabled"]),
        }))
        .await
        .unwrap();
    agents()
        .lookup_agent_by_public_key(lookup(&new_key))
        .await
        .unwrap();
    agents()
        .delete_agent(t.req(DeleteAgentRequest {
            agent_id: a.agent_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    not_found(new_key.clone()).await;
    agents()
        .undelete_agent(t.req(UndeleteAgentRequest {
            agent_id: a.agent_id.clone(),
        }))
        .await
        .unwrap();
    agents()
        .lookup_agent_by_public_key(lookup(&new_key))
        .await
        .unwrap();

    // Cleared: gone; clearing again changes nothing.
    let cleared = agents()
        .clear_public_key(t.req(ClearPublicKeyRequest {
            agent_id: a.agent_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.public_key_prefix.is_empty());
    not_found(new_key).await;
    let again = agents()
        .clear_public_key(t.req(ClearPublicKeyRequest {
            agent_id: a.agent_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.etag, cleared.etag);

    let events = audit()
        .list_audit_events(t.req(ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    let rotations = events
        .iter()
        .filter(|e| e.action == "agent.rotate_public_key")
        .count();
    assert_eq!(rotations, 2);
    assert!(events.iter().any(|e| e.action == "agent.clear_public_key"));
    assert!(
        !format!("{events:?}").contains(&key[4..]),
        "no key in the audit trail"
    );
}

#[tokio::test]
async fn only_the_edge_role_may_look_up_keys() {
    let t = AgentsTenant::new().await;
    let a = t.agent("Widget").await;
    let (_, key) = rotate(&t, &a.agent_id).await;
    for token in [
        t.token("owner"),
        app().platform_token(),
        app().token(None, "service:other", &["svc:payments"]),
    ] {
        let err = agents()
            .lookup_agent_by_public_key(authed(
                LookupAgentByPublicKeyRequest {
                    public_key: key.clone(),
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // The edge role grants nothing else.
    let err = agents()
        .get_agent(authed(get(&a.agent_id), &edge_token()))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::InvalidArgument),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_deleted_tenant_s_keys_do_not_resolve() {
    let t = AgentsTenant::new().await;
    let a = t.agent("Widget").await;
    let (_, key) = rotate(&t, &a.agent_id).await;
    agents()
        .lookup_agent_by_public_key(lookup(&key))
        .await
        .unwrap();
    TenantServiceClient::new(app().channel())
        .delete_tenant(authed(
            DeleteTenantRequest {
                tenant_id: t.id.to_string(),
                etag: String::new(),
            },
            &app().platform_token(),
        ))
        .await
        .unwrap();
    // The access view follows identity's log within its poll interval.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match agents().lookup_agent_by_public_key(lookup(&key)).await {
            Err(err) => {
                assert_error(&err, Code::NotFound, "PUBLIC_KEY_NOT_FOUND");
                break;
            }
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) => panic!("a deleted tenant's key still resolves"),
        }
    }
}

#[tokio::test]
async fn another_tenant_s_agents_do_not_exist() {
    let (a, b) = (AgentsTenant::new().await, AgentsTenant::new().await);
    let mine = a.agent("A's").await;
    let (_, key) = rotate(&a, &mine.agent_id).await;
    let id = mine.agent_id.clone();
    let expect_not_found =
        |err: tonic::Status| assert_error(&err, Code::NotFound, "AGENT_NOT_FOUND");

    expect_not_found(agents().get_agent(b.req(get(&id))).await.unwrap_err());
    expect_not_found(
        agents()
            .update_agent(b.req(UpdateAgentRequest {
                agent: Some(Agent {
                    agent_id: id.clone(),
                    ..agent("B was here", "m", "")
                }),
                update_mask: mask(&["display_name"]),
            }))
            .await
            .unwrap_err(),
    );
    expect_not_found(
        agents()
            .delete_agent(b.req(DeleteAgentRequest {
                agent_id: id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap_err(),
    );
    expect_not_found(
        agents()
            .undelete_agent(b.req(UndeleteAgentRequest {
                agent_id: id.clone(),
            }))
            .await
            .unwrap_err(),
    );
    expect_not_found(
        agents()
            .rotate_public_key(b.req(RotatePublicKeyRequest {
                agent_id: id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap_err(),
    );
    expect_not_found(
        agents()
            .clear_public_key(b.req(ClearPublicKeyRequest {
                agent_id: id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap_err(),
    );
    let listed = agents()
        .list_agents(b.req(ListAgentsRequest {
            show_deleted: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.agents.is_empty());
    // A's page token is refused for B.
    a.agent("A's second").await;
    let page = agents()
        .list_agents(a.req(ListAgentsRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let err = agents()
        .list_agents(b.req(ListAgentsRequest {
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&err, "page_token");

    // A is unchanged, and its key still resolves to A.
    let after = agents()
        .get_agent(a.req(get(&id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.display_name, "A's");
    assert!(after.delete_time.is_none());
    let found = agents()
        .lookup_agent_by_public_key(lookup(&key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.tenant_id, a.id.to_string());
    assert_eq!(b.count("audit_events").await, 0);
}

/// The lookup function is the only way past RLS: the runtime role itself,
/// with no tenant set, sees no agent, keyed or not.
#[tokio::test]
async fn the_runtime_role_without_a_tenant_sees_no_agents() {
    let t = AgentsTenant::new().await;
    let a = t.agent("Widget").await;
    rotate(&t, &a.agent_id).await;
    let url = app().db_config("agents").url;
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(url.expose())
        .await
        .unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM agents.agents")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(visible, 0);
    let update = sqlx::query("UPDATE agents.executions SET error = 'x'")
        .execute(&mut db)
        .await;
    assert!(
        update.is_err(),
        "executions are append-only for the runtime role"
    );
}
