//! An OTLP/gRPC trace receiver that accepts every export and counts the
//! spans, for measuring what exporting costs the suite (tests/bench/tracing.sh).
//!
//!   cargo run --release --example otlp_sink -- 127.0.0.1:4317   (tests/bench/otlp_sink.rs)
//!
//! Prints `spans=<n> requests=<n>` every 5 seconds and when it gets SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
    requests: AtomicU64,
}

impl Counts {
    fn print(&self) {
        println!(
            "spans={} requests={}",
            self.spans.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed)
        );
    }
}

#[derive(Debug, Clone, Default)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned())
        .parse()?;
    let sink = Sink::default();
    let counts = sink.0.clone();
    let ticker = counts.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        ticks.tick().await;
        loop {
            ticks.tick().await;
            ticker.print();
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve_with_shutdown(addr, async move {
            term.recv().await;
        })
        .await?;
    counts.print();
    Ok(())
}
