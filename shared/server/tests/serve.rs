//! Black-box tests of `mosaic_server::serve`: a real server on 127.0.0.1:0,
//! called through generated gRPC clients and plain HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mosaic_core::{Metrics, Probe, ProbeFuture, StartupError};
use mosaic_proto::crm::contact_service_server::{ContactService, ContactServiceServer};
use mosaic_proto::crm::{
    Contact, CreateContactRequest, DeleteContactRequest, GetContactRequest, ImportContactsRequest,
    ImportContactsResponse, ListContactsRequest, ListContactsResponse, UndeleteContactRequest,
    UpdateContactRequest,
};
use mosaic_proto::identity::token_service_client::TokenServiceClient;
use mosaic_proto::identity::token_service_server::{TokenService, TokenServiceServer};
use mosaic_proto::identity::{ExchangeApiKeyRequest, ExchangeApiKeyResponse};
use mosaic_server::{ClientGone, Health, HealthGroup, ServeOptions, ServerConfig, Shutdown, serve};
use mosaic_tenant::{AuthConfig, Claims, KeyMaterial, TokenSigner, TokenVerifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN_SERVICE: &str = "mosaic.identity.v1.TokenService";
const EXCHANGE: &str = "/mosaic.identity.v1.TokenService/ExchangeApiKey";
const IMPORT: &str = "/mosaic.crm.v1.ContactService/ImportContacts";
/// The message limit the test service is built with.
const MAX_MESSAGE_BYTES: usize = 1024;

/// A token service that takes its time, so a call can be in flight.
struct SlowTokens {
    delay: Duration,
}

#[tonic::async_trait]
impl TokenService for SlowTokens {
    async fn exchange_api_key(
        &self,
        _request: Request<ExchangeApiKeyRequest>,
    ) -> Result<Response<ExchangeApiKeyResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        Ok(Response::new(ExchangeApiKeyResponse {
            access_token: "t".into(),
            token_type: "Bearer".into(),
            expire_time: None,
        }))
    }
}

/// What the test contact service's import saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Started,
    /// The stream ended: the messages read, and whether the client was gone.
    Ended {
        messages: usize,
        gone: bool,
    },
}

/// A contact service whose import reads its stream to the end and answers OK,
/// as a handler that trusted tonic's end of stream would.
struct Imports {
    seen: mpsc::UnboundedSender<Seen>,
}

