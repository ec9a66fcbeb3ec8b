//! Opaque keyset page tokens (AIP-158). A token carries the last row's sort key
//! and a fingerprint of the query that made it (tenant, method, filters); a
//! token presented with another query, or altered, is INVALID_ARGUMENT. The key
//! only ever moves a cursor inside the caller's own tenant, so a forged but
//! well-formed token can reveal nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::{ApiError, ApiResult};

const FIELD: &str = "page_token";
const MAX_TOKEN_LEN: usize = 1024;

/// What a token is bound to: build it from everything that shapes the result
/// set except the page size and the cursor itself.
#[derive(Debug, Clone)]
pub struct PageBinding(String);

impl PageBinding {
    pub fn new(method: &str) -> Self {
        Self(method.to_owned())
    }

    /// Adds one filter value (or the tenant) to the binding.
    pub fn with(mut self, part: impl std::fmt::Display) -> Self {
        use std::fmt::Write;
        let _ = write!(self.0, "\u{1f}{part}");
        self
    }

    fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<K> {
    q: String,
    k: K,
}

/// Encodes the cursor after the last row of a page.
pub fn encode<K: Serialize>(binding: &PageBinding, key: &K) -> String {
    let env = Envelope {
        q: binding.fingerprint(),
        k: key,
    };
    // Serialising plain keys (strings, integers, UUIDs) cannot fail.
    let json = serde_json::to_vec(&env).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a request's `page_token`: `None` for the first page.
pub fn decode<K: DeserializeOwned>(binding: &PageBinding, raw: &str) -> ApiResult<Option<K>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::invalid_argument(FIELD, "not a page token issued for this query");
    if raw.len() > MAX_TOKEN_LEN {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let env: Envelope<K> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if env.q != binding.fingerprint() {
        return Err(bad());
    }
    Ok(Some(env.k))
}

/// Splits one extra fetched row off a page: queries ask for `size + 1` rows,
/// and the extra row's presence means there is a next page.
pub fn split_page<T, K: Serialize>(
    mut rows: Vec<T>,
    size: u32,
    binding: &PageBinding,
    key_of: impl Fn(&T) -> K,
) -> (Vec<T>, String) {
    if rows.len() > size as usize {
        rows.truncate(size as usize);
        let token = rows
            .last()
            .map(|r| encode(binding, &key_of(r)))
            .unwrap_or_default();
        (rows, token)
    } else {
        (rows, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bound_to_query() {
        let a = PageBinding::new("ListX").with("tenant-a");
        let b = PageBinding::new("ListX").with("tenant-b");
        let t = encode(&a, &("2024-01-01", 7));
        assert_eq!(
            decode::<(String, i32)>(&a, &t).unwrap(),
            Some(("2024-01-01".into(), 7))
        );
        assert!(decode::<(String, i32)>(&b, &t).is_err());
        assert_eq!(decode::<(String, i32)>(&a, "").unwrap(), None);
    }

    #[test]
    fn split() {
        let binding = PageBinding::new("L");
        let (rows, next) = split_page(vec![1, 2, 3], 2, &binding, |r| *r);
        assert_eq!(rows, [1, 2]);
        assert_eq!(decode::<i32>(&binding, &next).unwrap(), Some(2));
        let (rows, next) = split_page(vec![1, 2], 2, &binding, |r| *r);
        assert_eq!(rows, [1, 2]);
        assert!(next.is_empty());
    }

    proptest! {
        #[test]
        fn garbage_is_invalid_argument_never_a_panic(s in "\\PC{1,200}") {
            let b = PageBinding::new("L");
            if let Err(e) = decode::<(String, u64)>(&b, &s) {
                prop_assert_eq!(e.code(), tonic::Code::InvalidArgument);
            }
        }
    }
}
