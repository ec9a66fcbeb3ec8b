//! Redis for Mosaic: an accelerator, never a source of truth. When Redis is
//! down or slow, calls go on without it, and once it is known to be down no
//! call waits for it.
//!
//! - [`config`]: [`RedisConfig`] (one URL: a single node; several: a Redis
//!   Cluster), [`RateLimitConfig`] and [`CacheConfig`], read from the
//!   environment.
//! - [`connection`]: [`Redis`], the process's one handle, shared by the
//!   limiter and every service's cache: short timeouts, a breaker that opens
//!   on a few failures in a second and a background PING probe that closes it,
//!   each transition logged once and exposed as metrics.
//! - [`cache`]: [`Cache`], cache-aside for one service. Keys are made only
//!   from a `TenantContext` (`mosaic:{<tenant>}:<service>:<kind>:<id>`) or,
//!   for the one documented lookup without a tenant, in a named platform
//!   scope; a miss hands out a fill lease that an invalidation revokes, so
//!   a slow reader never writes an old row back over a newer write. Usage:
//!
//!   ```text
//!   let key = cache.key(&ctx, "config", agent_id)?;
//!   match cache.get(&key).await {
//!       Lookup::Hit(entry) => return decode(entry.bytes),
//!       Lookup::Miss(token) => {
//!           let agent = read_from_postgres(&ctx, agent_id).await?; // starts after get
//!           cache.fill(token, Entry::versioned(agent.etag(), encode(&agent))).await;
//!           agent
//!       }
//!       Lookup::Unavailable => read_from_postgres(&ctx, agent_id).await?,
//!   }
//!   // a writer: commit, then `cache.invalidate(&key).await`, then answer
//!   ```
//! - [`metrics`]: the cache's hit / miss / error / fill counters, by service
//!   and kind.
//! - [`limiter`]: [`RateLimiter`], a per-tenant GCRA checked by one atomic Lua
//!   script keyed `mosaic:{<tenant>}:ratelimit` (the braces make the tenant the
//!   Redis Cluster hash tag). It fails open: when Redis is down, slow or
//!   erroring, every check is allowed.
//! - [`layer`]: [`RateLimitLayer`], the tower layer that runs after the auth
//!   layer and answers RESOURCE_EXHAUSTED (reason `RATE_LIMITED`, with
//!   `google.rpc.RetryInfo`) when a tenant is over its rate.

pub mod cache;
pub mod config;
pub mod connection;
pub mod layer;
pub mod limiter;
pub mod metrics;

pub use cache::{Cache, CacheKey, Entry, FillToken, Filled, Invalidated, Lookup};
pub use config::{CacheConfig, RateLimitConfig, RedisConfig};
pub use connection::{Redis, Unavailable};
pub use layer::{RateLimit, RateLimitLayer};
pub use limiter::{Decision, RateLimiter};
