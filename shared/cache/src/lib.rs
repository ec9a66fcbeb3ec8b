//! Redis for Mosaic: an accelerator, never a source of truth: when Redis is
//! down, calls go on without it.
//!
//! - [`config`]: [`RateLimitConfig`], read from the environment.
//! - [`limiter`]: [`RateLimiter`], a per-tenant GCRA checked by one atomic Lua
//!   script keyed `mosaic:{<tenant>}:ratelimit` (the braces make the tenant the
//!   Redis Cluster hash tag). It fails open: when Redis is down, slow or
//!   erroring, every check is allowed and a warning is logged now and then.
//! - [`layer`]: [`RateLimitLayer`], the tower layer that runs after the auth
//!   layer and answers RESOURCE_EXHAUSTED (reason `RATE_LIMITED`, with
//!   `google.rpc.RetryInfo`) when a tenant is over its rate.

pub mod config;
pub mod layer;
pub mod limiter;

pub use config::RateLimitConfig;
pub use layer::{RateLimit, RateLimitLayer};
pub use limiter::{Decision, RateLimiter};
