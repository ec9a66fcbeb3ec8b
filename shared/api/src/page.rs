//! Opaque keyset page tokens (AIP-158). A token carries the last row's sort
//! key, authenticated with an HMAC over that key and everything that shaped
//! the query (tenant, method, filters): a token presented with another query,
//! altered, forged, or signed with a key the server no longer has, is
//! INVALID_ARGUMENT on `page_token`. The HMAC keys come from
//! `MOSAIC_PAGE_TOKEN_KEYS` ([`set_keys`], by the kit at startup): the first
//! signs, every one verifies, so a key is rotated by putting the new one first
//! and dropping the old one after a page token's useful life (minutes).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Serialize, de::DeserializeOwned};
use sha2::Sha256;

use crate::{ApiError, ApiResult};

const FIELD: &str = "page_token";
const MAX_TOKEN_LEN: usize = 1024;
/// Bytes of the HMAC kept in a token (128 bits).
const MAC_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The page token keys, signing key first. Until [`set_keys`] runs, one
/// random key of this process (tokens then work only within the process).
static KEYS: RwLock<Vec<Vec<u8>>> = RwLock::new(Vec::new());

/// Sets the HMAC keys of page tokens: `keys[0]` signs, every one verifies.
/// Empty keeps (or makes) a random key of this process.
pub fn set_keys(keys: Vec<Vec<u8>>) {
    let mut current = KEYS.write().unwrap_or_else(PoisonError::into_inner);
    if !keys.is_empty() {
        *current = keys;
    } else if current.is_empty() {
        current.push(rand::random::<[u8; 32]>().to_vec());
    }
}

fn with_keys<T>(use_keys: impl FnOnce(&[Vec<u8>]) -> T) -> T {
    {
        let keys = KEYS.read().unwrap_or_else(PoisonError::into_inner);
        if !keys.is_empty() {
            return use_keys(&keys);
        }
    }
    set_keys(Vec::new());
    use_keys(&KEYS.read().unwrap_or_else(PoisonError::into_inner))
}

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

    /// The MAC of `cursor` (its JSON) under this binding and `key`.
    fn mac(&self, key: &[u8], cursor: &[u8]) -> HmacSha256 {
        // Any key length is accepted by HMAC.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new_from_slice(&[0]).expect("hmac key"));
        mac.update(self.0.as_bytes());
        mac.update(b"\x1e");
        mac.update(cursor);
        mac
    }
}

/// Encodes the cursor after the last row of a page: `<cursor>.<mac>`, both base64url.
pub fn encode<K: Serialize>(binding: &PageBinding, key: &K) -> String {
    with_keys(|keys| encode_with(keys, binding, key))
}

fn encode_with<K: Serialize>(keys: &[Vec<u8>], binding: &PageBinding, key: &K) -> String {
    // Serialising plain keys (strings, integers, UUIDs, times) cannot fail.
    let cursor = serde_json::to_vec(key).unwrap_or_default();
    let tag = binding.mac(&keys[0], &cursor).finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&cursor),
        URL_SAFE_NO_PAD.encode(&tag[..MAC_LEN])
    )
}

/// Decodes a request's `page_token`: `None` for the first page.
pub fn decode<K: DeserializeOwned>(binding: &PageBinding, raw: &str) -> ApiResult<Option<K>> {
    with_keys(|keys| decode_with(keys, binding, raw))
}

fn decode_with<K: DeserializeOwned>(
    keys: &[Vec<u8>],
    binding: &PageBinding,
    raw: &str,
) -> ApiResult<Option<K>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::invalid_argument(FIELD, "not a page token issued for this query");
    if raw.len() > MAX_TOKEN_LEN {
        return Err(bad());
    }
    let (cursor, tag) = raw.split_once('.').ok_or_else(bad)?;
    let (cursor, tag) = (
        URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?,
        URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?,
    );
    let authentic = tag.len() == MAC_LEN
        && keys.iter().any(|key| {
            binding
                .mac(key, &cursor)
                .verify_truncated_left(&tag)
                .is_ok()
        });
    if !authentic {
        return Err(bad());
    }
    serde_json::from_slice(&cursor).map(Some).map_err(|_| bad())
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
    fn forged_altered_and_foreign_tokens_are_refused() {
        let binding = PageBinding::new("ListX").with("tenant-a");
        let token = encode(&binding, &("2024-01-01T00:00:00Z", 7));
        // A cursor of the caller's choosing with the old unkeyed scheme's shape.
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"["+999999-01-01T00:00:00Z",1]"#),
            URL_SAFE_NO_PAD.encode([0u8; MAC_LEN])
        );
        let altered = token.replacen('A', "B", 1);
        for bad in [forged.as_str(), altered.as_str(), "x.y", "no-dot"] {
            let e = decode::<(String, i32)>(&binding, bad).unwrap_err();
            assert_eq!(e.violations()[0].field, "page_token", "{bad}");
        }
    }

    #[test]
    fn rotation_keeps_old_tokens_until_the_old_key_goes() {
        let binding = PageBinding::new("ListRotate");
        let (old_key, new_key) = (b"old".to_vec(), b"new".to_vec());
        let old = encode_with(std::slice::from_ref(&old_key), &binding, &1);
        let both = [new_key.clone(), old_key];
        assert_eq!(decode_with::<i32>(&both, &binding, &old).unwrap(), Some(1));
        let new = encode_with(&both, &binding, &2);
        let only_new = [new_key];
        assert!(
            decode_with::<i32>(&only_new, &binding, &old).is_err(),
            "the old key is gone"
        );
        assert_eq!(
            decode_with::<i32>(&only_new, &binding, &new).unwrap(),
            Some(2)
        );
    }

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
