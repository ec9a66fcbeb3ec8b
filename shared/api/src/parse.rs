//! Parsers from raw request fields to checked values: the one place request
//! input is checked. Each takes the field's name, so the error points at it
//! (`deal.currency_code`), and each is total: any input gives a value or an
//! INVALID_ARGUMENT, never a panic.
//!
//! - ids: [`id`], [`optional_id`], [`request_id`];
//! - text: [`name`], [`text`], [`optional_text`], [`email`], [`domain`],
//!   [`phone`], [`slug`], [`optional_hash`], [`tags`];
//! - numbers and money: [`int_range`], [`money_minor`], [`currency`];
//! - time: [`datetime`], [`optional_time`], [`event_time`],
//!   [`event_time_or_now`], [`date`], [`optional_date`];
//! - structure: [`json_object`] (a `google.protobuf.Struct`), [`enum_value`],
//!   [`enum_or`], [`page_size`], [`batch_len`].

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use prost_types::{Struct, Timestamp, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};
use uuid::Uuid;

use crate::{ApiError, ApiResult, Violations};

/// Default and maximum `page_size` (AIP-158).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Largest amount of money in minor units (10^15: a quadrillion cents), so
/// sums of many amounts stay far from the i64 limit.
pub const MAX_MONEY_MINOR: i64 = 1_000_000_000_000_000;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_CHARS: usize = 64;
/// Deepest nesting of a `Struct` field (objects and lists).
pub const MAX_JSON_DEPTH: usize = 32;

// --- ids -------------------------------------------------------------------

/// An id made by the service (`tenant_id`, `deal_id`, ...), as a `Uuid` or
/// one of the id newtypes. Empty is an error.
pub fn id<T: From<Uuid>>(field: &str, raw: &str) -> ApiResult<T> {
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    // Only the canonical hyphenated form: ids are compared as strings by clients.
    if raw.len() != 36 {
        return Err(ApiError::invalid_argument(field, "must be a UUID"));
    }
    Uuid::parse_str(raw)
        .map(T::from)
        .map_err(|_| ApiError::invalid_argument(field, "must be a UUID"))
}

/// An optional id: empty means none.
pub fn optional_id<T: From<Uuid>>(field: &str, raw: &str) -> ApiResult<Option<T>> {
    if raw.is_empty() {
        Ok(None)
    } else {
        id(field, raw).map(Some)
    }
}

/// An optional client `request_id` (AIP-155): empty means none.
pub fn request_id(field: &str, raw: &str) -> ApiResult<Option<Uuid>> {
    optional_id(field, raw)
}

// --- text ------------------------------------------------------------------

/// A display name: trimmed, 1..=max characters, no control characters.
pub fn name(field: &str, raw: &str, max: usize) -> ApiResult<String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    text(field, s, max)
}

/// Free text: 0..=max characters, no control characters but newline and tab.
pub fn text(field: &str, raw: &str, max: usize) -> ApiResult<String> {
    if raw.chars().count() > max {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {max} characters"),
        ));
    }
    if raw
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::invalid_argument(
            field,
            "must not contain control characters",
        ));
    }
    Ok(raw.to_owned())
}

/// Optional trimmed text of at most `max` characters: empty means none.
pub fn optional_text(field: &str, raw: &str, max: usize) -> ApiResult<Option<String>> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        Ok(None)
    } else {
        text(field, trimmed, max).map(Some)
    }
}

