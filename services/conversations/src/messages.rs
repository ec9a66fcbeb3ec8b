//! `MessageService`: append (idempotent by the client's message id, charged
//! through [`charges`](crate::charges)), get, list, and the live tail
//! ([`tail`](crate::tail)).

use std::sync::Arc;

use mosaic_api::rules::Kind;
use mosaic_api::{AllOk, ApiError, ApiResult, convert, page, parse};
use mosaic_proto::conversations::{
    AppendMessageRequest, Charge, GetMessageRequest, ListMessagesRequest, ListMessagesResponse,
    Message, MessageType, TailMessagesRequest, Usage, message_service_server::MessageService,
};
use mosaic_server::Shutdown;
use mosaic_tenant::{Role, TenantContext};
use tonic::{Request, Response, Status};

use crate::charges::{Charger, Prices, new_charge};
use crate::conversations::{CONVERSATION, metadata_struct, status_name};
use crate::ids::{ConversationId, MessageId, ThreadId};
use crate::input::{count, json_text, token};
use crate::store::{MessageRecord, NoPlace, Store, UsageRecord, now};
use crate::tail;

pub const MESSAGE: Kind = Kind {
    name: "message",
    not_found: "MESSAGE_NOT_FOUND",
    deleted: "MESSAGE_DELETED",
};
/// Reason of FAILED_PRECONDITION when appending to a conversation that ended.
pub const CONVERSATION_NOT_ACTIVE: &str = "CONVERSATION_NOT_ACTIVE";
/// Reason of NOT_FOUND for a thread the conversation does not have.
pub const THREAD_NOT_FOUND: &str = "THREAD_NOT_FOUND";
const MAX_CONTENT_BYTES: usize = 32 * 1024;
const MAX_METADATA_BYTES: usize = 8192;
const MAX_SENDER_CHARS: usize = 200;
const MAX_CLIENT_ID: usize = 128;
const MAX_MODEL: usize = 100;
const MAX_TOKENS: i64 = 10_000_000;
const MAX_RESPONSE_SECS: i64 = 3600;

#[derive(Debug)]
pub struct MessageApi {
    store: Store,
    charger: Arc<Charger>,
    prices: Prices,
    stop: Shutdown,
    stall: std::time::Duration,
}

impl MessageApi {
    pub fn new(
        store: Store,
        charger: Arc<Charger>,
        prices: Prices,
        stop: Shutdown,
        stall: std::time::Duration,
    ) -> Self {
        Self {
            store,
            charger,
            prices,
            stop,
            stall,
        }
    }

    /// The first message of a retried append, when the retry asks for the
    /// same message; a different message under the same id is refused.
    fn same_or_refuse(first: MessageRecord, asked: &MessageRecord) -> ApiResult<MessageRecord> {
        let same = first.thread_id == asked.thread_id
            && first.sender_type == asked.sender_type
            && first.sender_id == asked.sender_id
            && first.message_type == asked.message_type
            && first.content == asked.content
            && first.metadata == asked.metadata
            && first.usage == asked.usage;
        if same {
            Ok(first)
        } else {
            Err(ApiError::invalid_argument(
                "message.client_message_id",
                "already used for another message in this conversation",
            ))
        }
    }

    /// A retry's answer: the first message (charging it again if its charge
    /// is still pending: billing applies it once).
    async fn retried(
        &self,
        ctx: &TenantContext,
        asked: &MessageRecord,
    ) -> ApiResult<Option<MessageRecord>> {
        let Some(first) = self
            .store
            .message_by_client_id(ctx, asked.conversation_id, &asked.client_message_id)
            .await?
        else {
            return Ok(None);
        };
        let first = Self::same_or_refuse(first, asked)?;
        Ok(Some(self.charge_if_pending(ctx, first).await?))
    }

    async fn charge_if_pending(
        &self,
        ctx: &TenantContext,
        m: MessageRecord,
    ) -> ApiResult<MessageRecord> {
        if m.charge
            .as_ref()
            .is_some_and(|c| c.state == mosaic_proto::conversations::ChargeState::Pending)
        {
            self.charger.charge(ctx, m).await
        } else {
            Ok(m)
        }
    }
}

