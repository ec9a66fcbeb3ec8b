//! `mosaic-crm`: the crm service alone (one Kubernetes Deployment).

use std::sync::Arc;

use mosaic_crm::{CrmState, SERVICE_NAMES, routes};
use mosaic_db::{Database, DbConfig};
use mosaic_server::{
    Health, Metrics, ServeOptions, ServerConfig, init_logging, serve, sigterm_or_ctrl_c,
};
use mosaic_tenant::TokenVerifier;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ServerConfig::from_env()?;
    init_logging(&config.log_filter, config.log_json)?;
    // crm only verifies tokens; signing is identity's job.
    let (auth, _) = mosaic_tenant::token::from_env().map_err(anyhow::Error::msg)?;
    let db_config = DbConfig::from_env("crm").map_err(anyhow::Error::msg)?;
    let db = Database::connect_lazy(&db_config, "mosaic-crm")?;
    let metrics = Metrics::new()?;
    db.register_metrics(&metrics, "crm")?;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let opts = ServeOptions {
        health: Health::new(SERVICE_NAMES),
        probes: vec![Arc::new(db.clone())],
        rate_limiter: mosaic_cache::RateLimiter::from_env().map_err(anyhow::Error::msg)?,
        ..ServeOptions::new(config.clone(), TokenVerifier::new(auth)?, metrics)
    };
    let routes = routes(CrmState { db: db.clone() }, config.max_message_bytes);
    let result = serve(listener, routes, opts, sigterm_or_ctrl_c()).await;
    db.close().await;
    result
}
