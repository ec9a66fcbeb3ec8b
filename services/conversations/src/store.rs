//! The repository: the only code of conversations that reaches MongoDB, and
//! only through [`Fenced`] collections (every command carries the tenant;
//! see `mosaic_mongo`). The handlers see records, never documents.
//!
//! Collections, their indexes and the query each serves (every index starts
//! with `tenant_id`):
//!
//! | collection | index | serves |
//! | --- | --- | --- |
//! | `conversations` | `by_start {tenant_id, started_at: -1, _id: -1}` | ListConversations (no filter or channel), GetConversationStats |
//! | `conversations` | `by_agent {tenant_id, agent_id, started_at: -1, _id: -1}` | ListConversations by agent |
//! | `conversations` | `by_contact {tenant_id, contact_id, started_at: -1, _id: -1}` | ListConversations by contact |
//! | `conversations` | `by_status {tenant_id, status, started_at: -1, _id: -1}` | ListConversations by status |
//! | `conversations` | `by_request {tenant_id, request_id}` unique, partial | StartConversation's idempotent retry |
//! | `messages` | `by_seq {tenant_id, conversation_id, seq}` unique | ListMessages, the tail's replay |
//! | `messages` | `by_thread {tenant_id, conversation_id, thread_id, seq}` | ListMessages and the tail of one thread |
//! | `messages` | `by_client_id {tenant_id, conversation_id, client_message_id}` unique | AppendMessage's idempotency |
//! | `messages` | `pending_charges {tenant_id, charge.due_at}` partial (pending only) | the charge sweeper |
//!
//! Point reads by id use the built-in `_id` index with the tenant (and the
//! conversation) in the filter. Shard keys for a sharded cluster:
//! `conversations` on `{tenant_id: 1}` (the unique `by_request` index must
//! start with the shard key), `messages` on `{tenant_id: 1, conversation_id:
//! 1}` (a prefix of both unique indexes).

use chrono::{DateTime, Utc};
use mosaic_api::{ApiError, ApiResult};
use mosaic_mongo::bson::{Bson, Document, doc};
use mosaic_mongo::{Fenced, IndexSpec, InsertError, Mongo, ResumeToken, Tail};
use mosaic_proto::StoredEnum;
use mosaic_proto::conversations::{
    Channel, ChargeState, ConversationStatus, MessageType, SenderType,
};
use mosaic_tenant::TenantContext;
use uuid::Uuid;

use crate::ids::{ConversationId, MessageId, ThreadId};

/// The most threads a conversation may have.
pub const MAX_THREADS: usize = 100;

/// A conversation as stored.
#[derive(Debug, Clone)]
pub struct ConversationRecord {
    pub id: ConversationId,
    pub agent_id: Uuid,
    pub contact_id: Option<Uuid>,
    pub channel: Channel,
    pub title: String,
    /// JSON object text.
    pub metadata: String,
    pub status: ConversationStatus,
    pub threads: Vec<ThreadRecord>,
    pub message_count: i64,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct ThreadRecord {
    pub id: ThreadId,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub request_id: Option<Uuid>,
}

/// What AI usage a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub response_time_ms: Option<i64>,
}

/// Where charging a message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    pub state: ChargeState,
    pub credits: i64,
    pub ledger_entry_id: Option<String>,
    pub reason: Option<String>,
    pub attempts: i32,
    /// While pending: when the sweeper should try (again).
    pub due_at: Option<DateTime<Utc>>,
}

/// A message as stored.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub thread_id: Option<ThreadId>,
    pub seq: i64,
    pub client_message_id: String,
    pub sender_type: SenderType,
    pub sender_id: String,
    pub message_type: MessageType,
    pub content: String,
    /// JSON object text.
    pub metadata: String,
    pub usage: Option<UsageRecord>,
    pub charge: Option<ChargeRecord>,
    pub created_at: DateTime<Utc>,
}

