//! [`MetricsLayer`]: counts every gRPC call by method and final status code,
//! observes its duration, and writes one log line when it finishes.
//!
//! The final code is where gRPC puts it: the `grpc-status` header of a
//! trailers-only response (errors answered before any message, e.g. by the
//! auth layer), otherwise the trailers at the end of the response body, which
//! is why the body is wrapped. A call whose response (or body) is dropped
//! before a status is known was cancelled by the client and counts as
//! `CANCELLED`. So does a call whose request stream broke (the client reset
//! it or closed the connection, e.g. a client-streaming call abandoned before
//! its first message): whatever the handler answers then reaches nobody.
//! Handlers learn of it through [`ClientGone`], which tonic cannot tell them:
//! its decoder ends a reset request stream as if the client had finished it.
//!
//! While spans are exported, the call's server span (made by the auth
//! layer, handed over in [`CallMeta`]) ends here too, with the final code as
//! `rpc.grpc.status_code`.
//!
//! Label cardinality stays bounded: the `method` label is the request path
//! only for methods this server knows (from the descriptor sets), and
//! `other` for anything a client makes up.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use mosaic_tenant::CallMeta;
use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::CallMetrics;

/// The `method` label of calls to paths the server does not know.
pub const OTHER_METHOD: &str = "other";

/// Whether the client abandoned the call: its request stream ended in an
/// error rather than with END_STREAM. In the extensions of every request.
///
/// A client-streaming handler reads it where the stream ends, because tonic
/// ends a stream the client reset (RST_STREAM CANCEL) like a finished one:
/// rows sent before a cancel must not be taken for a complete upload.
#[derive(Debug, Clone, Default)]
pub struct ClientGone(Arc<AtomicBool>);

impl ClientGone {
    /// Whether the request stream of `req` broke (`false` outside the layer).
    pub fn of<T>(req: &tonic::Request<T>) -> Self {
        req.extensions().get::<Self>().cloned().unwrap_or_default()
    }

    pub fn is_gone(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A request body that notes in [`ClientGone`] when it breaks.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        gone: ClientGone,
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Err(_)) = &frame {
            this.gone.set();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone)]
pub struct MetricsLayer {
    metrics: CallMetrics,
    known_methods: Arc<HashSet<Arc<str>>>,
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("known_methods", &self.known_methods.len())
            .finish()
    }
}

impl MetricsLayer {
    /// `known_methods` are full paths such as `/mosaic.crm.v1.CrmService/ListAuditEvents`
    /// (see [`reflection::method_paths`](crate::reflection::method_paths)).
    pub fn new(metrics: CallMetrics, known_methods: impl IntoIterator<Item = String>) -> Self {
        Self {
            metrics,
            known_methods: Arc::new(known_methods.into_iter().map(Arc::from).collect()),
        }
    }

