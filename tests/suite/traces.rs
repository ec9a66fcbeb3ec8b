//! Trace export, end to end: the real `mosaic serve` process exports to an
//! OTLP receiver served here (the trace service of the `opentelemetry-proto`
//! definitions, on tonic). A conversation start that asks agents and crm, and
//! an append whose AI usage is charged through billing, are each one trace
//! under the caller's `traceparent`, with every span linked to its parent,
//! the conventions' attributes, and no token, secret or message text anywhere
//! in what was exported.
//!
//! A process of its own: the span exporter is part of the global subscriber,
//! which the in-process suite of the other tests has already set.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use crate::conversations_support::{ConvTenant, ai_message, conversations_on, messages_on};
use crate::harness::app;

/// Collects what the process exports.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// One exported span, flattened for the assertions.
#[derive(Debug, Clone)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    micros: u64,
    attributes: HashMap<String, String>,
}

/// Whether `bytes` hold what looks like a JWT: `eyJ` (a JSON header in
/// base64url) followed by at least 20 more base64url characters.
fn contains_jwt(bytes: &[u8]) -> bool {
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    bytes
        .windows(23)
        .any(|w| w.starts_with(b"eyJ") && w[3..].iter().all(b64))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(span: &Span) -> Exported {
    let attributes = span
        .attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect();
    Exported {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent: hex(&span.parent_span_id),
        name: span.name.clone(),
        kind: span.kind,
        micros: span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano)
            / 1000,
        attributes,
    }
}

/// The span tree under `root`, one line per span: name, kind, duration.
fn tree(spans: &[Exported], root: &str, depth: usize, out: &mut String) {
    for span in spans.iter().filter(|s| s.parent == root) {
        let kind = match SpanKind::try_from(span.kind) {
            Ok(SpanKind::Server) => "server",
            Ok(SpanKind::Client) => "client",
            _ => "other",
        };
        out.push_str(&format!(
            "{}{} [{kind}] {:.3} ms\n",
            "  ".repeat(depth),
            span.name,
            span.micros as f64 / 1000.0
        ));
        tree(spans, &span.span_id, depth + 1, out);
    }
}

#[track_caller]
fn one<'a>(spans: &'a [Exported], name: &str, parent: &str) -> &'a Exported {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.parent == parent)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {name} under {parent}, got {found:#?} among {spans:#?}"
    );
    found[0]
}

fn children<'a>(spans: &'a [Exported], parent: &'a Exported) -> Vec<&'a Exported> {
    spans
        .iter()
        .filter(|s| s.parent == parent.span_id)
        .collect()
}

#[track_caller]
fn assert_rpc(span: &Exported, kind: SpanKind, service: &str, method: &str) {
    assert_eq!(span.kind, kind as i32, "{span:#?}");
    let a = &span.attributes;
    assert_eq!(
        a.get("rpc.system").map(String::as_str),
        Some("grpc"),
        "{span:#?}"
    );
    assert_eq!(
        a.get("rpc.service").map(String::as_str),
        Some(service),
        "{span:#?}"
    );
    assert_eq!(
        a.get("rpc.method").map(String::as_str),
        Some(method),
        "{span:#?}"
    );
    assert_eq!(
        a.get("rpc.grpc.status_code").map(String::as_str),
        Some("0"),
        "{span:#?}"
    );
}

