//! The purge (`mosaic purge`): soft-deleted crm rows go after their
//! retention, old request_id claims after theirs, each with an audit event,
//! and one tenant's purge never touches another tenant's rows. A purged
//! contact or deal is cleared from the approvals naming it (crm's subject
//! relay), also when agents was down at the time.

use std::time::{Duration, Instant};

use chrono::Utc;
use mosaic_core::TenantId;
use mosaic_crm::purge::{Purged, RETENTION, purge_tenant};
use mosaic_crm::subjects::Relay;
use mosaic_db::Database;
use mosaic_proto::agents::{ActionState, ClearSubjectRequest, SubjectType};
use mosaic_proto::common::ListAuditEventsRequest;
use mosaic_proto::crm::{
    CreateContactRequest, CreateDealRequest, Deal, DeleteCompanyRequest, DeleteContactRequest,
    DeleteDealRequest, GetCompanyRequest, GetContactRequest,
};
use uuid::Uuid;

use mosaic_tenant::{TokenSettings, TokenSigner};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::agents_approvals::{approvals, draft, get};
use crate::agents_support::{AgentsTenant, audit};
use crate::crm_support::{CrmTenant, companies, contacts, deals, email};
use crate::harness::{app, assert_bad_field, authed};

/// Moves a soft delete (or, for `idempotency_keys`, a claim) `days` into the past.
async fn backdate(table: &str, column: &str, tenant: TenantId, days: i64) {
    let mut db = app().admin_db().await;
    sqlx::query(&format!(
        "UPDATE crm.{table} SET {column} = {column} - make_interval(days => $2) \
         WHERE tenant_id = $1 AND {column} IS NOT NULL"
    ))
    .bind(tenant)
    .bind(days as i32)
    .execute(&mut db)
    .await
    .expect("backdate");
}

async fn audit_actions(tenant: TenantId) -> Vec<String> {
    let mut db = app().admin_db().await;
    sqlx::query_scalar(
        "SELECT action FROM crm.audit_events WHERE tenant_id = $1 AND action LIKE '%.purge' \
         ORDER BY action",
    )
    .bind(tenant)
    .fetch_all(&mut db)
    .await
    .expect("audit")
}

fn crm_db() -> Database {
    Database::connect_lazy(&app().db_config("crm"), "purge-test").unwrap()
}

async fn delete_contact(t: &CrmTenant, id: &str) {
    contacts()
        .delete_contact(t.req(DeleteContactRequest {
            contact_id: id.into(),
            etag: String::new(),
        }))
        .await
        .expect("delete contact");
}

