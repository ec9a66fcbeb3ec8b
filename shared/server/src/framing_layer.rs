//! [`FramingLayer`]: what tonic answers INTERNAL, or serves, for bytes that
//! are not a well-formed gRPC request, answered as the sender's error
//! (INVALID_ARGUMENT, reason `MALFORMED_REQUEST`), so a client learns what
//! to fix and the server-error rate counts only the server's faults:
//!
//! - a `content-type` that is not `application/grpc[+proto|;...]`: tonic
//!   would decode and serve it;
//! - a request body that ends inside a message (a truncated frame): tonic
//!   answers INTERNAL "Unexpected EOF decoding stream." (a message that does
//!   not decode is `mosaic_proto`'s codec's, and already INVALID_ARGUMENT).
//!
//! Found by the fault card (`tests/faults`, row 9).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mosaic_api::ApiError;
use tower::{Layer, Service};

/// tonic's message for a body that ends inside a frame, as it sends it
/// (percent-encoded `grpc-message`).
const TRUNCATED: &str = "Unexpected%20EOF%20decoding%20stream.";

#[derive(Debug, Clone, Copy, Default)]
pub struct FramingLayer;

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Framing { inner }
    }
}

/// The service made by [`FramingLayer`].
#[derive(Debug, Clone)]
pub struct Framing<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

fn is_grpc(content_type: Option<&http::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence == "application/grpc" || essence.starts_with("application/grpc+")
}

impl<S, B, RB> Service<Request<B>> for Framing<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !is_grpc(req.headers().get(http::header::CONTENT_TYPE)) {
            let status = tonic::Status::from(ApiError::malformed_request(
                "content-type must be application/grpc",
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            let headers = response.headers();
            let truncated = headers.get("grpc-status").is_some_and(|s| s == "13")
                && headers.get("grpc-message").is_some_and(|m| m == TRUNCATED);
            if truncated {
                let status = tonic::Status::from(ApiError::malformed_request(
                    "the request ends inside a message (a truncated frame)",
                ));
                return Ok(status.into_http());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn answering(
        status: Option<tonic::Status>,
    ) -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| {
            let status = status.clone();
            async move {
                Ok::<_, Infallible>(match status {
                    Some(status) => status.into_http(),
                    None => Response::new("ok".to_owned()),
                })
            }
        })
    }

    fn request(content_type: &str) -> Request<()> {
        Request::builder()
            .header("content-type", content_type)
            .body(())
            .expect("request")
    }

    fn code(response: &Response<String>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn only_grpc_content_types_reach_the_service() {
        let mut service = FramingLayer.layer(answering(None));
        for ok in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc; charset=x",
        ] {
            let response = service
                .call(request(ok))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(response.body(), "ok", "{ok}");
        }
        for bad in ["text/plain", "application/json", "application/grpcx"] {
            let response = service
                .call(request(bad))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(code(&response), Some("3"), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_truncated_frame_is_the_senders_error() {
        let mut service = FramingLayer.layer(answering(Some(tonic::Status::internal(
            "Unexpected EOF decoding stream.",
        ))));
        let response = service
            .call(request("application/grpc"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(code(&response), Some("3"));

        // Any other INTERNAL is left alone.
        let mut other = FramingLayer.layer(answering(Some(tonic::Status::internal("boom"))));
        let response = other
            .call(request("application/grpc"))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(code(&response), Some("13"));
    }
}
