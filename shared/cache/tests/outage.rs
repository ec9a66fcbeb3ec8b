//! A Redis outage, on a redis-server of the test's own (never the machine's
//! shared one): first hung (SIGSTOP: connections stay open and nothing
//! answers, the case that made every call wait its timeout), then killed
//! and restarted. Once the breaker is open, cache lookups and limiter
//! checks answer at once; the probe closes it when Redis is back, after
//! deleting what was invalidated meanwhile.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mosaic_cache::{
    Cache, Decision, Entry, Filled, Invalidated, Lookup, RateLimitConfig, RateLimiter, RedisConfig,
};
use mosaic_core::{Metrics, TenantId};
use mosaic_tenant::TenantContext;
use support::{RedisServer, TempDir, cache_config, eventually, handle, percentiles};

const TIMEOUT: Duration = Duration::from_millis(50);

/// Every log line of this test binary, as text.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(sink.clone()))
            .init();
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How many logged lines mention Redis on `port` and say `what`.
fn logged(port: u16, what: &str) -> usize {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    let at = format!("127.0.0.1:{port}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(&at) && line.contains(what))
        .collect();
    println!("{}", lines.join("\n"));
    lines.len()
}

/// 200 cache lookups and 200 limiter checks during the outage: how long each took.
async fn during_outage(
    cache: &Cache,
    limiter: &RateLimiter,
    ctx: &TenantContext,
) -> (Vec<Duration>, Vec<Duration>) {
    let tenant = ctx.tenant().unwrap();
    let (mut gets, mut checks) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let key = cache.key(ctx, "config", i).unwrap();
        let start = Instant::now();
        assert!(matches!(cache.get(&key).await, Lookup::Unavailable));
        gets.push(start.elapsed());
        let start = Instant::now();
        assert_eq!(limiter.check(tenant).await, Decision::Allowed, "fails open");
        checks.push(start.elapsed());
    }
    (gets, checks)
}

