//! [`Propagate`]: the client-side interceptor for service-to-service calls.
//! It forwards the caller's token, request id and trace (as a child span), and
//! sets `grpc-timeout` to what is left of the caller's deadline, so a callee
//! never works longer than the original caller waits.
//!
//! ```text
//! let mut companies = CompanyServiceClient::with_interceptor(channel.clone(), ctx.propagate());
//! ```

use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::context::TenantContext;
use crate::trace;

/// Carries one caller's context onto outgoing requests. Make one per incoming
/// call with [`TenantContext::propagate`]; it is cheap.
#[derive(Clone)]
pub struct Propagate {
    ctx: TenantContext,
    /// A credential of the calling service itself, sent instead of the
    /// caller's token.
    token: Option<String>,
}

impl std::fmt::Debug for Propagate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Propagate")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl TenantContext {
    pub fn propagate(&self) -> Propagate {
        Propagate {
            ctx: self.clone(),
            token: None,
        }
    }

    /// Like [`TenantContext::propagate`], authenticated with `token` (a
    /// service's own credential, e.g. conversations charging billing with a
    /// `svc:charging` token) instead of the caller's; the request id, trace
    /// and deadline are still the caller's. Also works for a
    /// [`TenantContext::system`] context, which has no token of its own.
    pub fn propagate_as(&self, token: String) -> Propagate {
        Propagate {
            ctx: self.clone(),
            token: Some(token),
        }
    }
}

impl Interceptor for Propagate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let ctx = &self.ctx;
        let token = self.token.as_deref().unwrap_or(ctx.token());
        if token.is_empty() {
            return Err(Status::internal("context has no caller token to propagate"));
        }
        let md = req.metadata_mut();
        let bearer = format!("Bearer {token}");
        let value = |s: &str| {
            MetadataValue::try_from(s).map_err(|_| Status::internal("unpropagatable header value"))
        };
        md.insert("authorization", value(&bearer)?);
        md.insert("x-request-id", value(ctx.request_id())?);
        md.insert("traceparent", value(&trace::child(ctx.traceparent()))?);
        if let Some(deadline) = ctx.deadline() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded(
                    "the caller's deadline has passed",
                ));
            }
            // Keep a tighter timeout the outgoing request already has.
            let current = md
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::layer::parse_grpc_timeout)
                .unwrap_or(Duration::MAX);
            req.set_timeout(left.min(current));
        }
        Ok(req)
    }
}
