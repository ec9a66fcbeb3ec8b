//! Row 8: a noisy neighbour. Tenant B calls GetTenant at a steady half of
//! its quota; then tenant A sends 10x its quota (16 workers, paced) beside
//! it. The load client runs on the same machine as the server. Bars: A is refused RESOURCE_EXHAUSTED with a
//! `google.rpc.RetryInfo`; B's success rate >= 99.9% and its p99 <= 1.2x its
//! p99 alone.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use mosaic_core::TenantId;
use mosaic_proto::identity::{GetTenantRequest, tenant_service_client::TenantServiceClient};
use tonic::Code;
use tonic::transport::Channel;

use crate::Profile;
use crate::card::Row;
use crate::deps::{Deps, set};
use crate::load::{self, CallLog, Outcome, Window, ms};
use crate::server::{Mosaic, authed};

const QUOTA: u32 = 100;

fn get_tenant(
    channel: Channel,
    token: String,
    tenant: TenantId,
) -> impl Fn(usize, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |_, _| {
        let mut client = TenantServiceClient::new(channel.clone());
        let req = authed(
            GetTenantRequest {
                tenant_id: tenant.to_string(),
            },
            &token,
            Duration::from_secs(2),
        );
        Box::pin(async move {
            match client.get_tenant(req).await {
                Ok(_) => ("GetTenant", String::new(), Ok(())),
                Err(e) => {
                    let retry = tonic_types::StatusExt::get_error_details(&e)
                        .retry_info()
                        .is_some();
                    (
                        "GetTenant",
                        if retry { "retry-info" } else { "" }.into(),
                        Err(e),
                    )
                }
            }
        })
    }
}

pub(crate) async fn run(deps: &Deps, p: Profile) -> anyhow::Result<Vec<Row>> {
    let mut env = deps.env();
    set(&mut env, "MOSAIC_RATE_LIMIT_PER_SECOND", QUOTA.to_string());
    set(&mut env, "MOSAIC_RATE_LIMIT_BURST", QUOTA.to_string());
    let mosaic = Mosaic::start(&env).await?;
    let a = mosaic.new_tenant(&deps.tokens, 0).await?;
    let b = mosaic.new_tenant(&deps.tokens, 0).await?;
    let phase = p.secs(4.0, 10.0);

    // B alone, at half its quota (2 workers, one call per 40 ms each).
    let log_b = CallLog::new();
    let stop_b = Arc::new(AtomicBool::new(false));
    let b_op = get_tenant(mosaic.channel.clone(), deps.tokens.owner(b), b);
    let tasks_b = load::spawn(&log_b, 2, Some(Duration::from_millis(40)), &stop_b, b_op);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alone_from = Instant::now();
    tokio::time::sleep(phase).await;
    let alone_to = Instant::now();

    // A floods beside it.
    let log_a = CallLog::new();
    let stop_a = Arc::new(AtomicBool::new(false));
    let a_op = get_tenant(mosaic.channel.clone(), deps.tokens.owner(a), a);
    // 10x the quota: 16 workers, one call per 16 ms each.
    let tasks_a = load::spawn(&log_a, 16, Some(Duration::from_millis(16)), &stop_a, a_op);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let noisy_from = Instant::now();
    tokio::time::sleep(phase).await;
    let noisy_to = Instant::now();
    load::stop(&stop_a, tasks_a).await;
    load::stop(&stop_b, tasks_b).await;
    log_a.save("row8-noisy-a");
    let path = log_b.save("row8-noisy-b");
    let calls_a = log_a.calls();
    let calls_b = log_b.calls();
    let alone = Window::of(&calls_b, alone_from, alone_to);
    let noisy = Window::of(&calls_b, noisy_from, noisy_to);
    let flood = Window::of(&calls_a, noisy_from, noisy_to);
    let offered = flood.calls as f64 / flood.secs;
    let refused: Vec<_> = calls_a
        .iter()
        .filter(|c| c.start >= noisy_from && c.start < noisy_to)
        .filter(|c| c.code == Code::ResourceExhausted)
        .collect();
    let with_retry = refused.iter().filter(|c| c.key == "retry-info").count();
    let a_other = flood.failed() - refused.len();
    let p99_ratio = noisy.p99.as_secs_f64() / alone.p99.as_secs_f64().max(1e-9);
    let pass = offered >= 9.5 * f64::from(QUOTA)
        && !refused.is_empty()
        && with_retry == refused.len()
        && a_other == 0
        && noisy.success() >= 0.999
        && p99_ratio <= 1.2;
    Ok(vec![Row::new(
        "8",
        format!(
            "noisy neighbour: quota {QUOTA}/s; B at {}/s, A at 10x quota",
            QUOTA / 2
        ),
        format!(
            "A offered {offered:.0} req/s ({:.1}x quota), {} OK, {} RESOURCE_EXHAUSTED ({with_retry} with RetryInfo), \
             {a_other} other; B success {:.2}% of {}, p99 {} vs {} alone ({p99_ratio:.2}x); calls {path}",
            offered / f64::from(QUOTA),
            flood.ok,
            refused.len(),
            noisy.success() * 100.0,
            noisy.calls,
            ms(noisy.p99),
            ms(alone.p99),
        ),
        "A offers >= 10x quota and is refused RESOURCE_EXHAUSTED with RetryInfo; \
         B >= 99.9% OK, p99 <= 1.2x alone",
        pass,
    )])
}
