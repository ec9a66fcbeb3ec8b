//! [`PeerChannel`]: the channel a service calls a peer through. While spans
//! are exported ([`mosaic_core::spans`]) every call gets a client span, a
//! child of the calling RPC's span, and the outgoing `traceparent` names that
//! span, so the peer's server span is its child: one trace across services.
//! With export off it is the bare channel.
//!
//! The span ends when the response headers arrive: for a unary call, after
//! the peer has answered (an error status then already stands in the headers,
//! tonic answers errors trailers-only).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::Service;

use crate::trace;

/// A [`Channel`] to the peer service `peer`, with a client span per call.
#[derive(Debug, Clone)]
pub struct PeerChannel {
    inner: Channel,
    peer: Arc<str>,
}

impl PeerChannel {
    pub fn new(inner: Channel, peer: &str) -> Self {
        Self {
            inner,
            peer: peer.into(),
        }
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl Service<Request<Body>> for PeerChannel {
    type Response = Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if !mosaic_core::spans::exporting() {
            return Box::pin(self.inner.call(req));
        }
        let span = trace::client_span(req.uri().path(), &self.peer);
        // Replaces the child traceparent `Propagate` made up: the peer's
        // parent is this span.
        if let Some(value) =
            trace::traceparent_of(&span).and_then(|t| HeaderValue::from_str(&t).ok())
        {
            req.headers_mut().insert("traceparent", value);
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes())),
                Err(_) => tonic::Code::Unavailable,
            };
            trace::record_code(&span, code, true);
            drop(span);
            result
        })
    }
}
