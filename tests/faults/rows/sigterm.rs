//! Row 7: SIGTERM under load: a GetTenant load at c=8 plus open message
//! tails and a health `Watch`. Bars: health says NOT_SERVING at once (within
//! 200 ms); 0 accepted unary calls fail (a call in flight at the signal
//! completes; a call after it is OK or refused with UNAVAILABLE, never
//! another code); every tail ends with UNAVAILABLE (`SHUTTING_DOWN`); the
//! process exits 0 before its drain deadline.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use mosaic_proto::agents::{Agent, CreateAgentRequest, agent_service_client::AgentServiceClient};
use mosaic_proto::conversations::{
    AppendMessageRequest, Channel as ConvChannel, Conversation, Message, MessageType, SenderType,
    StartConversationRequest, TailMessagesRequest,
    conversation_service_client::ConversationServiceClient,
    message_service_client::MessageServiceClient,
};
use mosaic_proto::crm::{
    Contact, CreateContactRequest, contact_service_client::ContactServiceClient,
};
use mosaic_proto::identity::{GetTenantRequest, tenant_service_client::TenantServiceClient};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use crate::Profile;
use crate::card::Row;
use crate::deps::{Deps, set};
use crate::load::{self, CallLog, Window, ms};
use crate::server::{Mosaic, authed, log_field, status_error};

const WORKERS: usize = 8;
const TAILS: usize = 4;
const DRAIN_SECS: u64 = 5;
const DEADLINE: Duration = Duration::from_secs(3);

