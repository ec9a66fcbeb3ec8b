//! The base of every Mosaic crate: small, with no knowledge of gRPC, SQL or
//! Redis, so that the store crates (`mosaic-db`, `mosaic-cache`, `mosaic-mongo`)
//! and the serving kit (`mosaic-server`) can all depend on it and never on
//! each other's insides.
//!
//! - [`env`]: [`Env`], the one reader of `MOSAIC_*` settings (the process
//!   environment, or a map in tests), its [`ConfigError`], and [`Secret`]
//!   for values that must never be printed (database and Redis URLs).
//! - [`error`]: [`StartupError`], what a binary or operator command reports
//!   when it cannot start, and the [`Context`] trait that makes one.
//! - [`probe`]: [`Probe`], a dependency check behind gRPC health.
//! - [`metrics`]: [`Metrics`], the process's Prometheus registry, with
//!   gauges and counters sampled at scrape time.
//! - [`ids`]: [`TenantId`] and [`define_id!`] for the other id newtypes.
//! - [`keys`]: names that carry a tenant, such as Redis keys with the tenant
//!   as the Redis Cluster hash tag.
//! - [`log_every`]: [`LogEvery`], a warning said once per interval with a
//!   count (what an outage that fails every call logs).
//! - [`spans`]: whether trace spans are exported, which decides whether the
//!   store crates open spans at all.

pub mod env;
pub mod error;
pub mod ids;
pub mod keys;
pub mod log_every;
pub mod metrics;
pub mod probe;
pub mod spans;

pub use env::{ConfigError, Env, Secret};
pub use error::{Context, StartupError};
pub use ids::TenantId;
pub use log_every::LogEvery;
pub use metrics::{GaugeFn, Metrics};
pub use probe::{Probe, ProbeFuture, ProbeResult};

#[doc(hidden)]
pub mod __private {
    pub use serde;
    #[cfg(feature = "sqlx")]
    pub use sqlx;
    pub use uuid;
}
