//! [`AuthLayer`]: the server-side tower layer in front of every service.
//!
//! For each call it takes `x-request-id` (or makes a UUIDv7 one), takes
//! `traceparent` (or starts a trace), reads `grpc-timeout` as a deadline, and
//! verifies `authorization: Bearer <jwt>`. A verified call carries a
//! [`TenantContext`] in its request extensions; a call without a valid token
//! is answered UNAUTHENTICATED here and never reaches a handler. Methods
//! listed as public (health, reflection, token exchange) skip verification.
//!
//! The response carries `x-request-id`, and a [`CallMeta`] in its extensions
//! so outer layers (metrics, access logs) can see tenant and request id.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Request, Response};
use mosaic_api::ApiError;
use tower::{Layer, Service};
use tracing::Instrument;
use uuid::Uuid;

use crate::context::TenantContext;
use crate::token::{Claims, TokenVerifier};
use crate::trace;

const REQUEST_ID: &str = "x-request-id";
const MAX_REQUEST_ID_LEN: usize = 128;

/// What outer layers learn about a call, from the response extensions.
#[derive(Debug, Clone)]
pub struct CallMeta {
    pub request_id: String,
    pub tenant: Option<mosaic_core::TenantId>,
    pub principal: Option<String>,
    /// The call's exported server span, while spans are exported: the
    /// metrics layer records the final status on it and ends it.
    pub span: Option<tracing::Span>,
}

impl CallMeta {
    /// Records the final gRPC status on the call's span, if it has one.
    pub fn record_status(&self, code: tonic::Code) {
        if let Some(span) = &self.span {
            trace::record_code(span, code, false);
        }
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    verifier: TokenVerifier,
    public_prefixes: Arc<[String]>,
    access: Option<Arc<dyn AccessPolicy>>,
}

/// What a verified token may still not do: the access decisions made after
/// it was issued (a deleted tenant, a revoked key, a removed member). Checked
/// after the signature, before the handler; see `mosaic_db::access`.
pub trait AccessPolicy: Send + Sync + 'static {
    /// `Ok` when the token's principal may call `method` now.
    fn check<'a>(
        &'a self,
        claims: &'a Claims,
        method: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>>;
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("public_prefixes", &self.public_prefixes)
            .finish()
    }
}

impl AuthLayer {
    /// `public` lists path prefixes that need no token, e.g.
    /// `/grpc.health.v1.Health/` or `/mosaic.identity.v1.TokenService/ExchangeApiKey`.
    pub fn new(verifier: TokenVerifier, public: impl IntoIterator<Item = String>) -> Self {
        Self {
            verifier,
            public_prefixes: public.into_iter().collect(),
            access: None,
        }
    }

    /// Also checks every verified token against `access`.
    pub fn with_access(mut self, access: Arc<dyn AccessPolicy>) -> Self {
        self.access = Some(access);
        self
    }

    fn is_public(&self, path: &str) -> bool {
        self.public_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("layer", &self.layer).finish()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> Service<Request<B>> for Auth<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness, leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let headers = req.headers();
        let request_id = request_id(headers);
        let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok());
        // Exported: the call's own span, whose id the context carries on.
        // Not for health and reflection (`/grpc.*`): Kubernetes probes every
        // pod every few seconds, and those traces would bury the real ones.
        let path = req.uri().path();
        let exported = (mosaic_core::spans::exporting() && !path.starts_with("/grpc."))
            .then(|| trace::server_span(path, incoming));
        let traceparent = exported
            .as_ref()
            .and_then(trace::traceparent_of)
            .unwrap_or_else(|| trace::incoming_or_new(incoming));
        let deadline = headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| Instant::now() + d);

        let mut meta = CallMeta {
            request_id: request_id.clone(),
            tenant: None,
            principal: None,
            span: exported.clone(),
        };
        let mut access = None;
        if !self.layer.is_public(req.uri().path()) {
            match self.authenticate(headers, request_id.clone(), traceparent, deadline) {
                Ok((ctx, claims)) => {
                    meta.tenant = ctx.tenant();
                    meta.principal = Some(ctx.principal().to_owned());
                    req.extensions_mut().insert(ctx);
                    if let Some(policy) = &self.layer.access {
                        access = Some((policy.clone(), claims, req.uri().path().to_owned()));
                    }
                }
                Err(e) => {
                    let mut resp = tonic::Status::from(e).into_http::<RB>();
                    finish(&mut resp, meta);
                    return Box::pin(async move { Ok(resp) });
                }
            }
        }
        // Every log line of the call carries its tenant and request id.
        let tenant = meta.tenant.map(|t| t.to_string()).unwrap_or_default();
        let span = match exported {
            Some(span) => {
                span.record("request_id", meta.request_id.as_str());
                span.record("tenant", tenant.as_str());
                span
            }
            None => tracing::info_span!(
                "rpc",
                method = %req.uri().path(),
                request_id = %meta.request_id,
                tenant = %tenant,
            ),
        };
        Box::pin(
            async move {
                if let Some((policy, claims, method)) = access
                    && let Err(e) = policy.check(&claims, &method).await
                {
                    let mut resp = tonic::Status::from(e).into_http::<RB>();
                    finish(&mut resp, meta);
                    return Ok(resp);
                }
                let mut resp = inner.call(req).await?;
                finish(&mut resp, meta);
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

impl<S> Auth<S> {
    fn authenticate(
        &self,
        headers: &HeaderMap,
        request_id: String,
        traceparent: String,
        deadline: Option<Instant>,
    ) -> Result<(TenantContext, Arc<Claims>), ApiError> {
        let missing = || {
            ApiError::unauthenticated("TOKEN_MISSING", "authorization: Bearer <token> is required")
        };
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(missing)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "TOKEN_MALFORMED",
                    "expected authorization: Bearer <token>",
                )
            })?;
        let claims = self.layer.verifier.verify(token)?;
        let service_roles = claims.service_roles();
        if claims.tid.is_none() && !claims.is_platform_admin() && service_roles.is_empty() {
            return Err(ApiError::unauthenticated(
                "TOKEN_INVALID",
                "the token carries no tenant",
            ));
        }
        let ctx = TenantContext::new(
            claims.tid,
            claims.sub.clone(),
            claims.role(),
            claims.is_platform_admin(),
            service_roles,
            request_id,
            traceparent,
            token.to_owned(),
            deadline,
        )
        .with_token_exp(claims.exp);
        Ok((ctx, claims))
    }
}

