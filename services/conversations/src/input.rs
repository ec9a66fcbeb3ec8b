//! Conversations' request values that the shared parsers do not cover.

use chrono::{DateTime, Utc};
use mosaic_api::{ApiError, ApiResult, parse};
use prost_types::{Struct, Timestamp};

/// A JSON object from a request (see `parse::json_object`), kept as its
/// text: MongoDB never needs to look inside it, and a text value holds any
/// key (MongoDB field names may not start with `$`).
pub fn json_text(field: &str, value: Option<&Struct>, max_bytes: usize) -> ApiResult<String> {
    let json = parse::json_object(field, value, max_bytes)?;
    serde_json::to_string(&json).map_err(ApiError::internal)
}

/// An enum filter: the zero value means no filter.
pub fn optional_enum<E: TryFrom<i32>>(field: &str, raw: i32) -> ApiResult<Option<E>> {
    if raw == 0 {
        Ok(None)
    } else {
        parse::enum_value(field, raw).map(Some)
    }
}

/// A required timestamp.
pub fn required_time(field: &str, t: Option<&Timestamp>) -> ApiResult<DateTime<Utc>> {
    let t = t.ok_or_else(|| ApiError::invalid_argument(field, "required"))?;
    parse::datetime(field, t)
}

/// An identifier made of `A-Z a-z 0-9` and `extra`, 1..=`max` characters.
pub fn token(field: &str, raw: &str, max: usize, extra: &str) -> ApiResult<String> {
    let ok = !raw.is_empty()
        && raw.len() <= max
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if !ok {
        return Err(ApiError::invalid_argument(
            field,
            format!("1..{max} characters of A-Z, a-z, 0-9 and {extra:?}"),
        ));
    }
    Ok(raw.to_owned())
}

/// A count in `0..=max`.
pub fn count(field: &str, raw: i64, max: i64) -> ApiResult<i64> {
    parse::int_range(field, raw, 0, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bounded_and_plain() {
        assert_eq!(
            token("f", "msg-1.a:b_c", 128, ".:_-").unwrap(),
            "msg-1.a:b_c"
        );
        for bad in ["", "has space", "é", &"x".repeat(129)] {
            let e = token("f", bad, 128, ".:_-").unwrap_err();
            assert_eq!(e.violations()[0].field, "f", "{bad:?}");
        }
    }

    #[test]
    fn enum_filters_are_optional() {
        use mosaic_proto::conversations::Channel;
        assert_eq!(optional_enum::<Channel>("channel", 0).unwrap(), None);
        assert_eq!(
            optional_enum::<Channel>("channel", 2).unwrap(),
            Some(Channel::Voice)
        );
        assert!(optional_enum::<Channel>("channel", 99).is_err());
    }
}
