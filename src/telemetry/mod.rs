//! Logs and traces.
//!
//! Logs: one JSON object per line for containers and Cloud Logging ([`cloud_logging`]), or one
//! short line per event for people at a terminal ([`pretty`]), filtered by `LOG_LEVEL`
//! (`RUST_LOG` overrides). Both read events and the ids of their enclosing spans the same way
//! ([`fields`]); every HTTP request is one span ([`request_span`]) and ends with one line
//! ([`request_log`]), never a warning.
//!
//! Traces: the service's `tracing` spans (the HTTP request, `publish`, `egress.consume`,
//! `egress.send` and each connector's REST call) always have W3C trace ids, so the trace
//! travels with every message ([`trace_context`]) and log lines name it, whether or not spans
//! are exported. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set they become OpenTelemetry spans
//! through [`span_layer`] and are exported over OTLP; otherwise [`trace_ids`] only gives them
//! ids, which is all that is needed then and far cheaper. Spans are traced at `info` whatever
//! `LOG_LEVEL` says: quieter logs do not cut the trace.

pub mod cloud_logging;
pub mod fields;
pub mod http_errors;
pub mod pretty;
pub mod request_log;
pub mod request_span;
pub mod trace_context;
pub mod trace_ids;

use opentelemetry::{trace::TracerProvider as _, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};
use tracing::{level_filters::LevelFilter, Subscriber};
use tracing_subscriber::{
    filter::Targets, layer::SubscriberExt, registry::LookupSpan, util::SubscriberInitExt,
    EnvFilter, Layer,
};

pub use cloud_logging::{json_layer, severity, CloudLoggingJson};
pub use pretty::{pretty_layer, CompactPretty};

use crate::configuration::{LogFormat, TelemetrySettings};

/// The instrumentation scope of the service's spans.
const TRACER_NAME: &str = "ingress-egress";

/// The span exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: OTEL_EXPORTER_OTLP_ENDPOINT: cannot export traces there: {0}")]
pub struct TelemetryError(String);

/// Keeps span export running; dropping it exports what is still buffered and stops.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("trace export did not shut down cleanly: {error}");
        }
    }
}

/// Targets whose routine chatter is not worth a line at the service's level: the HTTP server's
/// worker start-up and the AMQP client's connection life.
const QUIET_TARGETS: &str = "actix_server=warn,lapin=warn";

/// Crates that write whole protocol messages at `debug` and `trace`: a twilsock frame carries
/// the access token and the session's continuation token. They are capped at `info` whatever
/// `LOG_LEVEL` or `RUST_LOG` say, so that no level puts a secret in the logs.
const CRATES_LOGGING_PAYLOADS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// The log filter for `level` (a level or a `tracing` directive), or `RUST_LOG` when set;
/// either way [`CRATES_LOGGING_PAYLOADS`] stay at `info`.
pub fn filter(level: &str) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},{QUIET_TARGETS}")));
    CRATES_LOGGING_PAYLOADS
        .iter()
        .fold(filter, |filter, krate| {
            filter.add_directive(format!("{krate}=info").parse().expect("a valid directive"))
        })
}

/// Installs the global subscriber: logs as `settings` say, spans traced (and exported when an
/// endpoint is configured). Call it outside any async runtime: the exporter runs on a thread
/// of its own. A second call keeps the first subscriber.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let provider = tracer_provider(settings)?;
    let filter = filter(&settings.log_level);
    let exporting = settings.otlp_traces_endpoint.is_some();
    let registry = tracing_subscriber::registry()
        .with(exporting.then(|| span_layer(&provider)))
        .with((!exporting).then(trace_id_layer));
    let result = match settings.log_format {
        LogFormat::Json => registry
            .with(
                json_layer(std::io::stdout, settings.gcp_project.clone())
                    .with_filter(http_errors::WithoutHttpLayerErrors)
                    .with_filter(filter),
            )
            // Last: it logs from inside another event, which must be through every layer first.
            .with(http_errors::demoted_http_errors())
            .try_init(),
        LogFormat::Pretty => {
            use std::io::IsTerminal;
            let ansi = std::io::stdout().is_terminal();
            registry
                .with(
                    pretty_layer(std::io::stdout, ansi)
                        .with_filter(http_errors::WithoutHttpLayerErrors)
                        .with_filter(filter),
                )
                .with(http_errors::demoted_http_errors())
                .try_init()
        }
    };
    // A second call (tests spawning several apps) keeps the first subscriber.
    let _ = result;
    Ok(TelemetryGuard { provider })
}

/// The tracer provider `settings` ask for: OTLP/HTTP export in batches when an endpoint is set,
/// none otherwise (spans still get ids, so trace context is carried).
pub fn tracer_provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otlp_traces_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.as_str())
            .build()
            .map_err(|error| TelemetryError(error.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// The layer that turns the service's `tracing` spans (at `info` and above) into OpenTelemetry
/// spans of `provider`, whatever the log level.
pub fn span_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Without the busy/idle timings (a clock read on every poll of an instrumented future) and
    // the thread attributes (two allocations per span): neither says anything a trace needs.
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(TRACER_NAME))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(traced_spans())
}

/// The layer that gives the service's `tracing` spans (at `info` and above) trace ids without
/// building OpenTelemetry spans: for when none are exported.
pub fn trace_id_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    trace_ids::TraceIdLayer.with_filter(traced_spans())
}

/// The spans that carry a trace: the service's own at `info` and above, others' warnings.
fn traced_spans() -> Targets {
    Targets::new()
        .with_target(env!("CARGO_CRATE_NAME"), LevelFilter::INFO)
        .with_default(LevelFilter::WARN)
}
