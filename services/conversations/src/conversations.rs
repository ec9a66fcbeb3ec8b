//! `ConversationService`: each method takes the tenant context, checks the
//! role, parses the request (bad input stops here with the field named), and
//! calls the [`Store`]. StartConversation asks agents and crm, with the
//! caller's context forwarded, whether the agent and the contact exist.

use chrono::{DateTime, Utc};
use mosaic_api::rules::Kind;
use mosaic_api::{AllOk, ApiError, ApiResult, convert, page, parse};
use mosaic_proto::StoredEnum;
use mosaic_proto::agents::GetAgentRequest;
use mosaic_proto::agents::agent_service_client::AgentServiceClient;
use mosaic_proto::conversations::{
    AddThreadRequest, ArchiveConversationRequest, ChannelStats, Conversation, ConversationStatus,
    EndConversationRequest, GetConversationRequest, GetConversationStatsRequest,
    GetConversationStatsResponse, ListConversationsRequest, ListConversationsResponse,
    StartConversationRequest, Thread, conversation_service_server::ConversationService,
};
use mosaic_proto::crm::GetContactRequest;
use mosaic_proto::crm::contact_service_client::ContactServiceClient;
use mosaic_tenant::PeerChannel;
use mosaic_tenant::{Role, TenantContext, peer_error};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::ids::{ConversationId, ThreadId};
use crate::input::{json_text, optional_enum, required_time};
use crate::store::{
    AddedThread, ConversationFilter, ConversationRecord, MAX_THREADS, Store, ThreadRecord, now,
};

pub const CONVERSATION: Kind = Kind {
    name: "conversation",
    not_found: "CONVERSATION_NOT_FOUND",
    deleted: "CONVERSATION_DELETED",
};
/// Reason of FAILED_PRECONDITION for a status change the conversation's status forbids.
pub const INVALID_TRANSITION: &str = "INVALID_TRANSITION";
/// Reason of FAILED_PRECONDITION when the conversation has its [`MAX_THREADS`].
pub const TOO_MANY_THREADS: &str = "TOO_MANY_THREADS";
/// Reason of FAILED_PRECONDITION when the agent is disabled.
pub const AGENT_DISABLED: &str = "AGENT_DISABLED";
const MAX_TITLE_CHARS: usize = 200;
const MAX_METADATA_BYTES: usize = 8192;
/// The widest stats range.
const MAX_STATS_DAYS: i64 = 366;

#[derive(Debug)]
pub struct ConversationApi {
    store: Store,
    agents: PeerChannel,
    crm: PeerChannel,
}

impl ConversationApi {
    pub fn new(store: Store, agents: PeerChannel, crm: PeerChannel) -> Self {
        Self { store, agents, crm }
    }

    /// The agent must be live and enabled, the contact (when given) live:
    /// both asked at once, as the caller.
    async fn check_references(
        &self,
        ctx: &TenantContext,
        agent_id: Uuid,
        contact_id: Option<Uuid>,
    ) -> ApiResult<()> {
        let agent = async {
            let mut agents =
                AgentServiceClient::with_interceptor(self.agents.clone(), ctx.propagate());
            let agent = agents
                .get_agent(GetAgentRequest {
                    agent_id: agent_id.to_string(),
                })
                .await
                .map_err(|s| peer_error("agents", s))?
                .into_inner();
            if agent.delete_time.is_some() {
                return Err(ApiError::not_found(
                    "AGENT_NOT_FOUND",
                    "conversation.agent_id: agent not found",
                ));
            }
            if !agent.enabled {
                return Err(ApiError::failed_precondition(
                    AGENT_DISABLED,
                    "the agent is disabled; enable it to start conversations",
                ));
            }
            Ok(())
        };
        let contact = async {
            let Some(contact_id) = contact_id else {
                return Ok(());
            };
            let mut crm = ContactServiceClient::with_interceptor(self.crm.clone(), ctx.propagate());
            let contact = crm
                .get_contact(GetContactRequest {
                    contact_id: contact_id.to_string(),
                })
                .await
                .map_err(|s| peer_error("crm", s))?
                .into_inner();
            if contact.delete_time.is_some() {
                return Err(ApiError::not_found(
                    "CONTACT_NOT_FOUND",
                    "conversation.contact_id: contact not found",
                ));
            }
            Ok(())
        };
        let (agent, contact) = tokio::join!(agent, contact);
        agent.and(contact)
    }

    async fn transition(
        &self,
        ctx: &TenantContext,
        raw_id: &str,
        from: ConversationStatus,
        to: ConversationStatus,
    ) -> ApiResult<ConversationRecord> {
        let id: ConversationId = parse::id("conversation_id", raw_id)?;
        if let Some(moved) = self.store.transition(ctx, id, from, to, now()).await? {
            return Ok(moved);
        }
        let current = self
            .store
            .conversation(ctx, id)
            .await?
            .ok_or_else(|| CONVERSATION.not_found())?;
        if current.status == to {
            // A retry of the same change: the conversation as it made it.
            return Ok(current);
        }
        Err(ApiError::failed_precondition(
            INVALID_TRANSITION,
            format!(
                "the conversation is {}; only a {} conversation can become {}",
                status_name(current.status),
                status_name(from),
                status_name(to)
            ),
        ))
    }

