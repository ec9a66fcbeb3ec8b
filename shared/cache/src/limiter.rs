//! [`RateLimiter`]: a per-tenant GCRA (generic cell rate algorithm) in Redis.
//!
//! Each check runs one Lua script on the key `mosaic:{<tenant>}:ratelimit`
//! (EVALSHA, falling back to EVAL when the script is not cached). The script
//! reads the clock with Redis `TIME`, so every replica of a service shares one
//! clock, and stores the tenant's theoretical arrival time with an expiry that
//! ends when the tenant's burst is fully replenished.
//!
//! A process does not ask Redis for every request: it takes a small lease of
//! tokens at once (a GCRA step of `cost` cells: one twentieth of a second's
//! rate, at most a tenth of the burst, at least 1) and spends it locally
//! until it is used up or [`LEASE_TTL`] passes. Redis still holds the one
//! count every replica draws from; a lease that expires unspent only makes
//! the limit slightly stricter. When a whole lease no longer fits, a single
//! token is asked for, so the limit stays exact at its edge.
//!
//! Redis is an accelerator, not a dependency: checks run on the process's
//! shared [`Redis`] handle, bounded by its timeout, and whenever Redis is
//! down, slow or erroring the check is allowed (fail open). Once the handle's
//! breaker is open a check does not touch Redis at all and answers at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mosaic_core::{Metrics, TenantId};

use crate::config::RateLimitConfig;
use crate::connection::Redis;

/// How long a lease of tokens may be spent locally.
pub const LEASE_TTL: Duration = Duration::from_millis(100);

/// GCRA. KEYS[1]: the tenant's key. ARGV[1]: requests per second, ARGV[2]: burst,
/// ARGV[3]: how many cells this step takes (a lease).
/// Returns `{1, 0}` when allowed, `{0, retry_after_microseconds}` when limited.
/// Times are microseconds; the stored value is formatted as an integer because
/// Lua's `tostring` would round it to 14 significant digits.
const GCRA: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = 1000000 / rate
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval * tonumber(ARGV[3])
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
";

/// The answer to one check.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the rate; the next request is allowed after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// Per-tenant rate limiter. Cheap to clone; clones share the leases.
#[derive(Clone)]
pub struct RateLimiter {
    /// `None` when limiting is off.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    config: RateLimitConfig,
    redis: Redis,
    script: redis::Script,
    /// Tokens taken from Redis and not yet spent, per tenant.
    leases: Mutex<HashMap<TenantId, Lease>>,
    /// Cells one lease takes.
    lease_size: u32,
    /// The last part of the key: `ratelimit` for the request limit, or a
    /// limit of its own ([`RateLimiter::named`]).
    name: &'static str,
    /// Checks answered [`Decision::Limited`].
    rejections: AtomicU64,
}

struct Lease {
    left: u32,
    until: Instant,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.inner.as_ref().map(|i| &i.config))
            .finish()
    }
}

impl RateLimiter {
    /// A limiter for `config` on the process's Redis handle. Does not
    /// connect. With `config.per_second == 0` the limiter is off and never
    /// touches Redis.
    pub fn new(config: RateLimitConfig, redis: Redis) -> Self {
        Self::named(config, redis, "ratelimit")
    }

    /// A limit of its own beside the request limit (identity's
    /// `RevealSecret`), keyed `mosaic:{<tenant>}:ratelimit:<name>` on the
    /// same Redis handle, failing open like it.
    pub fn named(config: RateLimitConfig, redis: Redis, name: &'static str) -> Self {
        if !config.enabled() {
            return Self::disabled();
        }
        Self {
            inner: Some(Arc::new(Inner {
                redis,
                script: redis::Script::new(GCRA),
                leases: Mutex::new(HashMap::new()),
                lease_size: (config.per_second / 20).min(config.burst / 10).max(1),
                config,
                name,
                rejections: AtomicU64::new(0),
            })),
        }
    }

