//! [`serve`]: one gRPC server with everything around the services' routes.
//!
//! Layers, outermost first: [`MetricsLayer`] (sees every call, including
//! those the auth layer refuses), [`FramingLayer`] (a wrong content-type or
//! a truncated frame is the sender's INVALID_ARGUMENT), [`AuthLayer`], the
//! rate limit, then the router with the services plus health and reflection.
//!
//! Shutdown, when the `shutdown` future completes: health goes NOT_SERVING,
//! the [`Shutdown`] handle fires (handlers end their streams), the listener
//! stops accepting and open connections get GOAWAY, unary calls in flight
//! finish, and `serve` returns. If calls are still open after
//! `shutdown_timeout`, their connections are closed and `serve` returns anyway.

use std::future::Future;
use std::sync::Arc;

use mosaic_cache::{RateLimitLayer, RateLimiter};
use mosaic_core::{Context as _, Metrics, StartupError};
use mosaic_tenant::{AccessPolicy, AuthLayer, TokenVerifier};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::config::ServerConfig;
use crate::framing_layer::FramingLayer;
use crate::health::Health;
use crate::metrics::{CallMetrics, serve_metrics};
use crate::metrics_layer::MetricsLayer;
use crate::shutdown::Shutdown;
use crate::{incoming, reflection};

/// Paths that need no bearer token: health and reflection, for probes and
/// tooling. Services add theirs in [`ServeOptions::public_methods`].
pub const PUBLIC_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Everything [`serve`] needs besides the routes, the listener and the
/// shutdown future. Start from [`ServeOptions::new`] and override fields:
///
/// ```text
/// let opts = ServeOptions {
///     health: Health::new(vec![HealthGroup::new(&[CompanyServiceServer::<Companies>::NAME], probes)]),
///     ..ServeOptions::new(config, verifier, metrics)
/// };
/// ```
///
/// Services normally do not build this themselves: [`crate::suite`] does,
/// from their [`crate::ServiceModule`]s.
pub struct ServeOptions {
    pub config: ServerConfig,
    /// Verifies bearer tokens for every method not public.
    pub verifier: TokenVerifier,
    /// Full method paths (or path prefixes) callable without a token, on top
    /// of [`PUBLIC_PREFIXES`], e.g. `/mosaic.identity.v1.TokenService/ExchangeApiKey`.
    pub public_methods: Vec<String>,
    /// Health of the server and of the services it lists, with the probes
    /// behind it; reflection lists the same services.
    pub health: Health,
    pub metrics: Metrics,
    /// Where `GET /metrics` is served. When `None`, `config.metrics_addr` is
    /// bound (if set).
    pub metrics_listener: Option<TcpListener>,
    /// Fired when draining starts; keep a clone for handlers with streams.
    pub stop: Shutdown,
    /// Per-tenant request rate limit, checked after authentication (fails open).
    pub rate_limiter: RateLimiter,
    /// Decisions made after a token was issued (deleted tenants, revocations),
    /// checked after its signature.
    pub access: Option<Arc<dyn AccessPolicy>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("config", &self.config)
            .field("public_methods", &self.public_methods)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl ServeOptions {
    /// No extra public methods, health for the whole server only (always
    /// SERVING, and reflection lists no service of yours: set `health` to
    /// list them), a fresh [`Shutdown`].
    pub fn new(config: ServerConfig, verifier: TokenVerifier, metrics: Metrics) -> Self {
        Self {
            config,
            verifier,
            public_methods: Vec::new(),
            health: Health::new(Vec::new()),
            metrics,
            metrics_listener: None,
            stop: Shutdown::new(),
            rate_limiter: RateLimiter::disabled(),
            access: None,
        }
    }
}

/// Serves `routes` on `listener` (bind it yourself, port 0 in tests, and ask
/// it for `local_addr()` first) until `shutdown` completes and calls drain.
///
/// Message size limits belong to the generated servers, which `routes`
/// already holds: services build them with
/// `.max_decoding_message_size(config.max_message_bytes)` and
/// `.max_encoding_message_size(config.max_message_bytes)`.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let ServeOptions {
        config,
        verifier,
        public_methods,
        health,
        metrics,
        metrics_listener,
        stop,
        rate_limiter,
        access,
    } = opts;
    let grpc_addr = listener
        .local_addr()
        .context("reading the grpc listener address")?;

    // Probes and the metrics endpoint run until `serve` returns, however it returns.
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();

    let metrics_listener = match (metrics_listener, config.metrics_addr) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(
            TcpListener::bind(addr)
                .await
                .context(format_args!("binding the metrics address {addr}"))?,
        ),
        (None, None) => None,
    };
    if let Some(l) = metrics_listener {
        let addr = l
            .local_addr()
            .context("reading the metrics listener address")?;
        tracing::info!(%addr, "metrics listening");
        let (metrics, done) = (metrics.clone(), background.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(e) = serve_metrics(l, metrics, done).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    tokio::spawn(
        health
            .clone()
            .run_probes(config.probe_interval, background.clone()),
    );

    let routes = routes
        .add_service(health.service())
        .add_service(reflection::v1(health.services()).context("building reflection v1")?)
        .add_service(
            reflection::v1alpha(health.services()).context("building reflection v1alpha")?,
        );
    let public = PUBLIC_PREFIXES
        .iter()
        .map(|p| (*p).to_owned())
        .chain(public_methods);
    let methods = reflection::method_paths().context("reading the descriptor sets")?;
    let calls = CallMetrics::register(&metrics).context("registering the call metrics")?;
    health
        .register_metrics(&metrics)
        .context("registering the health metrics")?;
    rate_limiter
        .register_metrics(&metrics)
        .context("registering the rate limit metrics")?;

    let stop_accepting = CancellationToken::new();
    let force_close = CancellationToken::new();
    let server = Server::builder()
        .layer(MetricsLayer::new(calls, methods))
        .layer(FramingLayer)
        .layer(match access {
            Some(access) => AuthLayer::new(verifier, public).with_access(access),
            None => AuthLayer::new(verifier, public),
        })
        .layer(RateLimitLayer::new(rate_limiter))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            incoming::accept(listener, force_close.clone()),
            stop_accepting.clone().cancelled_owned(),
        );
    let mut server = std::pin::pin!(server);
    tracing::info!(addr = %grpc_addr, "grpc listening");

    tokio::select! {
        res = &mut server => return res.context("grpc server failed"),
        () = shutdown => {}
    }

    let timeout = config.shutdown_timeout;
    tracing::info!(
        timeout_ms = timeout.as_millis() as u64,
        "shutdown started, draining calls"
    );
    health.shut_down().await;
    stop.trigger();
    stop_accepting.cancel();
    match tokio::time::timeout(timeout, &mut server).await {
        Ok(res) => {
            res.context("grpc server failed while draining")?;
            tracing::info!("calls drained, server stopped");
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "shutdown deadline reached, dropping open calls"
            );
            force_close.cancel();
        }
    }
    Ok(())
}
