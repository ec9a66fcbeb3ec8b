//! [`ServerConfig`]: what every service process needs to serve, whatever its
//! domain, from `MOSAIC_*` settings with local defaults (read through
//! [`mosaic_core::Env`], like every other setting).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use mosaic_core::{ConfigError, Env};

/// `MOSAIC_GRPC_ADDR`
pub const GRPC_ADDR: &str = "MOSAIC_GRPC_ADDR";
/// `MOSAIC_METRICS_ADDR`; `off` disables the metrics endpoint.
pub const METRICS_ADDR: &str = "MOSAIC_METRICS_ADDR";
/// `MOSAIC_SHUTDOWN_TIMEOUT_SECS`
pub const SHUTDOWN_TIMEOUT_SECS: &str = "MOSAIC_SHUTDOWN_TIMEOUT_SECS";
/// `MOSAIC_PROBE_INTERVAL_MS`
pub const PROBE_INTERVAL_MS: &str = "MOSAIC_PROBE_INTERVAL_MS";
/// `MOSAIC_MAX_MESSAGE_BYTES`
pub const MAX_MESSAGE_BYTES: &str = "MOSAIC_MAX_MESSAGE_BYTES";
/// `MOSAIC_LOG`: a `tracing` filter such as `info,mosaic_crm=debug`.
pub const LOG: &str = "MOSAIC_LOG";
/// `MOSAIC_LOG_FORMAT`: `json` or `text`.
pub const LOG_FORMAT: &str = "MOSAIC_LOG_FORMAT";

/// What every service process needs to serve, whatever its domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where gRPC is served.
    pub grpc_addr: SocketAddr,
    /// Where `GET /metrics` is served; `None` turns the endpoint off.
    pub metrics_addr: Option<SocketAddr>,
    /// The hard drain deadline after the shutdown signal. Keep it below the
    /// pod's `terminationGracePeriodSeconds`.
    pub shutdown_timeout: Duration,
    /// How often health probes run.
    pub probe_interval: Duration,
    /// The largest message a service decodes or encodes. Services pass it to
    /// `max_decoding_message_size` / `max_encoding_message_size` of their
    /// generated servers; a larger request is answered OUT_OF_RANGE.
    pub max_message_bytes: usize,
    /// The `tracing` filter.
    pub log_filter: String,
    /// JSON lines (`true`) or human-readable text.
    pub log_json: bool,
}

impl ServerConfig {
    pub const DEFAULT_GRPC_ADDR: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);
    pub const DEFAULT_METRICS_ADDR: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

    /// Reads the `MOSAIC_*` variables above, with local defaults.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let metrics_addr = match env.get(METRICS_ADDR)? {
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|e| ConfigError::invalid(METRICS_ADDR, &v, e))?,
            ),
            None => Some(Self::DEFAULT_METRICS_ADDR),
        };
        let log_json = match env.get(LOG_FORMAT)?.map(|v| v.to_ascii_lowercase()) {
            None => true,
            Some(v) if v == "json" => true,
            Some(v) if v == "text" => false,
            Some(v) => {
                return Err(ConfigError::invalid(
                    LOG_FORMAT,
                    &v,
                    "expected json or text",
                ));
            }
        };
        Ok(Self {
            grpc_addr: env.parse(GRPC_ADDR, Self::DEFAULT_GRPC_ADDR)?,
            metrics_addr,
            shutdown_timeout: env.positive_secs(SHUTDOWN_TIMEOUT_SECS, 20)?,
            probe_interval: Duration::from_millis(env.positive(PROBE_INTERVAL_MS, 2000)?),
            max_message_bytes: env.positive(MAX_MESSAGE_BYTES, Self::DEFAULT_MAX_MESSAGE_BYTES)?,
            log_filter: env.string(LOG, "info")?,
            log_json,
        })
    }
}

/// For tests: loopback, port 0 (the caller binds), metrics off, a short
/// drain and probe interval.
impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            metrics_addr: None,
            shutdown_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_millis(200),
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            log_filter: "info".to_owned(),
            log_json: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        ServerConfig::from_env(&Env::from_pairs(vars.iter().copied()))
    }

    #[test]
    fn unset_variables_take_local_defaults() {
        let c = from(&[]).expect("defaults");
        assert_eq!(c.grpc_addr, "127.0.0.1:50051".parse().expect("addr"));
        assert_eq!(
            c.metrics_addr,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        assert_eq!(c.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(c.probe_interval, Duration::from_millis(2000));
        assert_eq!(c.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(c.log_filter, "info");
        assert!(c.log_json);
    }

    #[test]
    fn set_variables_are_read() {
        let c = from(&[
            (GRPC_ADDR, "0.0.0.0:7000"),
            (METRICS_ADDR, "OFF"),
            (SHUTDOWN_TIMEOUT_SECS, "5"),
            (PROBE_INTERVAL_MS, " 250 "),
            (MAX_MESSAGE_BYTES, "1024"),
            (LOG, "debug,hyper=warn"),
            (LOG_FORMAT, "text"),
        ])
        .expect("config");
        assert_eq!(c.grpc_addr.port(), 7000);
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.probe_interval, Duration::from_millis(250));
        assert_eq!(c.max_message_bytes, 1024);
        assert_eq!(c.log_filter, "debug,hyper=warn");
        assert!(!c.log_json);
    }

    #[test]
    fn empty_counts_as_unset() {
        let c = from(&[(GRPC_ADDR, ""), (LOG_FORMAT, " ")]).expect("config");
        assert_eq!(c.grpc_addr, ServerConfig::DEFAULT_GRPC_ADDR);
        assert!(c.log_json);
    }

    #[test]
    fn errors_name_the_variable() {
        for (name, value) in [
            (GRPC_ADDR, "localhost"),
            (METRICS_ADDR, "nope"),
            (SHUTDOWN_TIMEOUT_SECS, "-1"),
            (PROBE_INTERVAL_MS, "0"),
            (MAX_MESSAGE_BYTES, "4MiB"),
            (LOG_FORMAT, "xml"),
        ] {
            let e = from(&[(name, value)]).expect_err(name);
            assert!(e.to_string().starts_with(name), "{e}");
        }
    }

    #[test]
    fn test_default_is_loopback_port_zero() {
        let c = ServerConfig::default();
        assert_eq!(c.grpc_addr.port(), 0);
        assert!(c.grpc_addr.ip().is_loopback());
        assert_eq!(c.metrics_addr, None);
    }
}
