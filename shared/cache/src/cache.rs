//! [`Cache`]: cache-aside for one service, with fill leases so that a slow
//! reader can never write an old row back over an invalidation.
//!
//! ## Keys
//!
//! A [`CacheKey`] is made only by its cache, from a [`TenantContext`]:
//! `mosaic:{<tenant>}:<service>:<kind>:<id>`. The tenant comes from the
//! context (the one the auth layer verified), never from an argument, so a
//! handler cannot name another tenant's key, and a value is only ever served
//! to the tenant in its key. The braces make the tenant the Redis Cluster
//! hash tag: every key of a tenant sits in one slot.
//!
//! One scope has no tenant: [`Cache::platform_key`],
//! `mosaic:platform:<service>:<kind>:{<id>}`, for a lookup that finds its
//! tenant (agents' `LookupAgentByPublicKey`, keyed by a hash of the key). It
//! is the cache's counterpart of a documented cross-tenant database path;
//! its hash tag is the id, so such keys spread over the cluster. Ids are
//! percent-encoded outside `[A-Za-z0-9._-]`, so no id can change a key's
//! shape or reach into another scope.
//!
//! ## Reading and writing (memcache-style leases)
//!
//! - [`Cache::get`]: a hit returns the [`Entry`]. A miss also sets a fill
//!   lease (`<key>:lease`, a random token, `SET NX` with a short expiry) in
//!   the same script, and returns it in a [`FillToken`]; when another reader
//!   already holds the lease the token is empty (that reader fills).
//! - The caller reads the store, **starting after** `get` returned (open the
//!   database transaction after the lookup), and [`Cache::fill`]s: one
//!   script writes the value only if the lease is still its token.
//! - A writer, after its transaction commits and before it answers,
//!   [`Cache::invalidate`]s: deletes the value and the lease.
//!
//! Why no stale value survives an acknowledged write W: a value in Redis
//! after W's invalidation was filled after it, by a reader whose lease was
//! still there, so that lease was taken after the invalidation (the
//! invalidation deleted any older one, and tokens are never reused), so the
//! reader's store read began after W committed and saw W or newer. A fill
//! that loses (its lease was revoked or ran out) is counted `refused` and
//! changes nothing. Both scripts touch one key and its lease, which share a
//! hash tag, so they run on one Cluster node.
//!
//! When Redis cannot be reached, `get` answers [`Lookup::Unavailable`] (read
//! the store, nothing to fill) and an invalidation is kept by the [`Redis`]
//! handle, which opens its breaker and deletes the kept keys before it
//! trusts Redis again. If the process dies first, the entry's TTL bounds
//! the staleness.
//!
//! Values are [`Entry`]s: the caller's bytes (e.g. an encoded protobuf
//! message) and, where the caller supplies it, the resource's version or
//! etag.

use std::fmt::{Display, Write};

use mosaic_api::ApiResult;
use mosaic_tenant::TenantContext;
use redis::Value;

use crate::config::CacheConfig;
use crate::connection::{Redis, Unavailable};

/// `KEYS[1]` value, `KEYS[2]` lease; `ARGV[1]` a fresh token, `ARGV[2]` lease ms.
/// Returns the value (a hit), `1` (a miss; the lease is the caller's) or `0`
/// (a miss; someone else holds the lease).
const GET: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// `KEYS[1]` value, `KEYS[2]` lease; `ARGV[1]` token, `ARGV[2]` value,
/// `ARGV[3]` ttl ms. Writes only while the lease is still the caller's.
const FILL: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
";

/// The first byte of every stored value: the envelope's format.
const FORMAT: u8 = 1;

/// Cache-aside for one service. Cheap to clone; clones share the [`Redis`]
/// handle (and its breaker) of the process.
#[derive(Clone)]
pub struct Cache {
    service: &'static str,
    config: CacheConfig,
    /// `None` when the cache is off.
    redis: Option<Redis>,
    get: std::sync::Arc<redis::Script>,
    fill: std::sync::Arc<redis::Script>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("enabled", &self.redis.is_some())
            .finish()
    }
}

/// A key of one service's cache; made only by [`Cache::key`] (a tenant's)
/// or [`Cache::platform_key`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    key: String,
    kind: &'static str,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

impl CacheKey {
    /// The Redis key.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The Redis key of this key's fill lease (same hash tag).
    pub fn lease_key(&self) -> String {
        format!("{}:lease", self.key)
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// A cached value: the caller's bytes and, if it gave one, the resource's
/// version or etag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: Option<String>,
    pub bytes: Vec<u8>,
}

impl Entry {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            version: None,
            bytes,
        }
    }

    /// Bytes with the resource's version or etag.
    pub fn versioned(version: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self {
            version: Some(version.into()),
            bytes,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let version = self.version.as_deref().unwrap_or("").as_bytes();
        let len = u16::try_from(version.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(4 + version.len() + self.bytes.len());
        out.push(FORMAT);
        out.push(u8::from(self.version.is_some()));
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&version[..usize::from(len)]);
        out.extend_from_slice(&self.bytes);
        out
    }

    fn decode(mut raw: Vec<u8>) -> Option<Self> {
        let (&[format, has_version, hi, lo], _) = raw.split_first_chunk::<4>()?;
        if format != FORMAT {
            return None;
        }
        let end = 4 + usize::from(u16::from_be_bytes([hi, lo]));
        let version = std::str::from_utf8(raw.get(4..end)?).ok()?.to_owned();
        let bytes = raw.split_off(end);
        Some(Self {
            version: (has_version == 1).then_some(version),
            bytes,
        })
    }
}

