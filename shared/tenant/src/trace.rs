//! W3C `traceparent` handling: keep the caller's trace id, make span ids.

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
pub(crate) fn parse(raw: &str) -> Option<(&str, &str)> {
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
        && hex(flags, 2);
    ok.then_some((trace, flags))
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
