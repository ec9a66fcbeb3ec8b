//! GetAgent and LookupAgentByPublicKey through the Redis cache: never stale
//! after an acknowledged write (concurrent readers and writers), never
//! another tenant's, and a Redis outage costs the cache and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mosaic_proto::agents::{
    Agent, GetAgentRequest, LookupAgentByPublicKeyRequest, RotatePublicKeyRequest,
    UpdateAgentRequest, agent_service_client::AgentServiceClient,
};
use prost_types::FieldMask;
use tonic::Code;
use tonic::transport::Channel;

use crate::agents_support::{AgentsTenant, agents, edge_token};
use crate::harness::{app, assert_error, authed, suite_with};
use crate::redis_support::{RedisServer, TempDir};

fn get(id: &str) -> GetAgentRequest {
    GetAgentRequest {
        agent_id: id.into(),
    }
}

fn rename(id: &str, name: String) -> UpdateAgentRequest {
    UpdateAgentRequest {
        agent: Some(Agent {
            agent_id: id.into(),
            display_name: name,
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["display_name".into()],
        }),
    }
}

/// The version a reader saw: agents are named `v<n>`.
fn version(agent: &Agent) -> u64 {
    agent.display_name[1..].parse().expect("a v<n> name")
}

/// The cached value of `key`, read behind the service's back.
async fn cached(redis_url: &str, key: &str) -> Option<Vec<u8>> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn config_key(t: &AgentsTenant, agent: &str) -> String {
    format!("mosaic:{{{}}}:agents:config:{agent}", t.id)
}

fn shared_redis() -> String {
    crate::redis_support::shared_redis_url()
}

