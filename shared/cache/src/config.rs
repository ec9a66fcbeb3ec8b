//! [`RateLimitConfig`]: per-tenant rate, burst, Redis address and timeout, from
//! environment variables with local defaults.

use std::time::Duration;

use mosaic_core::{ConfigError, Env, Secret};

const PER_SECOND: &str = "MOSAIC_RATE_LIMIT_PER_SECOND";
const BURST: &str = "MOSAIC_RATE_LIMIT_BURST";
const REDIS_URL: &str = "MOSAIC_REDIS_URL";
const REDIS_TIMEOUT_MS: &str = "MOSAIC_REDIS_TIMEOUT_MS";

/// How fast each tenant may call, and how long a check may wait on Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per tenant; `0` turns limiting off.
    pub per_second: u32,
    /// Requests a tenant may make at once after being idle (at least 1 is used).
    pub burst: u32,
    /// Longest a check waits on Redis before it fails open.
    pub timeout: Duration,
    /// Where Redis is, e.g. `redis://127.0.0.1:6379` (shown without its password).
    pub redis_url: Secret,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 1000,
            burst: 2000,
            timeout: Duration::from_millis(50),
            redis_url: Secret::url("redis://127.0.0.1:6379"),
        }
    }
}

impl RateLimitConfig {
    /// Reads `MOSAIC_RATE_LIMIT_PER_SECOND` (default 1000; `0` disables),
    /// `MOSAIC_RATE_LIMIT_BURST` (default 2000), `MOSAIC_REDIS_URL` (default
    /// `redis://127.0.0.1:6379`) and `MOSAIC_REDIS_TIMEOUT_MS` (default 50).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            per_second: env.parse(PER_SECOND, defaults.per_second)?,
            burst: env.parse(BURST, defaults.burst)?,
            timeout: env.millis(REDIS_TIMEOUT_MS, 50)?,
            redis_url: env.url(REDIS_URL, defaults.redis_url.expose())?,
        })
    }

    /// Whether checks consult Redis at all.
    pub fn enabled(&self) -> bool {
        self.per_second > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<RateLimitConfig, ConfigError> {
        RateLimitConfig::from_env(&Env::from_pairs(vars.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = from(&[]).unwrap();
        assert_eq!(c, RateLimitConfig::default());
        assert_eq!(
            (c.per_second, c.burst, c.timeout),
            (1000, 2000, Duration::from_millis(50))
        );
        assert_eq!(c.redis_url.expose(), "redis://127.0.0.1:6379");
        assert!(c.enabled());
    }

    #[test]
    fn values_and_errors() {
        let c = from(&[
            (PER_SECOND, "5"),
            (BURST, " 7 "),
            (REDIS_URL, "redis://r:1"),
            (REDIS_TIMEOUT_MS, "20"),
        ])
        .unwrap();
        assert_eq!(
            (c.per_second, c.burst, c.timeout),
            (5, 7, Duration::from_millis(20))
        );
        assert_eq!(c.redis_url.expose(), "redis://r:1");
        assert!(!from(&[(PER_SECOND, "0")]).unwrap().enabled());
        assert_eq!(from(&[(BURST, "many")]).unwrap_err().name(), BURST);
        assert!(from(&[(PER_SECOND, "99999999999")]).is_err());
    }
}