/// An email address, lowercased. Deliberately simple: one `@`, a non-empty
/// local part, a dotted domain of letters, digits and hyphens, at most 254
/// characters. Deliverability is not our business; shape is.
pub fn email(field: &str, raw: &str) -> ApiResult<String> {
    let address = raw.trim().to_lowercase();
    let bad = |why: &str| Err(ApiError::invalid_argument(field, why.to_owned()));
    if address.is_empty() {
        return bad("required");
    }
    if address.len() > 254 {
        return bad("at most 254 characters");
    }
    let Some((local, domain)) = address.split_once('@') else {
        return bad("must be an email address");
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    if local_ok && domain_shape(domain) {
        Ok(address)
    } else {
        bad("must be an email address")
    }
}

/// Two or more dot-separated labels of 1..=63 letters, digits and inner hyphens.
fn domain_shape(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An optional web domain, lowercased; a trailing dot is dropped.
pub fn domain(field: &str, raw: &str) -> ApiResult<Option<String>> {
    let domain = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Ok(None);
    }
    if domain_shape(&domain) {
        Ok(Some(domain))
    } else {
        Err(ApiError::invalid_argument(
            field,
            "must be a domain name such as example.com",
        ))
    }
}

/// A phone number: 0..=32 characters of digits, spaces and `+-().x`.
pub fn phone(field: &str, raw: &str) -> ApiResult<String> {
    let phone = raw.trim();
    let ok = phone.chars().count() <= 32
        && phone
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().x".contains(c));
    if ok {
        Ok(phone.to_owned())
    } else {
        Err(ApiError::invalid_argument(
            field,
            "at most 32 characters of digits, spaces and +-().x",
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
    let mut violations = Violations::new();
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (index, tag) in raw.iter().enumerate() {
        let at = format!("{field}[{index}]");
        if let Some(tag) = violations.take(name(&at, tag, MAX_TAG_CHARS))
            && !out.contains(&tag)
        {
            out.push(tag);
        }
    }
    violations.finish()?;
    Ok(out)
}

// --- numbers and money -------------------------------------------------------

/// An integer in `lo..=hi`.
pub fn int_range<T>(field: &str, raw: T, lo: T, hi: T) -> ApiResult<T>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if raw >= lo && raw <= hi {
        Ok(raw)
    } else {
        Err(ApiError::invalid_argument(
            field,
            format!("must be {lo}..{hi}"),
        ))
    }
}

/// Money in minor units, `0..=MAX_MONEY_MINOR`.
pub fn money_minor(field: &str, raw: i64) -> ApiResult<i64> {
    int_range(field, raw, 0, MAX_MONEY_MINOR)
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

// --- time --------------------------------------------------------------------

/// Timestamp seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the
/// range of `google.protobuf.Timestamp` (and well inside PostgreSQL's).
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// A request timestamp, checked to be a real instant in years 1..=9999.
pub fn datetime(field: &str, t: &Timestamp) -> ApiResult<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ApiError::invalid_argument(field, "nanos out of range"));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        return Err(ApiError::invalid_argument(
            field,
            "must be between years 1 and 9999",
        ));
    }
    Utc.timestamp_opt(t.seconds, t.nanos as u32)
        .single()
        .ok_or_else(|| ApiError::invalid_argument(field, "not a valid time"))
}

/// An optional timestamp, e.g. a bound of a range query.
pub fn optional_time(field: &str, t: Option<&Timestamp>) -> ApiResult<Option<DateTime<Utc>>> {
    t.map(|t| datetime(field, t)).transpose()
}

/// A required timestamp in `1970-01-01 ..= now + 1 day` (clock skew allowance).
pub fn event_time(field: &str, t: Option<&Timestamp>) -> ApiResult<DateTime<Utc>> {
    let t = t.ok_or_else(|| ApiError::invalid_argument(field, "required"))?;
    let at = datetime(field, t)?;
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
    let day = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| bad())?;
    let first = NaiveDate::from_ymd_opt(1900, 1, 1).ok_or_else(bad)?;
    if day < first {
        return Err(bad());
    }
    Ok(day)
}

/// An optional date: empty means none.
pub fn optional_date(field: &str, raw: &str) -> ApiResult<Option<NaiveDate>> {
    if raw.is_empty() {
        Ok(None)
    } else {
        date(field, raw).map(Some)
    }
}

// --- structure ---------------------------------------------------------------

