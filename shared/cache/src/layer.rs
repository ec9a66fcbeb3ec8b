//! [`RateLimitLayer`]: the server-side tower layer that applies each tenant's
//! request rate. Place it after (inside) the auth layer: it reads the
//! [`TenantContext`] that layer put on the request. Calls without one (public
//! methods such as health or token exchange) and tokens without a tenant pass
//! through unchecked. Over the limit, the call is answered RESOURCE_EXHAUSTED
//! with reason `RATE_LIMITED` and a `google.rpc.RetryInfo` delay, and never
//! reaches the handler.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mosaic_api::ApiError;
use mosaic_tenant::TenantContext;
use tower::{Layer, Service};

use crate::limiter::{Decision, RateLimiter};

/// Reason in `google.rpc.ErrorInfo` of a rate-limited call.
pub const RATE_LIMITED: &str = "RATE_LIMITED";

#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
}

impl RateLimitLayer {
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: RateLimiter,
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("limiter", &self.limiter)
            .finish()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> Service<Request<B>> for RateLimit<S>
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
        // Take the service that was driven to readiness, leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let tenant = req
            .extensions()
            .get::<TenantContext>()
            .and_then(TenantContext::tenant);
        let Some(tenant) = tenant.filter(|_| self.limiter.is_enabled()) else {
            return Box::pin(inner.call(req));
        };
        let limiter = self.limiter.clone();
        Box::pin(async move {
            match limiter.check(tenant).await {
                Decision::Allowed => inner.call(req).await,
                Decision::Limited { retry_after } => {
                    tracing::debug!(%tenant, ?retry_after, "rate limited");
                    let status = tonic::Status::from(ApiError::resource_exhausted(
                        RATE_LIMITED,
                        retry_after,
                    ));
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tonic_types::StatusExt;

    use crate::Redis;
    use crate::config::{RateLimitConfig, RedisConfig};

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        let url = std::env::var("MOSAIC_REDIS_URL")
            .unwrap_or_else(|_| RedisConfig::default().urls[0].expose().to_owned());
        let redis = Redis::new(RedisConfig {
            timeout: Duration::from_secs(2),
            ..RedisConfig::single(url)
        })
        .unwrap();
        RateLimiter::new(RateLimitConfig { per_second, burst }, redis)
    }

    /// An inner service that counts its calls and answers "ok".
    fn counting(
        calls: Arc<AtomicUsize>,
    ) -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new("ok".to_owned())) }
        })
    }

    async fn call<S>(svc: &mut S, ctx: Option<TenantContext>) -> Response<String>
    where
        S: Service<Request<()>, Response = Response<String>, Error = Infallible>,
    {
        let mut req = Request::builder()
            .uri("/mosaic.crm.v1.ContactService/GetContact")
            .body(())
            .unwrap();
        if let Some(ctx) = ctx {
            req.extensions_mut().insert(ctx);
        }
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        svc.call(req).await.unwrap()
    }

    #[tokio::test]
    async fn over_the_limit_is_resource_exhausted_with_retry_info() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = RateLimitLayer::new(limiter(1, 1)).layer(counting(calls.clone()));
        let tenant = mosaic_core::TenantId::new();
        let ctx = TenantContext::system(tenant, "test");

        let ok = call(&mut svc, Some(ctx.clone())).await;
        assert_eq!(ok.body(), "ok");
        assert!(ok.headers().get("grpc-status").is_none());

        let limited = call(&mut svc, Some(ctx)).await;
        assert_eq!(limited.headers()["grpc-status"], "8");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a limited call never reaches the handler"
        );
        let status = tonic::Status::from_header_map(limited.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, RATE_LIMITED);
        let delay = details.retry_info().unwrap().retry_delay.unwrap();
        assert!(
            delay > Duration::ZERO && delay <= Duration::from_secs(1),
            "{delay:?}"
        );

        // Another tenant still gets through.
        let other = call(
            &mut svc,
            Some(TenantContext::system(mosaic_core::TenantId::new(), "test")),
        )
        .await;
        assert_eq!(other.body(), "ok");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn calls_without_a_tenant_context_pass_through() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = RateLimitLayer::new(limiter(1, 1)).layer(counting(calls.clone()));
        for _ in 0..3 {
            let resp = call(&mut svc, None).await;
            assert_eq!(resp.body(), "ok");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn fails_open_when_redis_is_down() {
        let calls = Arc::new(AtomicUsize::new(0));
        let limiter = RateLimiter::new(
            RateLimitConfig {
                per_second: 1,
                burst: 1,
            },
            Redis::new(RedisConfig::single("redis://127.0.0.1:1")).unwrap(),
        );
        let mut svc = RateLimitLayer::new(limiter).layer(counting(calls.clone()));
        let ctx = TenantContext::system(mosaic_core::TenantId::new(), "test");
        for _ in 0..3 {
            assert_eq!(call(&mut svc, Some(ctx.clone())).await.body(), "ok");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
