//! The conversations service under test, and helpers shared by the
//! `conversations_*` tests.

use mongodb::bson::{Document, doc};
use mosaic_core::TenantId;
use mosaic_proto::agents::{Agent, CreateAgentRequest};
use mosaic_proto::billing::TopUpRequest;
use mosaic_proto::conversations::{
    AppendMessageRequest, Channel as ConvChannel, Conversation, Message, MessageType, SenderType,
    StartConversationRequest, Usage, conversation_service_client::ConversationServiceClient,
    message_service_client::MessageServiceClient,
};
use mosaic_proto::crm::{Contact, CreateContactRequest};
use tonic::Request;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::agents_support::agents;
use crate::billing_support::{credits, key};
use crate::crm_support::contacts;
use crate::harness::{app, authed, mongo_url};

pub(crate) fn conversations_on(channel: Channel) -> ConversationServiceClient<Channel> {
    ConversationServiceClient::new(channel)
}
pub(crate) fn conversations() -> ConversationServiceClient<Channel> {
    conversations_on(app().channel())
}
pub(crate) fn messages_on(channel: Channel) -> MessageServiceClient<Channel> {
    MessageServiceClient::new(channel)
}
pub(crate) fn messages() -> MessageServiceClient<Channel> {
    messages_on(app().channel())
}

/// A fresh tenant with an enabled agent and a contact.
#[derive(Debug, Clone)]
pub(crate) struct ConvTenant {
    pub(crate) id: TenantId,
    pub(crate) agent_id: String,
    pub(crate) contact_id: String,
}

impl ConvTenant {
    pub(crate) async fn new() -> Self {
        let id = app().new_tenant().await.id;
        let mut t = Self {
            id,
            agent_id: String::new(),
            contact_id: String::new(),
        };
        t.agent_id = agents()
            .create_agent(t.req(CreateAgentRequest {
                agent: Some(Agent {
                    display_name: "Support bot".into(),
                    model: "gpt-4o-mini".into(),
                    enabled: true,
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .expect("create agent")
            .into_inner()
            .agent_id;
        t.contact_id = contacts()
            .create_contact(t.req(CreateContactRequest {
                contact: Some(Contact {
                    email: format!("c-{}@example.com", Uuid::now_v7().simple()),
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .expect("create contact")
            .into_inner()
            .contact_id;
        t
    }

    /// A fresh tenant as [`ConvTenant::new`], with `credits` on its account.
    pub(crate) async fn with_credits(credits_: i64) -> Self {
        let t = Self::new().await;
        t.top_up(credits_).await;
        t
    }

    pub(crate) async fn top_up(&self, amount: i64) {
        credits()
            .top_up(authed(
                TopUpRequest {
                    tenant_id: self.id.to_string(),
                    amount,
                    idempotency_key: key(),
                    reference: "payment".into(),
                },
                &app().platform_token(),
            ))
            .await
            .expect("top up");
    }

    pub(crate) fn token(&self, role: &str) -> String {
        app().token(Some(self.id), &format!("user:{}", Uuid::now_v7()), &[role])
    }

    /// `msg` as an admin of this tenant.
    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        authed(msg, &self.token("admin"))
    }

    pub(crate) fn as_role<T>(&self, role: &str, msg: T) -> Request<T> {
        authed(msg, &self.token(role))
    }

    pub(crate) fn new_conversation(&self) -> Conversation {
        Conversation {
            agent_id: self.agent_id.clone(),
            contact_id: self.contact_id.clone(),
            channel: ConvChannel::Chat as i32,
            title: "Order question".into(),
            ..Default::default()
        }
    }

    pub(crate) async fn start(&self) -> Conversation {
        self.start_on(app().channel()).await
    }

    pub(crate) async fn start_on(&self, channel: Channel) -> Conversation {
        conversations_on(channel)
            .start_conversation(self.req(StartConversationRequest {
                conversation: Some(self.new_conversation()),
                request_id: String::new(),
            }))
            .await
            .expect("start conversation")
            .into_inner()
    }

    pub(crate) async fn append(&self, conversation: &Conversation, text: &str) -> Message {
        messages()
            .append_message(self.req(append_request(conversation, text)))
            .await
            .expect("append")
            .into_inner()
    }
}

/// A text message from the user, with a fresh client id.
pub(crate) fn text_message(text: &str) -> Message {
    Message {
        client_message_id: format!("c-{}", Uuid::now_v7().simple()),
        sender_type: SenderType::User as i32,
        sender_id: "visitor-1".into(),
        message_type: MessageType::Text as i32,
        content: text.into(),
        ..Default::default()
    }
}

pub(crate) fn append_request(conversation: &Conversation, text: &str) -> AppendMessageRequest {
    AppendMessageRequest {
        conversation_id: conversation.conversation_id.clone(),
        message: Some(text_message(text)),
    }
}

/// An agent's reply that an AI call produced.
pub(crate) fn ai_message(text: &str, input_tokens: i64, output_tokens: i64) -> Message {
    Message {
        sender_type: SenderType::Agent as i32,
        usage: Some(Usage {
            model: "gpt-4o-mini".into(),
            input_tokens,
            output_tokens,
            response_time: Some(prost_types::Duration {
                seconds: 0,
                nanos: 350_000_000,
            }),
        }),
        ..text_message(text)
    }
}

/// The test run's database on the MongoDB-wire server, for looking behind
/// the API (the raw driver; the service never gives out its collections).
pub(crate) async fn raw_db() -> mongodb::Database {
    let client = mongodb::Client::with_uri_str(mongo_url())
        .await
        .expect("mongodb client");
    client.default_database().expect("database in the url")
}

/// The stored documents of `collection` matching `filter`.
pub(crate) async fn raw_find(collection: &str, filter: Document) -> Vec<Document> {
    use futures::TryStreamExt;
    raw_db()
        .await
        .collection::<Document>(collection)
        .find(filter)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("collect")
}

/// The stored conversation document (or `None`).
pub(crate) async fn raw_conversation(id: &str) -> Option<Document> {
    raw_find("conversations", doc! { "_id": id }).await.pop()
}