/// What [`Cache::get`] found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Entry),
    /// Not cached: read the store, then [`Cache::fill`] with this token.
    Miss(FillToken),
    /// Redis is off, down or slow: read the store; there is nothing to fill.
    Unavailable,
}

/// The right to fill one key, given by a miss. Empty when another reader
/// holds the fill lease (filling with it does nothing).
#[derive(Debug)]
pub struct FillToken {
    key: CacheKey,
    lease: Option<String>,
}

impl FillToken {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Whether this token holds the lease (a fill may store).
    pub fn has_lease(&self) -> bool {
        self.lease.is_some()
    }
}

/// What a fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    Stored,
    /// The lease was revoked by an invalidation, or ran out: nothing written.
    Refused,
    /// The token held no lease: nothing written.
    NoLease,
    /// Redis could not be reached: nothing written.
    Unavailable,
}

/// What an invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidated {
    Done,
    /// Redis could not be reached: the delete is kept and done before this
    /// process reads from Redis again.
    Deferred,
}

impl Cache {
    /// The cache of `service` (`agents`), on the process's Redis handle.
    /// With a zero TTL the cache is off: every lookup is `Unavailable`.
    pub fn new(service: &'static str, config: CacheConfig, redis: Redis) -> Self {
        let enabled = config.enabled();
        Self {
            service,
            config,
            redis: enabled.then_some(redis),
            get: std::sync::Arc::new(redis::Script::new(GET)),
            fill: std::sync::Arc::new(redis::Script::new(FILL)),
        }
    }

