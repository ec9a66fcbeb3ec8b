//! Behind the billing API, as the billing runtime role: the ledger is
//! append-only (INSERT and SELECT, never UPDATE or DELETE), the database
//! itself refuses a negative available amount, and no tenant means no rows.

use crate::billing_support::{BillingTenant, billing_role_db, key};
use crate::harness::app;

#[tokio::test]
async fn billing_the_runtime_role_may_only_append_to_the_ledger() {
    let t = BillingTenant::new(100).await;
    t.consume(10, &key()).await.unwrap();
    let mut db = app().admin_db().await;
    let privileges: Vec<(String, bool)> = sqlx::query_as(
        "SELECT p, has_table_privilege('mosaic_billing', 'billing.ledger_entries', p) \
         FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        privileges,
        [
            ("SELECT".to_owned(), true),
            ("INSERT".to_owned(), true),
            ("UPDATE".to_owned(), false),
            ("DELETE".to_owned(), false),
            ("TRUNCATE".to_owned(), false),
        ]
    );

    // And in practice, inside the tenant's own transaction.
    let mut conn = billing_role_db().await;
    for statement in [
        "UPDATE ledger_entries SET amount = amount + 1 WHERE tenant_id = $1",
        "DELETE FROM ledger_entries WHERE tenant_id = $1",
        "DELETE FROM accounts WHERE tenant_id = $1",
    ] {
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id()))
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = sqlx::query(statement)
            .bind(t.id())
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{statement}: {err}"
        );
    }
    assert_eq!(t.ledger().await.len(), 2);
    assert_eq!(t.reconcile().await.drift_total, 0);
}

#[tokio::test]
async fn billing_the_database_refuses_a_negative_available_amount_and_other_tenants() {
    let t = BillingTenant::new(100).await;
    let mut conn = billing_role_db().await;
    // No tenant: no rows.
    for table in ["accounts", "ledger_entries", "holds"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} visible without a tenant");
    }
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id()))
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("UPDATE accounts SET balance = balance - 101 WHERE tenant_id = $1")
        .bind(t.id())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("accounts_available_nonnegative"),
        "{err}"
    );
    tx.rollback().await.unwrap();
    // Another tenant's account cannot be written from this one.
    let other = BillingTenant::new(5).await;
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id()))
        .execute(&mut *tx)
        .await
        .unwrap();
    let touched = sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE tenant_id = $1")
        .bind(other.id())
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(touched, 0);
    tx.rollback().await.unwrap();
    assert_eq!(other.account().await.balance, 5);
}

/// `catalog.rs` checks every schema of `mosaic::SERVICES`; billing's tables
/// are among them, fenced and forced.
#[tokio::test]
async fn billing_tables_are_in_the_catalog_checks() {
    app();
    assert!(
        mosaic::SERVICES
            .iter()
            .filter_map(|service| service.schema())
            .any(|schema| schema.name == "billing" && schema.role == "mosaic_billing")
    );
    let mut db = app().admin_db().await;
    let fenced: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'billing' AND c.relkind = 'r' \
           AND c.relrowsecurity AND c.relforcerowsecurity ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        fenced,
        [
            "accounts",
            "audit_events",
            "holds",
            "idempotency_keys",
            "ledger_entries"
        ]
    );
}
