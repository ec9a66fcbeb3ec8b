//! [`Probe`]: a dependency check. gRPC health runs the probes of each service
//! and reports it SERVING only while they pass; the store crates implement it
//! for their connections.

use std::future::Future;
use std::pin::Pin;

/// What a probe found wrong, for the log (never sent to clients).
pub type ProbeResult = Result<(), String>;

/// The future a [`Probe::check`] returns.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>>;

/// A dependency check, e.g. "the database answers `SELECT 1`".
pub trait Probe: Send + Sync + 'static {
    /// A short name for logs, e.g. `postgres`.
    fn name(&self) -> &str;
    /// `Ok` when the dependency is usable, otherwise why not. The caller
    /// bounds how long it may take.
    fn check(&self) -> ProbeFuture<'_>;
}