#[tonic::async_trait]
impl ContactService for Imports {
    async fn create_contact(
        &self,
        _: Request<CreateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn get_contact(
        &self,
        _: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn list_contacts(
        &self,
        _: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn update_contact(
        &self,
        _: Request<UpdateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn delete_contact(
        &self,
        _: Request<DeleteContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn undelete_contact(
        &self,
        _: Request<UndeleteContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn import_contacts(
        &self,
        req: Request<Streaming<ImportContactsRequest>>,
    ) -> Result<Response<ImportContactsResponse>, Status> {
        let gone = ClientGone::of(&req);
        let _ = self.seen.send(Seen::Started);
        let mut stream = req.into_inner();
        let mut messages = 0;
        let result = loop {
            match stream.message().await {
                Ok(Some(_)) => messages += 1,
                Ok(None) => break Ok(Response::new(ImportContactsResponse::default())),
                Err(status) => break Err(status),
            }
        };
        let _ = self.seen.send(Seen::Ended {
            messages,
            gone: gone.is_gone(),
        });
        result
    }
}

/// A probe the test flips.
struct Flag(Arc<AtomicBool>);

impl Probe for Flag {
    fn name(&self) -> &str {
        "flag"
    }
    fn check(&self) -> ProbeFuture<'_> {
        let ok = self.0.load(Ordering::SeqCst);
        Box::pin(async move { if ok { Ok(()) } else { Err("flag down".into()) } })
    }
}

struct TestServer {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    probe_ok: Arc<AtomicBool>,
    stop: Shutdown,
    token: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), StartupError>>,
    /// What the import handler saw, in order.
    imports: mpsc::UnboundedReceiver<Seen>,
}

impl TestServer {
    async fn start(shutdown_timeout: Duration, handler_delay: Duration) -> Self {
        let auth = AuthConfig {
            issuer: "test".into(),
            audience: "mosaic".into(),
            key: KeyMaterial::Hs256(b"test-secret".to_vec()),
            cache_ttl: Duration::from_secs(10),
            max_lifetime: mosaic_tenant::token::DEFAULT_MAX_LIFETIME,
        };
        let verifier = TokenVerifier::new(auth.clone()).expect("verifier");
        let token = TokenSigner::new(&auth.key)
            .expect("signer")
            .sign(&Claims::new(
                &auth,
                "user:u".into(),
                Some(mosaic_core::TenantId::new()),
                vec!["member".into()],
                Duration::from_secs(300),
            ))
            .expect("token");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let addr = listener.local_addr().expect("grpc addr");
        let metrics_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let metrics_addr = metrics_listener.local_addr().expect("metrics addr");

        let config = ServerConfig {
            shutdown_timeout,
            probe_interval: Duration::from_millis(50),
            max_message_bytes: MAX_MESSAGE_BYTES,
            ..ServerConfig::default()
        };
        let tokens = TokenServiceServer::new(SlowTokens {
            delay: handler_delay,
        })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        let (seen, imports) = mpsc::unbounded_channel();
        let routes = tonic::service::Routes::new(tokens)
            .add_service(ContactServiceServer::new(Imports { seen }));

        let probe_ok = Arc::new(AtomicBool::new(true));
        let stop = Shutdown::new();
        let opts = ServeOptions {
            health: Health::new(vec![HealthGroup::new(
                &[TOKEN_SERVICE],
                vec![Arc::new(Flag(probe_ok.clone()))],
            )]),
            metrics_listener: Some(metrics_listener),
            stop: stop.clone(),
            // ExchangeApiKey is deliberately not public here, to exercise auth.
            ..ServeOptions::new(config, verifier, Metrics::new())
        };
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, routes, opts, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr,
            probe_ok,
            stop,
            token,
            shutdown: Some(tx),
            handle,
            imports,
        }
    }

    /// A raw HTTP/2 connection, to do what a well-behaved gRPC client does
    /// not: reset a stream, drop the connection mid-call.
    async fn h2(&self) -> (h2::client::SendRequest<prost::bytes::Bytes>, JoinHandle<()>) {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (send, driver)
    }

    /// Opens an import call (headers only, no message) on `send`.
    async fn open_import(
        &self,
        send: &mut h2::client::SendRequest<prost::bytes::Bytes>,
    ) -> h2::SendStream<prost::bytes::Bytes> {
        let request = http::Request::post(format!("http://{}{IMPORT}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {}", self.token))
            .body(())
            .expect("request");
        send.clone().ready().await.expect("ready");
        let (_response, stream) = send.send_request(request, false).expect("send");
        stream
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    fn authorized<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        let value = format!("Bearer {}", self.token)
            .parse()
            .expect("header value");
        req.metadata_mut().insert("authorization", value);
        req
    }

    /// Fires the shutdown future; returns when it fired.
    fn shut_down(&mut self) -> Instant {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        Instant::now()
    }

    async fn scrape(&self) -> String {
        let mut conn = TcpStream::connect(self.metrics_addr)
            .await
            .expect("connect metrics");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut text = String::new();
        conn.read_to_string(&mut text).await.expect("response");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text
    }

    /// The value of `mosaic_grpc_requests_total{code,method}`, 0 when absent.
    async fn count(&self, method: &str, code: &str) -> u64 {
        let needle = format!(r#"mosaic_grpc_requests_total{{code="{code}",method="{method}"}} "#);
        self.scrape()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits (up to 3s) for the counter to reach `at_least`.
    async fn await_count(&self, method: &str, code: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let n = self.count(method, code).await;
            if n >= at_least || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn check(client: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("check")
        .into_inner()
        .status()
}

/// Polls `service` until it reports `want` (or 3s pass).
async fn await_status(client: &mut HealthClient<Channel>, service: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = check(client, service).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service:?} stayed {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_follows_the_probes() {
    let server = TestServer::start(Duration::from_secs(5), Duration::ZERO).await;
    let mut health = HealthClient::new(server.channel().await);

    await_status(&mut health, "", ServingStatus::Serving).await;
    await_status(&mut health, TOKEN_SERVICE, ServingStatus::Serving).await;

    server.probe_ok.store(false, Ordering::SeqCst);
    await_status(&mut health, "", ServingStatus::NotServing).await;
    await_status(&mut health, TOKEN_SERVICE, ServingStatus::NotServing).await;

    server.probe_ok.store(true, Ordering::SeqCst);
    await_status(&mut health, "", ServingStatus::Serving).await;

    // Services the server does not list are not found, as the protocol says.
    let err = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nope".into(),
        })
        .await
        .expect_err("unlisted");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_describes_the_error_details() {
    // grpcurl (reflection v1alpha) needs these to print an error's details.
    use tonic_reflection::pb::v1alpha;
    let server = TestServer::start(Duration::from_secs(5), Duration::ZERO).await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
    ] {
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    symbol.to_owned(),
                ),
            ),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses.next().await.expect("one response").expect("ok");
        let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        )) = response.message_response
        else {
            panic!("{symbol}: expected its file, got {response:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services() {
    use tonic_reflection::pb::{v1, v1alpha};

    let server = TestServer::start(Duration::from_secs(5), Duration::ZERO).await;
    let channel = server.channel().await;
    let expected = [
        TOKEN_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(
            names.iter().any(|n| n == name),
            "v1 lacks {name}: {names:?}"
        );
    }
    // Described, but not served by this server, so not listed.
    assert!(
        !names.iter().any(|n| n == "mosaic.crm.v1.CrmService"),
        "{names:?}"
    );

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(
            names.iter().any(|n| n == name),
            "v1alpha lacks {name}: {names:?}"
        );
    }
    // The bidirectional stream ends with OK in its trailers.
    assert!(responses.next().await.is_none());
    assert_eq!(
        server
            .await_count(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "OK",
                1
            )
            .await,
        1
    );
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code() {
    let server = TestServer::start(Duration::from_secs(5), Duration::ZERO).await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut tokens = TokenServiceClient::new(channel.clone());

    // OK, public.
    check(&mut health, "").await;
    // UNAUTHENTICATED: answered trailers-only by the auth layer.
    let err = tokens
        .exchange_api_key(ExchangeApiKeyRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    // OK, with a token.
    tokens
        .exchange_api_key(server.authorized(ExchangeApiKeyRequest::default()))
        .await
        .expect("authorized");
    // OUT_OF_RANGE: the request is larger than the service's limit.
    let big = ExchangeApiKeyRequest {
        api_key: "k".repeat(MAX_MESSAGE_BYTES + 1),
        ttl_seconds: 0,
    };
    let err = tokens
        .exchange_api_key(server.authorized(big))
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // An unknown method: UNIMPLEMENTED with a token, counted under "other".
    let mut unknown = tonic::client::Grpc::new(channel.clone());
    unknown.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/mosaic.nope.v1.Nope/Nope");
    let err = unknown
        .unary::<_, (), _>(
            server.authorized(()),
            path,
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .expect_err("unknown method");
    assert_eq!(err.code(), Code::Unimplemented);
    // CANCELLED: a health watch the client hangs up on.
    let watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch");
    drop(watch);

    assert_eq!(server.count("/grpc.health.v1.Health/Check", "OK").await, 1);
    assert_eq!(server.count(EXCHANGE, "UNAUTHENTICATED").await, 1);
    assert_eq!(server.count(EXCHANGE, "OK").await, 1);
    assert_eq!(server.count(EXCHANGE, "OUT_OF_RANGE").await, 1);
    assert_eq!(server.count("other", "UNIMPLEMENTED").await, 1);
    assert_eq!(
        server
            .await_count("/grpc.health.v1.Health/Watch", "CANCELLED", 1)
            .await,
        1
    );
    let text = server.scrape().await;
    assert!(
        text.contains(
            r#"mosaic_grpc_request_duration_seconds_count{method="/grpc.health.v1.Health/Check"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_lets_a_unary_call_in_flight_finish() {
    let mut server = TestServer::start(Duration::from_secs(10), Duration::from_millis(500)).await;
    let mut tokens = TokenServiceClient::new(server.channel().await);
    let call = tokio::spawn({
        let req = server.authorized(ExchangeApiKeyRequest::default());
        async move { tokens.exchange_api_key(req).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let fired = server.shut_down();

    let answer = call.await.expect("joined");
    assert!(answer.is_ok(), "{answer:?}");
    server.handle.await.expect("joined").expect("serve");
    // Returned once the call finished, well before the deadline.
    assert!(
        fired.elapsed() < Duration::from_secs(5),
        "{:?}",
        fired.elapsed()
    );
    assert!(server.stop.is_triggered());
}

#[tokio::test]
async fn shutdown_ends_within_the_deadline_despite_an_open_stream() {
    let mut server = TestServer::start(Duration::from_secs(1), Duration::ZERO).await;
    let mut health = HealthClient::new(server.channel().await);
    await_status(&mut health, "", ServingStatus::Serving).await;

    // A watch stays open until the server goes away.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("first").expect("status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let fired = server.shut_down();
    // Watchers learn NOT_SERVING first.
    let next = watch.message().await.expect("update").expect("status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert!(server.stop.is_triggered());

    server.handle.await.expect("joined").expect("serve");
    let took = fired.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "returned before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // The stream's connection was dropped, not left running.
    let end = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("stream ended");
    assert!(end.is_err(), "{end:?}");
}

#[tokio::test]
async fn client_streams_abandoned_before_their_first_message_are_cancelled() {
    let mut server = TestServer::start(Duration::from_secs(5), Duration::ZERO).await;

    // The client resets the stream (what a dropped tonic call sends).
    let (mut send, driver) = server.h2().await;
    let mut stream = server.open_import(&mut send).await;
    assert_eq!(server.imports.recv().await, Some(Seen::Started));
    stream.send_reset(h2::Reason::CANCEL);
    // tonic ends the handler's stream as if finished; the flag tells it apart.
    assert_eq!(
        server.imports.recv().await,
        Some(Seen::Ended {
            messages: 0,
            gone: true
        })
    );
    assert_eq!(server.await_count(IMPORT, "CANCELLED", 1).await, 1);
    driver.abort();

    // The client's connection goes away mid-call.
    let (mut send, driver) = server.h2().await;
    let _stream = server.open_import(&mut send).await;
    assert_eq!(server.imports.recv().await, Some(Seen::Started));
    driver.abort();
    drop(send);
    let ended = server.imports.recv().await;
    assert!(
        matches!(
            ended,
            Some(Seen::Ended {
                messages: 0,
                gone: true
            })
        ),
        "{ended:?}"
    );
    assert_eq!(server.await_count(IMPORT, "CANCELLED", 2).await, 2);

    // Neither was the client's UNKNOWN, nor the server's OK.
    assert_eq!(server.count(IMPORT, "UNKNOWN").await, 0);
    assert_eq!(server.count(IMPORT, "OK").await, 0);
}
