//! The one wiring path: a process serving a list of [`ServiceModule`]s.
//! Each service's own binary runs [`run`] with a list of one; the all-in-one
//! `mosaic` binary and the black-box tests run it with every service. So what
//! production runs is what the tests run: the same settings read by the same
//! code, the same pools, probes, layers and shutdown.
//!
//! - [`run`]: serve on a bound listener until a shutdown future fires, then
//!   drain and close every pool.
//! - [`serve_until_signal`]: what a binary's `serve` does: logging, bind,
//!   [`run`] until SIGTERM or Ctrl-C.
//! - [`migrate`]: bootstrap the roles and schemas of the listed services and
//!   apply their migrations (`mosaic migrate`).

use std::future::Future;
use std::sync::Arc;

use mosaic_cache::{Cache, CacheConfig, RateLimitConfig, RateLimiter, Redis, RedisConfig};
use mosaic_core::{ConfigError, Context as _, Env, Metrics, Probe, StartupError};
use mosaic_db::access::AccessView;
use mosaic_db::bootstrap::RuntimeLogin;
use mosaic_db::{Database, DbConfig, ServiceSchema};
use mosaic_tenant::{TokenSettings, TokenVerifier};
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

use crate::config::ServerConfig;
use crate::health::{Health, HealthGroup};
use crate::module::{Deps, ServiceModule};
use crate::peers::Peers;
use crate::serve::{ServeOptions, serve};
use crate::shutdown::{Shutdown, sigterm_or_ctrl_c};
use crate::telemetry::{TraceConfig, init_telemetry};

/// The access reader's settings: `MOSAIC_ACCESS_DATABASE_URL` (default
/// the local `mosaic_access` login) and the pool settings.
pub const ACCESS_LOGIN: &str = "access";
/// `MOSAIC_ACCESS_POLL_MS`: how often the access log is read (default 1000).
pub const ACCESS_POLL_MS: &str = "MOSAIC_ACCESS_POLL_MS";

/// `MOSAIC_PAGE_TOKEN_KEYS`: comma-separated HMAC keys of page tokens (at
/// least 32 characters each); the first signs, all verify (rotation).
pub const PAGE_TOKEN_KEYS: &str = "MOSAIC_PAGE_TOKEN_KEYS";

/// The page token keys configured, signing key first; empty when unset.
pub fn page_token_keys(env: &Env) -> Result<Vec<Vec<u8>>, ConfigError> {
    let Some(keys) = env.secret(PAGE_TOKEN_KEYS)? else {
        return Ok(Vec::new());
    };
    keys.expose()
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(|key| {
            if key.len() < 32 {
                Err(ConfigError::invalid_secret(
                    PAGE_TOKEN_KEYS,
                    "each key needs at least 32 characters",
                ))
            } else {
                Ok(key.as_bytes().to_vec())
            }
        })
        .collect()
}

/// How long background tasks get to return after draining, before they are dropped.
const TASK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The pool of `module`, logged in as its runtime role, when it has a schema.
/// Lazy: nothing is connected yet.
pub fn connect(module: &dyn ServiceModule, env: &Env) -> Result<Option<Database>, StartupError> {
    let Some(schema) = module.schema() else {
        return Ok(None);
    };
    let config = DbConfig::from_env(env, schema.name)?;
    Database::connect_lazy(&config, &format!("mosaic-{}", module.name()))
        .context(format_args!(
            "the {} database url {}",
            module.name(),
            config.url
        ))
        .map(Some)
}