    /// A cache that is off: lookups are `Unavailable`, nothing touches Redis.
    pub fn disabled(service: &'static str) -> Self {
        Self {
            service,
            config: CacheConfig {
                ttl: std::time::Duration::ZERO,
                ..CacheConfig::default()
            },
            redis: None,
            get: std::sync::Arc::new(redis::Script::new(GET)),
            fill: std::sync::Arc::new(redis::Script::new(FILL)),
        }
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// This cache with entries that live `ttl` instead (a zero `ttl` turns
    /// it off), e.g. a short one for a platform lookup that must notice
    /// soon a change it is not told of (a tenant deleted in identity).
    pub fn with_ttl(&self, ttl: std::time::Duration) -> Self {
        let mut cache = self.clone();
        cache.config.ttl = ttl;
        if ttl.is_zero() {
            cache.redis = None;
        }
        cache
    }

    /// The key of `kind` `id` (`"config"`, an agent id) in the caller's
    /// tenant: `mosaic:{<tenant>}:<service>:<kind>:<id>`. PERMISSION_DENIED
    /// for a token without a tenant, as for the database.
    pub fn key(
        &self,
        ctx: &TenantContext,
        kind: &'static str,
        id: impl Display,
    ) -> ApiResult<CacheKey> {
        let tenant = ctx.tenant_id()?;
        let (kind_part, id_part) = (encoded(kind), encoded(id));
        let key = mosaic_core::keys::redis_key(tenant, &[&self.service, &kind_part, &id_part]);
        Ok(CacheKey { key, kind })
    }

    /// The one scope without a tenant, for a lookup that has no tenant yet
    /// and finds one (agents' public-key lookup, keyed by the key's hash):
    /// `mosaic:platform:<service>:<kind>:{<id>}`. Only a documented
    /// cross-tenant path may use it, and the value it caches must name the
    /// tenant it resolved to.
    pub fn platform_key(&self, kind: &'static str, id: impl Display) -> CacheKey {
        let key = format!(
            "mosaic:platform:{}:{}:{{{}}}",
            self.service,
            encoded(kind),
            encoded(id)
        );
        CacheKey { key, kind }
    }

    /// Looks `key` up; a miss takes the fill lease if nobody holds it.
    pub async fn get(&self, key: &CacheKey) -> Lookup {
        let Some(redis) = &self.redis else {
            return Lookup::Unavailable;
        };
        let token = random_token();
        let lease_ms = millis(self.config.lease);
        let script = &self.get;
        let found = redis
            .run("cache.get", |mut conn| async move {
                script
                    .key(key.as_str())
                    .key(key.lease_key())
                    .arg(&token)
                    .arg(lease_ms)
                    .invoke_async::<Value>(&mut conn)
                    .await
                    .map(|value| (value, token))
            })
            .await;
        let metrics = redis.cache_metrics();
        let count = |result| metrics.lookup(self.service, key.kind, result);
        match found {
            Ok((Value::BulkString(raw), _)) => match Entry::decode(raw) {
                Some(entry) => {
                    count("hit");
                    Lookup::Hit(entry)
                }
                None => {
                    count("error");
                    tracing::warn!(key = ?key, "cached value of an unknown format; ignored");
                    Lookup::Unavailable
                }
            },
            Ok((Value::Int(granted), token)) => {
                count("miss");
                Lookup::Miss(FillToken {
                    key: key.clone(),
                    lease: (granted == 1).then_some(token),
                })
            }
            Ok(_) => {
                count("error");
                Lookup::Unavailable
            }
            Err(Unavailable::Open) => {
                count("skipped");
                Lookup::Unavailable
            }
            Err(Unavailable::Failed) => {
                count("error");
                Lookup::Unavailable
            }
        }
    }

    /// Stores `entry` under the token's key for the TTL, if the token's
    /// lease is still in place (no invalidation since the miss).
    pub async fn fill(&self, token: FillToken, entry: Entry) -> Filled {
        let Some(redis) = &self.redis else {
            return Filled::Unavailable;
        };
        let metrics = redis.cache_metrics();
        let count = |result| metrics.fill(self.service, token.key.kind, result);
        let Some(lease) = &token.lease else {
            count("no_lease");
            return Filled::NoLease;
        };
        let value = entry.encode();
        let ttl_ms = millis(self.config.ttl);
        let (key, script) = (&token.key, &self.fill);
        let stored = redis
            .run("cache.fill", |mut conn| async move {
                script
                    .key(key.as_str())
                    .key(key.lease_key())
                    .arg(lease)
                    .arg(value)
                    .arg(ttl_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        let (result, filled) = match stored {
            Ok(1) => ("stored", Filled::Stored),
            Ok(_) => ("refused", Filled::Refused),
            Err(Unavailable::Open) => ("skipped", Filled::Unavailable),
            Err(Unavailable::Failed) => ("error", Filled::Unavailable),
        };
        count(result);
        filled
    }

    /// Removes `key`'s value and revokes its fill lease. Call it after the
    /// transaction that changed the resource commits, before answering.
    pub async fn invalidate(&self, key: &CacheKey) -> Invalidated {
        let Some(redis) = &self.redis else {
            return Invalidated::Done;
        };
        let keys = [key.key.clone(), key.lease_key()];
        let deleted = redis
            .run("cache.invalidate", |mut conn| {
                let keys = keys.clone();
                async move {
                    redis::cmd("DEL")
                        .arg(&keys[..])
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await;
        let metrics = redis.cache_metrics();
        match deleted {
            Ok(()) => {
                metrics.invalidation(self.service, key.kind, "done");
                Invalidated::Done
            }
            Err(why) => {
                metrics.invalidation(self.service, key.kind, "deferred");
                let cause = match why {
                    Unavailable::Open => "the breaker is open",
                    Unavailable::Failed => "the delete failed",
                };
                redis.defer_invalidation(keys, &format_args!("cache invalidation: {cause}"));
                Invalidated::Deferred
            }
        }
    }
}

/// `part`, percent-encoded outside `[A-Za-z0-9._-]` (so `:`, `{` and `}`
/// never reach a key from an id).
fn encoded(part: impl Display) -> String {
    let raw = part.to_string();
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// 128 random bits, as hex: a lease token that is never reused.
/// 128 random bits from the thread's CSPRNG: a lease token needs only to be
/// unique. (A v4 UUID asks the kernel for its bits, one `getrandom` call per
/// lookup: 1.4% of the service's CPU under cached GetAgent, in the kernel.)
fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_core::TenantId;
    use proptest::prelude::*;

    proptest! {
        /// No id can move a key into another tenant, another scope or
        /// another shape, and distinct ids make distinct keys.
        #[test]
        fn ids_never_change_a_keys_tenant_or_shape(id in ".*", other in ".*") {
            let cache = Cache::disabled("agents");
            let tenant = TenantId::new();
            let ctx = TenantContext::system(tenant, "test");
            let key = cache.key(&ctx, "config", &id).unwrap();
            let tag = tenant.to_string();
            prop_assert_eq!(mosaic_core::keys::tenant_of_key(key.as_str()), Some(tag.as_str()));
            prop_assert_eq!(key.as_str().matches(':').count(), 4);
            prop_assert_eq!(key.as_str().matches(['{', '}']).count(), 2);
            if id != other {
                prop_assert_ne!(&key, &cache.key(&ctx, "config", &other).unwrap());
                prop_assert_ne!(
                    cache.platform_key("pubkey", &id),
                    cache.platform_key("pubkey", &other)
                );
            }
            let platform = cache.platform_key("pubkey", &id);
            let tagged = platform.as_str().starts_with("mosaic:platform:agents:pubkey:{")
                && platform.as_str().ends_with('}');
            prop_assert!(tagged, "{:?}", platform);
            prop_assert_eq!(platform.as_str().matches(['{', '}']).count(), 2);
        }
    }
}
