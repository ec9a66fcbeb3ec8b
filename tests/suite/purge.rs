//! The purge (`mosaic purge`): soft-deleted crm rows go after their
//! retention, old request_id claims after theirs, each with an audit event,
//! and one tenant's purge never touches another tenant's rows.

use chrono::Utc;
use mosaic_core::TenantId;
use mosaic_crm::purge::{Purged, purge_tenant};
use mosaic_db::Database;
use mosaic_proto::crm::{
    CreateContactRequest, CreateDealRequest, Deal, DeleteCompanyRequest, DeleteContactRequest,
    DeleteDealRequest, GetCompanyRequest, GetContactRequest,
};
use uuid::Uuid;

use crate::crm_support::{CrmTenant, companies, contacts, deals, email};
use crate::harness::app;

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