    /// End or Archive: a member moves the conversation `from` -> `to`.
    async fn change<T>(
        &self,
        req: &Request<T>,
        raw_id: &str,
        from: ConversationStatus,
        to: ConversationStatus,
    ) -> Result<Response<Conversation>, Status> {
        let ctx = TenantContext::of(req)?;
        ctx.require(Role::Member)?;
        let c = self.transition(&ctx, raw_id, from, to).await?;
        Ok(Response::new(conversation_proto(c)))
    }
}

pub(crate) fn status_name(status: ConversationStatus) -> String {
    status.stored_name().to_ascii_uppercase()
}

fn thread_proto(t: ThreadRecord) -> Thread {
    Thread {
        thread_id: t.id.to_string(),
        title: t.title,
        create_time: Some(convert::timestamp(t.created_at)),
    }
}

fn duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub(crate) fn metadata_struct(text: &str) -> Option<prost_types::Struct> {
    serde_json::from_str(text).ok().map(convert::json_to_struct)
}

fn conversation_proto(c: ConversationRecord) -> Conversation {
    Conversation {
        conversation_id: c.id.to_string(),
        agent_id: c.agent_id.to_string(),
        contact_id: c.contact_id.map(|u| u.to_string()).unwrap_or_default(),
        channel: c.channel.into(),
        title: c.title,
        metadata: metadata_struct(&c.metadata),
        status: c.status.into(),
        threads: c.threads.into_iter().map(thread_proto).collect(),
        message_count: c.message_count,
        start_time: Some(convert::timestamp(c.started_at)),
        end_time: c.ended_at.map(convert::timestamp),
        duration: c
            .ended_at
            .map(|end| duration((end - c.started_at).num_milliseconds())),
        archive_time: c.archived_at.map(convert::timestamp),
    }
}

/// An optional `[from, to)`.
type TimeRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// ListConversations' keyset cursor: the last row's start time (ms) and id.
type ListCursor = (i64, Uuid);

fn range(
    from_field: &str,
    from: Option<&prost_types::Timestamp>,
    to_field: &str,
    to: Option<&prost_types::Timestamp>,
) -> ApiResult<TimeRange> {
    let (from, to) = (
        parse::optional_time(from_field, from),
        parse::optional_time(to_field, to),
    )
        .all_ok()?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ApiError::invalid_argument(
            to_field,
            format!("must be after {from_field}"),
        ));
    }
    Ok((from, to))
}

#[tonic::async_trait]
impl ConversationService for ConversationApi {
    async fn start_conversation(
        &self,
        req: Request<StartConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let request = req.get_ref();
        let c = request
            .conversation
            .as_ref()
            .ok_or_else(|| ApiError::invalid_argument("conversation", "required"))?;
        let (agent_id, contact_id, channel, title, metadata, request_id) = (
            parse::id::<Uuid>("conversation.agent_id", &c.agent_id),
            parse::optional_id::<Uuid>("conversation.contact_id", &c.contact_id),
            parse::enum_value("conversation.channel", c.channel),
            parse::text("conversation.title", c.title.trim(), MAX_TITLE_CHARS),
            json_text(
                "conversation.metadata",
                c.metadata.as_ref(),
                MAX_METADATA_BYTES,
            ),
            parse::request_id("request_id", &request.request_id),
        )
            .all_ok()?;
        self.check_references(&ctx, agent_id, contact_id).await?;
        let record = ConversationRecord {
            id: ConversationId::new(),
            agent_id,
            contact_id,
            channel,
            title,
            metadata,
            status: ConversationStatus::Active,
            threads: Vec::new(),
            message_count: 0,
            started_at: now(),
            ended_at: None,
            archived_at: None,
        };
        let stored = self.store.start(&ctx, &record, request_id).await?;
        Ok(Response::new(conversation_proto(stored)))
    }

    async fn get_conversation(
        &self,
        req: Request<GetConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let id: ConversationId = parse::id("conversation_id", &req.get_ref().conversation_id)?;
        let c = self
            .store
            .conversation(&ctx, id)
            .await?
            .ok_or_else(|| CONVERSATION.not_found())?;
        Ok(Response::new(conversation_proto(c)))
    }

