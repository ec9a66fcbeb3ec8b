//! [`Env`]: the one reader of `MOSAIC_*` settings, with local defaults and
//! errors that name the variable at fault.
//!
//! Every setting of every crate goes through it, so every setting behaves the
//! same: surrounding white space is ignored, and an empty value counts as
//! unset (a Kubernetes manifest can blank a variable without inventing a
//! value). Tests build an `Env` from a map ([`Env::from_pairs`]); the
//! binaries read the process environment ([`Env::process`]), with the
//! command-line flags laid over it ([`Env::with`]).

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// A variable that is set but unusable, or missing where it is required.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not valid unicode")]
    NotUnicode { name: String },
    /// `value` is `None` for secrets, which are never echoed.
    #[error("{name}{} is invalid: {reason}", value.as_ref().map(|v| format!("={v:?}")).unwrap_or_default())]
    Invalid {
        name: String,
        value: Option<String>,
        reason: String,
    },
    #[error("{name} is required: {why}")]
    Missing { name: String, why: String },
}

impl ConfigError {
    /// `name` holds `value`, which is unusable because of `reason`.
    pub fn invalid(name: &str, value: &str, reason: impl Display) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            value: Some(value.to_owned()),
            reason: reason.to_string(),
        }
    }

    /// Like [`ConfigError::invalid`] without repeating the value (a secret).
    pub fn invalid_secret(name: &str, reason: impl Display) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            value: None,
            reason: reason.to_string(),
        }
    }

    /// `name` is unset but needed, because of `why`.
    pub fn missing(name: &str, why: impl Display) -> Self {
        Self::Missing {
            name: name.to_owned(),
            why: why.to_string(),
        }
    }

    /// The variable at fault.
    pub fn name(&self) -> &str {
        match self {
            Self::NotUnicode { name } | Self::Invalid { name, .. } | Self::Missing { name, .. } => {
                name
            }
        }
    }
}

#[derive(Clone)]
enum Source {
    Process,
    Map(Arc<HashMap<String, String>>),
}

/// Where settings come from. Cheap to clone.
#[derive(Clone)]
pub struct Env {
    source: Source,
    /// Laid over the source: command-line flags, test settings.
    overrides: Arc<HashMap<String, String>>,
}

impl fmt::Debug for Env {
    // Values may be secrets: show only where they come from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.overrides.keys().collect();
        names.sort();
        f.debug_struct("Env")
            .field(
                "source",
                &match self.source {
                    Source::Process => "process",
                    Source::Map(_) => "map",
                },
            )
            .field("overridden", &names)
            .finish()
    }
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Self {
            source: Source::Process,
            overrides: Arc::default(),
        }
    }

    /// Only these variables (tests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            source: Source::Map(Arc::new(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            )),
            overrides: Arc::default(),
        }
    }

    /// The same settings with `name` set to `value` (a flag given on the
    /// command line wins over the variable).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.overrides).insert(name.to_owned(), value.into());
        self
    }

    /// The trimmed value of `name`, or `None` when it is unset or empty.
    pub fn get(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let raw = match self.overrides.get(name) {
            Some(v) => Some(v.clone()),
            None => match &self.source {
                Source::Map(map) => map.get(name).cloned(),
                Source::Process => match std::env::var(name) {
                    Ok(v) => Some(v),
                    Err(std::env::VarError::NotPresent) => None,
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err(ConfigError::NotUnicode {
                            name: name.to_owned(),
                        });
                    }
                },
            },
        };
        Ok(raw.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()))
    }

    /// The value of `name`, or `default`.
    pub fn string(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        Ok(self.get(name)?.unwrap_or_else(|| default.to_owned()))
    }

    /// `name` parsed as `T`, or `None` when unset.
    pub fn parse_opt<T>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(name)?
            .map(|raw| raw.parse().map_err(|e| ConfigError::invalid(name, &raw, e)))
            .transpose()
    }

    /// `name` parsed as `T`, or `default` when unset.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse_opt(name)?.unwrap_or(default))
    }

    /// Like [`Env::parse`], for numbers where zero makes no sense (a zero
    /// interval would spin, a zero size limit would refuse every message).
    pub fn positive<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + Default + PartialEq + Display,
        T::Err: Display,
    {
        let n = self.parse(name, default)?;
        if n == T::default() {
            return Err(ConfigError::invalid(
                name,
                &n.to_string(),
                "must be greater than zero",
            ));
        }
        Ok(n)
    }

    /// A duration given in milliseconds.
    pub fn millis(&self, name: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        self.parse(name, default_ms).map(Duration::from_millis)
    }

    /// A duration given in whole seconds, greater than zero.
    pub fn positive_secs(&self, name: &str, default_secs: u64) -> Result<Duration, ConfigError> {
        self.positive(name, default_secs).map(Duration::from_secs)
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), or `default`.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name)?.map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::invalid(name, &v, "expected true or false")),
            },
        }
    }

    /// A secret (a key, a password): never echoed in errors or `Debug`.
    pub fn secret(&self, name: &str) -> Result<Option<Secret>, ConfigError> {
        Ok(self.get(name)?.map(Secret::opaque))
    }

    /// A URL that may hold a password, or `default`: its `Debug` and
    /// `Display` mask the password.
    pub fn url(&self, name: &str, default: &str) -> Result<Secret, ConfigError> {
        Ok(Secret::url(self.string(name, default)?))
    }
}

