//! One-message reads (`Database::read_by_ids`) keep their connections beside
//! the pool: a connection killed while idle is replaced transparently, an SQL
//! error leaves the connection usable, and the tenant fence holds.

use mosaic_db::{Database, DbConfig, TenantContext};
use uuid::Uuid;

use crate::harness::app;

#[tokio::test]
async fn reads_survive_killed_idle_connections_and_sql_errors() {
    let t = app().new_tenant().await;
    let name = format!("lane-test-{}", Uuid::new_v4().simple());
    let db = Database::connect_lazy(&DbConfig::from_env("identity").unwrap(), &name).unwrap();
    let ctx = TenantContext::system(t.id, "lane-test");
    let read = || async {
        db.read_by_ids::<(Uuid,)>(
            &ctx,
            "SELECT tenant_id FROM tenants WHERE tenant_id = $tenant",
            &[],
        )
        .await
    };
    assert_eq!(read().await.unwrap(), [(t.id,)]);

    let mut admin = app().admin_db().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) k",
    )
    .bind(format!("{name}-reads"))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one idle read connection");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        read().await.unwrap(),
        [(t.id,)],
        "the stale connection was replaced"
    );

    let err = db
        .read_by_ids::<(Uuid,)>(&ctx, "SELECT tenant_id FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert_eq!(
        read().await.unwrap(),
        [(t.id,)],
        "usable after an SQL error"
    );

    // Another tenant's id binds as a value and finds nothing.
    let other = TenantContext::system(Uuid::now_v7(), "lane-test");
    let none = db
        .read_by_ids::<(Uuid,)>(
            &other,
            "SELECT tenant_id FROM tenants WHERE tenant_id = $1",
            &[t.id],
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    db.close().await;
}