    fn label(&self, path: &str) -> Option<Arc<str>> {
        self.known_methods.get(path).cloned()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    layer: MetricsLayer,
}

impl<S> std::fmt::Debug for MetricsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsService")
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>>,
    RB: Body,
{
    type Response = Response<MetricsBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let gone = ClientGone::default();
        let record = CallRecord {
            metrics: self.layer.metrics.clone(),
            label: self.layer.label(path),
            path: path.to_owned(),
            start: Instant::now(),
            meta: None,
            gone: gone.clone(),
            finished: false,
        };
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(gone.clone());
        let req = Request::from_parts(parts, RequestBody { inner: body, gone });
        ResponseFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response future; notes the status of
    /// trailers-only responses.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<CallRecord>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Body,
{
    type Output = Result<Response<MetricsBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut record = this.record.take();
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                if let Some(r) = record.as_mut() {
                    // The record alone holds the call's span from here on, so
                    // the span ends with the call's final status.
                    r.meta = parts.extensions.get_mut::<CallMeta>().map(|meta| {
                        let copy = meta.clone();
                        meta.span = None;
                        copy
                    });
                }
                // Trailers-only: the status is known already.
                if let Some(code) = grpc_status(&parts.headers) {
                    finish(&mut record, code);
                }
                let body = MetricsBody {
                    inner: body,
                    record,
                };
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            Err(e) => {
                // The connection resets the stream; the client sees no status.
                finish(&mut record, Code::Unknown);
                Poll::Ready(Err(e))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call when its trailers go out.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        record: Option<CallRecord>,
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(f)) => f
                .trailers_ref()
                .map(|t| grpc_status(t).unwrap_or(Code::Unknown)),
            // A body error or an end without trailers: no status reaches the client.
            Some(Err(_)) | None => Some(Code::Unknown),
        };
        if let Some(code) = code {
            finish(this.record, code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// One call on its way through the server. Recorded exactly once: by
/// [`finish`], or as `CANCELLED` when dropped unfinished.
struct CallRecord {
    metrics: CallMetrics,
    /// `None` for paths the server does not know.
    label: Option<Arc<str>>,
    path: String,
    start: Instant,
    meta: Option<CallMeta>,
    gone: ClientGone,
    finished: bool,
}

/// Records the call, unless that happened already.
fn finish(record: &mut Option<CallRecord>, code: Code) {
    if let Some(mut r) = record.take() {
        r.record(code);
    }
}

impl CallRecord {
    fn record(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        // The handler's answer to a broken request stream reaches nobody.
        let code = if self.gone.is_gone() {
            Code::Cancelled
        } else {
            code
        };
        let elapsed = self.start.elapsed();
        if let Some(meta) = self.meta.as_mut() {
            meta.record_status(code);
            // Ends the exported span (the last handle to it).
            meta.span = None;
        }
        let code_name = code_name(code);
        let label = self.label.as_deref().unwrap_or(OTHER_METHOD);
        self.metrics.observe(label, code_name, elapsed);

        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let request_id = self.meta.as_ref().map(|m| m.request_id.as_str());
        let tenant = self
            .meta
            .as_ref()
            .and_then(|m| m.tenant)
            .map(|t| t.to_string());
        let tenant = tenant.as_deref();
        let method = self.path.as_str();
        if code == Code::Ok {
            tracing::debug!(
                method,
                code = code_name,
                duration_ms,
                request_id,
                tenant,
                "rpc finished"
            );
        } else {
            tracing::info!(
                method,
                code = code_name,
                duration_ms,
                request_id,
                tenant,
                "rpc finished"
            );
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

/// The canonical name of a gRPC code, as other gRPC tooling labels it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_core::Metrics;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A body of given frames.
    struct Frames(VecDeque<Frame<&'static [u8]>>);

    impl Body for Frames {
        type Data = &'static [u8];
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn trailers(code: &'static str) -> Frame<&'static [u8]> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static(code));
        Frame::trailers(t)
    }

    fn layer(metrics: &Metrics) -> MetricsLayer {
        let calls = CallMetrics::register(metrics).expect("register");
        MetricsLayer::new(calls, ["/a.B/C".to_owned()])
    }

    /// Answers every call with `headers` and a body of `frames`.
    fn answer(
        headers: &'static [(&'static str, &'static str)],
        frames: fn() -> Vec<Frame<&'static [u8]>>,
    ) -> impl Service<
        Request<RequestBody<()>>,
        Response = Response<Frames>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        tower::service_fn(move |_req: Request<RequestBody<()>>| async move {
            let mut resp = Response::new(Frames(frames().into()));
            for (k, v) in headers {
                resp.headers_mut()
                    .insert(*k, http::HeaderValue::from_static(v));
            }
            Ok::<_, Infallible>(resp)
        })
    }

    fn count(metrics: &Metrics, method: &str, code: &str) -> u64 {
        let needle = format!(r#"mosaic_grpc_requests_total{{code="{code}",method="{method}"}} "#);
        let text = metrics.render().unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    async fn drain(mut body: Pin<&mut MetricsBody<Frames>>) {
        while std::future::poll_fn(|cx| body.as_mut().poll_frame(cx))
            .await
            .is_some()
        {}
    }

    fn req(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap_or_default()
    }

    #[tokio::test]
    async fn trailers_only_status_comes_from_the_header() {
        let metrics = Metrics::new();
        let mut svc = layer(&metrics).layer(answer(&[("grpc-status", "16")], Vec::new));
        let resp = svc.call(req("/a.B/C")).await.expect("infallible");
        // Recorded before the body is read.
        assert_eq!(count(&metrics, "/a.B/C", "UNAUTHENTICATED"), 1);
        drop(resp);
        assert_eq!(count(&metrics, "/a.B/C", "CANCELLED"), 0);
    }

    #[tokio::test]
    async fn streamed_status_comes_from_the_trailers() {
        let metrics = Metrics::new();
        let mut svc = layer(&metrics).layer(answer(&[], || {
            vec![Frame::data(b"x".as_slice()), trailers("5")]
        }));
        let resp = svc.call(req("/a.B/C")).await.expect("infallible");
        assert_eq!(count(&metrics, "/a.B/C", "NOT_FOUND"), 0);
        let mut body = std::pin::pin!(resp.into_body());
        drain(body.as_mut()).await;
        assert_eq!(count(&metrics, "/a.B/C", "NOT_FOUND"), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_early_is_cancelled() {
        let metrics = Metrics::new();
        let mut svc = layer(&metrics).layer(answer(&[], || {
            vec![Frame::data(b"x".as_slice()), trailers("0")]
        }));
        let resp = svc.call(req("/a.B/C")).await.expect("infallible");
        drop(resp);
        assert_eq!(count(&metrics, "/a.B/C", "CANCELLED"), 1);
        assert_eq!(count(&metrics, "/a.B/C", "OK"), 0);
    }

    /// A request stream the client broke off.
    struct Broken;

    impl Body for Broken {
        type Data = &'static [u8];
        type Error = &'static str;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(Some(Err("stream reset")))
        }
    }

    #[tokio::test]
    async fn a_broken_request_stream_is_cancelled_whatever_the_handler_says() {
        let metrics = Metrics::new();
        let handler = tower::service_fn(|req: Request<RequestBody<Broken>>| async move {
            let gone = req.extensions().get::<ClientGone>().cloned().expect("flag");
            assert!(!gone.is_gone());
            let mut body = std::pin::pin!(req.into_body());
            let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
            assert!(matches!(frame, Some(Err(_))));
            assert!(gone.is_gone());
            // What a handler says when its stream fails: UNKNOWN.
            let mut resp = Response::new(Frames(VecDeque::new()));
            resp.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static("2"));
            Ok::<_, Infallible>(resp)
        });
        let mut svc = layer(&metrics).layer(handler);
        let req = Request::builder()
            .uri("/a.B/C")
            .body(Broken)
            .expect("request");
        svc.call(req).await.expect("infallible");
        assert_eq!(count(&metrics, "/a.B/C", "CANCELLED"), 1);
        assert_eq!(count(&metrics, "/a.B/C", "UNKNOWN"), 0);
    }

    #[tokio::test]
    async fn unknown_paths_share_one_label() {
        let metrics = Metrics::new();
        let mut svc = layer(&metrics).layer(answer(&[("grpc-status", "12")], Vec::new));
        for path in ["/a.B/D", "/x.Y/Z", "/"] {
            svc.call(req(path)).await.expect("infallible");
        }
        assert_eq!(count(&metrics, OTHER_METHOD, "UNIMPLEMENTED"), 3);
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(Code::from_bytes(b"0")), "OK");
        assert_eq!(code_name(Code::from_bytes(b"16")), "UNAUTHENTICATED");
        assert_eq!(code_name(Code::from_bytes(b"99")), "UNKNOWN");
    }
}