/// A value that must not reach a log line: `Debug` and `Display` show it
/// redacted. A URL keeps its scheme, user, host and path and loses its
/// password (`postgres://mosaic_crm:***@db:5432/mosaic`); anything else
/// shows as `***`. [`Secret::expose`] hands out the real value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    url: bool,
}

impl Secret {
    pub fn opaque(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            url: false,
        }
    }

    pub fn url(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            url: true,
        }
    }

    /// The real value, for the one place that needs it (a connect call).
    pub fn expose(&self) -> &str {
        &self.value
    }

    fn redacted(&self) -> String {
        if !self.url {
            return "***".to_owned();
        }
        let Some((scheme, rest)) = self.value.split_once("://") else {
            return "***".to_owned();
        };
        // The authority ends at the first '/', '?' or '#'; its userinfo at the last '@'.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                let masked = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    user.to_owned()
                };
                format!("{scheme}://{masked}@{host}{tail}")
            }
            None => format!("{scheme}://{authority}{tail}"),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_blank_count_as_unset_and_values_are_trimmed() {
        let env = Env::from_pairs([("A", ""), ("B", "  "), ("C", " 7 ")]);
        assert_eq!(env.get("A"), Ok(None));
        assert_eq!(env.get("B"), Ok(None));
        assert_eq!(env.get("Z"), Ok(None));
        assert_eq!(env.parse("C", 1u32), Ok(7));
        assert_eq!(env.string("A", "dflt").as_deref(), Ok("dflt"));
    }

    #[test]
    fn overrides_win_over_the_source() {
        let env = Env::from_pairs([("A", "1")]).with("A", "2").with("B", "3");
        assert_eq!(env.parse("A", 0u8), Ok(2));
        assert_eq!(env.parse("B", 0u8), Ok(3));
        assert!(!format!("{env:?}").contains('3'), "values are not shown");
    }

    #[test]
    fn errors_name_the_variable_and_hide_secrets() {
        let env = Env::from_pairs([("N", "x"), ("Z", "0"), ("F", "maybe")]);
        let e = env.parse::<u32>("N", 1).unwrap_err();
        assert_eq!(e.name(), "N");
        assert!(e.to_string().starts_with("N=\"x\" is invalid"), "{e}");
        assert!(
            env.positive("Z", 5u32)
                .unwrap_err()
                .to_string()
                .contains("greater than zero")
        );
        assert!(env.flag("F", false).is_err());
        let secret = ConfigError::invalid_secret("MOSAIC_KEY", "too short");
        assert_eq!(secret.to_string(), "MOSAIC_KEY is invalid: too short");
        assert_eq!(
            ConfigError::missing("MOSAIC_KEY", "identity signs tokens").to_string(),
            "MOSAIC_KEY is required: identity signs tokens"
        );
    }

    #[test]
    fn flags_and_durations() {
        let env = Env::from_pairs([("T", "Yes"), ("F", "off"), ("MS", "250"), ("S", "3")]);
        assert_eq!(env.flag("T", false), Ok(true));
        assert_eq!(env.flag("F", true), Ok(false));
        assert_eq!(env.flag("U", true), Ok(true));
        assert_eq!(env.millis("MS", 1), Ok(Duration::from_millis(250)));
        assert_eq!(env.positive_secs("S", 1), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn urls_lose_their_password_in_debug_and_display() {
        let env = Env::from_pairs([("U", "postgres://mosaic_crm:s3cr%40t@db:5432/mosaic?x=1")]);
        let url = env.url("U", "").unwrap();
        assert_eq!(
            url.expose(),
            "postgres://mosaic_crm:s3cr%40t@db:5432/mosaic?x=1"
        );
        assert_eq!(
            url.to_string(),
            "postgres://mosaic_crm:***@db:5432/mosaic?x=1"
        );
        assert!(!format!("{url:?}").contains("s3cr"));
        assert_eq!(
            Secret::url("redis://:pw@r:6379/0").to_string(),
            "redis://:***@r:6379/0"
        );
        assert_eq!(Secret::url("redis://r:6379").to_string(), "redis://r:6379");
        assert_eq!(Secret::url("not a url").to_string(), "***");
        assert_eq!(Secret::opaque("k").to_string(), "***");
    }

    #[test]
    fn the_process_environment_is_read() {
        let env = Env::process();
        assert_eq!(env.get("MOSAIC_TEST_SURELY_UNSET_8d1f"), Ok(None));
        assert!(env.get("PATH").unwrap().is_some());
    }
}
