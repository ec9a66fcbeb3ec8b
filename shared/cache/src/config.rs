//! Settings, from environment variables with local defaults:
//! [`RedisConfig`] (where Redis is, how long a call may wait, the breaker),
//! [`RateLimitConfig`] (per-tenant rate and burst) and [`CacheConfig`]
//! (entry and fill-lease lifetimes).

use std::time::Duration;

use mosaic_core::{ConfigError, Env, Secret};

pub const REDIS_URL: &str = "MOSAIC_REDIS_URL";
pub const REDIS_TIMEOUT_MS: &str = "MOSAIC_REDIS_TIMEOUT_MS";
pub const REDIS_BREAKER_FAILURES: &str = "MOSAIC_REDIS_BREAKER_FAILURES";
pub const REDIS_PROBE_INTERVAL_MS: &str = "MOSAIC_REDIS_PROBE_INTERVAL_MS";
pub const PER_SECOND: &str = "MOSAIC_RATE_LIMIT_PER_SECOND";
pub const BURST: &str = "MOSAIC_RATE_LIMIT_BURST";
pub const CACHE_TTL_SECS: &str = "MOSAIC_CACHE_TTL_SECS";
pub const CACHE_LEASE_MS: &str = "MOSAIC_CACHE_LEASE_MS";

/// Where Redis is and how much a call may wait on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// One URL: a single node. Several (comma-separated in
    /// `MOSAIC_REDIS_URL`): seed nodes of a Redis Cluster. Shown without
    /// passwords.
    pub urls: Vec<Secret>,
    /// Longest a call waits on Redis (connecting included) before it goes on
    /// without it.
    pub timeout: Duration,
    /// Failed calls in a row, or within one second, that open the breaker.
    pub breaker_failures: u32,
    /// How often an open breaker's probe PINGs Redis.
    pub probe_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::single("redis://127.0.0.1:6379")
    }
}

impl RedisConfig {
    /// A single node at `url`, with the default timeouts.
    pub fn single(url: impl Into<String>) -> Self {
        Self {
            urls: vec![Secret::url(url)],
            timeout: Duration::from_millis(50),
            breaker_failures: 3,
            probe_interval: Duration::from_millis(500),
        }
    }

    /// Reads `MOSAIC_REDIS_URL` (default `redis://127.0.0.1:6379`; several
    /// comma-separated URLs select Redis Cluster), `MOSAIC_REDIS_TIMEOUT_MS`
    /// (default 50), `MOSAIC_REDIS_BREAKER_FAILURES` (default 3) and
    /// `MOSAIC_REDIS_PROBE_INTERVAL_MS` (default 500).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let raw = env.url(REDIS_URL, defaults.urls[0].expose())?;
        let urls: Vec<Secret> = raw
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(Secret::url)
            .collect();
        if urls.is_empty() {
            return Err(ConfigError::invalid_secret(REDIS_URL, "names no URL"));
        }
        Ok(Self {
            urls,
            timeout: env.millis(REDIS_TIMEOUT_MS, 50)?,
            breaker_failures: env.positive(REDIS_BREAKER_FAILURES, defaults.breaker_failures)?,
            probe_interval: Duration::from_millis(env.positive(REDIS_PROBE_INTERVAL_MS, 500)?),
        })
    }

    /// Whether the URLs name a Redis Cluster (more than one seed node).
    pub fn is_cluster(&self) -> bool {
        self.urls.len() > 1
    }
}

/// How fast each tenant may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per tenant; `0` turns limiting off.
    pub per_second: u32,
    /// Requests a tenant may make at once after being idle (at least 1 is used).
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 1000,
            burst: 2000,
        }
    }
}

impl RateLimitConfig {
    /// Reads `MOSAIC_RATE_LIMIT_PER_SECOND` (default 1000; `0` disables) and
    /// `MOSAIC_RATE_LIMIT_BURST` (default 2000).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            per_second: env.parse(PER_SECOND, defaults.per_second)?,
            burst: env.parse(BURST, defaults.burst)?,
        })
    }

    /// Whether checks consult Redis at all.
    pub fn enabled(&self) -> bool {
        self.per_second > 0
    }
}

