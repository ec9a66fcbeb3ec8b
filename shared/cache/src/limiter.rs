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
//! Redis is an accelerator, not a dependency: the limiter connects lazily in
//! the background (the service starts while Redis is down), retries the
//! connection at most every [`RECONNECT_EVERY`], bounds every check by the
//! configured timeout, and whenever Redis is down, slow or erroring the check
//! is allowed (fail open) and a warning is logged at most every [`WARN_EVERY`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mosaic_core::TenantId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use mosaic_core::ConfigError;

use crate::config::RateLimitConfig;

/// Least time between two attempts to open the Redis connection.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(3);
/// Least time between two fail-open warnings.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long one connection attempt may take (in the background, not on a request).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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

/// Per-tenant rate limiter. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RateLimiter {
    /// `None` when limiting is off.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    config: RateLimitConfig,
    client: redis::Client,
    script: redis::Script,
    /// The connection once made; receivers are woken after every attempt.
    conn: watch::Sender<Option<ConnectionManager>>,
    attempt: Mutex<Attempt>,
    started: Instant,
    /// Milliseconds after `started` of the last warning, plus one; 0 = never.
    last_warn: AtomicU64,
    /// Tokens taken from Redis and not yet spent, per tenant.
    leases: Mutex<HashMap<TenantId, Lease>>,
    /// Cells one lease takes.
    lease_size: u32,
}

struct Lease {
    left: u32,
    until: Instant,
}

#[derive(Default)]
struct Attempt {
    connecting: bool,
    last: Option<Instant>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.inner.as_ref().map(|i| &i.config))
            .finish()
    }
}

impl RateLimiter {
    /// A limiter for `config`. Does not connect: the first check does, in the
    /// background. Fails only on a malformed Redis URL. With
    /// `config.per_second == 0` the limiter is off and never touches Redis.
    pub fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        if !config.enabled() {
            return Ok(Self::disabled());
        }
        let client = redis::Client::open(config.redis_url.expose())
            .map_err(|e| ConfigError::invalid_secret("MOSAIC_REDIS_URL", e))?;
        Ok(Self {
            inner: Some(Arc::new(Inner {
                client,
                script: redis::Script::new(GCRA),
                conn: watch::Sender::new(None),
                attempt: Mutex::new(Attempt::default()),
                started: Instant::now(),
                last_warn: AtomicU64::new(0),
                leases: Mutex::new(HashMap::new()),
                lease_size: (config.per_second / 20).min(config.burst / 10).max(1),
                config,
            })),
        })
    }

    /// A limiter that allows everything.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The Redis key of a tenant's limit state; the tenant is the hash tag.
    pub fn key(tenant: TenantId) -> String {
        mosaic_core::keys::redis_key(tenant, &[&"ratelimit"])
    }

    /// Counts one request of `tenant`. Never fails and never waits longer than
    /// the configured timeout: without a timely answer from Redis it allows.
    pub async fn check(&self, tenant: TenantId) -> Decision {
        let Some(inner) = &self.inner else {
            return Decision::Allowed;
        };
        match tokio::time::timeout(inner.config.timeout, inner.run(tenant)).await {
            Ok(Ok(decision)) => decision,
            Ok(Err(e)) => {
                inner.fail_open(&e);
                Decision::Allowed
            }
            Err(_) => {
                inner.fail_open(&format!("no answer within {:?}", inner.config.timeout));
                Decision::Allowed
            }
        }
    }
}

impl Inner {
    async fn run(self: &Arc<Self>, tenant: TenantId) -> Result<Decision, String> {
        if self.spend_lease(tenant) {
            return Ok(Decision::Allowed);
        }
        let mut conn = self.connection().await?;
        let mut cost = self.lease_size;
        loop {
            let (allowed, retry_us): (i64, i64) = self
                .script
                .key(RateLimiter::key(tenant))
                .arg(self.config.per_second)
                .arg(self.config.burst.max(1))
                .arg(cost)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
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

    /// The shared connection, starting a background attempt when there is
    /// none and the last attempt is old enough, and waiting for its outcome.
    async fn connection(self: &Arc<Self>) -> Result<ConnectionManager, String> {
        if let Some(conn) = self.conn.borrow().clone() {
            return Ok(conn);
        }
        let mut rx = self.conn.subscribe();
        {
            let mut attempt = self.attempt.lock().unwrap_or_else(PoisonError::into_inner);
            if !attempt.connecting {
                if attempt.last.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
                    return Err("not connected; retrying shortly".to_owned());
                }
                attempt.connecting = true;
                attempt.last = Some(Instant::now());
                tokio::spawn(Arc::clone(self).connect());
            }
        }
        // The connection may have landed between the first look and subscribing.
        if let Some(conn) = rx.borrow_and_update().clone() {
            return Ok(conn);
        }
        let _ = rx.changed().await;
        let conn = rx.borrow().clone();
        conn.ok_or_else(|| "not connected".to_owned())
    }

    async fn connect(self: Arc<Self>) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(self.config.timeout)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let result = ConnectionManager::new_with_config(self.client.clone(), config).await;
        self.attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connecting = false;
        match result {
            Ok(conn) => {
                tracing::info!("rate limiter connected to Redis");
                self.conn.send_replace(Some(conn));
            }
            Err(e) => {
                self.fail_open(&format!("cannot connect: {e}"));
                // Wake the checks waiting on this attempt.
                self.conn.send_modify(|_| {});
            }
        }
    }

    /// Logs that checks are being allowed without Redis, at most every [`WARN_EVERY`].
    fn fail_open(&self, error: &dyn std::fmt::Display) {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_warn.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
        if self
            .last_warn
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(error = %error, "Redis unavailable: rate limits fail open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::AsyncCommands;
    use tokio::net::TcpListener;

    fn redis_url() -> String {
        std::env::var("MOSAIC_REDIS_URL")
            .unwrap_or_else(|_| RateLimitConfig::default().redis_url.expose().to_owned())
    }

    /// A limiter on the real Redis; the timeout is generous so a loaded test
    /// machine does not turn a real answer into a fail-open.
    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            per_second,
            burst,
            timeout: Duration::from_secs(2),
            redis_url: mosaic_core::Secret::url(redis_url()),
        })
        .unwrap()
    }

    fn unreachable(url: &str) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            redis_url: mosaic_core::Secret::url(url),
            timeout: Duration::from_millis(50),
            ..RateLimitConfig::default()
        })
        .unwrap()
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
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: 0,
            burst: 0,
            redis_url: mosaic_core::Secret::url("not a url"),
            ..RateLimitConfig::default()
        })
        .unwrap();
        assert!(!limiter.is_enabled());
        for _ in 0..3 {
            assert_eq!(limiter.check(TenantId::new()).await, Decision::Allowed);
        }
        assert!(
            RateLimiter::new(RateLimitConfig {
                redis_url: mosaic_core::Secret::url("not a url"),
                ..Default::default()
            })
            .is_err()
        );
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
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: 1,
            burst: 1,
            timeout: Duration::from_secs(1),
            redis_url: mosaic_core::Secret::url(format!("redis://{addr}")),
        })
        .unwrap();
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
        tokio::time::sleep(RECONNECT_EVERY + Duration::from_millis(200)).await;
        assert_eq!(limiter.check(tenant).await, Decision::Allowed);
        assert!(matches!(
            limiter.check(tenant).await,
            Decision::Limited { .. }
        ));
        proxy.abort();
    }
}
