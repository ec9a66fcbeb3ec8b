//! The dependencies of the card's own: one PostgreSQL (bootstrapped and
//! migrated by the real `mosaic migrate`), one MongoDB-wire server, one
//! Redis for rows that do not break Redis, and the token signer; and the
//! settings a child `mosaic serve` gets to use them.

use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::own_mongo::OwnMongo;
use crate::postgres::Postgres;
use crate::redis_support::{RedisServer, TempDir};
use crate::server::Tokens;

/// Any 32 bytes: the card's database is its own and new.
const MASTER_KEY: &str = "ZmF1bHQtY2FyZC1tYXN0ZXIta2V5LW9mLW1vc2FpYyE=";

pub(crate) const SERVICES: [&str; 4] = ["identity", "crm", "agents", "billing"];

pub(crate) struct Deps {
    pub(crate) pg: std::sync::Mutex<Postgres>,
    pub(crate) mongo: std::sync::Mutex<OwnMongo>,
    pub(crate) redis: RedisServer,
    pub(crate) tokens: Tokens,
    pg_port: u16,
    _redis_dir: TempDir,
}

impl Deps {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let pg = tokio::task::spawn_blocking(Postgres::start).await??;
        let mongo = tokio::task::spawn_blocking(OwnMongo::start).await?;
        let redis_dir = TempDir::new("faults-redis");
        let redis = RedisServer::start(&redis_dir);
        let deps = Self {
            pg_port: pg.port,
            pg: std::sync::Mutex::new(pg),
            mongo: std::sync::Mutex::new(mongo),
            redis,
            tokens: Tokens::new()?,
            _redis_dir: redis_dir,
        };
        deps.migrate().await?;
        Ok(deps)
    }

    pub(crate) fn pg(&self) -> std::sync::MutexGuard<'_, Postgres> {
        self.pg
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `mosaic migrate` against the card's PostgreSQL: roles, database, schemas.
    async fn migrate(&self) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mosaic"));
        command.arg("migrate");
        for (name, _) in std::env::vars() {
            if name.starts_with("MOSAIC_") {
                command.env_remove(name);
            }
        }
        let out = command
            .envs(self.env().iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .await
            .context("run mosaic migrate")?;
        if !out.status.success() {
            bail!(
                "mosaic migrate: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The settings of a child against the card's dependencies: small pools,
    /// quick probes, no rate limit, a short drain; rows add or override.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let url = |role: &str| {
            format!(
                "postgres://{role}:mosaic-local@127.0.0.1:{}/mosaic",
                self.pg_port
            )
        };
        let mongo = self
            .mongo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .url_of("faults");
        let mut env: Vec<(String, String)> = vec![
            ("MOSAIC_LOG".into(), "info".into()),
            ("MOSAIC_JWT_HS256_SECRET".into(), self.tokens.secret.clone()),
            ("MOSAIC_JWT_ISSUER".into(), "mosaic-faults".into()),
            (
                "MOSAIC_ADMIN_DATABASE_URL".into(),
                format!(
                    "postgres://{}:mosaic-local@127.0.0.1:{}/postgres",
                    crate::postgres::ADMIN,
                    self.pg_port
                ),
            ),
            ("MOSAIC_ACCESS_DATABASE_URL".into(), url("mosaic_access")),
            ("MOSAIC_CONVERSATIONS_MONGODB_URL".into(), mongo),
            ("MOSAIC_MONGODB_TIMEOUT_MS".into(), "500".into()),
            ("MOSAIC_REDIS_URL".into(), self.redis.url()),
            ("MOSAIC_VAULT_MASTER_KEY".into(), MASTER_KEY.into()),
            ("MOSAIC_RATE_LIMIT_PER_SECOND".into(), "0".into()),
            ("MOSAIC_VAULT_REVEAL_PER_SECOND".into(), "0".into()),
            ("MOSAIC_PROBE_INTERVAL_MS".into(), "200".into()),
            ("MOSAIC_SHUTDOWN_TIMEOUT_SECS".into(), "5".into()),
            ("MOSAIC_DB_MAX_CONNECTIONS".into(), "8".into()),
            ("MOSAIC_DB_MIN_CONNECTIONS".into(), "1".into()),
            ("MOSAIC_DB_READ_CONNECTIONS".into(), "2".into()),
            ("MOSAIC_DB_ACQUIRE_TIMEOUT_MS".into(), "1000".into()),
            ("MOSAIC_CONVERSATIONS_CHARGE_SWEEP_MS".into(), "200".into()),
            ("MOSAIC_CONVERSATIONS_CHARGE_GRACE_MS".into(), "1000".into()),
        ];
        for service in SERVICES {
            env.push((
                format!("MOSAIC_{}_DATABASE_URL", service.to_uppercase()),
                url(&format!("mosaic_{service}")),
            ));
        }
        env
    }

    /// A superuser connection to the card's database, to look behind the API.
    pub(crate) async fn admin_db(&self) -> anyhow::Result<sqlx::PgConnection> {
        use sqlx::Connection as _;
        let url = self.pg().admin_url("mosaic");
        Ok(sqlx::PgConnection::connect(&url).await?)
    }
}

/// `env` with `name` set to `value` (replacing it).
pub(crate) fn set(env: &mut Vec<(String, String)>, name: &str, value: impl Into<String>) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_owned(), value.into()));
}
