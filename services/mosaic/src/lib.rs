//! The all-in-one Mosaic suite: every service's router on one server and one
//! port, for local use and the black-box tests, plus the operator commands
//! (`migrate`, `token`). Production runs each service's own binary; this one
//! assembles the same libraries.
//!
//! - [`SuiteConfig`]: everything from the environment, with local defaults.
//! - [`run`]: serve the suite on a bound listener until a shutdown future fires.
//! - [`migrate`]: bootstrap roles and schemas, then apply every migration.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mosaic_cache::RateLimiter;
use mosaic_db::bootstrap::RuntimeLogin;
use mosaic_db::{Database, DbConfig, ServiceSchema};
use mosaic_identity::IdentityState;
use mosaic_server::{Health, Metrics, Probe, ServeOptions, ServerConfig, Shutdown};
use mosaic_tenant::{AuthConfig, KeyMaterial, TokenSigner, TokenVerifier};
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;

/// Every service schema, in migration order.
pub const SCHEMAS: [ServiceSchema; 2] = [mosaic_identity::SCHEMA, mosaic_crm::SCHEMA];

/// The suite's settings. See the README's configuration table.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    /// Signs tokens (identity's exchange, `mosaic token`); without it the
    /// token exchange answers UNAVAILABLE.
    pub signing_key: Option<KeyMaterial>,
    pub identity_db: DbConfig,
    pub crm_db: DbConfig,
    /// Lifetime of exchanged tokens (`MOSAIC_TOKEN_TTL_SECS`, default 900).
    pub token_ttl: Duration,
    /// Per-tenant request rate limits in Redis (`MOSAIC_RATE_LIMIT_*`, `MOSAIC_REDIS_*`).
    pub rate_limiter: RateLimiter,
}

impl SuiteConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let (auth, signing_key) = mosaic_tenant::token::from_env().map_err(anyhow::Error::msg)?;
        Ok(Self {
            server: ServerConfig::from_env()?,
            auth,
            signing_key,
            identity_db: DbConfig::from_env("identity").map_err(anyhow::Error::msg)?,
            crm_db: DbConfig::from_env("crm").map_err(anyhow::Error::msg)?,
            token_ttl: Duration::from_secs(mosaic_server::env_parse(
                "MOSAIC_TOKEN_TTL_SECS",
                900u64,
            )?),
            rate_limiter: RateLimiter::from_env().map_err(anyhow::Error::msg)?,
        })
    }
}

/// Serves every service on `listener` until `shutdown` completes, then drains
/// (see `mosaic_server::serve`). `stop` fires when draining starts.
pub async fn run(
    listener: TcpListener,
    config: SuiteConfig,
    stop: Shutdown,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let identity_db = Database::connect_lazy(&config.identity_db, "mosaic-identity")?
        .with_platform_role(mosaic_identity::PLATFORM_ROLE);
    identity_db.register_metrics(&metrics, "identity")?;

    let signing_key = config
        .signing_key
        .clone()
        .context("no token signing key configured")?;
    let identity = IdentityState {
        db: identity_db.clone(),
        signer: TokenSigner::new(&signing_key)?,
        auth: config.auth.clone(),
        default_token_ttl: config.token_ttl,
    };
    let max = config.server.max_message_bytes;
    let crm_db = Database::connect_lazy(&config.crm_db, "mosaic-crm")?;
    crm_db.register_metrics(&metrics, "crm")?;
    let crm = mosaic_crm::CrmState { db: crm_db.clone() };
    let mut routes = tonic::service::Routes::builder();
    mosaic_identity::add_routes(&mut routes, identity, max);
    mosaic_crm::add_routes(&mut routes, crm, max);
    let routes = routes.routes();

    let services: Vec<&str> = [mosaic_identity::SERVICE_NAMES, mosaic_crm::SERVICE_NAMES].concat();
    let probes: Vec<Arc<dyn Probe>> = vec![Arc::new(identity_db.clone()), Arc::new(crm_db.clone())];
    let opts = ServeOptions {
        public_methods: mosaic_identity::PUBLIC_METHODS
            .iter()
            .map(|m| (*m).to_owned())
            .collect(),
        health: Health::new(&services),
        probes,
        stop,
        rate_limiter: config.rate_limiter.clone(),
        ..ServeOptions::new(
            config.server.clone(),
            TokenVerifier::new(config.auth.clone())?,
            metrics,
        )
    };
    let result = mosaic_server::serve(listener, routes, opts, shutdown).await;
    identity_db.close().await;
    crm_db.close().await;
    result
}

