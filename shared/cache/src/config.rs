//! [`RateLimitConfig`]: per-tenant rate, burst, Redis address and timeout, from
//! environment variables with local defaults.

use std::time::Duration;

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
    /// Where Redis is, e.g. `redis://127.0.0.1:6379`.
    pub redis_url: String,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 1000,
            burst: 2000,
            timeout: Duration::from_millis(50),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
        }
    }
}

impl RateLimitConfig {
    /// Reads `MOSAIC_RATE_LIMIT_PER_SECOND` (default 1000; `0` disables),
    /// `MOSAIC_RATE_LIMIT_BURST` (default 2000), `MOSAIC_REDIS_URL` (default
    /// `redis://127.0.0.1:6379`) and `MOSAIC_REDIS_TIMEOUT_MS` (default 50).
    /// A value that is set but not a whole number is an error.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Whether checks consult Redis at all.
    pub fn enabled(&self) -> bool {
        self.per_second > 0
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let num = |name: &str, default: u64| -> Result<u64, String> {
            match var(name) {
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name}: expected a whole number, got {v:?}")),
                None => Ok(default),
            }
        };
        let small = |name: &str, default: u32| -> Result<u32, String> {
            u32::try_from(num(name, default.into())?).map_err(|_| format!("{name}: too large"))
        };
        let d = Self::default();
        Ok(Self {
            per_second: small(PER_SECOND, d.per_second)?,
            burst: small(BURST, d.burst)?,
            timeout: Duration::from_millis(num(REDIS_TIMEOUT_MS, 50)?),
            redis_url: var(REDIS_URL).unwrap_or(d.redis_url),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<RateLimitConfig, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RateLimitConfig::from_lookup(|n| map.get(n).cloned())
    }

    #[test]
    fn defaults() {
        let c = from(&[]).unwrap();
        assert_eq!(c, RateLimitConfig::default());
        assert_eq!(
            (c.per_second, c.burst, c.timeout),
            (1000, 2000, Duration::from_millis(50))
        );
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
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
        assert_eq!(c.redis_url, "redis://r:1");
        assert!(!from(&[(PER_SECOND, "0")]).unwrap().enabled());
        assert!(from(&[(BURST, "many")]).unwrap_err().contains(BURST));
        assert!(from(&[(PER_SECOND, "99999999999")]).is_err());
    }
}
