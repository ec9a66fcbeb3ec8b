//! Pool settings. Each service connects as its own runtime role.

use std::time::Duration;

use mosaic_core::{ConfigError, Env, Secret};

/// `MOSAIC_DB_MAX_CONNECTIONS`: pool size per service (default 16).
pub const MAX_CONNECTIONS: &str = "MOSAIC_DB_MAX_CONNECTIONS";
/// `MOSAIC_DB_MIN_CONNECTIONS`: connections kept open (default 2).
pub const MIN_CONNECTIONS: &str = "MOSAIC_DB_MIN_CONNECTIONS";
/// `MOSAIC_DB_READ_CONNECTIONS`: connections for one-message reads (default 4).
pub const READ_CONNECTIONS: &str = "MOSAIC_DB_READ_CONNECTIONS";
/// `MOSAIC_DB_ACQUIRE_TIMEOUT_MS`: how long a call waits for a connection (default 2000).
pub const ACQUIRE_TIMEOUT_MS: &str = "MOSAIC_DB_ACQUIRE_TIMEOUT_MS";

/// How one service connects.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `postgres://<runtime role>:<password>@host:port/db`; shown without the password.
    pub url: Secret,
    pub max_connections: u32,
    pub min_connections: u32,
    /// Connections beside the pool for one-message reads
    /// ([`crate::Database::read`]); reads waiting for one share a message.
    pub read_connections: u32,
    /// How long a call waits for a free connection before UNAVAILABLE.
    pub acquire_timeout: Duration,
}

/// `MOSAIC_<SERVICE>_DATABASE_URL`, the variable naming a service's login.
pub fn url_variable(service: &str) -> String {
    format!("MOSAIC_{}_DATABASE_URL", service.to_uppercase())
}

/// The local default URL of a service's runtime role (`mosaic_<service>`).
pub fn default_url(service: &str) -> String {
    format!("postgres://mosaic_{service}:mosaic-local@127.0.0.1:5432/mosaic")
}

impl DbConfig {
    /// From `MOSAIC_<SERVICE>_DATABASE_URL` (default: the local runtime role)
    /// and the pool settings above.
    pub fn from_env(env: &Env, service: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            url: env.url(&url_variable(service), &default_url(service))?,
            max_connections: env.positive(MAX_CONNECTIONS, 16)?,
            min_connections: env.parse(MIN_CONNECTIONS, 2)?,
            read_connections: env.positive(READ_CONNECTIONS, 4)?,
            acquire_timeout: env.millis(ACQUIRE_TIMEOUT_MS, 2000)?,
        })
    }

    /// The local defaults with another URL (tests that start their own server).
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: Secret::url(url),
            max_connections: 16,
            min_connections: 0,
            read_connections: 4,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_a_map() {
        let env = Env::from_pairs([
            (
                "MOSAIC_CRM_DATABASE_URL",
                "postgres://mosaic_crm:pw@db/mosaic",
            ),
            (MAX_CONNECTIONS, "8"),
            (MIN_CONNECTIONS, ""),
        ]);
        let config = DbConfig::from_env(&env, "crm").unwrap();
        assert_eq!(config.url.expose(), "postgres://mosaic_crm:pw@db/mosaic");
        assert!(!format!("{config:?}").contains("pw"), "{config:?}");
        assert_eq!((config.max_connections, config.min_connections), (8, 2));
        assert_eq!(config.acquire_timeout, Duration::from_secs(2));
        let defaults = DbConfig::from_env(&Env::from_pairs::<&str, &str>([]), "agents").unwrap();
        assert_eq!(defaults.url.expose(), default_url("agents"));
        let zero = DbConfig::from_env(&Env::from_pairs([(READ_CONNECTIONS, "0")]), "crm");
        assert_eq!(zero.unwrap_err().name(), READ_CONNECTIONS);
    }
}
