//! Per-tenant rate limits, end to end: a suite with a tiny burst refuses the
//! call past it with RESOURCE_EXHAUSTED and a retry delay; other tenants are
//! not affected. With Redis unreachable, calls fail open and, once the Redis
//! breaker is open, pay nothing for it. (The `mosaic-cache` tests cover hung
//! and restarted Redis servers and Redis Cluster.)

use std::time::{Duration, Instant};

use mosaic_proto::identity::{GetTenantRequest, tenant_service_client::TenantServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{app, assert_error, authed, suite_with};

#[tokio::test]
async fn a_tenant_over_its_burst_is_told_to_retry() {
    // A tiny burst.
    let env = app()
        .env
        .clone()
        .with("MOSAIC_RATE_LIMIT_PER_SECOND", "1")
        .with("MOSAIC_RATE_LIMIT_BURST", "3")
        .with("MOSAIC_REDIS_TIMEOUT_MS", "500");
    let channel = suite_with(env).await;

    let (a, b) = (app().new_tenant().await, app().new_tenant().await);
    let get = |tenant: &crate::harness::TestTenant| {
        authed(
            GetTenantRequest {
                tenant_id: tenant.id.to_string(),
            },
            &tenant.owner_token,
        )
    };
    let mut client = TenantServiceClient::new(channel);
    for _ in 0..3 {
        client.get_tenant(get(&a)).await.unwrap();
    }
    let err = client.get_tenant(get(&a)).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    let retry = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("retry delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    client
        .get_tenant(get(&b))
        .await
        .expect("another tenant is not limited");
}

#[tokio::test]
async fn with_redis_unreachable_calls_fail_open_without_waiting() {
    // Every check would need Redis (a burst of 1), and "Redis" is hung: it
    // accepts connections and never answers. (`mosaic-cache`'s outage test
    // hangs a real redis-server that was answering.)
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hung.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            open.push(socket);
        }
    });
    let env = app()
        .env
        .clone()
        .with("MOSAIC_RATE_LIMIT_PER_SECOND", "1")
        .with("MOSAIC_RATE_LIMIT_BURST", "1")
        .with("MOSAIC_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .with("MOSAIC_REDIS_TIMEOUT_MS", "500")
        .with("MOSAIC_REDIS_PROBE_INTERVAL_MS", "60000");
    let mut client = TenantServiceClient::new(suite_with(env).await);
    let tenant = app().new_tenant().await;
    let get = || {
        authed(
            GetTenantRequest {
                tenant_id: tenant.id.to_string(),
            },
            &tenant.owner_token,
        )
    };
    // The first calls wait the timeout and open the breaker.
    for _ in 0..5 {
        client.get_tenant(get()).await.expect("fails open");
    }
    let mut took = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        client.get_tenant(get()).await.expect("fails open");
        took.push(start.elapsed());
    }
    took.sort();
    let p99 = took[98];
    println!("GetTenant with Redis down: p50 {:?}, p99 {p99:?}", took[50]);
    // A timeout far above a call's own cost, so a loaded machine cannot
    // blur the two.
    assert!(
        p99 < Duration::from_millis(250),
        "no call waits the 500 ms Redis timeout: p99 {p99:?}"
    );
    hold.abort();
}