fn finish<RB>(resp: &mut Response<RB>, meta: CallMeta) {
    if let Ok(v) = HeaderValue::from_str(&meta.request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp.extensions_mut().insert(meta);
}

/// The caller's `x-request-id` when it is short printable ASCII, else a new UUIDv7.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_REQUEST_ID_LEN
                && s.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string())
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub(crate) fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{AuthConfig, Claims, KeyMaterial, TokenSigner};
    use std::convert::Infallible;

    fn setup() -> (AuthLayer, TokenSigner, AuthConfig) {
        let config = AuthConfig {
            issuer: "i".into(),
            audience: "a".into(),
            key: KeyMaterial::Hs256(b"s".to_vec()),
            cache_ttl: Duration::from_secs(10),
            max_lifetime: crate::token::DEFAULT_MAX_LIFETIME,
        };
        let verifier = TokenVerifier::new(config.clone()).unwrap();
        let signer = TokenSigner::new(&config.key).unwrap();
        (
            AuthLayer::new(verifier, ["/public/".to_owned()]),
            signer,
            config,
        )
    }

    /// An inner service that answers with the tenant it was handed.
    fn echo()
    -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future = impl Send>
    + Clone {
        tower::service_fn(|req: Request<()>| async move {
            let ctx = req.extensions().get::<TenantContext>().cloned();
            Ok::<_, Infallible>(Response::new(
                ctx.map(|c| {
                    format!(
                        "{}|{}|{}",
                        c.tenant().unwrap(),
                        c.principal(),
                        c.request_id()
                    )
                })
                .unwrap_or_default(),
            ))
        })
    }

    async fn call(layer: &AuthLayer, path: &str, headers: &[(&str, &str)]) -> Response<String> {
        let mut req = Request::builder().uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut svc = layer.layer(echo());
        svc.call(req.body(()).unwrap()).await.unwrap()
    }

    fn grpc_status(resp: &Response<String>) -> Option<&str> {
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn verified_token_reaches_the_handler() {
        let (layer, signer, config) = setup();
        let tenant = mosaic_core::TenantId::new();
        let token = signer
            .sign(&Claims::new(
                &config,
                "user:u".into(),
                Some(tenant),
                vec!["member".into()],
                Duration::from_secs(60),
            ))
            .unwrap();
        let resp = call(
            &layer,
            "/svc/M",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-request-id", "req-1"),
            ],
        )
        .await;
        assert_eq!(resp.body(), &format!("{tenant}|user:u|req-1"));
        assert_eq!(resp.headers()["x-request-id"], "req-1");
    }

    #[tokio::test]
    async fn missing_or_malformed_token_is_unauthenticated() {
        let (layer, _, _) = setup();
        for headers in [
            vec![],
            vec![("authorization", "Basic x")],
            vec![("authorization", "Bearer nope")],
        ] {
            let resp = call(&layer, "/svc/M", &headers).await;
            assert_eq!(grpc_status(&resp), Some("16"), "{headers:?}");
            // a request id is still made and returned
            assert!(resp.headers().contains_key("x-request-id"));
        }
    }

    #[tokio::test]
    async fn public_paths_skip_verification() {
        let (layer, _, _) = setup();
        let resp = call(&layer, "/public/Check", &[]).await;
        assert_eq!(grpc_status(&resp), None);
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}
