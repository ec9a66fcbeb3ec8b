//! [`Metrics`]: the process's Prometheus registry, the gRPC call metrics that
//! [`MetricsLayer`](crate::MetricsLayer) records, gauges other crates sample
//! at scrape time (database pool size, idle, max), and the `GET /metrics`
//! endpoint on a side port.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Call latency buckets, in seconds: from half a millisecond (a cache hit)
/// to five seconds (past any sane unary deadline).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A value sampled when Prometheus scrapes, e.g. a pool's idle connections.
pub type GaugeFn = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The metrics of one process. Cloning is cheap; clones share the registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry holding `mosaic_grpc_requests_total{method,code}` and
    /// `mosaic_grpc_request_duration_seconds{method}`.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "mosaic_grpc_requests_total",
                "gRPC calls handled, by method and final status code.",
            ),
            &["method", "code"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "mosaic_grpc_request_duration_seconds",
                "Time from request to final status, by method (whole stream for streaming calls).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        Ok(Self {
            registry,
            requests,
            durations,
        })
    }

    /// The registry, for crates that bring their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers a gauge whose value is `sample()` at scrape time.
    ///
    /// Several gauges may share a `name` (and `help`) when their `labels`
    /// differ, e.g. `mosaic_db_pool_connections{pool="crm",state="idle"}` and
    /// `{pool="crm",state="max"}`; registering the same name and labels
    /// twice is an error.
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

    /// Counts one finished call. `method` and `code` must come from bounded
    /// sets: each distinct value is a time series.
    pub(crate) fn observe_call(&self, method: &str, code: &str, elapsed: Duration) {
        self.requests.with_label_values(&[method, code]).inc();
        self.durations
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
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

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(metrics): State<Metrics>) -> axum::response::Response {
    match metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn gauges_are_sampled_at_scrape_time() {
        let metrics = Metrics::new().expect("metrics");
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
        let metrics = Metrics::new().expect("metrics");
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
        let metrics = Metrics::new().expect("metrics");
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

    #[test]
    fn calls_are_counted_by_method_and_code() {
        let metrics = Metrics::new().expect("metrics");
        metrics.observe_call("/a.B/C", "OK", Duration::from_millis(3));
        metrics.observe_call("/a.B/C", "OK", Duration::from_millis(3));
        let text = metrics.render().expect("render");
        assert!(
            text.contains(r#"mosaic_grpc_requests_total{code="OK",method="/a.B/C"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"mosaic_grpc_request_duration_seconds_bucket{method="/a.B/C",le="0.005"} 2"#
            ),
            "{text}"
        );
    }
}
