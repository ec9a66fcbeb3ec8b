//! Structured logs: one JSON object per line (or text for local reading);
//! and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, trace spans exported over
//! OTLP/gRPC.
//!
//! Every line written inside a call carries the `rpc` span that
//! `mosaic_tenant::AuthLayer` opens, under `"span"`: its `method`,
//! `request_id` and `tenant`. Event fields are flattened to the top level.
//!
//! Spans, when exported: the RPC's server span (`mosaic_tenant`), client
//! spans for each PostgreSQL transaction or one-message read/write
//! (`mosaic_db`), Redis command group (`mosaic_cache`), MongoDB command
//! (`mosaic_mongo`) and peer call (`mosaic_tenant::PeerChannel`). Only these
//! (Mosaic's own spans at `info` and above) are exported, and no log event:
//! logs stay logs.
//! The child spans are never entered, so log lines keep the `rpc` span.
//!
//! Export never blocks a call: a finished span goes into a bounded queue
//! ([`QUEUE_SIZE`]) with `try_send`; a background task sends batches of up to
//! [`BATCH_SIZE`] every [`SCHEDULE_DELAY`] (or when a batch is full), each
//! bounded by [`EXPORT_TIMEOUT`]. A full queue or a failed export drops the
//! spans and counts them (`mosaic_otel_spans_dropped_total`; sent ones in
//! `mosaic_otel_spans_exported_total`); the failure is logged once a minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mosaic_core::{ConfigError, Context as _, Env, Metrics, StartupError};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tokio::sync::{mpsc, oneshot};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, filter::filter_fn};

use crate::config::LOG;

/// Where spans go (`http://collector:4317`); unset: no export.
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The `service.name` of this process's spans.
pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Which traces are kept: `parentbased_always_on` (default), `always_on`,
/// `always_off`, `traceidratio`, `parentbased_traceidratio`, `parentbased_always_off`.
pub const TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The ratio of the `*traceidratio` samplers, 0..1 (default 1).
pub const TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Finished spans waiting for export; more are dropped (and counted).
pub const QUEUE_SIZE: usize = 2048;
/// Spans per export request.
pub const BATCH_SIZE: usize = 512;
/// How long a span waits at most before its batch is sent.
pub const SCHEDULE_DELAY: Duration = Duration::from_secs(1);
/// How long one export may take before its spans count as dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Telemetry::shutdown`] waits for the last spans to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Trace export settings, from the standard OpenTelemetry variables.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    pub endpoint: String,
    pub service_name: String,
    pub sampler: SamplerConfig,
}

/// `OTEL_TRACES_SAMPLER` (and its ratio).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBased(ParentDefault),
}

/// What a parent-based sampler does for a trace this process starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentDefault {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl TraceConfig {
    /// `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset (export off).
    /// `default_service` names the process when `OTEL_SERVICE_NAME` does not.
    pub fn from_env(env: &Env, default_service: &str) -> Result<Option<Self>, ConfigError> {
        let Some(endpoint) = env.get(OTLP_ENDPOINT)? else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::invalid(
                OTLP_ENDPOINT,
                &endpoint,
                "expected an http:// or https:// URL of an OTLP/gRPC collector",
            ));
        }
        let ratio = || -> Result<f64, ConfigError> {
            let ratio: f64 = env.parse(TRACES_SAMPLER_ARG, 1.0)?;
            if (0.0..=1.0).contains(&ratio) {
                Ok(ratio)
            } else {
                Err(ConfigError::invalid(
                    TRACES_SAMPLER_ARG,
                    &ratio.to_string(),
                    "expected a ratio from 0 to 1",
                ))
            }
        };
        let sampler = env.string(TRACES_SAMPLER, "parentbased_always_on")?;
        let sampler = match sampler.to_ascii_lowercase().as_str() {
            "always_on" => SamplerConfig::AlwaysOn,
            "always_off" => SamplerConfig::AlwaysOff,
            "traceidratio" => SamplerConfig::Ratio(ratio()?),
            "parentbased_always_on" => SamplerConfig::ParentBased(ParentDefault::AlwaysOn),
            "parentbased_always_off" => SamplerConfig::ParentBased(ParentDefault::AlwaysOff),
            "parentbased_traceidratio" => {
                SamplerConfig::ParentBased(ParentDefault::Ratio(ratio()?))
            }
            _ => {
                return Err(ConfigError::invalid(
                    TRACES_SAMPLER,
                    &sampler,
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ));
            }
        };
        Ok(Some(Self {
            endpoint,
            service_name: env.string(SERVICE_NAME, default_service)?,
            sampler,
        }))
    }
}