    /// A limiter that allows everything.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Registers `mosaic_rate_limit_rejections_total{limit}`: `requests` for
    /// the request limit, the limit's name otherwise (`vault-reveal`). A
    /// limiter that is off registers nothing. Never a tenant label: the
    /// tenants refused are in the logs (deploy/README.md, "Finding a noisy
    /// tenant").
    pub fn register_metrics(&self, metrics: &Metrics) -> Result<(), prometheus::Error> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let limit = if inner.name == "ratelimit" {
            "requests"
        } else {
            inner.name
        };
        let weak = Arc::downgrade(inner);
        metrics.register_counter_fn(
            "mosaic_rate_limit_rejections_total",
            "Calls refused by a per-tenant rate limit (RESOURCE_EXHAUSTED), by limit.",
            &[("limit", limit)],
            Arc::new(move || {
                weak.upgrade()
                    .map_or(0.0, |i| i.rejections.load(Ordering::Relaxed) as f64)
            }),
        )
    }

    /// The Redis key of a tenant's limit state; the tenant is the hash tag.
    pub fn key(tenant: TenantId) -> String {
        mosaic_core::keys::redis_key(tenant, &[&"ratelimit"])
    }

    /// The Redis key of a tenant's state of the limit `name`.
    pub fn named_key(tenant: TenantId, name: &str) -> String {
        if name == "ratelimit" {
            Self::key(tenant)
        } else {
            mosaic_core::keys::redis_key(tenant, &[&"ratelimit", &name])
        }
    }

    /// Counts one request of `tenant`. Never fails and never waits longer than
    /// the Redis timeout (and not at all while the breaker is open): without
    /// a timely answer from Redis it allows.
    pub async fn check(&self, tenant: TenantId) -> Decision {
        let Some(inner) = &self.inner else {
            return Decision::Allowed;
        };
        if inner.spend_lease(tenant) {
            return Decision::Allowed;
        }
        let decision = inner
            .redis
            .run("ratelimit", |mut conn| async move {
                inner.run(&mut conn, tenant).await
            })
            .await
            .unwrap_or(Decision::Allowed);
        if decision != Decision::Allowed {
            inner.rejections.fetch_add(1, Ordering::Relaxed);
        }
        decision
    }
}

impl Inner {
    async fn run(
        &self,
        conn: &mut crate::connection::Conn,
        tenant: TenantId,
    ) -> redis::RedisResult<Decision> {
        let mut cost = self.lease_size;
        loop {
            let (allowed, retry_us): (i64, i64) = self
                .script
                .key(RateLimiter::named_key(tenant, self.name))
                .arg(self.config.per_second)
                .arg(self.config.burst.max(1))
                .arg(cost)
                .invoke_async(conn)
                .await?;
            if allowed == 1 {
                if cost > 1 {
                    self.store_lease(tenant, cost - 1);
                }
                return Ok(Decision::Allowed);
            }
            if cost == 1 {
                return Ok(Decision::Limited {
                    retry_after: Duration::from_micros(retry_us.max(1).unsigned_abs()),
                });
            }
            // A whole lease no longer fits: near the limit, go token by token.
            cost = 1;
        }
    }

    /// Takes one token from this process's lease for `tenant`, if it has one.
    fn spend_lease(&self, tenant: TenantId) -> bool {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        match leases.get_mut(&tenant) {
            Some(lease) if lease.left > 0 && lease.until > Instant::now() => {
                lease.left -= 1;
                true
            }
            Some(_) => {
                leases.remove(&tenant);
                false
            }
            None => false,
        }
    }

    fn store_lease(&self, tenant: TenantId, left: u32) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Bounded: expired leases go first, and a flood of tenants only costs precision.
        if leases.len() >= 65_536 {
            leases.retain(|_, l| l.until > now);
            if leases.len() >= 65_536 {
                leases.clear();
            }
        }
        leases.insert(
            tenant,
            Lease {
                left,
                until: now + LEASE_TTL,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::AsyncCommands;
    use tokio::net::TcpListener;

    use crate::config::RedisConfig;

    fn redis_url() -> String {
        std::env::var("MOSAIC_REDIS_URL")
            .unwrap_or_else(|_| RedisConfig::default().urls[0].expose().to_owned())
    }

    /// A limiter on the real Redis; the timeout is generous so a loaded test
    /// machine does not turn a real answer into a fail-open.
    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        let redis = Redis::new(RedisConfig {
            timeout: Duration::from_secs(2),
            ..RedisConfig::single(redis_url())
        })
        .unwrap();
        RateLimiter::new(RateLimitConfig { per_second, burst }, redis)
    }

    fn unreachable(url: &str) -> RateLimiter {
        RateLimiter::new(
            RateLimitConfig::default(),
            Redis::new(RedisConfig::single(url)).unwrap(),
        )
    }

    fn limited(d: Decision) -> Duration {
        match d {
            Decision::Limited { retry_after } => retry_after,
            Decision::Allowed => panic!("expected Limited, got Allowed"),
        }
    }

    #[tokio::test]
    async fn burst_then_limited_per_tenant() {
        let limiter = limiter(1, 5);
        let (a, b) = (TenantId::new(), TenantId::new());
        for i in 0..5 {
            assert_eq!(limiter.check(a).await, Decision::Allowed, "request {i}");
        }
        let retry = limited(limiter.check(a).await);
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(1),
            "{retry:?}"
        );
        // Still limited: a limited request does not consume anything either.
        assert!(matches!(limiter.check(a).await, Decision::Limited { .. }));
        // Another tenant has its own bucket.
        for _ in 0..5 {
            assert_eq!(limiter.check(b).await, Decision::Allowed);
        }
    }

    #[tokio::test]
    async fn refills_after_retry_after_and_keys_carry_the_tenant_tag() {
        let limiter = limiter(20, 2);
        let tenant = TenantId::new();
        assert_eq!(limiter.check(tenant).await, Decision::Allowed);
        assert_eq!(limiter.check(tenant).await, Decision::Allowed);
        let retry = limited(limiter.check(tenant).await);
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_millis(50),
            "{retry:?}"
        );

