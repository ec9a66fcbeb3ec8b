//! Structured logs: one JSON object per line (or text for local reading).
//!
//! Every line written inside a call carries the `rpc` span that
//! `mosaic_tenant::AuthLayer` opens, under `"span"`: its `method`,
//! `request_id` and `tenant`. Event fields are flattened to the top level.

use mosaic_core::ConfigError;
use tracing_subscriber::EnvFilter;

use crate::config::LOG;

/// Installs the global subscriber. `filter` is a `tracing` directive list
/// such as `info,mosaic_crm=debug`.
///
/// Calling it again (tests do, once per case) is harmless: the first
/// subscriber stays. Only an invalid filter is an error.
pub fn init_logging(filter: &str, json: bool) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| ConfigError::invalid(LOG, filter, e))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    // `try_init` fails only when a global subscriber is already set.
    let _already_set = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_idempotent_and_rejects_bad_filters() {
        // "off": the subscriber is global to the test binary, and its lines
        // would bypass the test harness's output capture.
        assert!(init_logging("off", true).is_ok());
        assert!(init_logging("debug", false).is_ok());
        assert!(init_logging("info,[", true).is_err());
    }
}