async fn deal_on(t: &CrmTenant, company_id: &str) -> Deal {
    deals()
        .create_deal(t.req(CreateDealRequest {
            deal: Some(Deal {
                company_id: company_id.into(),
                display_name: "Deal".into(),
                currency_code: "EUR".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .expect("create deal")
        .into_inner()
}

#[tokio::test]
async fn purges_what_expired_keeps_the_rest_and_other_tenants() {
    let (a, b) = (CrmTenant::new().await, CrmTenant::new().await);
    // a: a deal and a contact deleted long ago (they go), a company deleted
    // long ago (goes once the deal is gone), a company deleted long ago that a
    // live deal still points at (stays), a contact deleted just now (stays),
    // and a request_id claim older than its retention (goes).
    let gone_co = a.company("Gone").await;
    let pinned_co = a.company("Pinned").await;
    let old_ct = a.contact(&email("old")).await;
    let old_deal = deal_on(&a, &gone_co.company_id).await;
    deal_on(&a, &pinned_co.company_id).await;
    deals()
        .delete_deal(a.req(DeleteDealRequest {
            deal_id: old_deal.deal_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    for co in [&gone_co, &pinned_co] {
        companies()
            .delete_company(a.req(DeleteCompanyRequest {
                company_id: co.company_id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap();
    }
    delete_contact(&a, &old_ct.contact_id).await;
    contacts()
        .create_contact(a.req(CreateContactRequest {
            contact: Some(mosaic_proto::crm::Contact {
                email: email("claimed"),
                ..Default::default()
            }),
            request_id: Uuid::now_v7().to_string(),
        }))
        .await
        .unwrap();
    for table in ["deals", "companies", "contacts"] {
        backdate(table, "deleted_at", a.id, 31).await;
    }
    backdate("idempotency_keys", "created_at", a.id, 8).await;
    let recent_ct = a.contact(&email("recent")).await;
    delete_contact(&a, &recent_ct.contact_id).await;

    // b: a contact deleted long ago, which a's purge must not touch.
    let b_ct = b.contact(&email("b")).await;
    delete_contact(&b, &b_ct.contact_id).await;
    backdate("contacts", "deleted_at", b.id, 31).await;

    let db = crm_db();
    let purged = purge_tenant(&db, a.id, Utc::now()).await.unwrap();
    assert_eq!(
        purged,
        Purged {
            deals: 1,
            contacts: 1,
            companies: 1,
            requests: 1
        }
    );
    assert_eq!(
        audit_actions(a.id).await,
        ["company.purge", "contact.purge", "deal.purge"]
    );
    let status = contacts()
        .get_contact(a.req(GetContactRequest {
            contact_id: old_ct.contact_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let recent = contacts()
        .get_contact(a.req(GetContactRequest {
            contact_id: recent_ct.contact_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(recent.delete_time.is_some(), "deleted just now: kept");
    let pinned = companies()
        .get_company(a.req(GetCompanyRequest {
            company_id: pinned_co.company_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        pinned.delete_time.is_some(),
        "a live deal points at it: kept"
    );
    assert_eq!(
        b.count("contacts").await,
        1,
        "b's expired contact is b's to purge"
    );
    assert!(audit_actions(b.id).await.is_empty());

    // Nothing left to do; then b's own purge takes b's contact.
    assert_eq!(
        purge_tenant(&db, a.id, Utc::now()).await.unwrap(),
        Purged::default()
    );
    assert_eq!(
        purge_tenant(&db, b.id, Utc::now()).await.unwrap().contacts,
        1
    );
    assert_eq!(b.count("contacts").await, 0);
    db.close().await;
}

#[tokio::test]
async fn mosaic_purge_walks_every_tenant() {
    let t = app().new_tenant().await;
    let crm = CrmTenant { id: t.id };
    let ct = crm.contact(&email("walk")).await;
    delete_contact(&crm, &ct.contact_id).await;
    backdate("contacts", "deleted_at", t.id, 31).await;

    let report = mosaic::purge(&app().env, Utc::now()).await.unwrap();
    assert!(
        report.tenants >= 1 && report.removed("crm.contacts") >= 1,
        "{report:?}"
    );
    assert_eq!(crm.count("contacts").await, 0);
    assert_eq!(audit_actions(t.id).await, ["contact.purge"]);
}

/// crm's subject relay as crm builds it, calling agents on `agents`. (The
/// suite's own relay runs once an hour, so this test drives the rounds.)
fn relay(agents: Channel) -> Relay {
    let tokens = TokenSettings::from_env(&app().env).unwrap();
    let signer = TokenSigner::new(tokens.signing_key.as_ref().unwrap()).unwrap();
    let db = crm_db().with_platform_role(mosaic_crm::PLATFORM_ROLE);
    Relay::new(
        db,
        mosaic_tenant::PeerChannel::new(agents, "agents"),
        signer,
        tokens.verify,
    )
}

/// The outbox rows of `tenant` and their failed attempts.
async fn outbox(tenant: TenantId) -> Vec<(String, i32)> {
    let mut db = app().admin_db().await;
    sqlx::query_as(
        "SELECT subject_type, attempts FROM crm.deleted_subjects WHERE tenant_id = $1 \
         ORDER BY subject_type",
    )
    .bind(tenant)
    .fetch_all(&mut db)
    .await
    .expect("outbox")
}

#[tokio::test]
async fn a_purged_subject_is_cleared_from_actions_also_after_agents_was_down() {
    let (a, b) = (AgentsTenant::new().await, AgentsTenant::new().await);
    let crm = CrmTenant { id: a.id };
    let agent = a.agent("Relay").await;
    let company = crm.company("Relay").await;
    let contact = crm.contact(&email("relay")).await;
    let deal = deal_on(&crm, &company.company_id).await;
    let (contact_id, deal_id): (Uuid, Uuid) = (
        contact.contact_id.parse().unwrap(),
        deal.deal_id.parse().unwrap(),
    );
    let on_contact = draft(
        &a,
        &agent.agent_id,
        Some((SubjectType::Contact, contact_id)),
    )
    .await;
    let on_deal = draft(&a, &agent.agent_id, Some((SubjectType::Deal, deal_id))).await;
    // B's action names A's contact id: A's purge must not clear it.
    let b_agent = b.agent("Relay").await;
    let foreign = draft(
        &b,
        &b_agent.agent_id,
        Some((SubjectType::Contact, contact_id)),
    )
    .await;

    delete_contact(&crm, &contact.contact_id).await;
    deals()
        .delete_deal(crm.req(DeleteDealRequest {
            deal_id: deal.deal_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    // A soft delete can be undone: the subject stays until the purge.
    assert!(outbox(a.id).await.is_empty());
    let later = Utc::now() + RETENTION + chrono::Duration::days(1);
    let purged = purge_tenant(&crm_db(), a.id, later).await.unwrap();
    assert_eq!((purged.contacts, purged.deals), (1, 1));
    // The purge's own transaction wrote both down.
    assert_eq!(
        outbox(a.id).await,
        [("contact".to_owned(), 0), ("deal".to_owned(), 0)]
    );

    // Agents unreachable: nothing is lost, each row is put off.
    let down = Endpoint::from_static("http://127.0.0.1:9")
        .connect_timeout(Duration::from_millis(200))
        .connect_lazy();
    let round = relay(down).relay_once().await.unwrap();
    assert_eq!(round.delivered, 0, "{round:?}");
    assert_eq!(
        outbox(a.id).await,
        [("contact".to_owned(), 1), ("deal".to_owned(), 1)]
    );
    assert_eq!(
        get(&a, &on_contact.action_id).await.subject_id,
        contact.contact_id
    );

    // Agents back: the next rounds past the backoff deliver both.
    let relay = relay(app().channel());
    let until = Instant::now() + Duration::from_secs(20);
    while !outbox(a.id).await.is_empty() {
        assert!(
            Instant::now() < until,
            "not delivered: {:?}",
            outbox(a.id).await
        );
        relay.relay_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in [&on_contact.action_id, &on_deal.action_id] {
        let action = get(&a, id).await;
        assert_eq!(action.subject_type, SubjectType::Unspecified as i32);
        assert!(action.subject_id.is_empty());
        assert_eq!(
            action.state,
            ActionState::Pending as i32,
            "the action stays"
        );
    }
    assert_eq!(
        get(&b, &foreign.action_id).await.subject_id,
        contact.contact_id
    );
    // Audited in agents, per action, as crm.
    let events = audit()
        .list_audit_events(a.req(ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    let cleared: Vec<_> = events
        .iter()
        .filter(|e| e.action == "action.clear_subject")
        .collect();
    assert_eq!(cleared.len(), 2, "{events:?}");
    assert!(
        cleared.iter().all(|e| e.actor == "service:crm"),
        "{cleared:?}"
    );
}

#[tokio::test]
async fn the_subjects_role_names_its_tenant_and_nothing_else() {
    let t = AgentsTenant::new().await;
    let service = app().token(None, "service:crm", &["svc:subjects"]);
    let missing = approvals()
        .clear_subject(authed(
            ClearSubjectRequest {
                subject_type: SubjectType::Contact as i32,
                subject_id: Uuid::now_v7().to_string(),
                tenant_id: String::new(),
            },
            &service,
        ))
        .await
        .unwrap_err();
    assert_bad_field(&missing, "tenant_id");
    let named = approvals()
        .clear_subject(authed(
            ClearSubjectRequest {
                subject_type: SubjectType::Contact as i32,
                subject_id: Uuid::now_v7().to_string(),
                tenant_id: t.id.to_string(),
            },
            &service,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.cleared_count, 0);
    // The role grants nothing else.
    let listed = approvals()
        .list_actions(authed(
            mosaic_proto::agents::ListActionsRequest::default(),
            &service,
        ))
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::PermissionDenied, "{listed:?}");
}
