//! Pool settings. Each service connects as its own runtime role.

use std::time::Duration;

/// How one service connects.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `postgres://<runtime role>:<password>@host:port/db`.
    pub url: String,
    pub max_connections: u32,
    pub min_connections: u32,
    /// Connections beside the pool for one-message reads
    /// ([`crate::Database::read_by_ids`]); reads waiting for one share a message.
    pub read_connections: u32,
    /// How long a call waits for a free connection before UNAVAILABLE.
    pub acquire_timeout: Duration,
}

/// The local default URL of a service's runtime role (`mosaic_<service>`).
pub fn default_url(service: &str) -> String {
    format!("postgres://mosaic_{service}:mosaic-local@127.0.0.1:5432/mosaic")
}

impl DbConfig {
    /// From `MOSAIC_<SERVICE>_DATABASE_URL`, `MOSAIC_DB_MAX_CONNECTIONS` (16),
    /// `MOSAIC_DB_MIN_CONNECTIONS` (2), `MOSAIC_DB_READ_CONNECTIONS` (4),
    /// `MOSAIC_DB_ACQUIRE_TIMEOUT_MS` (2000).
    pub fn from_env(service: &str) -> Result<Self, String> {
        let var = format!("MOSAIC_{}_DATABASE_URL", service.to_uppercase());
        let url = std::env::var(&var).unwrap_or_else(|_| default_url(service));
        let num = |name: &str, default: u64| -> Result<u64, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("{name}: expected a whole number, got {v:?}")),
                Err(_) => Ok(default),
            }
        };
        Ok(Self {
            url,
            max_connections: num("MOSAIC_DB_MAX_CONNECTIONS", 16)? as u32,
            min_connections: num("MOSAIC_DB_MIN_CONNECTIONS", 2)? as u32,
            read_connections: num("MOSAIC_DB_READ_CONNECTIONS", 4)?.max(1) as u32,
            acquire_timeout: Duration::from_millis(num("MOSAIC_DB_ACQUIRE_TIMEOUT_MS", 2000)?),
        })
    }

    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            min_connections: 0,
            read_connections: 4,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}