        let key = RateLimiter::key(tenant);
        assert_eq!(key, format!("mosaic:{{{tenant}}}:ratelimit"));
        let mut conn = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert!(
            ttl > 0 && ttl <= 100,
            "the key expires once the burst is back: {ttl}"
        );

        tokio::time::sleep(retry + Duration::from_millis(10)).await;
        assert_eq!(limiter.check(tenant).await, Decision::Allowed);
    }

    #[tokio::test]
    async fn a_named_limit_counts_apart_from_the_request_limit() {
        let redis = Redis::new(RedisConfig {
            timeout: Duration::from_secs(2),
            ..RedisConfig::single(redis_url())
        })
        .unwrap();
        let config = RateLimitConfig {
            per_second: 1,
            burst: 2,
        };
        let requests = RateLimiter::new(config.clone(), redis.clone());
        let reveals = RateLimiter::named(config, redis, "vault-reveal");
        let tenant = TenantId::new();
        assert_eq!(reveals.check(tenant).await, Decision::Allowed);
        assert_eq!(reveals.check(tenant).await, Decision::Allowed);
        limited(reveals.check(tenant).await);
        // The request limit of the same tenant is untouched.
        assert_eq!(requests.check(tenant).await, Decision::Allowed);
        assert_eq!(
            RateLimiter::named_key(tenant, "vault-reveal"),
            format!("mosaic:{{{tenant}}}:ratelimit:vault-reveal")
        );
        assert_eq!(
            RateLimiter::named_key(tenant, "ratelimit"),
            RateLimiter::key(tenant)
        );
    }

    #[tokio::test]
    async fn leases_draw_from_one_count_shared_by_every_process() {
        // Two "replicas" of a service: lease size min(100/20, 100/10) = 5.
        let (a, b) = (limiter(100, 100), limiter(100, 100));
        let tenant = TenantId::new();
        let mut allowed = 0;
        for i in 0..140 {
            let l = if i % 2 == 0 { &a } else { &b };
            if l.check(tenant).await == Decision::Allowed {
                allowed += 1;
            }
        }
        // The burst of 100, plus what refilled meanwhile, minus at most what
        // sits unspent in the two leases.
        assert!((90..=110).contains(&allowed), "{allowed} allowed");
        assert!(matches!(a.check(tenant).await, Decision::Limited { .. }));
    }

    #[tokio::test]
    async fn disabled_never_limits_nor_connects() {
        // Nothing listens on port 1: a limiter that tried would fail open,
        // and count an error.
        let redis = Redis::new(RedisConfig::single("redis://127.0.0.1:1")).unwrap();
        let limiter = RateLimiter::new(
            RateLimitConfig {
                per_second: 0,
                burst: 0,
            },
            redis.clone(),
        );
        assert!(!limiter.is_enabled());
        for _ in 0..3 {
            assert_eq!(limiter.check(TenantId::new()).await, Decision::Allowed);
        }
        assert!(!redis.is_open());
        assert!(Redis::new(RedisConfig::single("not a url")).is_err());
    }

    async fn assert_fails_open_quickly(limiter: &RateLimiter) {
        let tenant = TenantId::new();
        for i in 0..20 {
            let start = Instant::now();
            assert_eq!(limiter.check(tenant).await, Decision::Allowed, "check {i}");
            let took = start.elapsed();
            assert!(took < Duration::from_millis(200), "check {i} took {took:?}");
        }
    }

    #[tokio::test]
    async fn fails_open_when_redis_is_down() {
        assert_fails_open_quickly(&unreachable("redis://127.0.0.1:1")).await;
    }

    #[tokio::test]
    async fn fails_open_when_redis_never_answers() {
        // Accepts connections and never says a word.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        assert_fails_open_quickly(&unreachable(&url)).await;
        hold.abort();
    }

    #[tokio::test]
    async fn starts_without_redis_and_limits_once_it_appears() {
        // A port with nothing behind it yet.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let redis = Redis::new(RedisConfig {
            timeout: Duration::from_secs(1),
            probe_interval: Duration::from_millis(100),
            ..RedisConfig::single(format!("redis://{addr}"))
        })
        .unwrap();
        let limiter = RateLimiter::new(
            RateLimitConfig {
                per_second: 1,
                burst: 1,
            },
            redis.clone(),
        );
        let tenant = TenantId::new();
        for _ in 0..3 {
            assert_eq!(limiter.check(tenant).await, Decision::Allowed);
        }

        // Redis "comes up": a proxy to the real one on that port.
        let listener = TcpListener::bind(addr).await.unwrap();
        let upstream = redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let proxy = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        assert!(redis.is_open(), "three refused checks open the breaker");
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis.is_open() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!redis.is_open(), "the probe closes the breaker");
        assert_eq!(limiter.check(tenant).await, Decision::Allowed);
        assert!(matches!(
            limiter.check(tenant).await,
            Decision::Limited { .. }
        ));
        proxy.abort();
    }
}
