//! Helper of `tests/bench/conversations.sh` (not a test, not shipped):
//!
//! ```text
//! conversations_bench ADDR TOKEN AGENT MONGO_URL CONC N
//! ```
//!
//! Against the suite on ADDR (a tenant owner's TOKEN, an enabled AGENT of
//! that tenant) and, for the baselines, the raw `mongodb` driver on the same
//! MongoDB server (MONGO_URL, a database of its own with the same indexes as
//! the service's `messages`), with CONC tasks each:
//!
//! 1. appends: N raw `insert_one`s of a message-shaped document vs N
//!    AppendMessage calls (each task its own conversation, a fresh client id
//!    per call, no AI usage), in alternating rounds (a MongoDB-wire server
//!    may slow down as it grows; alternating spreads that over both); and a
//!    third side, the raw driver doing the two commands a checked append
//!    needs: the conditional `find_one_and_update` of the conversation
//!    (ACTIVE, `$inc` of its next seq and count, returning the seq) and then
//!    the `insert_one`;
//! 2. pages: one page of 50 of one conversation, the raw `find` (tenant,
//!    conversation, seq > 0, sorted by seq, limit 51) vs ListMessages
//!    (page_size 50), for the same number of calls, alternating;
//! 3. tail latency: a tail opened on a conversation, then 200 appends one
//!    after another; for each, the time from the append's acknowledgement
//!    to the message's arrival on the tail (p50, p99).
//!
//! Prints `key=value` lines for the script to read.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mosaic_proto::conversations::{
    AppendMessageRequest, Channel as ConvChannel, Conversation, ListMessagesRequest, Message,
    MessageType, SenderType, StartConversationRequest, TailMessagesRequest,
    conversation_service_client::ConversationServiceClient,
    message_service_client::MessageServiceClient,
};
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ROUNDS: usize = 4;

