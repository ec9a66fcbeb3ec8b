//! TailMessages: replay, then follow, with no gap and no duplicate.
//!
//! 1. Open a change stream of the conversation's inserts first (it starts
//!    now), then replay the stored messages after the cursor in `seq` order.
//!    A message committed before the stream opened is in the replay; one
//!    committed after is in the stream, and, if the replay also saw it,
//!    dropped from the stream by id (only messages created in the last
//!    minute are remembered for that: older ones cannot be in a stream that
//!    opened after the replay began).
//! 2. Follow the stream. Each message goes out with a cursor: `seq` during
//!    the replay, the change stream's resume token while following, so a
//!    client that reconnects with its last cursor resumes exactly after the
//!    message it last received (a resume token resumes the stream itself).
//!
//! Memory is bounded: at most [`BUFFER`] messages wait for a slow client;
//! while the buffer is full the server stops reading the change stream (the
//! backlog stays in MongoDB), and a client that has not read for
//! [`STALL_MS`] (30 s) is ended with ABORTED `TAIL_BEHIND` after the
//! messages already buffered (reconnect with the last cursor). On
//! shutdown the stream ends at once with UNAVAILABLE. A tail lives no longer
//! than the token it was opened with: when the token runs out the stream ends
//! with UNAUTHENTICATED `TOKEN_EXPIRED` (reconnect with a fresh token and the
//! last cursor), so access that ended is not kept open by a stream.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use mosaic_api::{ApiError, ApiResult, page};
use mosaic_core::TenantId;
use mosaic_mongo::{ResumeToken, token_from_json, token_to_json};
use mosaic_proto::conversations::TailMessagesResponse;
use mosaic_server::Shutdown;
use mosaic_tenant::TenantContext;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::ids::{ConversationId, ThreadId};
use crate::messages::message_proto;
use crate::store::{MessageRecord, Store, now};

/// Messages held for a slow client.
pub const BUFFER: usize = 64;
/// `MOSAIC_CONVERSATIONS_TAIL_STALL_MS`: how long a client may leave the
/// buffer full before its tail is ended (default 30000).
pub const STALL_MS: &str = "MOSAIC_CONVERSATIONS_TAIL_STALL_MS";
pub const DEFAULT_STALL_MS: u64 = 30_000;
/// Reason of ABORTED for a client that stopped reading.
pub const TAIL_BEHIND: &str = "TAIL_BEHIND";
/// Messages read per replay query.
const REPLAY_PAGE: i64 = 200;
/// How far back the replay remembers ids to drop from the stream.
const OVERLAP: chrono::Duration = chrono::Duration::seconds(60);

/// What TailMessages answers.
pub type TailStream = Pin<Box<dyn Stream<Item = Result<TailMessagesResponse, Status>> + Send>>;

/// A tail cursor (inside an authenticated, conversation-bound token).
#[derive(Debug, Serialize, Deserialize)]
enum Cursor {
    /// After the message with this `seq` (replay).
    #[serde(rename = "s")]
    Seq(i64),
    /// After the change stream event with this resume token (follow).
    #[serde(rename = "r")]
    Resume(serde_json::Value),
}

/// Where a tail starts.
#[derive(Debug)]
pub enum Start {
    /// Replay after this `seq` (0: from the start), then follow.
    Seq(i64),
    /// Follow from just after this change stream event.
    Resume(ResumeToken),
}

fn binding(
    tenant: TenantId,
    conversation: ConversationId,
    thread: Option<ThreadId>,
) -> page::PageBinding {
    page::PageBinding::new("TailMessages")
        .with(tenant)
        .with(conversation)
        .with(thread.map(|t| t.to_string()).unwrap_or_default())
}

/// A request's `cursor`: from the start when empty.
pub fn decode_cursor(
    tenant: TenantId,
    conversation: ConversationId,
    thread: Option<ThreadId>,
    raw: &str,
) -> ApiResult<Start> {
    let bad = || {
        ApiError::invalid_argument(
            "cursor",
            "not a cursor issued for this conversation and thread",
        )
    };
    match page::decode::<Cursor>(&binding(tenant, conversation, thread), raw).map_err(|_| bad())? {
        None => Ok(Start::Seq(0)),
        Some(Cursor::Seq(seq)) => Ok(Start::Seq(seq)),
        Some(Cursor::Resume(json)) => token_from_json(json).map(Start::Resume).ok_or_else(bad),
    }
}