pub(crate) async fn run(deps: &Deps, p: Profile) -> anyhow::Result<Vec<Row>> {
    let mut env = deps.env();
    set(
        &mut env,
        "MOSAIC_SHUTDOWN_TIMEOUT_SECS",
        DRAIN_SECS.to_string(),
    );
    // One line per call the server handled (OK ones at debug), to tell the
    // calls it accepted from those it never saw.
    set(
        &mut env,
        "MOSAIC_LOG",
        "info,mosaic_server::metrics_layer=debug",
    );
    let mut mosaic = Mosaic::start(&env).await?;
    let channel = mosaic.channel.clone();
    let tenant = mosaic.new_tenant(&deps.tokens, 1000).await?;
    let token = deps.tokens.owner(tenant);
    let conversation = conversation(&channel, &token).await?;

    // Open tails, each seen live (it replays the first message).
    let mut messages = MessageServiceClient::new(channel.clone());
    messages
        .append_message(authed(
            AppendMessageRequest {
                conversation_id: conversation.clone(),
                message: Some(text("hello")),
            },
            &token,
            DEADLINE,
        ))
        .await
        .map_err(status_error)?;
    let mut tails = Vec::new();
    for _ in 0..TAILS {
        let mut req = authed(
            TailMessagesRequest {
                conversation_id: conversation.clone(),
                thread_id: String::new(),
                cursor: String::new(),
            },
            &token,
            Duration::from_secs(60),
        );
        req.set_timeout(Duration::from_secs(60));
        let mut stream = messages
            .tail_messages(req)
            .await
            .map_err(status_error)?
            .into_inner();
        stream
            .message()
            .await
            .map_err(status_error)?
            .ok_or_else(|| anyhow::anyhow!("a tail ended before its replay"))?;
        tails.push(tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return (Instant::now(), Code::Ok, "ended".to_owned()),
                    Err(e) => return (Instant::now(), e.code(), detail(&e)),
                }
            }
        }));
    }
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    let first = watch.message().await.map_err(status_error)?;
    anyhow::ensure!(
        first.map(|m| m.status) == Some(ServingStatus::Serving as i32),
        "health watch did not start SERVING"
    );
    let not_serving = tokio::spawn(async move {
        while let Ok(Some(m)) = watch.message().await {
            if m.status == ServingStatus::NotServing as i32 {
                return Some(Instant::now());
            }
        }
        None
    });

    let log = CallLog::new();
    let stop = Arc::new(AtomicBool::new(false));
    let tenants = TenantServiceClient::new(channel.clone());
    let op = {
        let token = token.clone();
        let tenant = tenant.to_string();
        move |_worker: usize, _n: u64| {
            let mut tenants = tenants.clone();
            let req = authed(
                GetTenantRequest {
                    tenant_id: tenant.clone(),
                },
                &token,
                DEADLINE,
            );
            async move {
                (
                    "GetTenant",
                    String::new(),
                    tenants.get_tenant(req).await.map(drop),
                )
            }
        }
    };
    let tasks = load::spawn(&log, WORKERS, None, &stop, op);
    tokio::time::sleep(p.secs(2.0, 5.0)).await;
    let signalled = Instant::now();
    mosaic.sigterm()?;
    let status = mosaic
        .wait_exit(Duration::from_secs(DRAIN_SECS + 5))
        .await?;
    let exited = Instant::now();
    // A little more load against the closed port, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    load::stop(&stop, tasks).await;
    let path = log.save("row7-sigterm");
    let calls = log.calls();
    let told = tokio::time::timeout(Duration::from_secs(1), not_serving)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let mut tail_ends = Vec::new();
    for tail in tails {
        if let Ok(Ok(end)) = tokio::time::timeout(Duration::from_secs(1), tail).await {
            tail_ends.push(end);
        }
    }

    let before = Window::of(&calls, log.t0, signalled);
    let in_flight: Vec<_> = calls
        .iter()
        .filter(|c| c.start < signalled && c.end() > signalled)
        .collect();
    let in_flight_failed = in_flight.iter().filter(|c| c.code != Code::Ok).count();
    let after: Vec<_> = calls.iter().filter(|c| c.start >= signalled).collect();
    let after_ok = after.iter().filter(|c| c.code == Code::Ok).count();
    let after_refused = after.iter().filter(|c| c.code == Code::Unavailable).count();
    let after_other: Vec<_> = after
        .iter()
        .filter(|c| !matches!(c.code, Code::Ok | Code::Unavailable))
        .collect();
    // What the server says it handled: every GetTenant it finished, by code.
    let mut server_ok = 0usize;
    let mut server_failed = 0usize;
    for line in mosaic.logs() {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line.text) else {
            continue;
        };
        if log_field(&json, "message").as_deref() != Some("rpc finished")
            || !log_field(&json, "method").is_some_and(|m| m.ends_with("/GetTenant"))
        {
            continue;
        }
        match log_field(&json, "code").as_deref() {
            Some("OK") => server_ok += 1,
            _ => server_failed += 1,
        }
    }
    let client_ok = calls.iter().filter(|c| c.code == Code::Ok).count();
    // Accepted and failed: a call the server finished with an error, or
    // finished OK without the client getting the answer.
    let accepted_failed = server_failed + server_ok.saturating_sub(client_ok);
    let unseen = after_other.len();
    let told_after = told.map(|t| t.duration_since(signalled));
    let exit_after = exited.duration_since(signalled);
    let tails_ok = tail_ends.len() == TAILS
        && tail_ends
            .iter()
            .all(|(_, code, reason)| *code == Code::Unavailable && reason == "SHUTTING_DOWN");
    let tail_text = tail_ends
        .iter()
        .map(|(at, code, reason)| {
            format!(
                "{code:?} {reason} after {}",
                ms(at.duration_since(signalled))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let exited_ok = status.is_some_and(|s| s.success());
    let pass = told_after.is_some_and(|d| d <= Duration::from_millis(200))
        && accepted_failed == 0
        && before.failed() == 0
        && in_flight_failed == 0
        && tails_ok
        && exited_ok
        && exit_after < Duration::from_secs(DRAIN_SECS);
    let other_text = if after_other.is_empty() {
        "none".to_owned()
    } else {
        after_other
            .iter()
            .take(3)
            .map(|c| format!("{:?} {}", c.code, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Ok(vec![Row::new(
        "7",
        format!("SIGTERM under GetTenant c={WORKERS} with {TAILS} open tails and a health Watch"),
        format!(
            "NOT_SERVING after {}; {} calls before the signal ({} failed), {} in flight at it \
             ({in_flight_failed} failed), after it {after_ok} OK + {after_refused} refused UNAVAILABLE \
             + {unseen} other ({other_text}); the server finished {server_ok} OK and {server_failed} failed \
             (client got {client_ok} OK): accepted calls failed {accepted_failed}; tails: {tail_text}; exit {:?} after {} (deadline {DRAIN_SECS} s); calls {path}",
            told_after.map(ms).unwrap_or_else(|| "never".into()),
            before.calls,
            before.failed(),
            in_flight.len(),
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "still running".into()),
            ms(exit_after),
        ),
        "NOT_SERVING <= 200 ms; 0 accepted calls fail; every tail UNAVAILABLE SHUTTING_DOWN; \
         exit 0 before the drain deadline",
        pass,
    )])
}

fn detail(status: &tonic::Status) -> String {
    tonic_types::StatusExt::get_error_details(status)
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_else(|| status.message().to_owned())
}

pub(crate) fn text(content: &str) -> Message {
    Message {
        client_message_id: format!("c-{}", Uuid::now_v7().simple()),
        sender_type: SenderType::User as i32,
        sender_id: "visitor-1".into(),
        message_type: MessageType::Text as i32,
        content: content.into(),
        ..Default::default()
    }
}

/// A new conversation (with an agent and a contact made for it); its id.
pub(crate) async fn conversation(
    channel: &tonic::transport::Channel,
    token: &str,
) -> anyhow::Result<String> {
    let agent = AgentServiceClient::new(channel.clone())
        .create_agent(authed(
            CreateAgentRequest {
                agent: Some(Agent {
                    display_name: "Support bot".into(),
                    model: "gpt-4o-mini".into(),
                    enabled: true,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            token,
            DEADLINE,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    let contact = ContactServiceClient::new(channel.clone())
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(Contact {
                    email: format!("c-{}@example.com", Uuid::new_v4().simple()),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            token,
            DEADLINE,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    let conversation = ConversationServiceClient::new(channel.clone())
        .start_conversation(authed(
            StartConversationRequest {
                conversation: Some(Conversation {
                    agent_id: agent.agent_id,
                    contact_id: contact.contact_id,
                    channel: ConvChannel::Chat as i32,
                    title: "faults".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            token,
            Duration::from_secs(10),
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(conversation.conversation_id)
}
