//! `mosaic`: run the whole suite, migrate, or mint a local token.
//!
//! ```text
//! mosaic serve
//! mosaic migrate
//! mosaic purge
//! mosaic token [--tenant UUID] [--sub PRINCIPAL] [--role ROLE]... [--ttl SECONDS]
//! ```

use std::time::Duration;

use anyhow::{Context, bail};
use mosaic::{SuiteConfig, migrate, run};
use mosaic_db::DbConfig;
use mosaic_server::{Shutdown, init_logging, sigterm_or_ctrl_c};
use mosaic_tenant::{Claims, TokenSigner};
use uuid::Uuid;

const USAGE: &str = "usage: mosaic serve | mosaic migrate | mosaic purge | mosaic token [--tenant UUID] [--sub PRINCIPAL] [--role ROLE]... [--ttl SECONDS]";

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve().await,
        Some("migrate") => {
            let config = mosaic_server::ServerConfig::from_env()?;
            init_logging(&config.log_filter, config.log_json)?;
            let services = [
                (
                    mosaic_identity::SCHEMA,
                    DbConfig::from_env("identity").map_err(anyhow::Error::msg)?,
                ),
                (
                    mosaic_crm::SCHEMA,
                    DbConfig::from_env("crm").map_err(anyhow::Error::msg)?,
                ),
            ];
            let applied = migrate(&mosaic::admin_url(), &services).await?;
            tracing::info!(applied = applied.len(), "database is up to date");
            Ok(())
        }
        Some("purge") => {
            let config = mosaic_server::ServerConfig::from_env()?;
            init_logging(&config.log_filter, config.log_json)?;
            let report = mosaic::purge(
                &DbConfig::from_env("identity").map_err(anyhow::Error::msg)?,
                &DbConfig::from_env("crm").map_err(anyhow::Error::msg)?,
                chrono::Utc::now(),
            )
            .await?;
            tracing::info!(
                tenants = report.tenants,
                deals = report.crm.deals,
                contacts = report.crm.contacts,
                companies = report.crm.companies,
                crm_request_ids = report.crm.requests,
                identity_request_ids = report.identity_requests,
                "purge done"
            );
            Ok(())
        }
        Some("token") => token(&args[1..]),
        _ => bail!(USAGE),
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = SuiteConfig::from_env()?;
    init_logging(&config.server.log_filter, config.server.log_json)?;
    let listener = tokio::net::TcpListener::bind(config.server.grpc_addr)
        .await
        .with_context(|| format!("binding {}", config.server.grpc_addr))?;
    run(listener, config, Shutdown::new(), sigterm_or_ctrl_c()).await
}

/// Prints a token signed with the local key, for probing with grpcurl.
fn token(args: &[String]) -> anyhow::Result<()> {
    let (auth, key) = mosaic_tenant::token::from_env().map_err(anyhow::Error::msg)?;
    let key = key.context(
        "no signing key in the local config: set MOSAIC_JWT_HS256_SECRET (see .data/mosaic.env)",
    )?;
    let (mut tenant, mut sub, mut roles, mut ttl) = (None, None, Vec::new(), 3600u64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--tenant" => tenant = Some(Uuid::parse_str(value).context("--tenant: not a UUID")?),
            "--sub" => sub = Some(value.clone()),
            "--role" => roles.push(value.clone()),
            "--ttl" => ttl = value.parse().context("--ttl: seconds")?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if roles.is_empty() {
        roles.push(
            if tenant.is_some() {
                "owner"
            } else {
                "platform_admin"
            }
            .to_owned(),
        );
    }
    let sub = sub.unwrap_or_else(|| "platform:local".to_owned());
    let claims = Claims::new(&auth, sub, tenant, roles, Duration::from_secs(ttl));
    println!("{}", TokenSigner::new(&key)?.sign(&claims)?);
    Ok(())
}