/// Starts the tail; the returned stream ends when the client goes, the
/// server drains, or the tail fails.
pub fn start(
    store: Store,
    ctx: TenantContext,
    conversation: ConversationId,
    thread: Option<ThreadId>,
    from: Start,
    stop: Shutdown,
    stall: Duration,
) -> TailStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    let (end_tx, end_rx) = oneshot::channel::<Status>();
    tokio::spawn(async move {
        let mut tail = Tailer {
            store,
            ctx,
            conversation,
            thread,
            tx,
            stop,
            stall,
        };
        let token_left = tail.ctx.token_valid_for().unwrap_or(Duration::MAX);
        let ended = tokio::select! {
            ended = tail.run(from) => ended,
            () = sleep_for(token_left) => Some(token_expired()),
        };
        if let Some(end) = ended {
            let _ = end_tx.send(end);
        }
    });
    let end = futures::stream::once(async move { end_rx.await.ok().map(Err) })
        .filter_map(std::future::ready);
    Box::pin(ReceiverStream::new(rx).map(Ok).chain(end))
}

struct Tailer {
    store: Store,
    ctx: TenantContext,
    conversation: ConversationId,
    thread: Option<ThreadId>,
    tx: mpsc::Sender<TailMessagesResponse>,
    stop: Shutdown,
    stall: Duration,
}

/// Why sending stopped: the status to end with, or `None` when the client left.
type Ended = Option<Status>;

fn token_expired() -> Status {
    ApiError::unauthenticated(
        "TOKEN_EXPIRED",
        "the token this tail was opened with has expired; reconnect with a fresh one and the last cursor",
    )
    .into()
}

/// Sleeps for `d`, or for ever when `d` is too long for the timer.
async fn sleep_for(d: Duration) {
    match tokio::time::Instant::now().checked_add(d) {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn shutting_down() -> Status {
    ApiError::unavailable(
        "SHUTTING_DOWN",
        "the server is shutting down; reconnect with the last cursor",
    )
    .into()
}

impl Tailer {
    async fn send(&self, message: MessageRecord, cursor: Cursor) -> Result<(), Ended> {
        let tenant = self.ctx.tenant_id().map_err(|e| Some(e.into()))?;
        let item = TailMessagesResponse {
            cursor: page::encode(&binding(tenant, self.conversation, self.thread), &cursor),
            message: Some(message_proto(message)),
        };
        tokio::select! {
            () = self.stop.cancelled() => Err(Some(shutting_down())),
            sent = tokio::time::timeout(self.stall, self.tx.send(item)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(None),
                Err(_) => Err(Some(ApiError::aborted(
                    TAIL_BEHIND,
                    "the client stopped reading; reconnect with the last cursor",
                ).into())),
            },
        }
    }

    async fn run(&mut self, from: Start) -> Ended {
        match self.tail(from).await {
            Ok(ended) | Err(ended) => ended,
        }
    }

    async fn tail(&mut self, from: Start) -> Result<Ended, Ended> {
        let fail = |e: ApiError| Some(Status::from(e));
        let mut replayed = HashSet::new();
        let mut stream = match from {
            Start::Resume(token) => self
                .store
                .follow(&self.ctx, self.conversation, self.thread, Some(token))
                .await
                .map_err(fail)?,
            Start::Seq(mut after) => {
                // Open first, so nothing committed during the replay is missed.
                let stream = self
                    .store
                    .follow(&self.ctx, self.conversation, self.thread, None)
                    .await
                    .map_err(fail)?;
                let overlap = now() - OVERLAP;
                loop {
                    let page = self
                        .store
                        .list_messages(
                            &self.ctx,
                            self.conversation,
                            self.thread,
                            after,
                            REPLAY_PAGE,
                        )
                        .await
                        .map_err(fail)?;
                    let full = page.len() as i64 == REPLAY_PAGE;
                    for m in page {
                        after = m.seq;
                        if m.created_at >= overlap {
                            replayed.insert(m.id);
                        }
                        self.send(m, Cursor::Seq(after)).await?;
                    }
                    if !full {
                        break;
                    }
                }
                stream
            }
        };
        loop {
            let event = tokio::select! {
                () = self.stop.cancelled() => return Err(Some(shutting_down())),
                event = stream.next() => event,
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(fail(e)),
                None => return Err(Some(shutting_down())),
            };
            let message = MessageRecord::from_doc(&event.document).map_err(fail)?;
            if replayed.remove(&message.id) {
                continue;
            }
            self.send(message, Cursor::Resume(token_to_json(&event.token)))
                .await?;
        }
    }
}