#[tokio::test]
async fn every_read_after_an_acknowledged_update_sees_it_or_newer() {
    const AGENTS: usize = 3;
    const WRITES: u64 = 40;
    let t = AgentsTenant::new().await;
    let mut ids = Vec::new();
    for _ in 0..AGENTS {
        ids.push(t.agent("v0").await.agent_id);
    }
    let ids = Arc::new(ids);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..AGENTS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = (0..AGENTS)
        .map(|i| {
            let (ids, acked) = (ids.clone(), acked.clone());
            tokio::spawn(async move {
                for n in 1..=WRITES {
                    agents()
                        .update_agent(t.req(rename(&ids[i], format!("v{n}"))))
                        .await
                        .unwrap();
                    acked[i].store(n, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..8)
        .map(|r| {
            let (ids, acked, done) = (ids.clone(), acked.clone(), done.clone());
            tokio::spawn(async move {
                let mut client = agents();
                let token = t.token("viewer");
                let (mut reads, mut stale) = (0u64, Vec::new());
                let mut i = r % AGENTS;
                while !done.load(Ordering::SeqCst) {
                    let floor = acked[i].load(Ordering::SeqCst);
                    let agent = client
                        .get_agent(authed(get(&ids[i]), &token))
                        .await
                        .unwrap()
                        .into_inner();
                    if version(&agent) < floor {
                        stale.push((i, version(&agent), floor));
                    }
                    reads += 1;
                    i = (i + 1) % AGENTS;
                }
                (reads, stale)
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (mut reads, mut stale) = (0, Vec::new());
    for reader in readers {
        let (n, s) = reader.await.unwrap();
        reads += n;
        stale.extend(s);
    }
    assert!(
        stale.is_empty(),
        "{} reads older than an acknowledged update; the first (agent, seen, acknowledged): {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    assert!(reads > 200, "the readers raced the writers: {reads} reads");
    // The reads went through the cache: after one more read each agent's
    // latest version is the cached one.
    for (i, id) in ids.iter().enumerate() {
        let agent = agents()
            .get_agent(t.req(get(id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(version(&agent), WRITES, "agent {i}");
        let again = agents()
            .get_agent(t.req(get(id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, agent);
        assert!(
            cached(&shared_redis(), &config_key(&t, id)).await.is_some(),
            "agent {i} is cached"
        );
    }
    println!(
        "{reads} reads raced {} acknowledged updates",
        WRITES * AGENTS as u64
    );
}

#[tokio::test]
async fn a_cached_agent_is_served_only_to_its_tenant() {
    let (a, b) = (AgentsTenant::new().await, AgentsTenant::new().await);
    let agent = a.agent("A's").await;
    // Cached under A's tenant.
    agents()
        .get_agent(a.req(get(&agent.agent_id)))
        .await
        .unwrap();
    agents()
        .get_agent(a.req(get(&agent.agent_id)))
        .await
        .unwrap();
    assert!(
        cached(&shared_redis(), &config_key(&a, &agent.agent_id))
            .await
            .is_some()
    );
    let err = agents()
        .get_agent(b.req(get(&agent.agent_id)))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "AGENT_NOT_FOUND");
    assert!(
        cached(&shared_redis(), &config_key(&b, &agent.agent_id))
            .await
            .is_none(),
        "nothing of A's is kept under B's key"
    );
}

/// A Redis of the test's own, hung (SIGSTOP) mid-test: reads and lookups go
/// on from PostgreSQL without waiting for it once the breaker is open; an
/// update made meanwhile is never hidden by the entry cached before, also
/// once Redis answers again with that entry still in it.
#[tokio::test]
async fn a_hung_redis_costs_the_cache_and_nothing_else() {
    let dir = TempDir::new("agents-outage");
    let redis = RedisServer::start(&dir);
    let env = app()
        .env
        .clone()
        .with("MOSAIC_REDIS_URL", redis.url())
        .with("MOSAIC_REDIS_TIMEOUT_MS", "500")
        .with("MOSAIC_REDIS_PROBE_INTERVAL_MS", "100")
        // Every call would need Redis for its rate limit too.
        .with("MOSAIC_RATE_LIMIT_BURST", "1");
    let channel: Channel = suite_with(env).await;
    let client = || AgentServiceClient::new(channel.clone());

    let t = AgentsTenant::new().await;
    let agent = t.agent("v1").await;
    let id = agent.agent_id.clone();
    let key = agents()
        .rotate_public_key(t.req(RotatePublicKeyRequest {
            agent_id: id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .public_key;
    let lookup = || {
        authed(
            LookupAgentByPublicKeyRequest {
                public_key: key.clone(),
            },
            &edge_token(),
        )
    };
    client().get_agent(t.req(get(&id))).await.unwrap();
    client().get_agent(t.req(get(&id))).await.unwrap();
    client().lookup_agent_by_public_key(lookup()).await.unwrap();
    assert!(cached(&redis.url(), &config_key(&t, &id)).await.is_some());

    redis.freeze();
    // The first calls wait the timeout and open the breaker.
    for _ in 0..5 {
        client().get_agent(t.req(get(&id))).await.unwrap();
    }
    let mut took = Vec::new();
    for i in 0..100 {
        let start = Instant::now();
        if i % 2 == 0 {
            client().get_agent(t.req(get(&id))).await.unwrap();
        } else {
            client().lookup_agent_by_public_key(lookup()).await.unwrap();
        }
        took.push(start.elapsed());
    }
    took.sort();
    let p99 = took[98];
    println!(
        "GetAgent / lookup with Redis hung: p50 {:?}, p99 {p99:?}",
        took[50]
    );
    assert!(
        p99 < Duration::from_millis(250),
        "no call waits the 500 ms Redis timeout: p99 {p99:?}"
    );

    // An update while Redis is hung: its invalidation waits in the process.
    client()
        .update_agent(t.req(rename(&id, "v2".into())))
        .await
        .unwrap();
    let during = client()
        .get_agent(t.req(get(&id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(during.display_name, "v2");

    // Redis answers again, still holding the v1 entry; the process deletes
    // it before it reads from Redis again, so every read says v2 until the
    // cache holds v2 (filled again).
    redis.thaw();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = client()
            .get_agent(t.req(get(&id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            read.display_name, "v2",
            "the entry cached before the update is never served"
        );
        let entry = cached(&redis.url(), &config_key(&t, &id)).await;
        if entry.is_some_and(|bytes| String::from_utf8_lossy(&bytes).contains("v2")) {
            break;
        }
        assert!(Instant::now() < deadline, "the cache did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        let read = client()
            .get_agent(t.req(get(&id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.display_name, "v2");
    }
    client().lookup_agent_by_public_key(lookup()).await.unwrap();
}
