//! Per-tenant rate limits, end to end: a suite with a tiny burst refuses the
//! call past it with RESOURCE_EXHAUSTED and a retry delay; other tenants are
//! not affected. (The limiter's own tests cover Redis being down.)

use std::time::Duration;

use mosaic_proto::identity::{GetTenantRequest, tenant_service_client::TenantServiceClient};
use mosaic_server::Shutdown;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{app, assert_error, authed};

#[tokio::test]
async fn a_tenant_over_its_burst_is_told_to_retry() {
    // The suite's own settings (its token key), with a tiny burst.
    let env = app()
        .env
        .clone()
        .with("MOSAIC_RATE_LIMIT_PER_SECOND", "1")
        .with("MOSAIC_RATE_LIMIT_BURST", "3")
        .with("MOSAIC_REDIS_TIMEOUT_MS", "500");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        mosaic::run(&env, listener, Shutdown::new(), std::future::pending()).await
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();

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