fn report(phase: &str, gets: Vec<Duration>, checks: Vec<Duration>) {
    let (get50, get99, get_max) = percentiles(gets);
    let (check50, check99, check_max) = percentiles(checks);
    println!(
        "{phase}: cache get p50 {get50:?} p99 {get99:?} max {get_max:?}; \
         limiter check p50 {check50:?} p99 {check99:?} max {check_max:?}"
    );
    assert!(
        get99 < Duration::from_millis(5),
        "{phase}: get p99 {get99:?}"
    );
    assert!(
        check99 < Duration::from_millis(5),
        "{phase}: check p99 {check99:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_calls_nothing_once_the_breaker_is_open() {
    logs();
    let dir = TempDir::new("redis-outage");
    let mut server = RedisServer::start(&dir);
    let redis = handle(RedisConfig {
        timeout: TIMEOUT,
        breaker_failures: 3,
        probe_interval: Duration::from_millis(100),
        ..RedisConfig::single(server.url())
    });
    let metrics = Metrics::new();
    redis.register_metrics(&metrics).unwrap();
    let cache = Cache::new("agents", cache_config(), redis.clone());
    let limiter = RateLimiter::new(
        RateLimitConfig {
            per_second: 1,
            burst: 5,
        },
        redis.clone(),
    );
    let ctx = TenantContext::system(TenantId::new(), "test");
    let tenant = ctx.tenant().unwrap();
    let key = cache.key(&ctx, "config", "agent").unwrap();

    // Up: the cache fills and hits, the limiter limits.
    let Lookup::Miss(token) = cache.get(&key).await else {
        panic!("a fresh key misses")
    };
    let old = Entry::versioned("1", b"before the outage".to_vec());
    assert_eq!(cache.fill(token, old.clone()).await, Filled::Stored);
    assert!(matches!(cache.get(&key).await, Lookup::Hit(e) if e == old));
    for _ in 0..5 {
        assert_eq!(limiter.check(tenant).await, Decision::Allowed);
    }
    assert!(matches!(
        limiter.check(tenant).await,
        Decision::Limited { .. }
    ));

    // Hung: the first calls wait no longer than the timeout, and open the breaker.
    server.freeze();
    for i in 0..3 {
        let start = Instant::now();
        assert!(matches!(cache.get(&key).await, Lookup::Unavailable));
        let took = start.elapsed();
        println!("hung redis, call {i} before the breaker opened: {took:?}");
        assert!(
            took < TIMEOUT + Duration::from_millis(150),
            "call {i}: {took:?}"
        );
    }
    assert!(redis.is_open(), "three timeouts open the breaker");
    // A write acknowledged during the outage: its invalidation is kept.
    assert_eq!(cache.invalidate(&key).await, Invalidated::Deferred);
    let (gets, checks) = during_outage(&cache, &limiter, &ctx).await;
    report("hung redis, breaker open", gets, checks);

    // Back: the probe deletes the kept key, then closes the breaker.
    server.thaw();
    eventually(Duration::from_secs(5), "the breaker closes", || {
        !redis.is_open()
    })
    .await;
    assert!(
        matches!(cache.get(&key).await, Lookup::Miss(_)),
        "the value invalidated during the outage is never served"
    );
    // Hundreds of calls went without Redis; the log says so once each way.
    assert_eq!(logged(server.port, "redis breaker open"), 1);
    assert_eq!(logged(server.port, "redis breaker closed"), 1);
    let text = metrics.render().unwrap();
    assert!(
        text.contains("mosaic_redis_breaker_opens_total 1"),
        "{text}"
    );
    assert!(text.contains("mosaic_redis_up 1"), "{text}");
    assert!(
        text.contains(
            r#"mosaic_cache_lookups_total{kind="config",result="skipped",service="agents"} 200"#
        ),
        "{text}"
    );
    assert!(
        text.contains("mosaic_redis_deferred_invalidations 0"),
        "{text}"
    );

    // Down: killed, so connections are refused; then restarted, empty.
    server.kill();
    let start = Instant::now();
    while !redis.is_open() {
        assert!(matches!(cache.get(&key).await, Lookup::Unavailable));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the breaker opens"
        );
    }
    println!("redis killed: breaker open after {:?}", start.elapsed());
    let (gets, checks) = during_outage(&cache, &limiter, &ctx).await;
    report("redis killed, breaker open", gets, checks);
    let text = metrics.render().unwrap();
    assert!(text.contains("mosaic_redis_up 0"), "{text}");

    server.restart();
    eventually(Duration::from_secs(5), "the breaker closes", || {
        !redis.is_open()
    })
    .await;
    let Lookup::Miss(token) = cache.get(&key).await else {
        panic!("the restarted Redis is empty")
    };
    let new = Entry::versioned("2", b"after".to_vec());
    assert_eq!(cache.fill(token, new.clone()).await, Filled::Stored);
    assert!(matches!(cache.get(&key).await, Lookup::Hit(e) if e == new));
    let other = TenantId::new();
    for _ in 0..5 {
        assert_eq!(limiter.check(other).await, Decision::Allowed);
    }
    assert!(
        matches!(limiter.check(other).await, Decision::Limited { .. }),
        "limits apply again"
    );
    let text = metrics.render().unwrap();
    assert!(
        text.contains("mosaic_redis_breaker_opens_total 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_process_starts_while_redis_is_down() {
    // Nothing listens on the port: the first calls are refused at once and
    // open the breaker; then no call asks Redis.
    let port = support::free_port();
    let redis = handle(RedisConfig {
        timeout: TIMEOUT,
        probe_interval: Duration::from_millis(100),
        ..RedisConfig::single(format!("redis://127.0.0.1:{port}"))
    });
    let cache = Cache::new("agents", cache_config(), redis.clone());
    let ctx = TenantContext::system(TenantId::new(), "test");
    let key = cache.key(&ctx, "config", "a").unwrap();
    let start = Instant::now();
    for _ in 0..10 {
        assert!(matches!(cache.get(&key).await, Lookup::Unavailable));
    }
    assert!(redis.is_open());
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // Redis comes up on that port: the probe closes the breaker.
    let dir = TempDir::new("redis-late");
    let _server = RedisServer::start_with(&dir, port, &[]);
    eventually(Duration::from_secs(5), "the breaker closes", || {
        !redis.is_open()
    })
    .await;
    assert!(matches!(cache.get(&key).await, Lookup::Miss(_)));
}
