//! The cache-aside API against the machine's Redis: the happy path, keys
//! fenced by tenant, leases revoked by invalidation, and the stale-fill race
//! under concurrent readers and writers.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mosaic_cache::{Cache, Entry, Filled, Invalidated, Lookup, RedisConfig};
use mosaic_core::TenantId;
use mosaic_tenant::TenantContext;
use redis::AsyncCommands;
use support::{cache_config, handle, shared_redis_url};

fn cache() -> Cache {
    let redis = handle(RedisConfig {
        timeout: Duration::from_secs(2),
        ..RedisConfig::single(shared_redis_url())
    });
    Cache::new("agents", cache_config(), redis)
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(shared_redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn miss(lookup: Lookup) -> mosaic_cache::FillToken {
    match lookup {
        Lookup::Miss(token) => token,
        other => panic!("expected a miss, got {other:?}"),
    }
}

fn hit(lookup: Lookup) -> Entry {
    match lookup {
        Lookup::Hit(entry) => entry,
        other => panic!("expected a hit, got {other:?}"),
    }
}

#[tokio::test]
async fn miss_fill_hit_invalidate() {
    let cache = cache();
    let ctx = TenantContext::system(TenantId::new(), "test");
    let id = uuid::Uuid::now_v7();
    let key = cache.key(&ctx, "config", id).unwrap();

    let token = miss(cache.get(&key).await);
    assert!(token.has_lease(), "the first miss takes the fill lease");
    let second = miss(cache.get(&key).await);
    assert!(!second.has_lease(), "one filler at a time");
    assert_eq!(
        cache.fill(second, Entry::new(b"x".to_vec())).await,
        Filled::NoLease
    );

    let entry = Entry::versioned("7", b"agent bytes\x00\xff".to_vec());
    assert_eq!(cache.fill(token, entry.clone()).await, Filled::Stored);
    assert_eq!(hit(cache.get(&key).await), entry);
    let ttl: i64 = raw().await.pttl(key.as_str()).await.unwrap();
    assert!(ttl > 25_000 && ttl <= 30_000, "the TTL from config: {ttl}");
    let short = cache.with_ttl(Duration::from_secs(2));
    let brief = short.platform_key("pubkey", uuid::Uuid::now_v7().simple());
    let token = miss(short.get(&brief).await);
    assert_eq!(
        short.fill(token, Entry::new(b"t".to_vec())).await,
        Filled::Stored
    );
    let ttl: i64 = raw().await.pttl(brief.as_str()).await.unwrap();
    assert!(ttl > 0 && ttl <= 2_000, "a cache's own TTL: {ttl}");
    let lease: bool = raw().await.exists(key.lease_key()).await.unwrap();
    assert!(!lease, "a fill ends its lease");

    // Unversioned entries, and empty ones, come back as they went in.
    let other = cache.key(&ctx, "config", uuid::Uuid::now_v7()).unwrap();
    let token = miss(cache.get(&other).await);
    assert_eq!(
        cache.fill(token, Entry::new(Vec::new())).await,
        Filled::Stored
    );
    assert_eq!(hit(cache.get(&other).await), Entry::new(Vec::new()));

    assert_eq!(cache.invalidate(&key).await, Invalidated::Done);
    assert!(miss(cache.get(&key).await).has_lease());
}

#[tokio::test]
async fn keys_carry_the_callers_tenant_and_never_serve_another() {
    let cache = cache();
    let (a, b) = (TenantId::new(), TenantId::new());
    let (ctx_a, ctx_b) = (
        TenantContext::system(a, "test"),
        TenantContext::system(b, "test"),
    );
    let id = uuid::Uuid::now_v7();
    let key_a = cache.key(&ctx_a, "config", id).unwrap();
    let key_b = cache.key(&ctx_b, "config", id).unwrap();
    assert_eq!(key_a.as_str(), format!("mosaic:{{{a}}}:agents:config:{id}"));
    assert_eq!(
        key_a.lease_key(),
        format!("mosaic:{{{a}}}:agents:config:{id}:lease")
    );
    assert_ne!(key_a, key_b);

    let token = miss(cache.get(&key_a).await);
    assert_eq!(
        cache.fill(token, Entry::new(b"a's".to_vec())).await,
        Filled::Stored
    );
    assert!(
        matches!(cache.get(&key_b).await, Lookup::Miss(_)),
        "tenant B never sees A's entry for the same id"
    );
    assert_eq!(hit(cache.get(&key_a).await).bytes, b"a's");

    // Ids cannot change a key's shape: separators and braces are encoded.
    let odd = cache.key(&ctx_a, "config", "x}:{y z").unwrap();
    assert_eq!(
        odd.as_str(),
        format!("mosaic:{{{a}}}:agents:config:x%7D%3A%7By%20z")
    );
    let forged = format!("{b}}}:agents:config:{id}");
    let forged = cache.key(&ctx_a, "config", forged).unwrap();
    assert!(forged.as_str().starts_with(&format!("mosaic:{{{a}}}:")));
    assert!(matches!(cache.get(&forged).await, Lookup::Miss(_)));

    // A token without a tenant has no tenant keys.
    let platform = TenantContext::system_platform("test");
    let err = cache.key(&platform, "config", id).unwrap_err();
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::PermissionDenied
    );

    // The one scope without a tenant is named, and tagged by its id.
    let lookup = cache.platform_key("pubkey", "ab12");
    assert_eq!(lookup.as_str(), "mosaic:platform:agents:pubkey:{ab12}");
    assert_eq!(
        lookup.lease_key(),
        "mosaic:platform:agents:pubkey:{ab12}:lease"
    );
}

#[tokio::test]
async fn an_invalidation_revokes_the_lease_of_a_reader_in_flight() {
    // The classic race, step by step: a reader misses, reads the old row; a
    // writer commits and invalidates; the reader's fill of the old row is
    // refused, and the next reader fills the new one.
    let cache = cache();
    let ctx = TenantContext::system(TenantId::new(), "test");
    let key = cache.key(&ctx, "config", uuid::Uuid::now_v7()).unwrap();

    let slow_reader = miss(cache.get(&key).await);
    let old_row = Entry::versioned("1", b"old".to_vec());
    assert_eq!(cache.invalidate(&key).await, Invalidated::Done);
    assert_eq!(cache.fill(slow_reader, old_row).await, Filled::Refused);

    let next = miss(cache.get(&key).await);
    assert!(next.has_lease(), "the revoked lease is gone");
    let new_row = Entry::versioned("2", b"new".to_vec());
    assert_eq!(cache.fill(next, new_row.clone()).await, Filled::Stored);
    assert_eq!(hit(cache.get(&key).await), new_row);

    // A lease that ran out refuses its fill too.
    let quick = Cache::new(
        "agents",
        mosaic_cache::CacheConfig {
            lease: Duration::from_millis(50),
            ..cache_config()
        },
        handle(RedisConfig {
            timeout: Duration::from_secs(2),
            ..RedisConfig::single(shared_redis_url())
        }),
    );
    let key = quick.key(&ctx, "config", uuid::Uuid::now_v7()).unwrap();
    let late = miss(quick.get(&key).await);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let newer = miss(quick.get(&key).await);
    assert!(newer.has_lease());
    assert_eq!(
        quick.fill(late, Entry::new(b"old".to_vec())).await,
        Filled::Refused
    );
}

/// Readers and writers of one row run at once against real Redis. The
/// "database" is a counter: a writer commits by incrementing it, then
/// invalidates, then acknowledges. Every read must see the last version
/// acknowledged before it started, or a newer one; after the last write,
/// nothing older than it may remain cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_value_survives_an_acknowledged_write() {
    const READERS: usize = 8;
    const WRITES: u64 = 200;
    let cache = cache();
    let ctx = TenantContext::system(TenantId::new(), "test");
    let key = cache.key(&ctx, "config", uuid::Uuid::now_v7()).unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));

    let mut readers = Vec::new();
    for reader in 0..READERS {
        let (cache, key) = (cache.clone(), key.clone());
        let (committed, acknowledged, done, refused) = (
            committed.clone(),
            acknowledged.clone(),
            done.clone(),
            refused.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) {
                let floor = acknowledged.load(Ordering::Acquire);
                let seen = match cache.get(&key).await {
                    Lookup::Hit(entry) => {
                        let version: u64 = entry.version.unwrap().parse().unwrap();
                        assert_eq!(entry.bytes, version.to_be_bytes());
                        version
                    }
                    Lookup::Miss(token) => {
                        // The store read, slow enough for writers to pass it.
                        let version = committed.load(Ordering::Acquire);
                        if reader % 2 == 0 {
                            tokio::time::sleep(Duration::from_micros(200 * reader as u64)).await;
                        }
                        let entry =
                            Entry::versioned(version.to_string(), version.to_be_bytes().to_vec());
                        if cache.fill(token, entry).await == Filled::Refused {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        version
                    }
                    Lookup::Unavailable => panic!("the shared Redis is up"),
                };
                assert!(
                    seen >= floor,
                    "reader {reader} saw version {seen} after version {floor} was acknowledged"
                );
                reads += 1;
            }
            reads
        }));
    }

    let writer = {
        let (cache, key) = (cache.clone(), key.clone());
        let (committed, acknowledged) = (committed.clone(), acknowledged.clone());
        tokio::spawn(async move {
            for _ in 0..WRITES {
                let version = committed.fetch_add(1, Ordering::AcqRel) + 1;
                assert_eq!(cache.invalidate(&key).await, Invalidated::Done);
                acknowledged.store(version, Ordering::Release);
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        })
    };
    writer.await.unwrap();
    // Let the readers keep going over the last version for a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    done.store(true, Ordering::Release);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }

    match cache.get(&key).await {
        Lookup::Hit(entry) => {
            assert_eq!(entry.version.as_deref(), Some(WRITES.to_string().as_str()))
        }
        Lookup::Miss(_) => {}
        Lookup::Unavailable => panic!("the shared Redis is up"),
    }
    let refused = refused.load(Ordering::Relaxed);
    println!("{reads} reads over {WRITES} writes; {refused} stale fills refused");
    assert!(
        reads > WRITES,
        "the readers raced the writer: {reads} reads"
    );
    assert!(
        refused > 0,
        "the race happened and was caught: {refused} fills refused"
    );
}

#[tokio::test]
async fn a_cache_that_is_off_never_touches_redis() {
    let cache = Cache::new(
        "agents",
        mosaic_cache::CacheConfig {
            ttl: Duration::ZERO,
            ..cache_config()
        },
        handle(RedisConfig::single("redis://127.0.0.1:1")),
    );
    let key = cache.platform_key("pubkey", "k");
    assert!(matches!(cache.get(&key).await, Lookup::Unavailable));
    assert_eq!(cache.invalidate(&key).await, Invalidated::Done);
}