/// ListConversations' filters.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub channel: Option<Channel>,
    pub status: Option<ConversationStatus>,
    pub agent_id: Option<Uuid>,
    pub contact_id: Option<Uuid>,
    pub started_from: Option<DateTime<Utc>>,
    pub started_to: Option<DateTime<Utc>>,
}

/// One channel's figures over a time range.
#[derive(Debug, Clone)]
pub struct ChannelStatsRow {
    pub channel: Channel,
    pub conversations: i64,
    pub ended: i64,
    pub mean_duration_ms: Option<f64>,
    pub messages: i64,
}

/// How a thread was added.
#[derive(Debug)]
pub enum AddedThread {
    Added(ThreadRecord),
    /// A thread with the request's id exists: the first result.
    Existing(ThreadRecord),
}

/// Why a message could not be given its place.
#[derive(Debug)]
pub enum NoPlace {
    /// No such conversation (or another tenant's).
    NotFound,
    /// The conversation is not ACTIVE.
    NotActive(ConversationStatus),
    /// The thread is not one of the conversation's.
    NoThread,
}

/// The conversations' documents.
#[derive(Debug, Clone)]
pub struct Store {
    conversations: Fenced,
    messages: Fenced,
}

fn index(name: &'static str, keys: Document) -> IndexSpec {
    IndexSpec {
        name,
        keys,
        unique: false,
        partial: None,
    }
}

fn millis(t: DateTime<Utc>) -> Bson {
    Bson::DateTime(mosaic_mongo::bson::DateTime::from_millis(
        t.timestamp_millis(),
    ))
}

/// Now, at the millisecond precision BSON keeps.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

fn corrupt(what: &str) -> ApiError {
    ApiError::internal(format_args!("stored document without a valid {what}"))
}

fn uuid_at(d: &Document, key: &str) -> ApiResult<Uuid> {
    d.get_str(key)
        .ok()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| corrupt(key))
}

fn opt_uuid_at(d: &Document, key: &str) -> ApiResult<Option<Uuid>> {
    match d.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(_) => uuid_at(d, key).map(Some),
    }
}

fn time_at(d: &Document, key: &str) -> ApiResult<DateTime<Utc>> {
    d.get_datetime(key)
        .ok()
        .and_then(|t| DateTime::from_timestamp_millis(t.timestamp_millis()))
        .ok_or_else(|| corrupt(key))
}

fn opt_time_at(d: &Document, key: &str) -> ApiResult<Option<DateTime<Utc>>> {
    match d.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(_) => time_at(d, key).map(Some),
    }
}

fn str_at(d: &Document, key: &str) -> String {
    d.get_str(key).unwrap_or_default().to_owned()
}

