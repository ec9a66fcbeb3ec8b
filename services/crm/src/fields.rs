//! Parsers for the CRM's own field kinds (domains, money, dates, tags, ...),
//! next to the shared ones in `mosaic_api::validate`. Each takes the field's
//! name so the error points at it; each is total (never panics).

use chrono::{DateTime, Duration, NaiveDate, Utc};
use mosaic_api::{ApiError, ApiResult, convert, validate};
use prost_types::Timestamp;
use uuid::Uuid;

/// Largest deal value in minor units (10^15: a quadrillion cents), so sums of
/// many deals stay far from the i64 limit.
pub const MAX_VALUE_MINOR: i64 = 1_000_000_000_000_000;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_CHARS: usize = 64;

/// An optional UUID: empty means none.
pub fn optional_id(field: &str, raw: &str) -> ApiResult<Option<Uuid>> {
    if raw.is_empty() {
        Ok(None)
    } else {
        validate::id(field, raw).map(Some)
    }
}

/// Optional trimmed text of at most `max` characters: empty means none.
pub fn optional_text(field: &str, raw: &str, max: usize) -> ApiResult<Option<String>> {
    let s = raw.trim();
    if s.is_empty() {
        Ok(None)
    } else {
        validate::text(field, s, max).map(Some)
    }
}

/// An optional web domain, lowercased; a trailing dot is dropped.
pub fn domain(field: &str, raw: &str) -> ApiResult<Option<String>> {
    let s = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if s.is_empty() {
        return Ok(None);
    }
    let labels: Vec<&str> = s.split('.').collect();
    let ok = s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(Some(s))
    } else {
        Err(ApiError::invalid_argument(
            field,
            "must be a domain name such as example.com",
        ))
    }
}

/// An ISO 4217 alphabetic code: exactly three uppercase ASCII letters. The
/// shape is checked, not membership in the current code list (which changes).
pub fn currency(field: &str, raw: &str) -> ApiResult<String> {
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid_argument(
            field,
            "must be an ISO 4217 code of 3 uppercase letters",
        ))
    }
}

/// Money in minor units, `0..=MAX_VALUE_MINOR`.
pub fn value_minor(field: &str, raw: i64) -> ApiResult<i64> {
    if (0..=MAX_VALUE_MINOR).contains(&raw) {
        Ok(raw)
    } else {
        Err(ApiError::invalid_argument(
            field,
            format!("must be 0..{MAX_VALUE_MINOR}"),
        ))
    }
}

/// A calendar date `YYYY-MM-DD`, years 1900..9999.
pub fn date(field: &str, raw: &str) -> ApiResult<NaiveDate> {
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    let bad = || ApiError::invalid_argument(field, "must be a date YYYY-MM-DD (years 1900..9999)");
    // Exactly ten characters: chrono alone would accept `2024-1-5`.
    if raw.len() != 10 {
        return Err(bad());
    }
    let d = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| bad())?;
    let lo = NaiveDate::from_ymd_opt(1900, 1, 1).ok_or_else(bad)?;
    if d < lo {
        return Err(bad());
    }
    Ok(d)
}

/// An optional date: empty means none.
pub fn optional_date(field: &str, raw: &str) -> ApiResult<Option<NaiveDate>> {
    if raw.is_empty() {
        Ok(None)
    } else {
        date(field, raw).map(Some)
    }
}

/// An integer in `lo..=hi`.
pub fn int_range(field: &str, raw: i32, lo: i32, hi: i32) -> ApiResult<i32> {
    if (lo..=hi).contains(&raw) {
        Ok(raw)
    } else {
        Err(ApiError::invalid_argument(
            field,
            format!("must be {lo}..{hi}"),
        ))
    }
}

/// A lowercase identifier such as a provider or signal type: 1..=max of
/// `a-z 0-9 . _ -`.
pub fn slug(field: &str, raw: &str, max: usize) -> ApiResult<String> {
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    let ok = raw.len() <= max
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid_argument(
            field,
            format!("1..{max} characters of a-z, 0-9, '.', '_', '-'"),
        ))
    }
}

/// An optional content hash: 1..=128 of letters, digits, `:`, `-`, `_`.
pub fn optional_hash(field: &str, raw: &str) -> ApiResult<Option<String>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let ok = raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_".contains(&b));
    if ok {
        Ok(Some(raw.to_owned()))
    } else {
        Err(ApiError::invalid_argument(
            field,
            "1..128 characters of letters, digits, ':', '-', '_'",
        ))
    }
}

