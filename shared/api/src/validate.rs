//! Parsers from raw request fields to checked values. Each takes the field's
//! name so the error can point at it.

use uuid::Uuid;

use crate::{ApiError, ApiResult};

/// Default and maximum `page_size` (AIP-158).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A UUID made by the service (`tenant_id`, `user_id`, ...). Empty is an error.
pub fn id(field: &str, raw: &str) -> ApiResult<Uuid> {
    if raw.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    // Only the canonical hyphenated form: ids are compared as strings by clients.
    if raw.len() != 36 {
        return Err(ApiError::invalid_argument(field, "must be a UUID"));
    }
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid_argument(field, "must be a UUID"))
}

/// An optional client `request_id` (AIP-155): empty means none.
pub fn request_id(field: &str, raw: &str) -> ApiResult<Option<Uuid>> {
    if raw.is_empty() {
        Ok(None)
    } else {
        id(field, raw).map(Some)
    }
}

/// A display name: trimmed, 1..=max characters, no control characters.
pub fn name(field: &str, raw: &str, max: usize) -> ApiResult<String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(ApiError::invalid_argument(field, "required"));
    }
    text(field, s, max)
}

/// Optional free text: 0..=max characters, no control characters but newline and tab.
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

/// An email address, lowercased. Deliberately simple: one `@`, a non-empty
/// local part, a dotted domain of letters, digits and hyphens, at most 254
/// characters. Deliverability is not our business; shape is.
pub fn email(field: &str, raw: &str) -> ApiResult<String> {
    let s = raw.trim().to_lowercase();
    let bad = |why: &str| Err(ApiError::invalid_argument(field, why.to_owned()));
    if s.is_empty() {
        return bad("required");
    }
    if s.len() > 254 {
        return bad("at most 254 characters");
    }
    let Some((local, domain)) = s.split_once('@') else {
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
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if local_ok && domain_ok {
        Ok(s)
    } else {
        bad("must be an email address")
    }
}

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
            prop_assert_eq!(id("id", &u.to_string()).unwrap(), u);
        }

        #[test]
        fn id_never_panics(s in "\\PC{0,60}") {
            let _ = id("id", &s);
        }
    }
}
