//! One-message reads (`Database::read`) keep their connections beside
//! the pool: a connection killed while idle is replaced transparently, an SQL
//! error leaves the connection usable, and the tenant fence holds, also when
//! reads of many tenants share one message.

use std::time::Duration;

use futures::future::join_all;
use mosaic_core::TenantId;
use mosaic_db::{Database, Param, Select, TenantContext};
use uuid::Uuid;

use crate::harness::app;

#[tokio::test]
async fn reads_survive_killed_idle_connections_and_sql_errors() {
    let t = app().new_tenant().await;
    let name = format!("lane-test-{}", Uuid::new_v4().simple());
    let db = Database::connect_lazy(&app().db_config("identity"), &name).unwrap();
    let ctx = TenantContext::system(t.id, "lane-test");
    let read = || async {
        db.read_by_ids::<(TenantId,)>(
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
        .read_by_ids::<(TenantId,)>(&ctx, "SELECT tenant_id FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert_eq!(
        read().await.unwrap(),
        [(t.id,)],
        "usable after an SQL error"
    );

    // Another tenant's id binds as a value and finds nothing.
    let other = TenantContext::system(mosaic_core::TenantId::new(), "lane-test");
    let none = db
        .read_by_ids::<(TenantId,)>(
            &other,
            "SELECT tenant_id FROM tenants WHERE tenant_id = $1",
            &[t.id.uuid()],
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    db.close().await;
}

/// A database whose read lane has one connection, so that concurrent reads
/// must share messages.
fn one_connection_lane(name: &str, acquire_timeout: Duration) -> Database {
    let mut config = app().db_config("identity");
    config.read_connections = 1;
    config.acquire_timeout = acquire_timeout;
    Database::connect_lazy(&config, name).unwrap()
}

#[tokio::test]
async fn reads_of_many_tenants_share_messages_and_each_sees_only_its_own() {
    let tenants: Vec<TenantId> = join_all((0..4).map(|_| app().new_tenant()))
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    let db = one_connection_lane("lane-share", Duration::from_secs(5));
    // Read i runs as tenant i % 4 and asks for tenant (i / 4) % 4 by id: a
    // quarter are its own row, the rest another tenant's, which RLS hides.
    let reads = (0..400).map(|i| {
        let (me, asked) = (tenants[i % 4], tenants[(i / 4) % 4]);
        let db = &db;
        async move {
            let ctx = TenantContext::system(me, "lane-test");
            let rows = db
                .read_by_ids::<(TenantId,)>(
                    &ctx,
                    "SELECT tenant_id FROM tenants WHERE tenant_id = $1",
                    &[asked.uuid()],
                )
                .await
                .unwrap();
            (me, asked, rows)
        }
    });
    for (me, asked, rows) in join_all(reads).await {
        if me == asked {
            assert_eq!(rows, [(me,)]);
        } else {
            assert!(rows.is_empty(), "{me} read {asked}'s row");
        }
    }
    let (reads, messages) = db.read_lane_stats();
    assert_eq!(reads, 400);
    assert!(
        messages <= 400 / 8,
        "{reads} reads took {messages} messages: not shared"
    );
    db.close().await;
}

#[tokio::test]
async fn an_error_in_a_shared_message_fails_only_its_own_read() {
    let t = app().new_tenant().await;
    let db = one_connection_lane("lane-error", Duration::from_secs(5));
    let ctx = TenantContext::system(t.id, "lane-test");
    // Divides by zero for the nil id only, when the statement runs.
    let sql = "SELECT tenant_id FROM tenants WHERE tenant_id = $tenant \
               AND 1 / (CASE WHEN $1 = '00000000-0000-0000-0000-000000000000'::uuid THEN 0 ELSE 1 END) = 1";
    let reads = (0..64).map(|i| {
        let (db, ctx) = (&db, &ctx);
        let id = if i % 8 == 3 {
            Uuid::nil()
        } else {
            Uuid::now_v7()
        };
        async move { (id, db.read_by_ids::<(TenantId,)>(ctx, sql, &[id]).await) }
    });
    let results = join_all(reads).await;
    let (_, messages) = db.read_lane_stats();
    assert!(messages < 64, "the reads did not share messages");
    for (id, result) in results {
        if id.is_nil() {
            assert_eq!(result.unwrap_err().code(), tonic::Code::Internal);
        } else {
            assert_eq!(result.unwrap(), [(t.id,)], "read {id} failed");
        }
    }
    db.close().await;
}

#[tokio::test]
async fn a_read_waits_in_the_queue_at_most_the_acquire_timeout() {
    let t = app().new_tenant().await;
    let db = one_connection_lane("lane-timeout", Duration::from_millis(300));
    let ctx = TenantContext::system(t.id, "lane-test");
    let slow = {
        let (db, ctx) = (db.clone(), ctx.clone());
        tokio::spawn(async move {
            db.read_by_ids::<(TenantId,)>(
                &ctx,
                "SELECT tenant_id FROM tenants WHERE tenant_id = $tenant \
                 AND (SELECT 1 FROM pg_sleep(0.8)) = 1",
                &[],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = db
        .read_by_ids::<(TenantId,)>(
            &ctx,
            "SELECT tenant_id FROM tenants WHERE tenant_id = $tenant",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(queued.code(), tonic::Code::Unavailable);
    // Once sent, a read is not cut short by the queue timeout.
    assert_eq!(slow.await.unwrap().unwrap(), [(t.id,)]);
    db.close().await;
}

#[tokio::test]
async fn more_distinct_selects_than_a_connection_keeps_prepared() {
    let t = app().new_tenant().await;
    let db = one_connection_lane("lane-prepared", Duration::from_secs(5));
    let ctx = TenantContext::system(t.id, "lane-test");
    // 300 distinct statements (each connection keeps at most 256), sharing
    // messages, twice over.
    let selects: Vec<String> = (0..300)
        .map(|k| format!("SELECT tenant_id FROM tenants WHERE tenant_id = $tenant AND {k} = {k}"))
        .collect();
    for _ in 0..2 {
        let reads = selects
            .iter()
            .map(|sql| db.read_by_ids::<(TenantId,)>(&ctx, sql, &[]));
        for rows in join_all(reads).await {
            assert_eq!(rows.unwrap(), [(t.id,)]);
        }
    }
    db.close().await;
}

/// Transactions come from the pool, which does not ping on acquire: after its
/// connections die (a database restart), `begin` moves on to a live one
/// instead of failing the call.
#[tokio::test]
async fn transactions_survive_killed_pool_connections() {
    let t = app().new_tenant().await;
    let name = format!("pool-test-{}", Uuid::new_v4().simple());
    let db = Database::connect_lazy(&app().db_config("identity"), &name).unwrap();
    let ctx = TenantContext::system(t.id, "pool-test");
    let read = || async {
        let mut tx = db.begin(&ctx).await?;
        let id: Uuid = sqlx::query_scalar("SELECT tenant_id FROM tenants")
            .fetch_one(tx.conn())
            .await
            .map_err(mosaic_db::db_error)?;
        tx.commit().await?;
        Ok::<_, mosaic_api::ApiError>(id)
    };
    // Open a few pooled connections at once, then kill them all while idle.
    for id in join_all((0..4).map(|_| read())).await {
        assert_eq!(id.unwrap(), t.id.uuid());
    }
    let mut admin = app().admin_db().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1) k",
    )
    .bind(&name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed >= 2, "{killed} pooled connections");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for id in join_all((0..4).map(|_| read())).await {
        assert_eq!(
            id.unwrap(),
            t.id.uuid(),
            "a dead connection failed the call"
        );
    }
    db.close().await;
}

/// Parameters travel as literals of their declared types: each comes back
/// exactly as sent, whatever quotes, backslashes, semicolons or placeholders
/// a text holds; NUL, which PostgreSQL text cannot hold, fails only its read.
#[tokio::test]
async fn parameters_of_every_type_come_back_exactly() {
    let t = app().new_tenant().await;
    let db = one_connection_lane("lane-params", Duration::from_secs(5));
    let ctx = TenantContext::system(t.id, "lane-test");
    let when = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123456Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let day = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let json =
        serde_json::json!({"quote": "it's", "backslash": "a\\b", "tab": "\t", "n": [1.5, null]});
    for text in [
        "it's",
        "''",
        r"back\slash\'",
        "'; SELECT 1; --",
        "$1 $tenant $$ E'\\x41'",
        "é ü 東京 🦀",
        "",
    ] {
        let mut select = Select::new("SELECT ");
        select
            .push_bind(text)
            .push(", ")
            .push_bind(Param::json(&json))
            .push(", ")
            .push_bind(-9_007_199_254_740_993_i64)
            .push(", ")
            .push_bind(true)
            .push(", ")
            .push_bind(when)
            .push(", ")
            .push_bind(day)
            .push(", ")
            .push_bind(None::<Uuid>)
            .push(", ")
            .push_bind(t.id)
            .push(", ")
            .push_bind(when)
            .push(", NULL::timestamptz");
        type Row = (
            String,
            sqlx::types::Json<serde_json::Value>,
            i64,
            bool,
            chrono::DateTime<chrono::Utc>,
            chrono::NaiveDate,
            Option<Uuid>,
            Uuid,
            // What rows decode their times through (the lane's text format).
            mosaic_db::Time,
            mosaic_db::OptTime,
        );
        let rows: Vec<Row> = db.read(&ctx, select).await.unwrap();
        let (back, j, n, b, w, d, none, id, time, no_time) = rows.into_iter().next().unwrap();
        assert_eq!((time.0, no_time.0), (when, None));
        assert_eq!(back, text);
        assert_eq!(j.0, json);
        assert_eq!(
            (n, b, w, d, none, id),
            (-9_007_199_254_740_993, true, when, day, None, t.id.uuid())
        );
    }
    let mut nul = Select::new("SELECT ");
    nul.push_bind("a\0b");
    let err = db.read::<(String,)>(&ctx, nul).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    let mut ok = Select::new("SELECT ");
    ok.push_bind("after");
    assert_eq!(
        db.read::<(String,)>(&ctx, ok).await.unwrap(),
        [("after".to_owned(),)]
    );
    db.close().await;
}
