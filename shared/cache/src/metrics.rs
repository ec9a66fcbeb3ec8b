//! [`CacheMetrics`]: what every service's cache counts, by service and
//! kind (both names from code, so the label sets stay bounded; never a
//! tenant or an id):
//!
//! - `mosaic_cache_lookups_total{service,kind,result}`: `hit`, `miss`,
//!   `error` (Redis was asked and failed) or `skipped` (the breaker was
//!   open). The hit ratio is `hit` over the sum.
//! - `mosaic_cache_fills_total{service,kind,result}`: `stored`, `refused`
//!   (the lease was revoked by an invalidation or ran out), `no_lease`
//!   (another reader holds the lease, or the lookup never reached Redis),
//!   `error` or `skipped`.
//! - `mosaic_cache_invalidations_total{service,kind,result}`: `done` or
//!   `deferred` (kept until Redis answers again).

use mosaic_core::Metrics;
use prometheus::{IntCounterVec, Opts};

/// The cache counters of one process, shared by every service's cache.
#[derive(Debug, Clone)]
pub(crate) struct CacheMetrics {
    lookups: IntCounterVec,
    fills: IntCounterVec,
    invalidations: IntCounterVec,
}

const LABELS: &[&str] = &["service", "kind", "result"];

fn counter(name: &str, help: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), LABELS).expect("a valid metric name and labels")
}

impl CacheMetrics {
    pub(crate) fn new() -> Self {
        Self {
            lookups: counter(
                "mosaic_cache_lookups_total",
                "Cache lookups by service, kind and result (hit, miss, error, skipped).",
            ),
            fills: counter(
                "mosaic_cache_fills_total",
                "Cache fills by service, kind and result (stored, refused, no_lease, error, skipped).",
            ),
            invalidations: counter(
                "mosaic_cache_invalidations_total",
                "Cache invalidations by service, kind and result (done, deferred).",
            ),
        }
    }

    pub(crate) fn register(&self, metrics: &Metrics) -> Result<(), prometheus::Error> {
        let registry = metrics.registry();
        registry.register(Box::new(self.lookups.clone()))?;
        registry.register(Box::new(self.fills.clone()))?;
        registry.register(Box::new(self.invalidations.clone()))
    }

    pub(crate) fn lookup(&self, service: &str, kind: &str, result: &str) {
        self.lookups
            .with_label_values(&[service, kind, result])
            .inc();
    }

    pub(crate) fn fill(&self, service: &str, kind: &str, result: &str) {
        self.fills.with_label_values(&[service, kind, result]).inc();
    }

    pub(crate) fn invalidation(&self, service: &str, kind: &str, result: &str) {
        self.invalidations
            .with_label_values(&[service, kind, result])
            .inc();
    }
}
