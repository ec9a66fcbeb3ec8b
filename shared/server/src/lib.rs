//! The service kit: everything a Mosaic service needs around its handlers,
//! so that a service crate holds only its own rules and storage.
//!
//! A service describes itself once as a [`ServiceModule`]; [`suite::run`]
//! serves any list of them on one port, the same way for a service's own
//! binary ([`cli::service_main`]), the all-in-one `mosaic` binary and the
//! black-box tests.
//!
//! - [`module`]: the [`ServiceModule`] contract, the [`Deps`] a service is
//!   built from, the [`Service`] it builds ([`add_services!`] adds its gRPC
//!   servers), and [`PurgeTenant`].
//! - [`suite`]: the one wiring path: pools, probes, health groups, rate
//!   limits, serving, draining, closing; and `migrate`.
//! - [`cli`]: the `serve` flags ([`ServeArgs`]) and how binaries exit.
//! - [`config`]: [`ServerConfig`], the `MOSAIC_*` serving settings.
//! - [`framing_layer`]: [`FramingLayer`], a wrong content-type or a
//!   truncated frame answered INVALID_ARGUMENT `MALFORMED_REQUEST`.
//! - [`telemetry`]: JSON (or text) logs; every line inside a call carries its
//!   tenant and request id ([`init_logging`]); OTLP trace export when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`init_telemetry`]).
//! - [`metrics`]: the gRPC call metrics and the `GET /metrics` side port.
//! - [`metrics_layer`]: the tower layer counting calls by method and final
//!   gRPC code, timing them, and logging one line per call ([`MetricsLayer`]).
//! - [`peers`]: where the other services a service calls are ([`Peers`]).
//! - [`health`]: `grpc.health.v1`, one [`HealthGroup`] of services per probe set.
//! - [`reflection`]: gRPC server reflection, `v1` and `v1alpha`.
//! - [`shutdown`]: the signal, and the [`Shutdown`] handle streams select on.
//! - `incoming`: accepted connections, closable at the drain deadline.
//! - [`serve`](mod@serve): the server itself: layers, health, reflection, drain.

pub mod cli;
pub mod config;
pub mod framing_layer;
pub mod health;
mod incoming;
pub mod metrics;
pub mod metrics_layer;
pub mod module;
pub mod peers;
pub mod reflection;
pub mod serve;
pub mod shutdown;
pub mod suite;
pub mod telemetry;

pub use cli::{ServeArgs, report, service_main};
pub use config::ServerConfig;
pub use framing_layer::FramingLayer;
pub use health::{Health, HealthGroup, LIVENESS};
pub use metrics::{CallMetrics, serve_metrics};
pub use metrics_layer::{ClientGone, MetricsLayer};
pub use module::{BoxFuture, Deps, ExpiredRows, PurgeTenant, Service, ServiceModule};
pub use peers::Peers;
pub use serve::{PUBLIC_PREFIXES, ServeOptions, serve};
pub use shutdown::{Shutdown, sigterm_or_ctrl_c};
pub use telemetry::{Telemetry, TraceConfig, init_logging, init_telemetry};