fn parse_usage(u: Option<&Usage>) -> ApiResult<Option<UsageRecord>> {
    let Some(u) = u else {
        return Ok(None);
    };
    let (model, input_tokens, output_tokens) = (
        token("message.usage.model", &u.model, MAX_MODEL, "._:/-"),
        count("message.usage.input_tokens", u.input_tokens, MAX_TOKENS),
        count("message.usage.output_tokens", u.output_tokens, MAX_TOKENS),
    )
        .all_ok()?;
    if input_tokens == 0 && output_tokens == 0 {
        return Err(ApiError::invalid_argument(
            "message.usage.input_tokens",
            "input_tokens and output_tokens are not both 0",
        ));
    }
    let response_time_ms = u
        .response_time
        .as_ref()
        .map(|d| {
            let ok = d.seconds >= 0
                && (0..1_000_000_000).contains(&d.nanos)
                && (d.seconds < MAX_RESPONSE_SECS
                    || (d.seconds == MAX_RESPONSE_SECS && d.nanos == 0));
            if ok {
                Ok(d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
            } else {
                Err(ApiError::invalid_argument(
                    "message.usage.response_time",
                    "0 .. 1 hour",
                ))
            }
        })
        .transpose()?;
    Ok(Some(UsageRecord {
        model,
        input_tokens,
        output_tokens,
        response_time_ms,
    }))
}

fn content(message_type: MessageType, raw: &str) -> ApiResult<String> {
    const FIELD: &str = "message.content";
    if message_type == MessageType::Text && raw.trim().is_empty() {
        return Err(ApiError::invalid_argument(
            FIELD,
            "required for a TEXT message",
        ));
    }
    if raw.len() > MAX_CONTENT_BYTES {
        return Err(ApiError::invalid_argument(
            FIELD,
            format!("at most {MAX_CONTENT_BYTES} bytes"),
        ));
    }
    if raw.contains('\0') {
        return Err(ApiError::invalid_argument(FIELD, "must not contain NUL"));
    }
    Ok(raw.to_owned())
}

pub(crate) fn message_proto(m: MessageRecord) -> Message {
    Message {
        message_id: m.id.to_string(),
        conversation_id: m.conversation_id.to_string(),
        thread_id: m.thread_id.map(|t| t.to_string()).unwrap_or_default(),
        seq: m.seq,
        client_message_id: m.client_message_id,
        sender_type: m.sender_type.into(),
        sender_id: m.sender_id,
        message_type: m.message_type.into(),
        content: m.content,
        metadata: metadata_struct(&m.metadata),
        usage: m.usage.map(|u| Usage {
            model: u.model,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            response_time: u.response_time_ms.map(|ms| prost_types::Duration {
                seconds: ms / 1000,
                nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
            }),
        }),
        charge: m.charge.map(|c| Charge {
            state: c.state.into(),
            credits: c.credits,
            ledger_entry_id: c.ledger_entry_id.unwrap_or_default(),
            reason: c.reason.unwrap_or_default(),
            attempt_count: c.attempts,
        }),
        create_time: Some(convert::timestamp(m.created_at)),
    }
}

/// The page binding of ListMessages.
fn list_binding(
    tenant: mosaic_core::TenantId,
    conversation: ConversationId,
    thread: Option<ThreadId>,
) -> page::PageBinding {
    page::PageBinding::new("ListMessages")
        .with(tenant)
        .with(conversation)
        .with(thread.map(|t| t.to_string()).unwrap_or_default())
}

#[tonic::async_trait]
impl MessageService for MessageApi {
    async fn append_message(
        &self,
        req: Request<AppendMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.get_ref();
        let m = r
            .message
            .as_ref()
            .ok_or_else(|| ApiError::invalid_argument("message", "required"))?;
        let (
            conversation_id,
            client_message_id,
            thread_id,
            sender_type,
            sender_id,
            message_type,
            metadata,
            usage,
        ) = (
            parse::id::<ConversationId>("conversation_id", &r.conversation_id),
            token(
                "message.client_message_id",
                &m.client_message_id,
                MAX_CLIENT_ID,
                ".:_-",
            ),
            parse::optional_id::<ThreadId>("message.thread_id", &m.thread_id),
            parse::enum_value("message.sender_type", m.sender_type),
            parse::text("message.sender_id", &m.sender_id, MAX_SENDER_CHARS),
            parse::enum_value::<MessageType>("message.message_type", m.message_type),
            json_text("message.metadata", m.metadata.as_ref(), MAX_METADATA_BYTES),
            parse_usage(m.usage.as_ref()),
        )
            .all_ok()?;
        let content = content(message_type, &m.content)?;
        let created_at = now();
        let mut record = MessageRecord {
            id: MessageId::new(),
            conversation_id,
            thread_id,
            seq: 0,
            client_message_id,
            sender_type,
            sender_id,
            message_type,
            content,
            metadata,
            charge: new_charge(&self.prices, usage.as_ref(), created_at, self.charger.grace),
            usage,
            created_at,
        };
        record.seq = match self.store.place(&ctx, conversation_id, thread_id).await? {
            Ok(seq) => seq,
            Err(why) => {
                // A retry of an append that went through returns its message,
                // whatever happened to the conversation since.
                if let Some(first) = self.retried(&ctx, &record).await? {
                    return Ok(Response::new(message_proto(first)));
                }
                return Err(match why {
                    NoPlace::NotFound => CONVERSATION.not_found(),
                    NoPlace::NotActive(status) => ApiError::failed_precondition(
                        CONVERSATION_NOT_ACTIVE,
                        format!(
                            "the conversation is {}; messages are appended to ACTIVE conversations",
                            status_name(status)
                        ),
                    ),
                    NoPlace::NoThread => {
                        ApiError::not_found(THREAD_NOT_FOUND, "message.thread_id: thread not found")
                    }
                }
                .into());
            }
        };
        let inserted = match self.store.insert_message(&ctx, &record).await {
            Ok(inserted) => inserted,
            Err(e) => {
                // Best effort: the count the place took (the seq stays a gap).
                let _ = self.store.unplace(&ctx, conversation_id).await;
                return Err(e.into());
            }
        };
        if !inserted {
            self.store.unplace(&ctx, conversation_id).await?;
            let first = self
                .retried(&ctx, &record)
                .await?
                .ok_or_else(|| ApiError::aborted("RETRY", "a concurrent append; retry"))?;
            return Ok(Response::new(message_proto(first)));
        }
        let stored = self.charge_if_pending(&ctx, record).await?;
        Ok(Response::new(message_proto(stored)))
    }

    async fn get_message(
        &self,
        req: Request<GetMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let (conversation, id) = (
            parse::id::<ConversationId>("conversation_id", &r.conversation_id),
            parse::id::<MessageId>("message_id", &r.message_id),
        )
            .all_ok()?;
        let m = self
            .store
            .message(&ctx, conversation, id)
            .await?
            .ok_or_else(|| MESSAGE.not_found())?;
        Ok(Response::new(message_proto(m)))
    }

    async fn list_messages(
        &self,
        req: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let tenant = ctx.tenant_id()?;
        let (conversation, thread, size) = (
            parse::id::<ConversationId>("conversation_id", &r.conversation_id),
            parse::optional_id::<ThreadId>("thread_id", &r.thread_id),
            parse::page_size("page_size", r.page_size),
        )
            .all_ok()?;
        let binding = list_binding(tenant, conversation, thread);
        let after = page::decode::<i64>(&binding, &r.page_token)?.unwrap_or(0);
        let rows = self
            .store
            .list_messages(&ctx, conversation, thread, after, i64::from(size) + 1)
            .await?;
        // Messages found are the tenant's, so the conversation is; only an
        // empty page needs to ask whether it exists.
        if rows.is_empty() && self.store.conversation(&ctx, conversation).await?.is_none() {
            return Err(CONVERSATION.not_found().into());
        }
        let (messages, next_page_token) =
            page::page(rows, size, &binding, |m| m.seq, message_proto);
        Ok(Response::new(ListMessagesResponse {
            messages,
            next_page_token,
        }))
    }

    type TailMessagesStream = tail::TailStream;

    async fn tail_messages(
        &self,
        req: Request<TailMessagesRequest>,
    ) -> Result<Response<Self::TailMessagesStream>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let tenant = ctx.tenant_id()?;
        let (conversation, thread) = (
            parse::id::<ConversationId>("conversation_id", &r.conversation_id),
            parse::optional_id::<ThreadId>("thread_id", &r.thread_id),
        )
            .all_ok()?;
        let from = tail::decode_cursor(tenant, conversation, thread, &r.cursor)?;
        if self.store.conversation(&ctx, conversation).await?.is_none() {
            return Err(CONVERSATION.not_found().into());
        }
        let stream = tail::start(
            self.store.clone(),
            ctx,
            conversation,
            thread,
            from,
            self.stop.clone(),
            self.stall,
        );
        Ok(Response::new(stream))
    }
}