/// `page_size`: 0 means the default; negative is an error; above the maximum
/// is an error rather than a silent clamp, so a client learns the limit.
pub fn page_size(field: &str, raw: i32) -> ApiResult<u32> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(ApiError::invalid_argument(field, "must not be negative")),
        n if n as u32 > MAX_PAGE_SIZE => Err(ApiError::invalid_argument(
            field,
            format!("at most {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n as u32),
    }
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

/// A proto enum value: known and not the zero `*_UNSPECIFIED`.
pub fn enum_value<E: TryFrom<i32>>(field: &str, raw: i32) -> ApiResult<E> {
    if raw == 0 {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    E::try_from(raw).map_err(|_| ApiError::invalid_argument(field, format!("unknown value {raw}")))
}

/// Like [`enum_value`] but the zero value means `default`.
pub fn enum_or<E: TryFrom<i32>>(field: &str, raw: i32, default: E) -> ApiResult<E> {
    if raw == 0 {
        Ok(default)
    } else {
        enum_value(field, raw)
    }
}

/// A `google.protobuf.Struct` from a request, as a JSON object of at most
/// `max_bytes` encoded and [`MAX_JSON_DEPTH`] levels. `None` becomes `{}`.
pub fn json_object(field: &str, value: Option<&Struct>, max_bytes: usize) -> ApiResult<Json> {
    let Some(value) = value else {
        return Ok(Json::Object(Map::new()));
    };
    let json = struct_to_json(field, value, 0)?;
    let size = serde_json::to_vec(&json)
        .map(|encoded| encoded.len())
        .unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err(ApiError::invalid_argument(
            field,
            format!("at most {max_bytes} bytes of JSON"),
        ));
    }
    Ok(json)
}

fn struct_to_json(field: &str, object: &Struct, depth: usize) -> ApiResult<Json> {
    let mut map = Map::with_capacity(object.fields.len());
    for (key, value) in &object.fields {
        no_nul(field, key)?;
        map.insert(key.clone(), value_to_json(field, value, depth + 1)?);
    }
    Ok(Json::Object(map))
}

fn value_to_json(field: &str, value: &Value, depth: usize) -> ApiResult<Json> {
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::invalid_argument(
            field,
            format!("nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => {
            no_nul(field, s)?;
            Json::String(s.clone())
        }
        Some(Kind::NumberValue(n)) => Json::Number(
            Number::from_f64(*n)
                .ok_or_else(|| ApiError::invalid_argument(field, "numbers must be finite"))?,
        ),
        Some(Kind::StructValue(object)) => struct_to_json(field, object, depth)?,
        Some(Kind::ListValue(list)) => Json::Array(
            list.values
                .iter()
                .map(|item| value_to_json(field, item, depth + 1))
                .collect::<ApiResult<_>>()?,
        ),
    })
}

/// PostgreSQL's `jsonb` cannot hold U+0000 in keys or strings.
fn no_nul(field: &str, s: &str) -> ApiResult<()> {
    if s.contains('\0') {
        return Err(ApiError::invalid_argument(
            field,
            "JSON strings must not contain U+0000",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails() {
        assert_eq!(email("e", " Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@x.io",
            "ada@x",
            "a b@x.io",
            "ada@-x.io",
            "a..b@x.io",
            "ada@x..io",
        ] {
            assert!(email("e", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size("p", 0).unwrap(), 50);
        assert_eq!(page_size("p", 1000).unwrap(), 1000);
        assert!(page_size("p", -1).is_err());
        assert!(page_size("p", 1001).is_err());
    }

    #[test]
    fn names() {
        assert!(name("n", "   ", 10).is_err());
        assert!(name("n", "a\u{0}b", 10).is_err());
        assert!(name("n", &"x".repeat(11), 10).is_err());
        assert_eq!(name("n", " Acme ", 10).unwrap(), "Acme");
    }

    #[test]
    fn typed_ids() {
        #[derive(Debug, PartialEq)]
        struct DealId(Uuid);
        impl From<Uuid> for DealId {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
        let raw = Uuid::now_v7();
        assert_eq!(id::<DealId>("d", &raw.to_string()).unwrap(), DealId(raw));
        assert_eq!(optional_id::<DealId>("d", "").unwrap(), None);
        let e = id::<Uuid>("deal_id", "x").unwrap_err();
        assert_eq!(e.violations()[0].field, "deal_id");
    }

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
        assert!(money_minor("v", -1).is_err());
        assert!(money_minor("v", MAX_MONEY_MINOR + 1).is_err());
        assert_eq!(
            crate::convert::date(date("d", "2024-02-29").unwrap()),
            "2024-02-29"
        );
        for bad in ["2023-02-29", "2024-1-05", "1899-12-31", "2024/01/05", "x"] {
            assert!(date("d", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(int_range("p", 100i16, 0, 100).unwrap(), 100);
        assert!(int_range("p", 101, 0, 100).is_err());
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

    #[test]
    fn structs_and_times() {
        let j = serde_json::json!({"a": 1.5, "b": [true, null, "x"], "c": {"d": "e"}});
        let s = crate::convert::json_to_struct(j.clone());
        assert_eq!(json_object("settings", Some(&s), 1024).unwrap(), j);
        assert!(json_object("settings", Some(&s), 10).is_err());
        let one = |kind| Struct {
            fields: [("k".to_owned(), Value { kind: Some(kind) })].into(),
        };
        assert!(json_object("settings", Some(&one(Kind::NumberValue(f64::NAN))), 1024).is_err());
        assert!(
            json_object(
                "settings",
                Some(&one(Kind::StringValue("a\0b".into()))),
                1024
            )
            .is_err()
        );
        let too_late = Timestamp {
            seconds: MAX_SECONDS + 1,
            nanos: 0,
        };
        assert!(datetime("t", &too_late).is_err());
        let last = Timestamp {
            seconds: MAX_SECONDS,
            nanos: 0,
        };
        assert!(datetime("t", &last).is_ok());
    }

    proptest! {
        #[test]
        fn email_never_panics_and_accepts_only_lowercase(s in "\\PC{0,300}") {
            if let Ok(e) = email("e", &s) {
                prop_assert_eq!(e.to_lowercase(), e.clone());
                prop_assert!(e.contains('@'));
            }
        }

        #[test]
        fn id_roundtrips(bytes in any::<[u8; 16]>()) {
            let u = Uuid::from_bytes(bytes);
            prop_assert_eq!(id::<Uuid>("id", &u.to_string()).unwrap(), u);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}", n in any::<i64>()) {
            let _ = id::<Uuid>("id", &s);
            let _ = domain("d", &s);
            let _ = currency("c", &s);
            let _ = date("d", &s);
            let _ = slug("s", &s, 64);
            let _ = optional_hash("h", &s);
            let _ = phone("p", &s);
            let _ = money_minor("v", n);
        }
    }
}