/// A phone number: 0..=32 characters of digits, spaces and `+-().x`.
pub fn phone(field: &str, raw: &str) -> ApiResult<String> {
    let s = raw.trim();
    let ok = s.chars().count() <= 32
        && s.chars()
            .all(|c| c.is_ascii_digit() || " +-().x".contains(c));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(ApiError::invalid_argument(
            field,
            "at most 32 characters of digits, spaces and +-().x",
        ))
    }
}

/// Tags: at most [`MAX_TAGS`], each trimmed to 1..=[`MAX_TAG_CHARS`]
/// characters without control characters. Duplicates are dropped, order kept.
/// Every bad tag is named (`contact.tags[2]`).
pub fn tags(field: &str, raw: &[String]) -> ApiResult<Vec<String>> {
    if raw.len() > MAX_TAGS {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    let mut violations = mosaic_api::Violations::new();
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let name = format!("{field}[{i}]");
        if let Some(t) = violations.take(validate::name(&name, t, MAX_TAG_CHARS))
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    violations.finish()?;
    Ok(out)
}

/// A JSON object from a `Struct`, at most `max_bytes` encoded; `None` is `{}`.
pub fn json_object(
    field: &str,
    s: Option<&prost_types::Struct>,
    max_bytes: usize,
) -> ApiResult<serde_json::Value> {
    convert::json_object(field, s, max_bytes)
}

/// A required timestamp in `1970-01-01 ..= now + 1 day` (clock skew allowance).
pub fn event_time(field: &str, t: Option<&Timestamp>) -> ApiResult<DateTime<Utc>> {
    let t = t.ok_or_else(|| ApiError::invalid_argument(field, "required"))?;
    let at = convert::datetime(field, t)?;
    if at < DateTime::UNIX_EPOCH || at > Utc::now() + Duration::days(1) {
        return Err(ApiError::invalid_argument(
            field,
            "must be between 1970-01-01 and one day from now",
        ));
    }
    Ok(at)
}

/// Like [`event_time`], but unset means now.
pub fn event_time_or_now(field: &str, t: Option<&Timestamp>) -> ApiResult<DateTime<Utc>> {
    match t {
        None => Ok(Utc::now()),
        Some(_) => event_time(field, t),
    }
}

/// An optional timestamp bound of a range query.
pub fn optional_time(field: &str, t: Option<&Timestamp>) -> ApiResult<Option<DateTime<Utc>>> {
    t.map(|t| convert::datetime(field, t)).transpose()
}

/// A batch of `1..=max` entries.
pub fn batch_len(field: &str, len: usize, max: usize) -> ApiResult<()> {
    if len == 0 {
        Err(ApiError::invalid_argument(
            field,
            "at least one entry is required",
        ))
    } else if len > max {
        Err(ApiError::invalid_argument(
            field,
            format!("at most {max} entries per call"),
        ))
    } else {
        Ok(())
    }
}

/// The date part of a timestamp column as `YYYY-MM-DD`.
pub fn format_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn domains() {
        assert_eq!(
            domain("d", " Acme.COM. ").unwrap().as_deref(),
            Some("acme.com")
        );
        assert_eq!(domain("d", "").unwrap(), None);
        for bad in [
            "acme",
            "-a.com",
            "a..com",
            "a_b.com",
            "a b.com",
            &"a".repeat(64),
        ] {
            assert!(domain("d", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn money_and_dates() {
        assert!(currency("c", "EUR").is_ok());
        for bad in ["", "eur", "EU", "EURO", "E1R"] {
            assert!(currency("c", bad).is_err(), "{bad:?} accepted");
        }
        assert!(value_minor("v", -1).is_err());
        assert!(value_minor("v", MAX_VALUE_MINOR + 1).is_err());
        assert_eq!(format_date(date("d", "2024-02-29").unwrap()), "2024-02-29");
        for bad in ["2023-02-29", "2024-1-05", "1899-12-31", "2024/01/05", "x"] {
            assert!(date("d", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tags_are_named_and_deduplicated() {
        let t = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            tags("tags", &t(&[" vip ", "vip", "b"])).unwrap(),
            ["vip", "b"]
        );
        let e = tags("c.tags", &t(&["ok", "", "x\u{7}"])).unwrap_err();
        let fields: Vec<_> = e.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["c.tags[1]", "c.tags[2]"]);
        assert!(tags("tags", &t(&["a"; 33])).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}", n in any::<i64>()) {
            let _ = domain("d", &s);
            let _ = currency("c", &s);
            let _ = date("d", &s);
            let _ = slug("s", &s, 64);
            let _ = optional_hash("h", &s);
            let _ = phone("p", &s);
            let _ = value_minor("v", n);
        }
    }
}
