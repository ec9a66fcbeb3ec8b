//! Behind the crm API, as the crm runtime role: no tenant means no rows, a
//! foreign row cannot be written, the audit trail is append-only, and the
//! tenant-scoped reads have indexes to use.

use sqlx::Connection;

use crate::crm_support::{CrmTenant, crm_role_db, email};
use crate::harness::app;

const TABLES: &[&str] = &[
    "companies",
    "contacts",
    "deals",
    "deal_contacts",
    "activities",
    "signals",
    "scores",
    "audit_events",
    "idempotency_keys",
];

#[tokio::test]
async fn no_tenant_means_no_rows_and_foreign_rows_are_refused() {
    let t = CrmTenant::new().await;
    t.contact(&email("rls")).await;
    let mut conn = crm_role_db().await;
    for table in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} visible without a tenant");
    }
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id))
        .execute(&mut *tx)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let err = sqlx::query(
        "INSERT INTO companies (tenant_id, company_id, display_name) VALUES ($1, $1, 'Forged')",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    tx.rollback().await.unwrap();

    // The audit trail is append-only for the service.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id))
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("DELETE FROM audit_events")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn tenant_reads_have_indexes() {
    let t = CrmTenant::new().await;
    let c = t.contact(&email("plan")).await;
    let mut conn = crm_role_db().await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id))
        .execute(&mut *tx)
        .await
        .unwrap();
    let by_id = explain(
        &mut tx,
        format!(
            "SELECT contact_id FROM contacts WHERE tenant_id = '{}' AND contact_id = '{}'",
            t.id, c.contact_id
        ),
    )
    .await;
    assert!(by_id.contains("contacts_pkey"), "{by_id}");
    assert!(
        by_id.contains("InitPlan"),
        "the policy reads the setting once per statement:\n{by_id}"
    );

    let p = explain(
        &mut tx,
        format!(
            "SELECT activity_id FROM activities WHERE tenant_id = '{}' AND contact_id = '{}' \
         ORDER BY occurred_at DESC, activity_id DESC LIMIT 51",
            t.id, c.contact_id
        ),
    )
    .await;
    assert!(p.contains("activities_contact"), "{p}");
    tx.rollback().await.unwrap();

    // Within a small tenant the primary key narrows best; within a large one
    // the filter's own index must be usable. Prove each filter expression
    // matches its index: without a tenant predicate (superuser, no RLS) and
    // with scans forbidden, only that index can answer.
    let mut admin = app().admin_db().await;
    let mut tx = admin.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    for (filter, index) in [
        (
            "search @@ to_tsquery('simple', 'plan:*')",
            "contacts_search",
        ),
        ("tags @> ARRAY['vip']::text[]", "contacts_tags"),
        (
            "metadata @> '{\"tier\": \"gold\"}'::jsonb",
            "contacts_metadata",
        ),
    ] {
        let p = explain(
            &mut tx,
            format!("SELECT contact_id FROM crm.contacts WHERE {filter}"),
        )
        .await;
        assert!(p.contains(index), "{filter}:\n{p}");
    }
}

async fn explain(conn: &mut sqlx::PgConnection, sql: String) -> String {
    sqlx::query_scalar::<_, String>(&format!("EXPLAIN {sql}"))
        .fetch_all(conn)
        .await
        .unwrap()
        .join("\n")
}
