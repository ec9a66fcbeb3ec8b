//! W3C `traceparent` handling: keep the caller's trace id, make span ids;
//! and, while spans are exported ([`mosaic_core::spans`]), the RPC's server
//! span and the peer calls' client spans, whose ids the `traceparent`s then
//! carry (OpenTelemetry's semantic conventions for gRPC: `rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`).
//!
//! A span's attributes are what its fields name, nothing else: the method,
//! the request id, the tenant id, the peer's name. Never a token, a key or a
//! message (the fields are written here, from values that are none of those).

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`: (trace id, flags).
pub(crate) fn parse(raw: &str) -> Option<(&str, &str)> {
    parse_ids(raw).map(|(trace, _, flags)| (trace, flags))
}

/// (trace id, parent span id, flags) of a valid `traceparent`.
fn parse_ids(raw: &str) -> Option<(&str, &str, &str)> {
    let mut parts = raw.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = parts.next().is_none()
        && hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace != "0".repeat(32)
        && hex(span, 16)
        && span != "0".repeat(16)
        && hex(flags, 2);
    ok.then_some((trace, span, flags))
}

/// `/pkg.Service/Method` as (`pkg.Service`, `Method`).
fn rpc_names(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""))
}

/// The server span of one call to `path`, a child of the caller's span when
/// `incoming` is a valid `traceparent`. Its `request_id` and `tenant` are
/// recorded once known; `rpc.grpc.status_code` by the metrics layer when
/// the call ends. The same fields as the log-only `rpc` span, plus the
/// OpenTelemetry ones.
pub(crate) fn server_span(path: &str, incoming: Option<&str>) -> tracing::Span {
    let (service, method) = rpc_names(path);
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        method = %path,
        request_id = Empty,
        tenant = Empty,
    );
    if let Some(parent) = incoming.and_then(remote_parent) {
        let _ = span.set_parent(parent);
    }
    span
}

/// The client span of a call to `path` on `peer` (a Mosaic service name),
/// a child of the current span.
pub(crate) fn client_span(path: &str, peer: &str) -> tracing::Span {
    let (service, method) = rpc_names(path);
    tracing::info_span!(
        "peer call",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        peer.service = peer,
    )
}

/// Records the final code on a server or client span; marks the span an
/// error as the conventions say (a server: only its own failures; a client:
/// anything but OK).
pub(crate) fn record_code(span: &tracing::Span, code: tonic::Code, client: bool) {
    use tonic::Code;
    span.record("rpc.grpc.status_code", code as i64);
    let failed = if client {
        code != Code::Ok
    } else {
        matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        )
    };
    if failed {
        span.record("otel.status_code", "error");
    }
}

/// The context whose remote parent `raw` names.
fn remote_parent(raw: &str) -> Option<opentelemetry::Context> {
    let (trace, span, flags) = parse_ids(raw)?;
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    Some(opentelemetry::Context::new().with_remote_span_context(context))
}

/// The `traceparent` naming `span` as the parent (what its calls carry), or
/// `None` when the span is not exported.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let ids = span_ref.span_context();
    ids.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            ids.trace_id(),
            ids.span_id(),
            ids.trace_flags().to_u8()
        )
    })
}

/// The incoming trace context, or a fresh one.
pub(crate) fn incoming_or_new(raw: Option<&str>) -> String {
    match raw.and_then(parse) {
        Some(_) => raw.unwrap_or_default().to_owned(),
        None => new_traceparent(),
    }
}

pub(crate) fn new_traceparent() -> String {
    format!("00-{}-{}-01", random_hex(16), random_hex(8))
}

/// The same trace, a new span: what an outgoing call carries.
pub(crate) fn child(raw: &str) -> String {
    match parse(raw) {
        Some((trace, flags)) => format!("00-{trace}-{}-{flags}", random_hex(8)),
        None => new_traceparent(),
    }
}

/// Random hex from UUIDv4 bytes (the uuid crate's RNG), avoiding another dependency.
fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keeps_trace_id() {
        let p = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = child(p);
        assert_eq!(&c[..35], &p[..35]);
        assert_ne!(c, p);
        assert!(parse(&c).is_some());
        assert!(parse("garbage").is_none());
        assert!(parse(&new_traceparent()).is_some());
    }
}
