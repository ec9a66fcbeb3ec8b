//! Exactly-once charging of AI usage: charged at append, short balances,
//! billing unreachable and back, duplicate delivery, and a process killed
//! between storing a message and charging it.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mosaic_proto::billing::{EntryKind, GetAccountRequest, ListLedgerRequest};
use mosaic_proto::conversations::{AppendMessageRequest, ChargeState, GetMessageRequest, Message};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::billing_support::credits;
use crate::conversations_support::{ConvTenant, ai_message, messages, messages_on};
use crate::harness::{app, suite_with};

/// `default=1:2` per 1,000 tokens: 1,500 in and 500 out cost 3 credits.
const IN: i64 = 1500;
const OUT: i64 = 500;
const COST: i64 = 3;

async fn balance(t: &ConvTenant) -> i64 {
    credits()
        .get_account(t.req(GetAccountRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .balance
}

/// The tenant's consumption entries in the ledger.
async fn consumptions(t: &ConvTenant) -> Vec<mosaic_proto::billing::LedgerEntry> {
    credits()
        .list_ledger(t.req(ListLedgerRequest {
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.kind == EntryKind::Consumption as i32)
        .collect()
}

fn ai_append(conversation_id: &str, text: &str) -> AppendMessageRequest {
    AppendMessageRequest {
        conversation_id: conversation_id.to_owned(),
        message: Some(ai_message(text, IN, OUT)),
    }
}

async fn get(channel: Channel, t: &ConvTenant, m: &Message) -> Message {
    messages_on(channel)
        .get_message(t.req(GetMessageRequest {
            conversation_id: m.conversation_id.clone(),
            message_id: m.message_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
}

/// Polls until every message's charge left PENDING, or panics after `within`.
async fn settled(
    channel: Channel,
    t: &ConvTenant,
    ms: &[Message],
    within: Duration,
) -> Vec<Message> {
    let started = Instant::now();
    loop {
        let mut now = Vec::new();
        for m in ms {
            now.push(get(channel.clone(), t, m).await);
        }
        if now
            .iter()
            .all(|m| m.charge.as_ref().unwrap().state != ChargeState::Pending as i32)
        {
            return now;
        }
        assert!(
            started.elapsed() < within,
            "still pending after {within:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn ai_usage_is_charged_once_at_append() {
    let t = ConvTenant::with_credits(100).await;
    let c = t.start().await;
    let req = ai_append(&c.conversation_id, "an answer");
    let m = messages()
        .append_message(t.req(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let charge = m.charge.clone().unwrap();
    assert_eq!(charge.state, ChargeState::Charged as i32, "{charge:?}");
    assert_eq!(charge.credits, COST);
    assert!(!charge.ledger_entry_id.is_empty());
    // A retry returns the first message and charges nothing more.
    let again = messages()
        .append_message(t.req(req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.message_id, m.message_id);
    assert_eq!(balance(&t).await, 100 - COST);
    let entries = consumptions(&t).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].idempotency_key, format!("msg:{}", m.message_id));
    assert_eq!(entries[0].entry_id, charge.ledger_entry_id);
    // A message without usage costs nothing and carries no charge.
    assert!(t.append(&c, "free").await.charge.is_none());
}

#[tokio::test]
async fn a_short_balance_is_final_and_charges_nothing() {
    let t = ConvTenant::with_credits(2).await;
    let c = t.start().await;
    let m = messages()
        .append_message(t.req(ai_append(&c.conversation_id, "too dear")))
        .await
        .unwrap()
        .into_inner();
    let charge = m.charge.unwrap();
    assert_eq!(charge.state, ChargeState::InsufficientCredits as i32);
    assert_eq!(charge.reason, "INSUFFICIENT_CREDITS");
    assert_eq!(balance(&t).await, 2);
    assert!(consumptions(&t).await.is_empty());
    // A tenant without an account has no credits either.
    let poor = ConvTenant::new().await;
    let pc = poor.start().await;
    let m = messages()
        .append_message(poor.req(ai_append(&pc.conversation_id, "no account")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        m.charge.unwrap().state,
        ChargeState::InsufficientCredits as i32
    );
}

/// A TCP forwarder to `target` that refuses connections (closes them at
/// once) while down.
struct Switch {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Switch {
    async fn to(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(false));
        let gate = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !gate.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, up }
    }
}

/// A database of its own on the test MongoDB server, so that only the suite
/// under test sweeps its charges.
fn own_mongo_db() -> String {
    let url = crate::harness::mongo_url();
    let server = url.rsplit_once('/').unwrap().0;
    format!("{server}/mosaic_test_{}", Uuid::now_v7().simple())
}

#[tokio::test]
async fn charges_made_while_billing_is_down_are_made_once_when_it_is_back() {
    let t = ConvTenant::with_credits(100).await;
    let billing = Switch::to(app().addr).await;
    let channel = suite_with(
        app()
            .env
            .clone()
            .with("MOSAIC_CONVERSATIONS_MONGODB_URL", own_mongo_db())
            .with(
                "MOSAIC_BILLING_GRPC_URL",
                format!("http://127.0.0.1:{}", billing.port),
            )
            .with("MOSAIC_CONVERSATIONS_CHARGE_TIMEOUT_MS", "300"),
    )
    .await;
    let c = t.start_on(channel.clone()).await;
    let mut appended = Vec::new();
    for i in 0..5 {
        let m = messages_on(channel.clone())
            .append_message(t.req(ai_append(&c.conversation_id, &format!("while down {i}"))))
            .await
            .expect("appends succeed while billing is down")
            .into_inner();
        assert_eq!(
            m.charge.as_ref().unwrap().state,
            ChargeState::Pending as i32
        );
        appended.push(m);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        balance(&t).await,
        100,
        "nothing charged while billing is down"
    );

    billing.up.store(true, Ordering::SeqCst);
    let after = settled(channel.clone(), &t, &appended, Duration::from_secs(30)).await;
    for m in &after {
        let charge = m.charge.as_ref().unwrap();
        assert_eq!(charge.state, ChargeState::Charged as i32, "{charge:?}");
        assert!(
            charge.attempt_count >= 2,
            "charged by the sweeper: {charge:?}"
        );
    }
    assert_eq!(balance(&t).await, 100 - 5 * COST);
    assert_eq!(consumptions(&t).await.len(), 5);
}

#[tokio::test]
async fn a_duplicate_delivery_is_charged_once() {
    let t = ConvTenant::with_credits(50).await;
    let c = t.start().await;
    let m = messages()
        .append_message(t.req(ai_append(&c.conversation_id, "twice delivered")))
        .await
        .unwrap()
        .into_inner();
    let first = m.charge.clone().unwrap();
    assert_eq!(first.state, ChargeState::Charged as i32);
    // The charge is handed to the sweeper again, as if its settlement had
    // been lost: billing sees the same key a second time.
    let db = crate::conversations_support::raw_db().await;
    db.collection::<mongodb::bson::Document>("messages")
        .update_one(
            doc! { "_id": &m.message_id },
            doc! { "$set": {
                "charge.state": "pending",
                "charge.ledger_entry_id": null,
                "charge.due_at": mongodb::bson::DateTime::now(),
            } },
        )
        .await
        .unwrap();
    let after = settled(
        app().channel(),
        &t,
        std::slice::from_ref(&m),
        Duration::from_secs(20),
    )
    .await;
    let charge = after[0].charge.clone().unwrap();
    assert_eq!(charge.state, ChargeState::Charged as i32);
    assert_eq!(
        charge.ledger_entry_id, first.ledger_entry_id,
        "billing answered with the first entry"
    );
    assert_eq!(balance(&t).await, 50 - COST);
    assert_eq!(consumptions(&t).await.len(), 1);
}

#[tokio::test]
async fn a_process_killed_between_store_and_charge_is_charged_once_after_restart() {
    let t = ConvTenant::with_credits(40).await;
    let mongo = own_mongo_db();
    // Billing that accepts connections and never answers: the append stores
    // the message, then waits on billing, and is killed there.
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hang.accept().await {
            held.push(socket);
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mosaic"));
    command.arg("serve");
    for name in [
        "MOSAIC_JWT_HS256_SECRET",
        "MOSAIC_JWT_ISSUER",
        "MOSAIC_RATE_LIMIT_PER_SECOND",
        "MOSAIC_PROBE_INTERVAL_MS",
        // The suite's vault keyring: the data keys in the test database are
        // wrapped by one of its keys.
        "MOSAIC_VAULT_MASTER_KEY",
        "MOSAIC_VAULT_MASTER_KEY_FILE",
        "MOSAIC_VAULT_PREVIOUS_MASTER_KEYS",
    ] {
        command.env(name, app().env.get(name).unwrap().unwrap_or_default());
    }
    command.env("MOSAIC_JWT_PUBLIC_KEY", "");
    let mut child = command
        .env("MOSAIC_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("MOSAIC_METRICS_ADDR", "off")
        .env("MOSAIC_LOG", "warn")
        .env("MOSAIC_DB_MAX_CONNECTIONS", "2")
        .env("MOSAIC_DB_READ_CONNECTIONS", "1")
        .env("MOSAIC_CONVERSATIONS_MONGODB_URL", &mongo)
        .env(
            "MOSAIC_BILLING_GRPC_URL",
            format!("http://127.0.0.1:{hang_port}"),
        )
        .env("MOSAIC_CONVERSATIONS_CHARGE_TIMEOUT_MS", "60000")
        .env("MOSAIC_CONVERSATIONS_CHARGE_GRACE_MS", "1000")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let started = Instant::now();
    let c = loop {
        match crate::conversations_support::conversations_on(channel.clone())
            .start_conversation(
                t.req(mosaic_proto::conversations::StartConversationRequest {
                    conversation: Some(t.new_conversation()),
                    request_id: String::new(),
                }),
            )
            .await
        {
            Ok(c) => break c.into_inner(),
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the child never served: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let req = ai_append(&c.conversation_id, "killed mid-charge");
    let client_id = req.message.as_ref().unwrap().client_message_id.clone();
    let in_flight = {
        let (channel, req) = (channel.clone(), t.req(req.clone()));
        tokio::spawn(async move { messages_on(channel).append_message(req).await })
    };
    // Kill it once the message is stored (the append is then waiting on billing).
    let client = mongodb::Client::with_uri_str(&mongo).await.unwrap();
    let stored = client
        .default_database()
        .unwrap()
        .collection::<mongodb::bson::Document>("messages");
    let waited = Instant::now();
    while stored
        .find_one(doc! { "client_message_id": &client_id })
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "the message was never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    child.wait().await.unwrap();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the killed append never answered"
    );
    assert_eq!(balance(&t).await, 40);

    // The next start (a suite on the same database, billing reachable):
    // its sweeper finishes the charge; the client's retry then returns the
    // message, charged once.
    let next = suite_with(
        app()
            .env
            .clone()
            .with("MOSAIC_CONVERSATIONS_MONGODB_URL", &mongo),
    )
    .await;
    let stored = stored
        .find_one(doc! { "client_message_id": &client_id })
        .await
        .unwrap()
        .unwrap();
    let pending = Message {
        message_id: stored.get_str("_id").unwrap().to_owned(),
        conversation_id: c.conversation_id.clone(),
        ..Default::default()
    };
    let after = settled(
        next.clone(),
        &t,
        std::slice::from_ref(&pending),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        after[0].charge.as_ref().unwrap().state,
        ChargeState::Charged as i32
    );
    let retried = messages_on(next)
        .append_message(t.req(req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.message_id, pending.message_id);
    assert_eq!(balance(&t).await, 40 - COST);
    assert_eq!(consumptions(&t).await.len(), 1);
}
