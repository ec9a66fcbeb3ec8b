//! The rate limiter and the cache, unchanged, on a real 3-master Redis
//! Cluster of the test's own: selected by listing several URLs; every key of
//! one tenant (value, fill lease, rate-limit state) in one hash slot, and
//! the tenants spread over all three masters.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use mosaic_cache::{
    Cache, Decision, Entry, Filled, Invalidated, Lookup, RateLimitConfig, RateLimiter, RedisConfig,
};
use mosaic_core::{Secret, TenantId};
use mosaic_tenant::TenantContext;
use support::{RedisCluster, cache_config, cli, handle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_and_the_cache_work_unchanged_on_a_cluster() {
    let cluster = RedisCluster::start();
    let redis = handle(RedisConfig {
        urls: cluster.urls().into_iter().map(Secret::url).collect(),
        timeout: Duration::from_secs(2),
        ..RedisConfig::default()
    });
    assert!(redis.config().is_cluster());
    let cache = Cache::new("agents", cache_config(), redis.clone());
    let limiter = RateLimiter::new(
        RateLimitConfig {
            per_second: 1,
            burst: 5,
        },
        redis.clone(),
    );

    for _ in 0..30 {
        let ctx = TenantContext::system(TenantId::new(), "test");
        let tenant = ctx.tenant().unwrap();
        let key = cache.key(&ctx, "config", uuid::Uuid::now_v7()).unwrap();

        let slot = cluster.keyslot(key.as_str());
        assert_eq!(cluster.keyslot(&key.lease_key()), slot);
        assert_eq!(cluster.keyslot(&RateLimiter::key(tenant)), slot);
        let other_kind = cache.key(&ctx, "workflow", "w1").unwrap();
        assert_eq!(cluster.keyslot(other_kind.as_str()), slot);

        let Lookup::Miss(slow) = cache.get(&key).await else {
            panic!("a fresh key misses")
        };
        assert_eq!(cache.invalidate(&key).await, Invalidated::Done);
        assert_eq!(
            cache.fill(slow, Entry::new(b"old".to_vec())).await,
            Filled::Refused
        );
        let Lookup::Miss(token) = cache.get(&key).await else {
            panic!("still a miss")
        };
        let entry = Entry::versioned("2", tenant.to_string().into_bytes());
        assert_eq!(cache.fill(token, entry.clone()).await, Filled::Stored);
        assert!(matches!(cache.get(&key).await, Lookup::Hit(e) if e == entry));

        for _ in 0..5 {
            assert_eq!(limiter.check(tenant).await, Decision::Allowed);
        }
        assert!(matches!(
            limiter.check(tenant).await,
            Decision::Limited { .. }
        ));
    }
    assert!(!redis.is_open());

    let platform = cache.platform_key("pubkey", "0123abcd");
    assert_eq!(
        cluster.keyslot(platform.as_str()),
        cluster.keyslot(&platform.lease_key())
    );
    let Lookup::Miss(token) = cache.get(&platform).await else {
        panic!("a fresh key misses")
    };
    assert_eq!(
        cache.fill(token, Entry::new(b"t".to_vec())).await,
        Filled::Stored
    );

    // The 30 tenants' entries landed on every master.
    for node in &cluster.nodes {
        let keys: u64 = cli(node.port, &["DBSIZE"])
            .and_then(|out| out.trim().parse().ok())
            .expect("dbsize");
        assert!(keys > 0, "master {} holds no key", node.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_opens_the_one_breaker_until_the_cluster_answers_again() {
    let mut cluster = RedisCluster::start();
    let redis = handle(RedisConfig {
        urls: cluster.urls().into_iter().map(Secret::url).collect(),
        timeout: Duration::from_millis(200),
        breaker_failures: 3,
        probe_interval: Duration::from_millis(100),
    });
    let cache = Cache::new("agents", cache_config(), redis.clone());
    let keys: Vec<_> = (0..30)
        .map(|_| {
            let ctx = TenantContext::system(TenantId::new(), "test");
            cache.key(&ctx, "config", "a").unwrap()
        })
        .collect();
    for key in &keys {
        assert!(matches!(cache.get(key).await, Lookup::Miss(_)));
    }

    cluster.nodes[1].kill();
    // Keys on the dead master fail; soon the breaker opens and no call waits.
    let start = std::time::Instant::now();
    while !redis.is_open() {
        for key in &keys {
            let _ = cache.get(key).await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the breaker opens"
        );
    }
    let start = std::time::Instant::now();
    for key in &keys {
        assert!(matches!(cache.get(key).await, Lookup::Unavailable));
    }
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "{:?}",
        start.elapsed()
    );

    // The master comes back with its slots (its cluster config file is kept).
    cluster.nodes[1].restart();
    cluster.wait_ok();
    support::eventually(Duration::from_secs(20), "the breaker closes", || {
        !redis.is_open()
    })
    .await;
    for key in &keys {
        assert!(matches!(
            cache.get(key).await,
            Lookup::Hit(_) | Lookup::Miss(_)
        ));
    }
}