impl SamplerConfig {
    fn sampler(self) -> Sampler {
        let parent_default = |d: ParentDefault| match d {
            ParentDefault::AlwaysOn => Sampler::AlwaysOn,
            ParentDefault::AlwaysOff => Sampler::AlwaysOff,
            ParentDefault::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBased(d) => Sampler::ParentBased(Box::new(parent_default(d))),
        }
    }
}

/// Installs the global subscriber. `filter` is a `tracing` directive list
/// such as `info,mosaic_crm=debug`.
///
/// Calling it again (tests do, once per case) is harmless: the first
/// subscriber stays. Only an invalid filter is an error.
pub fn init_logging(filter: &str, json: bool) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| ConfigError::invalid(LOG, filter, e))?;
    // `try_init` fails only when a global subscriber is already set.
    let _already_set = tracing_subscriber::registry()
        .with(log_layer(json).with_filter(filter))
        .try_init();
    Ok(())
}

/// The log lines' layer, JSON or text.
fn log_layer<S>(json: bool) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer().with_target(true);
    if json {
        layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        layer.boxed()
    }
}

/// The process's telemetry: logs, and the trace exporter when configured.
/// [`Telemetry::shutdown`] sends the spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    export: Option<Export>,
}

#[derive(Debug)]
struct Export {
    provider: SdkTracerProvider,
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

/// Logs as [`init_logging`], and spans exported as `traces` says (nothing
/// when `None`). Must run inside the Tokio runtime (the exporter's task).
/// When a global subscriber is already set (tests), logs stay as they are
/// and nothing is exported.
pub fn init_telemetry(
    filter: &str,
    json: bool,
    traces: Option<&TraceConfig>,
) -> Result<Telemetry, StartupError> {
    let Some(traces) = traces else {
        init_logging(filter, json)?;
        return Ok(Telemetry { export: None });
    };
    let env_filter =
        EnvFilter::try_new(filter).map_err(|e| ConfigError::invalid(LOG, filter, e))?;
    let resource = Resource::builder()
        .with_service_name(traces.service_name.clone())
        .build();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(traces.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| ConfigError::invalid(OTLP_ENDPOINT, &traces.endpoint, e))?;
    exporter.set_resource(&resource);
    let (spans_tx, spans_rx) = mpsc::channel(QUEUE_SIZE);
    let (flush_tx, flush_rx) = mpsc::unbounded_channel();
    tokio::spawn(export_loop(exporter, spans_rx, flush_rx));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(QueueProcessor { spans: spans_tx })
        .with_sampler(traces.sampler.sampler())
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("mosaic");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        // Mosaic's own spans at info and above: the ones made for export.
        // Not the storage functions' `debug` `#[instrument]` spans, whose
        // fields a later edit could fill with arguments.
        .with_filter(filter_fn(|meta| {
            meta.is_span()
                && *meta.level() <= tracing::Level::INFO
                && meta.target().starts_with("mosaic")
        }));
    let installed = tracing_subscriber::registry()
        .with(log_layer(json).with_filter(env_filter))
        .with(spans)
        .try_init()
        .is_ok();
    if !installed {
        return Ok(Telemetry { export: None });
    }
    mosaic_core::spans::set_exporting();
    tracing::info!(
        endpoint = %traces.endpoint,
        service = %traces.service_name,
        sampler = ?traces.sampler,
        "exporting trace spans"
    );
    Ok(Telemetry {
        export: Some(Export {
            provider,
            flush: flush_tx,
        }),
    })
}

impl Telemetry {
    /// Sends what is queued (waiting at most a few seconds), then stops the
    /// exporter.
    pub async fn shutdown(self) {
        let Some(export) = self.export else {
            return;
        };
        let (ack, done) = oneshot::channel();
        if export.flush.send(ack).is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_FLUSH, done).await;
        }
        let _ = export.provider.shutdown();
    }
}

