//! Opaque keyset page tokens (AIP-158). A token carries the last row's sort key
//! and a fingerprint of the query that made it (tenant, method, filters); a
//! token presented with another query, or altered, is INVALID_ARGUMENT. The key
//! only ever moves a cursor inside the caller's own tenant, so a forged but
//! well-formed token can reveal nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// The largest reply a page may fill: the process's message size limit
/// ([`set_max_reply_bytes`]), less room for the rest of the reply (the
/// next page token and a few scalar fields).
static MAX_REPLY_BYTES: AtomicUsize = AtomicUsize::new(4 * 1024 * 1024);
const REPLY_RESERVE: usize = 4 * 1024;

/// Sets the message size limit pages are kept under (the kit does, from
/// `MOSAIC_MAX_MESSAGE_BYTES`, before serving).
pub fn set_max_reply_bytes(bytes: usize) {
    MAX_REPLY_BYTES.store(bytes, Ordering::Relaxed);
}

/// Turns the rows of a keyset query into a page of replies and the next
/// page token. Queries ask for `size + 1` rows; the extra row's presence
/// means there is a next page. A page also ends early, with a token, when
/// the next message would take the reply past the message size limit
/// (AIP-158 allows short pages), so a page of large rows is never refused
/// by the encoder. It always holds at least one row.
pub fn page<R, M, K>(
    rows: Vec<R>,
    size: u32,
    binding: &PageBinding,
    key_of: impl Fn(&R) -> K,
    mut into_proto: impl FnMut(R) -> M,
) -> (Vec<M>, String)
where
    M: prost::Message,
    K: Serialize,
{
    let budget = MAX_REPLY_BYTES
        .load(Ordering::Relaxed)
        .saturating_sub(REPLY_RESERVE);
    let more = rows.len() > size as usize;
    let mut used = 0usize;
    let mut out = Vec::with_capacity(rows.len().min(size as usize));
    let mut last_key = None;
    for row in rows.into_iter().take(size as usize) {
        let key = key_of(&row);
        let message = into_proto(row);
        let len = message.encoded_len();
        // A repeated field's element: a one-byte tag, the length, the bytes.
        let cost = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if !out.is_empty() && used + cost > budget {
            return (
                out,
                last_key.map(|k| encode(binding, &k)).unwrap_or_default(),
            );
        }
        used += cost;
        out.push(message);
        last_key = Some(key);
    }
    let token = match (more, last_key) {
        (true, Some(key)) => encode(binding, &key),
        _ => String::new(),
    };
    (out, token)
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

    /// A message of `n` bytes of text (in field 1).
    fn text(n: usize) -> String {
        "x".repeat(n)
    }

    #[test]
    fn pages_end_at_the_size_or_the_extra_row() {
        let binding = PageBinding::new("L");
        let (rows, next) = page(vec![1, 2, 3], 2, &binding, |r| *r, |r| r.to_string());
        assert_eq!(rows, ["1", "2"]);
        assert_eq!(decode::<i32>(&binding, &next).unwrap(), Some(2));
        let (rows, next) = page(vec![1, 2], 2, &binding, |r| *r, |r| r.to_string());
        assert_eq!(rows, ["1", "2"]);
        assert!(next.is_empty());
    }

    #[test]
    fn pages_end_before_the_reply_limit() {
        let binding = PageBinding::new("L");
        let limit = MAX_REPLY_BYTES.load(Ordering::Relaxed);
        // Ten rows of a tenth of the limit each: the whole page does not fit.
        let rows: Vec<i32> = (0..10).collect();
        let (kept, next) = page(rows, 50, &binding, |r| *r, |_| text(limit / 10));
        assert!(kept.len() < 10 && !kept.is_empty(), "{}", kept.len());
        let total: usize = kept
            .iter()
            .map(|m| prost::Message::encoded_len(m) + 4)
            .sum();
        assert!(total <= limit, "{total} > {limit}");
        assert_eq!(
            decode::<i32>(&binding, &next).unwrap(),
            Some(kept.len() as i32 - 1),
            "the next page starts after the last row sent"
        );
        // One row larger than the limit still goes out alone (the encoder says OUT_OF_RANGE).
        let (kept, _) = page(vec![1, 2], 5, &binding, |r| *r, |_| text(limit));
        assert_eq!(kept.len(), 1);
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
