//! Conversations: every RPC's happy path, status transitions, bad input,
//! another tenant's ids, roles, and the tenant fence seen on the wire.

use std::collections::BTreeSet;

use mongodb::bson::doc;
use mosaic_proto::agents::{Agent, UpdateAgentRequest};
use mosaic_proto::conversations::{
    AddThreadRequest, AppendMessageRequest, ArchiveConversationRequest, Channel as ConvChannel,
    Conversation, ConversationStatus, EndConversationRequest, GetConversationRequest,
    GetConversationStatsRequest, GetMessageRequest, ListConversationsRequest, ListMessagesRequest,
    Message, StartConversationRequest, TailMessagesRequest, Usage,
};
use prost_types::{Struct, Timestamp, Value, value::Kind};
use tonic::Code;
use uuid::Uuid;

use crate::agents_support::agents;
use crate::conversations_support::{
    ConvTenant, append_request, conversations, messages, raw_conversation, raw_find, text_message,
};
use crate::harness::{assert_bad_field, assert_error};

fn id_req(c: &Conversation) -> GetConversationRequest {
    GetConversationRequest {
        conversation_id: c.conversation_id.clone(),
    }
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

#[tokio::test]
async fn a_conversation_lives_from_start_to_archive() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    assert_eq!(c.status, ConversationStatus::Active as i32);
    assert_eq!(c.agent_id, t.agent_id);
    assert_eq!(c.contact_id, t.contact_id);
    assert!(c.start_time.is_some() && c.end_time.is_none());
    let stored = raw_conversation(&c.conversation_id).await.expect("stored");
    assert_eq!(stored.get_str("tenant_id").unwrap(), t.id.to_string());

    let m = t.append(&c, "hello").await;
    assert_eq!(m.seq, 1);
    let got = conversations()
        .get_conversation(t.as_role("viewer", id_req(&c)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.message_count, 1);

    let end = || EndConversationRequest {
        conversation_id: c.conversation_id.clone(),
    };
    let ended = conversations()
        .end_conversation(t.req(end()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.status, ConversationStatus::Ended as i32);
    assert!(ended.end_time.is_some() && ended.duration.is_some());
    // Ending again answers the same; appending is refused.
    let again = conversations()
        .end_conversation(t.req(end()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.end_time, ended.end_time);
    let refused = messages()
        .append_message(t.req(append_request(&c, "late")))
        .await
        .unwrap_err();
    assert_error(
        &refused,
        Code::FailedPrecondition,
        "CONVERSATION_NOT_ACTIVE",
    );
    let no_thread = conversations()
        .add_thread(t.req(AddThreadRequest {
            conversation_id: c.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_error(&no_thread, Code::FailedPrecondition, "INVALID_TRANSITION");

    let archive = || ArchiveConversationRequest {
        conversation_id: c.conversation_id.clone(),
    };
    let archived = conversations()
        .archive_conversation(t.req(archive()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archived.status, ConversationStatus::Archived as i32);
    assert!(archived.archive_time.is_some());
    let back = conversations()
        .end_conversation(t.req(end()))
        .await
        .unwrap_err();
    assert_error(&back, Code::FailedPrecondition, "INVALID_TRANSITION");

    // An active conversation cannot be archived before it ends.
    let other = t.start().await;
    let early = conversations()
        .archive_conversation(t.req(ArchiveConversationRequest {
            conversation_id: other.conversation_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&early, Code::FailedPrecondition, "INVALID_TRANSITION");
}

#[tokio::test]
async fn start_checks_the_agent_and_the_contact_as_the_caller() {
    let a = ConvTenant::new().await;
    let b = ConvTenant::new().await;
    let start = |t: &ConvTenant, agent: &str, contact: &str| {
        t.req(StartConversationRequest {
            conversation: Some(Conversation {
                agent_id: agent.to_owned(),
                contact_id: contact.to_owned(),
                channel: ConvChannel::Voice as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
    };
    // Another tenant's agent or contact: NOT_FOUND, as if they did not exist.
    let foreign_agent = conversations()
        .start_conversation(start(&b, &a.agent_id, ""))
        .await
        .unwrap_err();
    assert_error(&foreign_agent, Code::NotFound, "AGENT_NOT_FOUND");
    let foreign_contact = conversations()
        .start_conversation(start(&b, &b.agent_id, &a.contact_id))
        .await
        .unwrap_err();
    assert_error(&foreign_contact, Code::NotFound, "CONTACT_NOT_FOUND");
    let unknown = conversations()
        .start_conversation(start(&b, &Uuid::now_v7().to_string(), ""))
        .await
        .unwrap_err();
    assert_error(&unknown, Code::NotFound, "AGENT_NOT_FOUND");

    // A disabled agent starts nothing.
    agents()
        .update_agent(b.req(UpdateAgentRequest {
            agent: Some(Agent {
                agent_id: b.agent_id.clone(),
                enabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        }))
        .await
        .unwrap();
    let disabled = conversations()
        .start_conversation(start(&b, &b.agent_id, ""))
        .await
        .unwrap_err();
    assert_error(&disabled, Code::FailedPrecondition, "AGENT_DISABLED");
    assert!(
        raw_find("conversations", doc! { "tenant_id": b.id.to_string() })
            .await
            .is_empty(),
        "a refused start writes nothing"
    );

    // Without a contact is fine.
    let ok = conversations()
        .start_conversation(start(&a, &a.agent_id, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.contact_id, "");
    assert_eq!(ok.channel, ConvChannel::Voice as i32);
}

#[tokio::test]
async fn start_is_idempotent_by_request_id() {
    let t = ConvTenant::new().await;
    let request_id = Uuid::now_v7().to_string();
    let req = || {
        t.req(StartConversationRequest {
            conversation: Some(t.new_conversation()),
            request_id: request_id.clone(),
        })
    };
    let (mut one, mut two) = (conversations(), conversations());
    let (first, second) =
        tokio::join!(one.start_conversation(req()), two.start_conversation(req()));
    let (first, second) = (first.unwrap().into_inner(), second.unwrap().into_inner());
    assert_eq!(first.conversation_id, second.conversation_id);
    let third = conversations()
        .start_conversation(req())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(third.conversation_id, first.conversation_id);
    assert_eq!(
        raw_find("conversations", doc! { "tenant_id": t.id.to_string() })
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn lists_filter_and_page_newest_first() {
    let t = ConvTenant::new().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(2);
    let mut started = Vec::new();
    for channel in [
        ConvChannel::Chat,
        ConvChannel::Voice,
        ConvChannel::Chat,
        ConvChannel::Email,
        ConvChannel::Chat,
    ] {
        let c = conversations()
            .start_conversation(t.req(StartConversationRequest {
                conversation: Some(Conversation {
                    channel: channel as i32,
                    contact_id: if channel == ConvChannel::Chat {
                        t.contact_id.clone()
                    } else {
                        String::new()
                    },
                    ..t.new_conversation()
                }),
                request_id: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        started.push(c);
    }
    conversations()
        .end_conversation(t.req(EndConversationRequest {
            conversation_id: started[0].conversation_id.clone(),
        }))
        .await
        .unwrap();

    // Every page of two, newest first, all five once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = conversations()
            .list_conversations(t.req(ListConversationsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.conversations.len() <= 2);
        seen.extend(page.conversations.into_iter().map(|c| c.conversation_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = started
        .iter()
        .rev()
        .map(|c| c.conversation_id.clone())
        .collect();
    assert_eq!(seen, newest_first);

    let list = |r: ListConversationsRequest| async {
        conversations()
            .list_conversations(t.req(r))
            .await
            .unwrap()
            .into_inner()
            .conversations
            .len()
    };
    let all = ListConversationsRequest::default;
    assert_eq!(
        list(ListConversationsRequest {
            channel: ConvChannel::Chat as i32,
            ..all()
        })
        .await,
        3
    );
    assert_eq!(
        list(ListConversationsRequest {
            status: ConversationStatus::Ended as i32,
            ..all()
        })
        .await,
        1
    );
    assert_eq!(
        list(ListConversationsRequest {
            status: ConversationStatus::Active as i32,
            ..all()
        })
        .await,
        4
    );
    assert_eq!(
        list(ListConversationsRequest {
            agent_id: t.agent_id.clone(),
            ..all()
        })
        .await,
        5
    );
    assert_eq!(
        list(ListConversationsRequest {
            contact_id: t.contact_id.clone(),
            ..all()
        })
        .await,
        3
    );
    assert_eq!(
        list(ListConversationsRequest {
            start_time_from: Some(ts(before)),
            ..all()
        })
        .await,
        5
    );
    assert_eq!(
        list(ListConversationsRequest {
            start_time_to: Some(ts(before)),
            ..all()
        })
        .await,
        0
    );

    // A token is bound to its filters.
    let first = conversations()
        .list_conversations(t.req(ListConversationsRequest {
            page_size: 1,
            ..all()
        }))
        .await
        .unwrap()
        .into_inner();
    let rebound = conversations()
        .list_conversations(t.req(ListConversationsRequest {
            page_size: 1,
            page_token: first.next_page_token,
            channel: ConvChannel::Chat as i32,
            ..all()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&rebound, "page_token");
}

#[tokio::test]
async fn threads_are_bounded_and_messages_name_only_their_own() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    let add = |request_id: &str| {
        t.req(AddThreadRequest {
            conversation_id: c.conversation_id.clone(),
            title: "billing question".into(),
            request_id: request_id.to_owned(),
        })
    };
    let rid = Uuid::now_v7().to_string();
    let thread = conversations()
        .add_thread(add(&rid))
        .await
        .unwrap()
        .into_inner();
    let same = conversations()
        .add_thread(add(&rid))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.thread_id, thread.thread_id, "idempotent by request_id");

    let in_thread = messages()
        .append_message(t.req(AppendMessageRequest {
            conversation_id: c.conversation_id.clone(),
            message: Some(Message {
                thread_id: thread.thread_id.clone(),
                ..text_message("in the thread")
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(in_thread.thread_id, thread.thread_id);
    t.append(&c, "outside").await;
    let only = messages()
        .list_messages(t.req(ListMessagesRequest {
            conversation_id: c.conversation_id.clone(),
            thread_id: thread.thread_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].message_id, in_thread.message_id);

    // A thread of another conversation is not one of this one's.
    let other = t.start().await;
    let foreign = conversations()
        .add_thread(t.req(AddThreadRequest {
            conversation_id: other.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let wrong = messages()
        .append_message(t.req(AppendMessageRequest {
            conversation_id: c.conversation_id.clone(),
            message: Some(Message {
                thread_id: foreign.thread_id,
                ..text_message("wrong thread")
            }),
        }))
        .await
        .unwrap_err();
    assert_error(&wrong, Code::NotFound, "THREAD_NOT_FOUND");

    // At most 100 threads.
    for _ in 1..100 {
        conversations().add_thread(add("")).await.unwrap();
    }
    let full = conversations().add_thread(add("")).await.unwrap_err();
    assert_error(&full, Code::FailedPrecondition, "TOO_MANY_THREADS");
    let got = conversations()
        .get_conversation(t.req(id_req(&c)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.threads.len(), 100);
}

#[tokio::test]
async fn stats_count_per_channel_and_average_durations() {
    let t = ConvTenant::new().await;
    let from = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut chats = Vec::new();
    for _ in 0..3 {
        chats.push(t.start().await);
    }
    let voice = conversations()
        .start_conversation(t.req(StartConversationRequest {
            conversation: Some(Conversation {
                channel: ConvChannel::Voice as i32,
                ..t.new_conversation()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    t.append(&chats[0], "one").await;
    t.append(&chats[0], "two").await;
    t.append(&voice, "three").await;
    for c in &chats[..2] {
        conversations()
            .end_conversation(t.req(EndConversationRequest {
                conversation_id: c.conversation_id.clone(),
            }))
            .await
            .unwrap();
    }
    let to = chrono::Utc::now() + chrono::Duration::seconds(5);
    let stats = conversations()
        .get_conversation_stats(t.as_role(
            "viewer",
            GetConversationStatsRequest {
                start_time_from: Some(ts(from)),
                start_time_to: Some(ts(to)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channels;
    assert_eq!(stats.len(), 2, "{stats:?}");
    let chat = stats
        .iter()
        .find(|s| s.channel == ConvChannel::Chat as i32)
        .unwrap();
    assert_eq!(
        (
            chat.conversation_count,
            chat.ended_count,
            chat.message_count
        ),
        (3, 2, 2)
    );
    assert!(chat.mean_duration.is_some());
    let voice = stats
        .iter()
        .find(|s| s.channel == ConvChannel::Voice as i32)
        .unwrap();
    assert_eq!(
        (
            voice.conversation_count,
            voice.ended_count,
            voice.message_count
        ),
        (1, 0, 1)
    );
    assert!(voice.mean_duration.is_none());

    // Another tenant's stats hold none of these.
    let other = ConvTenant::new().await;
    let none = conversations()
        .get_conversation_stats(other.req(GetConversationStatsRequest {
            start_time_from: Some(ts(from)),
            start_time_to: Some(ts(to)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(none.channels.is_empty());
}

fn big_struct(bytes: usize) -> Struct {
    Struct {
        fields: [(
            "blob".to_owned(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(bytes))),
            },
        )]
        .into(),
    }
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    let start = |conv: Conversation, request_id: &str| {
        t.req(StartConversationRequest {
            conversation: Some(conv),
            request_id: request_id.to_owned(),
        })
    };
    let base = t.new_conversation();
    let bad_starts = [
        (
            Conversation {
                agent_id: "nope".into(),
                ..base.clone()
            },
            "",
            "conversation.agent_id",
        ),
        (
            Conversation {
                contact_id: "nope".into(),
                ..base.clone()
            },
            "",
            "conversation.contact_id",
        ),
        (
            Conversation {
                channel: 0,
                ..base.clone()
            },
            "",
            "conversation.channel",
        ),
        (
            Conversation {
                channel: 42,
                ..base.clone()
            },
            "",
            "conversation.channel",
        ),
        (
            Conversation {
                title: "x".repeat(201),
                ..base.clone()
            },
            "",
            "conversation.title",
        ),
        (
            Conversation {
                title: "a\u{7}b".into(),
                ..base.clone()
            },
            "",
            "conversation.title",
        ),
        (
            Conversation {
                metadata: Some(big_struct(9000)),
                ..base.clone()
            },
            "",
            "conversation.metadata",
        ),
        (base.clone(), "not-a-uuid", "request_id"),
    ];
    for (conv, request_id, field) in bad_starts {
        let e = conversations()
            .start_conversation(start(conv, request_id))
            .await
            .unwrap_err();
        assert_bad_field(&e, field);
    }
    let missing = conversations()
        .start_conversation(t.req(StartConversationRequest::default()))
        .await
        .unwrap_err();
    assert_bad_field(&missing, "conversation");
    assert_eq!(
        raw_find("conversations", doc! { "tenant_id": t.id.to_string() })
            .await
            .len(),
        1,
        "only the first conversation exists"
    );

    let usage = |model: &str, input: i64, output: i64, secs: i64| Usage {
        model: model.into(),
        input_tokens: input,
        output_tokens: output,
        response_time: Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
    };
    let m = text_message("hi");
    let bad_messages = [
        (
            Message {
                client_message_id: String::new(),
                ..m.clone()
            },
            "message.client_message_id",
        ),
        (
            Message {
                client_message_id: "has space".into(),
                ..m.clone()
            },
            "message.client_message_id",
        ),
        (
            Message {
                client_message_id: "x".repeat(129),
                ..m.clone()
            },
            "message.client_message_id",
        ),
        (
            Message {
                thread_id: "nope".into(),
                ..m.clone()
            },
            "message.thread_id",
        ),
        (
            Message {
                sender_type: 0,
                ..m.clone()
            },
            "message.sender_type",
        ),
        (
            Message {
                sender_type: 9,
                ..m.clone()
            },
            "message.sender_type",
        ),
        (
            Message {
                sender_id: "x".repeat(201),
                ..m.clone()
            },
            "message.sender_id",
        ),
        (
            Message {
                message_type: 0,
                ..m.clone()
            },
            "message.message_type",
        ),
        (
            Message {
                content: "  ".into(),
                ..m.clone()
            },
            "message.content",
        ),
        (
            Message {
                content: "x".repeat(32 * 1024 + 1),
                ..m.clone()
            },
            "message.content",
        ),
        (
            Message {
                metadata: Some(big_struct(9000)),
                ..m.clone()
            },
            "message.metadata",
        ),
        (
            Message {
                usage: Some(usage("", 1, 1, 0)),
                ..m.clone()
            },
            "message.usage.model",
        ),
        (
            Message {
                usage: Some(usage("gpt 4", 1, 1, 0)),
                ..m.clone()
            },
            "message.usage.model",
        ),
        (
            Message {
                usage: Some(usage("m", -1, 1, 0)),
                ..m.clone()
            },
            "message.usage.input_tokens",
        ),
        (
            Message {
                usage: Some(usage("m", 1, 10_000_001, 0)),
                ..m.clone()
            },
            "message.usage.output_tokens",
        ),
        (
            Message {
                usage: Some(usage("m", 0, 0, 0)),
                ..m.clone()
            },
            "message.usage.input_tokens",
        ),
        (
            Message {
                usage: Some(usage("m", 1, 1, 3601)),
                ..m.clone()
            },
            "message.usage.response_time",
        ),
    ];
    for (message, field) in bad_messages {
        let e = messages()
            .append_message(t.req(AppendMessageRequest {
                conversation_id: c.conversation_id.clone(),
                message: Some(message),
            }))
            .await
            .unwrap_err();
        assert_bad_field(&e, field);
    }
    for (req, field) in [
        (
            AppendMessageRequest {
                conversation_id: "nope".into(),
                message: Some(m.clone()),
            },
            "conversation_id",
        ),
        (
            AppendMessageRequest {
                conversation_id: c.conversation_id.clone(),
                message: None,
            },
            "message",
        ),
    ] {
        let e = messages().append_message(t.req(req)).await.unwrap_err();
        assert_bad_field(&e, field);
    }
    assert!(
        raw_find("messages", doc! { "tenant_id": t.id.to_string() })
            .await
            .is_empty(),
        "no bad message was stored"
    );
    let stored = raw_conversation(&c.conversation_id).await.unwrap();
    assert_eq!(
        stored.get_i64("next_seq").unwrap(),
        0,
        "no bad message took a place"
    );

    let list = |r: ListConversationsRequest| {
        let req = t.req(r);
        async move { conversations().list_conversations(req).await.unwrap_err() }
    };
    assert_bad_field(
        &list(ListConversationsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_bad_field(
        &list(ListConversationsRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_bad_field(
        &list(ListConversationsRequest {
            channel: 9,
            ..Default::default()
        })
        .await,
        "channel",
    );
    assert_bad_field(
        &list(ListConversationsRequest {
            agent_id: "x".into(),
            ..Default::default()
        })
        .await,
        "agent_id",
    );
    let now = chrono::Utc::now();
    assert_bad_field(
        &list(ListConversationsRequest {
            start_time_from: Some(ts(now)),
            start_time_to: Some(ts(now - chrono::Duration::hours(1))),
            ..Default::default()
        })
        .await,
        "start_time_to",
    );
    let token = messages()
        .list_messages(t.req(ListMessagesRequest {
            conversation_id: c.conversation_id.clone(),
            page_token: "forged".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&token, "page_token");
    let cursor = messages()
        .tail_messages(t.req(TailMessagesRequest {
            conversation_id: c.conversation_id.clone(),
            cursor: "forged".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&cursor, "cursor");
    for (from, to, field) in [
        (None, Some(ts(now)), "start_time_from"),
        (Some(ts(now)), Some(ts(now)), "start_time_to"),
        (
            Some(ts(now - chrono::Duration::days(400))),
            Some(ts(now)),
            "start_time_to",
        ),
    ] {
        let e = conversations()
            .get_conversation_stats(t.req(GetConversationStatsRequest {
                start_time_from: from,
                start_time_to: to,
            }))
            .await
            .unwrap_err();
        assert_bad_field(&e, field);
    }
}

#[tokio::test]
async fn another_tenants_ids_are_not_found_and_change_nothing() {
    let a = ConvTenant::new().await;
    let b = ConvTenant::new().await;
    let c = a.start().await;
    let m = a.append(&c, "private").await;
    let thread = conversations()
        .add_thread(a.req(AddThreadRequest {
            conversation_id: c.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let before = raw_conversation(&c.conversation_id).await.unwrap();
    let id = || c.conversation_id.clone();

    let not_found = |r: Result<tonic::Response<Conversation>, tonic::Status>| {
        assert_error(&r.unwrap_err(), Code::NotFound, "CONVERSATION_NOT_FOUND");
    };
    not_found(conversations().get_conversation(b.req(id_req(&c))).await);
    not_found(
        conversations()
            .end_conversation(b.req(EndConversationRequest {
                conversation_id: id(),
            }))
            .await,
    );
    not_found(
        conversations()
            .archive_conversation(b.req(ArchiveConversationRequest {
                conversation_id: id(),
            }))
            .await,
    );
    let thread_err = conversations()
        .add_thread(b.req(AddThreadRequest {
            conversation_id: id(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_error(&thread_err, Code::NotFound, "CONVERSATION_NOT_FOUND");
    let append_err = messages()
        .append_message(b.req(append_request(&c, "intrusion")))
        .await
        .unwrap_err();
    assert_error(&append_err, Code::NotFound, "CONVERSATION_NOT_FOUND");
    // The same client message id as A's message: still nothing of A's.
    let replay_err = messages()
        .append_message(b.req(AppendMessageRequest {
            conversation_id: id(),
            message: Some(Message {
                client_message_id: m.client_message_id.clone(),
                ..text_message("private")
            }),
        }))
        .await
        .unwrap_err();
    assert_error(&replay_err, Code::NotFound, "CONVERSATION_NOT_FOUND");
    let get_err = messages()
        .get_message(b.req(GetMessageRequest {
            conversation_id: id(),
            message_id: m.message_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&get_err, Code::NotFound, "MESSAGE_NOT_FOUND");
    for thread_id in [String::new(), thread.thread_id.clone()] {
        let list_err = messages()
            .list_messages(b.req(ListMessagesRequest {
                conversation_id: id(),
                thread_id,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_error(&list_err, Code::NotFound, "CONVERSATION_NOT_FOUND");
    }
    let tail_err = messages()
        .tail_messages(b.req(TailMessagesRequest {
            conversation_id: id(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_error(&tail_err, Code::NotFound, "CONVERSATION_NOT_FOUND");
    // A's page token is no good to B either.
    let page = messages()
        .list_messages(a.req(ListMessagesRequest {
            conversation_id: id(),
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    let listed = conversations()
        .list_conversations(b.req(ListConversationsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .conversations
            .iter()
            .all(|x| x.conversation_id != c.conversation_id)
    );

    assert_eq!(
        raw_conversation(&c.conversation_id).await.unwrap(),
        before,
        "A's conversation is unchanged"
    );
    assert_eq!(
        raw_find("messages", doc! { "conversation_id": id() })
            .await
            .len(),
        1,
        "A's conversation holds only A's message"
    );
}

#[tokio::test]
async fn viewers_read_and_members_write() {
    let t = ConvTenant::new().await;
    let c = t.start().await;
    let denied = conversations()
        .start_conversation(t.as_role(
            "viewer",
            StartConversationRequest {
                conversation: Some(t.new_conversation()),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = messages()
        .append_message(t.as_role("viewer", append_request(&c, "x")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    messages()
        .append_message(t.as_role("member", append_request(&c, "x")))
        .await
        .unwrap();
    let listed = messages()
        .list_messages(t.as_role(
            "viewer",
            ListMessagesRequest {
                conversation_id: c.conversation_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.messages.len(), 1);
}

/// Every command the service sent to MongoDB in this test binary, checked
/// on the wire by `mosaic_mongo::audit`, named the tenant. The tour below
/// calls every RPC (and the sweeper scans meanwhile), so every repository
/// method has run by the time the report is read.
#[tokio::test]
async fn every_command_on_the_wire_carries_the_tenant() {
    let t = ConvTenant::with_credits(100).await;
    let c = t.start().await;
    conversations()
        .get_conversation(t.req(id_req(&c)))
        .await
        .unwrap();
    conversations()
        .list_conversations(t.req(ListConversationsRequest {
            channel: ConvChannel::Chat as i32,
            agent_id: t.agent_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let thread = conversations()
        .add_thread(t.req(AddThreadRequest {
            conversation_id: c.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let m = messages()
        .append_message(t.req(AppendMessageRequest {
            conversation_id: c.conversation_id.clone(),
            message: Some(Message {
                thread_id: thread.thread_id.clone(),
                ..crate::conversations_support::ai_message("priced", 1000, 1000)
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    messages()
        .append_message(t.req(AppendMessageRequest {
            conversation_id: c.conversation_id.clone(),
            message: Some(Message {
                client_message_id: m.client_message_id.clone(),
                thread_id: thread.thread_id.clone(),
                ..crate::conversations_support::ai_message("priced", 1000, 1000)
            }),
        }))
        .await
        .unwrap();
    messages()
        .get_message(t.req(GetMessageRequest {
            conversation_id: c.conversation_id.clone(),
            message_id: m.message_id.clone(),
        }))
        .await
        .unwrap();
    messages()
        .list_messages(t.req(ListMessagesRequest {
            conversation_id: c.conversation_id.clone(),
            thread_id: thread.thread_id,
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut tail = messages()
        .tail_messages(t.req(TailMessagesRequest {
            conversation_id: c.conversation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    tail.message().await.unwrap().unwrap();
    drop(tail);
    let now = chrono::Utc::now();
    conversations()
        .get_conversation_stats(t.req(GetConversationStatsRequest {
            start_time_from: Some(ts(now - chrono::Duration::hours(1))),
            start_time_to: Some(ts(now + chrono::Duration::hours(1))),
        }))
        .await
        .unwrap();
    conversations()
        .end_conversation(t.req(EndConversationRequest {
            conversation_id: c.conversation_id.clone(),
        }))
        .await
        .unwrap();
    // Let the sweeper scan at least once.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let report = mosaic_mongo::audit::report();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let seen: BTreeSet<&str> = report.commands.keys().map(String::as_str).collect();
    for command in [
        "insert",
        "find",
        "findAndModify",
        "update",
        "aggregate",
        "createIndexes",
    ] {
        assert!(seen.contains(command), "no {command} seen: {seen:?}");
    }
    assert!(
        report.all_tenant_scans.contains_key("pending-charges"),
        "the sweeper's scan is a cross-tenant read: {:?}",
        report.all_tenant_scans
    );
}