/// Registers `mosaic_otel_spans_exported_total` and
/// `mosaic_otel_spans_dropped_total`, while spans are exported.
pub fn register_metrics(metrics: &Metrics) -> Result<(), StartupError> {
    if !mosaic_core::spans::exporting() {
        return Ok(());
    }
    metrics
        .register_counter_fn(
            "mosaic_otel_spans_exported_total",
            "Trace spans the OTLP collector accepted.",
            &[],
            std::sync::Arc::new(|| EXPORTED.load(Ordering::Relaxed) as f64),
        )
        .context("registering mosaic_otel_spans_exported_total")?;
    metrics
        .register_counter_fn(
            "mosaic_otel_spans_dropped_total",
            "Trace spans dropped: the export queue was full, or the collector failed or did not answer in time.",
            &[],
            std::sync::Arc::new(|| DROPPED.load(Ordering::Relaxed) as f64),
        )
        .context("registering mosaic_otel_spans_dropped_total")
}

/// Hands finished spans to the export task without ever waiting.
#[derive(Debug)]
struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
}

impl opentelemetry_sdk::trace::SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    // Flushing is asynchronous: `Telemetry::shutdown`.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Batches queued spans and exports them until the queue closes.
async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    let mut ticks = tokio::time::interval(SCHEDULE_DELAY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = FailureLog::default();
    loop {
        tokio::select! {
            span = spans.recv() => {
                let Some(span) = span else {
                    export(&exporter, &mut batch, &mut failures).await;
                    return;
                };
                batch.push(span);
                if batch.len() >= BATCH_SIZE {
                    export(&exporter, &mut batch, &mut failures).await;
                }
            }
            _ = ticks.tick() => {
                if !batch.is_empty() {
                    export(&exporter, &mut batch, &mut failures).await;
                }
            }
            Some(ack) = flushes.recv() => {
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                    if batch.len() >= BATCH_SIZE {
                        export(&exporter, &mut batch, &mut failures).await;
                    }
                }
                export(&exporter, &mut batch, &mut failures).await;
                let _ = ack.send(());
            }
        }
    }
}

async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    failures: &mut FailureLog,
) {
    if batch.is_empty() {
        return;
    }
    let count = batch.len() as u64;
    let spans = std::mem::replace(batch, Vec::with_capacity(BATCH_SIZE));
    let error = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
        Ok(Ok(())) => {
            EXPORTED.fetch_add(count, Ordering::Relaxed);
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within the export timeout".to_owned(),
    };
    DROPPED.fetch_add(count, Ordering::Relaxed);
    failures.note(&error, count);
}

/// Says an export failure once a minute, with how many spans went since.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    dropped_since: u64,
}

impl FailureLog {
    fn note(&mut self, error: &str, count: u64) {
        self.dropped_since += count;
        if self
            .last
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                error,
                dropped = self.dropped_since,
                "trace export failed; spans dropped"
            );
            self.last = Some(Instant::now());
            self.dropped_since = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_idempotent_and_rejects_bad_filters() {
        // "off": the subscriber is global to the test binary, and its lines
        // would bypass the test harness's output capture.
        assert!(init_logging("off", true).is_ok());
        assert!(init_logging("debug", false).is_ok());
        assert!(init_logging("info,[", true).is_err());
    }

    #[test]
    fn trace_settings_follow_the_standard_variables() {
        let off = Env::from_pairs::<&str, &str>([]);
        assert_eq!(TraceConfig::from_env(&off, "mosaic").unwrap(), None);

        let on = Env::from_pairs([(OTLP_ENDPOINT, "http://collector:4317")]);
        let config = TraceConfig::from_env(&on, "mosaic-crm").unwrap().unwrap();
        assert_eq!(config.service_name, "mosaic-crm");
        assert_eq!(
            config.sampler,
            SamplerConfig::ParentBased(ParentDefault::AlwaysOn)
        );

        let ratio = on
            .clone()
            .with(SERVICE_NAME, "edge")
            .with(TRACES_SAMPLER, "parentbased_traceidratio")
            .with(TRACES_SAMPLER_ARG, "0.25");
        let config = TraceConfig::from_env(&ratio, "mosaic").unwrap().unwrap();
        assert_eq!(config.service_name, "edge");
        assert_eq!(
            config.sampler,
            SamplerConfig::ParentBased(ParentDefault::Ratio(0.25))
        );

        for (name, value) in [
            (TRACES_SAMPLER, "sometimes"),
            (TRACES_SAMPLER_ARG, "2"),
            (OTLP_ENDPOINT, "collector:4317"),
        ] {
            let bad = on
                .clone()
                .with(TRACES_SAMPLER, "traceidratio")
                .with(name, value);
            let error = TraceConfig::from_env(&bad, "mosaic").unwrap_err();
            assert_eq!(error.name(), name, "{error}");
        }
    }
}