/// How long cached values and fill leases live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Lifetime of a cached value; zero turns the cache off. It also bounds
    /// how stale an entry can get when an invalidation could not reach Redis
    /// and this process died before it could retry it.
    pub ttl: Duration,
    /// Lifetime of a fill lease: the most a reader may take between its miss
    /// and its fill (its database read). A lease that runs out only loses
    /// that fill.
    pub lease: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            lease: Duration::from_millis(2000),
        }
    }
}

impl CacheConfig {
    /// Reads `MOSAIC_CACHE_TTL_SECS` (default 60; `0` turns the cache off)
    /// and `MOSAIC_CACHE_LEASE_MS` (default 2000).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            ttl: Duration::from_secs(env.parse(CACHE_TTL_SECS, defaults.ttl.as_secs())?),
            lease: Duration::from_millis(env.positive(CACHE_LEASE_MS, 2000)?),
        })
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_pairs(vars.iter().copied())
    }

    #[test]
    fn defaults() {
        let redis = RedisConfig::from_env(&env(&[])).unwrap();
        assert_eq!(redis, RedisConfig::default());
        assert_eq!(redis.urls.len(), 1);
        assert_eq!(redis.urls[0].expose(), "redis://127.0.0.1:6379");
        assert!(!redis.is_cluster());
        assert_eq!(
            (redis.timeout, redis.breaker_failures, redis.probe_interval),
            (Duration::from_millis(50), 3, Duration::from_millis(500))
        );
        let limits = RateLimitConfig::from_env(&env(&[])).unwrap();
        assert_eq!((limits.per_second, limits.burst), (1000, 2000));
        assert!(limits.enabled());
        let cache = CacheConfig::from_env(&env(&[])).unwrap();
        assert_eq!(cache, CacheConfig::default());
        assert!(cache.enabled());
    }

    #[test]
    fn values_and_errors() {
        let redis = RedisConfig::from_env(&env(&[
            (REDIS_URL, " redis://a:7000, redis://:pw@b:7001 ,"),
            (REDIS_TIMEOUT_MS, "20"),
            (REDIS_BREAKER_FAILURES, "5"),
            (REDIS_PROBE_INTERVAL_MS, "100"),
        ]))
        .unwrap();
        assert!(redis.is_cluster());
        assert_eq!(redis.urls[1].expose(), "redis://:pw@b:7001");
        assert!(!format!("{redis:?}").contains("pw"), "passwords are hidden");
        assert_eq!(redis.timeout, Duration::from_millis(20));
        assert_eq!(redis.breaker_failures, 5);
        assert_eq!(redis.probe_interval, Duration::from_millis(100));
        let failures = RedisConfig::from_env(&env(&[(REDIS_BREAKER_FAILURES, "0")]));
        assert_eq!(failures.unwrap_err().name(), REDIS_BREAKER_FAILURES);
        assert_eq!(
            RedisConfig::from_env(&env(&[(REDIS_URL, ",")]))
                .unwrap_err()
                .name(),
            REDIS_URL
        );

        let limits = RateLimitConfig::from_env(&env(&[(PER_SECOND, "5"), (BURST, " 7 ")])).unwrap();
        assert_eq!((limits.per_second, limits.burst), (5, 7));
        assert!(
            !RateLimitConfig::from_env(&env(&[(PER_SECOND, "0")]))
                .unwrap()
                .enabled()
        );
        let burst = RateLimitConfig::from_env(&env(&[(BURST, "many")]));
        assert_eq!(burst.unwrap_err().name(), BURST);
        assert!(RateLimitConfig::from_env(&env(&[(PER_SECOND, "99999999999")])).is_err());

        let cache =
            CacheConfig::from_env(&env(&[(CACHE_TTL_SECS, "0"), (CACHE_LEASE_MS, "300")])).unwrap();
        assert!(!cache.enabled());
        assert_eq!(cache.lease, Duration::from_millis(300));
        let lease = CacheConfig::from_env(&env(&[(CACHE_LEASE_MS, "0")]));
        assert_eq!(lease.unwrap_err().name(), CACHE_LEASE_MS);
    }
}
