//! Whether this process exports trace spans (OTLP). Set once at startup by
//! `mosaic-server`'s telemetry when `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
//! read by every crate that opens spans for a PostgreSQL transaction, a Redis
//! command group, a MongoDB command or a peer call. With export off none of
//! those spans is even created, so tracing costs nothing then.

use std::sync::atomic::{AtomicBool, Ordering};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// `true` once span export is on.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Turns span export on for the rest of the process (startup only).
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}