fn request<T>(message: T, token: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

fn text(content: &str) -> Message {
    Message {
        client_message_id: format!("b-{}", Uuid::now_v7().simple()),
        sender_type: SenderType::User as i32,
        sender_id: "visitor".into(),
        message_type: MessageType::Text as i32,
        content: content.into(),
        ..Default::default()
    }
}

/// A document shaped like the service's stored message.
fn raw_message(tenant: &str, conversation: &str, seq: i64) -> Document {
    doc! {
        "tenant_id": tenant,
        "_id": Uuid::now_v7().to_string(),
        "conversation_id": conversation,
        "thread_id": null,
        "seq": seq,
        "client_message_id": format!("b-{}", Uuid::now_v7().simple()),
        "sender_type": "user",
        "sender_id": "visitor",
        "message_type": "text",
        "content": "a question about my order",
        "metadata": "{}",
        "usage": null,
        "charge": null,
        "created_at": mongodb::bson::DateTime::now(),
    }
}

async fn start(channel: Channel, token: &str, agent: &str) -> Result<String> {
    Ok(ConversationServiceClient::new(channel)
        .start_conversation(request(
            StartConversationRequest {
                conversation: Some(Conversation {
                    agent_id: agent.to_owned(),
                    channel: ConvChannel::Chat as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            token,
        )?)
        .await?
        .into_inner()
        .conversation_id)
}

/// Runs `per_task` calls on each of `conc` tasks; returns the seconds taken.
async fn run<F, Fut>(conc: usize, per_task: usize, call: F) -> Result<f64>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|task| {
            let call = call.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    call(task, i).await?;
                }
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, token, agent, mongo_url, conc, n] = args.as_slice() else {
        return Err("usage: conversations_bench ADDR TOKEN AGENT MONGO_URL CONC N".into());
    };
    let (conc, n): (usize, usize) = (conc.parse()?, n.parse()?);
    let per_round = (n / conc / ROUNDS).max(1);
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;

    // The raw side: the same server, a database of its own, the same indexes.
    let client = mongodb::Client::with_uri_str(mongo_url).await?;
    let raw = client
        .default_database()
        .ok_or("MONGO_URL names no database")?
        .collection::<Document>("messages");
    let index = |keys: Document, unique: bool, partial: Option<Document>| {
        IndexModel::builder()
            .keys(keys)
            .options(
                IndexOptions::builder()
                    .unique(unique.then_some(true))
                    .partial_filter_expression(partial)
                    .build(),
            )
            .build()
    };
    raw.create_indexes([
        index(
            doc! { "tenant_id": 1, "conversation_id": 1, "seq": 1 },
            true,
            None,
        ),
        index(
            doc! { "tenant_id": 1, "conversation_id": 1, "thread_id": 1, "seq": 1 },
            false,
            None,
        ),
        index(
            doc! { "tenant_id": 1, "conversation_id": 1, "client_message_id": 1 },
            true,
            None,
        ),
        index(
            doc! { "tenant_id": 1, "charge.due_at": 1 },
            false,
            Some(doc! { "charge.state": "pending" }),
        ),
    ])
    .await?;
    let raw_conversations = client
        .default_database()
        .ok_or("MONGO_URL names no database")?
        .collection::<Document>("conversations");
    let tenant = Uuid::now_v7().to_string();
    for task in 0..conc {
        raw_conversations
            .insert_one(doc! {
                "_id": format!("checked-{task}"),
                "tenant_id": &tenant,
                "status": "active",
                "next_seq": 0_i64,
                "message_count": 0_i64,
                "threads": [],
            })
            .await?;
    }

    // 1. appends
    let mut conversations = Vec::new();
    for _ in 0..conc {
        conversations.push(start(channel.clone(), token, agent).await?);
    }
    let (mut raw_secs, mut checked_secs, mut grpc_secs) = (0.0, 0.0, 0.0);
    for round in 0..ROUNDS {
        let (raw_c, checked, tenant_c) = (raw.clone(), raw_conversations.clone(), tenant.clone());
        checked_secs += run(conc, per_round, move |task, _| {
            let (raw, checked, tenant) = (raw_c.clone(), checked.clone(), tenant_c.clone());
            async move {
                let placed = checked
                    .find_one_and_update(
                        doc! {
                            "tenant_id": &tenant,
                            "_id": format!("checked-{task}"),
                            "status": "active",
                        },
                        doc! { "$inc": { "next_seq": 1_i64, "message_count": 1_i64 } },
                    )
                    .projection(doc! { "next_seq": 1 })
                    .return_document(mongodb::options::ReturnDocument::After)
                    .await?
                    .ok_or("the conversation is not active")?;
                let seq = placed.get_i64("next_seq")?;
                raw.insert_one(raw_message(&tenant, &format!("checked-{task}"), seq))
                    .await?;
                Ok(())
            }
        })
        .await?;
        let (raw, tenant) = (raw.clone(), tenant.clone());
        raw_secs += run(conc, per_round, move |task, i| {
            let (raw, tenant) = (raw.clone(), tenant.clone());
            async move {
                let seq = (round * per_round + i + 1) as i64;
                raw.insert_one(raw_message(&tenant, &format!("raw-{task}"), seq))
                    .await?;
                Ok(())
            }
        })
        .await?;
        let (channel, token, conversations) =
            (channel.clone(), token.clone(), conversations.clone());
        grpc_secs += run(conc, per_round, move |task, _| {
            let (channel, token, conversation) =
                (channel.clone(), token.clone(), conversations[task].clone());
            async move {
                MessageServiceClient::new(channel)
                    .append_message(request(
                        AppendMessageRequest {
                            conversation_id: conversation,
                            message: Some(text("a question about my order")),
                        },
                        &token,
                    )?)
                    .await?;
                Ok(())
            }
        })
        .await?;
    }
    let calls = (conc * per_round * ROUNDS) as f64;
    println!("append_raw_per_s={:.0}", calls / raw_secs);
    println!("append_raw_checked_per_s={:.0}", calls / checked_secs);
    println!("append_grpc_per_s={:.0}", calls / grpc_secs);

    // 2. pages of 50 (every conversation has at least `ROUNDS * per_round` messages).
    let page_calls = per_round.min(250);
    let (mut raw_secs, mut grpc_secs) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        let (raw, tenant) = (raw.clone(), tenant.clone());
        raw_secs += run(conc, page_calls, move |task, _| {
            let (raw, tenant) = (raw.clone(), tenant.clone());
            async move {
                let page: Vec<Document> = raw
                    .find(doc! { "tenant_id": &tenant, "conversation_id": format!("raw-{task}"), "seq": { "$gt": 0_i64 } })
                    .sort(doc! { "seq": 1 })
                    .limit(51)
                    .await?
                    .try_collect()
                    .await?;
                if page.len() < 50 {
                    return Err(format!("raw page of {}", page.len()).into());
                }
                Ok(())
            }
        })
        .await?;
        let (channel, token, conversations) =
            (channel.clone(), token.clone(), conversations.clone());
        grpc_secs += run(conc, page_calls, move |task, _| {
            let (channel, token, conversation) =
                (channel.clone(), token.clone(), conversations[task].clone());
            async move {
                let page = MessageServiceClient::new(channel)
                    .list_messages(request(
                        ListMessagesRequest {
                            conversation_id: conversation,
                            page_size: 50,
                            ..Default::default()
                        },
                        &token,
                    )?)
                    .await?
                    .into_inner();
                if page.messages.len() < 50 {
                    return Err(format!("gRPC page of {}", page.messages.len()).into());
                }
                Ok(())
            }
        })
        .await?;
    }
    let calls = (conc * page_calls * ROUNDS) as f64;
    println!("page_raw_per_s={:.0}", calls / raw_secs);
    println!("page_grpc_per_s={:.0}", calls / grpc_secs);

    // 3. tail latency: acknowledged append -> arrival on an open tail.
    let conversation = start(channel.clone(), token, agent).await?;
    let mut tail = MessageServiceClient::new(channel.clone())
        .tail_messages(request(
            TailMessagesRequest {
                conversation_id: conversation.clone(),
                ..Default::default()
            },
            token,
        )?)
        .await?
        .into_inner();
    let mut messages = MessageServiceClient::new(channel.clone());
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let sent = messages
            .append_message(request(
                AppendMessageRequest {
                    conversation_id: conversation.clone(),
                    message: Some(text("live")),
                },
                token,
            )?)
            .await?
            .into_inner();
        let acked = Instant::now();
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), tail.message())
                .await??
                .ok_or("the tail ended")?;
            if item.message.as_ref().map(|m| &m.message_id) == Some(&sent.message_id) {
                break;
            }
        }
        latencies.push(acked.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    println!("tail_p50_ms={:.2}", percentile(&latencies, 0.5));
    println!("tail_p99_ms={:.2}", percentile(&latencies, 0.99));
    client.database(raw.namespace().db.as_str()).drop().await?;
    Ok(())
}