/// What one `mosaic purge` removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub tenants: u64,
    pub crm: mosaic_crm::purge::Purged,
    pub identity_requests: u64,
}

/// Tenants listed per page while purging.
const PURGE_PAGE: i64 = 500;

/// Walks every tenant and removes what expired by `now`: crm's soft-deleted
/// companies, contacts and deals past their retention, and both services'
/// old `request_id` claims (see `mosaic_crm::purge`). Connects as the
/// runtime roles, so RLS fences each tenant's purge like any request. Safe to
/// run twice at once (each delete takes only rows still there).
pub async fn purge(
    identity: &DbConfig,
    crm: &DbConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<PurgeReport> {
    let identity_db = Database::connect_lazy(identity, "mosaic-purge")?
        .with_platform_role(mosaic_identity::PLATFORM_ROLE);
    let crm_db = Database::connect_lazy(crm, "mosaic-purge")?;
    let mut report = PurgeReport::default();
    let platform = mosaic_identity::purge::PLATFORM_SCOPE;
    report.identity_requests += mosaic_identity::purge::purge_tenant(&identity_db, platform, now)
        .await
        .map_err(|e| anyhow::anyhow!("purging platform request ids: {e}"))?;
    let mut after = None;
    loop {
        let ids = mosaic_identity::purge::tenant_ids(&identity_db, after, PURGE_PAGE)
            .await
            .map_err(|e| anyhow::anyhow!("listing tenants: {e}"))?;
        for &tenant in &ids {
            report.crm += mosaic_crm::purge::purge_tenant(&crm_db, tenant, now)
                .await
                .map_err(|e| anyhow::anyhow!("purging crm of tenant {tenant}: {e}"))?;
            report.identity_requests +=
                mosaic_identity::purge::purge_tenant(&identity_db, tenant, now)
                    .await
                    .map_err(|e| anyhow::anyhow!("purging identity of tenant {tenant}: {e}"))?;
            report.tenants += 1;
        }
        if ids.len() < PURGE_PAGE as usize {
            break;
        }
        after = ids.last().copied();
    }
    identity_db.close().await;
    crm_db.close().await;
    Ok(report)
}

/// `MOSAIC_ADMIN_DATABASE_URL`: a login that may create roles and databases.
pub fn admin_url() -> String {
    std::env::var("MOSAIC_ADMIN_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://mosaic_admin:mosaic-local@127.0.0.1:5432/postgres".to_owned()
    })
}

/// Creates roles, database and schemas (idempotent), then applies every
/// pending migration. Runtime role names and passwords come from each
/// service's own database URL, so the two always agree.
pub async fn migrate(
    admin_url: &str,
    services: &[(ServiceSchema, DbConfig)],
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut database = None;
    let mut logins = Vec::new();
    for (schema, db) in services {
        let opts: PgConnectOptions = db
            .url
            .parse()
            .with_context(|| format!("{} database url", schema.name))?;
        anyhow::ensure!(
            opts.get_username() == schema.role,
            "the {} database url logs in as {:?}, expected {:?}",
            schema.name,
            opts.get_username(),
            schema.role
        );
        let name = opts.get_database().unwrap_or("mosaic").to_owned();
        anyhow::ensure!(
            database.get_or_insert_with(|| name.clone()) == &name,
            "all services must share one database"
        );
        logins.push(RuntimeLogin {
            schema: *schema,
            password: password_of(&db.url),
        });
    }
    let database = database.unwrap_or_else(|| "mosaic".to_owned());
    let mut conn = mosaic_db::bootstrap::bootstrap(admin_url, &database, &logins)
        .await
        .context("bootstrapping roles and schemas")?;
    let schemas: Vec<ServiceSchema> = services.iter().map(|(s, _)| *s).collect();
    Ok(mosaic_db::migrate::migrate(&mut conn, &schemas).await?)
}

/// The percent-decoded password of a `postgres://user:password@...` URL.
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let raw = userinfo.split_once(':')?.1;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let h = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())?;
                out.push(h);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_from_urls() {
        assert_eq!(
            super::password_of("postgres://u:p%40ss@h/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(super::password_of("postgres://u@h/db"), None);
    }
}
