//! The gRPC call metrics that [`MetricsLayer`](crate::MetricsLayer) records
//! into the process's [`Metrics`] registry, and the `GET /metrics` endpoint
//! on a side port.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use mosaic_core::Metrics;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tokio::net::TcpListener;

/// Call latency buckets, in seconds: from half a millisecond (a cache hit)
/// to five seconds (past any sane unary deadline).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// `mosaic_grpc_requests_total{method,code}` and
/// `mosaic_grpc_request_duration_seconds{method}`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    requests: IntCounterVec,
    durations: HistogramVec,
}

impl CallMetrics {
    /// Registers the call metrics in `metrics`.
    pub fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
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
        metrics.registry().register(Box::new(requests.clone()))?;
        metrics.registry().register(Box::new(durations.clone()))?;
        Ok(Self {
            requests,
            durations,
        })
    }

    /// Counts one finished call. `method` and `code` must come from bounded
    /// sets: each distinct value is a time series.
    pub(crate) fn observe(&self, method: &str, code: &str, elapsed: Duration) {
        self.requests.with_label_values(&[method, code]).inc();
        self.durations
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
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

    #[test]
    fn calls_are_counted_by_method_and_code() {
        let metrics = Metrics::new();
        let calls = CallMetrics::register(&metrics).expect("register");
        calls.observe("/a.B/C", "OK", Duration::from_millis(3));
        calls.observe("/a.B/C", "OK", Duration::from_millis(3));
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
