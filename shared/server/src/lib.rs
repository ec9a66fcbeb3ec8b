//! Serving for every Mosaic service: what a process needs around its gRPC
//! handlers so it can run behind Kubernetes. A service builds its
//! `tonic::service::Routes`, binds a listener, and hands both to [`serve()`]
//! with a shutdown future (usually [`sigterm_or_ctrl_c`]).
//!
//! - [`config`]: `MOSAIC_*` environment variables with local defaults
//!   ([`ServerConfig`]) and helpers ([`env_string`], [`env_parse`], [`env_opt`])
//!   whose errors name the variable.
//! - [`telemetry`]: JSON (or text) logs; every line inside a call carries its
//!   tenant and request id ([`init_logging`]).
//! - [`metrics`]: the Prometheus registry, gauges sampled at scrape time, and
//!   the `GET /metrics` side port ([`Metrics`], [`serve_metrics`]).
//! - [`metrics_layer`]: the tower layer counting calls by method and final
//!   gRPC code, timing them, and logging one line per call ([`MetricsLayer`]).
//! - [`health`]: `grpc.health.v1` driven by [`Probe`]s ([`Health`]).
//! - [`reflection`]: gRPC server reflection, `v1` and `v1alpha`.
//! - [`shutdown`]: the signal, and the [`Shutdown`] handle streams select on.
//! - `incoming`: accepted connections, closable at the drain deadline.
//! - [`serve`](mod@serve): the server itself: layers, health, reflection, drain.

pub mod config;
pub mod health;
mod incoming;
pub mod metrics;
pub mod metrics_layer;
pub mod reflection;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, ServerConfig, env_opt, env_parse, env_string};
pub use health::{Health, LIVENESS, Probe, ProbeResult};
pub use metrics::{GaugeFn, Metrics, serve_metrics};
pub use metrics_layer::MetricsLayer;
pub use serve::{PUBLIC_PREFIXES, ServeOptions, serve};
pub use shutdown::{Shutdown, sigterm_or_ctrl_c};
pub use telemetry::init_logging;
