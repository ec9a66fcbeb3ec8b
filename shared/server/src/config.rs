//! Settings from environment variables, with local defaults and errors that
//! name the variable at fault.
//!
//! An empty value counts as unset, so a Kubernetes manifest can blank a
//! variable without inventing a value for it.

use std::env::{self, VarError};
use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// A variable that is set but unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not valid unicode")]
    NotUnicode { name: String },
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    /// `name` holds `value`, which is unusable because of `reason`.
    pub fn invalid(name: &str, value: &str, reason: impl Display) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// How variables are looked up: the process environment, or a map in tests.
type Lookup<'a> = &'a dyn Fn(&str) -> Result<String, VarError>;

/// The value of `name`, or `None` when it is unset or empty.
pub fn env_opt(name: &str) -> Result<Option<String>, ConfigError> {
    opt_in(&|n| env::var(n), name)
}

/// The value of `name`, or `default` when it is unset or empty.
pub fn env_string(name: &str, default: &str) -> Result<String, ConfigError> {
    Ok(env_opt(name)?.unwrap_or_else(|| default.to_owned()))
}

/// `name` parsed as `T`, or `default` when it is unset or empty.
pub fn env_parse<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    parse_in(&|n| env::var(n), name, default)
}

fn opt_in(lookup: Lookup<'_>, name: &str) -> Result<Option<String>, ConfigError> {
    match lookup(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v.trim().to_owned())),
        Err(VarError::NotPresent) => Ok(None),
        Err(VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode {
            name: name.to_owned(),
        }),
    }
}

fn parse_in<T>(lookup: Lookup<'_>, name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match opt_in(lookup, name)? {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|e| ConfigError::invalid(name, &raw, e)),
    }
}

/// Like [`parse_in`], for numbers where zero makes no sense (a zero interval
/// would spin, a zero size limit would reject every message).
fn positive_in<T>(lookup: Lookup<'_>, name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr + Default + PartialEq + Display,
    T::Err: Display,
{
    let n = parse_in(lookup, name, default)?;
    if n == T::default() {
        return Err(ConfigError::invalid(
            name,
            &n.to_string(),
            "must be greater than zero",
        ));
    }
    Ok(n)
}

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
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|n| env::var(n))
    }

    /// Like [`ServerConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let metrics_addr = match opt_in(lookup, METRICS_ADDR)? {
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|e| ConfigError::invalid(METRICS_ADDR, &v, e))?,
            ),
            None => Some(Self::DEFAULT_METRICS_ADDR),
        };
        let log_json = match opt_in(lookup, LOG_FORMAT)?.map(|v| v.to_ascii_lowercase()) {
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
            grpc_addr: parse_in(lookup, GRPC_ADDR, Self::DEFAULT_GRPC_ADDR)?,
            metrics_addr,
            shutdown_timeout: Duration::from_secs(positive_in(lookup, SHUTDOWN_TIMEOUT_SECS, 20)?),
            probe_interval: Duration::from_millis(positive_in(lookup, PROBE_INTERVAL_MS, 2000)?),
            max_message_bytes: positive_in(
                lookup,
                MAX_MESSAGE_BYTES,
                Self::DEFAULT_MAX_MESSAGE_BYTES,
            )?,
            log_filter: opt_in(lookup, LOG)?.unwrap_or_else(|| "info".to_owned()),
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
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ServerConfig::from_lookup(&|n| map.get(n).cloned().ok_or(VarError::NotPresent))
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
    fn process_environment_helpers() {
        let name = "MOSAIC_TEST_SURELY_UNSET_8d1f";
        assert_eq!(env_opt(name), Ok(None));
        assert_eq!(env_string(name, "x").as_deref(), Ok("x"));
        assert_eq!(env_parse(name, 7u32), Ok(7));
    }

    #[test]
    fn test_default_is_loopback_port_zero() {
        let c = ServerConfig::default();
        assert_eq!(c.grpc_addr.port(), 0);
        assert!(c.grpc_addr.ip().is_loopback());
        assert_eq!(c.metrics_addr, None);
    }
}
