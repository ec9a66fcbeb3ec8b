//! One-message writes (`Database::write`): `SET LOCAL` and one statement in
//! one message on a pool connection, committed with it. The tenant fence
//! holds and does not outlive the message, a refused statement writes
//! nothing and leaves the connection usable, each connection prepares the
//! statement once, and a pool connection killed while idle costs no call.

use futures::future::join_all;
use mosaic_core::TenantId;
use mosaic_db::error::sqlstate::CHECK_VIOLATION;
use mosaic_db::{Database, Select, TenantContext};
use uuid::Uuid;

use crate::harness::app;

/// The statement of these tests: a change of a tenant's own row, with the
/// revision it leaves.
const RENAME: &str = "UPDATE tenants SET display_name = $1, revision = revision + 1 \
     WHERE tenant_id = $2 RETURNING tenant_id, revision";

fn rename(name: &str, tenant: TenantId) -> Select {
    let mut statement = Select::constant(RENAME);
    statement.bind(name).bind(tenant);
    statement
}

fn database(name: &str, max_connections: u32) -> Database {
    let mut config = app().db_config("identity");
    config.max_connections = max_connections;
    Database::connect_lazy(&config, name).unwrap()
}

async fn stored(tenant: TenantId) -> (String, i64) {
    let mut admin = app().admin_db().await;
    sqlx::query_as("SELECT display_name, revision FROM identity.tenants WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_write_commits_with_its_message_for_its_tenant_only() {
    let t = app().new_tenant().await;
    let db = database(&format!("write-test-{}", Uuid::new_v4().simple()), 1);
    let ctx = TenantContext::system(t.id, "write-test");
    let (_, revision) = stored(t.id).await;

    let rows: Vec<(TenantId, i64)> = db
        .write(&ctx, rename("Renamed", t.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows, [(t.id, revision + 1)]);
    assert_eq!(stored(t.id).await, ("Renamed".to_owned(), revision + 1));

    // Another tenant naming t's row changes nothing: RLS shows it no row.
    let other = TenantContext::system(TenantId::new(), "write-test");
    let none: Vec<(TenantId, i64)> = db
        .write(&other, rename("Taken", t.id))
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(stored(t.id).await, ("Renamed".to_owned(), revision + 1));

    // The setting ended with the message: the next borrower of the one
    // pooled connection sees no tenant.
    let left: Vec<(String,)> = db
        .call_without_tenant(
            "SELECT coalesce(current_setting('mosaic.tenant_id', true), '') || encode($1, 'hex')",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(left, [(String::new(),)]);
    db.close().await;
}

#[tokio::test]
async fn a_refused_write_writes_nothing_and_leaves_the_connection_usable() {
    let t = app().new_tenant().await;
    let db = database(&format!("write-test-{}", Uuid::new_v4().simple()), 1);
    let ctx = TenantContext::system(t.id, "write-test");
    let (name, revision) = stored(t.id).await;

    // An empty name breaks the table's CHECK: the statement's error, for the
    // caller to map, and the revision it would have raised stays.
    let refused = db
        .write::<(TenantId, i64)>(&ctx, rename("", t.id))
        .await
        .unwrap()
        .unwrap_err();
    let code = refused.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some(CHECK_VIOLATION), "{refused:?}");
    assert_eq!(stored(t.id).await, (name, revision));

    // Quotes, semicolons and placeholders in a value are a value.
    let odd = "it's; DROP TABLE tenants; -- $1";
    let rows: Vec<(TenantId, i64)> = db.write(&ctx, rename(odd, t.id)).await.unwrap().unwrap();
    assert_eq!(rows, [(t.id, revision + 1)]);
    assert_eq!(stored(t.id).await, (odd.to_owned(), revision + 1));
    db.close().await;
}

#[tokio::test]
async fn each_connection_prepares_a_statement_once_and_killed_ones_cost_no_call() {
    let tenants = join_all((0..4).map(|_| app().new_tenant())).await;
    let name = format!("write-test-{}", Uuid::new_v4().simple());
    let db = database(&name, 4);
    let write_all = || {
        join_all(tenants.iter().enumerate().map(|(i, t)| {
            let db = &db;
            async move {
                let ctx = TenantContext::system(t.id, "write-test");
                db.write::<(TenantId, i64)>(&ctx, rename(&format!("Round {i}"), t.id))
                    .await
            }
        }))
    };
    for _ in 0..5 {
        for result in write_all().await {
            assert_eq!(result.unwrap().unwrap().len(), 1);
        }
    }
    let (writes, prepares) = db.write_stats();
    assert!(writes >= 20, "{writes} writes");
    assert!(
        (1..=4).contains(&prepares),
        "{prepares} prepares on 4 connections"
    );

    let mut admin = app().admin_db().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1) k",
    )
    .bind(&name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed >= 1, "{killed} pooled connections");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (sent_before, _) = db.write_stats();
    for result in write_all().await {
        assert_eq!(
            result.unwrap().unwrap().len(),
            1,
            "a dead connection failed the write"
        );
    }
    // The dead connections, taken first (they were the idle ones), each
    // answered the server's FATAL and the write went again on another.
    let (sent_after, _) = db.write_stats();
    assert!(
        sent_after - sent_before > 4,
        "{sent_before} -> {sent_after}"
    );
    db.close().await;
}
