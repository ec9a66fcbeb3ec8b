//! `mosaic-identity`: the identity service alone (one Kubernetes Deployment).

use std::sync::Arc;

use anyhow::Context;
use mosaic_db::{Database, DbConfig};
use mosaic_identity::{IdentityState, PLATFORM_ROLE, PUBLIC_METHODS, SERVICE_NAMES, routes};
use mosaic_server::{
    Health, Metrics, ServeOptions, ServerConfig, env_parse, init_logging, serve, sigterm_or_ctrl_c,
};
use mosaic_tenant::{TokenSigner, TokenVerifier};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ServerConfig::from_env()?;
    init_logging(&config.log_filter, config.log_json)?;
    let (auth, key) = mosaic_tenant::token::from_env().map_err(anyhow::Error::msg)?;
    let key = key
        .context("identity signs tokens: set MOSAIC_JWT_PRIVATE_KEY or MOSAIC_JWT_HS256_SECRET")?;
    let db_config = DbConfig::from_env("identity").map_err(anyhow::Error::msg)?;
    let db =
        Database::connect_lazy(&db_config, "mosaic-identity")?.with_platform_role(PLATFORM_ROLE);
    let metrics = Metrics::new()?;
    db.register_metrics(&metrics, "identity")?;
    let state = IdentityState {
        db: db.clone(),
        signer: TokenSigner::new(&key)?,
        auth: auth.clone(),
        default_token_ttl: std::time::Duration::from_secs(env_parse(
            "MOSAIC_TOKEN_TTL_SECS",
            900u64,
        )?),
    };
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let opts = ServeOptions {
        public_methods: PUBLIC_METHODS.iter().map(|m| (*m).to_owned()).collect(),
        health: Health::new(SERVICE_NAMES),
        probes: vec![Arc::new(db.clone())],
        rate_limiter: mosaic_cache::RateLimiter::from_env().map_err(anyhow::Error::msg)?,
        ..ServeOptions::new(config.clone(), TokenVerifier::new(auth)?, metrics)
    };
    let routes = routes(state, config.max_message_bytes);
    serve(listener, routes, opts, sigterm_or_ctrl_c()).await
}
