//! Row 3: Redis refused (the proxy stops listening), hung (SIGSTOP of the
//! redis-server), blackholed (the proxy accepts and never forwards) and slow
//! (the proxy adds 100 ms, twice the Redis timeout) under a GetAgent load at c=8 (each call passes the
//! rate limiter and the cache-aside read, both in Redis). Bars: 0 failed
//! calls; from 1 s after the outage starts, throughput >= 90% of the
//! baseline and p99 <= baseline p99 + 5 ms; after Redis is back the cache
//! and the limiter use it again within 5 s; a write made during the outage
//! is what every later read returns (no stale cached value).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use mosaic_proto::agents::{
    Agent, CreateAgentRequest, GetAgentRequest, UpdateAgentRequest,
    agent_service_client::AgentServiceClient,
};
use prost_types::FieldMask;

use crate::Profile;
use crate::card::Row;
use crate::deps::{Deps, set};
use crate::load::{self, CallLog, Window, ms};
use crate::proxy::{Mode, Proxy};
use crate::redis_support::{RedisServer, TempDir, cli};
use crate::server::{Mosaic, authed, status_error};

const WORKERS: usize = 8;
const DEADLINE: Duration = Duration::from_secs(2);

pub(crate) async fn run(deps: &Deps, p: Profile) -> anyhow::Result<Vec<Row>> {
    let dir = TempDir::new("faults-row3");
    let mut redis = RedisServer::start(&dir);
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await?;
    let mut env = deps.env();
    set(&mut env, "MOSAIC_REDIS_URL", proxy.url("redis"));
    // The limiter on, far above the load: every call passes it.
    set(&mut env, "MOSAIC_RATE_LIMIT_PER_SECOND", "1000000");
    set(&mut env, "MOSAIC_RATE_LIMIT_BURST", "2000000");
    let mosaic = Mosaic::start(&env).await?;
    let tenant = mosaic.new_tenant(&deps.tokens, 0).await?;
    let token = deps.tokens.owner(tenant);
    let agents = AgentServiceClient::new(mosaic.channel.clone());
    let agent = agents
        .clone()
        .create_agent(authed(
            CreateAgentRequest {
                agent: Some(Agent {
                    display_name: "before".into(),
                    model: "gpt-4o-mini".into(),
                    enabled: true,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &token,
            DEADLINE,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    let agent_id = agent.agent_id.clone();
    let cache_key = format!("mosaic:{{{tenant}}}:agents:config:{agent_id}");
    let limiter_key = format!("mosaic:{{{tenant}}}:ratelimit");

    let log = CallLog::new();
    let stop = Arc::new(AtomicBool::new(false));
    let op = {
        let agents = agents.clone();
        let token = token.clone();
        let agent_id = agent_id.clone();
        move |_worker: usize, _n: u64| {
            let mut agents = agents.clone();
            let req = authed(
                GetAgentRequest {
                    agent_id: agent_id.clone(),
                },
                &token,
                DEADLINE,
            );
            async move {
                match agents.get_agent(req).await {
                    // The key is what was read: the display name, for the stale check.
                    Ok(r) => ("GetAgent", r.into_inner().display_name, Ok(())),
                    Err(e) => ("GetAgent", String::new(), Err(e)),
                }
            }
        }
    };
    let tasks = load::spawn(&log, WORKERS, None, &stop, op);
    let warm = p.secs(1.0, 2.0);
    let base_len = p.secs(2.0, 5.0);
    let outage = p.secs(4.0, 8.0);
    tokio::time::sleep(warm).await;

    let mut phases = Vec::new();
    let faults = [
        (Fault::Proxy(Mode::Refuse), "refused"),
        (Fault::Hung, "hung"),
        (Fault::Proxy(Mode::Blackhole), "blackholed"),
        (
            Fault::Proxy(Mode::Latency(Duration::from_millis(100))),
            "slow",
        ),
    ];
    for (fault, name) in faults {
        // Each fault's baseline is the load just before it (the machine is
        // shared and its speed drifts; a neighbouring window is the fairest).
        let base_from = Instant::now();
        tokio::time::sleep(base_len).await;
        let began = Instant::now();
        match fault {
            Fault::Proxy(mode) => proxy.set(mode).await?,
            Fault::Hung => redis.freeze(),
        }
        // A write during the outage, then every read must return it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let written = format!("during-{name}");
        update_name(&agents, &token, &agent_id, &written).await?;
        let written_at = Instant::now();
        tokio::time::sleep(outage.saturating_sub(began.elapsed())).await;
        let ended = Instant::now();
        match fault {
            Fault::Proxy(_) => proxy.set(Mode::Pass).await?,
            Fault::Hung => redis.thaw(),
        }
        // Back: the limiter writes its key again, and the cache holds the
        // new value (the deferred invalidation ran, then a fill).
        let _ = cli(redis.port, &["DEL", &limiter_key]);
        let resumed = resume_time(redis.port, &cache_key, &limiter_key, &written, ended).await;
        phases.push(Phase {
            name,
            base_from,
            began,
            ended,
            written,
            written_at,
            resumed,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    load::stop(&stop, tasks).await;
    let path = log.save("row3-redis");
    let calls = log.calls();
    let mut rows = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        let base = Window::of(&calls, phase.base_from, phase.began);
        let during = Window::of(&calls, phase.began + Duration::from_secs(1), phase.ended);
        let whole = Window::of(&calls, phase.began, phase.ended + Duration::from_secs(1));
        // Stale: an OK read that started after the write was acknowledged
        // (and before the next phase's write) returning anything else.
        let next_write = phases
            .get(i + 1)
            .map(|n| n.written_at - Duration::from_millis(600))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let stale = calls
            .iter()
            .filter(|c| c.code == tonic::Code::Ok)
            .filter(|c| c.start > phase.written_at && c.start < next_write)
            .filter(|c| c.key != phase.written)
            .count();
        let ratio = during.rate() / base.rate().max(1e-9);
        let p99_bar = base.p99 + Duration::from_millis(5);
        let resumed_ok = phase.resumed.is_some_and(|d| d <= Duration::from_secs(5));
        // The speed bars hold in the whole card; the CI subset prints the
        // figures but holds only the correctness bars: on a shared 2-core
        // machine the rate swings by +-40% from one second to the next
        // (measured in the call logs), more than the 10% bar.
        let fast_enough = ratio >= 0.9 && during.p99 <= p99_bar;
        let pass = whole.failed() == 0 && (fast_enough || !p.full) && resumed_ok && stale == 0;
        rows.push(Row::new(
            &format!("3{}", (b'a' + i as u8) as char),
            format!(
                "redis {} ({} s) under GetAgent c={WORKERS}",
                phase.name,
                outage.as_secs()
            ),
            format!(
                "{:.0} req/s = {:.0}% of baseline {:.0} req/s; p99 {} (baseline {}); \
                 failed {} ({}); cache+limiter back after {}; stale reads {stale}; calls {path}",
                during.rate(),
                ratio * 100.0,
                base.rate(),
                ms(during.p99),
                ms(base.p99),
                whole.failed(),
                whole.failure_text(),
                phase
                    .resumed
                    .map(ms)
                    .unwrap_or_else(|| "never (10 s)".into()),
            ),
            if p.full {
                "0 failed; from 1 s in: >= 90% of baseline req/s, p99 <= baseline + 5 ms; \
                 back within 5 s; 0 stale"
            } else {
                "0 failed; back within 5 s; 0 stale (CI subset: the speed bars, >= 90% of \
                 baseline req/s and p99 <= baseline + 5 ms, are held by the whole card only)"
            },
            pass,
        ));
    }
    redis.kill();
    Ok(rows)
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Proxy(Mode),
    Hung,
}

struct Phase {
    name: &'static str,
    base_from: Instant,
    began: Instant,
    ended: Instant,
    written: String,
    written_at: Instant,
    resumed: Option<Duration>,
}

async fn update_name(
    agents: &AgentServiceClient<tonic::transport::Channel>,
    token: &str,
    agent_id: &str,
    name: &str,
) -> anyhow::Result<()> {
    agents
        .clone()
        .update_agent(authed(
            UpdateAgentRequest {
                agent: Some(Agent {
                    agent_id: agent_id.to_owned(),
                    display_name: name.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            token,
            DEADLINE,
        ))
        .await
        .map_err(status_error)?;
    Ok(())
}

/// How long after `since` both the limiter key exists again and the cached
/// agent holds `written` (looked at on the redis-server itself).
async fn resume_time(
    port: u16,
    cache_key: &str,
    limiter_key: &str,
    written: &str,
    since: Instant,
) -> Option<Duration> {
    let limit = since + Duration::from_secs(10);
    while Instant::now() < limit {
        let (cache_key, limiter_key) = (cache_key.to_owned(), limiter_key.to_owned());
        let (limiter, cached) = tokio::task::spawn_blocking(move || {
            (
                cli(port, &["EXISTS", &limiter_key]),
                cli(port, &["GET", &cache_key]),
            )
        })
        .await
        .ok()?;
        let limiter_back = limiter.is_some_and(|out| out.trim() == "1");
        let cache_back = cached.is_some_and(|out| out.contains(written));
        if limiter_back && cache_back {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