/// Settings the child shares with the in-process suite (its token key, its
/// databases), plus its own address and the exporter's.
fn child_env(port: u16, otlp: &str) -> Vec<(String, String)> {
    let env = &app().env;
    let mut vars: Vec<(String, String)> = [
        "MOSAIC_JWT_HS256_SECRET",
        "MOSAIC_JWT_PUBLIC_KEY",
        "MOSAIC_JWT_ISSUER",
        "MOSAIC_RATE_LIMIT_PER_SECOND",
        "MOSAIC_CONVERSATIONS_MONGODB_URL",
        "MOSAIC_VAULT_MASTER_KEY",
        "MOSAIC_VAULT_MASTER_KEY_FILE",
        "MOSAIC_VAULT_PREVIOUS_MASTER_KEYS",
        "MOSAIC_DB_MIN_CONNECTIONS",
    ]
    .iter()
    .map(|name| {
        let value = env.get(name).unwrap().unwrap_or_default();
        ((*name).to_owned(), value)
    })
    .collect();
    vars.extend(
        [
            ("MOSAIC_GRPC_ADDR", format!("127.0.0.1:{port}")),
            ("MOSAIC_METRICS_ADDR", "off".to_owned()),
            ("MOSAIC_SHUTDOWN_TIMEOUT_SECS", "2".to_owned()),
            ("MOSAIC_LOG", "warn".to_owned()),
            ("MOSAIC_DB_MAX_CONNECTIONS", "3".to_owned()),
            ("MOSAIC_DB_READ_CONNECTIONS", "1".to_owned()),
            // The append's own attempt charges; the sweeper stays out of it.
            ("MOSAIC_CONVERSATIONS_CHARGE_GRACE_MS", "60000".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.to_owned()),
            ("OTEL_SERVICE_NAME", "mosaic-trace-test".to_owned()),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    vars
}

fn with_trace<T>(
    message: T,
    token: &str,
    traceparent: &str,
    request_id: &str,
) -> tonic::Request<T> {
    let mut request = crate::harness::authed(message, token);
    let md = request.metadata_mut();
    md.insert("traceparent", traceparent.parse().unwrap());
    md.insert("x-request-id", request_id.parse().unwrap());
    request
}

#[tokio::test]
async fn a_conversation_start_and_a_charged_append_are_one_trace_each() {
    let tenant = ConvTenant::with_credits(1_000).await;

    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let collected = receiver.0.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let port = crate::harness::child_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mosaic"))
        .arg("serve")
        .envs(child_env(port, &otlp))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let mut serving = false;
    while !serving && started.elapsed() < Duration::from_secs(60) {
        if let Ok(ch) = channel.connect().await
            && let Ok(r) = HealthClient::new(ch)
                .check(HealthCheckRequest::default())
                .await
        {
            serving = r.into_inner().status == ServingStatus::Serving as i32;
        }
        if !serving {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(serving, "the traced suite never became SERVING");
    let channel = channel.connect_lazy();

    let token = tenant.token("admin");
    let start_trace = Uuid::new_v4().simple().to_string();
    let start_parent = &Uuid::new_v4().simple().to_string()[..16];
    let start_request = format!("trace-test-{}", Uuid::now_v7());
    let conversation = conversations_on(channel.clone())
        .start_conversation(with_trace(
            mosaic_proto::conversations::StartConversationRequest {
                conversation: Some(tenant.new_conversation()),
                request_id: String::new(),
            },
            &token,
            &format!("00-{start_trace}-{start_parent}-01"),
            &start_request,
        ))
        .await
        .expect("start conversation")
        .into_inner();

    let text = format!("private words {}", Uuid::new_v4());
    let append_trace = Uuid::new_v4().simple().to_string();
    let append_parent = &Uuid::new_v4().simple().to_string()[..16];
    let appended = messages_on(channel)
        .append_message(with_trace(
            mosaic_proto::conversations::AppendMessageRequest {
                conversation_id: conversation.conversation_id.clone(),
                message: Some(ai_message(&text, 1200, 300)),
            },
            &token,
            &format!("00-{append_trace}-{append_parent}-01"),
            &format!("trace-test-{}", Uuid::now_v7()),
        ))
        .await
        .expect("append")
        .into_inner();
    assert_eq!(
        appended.charge.as_ref().map(|c| c.state),
        Some(mosaic_proto::conversations::ChargeState::Charged as i32),
        "the append charged billing itself: {appended:?}"
    );

    // SIGTERM: the process sends what it still holds before it exits.
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the traced suite did not exit")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use tokio::io::AsyncReadExt as _;
        let _ = pipe.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "exit {status:?}: {stderr}");

    let requests = collected.lock().unwrap().clone();
    assert!(!requests.is_empty(), "nothing exported; stderr: {stderr}");

    // Nothing secret or private in any byte that left the process.
    let secret = app().env.get("MOSAIC_JWT_HS256_SECRET").unwrap().unwrap();
    for request in &requests {
        let bytes = request.encode_to_vec();
        let text_form = String::from_utf8_lossy(&bytes);
        for (what, needle) in [
            ("the caller's token", token.as_str()),
            ("the token signing secret", secret.as_str()),
            ("a bearer credential", "Bearer"),
            ("the message text", text.as_str()),
        ] {
            assert!(!text_form.contains(needle), "{what} was exported");
        }
        assert!(
            !contains_jwt(&bytes),
            "a JWT (the svc:charging token?) was exported"
        );
        for resource in &request.resource_spans {
            let name = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref());
            assert_eq!(
                name,
                Some(&Value::StringValue("mosaic-trace-test".into())),
                "service.name"
            );
        }
    }
    let spans: Vec<Exported> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(flatten)
        .collect();

    // The conversation start: one trace under the caller's span.
    let start: Vec<Exported> = spans
        .iter()
        .filter(|s| s.trace_id == start_trace)
        .cloned()
        .collect();
    let mut shown = String::new();
    tree(&start, start_parent, 0, &mut shown);
    println!("StartConversation trace {start_trace}:\n{shown}");

    let server = one(
        &start,
        "mosaic.conversations.v1.ConversationService/StartConversation",
        start_parent,
    );
    assert_rpc(
        server,
        SpanKind::Server,
        "mosaic.conversations.v1.ConversationService",
        "StartConversation",
    );
    assert_eq!(server.attributes["tenant"], tenant.id.to_string());
    assert_eq!(server.attributes["request_id"], start_request);
    for (peer, service, method) in [
        ("agents", "mosaic.agents.v1.AgentService", "GetAgent"),
        ("crm", "mosaic.crm.v1.ContactService", "GetContact"),
    ] {
        let name = format!("{service}/{method}");
        let client = one(&start, &name, &server.span_id);
        assert_rpc(client, SpanKind::Client, service, method);
        assert_eq!(client.attributes["peer.service"], peer);
        // The peer's server span is the child of the client span: the
        // outgoing traceparent named it.
        let callee = one(&start, &name, &client.span_id);
        assert_rpc(callee, SpanKind::Server, service, method);
        assert_eq!(callee.attributes["tenant"], tenant.id.to_string());
        assert_eq!(callee.attributes["request_id"], start_request);
        let stores: Vec<_> = children(&start, callee)
            .iter()
            .filter_map(|s| s.attributes.get("db.system.name").cloned())
            .collect();
        assert!(
            stores.iter().any(|s| s == "postgresql" || s == "redis"),
            "{name} read no store: {stores:?}\n{shown}"
        );
    }
    let inserts: Vec<_> = children(&start, server)
        .into_iter()
        .filter(|s| s.name == "insert conversations")
        .collect();
    assert_eq!(inserts.len(), 1, "{shown}");
    assert_eq!(inserts[0].attributes["db.system.name"], "mongodb");
    assert_eq!(inserts[0].kind, SpanKind::Client as i32);

    // The append: its charge through billing is in the same trace.
    let append: Vec<Exported> = spans
        .iter()
        .filter(|s| s.trace_id == append_trace)
        .cloned()
        .collect();
    let mut shown = String::new();
    tree(&append, append_parent, 0, &mut shown);
    println!("AppendMessage trace {append_trace}:\n{shown}");
    let server = one(
        &append,
        "mosaic.conversations.v1.MessageService/AppendMessage",
        append_parent,
    );
    assert_rpc(
        server,
        SpanKind::Server,
        "mosaic.conversations.v1.MessageService",
        "AppendMessage",
    );
    let consume = "mosaic.billing.v1.CreditService/Consume";
    let client = one(&append, consume, &server.span_id);
    assert_rpc(
        client,
        SpanKind::Client,
        "mosaic.billing.v1.CreditService",
        "Consume",
    );
    let billing = one(&append, consume, &client.span_id);
    assert_rpc(
        billing,
        SpanKind::Server,
        "mosaic.billing.v1.CreditService",
        "Consume",
    );
    // Billing applies a charge in one PostgreSQL message (`postgresql write`).
    assert!(
        children(&append, billing)
            .iter()
            .any(|s| s.name.starts_with("postgresql ")
                && s.kind == SpanKind::Client as i32
                && s.attributes["db.system.name"] == "postgresql"),
        "billing's write: {shown}"
    );
    // Only the spans made for export: no internal (`#[instrument]`) ones.
    for span in start.iter().chain(&append) {
        assert!(
            span.kind == SpanKind::Server as i32 || span.kind == SpanKind::Client as i32,
            "{span:#?}"
        );
    }
    // Every span of the two traces hangs off the tree (no orphans).
    for (trace, spans, root) in [
        (&start_trace, &start, start_parent),
        (&append_trace, &append, append_parent),
    ] {
        for span in spans.iter() {
            assert!(
                span.parent == root || spans.iter().any(|p| p.span_id == span.parent),
                "an orphan in trace {trace}: {span:#?}"
            );
        }
    }
}
