//! [`Metrics`]: the process's Prometheus registry, and values other crates
//! sample at scrape time (a pool's idle connections, a counter kept in an
//! atomic). Serving it over HTTP is `mosaic-server`'s job.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Registry, TextEncoder};

/// A value sampled when Prometheus scrapes, e.g. a pool's idle connections.
pub type GaugeFn = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The metrics of one process. Cloning is cheap; clones share the registry.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Registry,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry, for crates that bring their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers a gauge whose value is `sample()` at scrape time.
    ///
    /// Several gauges may share a `name` (and `help`) when their `labels`
    /// differ, e.g. `mosaic_db_pool_connections{service="crm",state="idle"}`
    /// and `{service="crm",state="max"}`; registering the same name and
    /// labels twice is an error.
    pub fn register_gauge_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        sample: GaugeFn,
    ) -> Result<(), prometheus::Error> {
        self.register_sampled(MetricType::GAUGE, name, help, labels, sample)
    }

    /// Like [`Metrics::register_gauge_fn`], for a count that only grows
    /// (name it `..._total`), kept by its owner, e.g. in an `AtomicU64`.
    pub fn register_counter_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        sample: GaugeFn,
    ) -> Result<(), prometheus::Error> {
        self.register_sampled(MetricType::COUNTER, name, help, labels, sample)
    }

    fn register_sampled(
        &self,
        kind: MetricType,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        sample: GaugeFn,
    ) -> Result<(), prometheus::Error> {
        let const_labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let desc = Desc::new(name.to_owned(), help.to_owned(), Vec::new(), const_labels)?;
        self.registry
            .register(Box::new(Sampled { kind, desc, sample }))
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

/// A gauge or counter with constant labels whose value comes from a function.
/// (`prometheus::PullingGauge` is the gauge without labels.)
struct Sampled {
    kind: MetricType,
    desc: Desc,
    sample: GaugeFn,
}

impl Collector for Sampled {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let value = (self.sample)();
        let mut metric = Metric::default();
        if self.kind == MetricType::COUNTER {
            let mut counter = Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        let labels: Vec<LabelPair> = self.desc.const_label_pairs.clone();
        metric.set_label(labels);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(self.kind);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn gauges_are_sampled_at_scrape_time() {
        let metrics = Metrics::new();
        let idle = Arc::new(AtomicU64::new(3));
        let sampled = idle.clone();
        metrics
            .register_gauge_fn(
                "mosaic_db_pool_connections",
                "Connections of a pool.",
                &[("pool", "crm"), ("state", "idle")],
                Arc::new(move || sampled.load(Ordering::Relaxed) as f64),
            )
            .expect("idle");
        metrics
            .register_gauge_fn(
                "mosaic_db_pool_connections",
                "Connections of a pool.",
                &[("pool", "crm"), ("state", "max")],
                Arc::new(|| 10.0),
            )
            .expect("same name, other labels");
        let text = metrics.render().expect("render");
        assert!(
            text.contains(r#"mosaic_db_pool_connections{pool="crm",state="idle"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mosaic_db_pool_connections{pool="crm",state="max"} 10"#),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE mosaic_db_pool_connections gauge")
                .count(),
            1
        );

        idle.store(7, Ordering::Relaxed);
        let text = metrics.render().expect("render");
        assert!(
            text.contains(r#"mosaic_db_pool_connections{pool="crm",state="idle"} 7"#),
            "{text}"
        );
    }

    #[test]
    fn counters_are_sampled_with_their_type() {
        let metrics = Metrics::new();
        metrics
            .register_counter_fn(
                "mosaic_db_read_lane_reads_total",
                "Reads.",
                &[("service", "crm")],
                Arc::new(|| 42.0),
            )
            .expect("counter");
        let text = metrics.render().expect("render");
        assert!(
            text.contains("# TYPE mosaic_db_read_lane_reads_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"mosaic_db_read_lane_reads_total{service="crm"} 42"#),
            "{text}"
        );
    }

    #[test]
    fn duplicate_or_invalid_gauges_are_refused() {
        let metrics = Metrics::new();
        let g = || -> GaugeFn { Arc::new(|| 1.0) };
        metrics
            .register_gauge_fn("mosaic_x", "x", &[("a", "1")], g())
            .expect("first");
        assert!(
            metrics
                .register_gauge_fn("mosaic_x", "x", &[("a", "1")], g())
                .is_err()
        );
        assert!(
            metrics
                .register_gauge_fn("not a name", "x", &[], g())
                .is_err()
        );
    }
}