/// Serves `modules` on `listener` until `shutdown` completes, then drains
/// (see [`serve`]) and closes every pool. `stop` fires when draining starts.
pub async fn run(
    modules: &[&'static dyn ServiceModule],
    env: &Env,
    listener: TcpListener,
    stop: Shutdown,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let config = ServerConfig::from_env(env)?;
    mosaic_api::page::set_max_reply_bytes(config.max_message_bytes);
    let page_keys = page_token_keys(env)?;
    if page_keys.is_empty() {
        tracing::info!(
            "page tokens are signed with a key of this process; set {PAGE_TOKEN_KEYS} to share one between replicas"
        );
    }
    mosaic_api::page::set_keys(page_keys);
    let tokens = TokenSettings::from_env(env)?;
    let verifier = TokenVerifier::new(tokens.verify.clone()).map_err(|e| {
        mosaic_core::ConfigError::invalid_secret(mosaic_tenant::token::PUBLIC_KEY, e)
    })?;
    // One Redis handle (one connection, one breaker) for the limiter and
    // every service's cache.
    let redis = Redis::new(RedisConfig::from_env(env)?)?;
    let cache_config = CacheConfig::from_env(env)?;
    let rate_limiter = RateLimiter::new(RateLimitConfig::from_env(env)?, redis.clone());
    let metrics = Metrics::new();
    redis
        .register_metrics(&metrics)
        .context("registering the redis metrics")?;
    crate::telemetry::register_metrics(&metrics)?;
    let allowed_when_deleted: Vec<String> = modules
        .iter()
        .flat_map(|module| module.allowed_for_deleted_tenants().iter())
        .map(|method| (*method).to_owned())
        .collect();
    let access_config = DbConfig::from_env(env, ACCESS_LOGIN)?;
    let access = Arc::new(
        AccessView::connect_lazy(
            &access_config,
            tokens.verify.max_lifetime,
            allowed_when_deleted,
        )
        .context(format_args!(
            "the access database url {}",
            access_config.url
        ))?,
    );
    let poll = env.millis(ACCESS_POLL_MS, 1000)?;

    let peers = Peers::new(
        env.clone(),
        modules.iter().map(|module| module.name()).collect(),
        listener.local_addr().ok(),
    );
    let mut routes = RoutesBuilder::default();
    let mut groups = Vec::new();
    let mut public = Vec::new();
    let mut pools = Vec::new();
    let mut tasks = Vec::new();
    let mut checks = Vec::new();
    for module in modules {
        let db = connect(*module, env)?;
        let mut probes: Vec<Arc<dyn Probe>> = Vec::new();
        if let Some(db) = &db {
            db.register_metrics(&metrics, module.name())
                .context(format_args!(
                    "registering the {} pool metrics",
                    module.name()
                ))?;
            probes.push(Arc::new(db.clone()));
            pools.push(db.clone());
        }
        let deps = Deps {
            env: env.clone(),
            db,
            metrics: metrics.clone(),
            cache: Cache::new(module.name(), cache_config.clone(), redis.clone()),
            redis: redis.clone(),
            tokens: tokens.clone(),
            access: access.clone(),
            stop: stop.clone(),
            peers: peers.clone(),
            max_message_bytes: config.max_message_bytes,
        };
        let service = module.build(&deps)?;
        let parts = service.into_parts();
        for add in parts.routes {
            add(&mut routes);
        }
        probes.extend(parts.probes);
        groups.push(HealthGroup::new(&parts.names, probes));
        tasks.extend(parts.tasks);
        checks.extend(parts.checks);
        public.extend(module.public_methods().iter().map(|m| (*m).to_owned()));
    }

    for (name, check) in checks {
        tracing::debug!(check = name, "startup check");
        if let Err(e) = check.await {
            for pool in pools {
                pool.close().await;
            }
            access.close().await;
            return Err(e);
        }
    }
    tasks.push((
        "access log",
        Box::pin(access.clone().run(poll, stop.cancelled())),
    ));
    let running: Vec<_> = tasks
        .into_iter()
        .map(|(name, task)| (name, tokio::spawn(task)))
        .collect();
    let opts = ServeOptions {
        public_methods: public,
        health: Health::new(groups),
        stop: stop.clone(),
        rate_limiter,
        access: Some(access.clone()),
        ..ServeOptions::new(config, verifier, metrics)
    };
    let result = serve(listener, routes.routes(), opts, shutdown).await;
    // Draining has fired `stop`; give the tasks a moment to finish their round.
    stop.trigger();
    for (name, task) in running {
        let abort = task.abort_handle();
        if tokio::time::timeout(TASK_GRACE, task).await.is_err() {
            tracing::warn!(task = name, "background task did not stop in time; dropped");
            abort.abort();
        }
    }
    for pool in pools {
        pool.close().await;
    }
    access.close().await;
    result
}

/// What a binary's `serve` does: logging as configured, bind the gRPC
/// address, [`run`] until SIGTERM (Kubernetes sends it) or Ctrl-C.
pub async fn serve_until_signal(
    modules: &[&'static dyn ServiceModule],
    env: &Env,
) -> Result<(), StartupError> {
    let config = ServerConfig::from_env(env)?;
    let default_service = match modules {
        [module] => format!("mosaic-{}", module.name()),
        _ => "mosaic".to_owned(),
    };
    let traces = TraceConfig::from_env(env, &default_service)?;
    let telemetry = init_telemetry(&config.log_filter, config.log_json, traces.as_ref())?;
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .context(format_args!("binding {}", config.grpc_addr))?;
    let result = run(modules, env, listener, Shutdown::new(), sigterm_or_ctrl_c()).await;
    // The spans of the last calls, before the process exits.
    telemetry.shutdown().await;
    result
}

/// `MOSAIC_ADMIN_DATABASE_URL`: a login that may create roles and databases.
pub const ADMIN_DATABASE_URL: &str = "MOSAIC_ADMIN_DATABASE_URL";
const DEFAULT_ADMIN_URL: &str = "postgres://mosaic_admin:mosaic-local@127.0.0.1:5432/postgres";

/// Creates the roles, database and schemas of `modules` (idempotent), then
/// applies every pending migration; returns `(schema, version)` of each
/// migration applied now. Each runtime role's name and password come from
/// its service's own database URL, so the two always agree.
pub async fn migrate(
    modules: &[&'static dyn ServiceModule],
    env: &Env,
) -> Result<Vec<(String, i64)>, StartupError> {
    let admin = env.url(ADMIN_DATABASE_URL, DEFAULT_ADMIN_URL)?;
    let mut database = None;
    let mut logins = Vec::new();
    let mut schemas: Vec<ServiceSchema> = Vec::new();
    for module in modules {
        let Some(schema) = module.schema() else {
            continue;
        };
        let config = DbConfig::from_env(env, schema.name)?;
        let opts: PgConnectOptions = config.url.expose().parse().context(format_args!(
            "the {} database url {}",
            schema.name, config.url
        ))?;
        if opts.get_username() != schema.role {
            return Err(StartupError::refused(format_args!(
                "the {} database url logs in as {:?}, expected {:?}",
                schema.name,
                opts.get_username(),
                schema.role
            )));
        }
        let name = opts.get_database().unwrap_or("mosaic").to_owned();
        if database.get_or_insert_with(|| name.clone()) != &name {
            return Err(StartupError::refused(
                "all services must share one database",
            ));
        }
        logins.push(RuntimeLogin {
            schema,
            password: password_of(config.url.expose()),
        });
        schemas.push(schema);
    }
    let database = database.unwrap_or_else(|| "mosaic".to_owned());
    let access = DbConfig::from_env(env, ACCESS_LOGIN)?;
    let access_password = password_of(access.url.expose());
    let mut conn = mosaic_db::bootstrap::bootstrap(
        admin.expose(),
        &database,
        &logins,
        access_password.as_deref(),
    )
    .await
    .context(format_args!("bootstrapping roles and schemas as {admin}"))?;
    mosaic_db::migrate::migrate(&mut conn, &schemas)
        .await
        .context("migrating")
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
    use super::*;

    #[test]
    fn page_token_keys_from_settings() {
        let keys = |value: &str| page_token_keys(&Env::from_pairs([(PAGE_TOKEN_KEYS, value)]));
        assert_eq!(keys("").unwrap(), Vec::<Vec<u8>>::new());
        let two = keys(&format!("{}, {}", "a".repeat(32), "b".repeat(40))).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0], "a".repeat(32).into_bytes());
        let short = keys("short").unwrap_err();
        assert_eq!(short.name(), PAGE_TOKEN_KEYS);
        assert!(
            !short.to_string().contains("short"),
            "a secret is never echoed"
        );
    }

    #[test]
    fn passwords_from_urls() {
        assert_eq!(
            super::password_of("postgres://u:p%40ss@h/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(super::password_of("postgres://u@h/db"), None);
    }
}
