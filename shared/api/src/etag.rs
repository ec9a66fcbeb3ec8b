//! Etags are the row's revision number, quoted (`"7"`). A client sends back
//! the etag it read; a different revision means someone wrote in between.

use crate::{ApiError, ApiResult};

pub fn format(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// Parses an optional etag: empty means "no precondition".
pub fn parse(field: &str, raw: &str) -> ApiResult<Option<i64>> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .and_then(|s| s.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid_argument(field, "not an etag returned by this service"))
}

/// The error for a stale etag.
pub fn stale(resource: &str) -> ApiError {
    ApiError::aborted(
        "ETAG_MISMATCH",
        format!("the {resource} changed since it was read; read it again and retry"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip() {
        assert_eq!(super::parse("etag", &super::format(42)).unwrap(), Some(42));
        assert_eq!(super::parse("etag", "").unwrap(), None);
        assert!(super::parse("etag", "42").is_err());
        assert!(super::parse("etag", "\"x\"").is_err());
    }
}
