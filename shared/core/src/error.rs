//! [`StartupError`]: the one error type of the startup path and the operator
//! commands. Request paths use `mosaic_api::ApiError` instead.
//!
//! It reads as one line, outermost step first, each cause after a colon:
//! `connecting the crm database: pool timed out while waiting for an open
//! connection`. Binaries print it that way and exit non-zero.

use std::fmt::Display;

use crate::env::ConfigError;

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a process could not start or an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is missing or unusable; the message names the variable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A step failed; `step` says which (`binding 0.0.0.0:50051`).
    #[error("{step}: {cause}")]
    Step { step: String, cause: Cause },
    /// A check of our own failed (no underlying error).
    #[error("{0}")]
    Refused(String),
}

impl StartupError {
    /// A failure found by our own checks, e.g. two services naming different databases.
    pub fn refused(why: impl Display) -> Self {
        Self::Refused(why.to_string())
    }
}

/// Names the step a fallible call was part of.
pub trait Context<T> {
    fn context(self, step: impl Display) -> Result<T, StartupError>;
}

impl<T, E> Context<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn context(self, step: impl Display) -> Result<T, StartupError> {
        self.map_err(|e| StartupError::Step {
            step: step.to_string(),
            cause: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_one_line() {
        let io: Result<(), _> = Err(std::io::Error::other("address in use"));
        let e = io.context("binding 127.0.0.1:50051").unwrap_err();
        assert_eq!(e.to_string(), "binding 127.0.0.1:50051: address in use");
        let c: StartupError = ConfigError::invalid("MOSAIC_X", "y", "nope").into();
        assert_eq!(c.to_string(), "MOSAIC_X=\"y\" is invalid: nope");
        assert_eq!(StartupError::refused("no").to_string(), "no");
    }
}