fn int_at(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

fn enum_at<E: StoredEnum>(d: &Document, key: &str) -> ApiResult<E> {
    d.get_str(key)
        .ok()
        .and_then(E::from_stored)
        .ok_or_else(|| corrupt(key))
}

fn opt(value: Option<impl Into<Bson>>) -> Bson {
    value.map_or(Bson::Null, Into::into)
}

impl ThreadRecord {
    fn to_doc(&self) -> Document {
        doc! {
            "id": self.id.to_string(),
            "title": &self.title,
            "created_at": millis(self.created_at),
            "request_id": opt(self.request_id.map(|r| r.to_string())),
        }
    }

    fn from_doc(d: &Document) -> ApiResult<Self> {
        Ok(Self {
            id: uuid_at(d, "id")?.into(),
            title: str_at(d, "title"),
            created_at: time_at(d, "created_at")?,
            request_id: opt_uuid_at(d, "request_id")?,
        })
    }
}

impl ConversationRecord {
    fn from_doc(d: &Document) -> ApiResult<Self> {
        let threads = d
            .get_array("threads")
            .map(|items| {
                items
                    .iter()
                    .filter_map(Bson::as_document)
                    .map(ThreadRecord::from_doc)
                    .collect::<ApiResult<Vec<_>>>()
            })
            .unwrap_or_else(|_| Ok(Vec::new()))?;
        Ok(Self {
            id: uuid_at(d, "_id")?.into(),
            agent_id: uuid_at(d, "agent_id")?,
            contact_id: opt_uuid_at(d, "contact_id")?,
            channel: enum_at(d, "channel")?,
            title: str_at(d, "title"),
            metadata: str_at(d, "metadata"),
            status: enum_at(d, "status")?,
            threads,
            message_count: int_at(d, "message_count"),
            started_at: time_at(d, "started_at")?,
            ended_at: opt_time_at(d, "ended_at")?,
            archived_at: opt_time_at(d, "archived_at")?,
        })
    }
}

impl UsageRecord {
    fn to_doc(&self) -> Document {
        doc! {
            "model": &self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "response_time_ms": opt(self.response_time_ms),
        }
    }

    fn from_doc(d: &Document) -> Self {
        Self {
            model: str_at(d, "model"),
            input_tokens: int_at(d, "input_tokens"),
            output_tokens: int_at(d, "output_tokens"),
            response_time_ms: d.get("response_time_ms").and_then(|v| match v {
                Bson::Int64(n) => Some(*n),
                Bson::Int32(n) => Some(i64::from(*n)),
                _ => None,
            }),
        }
    }
}

impl ChargeRecord {
    fn to_doc(&self) -> Document {
        doc! {
            "state": self.state.stored_name(),
            "credits": self.credits,
            "ledger_entry_id": opt(self.ledger_entry_id.clone()),
            "reason": opt(self.reason.clone()),
            "attempts": self.attempts,
            "due_at": opt(self.due_at.map(millis)),
        }
    }

    fn from_doc(d: &Document) -> ApiResult<Self> {
        Ok(Self {
            state: enum_at(d, "state")?,
            credits: int_at(d, "credits"),
            ledger_entry_id: d.get_str("ledger_entry_id").ok().map(str::to_owned),
            reason: d.get_str("reason").ok().map(str::to_owned),
            attempts: i32::try_from(int_at(d, "attempts")).unwrap_or(i32::MAX),
            due_at: opt_time_at(d, "due_at")?,
        })
    }
}

impl MessageRecord {
    fn to_doc(&self) -> Document {
        doc! {
            "_id": self.id.to_string(),
            "conversation_id": self.conversation_id.to_string(),
            "thread_id": opt(self.thread_id.map(|t| t.to_string())),
            "seq": self.seq,
            "client_message_id": &self.client_message_id,
            "sender_type": self.sender_type.stored_name(),
            "sender_id": &self.sender_id,
            "message_type": self.message_type.stored_name(),
            "content": &self.content,
            "metadata": &self.metadata,
            "usage": opt(self.usage.as_ref().map(UsageRecord::to_doc)),
            "charge": opt(self.charge.as_ref().map(ChargeRecord::to_doc)),
            "created_at": millis(self.created_at),
        }
    }

    pub(crate) fn from_doc(d: &Document) -> ApiResult<Self> {
        Ok(Self {
            id: uuid_at(d, "_id")?.into(),
            conversation_id: uuid_at(d, "conversation_id")?.into(),
            thread_id: opt_uuid_at(d, "thread_id")?.map(Into::into),
            seq: int_at(d, "seq"),
            client_message_id: str_at(d, "client_message_id"),
            sender_type: enum_at(d, "sender_type")?,
            sender_id: str_at(d, "sender_id"),
            message_type: enum_at(d, "message_type")?,
            content: str_at(d, "content"),
            metadata: str_at(d, "metadata"),
            usage: d.get_document("usage").ok().map(UsageRecord::from_doc),
            charge: match d.get_document("charge") {
                Ok(c) => Some(ChargeRecord::from_doc(c)?),
                Err(_) => None,
            },
            created_at: time_at(d, "created_at")?,
        })
    }
}

const PENDING: &str = "pending";

impl Store {
    /// The collections on `mongo`, with their indexes.
    pub fn new(mongo: &Mongo) -> Self {
        let conversations = mongo.collection(
            "conversations",
            vec![
                index(
                    "by_start",
                    doc! { "tenant_id": 1, "started_at": -1, "_id": -1 },
                ),
                index(
                    "by_agent",
                    doc! { "tenant_id": 1, "agent_id": 1, "started_at": -1, "_id": -1 },
                ),
                index(
                    "by_contact",
                    doc! { "tenant_id": 1, "contact_id": 1, "started_at": -1, "_id": -1 },
                ),
                index(
                    "by_status",
                    doc! { "tenant_id": 1, "status": 1, "started_at": -1, "_id": -1 },
                ),
                IndexSpec {
                    name: "by_request",
                    keys: doc! { "tenant_id": 1, "request_id": 1 },
                    unique: true,
                    partial: Some(doc! { "request_id": { "$type": "string" } }),
                },
            ],
        );
        let messages = mongo.collection(
            "messages",
            vec![
                IndexSpec {
                    name: "by_seq",
                    keys: doc! { "tenant_id": 1, "conversation_id": 1, "seq": 1 },
                    unique: true,
                    partial: None,
                },
                index(
                    "by_thread",
                    doc! { "tenant_id": 1, "conversation_id": 1, "thread_id": 1, "seq": 1 },
                ),
                IndexSpec {
                    name: "by_client_id",
                    keys: doc! { "tenant_id": 1, "conversation_id": 1, "client_message_id": 1 },
                    unique: true,
                    partial: None,
                },
                IndexSpec {
                    name: "pending_charges",
                    keys: doc! { "tenant_id": 1, "charge.due_at": 1 },
                    unique: false,
                    partial: Some(doc! { "charge.state": PENDING }),
                },
            ],
        );
        Self {
            conversations,
            messages,
        }
    }

    // --- conversations ------------------------------------------------------

    /// Stores a new conversation; with a `request_id` already used, returns
    /// the conversation it made instead.
    pub async fn start(
        &self,
        ctx: &TenantContext,
        c: &ConversationRecord,
        request_id: Option<Uuid>,
    ) -> ApiResult<ConversationRecord> {
        let mut d = doc! {
            "_id": c.id.to_string(),
            "agent_id": c.agent_id.to_string(),
            "contact_id": opt(c.contact_id.map(|u| u.to_string())),
            "channel": c.channel.stored_name(),
            "title": &c.title,
            "metadata": &c.metadata,
            "status": c.status.stored_name(),
            "threads": [],
            "next_seq": 0_i64,
            "message_count": 0_i64,
            "started_at": millis(c.started_at),
        };
        if let Some(request_id) = request_id {
            d.insert("request_id", request_id.to_string());
        }
        match self.conversations.insert_one(ctx, d).await {
            Ok(()) => Ok(c.clone()),
            Err(InsertError::Duplicate) => {
                let Some(request_id) = request_id else {
                    return Err(ApiError::internal("duplicate conversation id"));
                };
                self.conversations
                    .find_one(ctx, doc! { "request_id": request_id.to_string() }, None)
                    .await?
                    .as_ref()
                    .map(ConversationRecord::from_doc)
                    .transpose()?
                    .ok_or_else(|| ApiError::aborted("RETRY", "a concurrent start; retry"))
            }
            Err(InsertError::Api(e)) => Err(e),
        }
    }

    pub async fn conversation(
        &self,
        ctx: &TenantContext,
        id: ConversationId,
    ) -> ApiResult<Option<ConversationRecord>> {
        self.conversations
            .find_one(ctx, doc! { "_id": id.to_string() }, None)
            .await?
            .as_ref()
            .map(ConversationRecord::from_doc)
            .transpose()
    }

    /// Up to `limit` conversations, newest first, after `(started_at, id)`.
    pub async fn list_conversations(
        &self,
        ctx: &TenantContext,
        filter: &ConversationFilter,
        after: Option<(DateTime<Utc>, ConversationId)>,
        limit: i64,
    ) -> ApiResult<Vec<ConversationRecord>> {
        let mut f = Document::new();
        if let Some(agent) = filter.agent_id {
            f.insert("agent_id", agent.to_string());
        }
        if let Some(contact) = filter.contact_id {
            f.insert("contact_id", contact.to_string());
        }
        if let Some(status) = filter.status {
            f.insert("status", status.stored_name());
        }
        if let Some(channel) = filter.channel {
            f.insert("channel", channel.stored_name());
        }
        let mut range = Document::new();
        if let Some(from) = filter.started_from {
            range.insert("$gte", millis(from));
        }
        if let Some(to) = filter.started_to {
            range.insert("$lt", millis(to));
        }
        let mut clauses = Vec::new();
        if !range.is_empty() {
            clauses.push(doc! { "started_at": range });
        }
        if let Some((at, id)) = after {
            clauses.push(doc! { "$or": [
                { "started_at": { "$lt": millis(at) } },
                { "started_at": millis(at), "_id": { "$lt": id.to_string() } },
            ] });
        }
        if !clauses.is_empty() {
            f.insert("$and", clauses);
        }
        self.conversations
            .find(ctx, f, doc! { "started_at": -1, "_id": -1 }, limit)
            .await?
            .iter()
            .map(ConversationRecord::from_doc)
            .collect()
    }

    /// Moves the conversation from `from` to `to`, setting `set` too; `None`
    /// when it is not (or no longer) in `from`.
    pub async fn transition(
        &self,
        ctx: &TenantContext,
        id: ConversationId,
        from: ConversationStatus,
        to: ConversationStatus,
        at: DateTime<Utc>,
    ) -> ApiResult<Option<ConversationRecord>> {
        let mut set = doc! { "status": to.stored_name() };
        match to {
            ConversationStatus::Ended => {
                set.insert("ended_at", millis(at));
            }
            ConversationStatus::Archived => {
                set.insert("archived_at", millis(at));
            }
            _ => {}
        }
        self.conversations
            .find_one_and_update(
                ctx,
                doc! { "_id": id.to_string(), "status": from.stored_name() },
                doc! { "$set": set },
                None,
            )
            .await?
            .as_ref()
            .map(ConversationRecord::from_doc)
            .transpose()
    }

    /// Adds `thread` to an ACTIVE conversation with fewer than
    /// [`MAX_THREADS`], in one conditional update; with a request id already
    /// used, returns that thread.
    pub async fn add_thread(
        &self,
        ctx: &TenantContext,
        id: ConversationId,
        thread: &ThreadRecord,
    ) -> ApiResult<Result<AddedThread, Option<ConversationRecord>>> {
        let mut filter = doc! {
            "_id": id.to_string(),
            "status": ConversationStatus::Active.stored_name(),
            format!("threads.{}", MAX_THREADS - 1): { "$exists": false },
        };
        if let Some(request_id) = thread.request_id {
            filter.insert("threads.request_id", doc! { "$ne": request_id.to_string() });
        }
        let updated = self
            .conversations
            .update_one(
                ctx,
                filter,
                doc! { "$push": { "threads": thread.to_doc() } },
            )
            .await?;
        if updated {
            return Ok(Ok(AddedThread::Added(thread.clone())));
        }
        // Why not: explain from the conversation as it is.
        let current = self.conversation(ctx, id).await?;
        if let (Some(c), Some(request_id)) = (&current, thread.request_id)
            && let Some(existing) = c.threads.iter().find(|t| t.request_id == Some(request_id))
        {
            return Ok(Ok(AddedThread::Existing(existing.clone())));
        }
        Ok(Err(current))
    }

    /// Per channel, over conversations started in `[from, to)`.
    pub async fn stats(
        &self,
        ctx: &TenantContext,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ApiResult<Vec<ChannelStatsRow>> {
        let rows = self
            .conversations
            .aggregate(
                ctx,
                vec![
                    doc! { "$match": { "started_at": { "$gte": millis(from), "$lt": millis(to) } } },
                    doc! { "$group": {
                        "_id": "$channel",
                        "conversations": { "$sum": 1 },
                        "ended": { "$sum": { "$cond": [{ "$ifNull": ["$ended_at", false] }, 1, 0] } },
                        "duration_ms": { "$avg": {
                            "$cond": [
                                { "$ifNull": ["$ended_at", false] },
                                { "$subtract": ["$ended_at", "$started_at"] },
                                null,
                            ]
                        } },
                        "messages": { "$sum": "$message_count" },
                    } },
                    doc! { "$sort": { "_id": 1 } },
                ],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ChannelStatsRow {
                    channel: enum_at(r, "_id")?,
                    conversations: int_at(r, "conversations"),
                    ended: int_at(r, "ended"),
                    mean_duration_ms: match r.get("duration_ms") {
                        Some(Bson::Double(d)) => Some(*d),
                        Some(Bson::Int64(n)) => Some(*n as f64),
                        Some(Bson::Int32(n)) => Some(f64::from(*n)),
                        _ => None,
                    },
                    messages: int_at(r, "messages"),
                })
            })
            .collect()
    }

    // --- messages -----------------------------------------------------------

    /// Gives a new message of an ACTIVE conversation its place: one
    /// conditional update that checks the status (and the thread) and takes
    /// the next `seq`, counting the message.
    pub async fn place(
        &self,
        ctx: &TenantContext,
        id: ConversationId,
        thread: Option<ThreadId>,
    ) -> ApiResult<Result<i64, NoPlace>> {
        let mut filter = doc! {
            "_id": id.to_string(),
            "status": ConversationStatus::Active.stored_name(),
        };
        if let Some(thread) = thread {
            filter.insert("threads.id", thread.to_string());
        }
        let placed = self
            .conversations
            .find_one_and_update(
                ctx,
                filter,
                doc! { "$inc": { "next_seq": 1_i64, "message_count": 1_i64 } },
                Some(doc! { "next_seq": 1 }),
            )
            .await?;
        if let Some(d) = placed {
            return Ok(Ok(int_at(&d, "next_seq")));
        }
        Ok(Err(match self.conversation(ctx, id).await? {
            None => NoPlace::NotFound,
            Some(c) if c.status != ConversationStatus::Active => NoPlace::NotActive(c.status),
            Some(_) => NoPlace::NoThread,
        }))
    }

    /// Gives back the count a placed message took when it turned out to be a
    /// retry (the `seq` stays a gap).
    pub async fn unplace(&self, ctx: &TenantContext, id: ConversationId) -> ApiResult<()> {
        self.conversations
            .update_one(
                ctx,
                doc! { "_id": id.to_string() },
                doc! { "$inc": { "message_count": -1_i64 } },
            )
            .await
            .map(drop)
    }

    /// Stores `m`; `false` when the conversation already has a message with
    /// its client message id.
    pub async fn insert_message(&self, ctx: &TenantContext, m: &MessageRecord) -> ApiResult<bool> {
        match self.messages.insert_one(ctx, m.to_doc()).await {
            Ok(()) => Ok(true),
            Err(InsertError::Duplicate) => Ok(false),
            Err(InsertError::Api(e)) => Err(e),
        }
    }

    pub async fn message_by_client_id(
        &self,
        ctx: &TenantContext,
        conversation: ConversationId,
        client_message_id: &str,
    ) -> ApiResult<Option<MessageRecord>> {
        self.messages
            .find_one(
                ctx,
                doc! {
                    "conversation_id": conversation.to_string(),
                    "client_message_id": client_message_id,
                },
                None,
            )
            .await?
            .as_ref()
            .map(MessageRecord::from_doc)
            .transpose()
    }

    pub async fn message(
        &self,
        ctx: &TenantContext,
        conversation: ConversationId,
        id: MessageId,
    ) -> ApiResult<Option<MessageRecord>> {
        self.messages
            .find_one(
                ctx,
                doc! { "_id": id.to_string(), "conversation_id": conversation.to_string() },
                None,
            )
            .await?
            .as_ref()
            .map(MessageRecord::from_doc)
            .transpose()
    }

    /// Up to `limit` messages of the conversation (or one thread) after
    /// `after_seq`, in append order.
    pub async fn list_messages(
        &self,
        ctx: &TenantContext,
        conversation: ConversationId,
        thread: Option<ThreadId>,
        after_seq: i64,
        limit: i64,
    ) -> ApiResult<Vec<MessageRecord>> {
        let mut filter = doc! {
            "conversation_id": conversation.to_string(),
        };
        if let Some(thread) = thread {
            filter.insert("thread_id", thread.to_string());
        }
        filter.insert("seq", doc! { "$gt": after_seq });
        self.messages
            .find(ctx, filter, doc! { "seq": 1 }, limit)
            .await?
            .iter()
            .map(MessageRecord::from_doc)
            .collect()
    }

    /// Follows the messages appended to the conversation (or one thread).
    pub async fn follow(
        &self,
        ctx: &TenantContext,
        conversation: ConversationId,
        thread: Option<ThreadId>,
        resume_after: Option<ResumeToken>,
    ) -> ApiResult<Tail> {
        let mut filter = doc! { "conversation_id": conversation.to_string() };
        if let Some(thread) = thread {
            filter.insert("thread_id", thread.to_string());
        }
        self.messages.watch_inserts(ctx, filter, resume_after).await
    }

    // --- charges ------------------------------------------------------------

    /// Settles a pending charge: only a charge still PENDING changes, so two
    /// settlements (the append and the sweeper) cannot both write. Returns
    /// the message as it is afterwards.
    pub async fn settle_charge(
        &self,
        ctx: &TenantContext,
        id: MessageId,
        settled: &ChargeRecord,
    ) -> ApiResult<Option<MessageRecord>> {
        self.messages
            .find_one_and_update(
                ctx,
                doc! { "_id": id.to_string(), "charge.state": PENDING },
                doc! { "$set": { "charge": settled.to_doc() } },
                None,
            )
            .await?
            .as_ref()
            .map(MessageRecord::from_doc)
            .transpose()
    }

    /// The pending charges across tenants, at most `limit` of them, oldest
    /// message first: how many, and when the oldest's message was appended
    /// (the sweeper's gauges; `pending_charges` holds only pending ones).
    pub async fn pending_charges(
        &self,
        limit: i64,
        timeout: std::time::Duration,
    ) -> ApiResult<(usize, Option<DateTime<Utc>>)> {
        let docs = self
            .messages
            .scan_all_tenants(
                "pending-charges-age",
                doc! { "charge.state": PENDING },
                doc! { "created_at": 1 },
                limit,
                timeout,
            )
            .await?;
        let oldest = docs.first().map(|d| time_at(d, "created_at")).transpose()?;
        Ok((docs.len(), oldest))
    }

    /// Pending charges due by `now`, across tenants, oldest first: the
    /// sweeper's scan (one of its two cross-tenant reads, with
    /// [`Store::pending_charges`]; the `pending_charges` index serves both).
    pub async fn due_charges(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        timeout: std::time::Duration,
    ) -> ApiResult<Vec<(mosaic_core::TenantId, MessageRecord)>> {
        let docs = self
            .messages
            .scan_all_tenants(
                "pending-charges",
                doc! { "charge.state": PENDING, "charge.due_at": { "$lte": millis(now) } },
                doc! { "charge.due_at": 1 },
                limit,
                timeout,
            )
            .await?;
        docs.iter()
            .map(|d| Ok((uuid_at(d, "tenant_id")?.into(), MessageRecord::from_doc(d)?)))
            .collect()
    }
}