    async fn list_conversations(
        &self,
        req: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let tenant = ctx.tenant_id()?;
        let (size, channel, status, agent_id, contact_id, times) = (
            parse::page_size("page_size", r.page_size),
            optional_enum("channel", r.channel),
            optional_enum("status", r.status),
            parse::optional_id::<Uuid>("agent_id", &r.agent_id),
            parse::optional_id::<Uuid>("contact_id", &r.contact_id),
            range(
                "start_time_from",
                r.start_time_from.as_ref(),
                "start_time_to",
                r.start_time_to.as_ref(),
            ),
        )
            .all_ok()?;
        let filter = ConversationFilter {
            channel,
            status,
            agent_id,
            contact_id,
            started_from: times.0,
            started_to: times.1,
        };
        let binding = page::PageBinding::new("ListConversations")
            .with(tenant)
            .with(r.channel)
            .with(r.status)
            .with(&r.agent_id)
            .with(&r.contact_id)
            .with(times.0.map(|t| t.timestamp_millis()).unwrap_or_default())
            .with(times.1.map(|t| t.timestamp_millis()).unwrap_or_default());
        let after = page::decode::<ListCursor>(&binding, &r.page_token)?
            .map(|(ms, id)| {
                DateTime::from_timestamp_millis(ms)
                    .map(|at| (at, ConversationId::from(id)))
                    .ok_or_else(|| {
                        ApiError::invalid_argument(
                            "page_token",
                            "not a page token issued for this query",
                        )
                    })
            })
            .transpose()?;
        let rows = self
            .store
            .list_conversations(&ctx, &filter, after, i64::from(size) + 1)
            .await?;
        let (conversations, next_page_token) = page::page(
            rows,
            size,
            &binding,
            |c| (c.started_at.timestamp_millis(), c.id.uuid()),
            conversation_proto,
        );
        Ok(Response::new(ListConversationsResponse {
            conversations,
            next_page_token,
        }))
    }

    async fn end_conversation(
        &self,
        req: Request<EndConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let id = &req.get_ref().conversation_id;
        self.change(
            &req,
            id,
            ConversationStatus::Active,
            ConversationStatus::Ended,
        )
        .await
    }

    async fn archive_conversation(
        &self,
        req: Request<ArchiveConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let id = &req.get_ref().conversation_id;
        self.change(
            &req,
            id,
            ConversationStatus::Ended,
            ConversationStatus::Archived,
        )
        .await
    }

    async fn add_thread(&self, req: Request<AddThreadRequest>) -> Result<Response<Thread>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Member)?;
        let r = req.get_ref();
        let (id, title, request_id) = (
            parse::id::<ConversationId>("conversation_id", &r.conversation_id),
            parse::text("title", r.title.trim(), MAX_TITLE_CHARS),
            parse::request_id("request_id", &r.request_id),
        )
            .all_ok()?;
        let thread = ThreadRecord {
            id: ThreadId::new(),
            title,
            created_at: now(),
            request_id,
        };
        match self.store.add_thread(&ctx, id, &thread).await? {
            Ok(AddedThread::Added(t) | AddedThread::Existing(t)) => {
                Ok(Response::new(thread_proto(t)))
            }
            Err(None) => Err(CONVERSATION.not_found().into()),
            Err(Some(c)) if c.status != ConversationStatus::Active => {
                Err(ApiError::failed_precondition(
                    INVALID_TRANSITION,
                    format!(
                        "the conversation is {}; threads are added to ACTIVE conversations",
                        status_name(c.status)
                    ),
                )
                .into())
            }
            Err(Some(_)) => Err(ApiError::failed_precondition(
                TOO_MANY_THREADS,
                format!("a conversation has at most {MAX_THREADS} threads"),
            )
            .into()),
        }
    }

    async fn get_conversation_stats(
        &self,
        req: Request<GetConversationStatsRequest>,
    ) -> Result<Response<GetConversationStatsResponse>, Status> {
        let ctx = TenantContext::of(&req)?;
        ctx.require(Role::Viewer)?;
        let r = req.get_ref();
        let (from, to) = (
            required_time("start_time_from", r.start_time_from.as_ref()),
            required_time("start_time_to", r.start_time_to.as_ref()),
        )
            .all_ok()?;
        if from >= to {
            return Err(ApiError::invalid_argument(
                "start_time_to",
                "must be after start_time_from",
            )
            .into());
        }
        if to - from > chrono::Duration::days(MAX_STATS_DAYS) {
            return Err(ApiError::invalid_argument(
                "start_time_to",
                format!("at most {MAX_STATS_DAYS} days after start_time_from"),
            )
            .into());
        }
        let rows = self.store.stats(&ctx, from, to).await?;
        let channels = rows
            .into_iter()
            .map(|row| ChannelStats {
                channel: row.channel.into(),
                conversation_count: row.conversations,
                ended_count: row.ended,
                mean_duration: row.mean_duration_ms.map(|ms| duration(ms.round() as i64)),
                message_count: row.messages,
            })
            .collect();
        Ok(Response::new(GetConversationStatsResponse { channels }))
    }
}
