//! Log lines as Cloud Logging reads them: one JSON object per line for containers and Cloud
//! Logging.
//!
//! The JSON shape follows Cloud Logging's structured-logging conventions, so Cloud Run turns each
//! line into a log entry with the right severity and summary, linked to its trace:
//!
//! ```json
//! {"time":"2026-11-25T09:00:00.123456Z","severity":"INFO","message":"inbound message accepted",
//!  "target":"ingress_egress::connectors::twilio::ingress","span":"HTTP request",
//!  "request_id":"7c0b…","correlation_id":"4f1e…","delivery":"published",
//!  "logging.googleapis.com/trace":"projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736",
//!  "logging.googleapis.com/spanId":"00f067aa0ba902b7","logging.googleapis.com/trace_sampled":true}
//! ```
//!
//! - `severity`: `DEBUG` (for TRACE and DEBUG), `INFO`, `WARNING` or `ERROR`.
//! - `message`: the event's message; `time`: RFC 3339 in UTC (Cloud Logging's `time` field).
//! - `request_id` (set on every HTTP request span, see `super::request_span`) and `correlation_id`
//!   are copied from the enclosing spans when the event itself does not carry them.
//! - Inside a traced span: with a Google Cloud project configured, the fields Cloud Logging
//!   links to Cloud Trace (`logging.googleapis.com/trace` as `projects/<project>/traces/<id>`,
//!   `…/spanId`, `…/trace_sampled`); without one, plain `trace_id` and `span_id`.
//! - Every other field of the event is kept as a top-level key.
//!
//! What goes into log fields is decided where events are written: phone numbers and message
//! bodies are never logged at info level.

use std::fmt;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{
        format::{JsonFields, Writer},
        FmtContext, FormatEvent, FormatFields, MakeWriter,
    },
    registry::LookupSpan,
    Layer,
};

use super::{
    fields::{span_ids, FieldCollector},
    trace_context::current_span_context,
};

/// The field Cloud Logging reads a log entry's trace from.
pub const TRACE_FIELD: &str = "logging.googleapis.com/trace";
const SPAN_ID_FIELD: &str = "logging.googleapis.com/spanId";
const TRACE_SAMPLED_FIELD: &str = "logging.googleapis.com/trace_sampled";

/// The JSON layer, writing one Cloud Logging line per event to `writer`; with `gcp_project`,
/// lines inside a trace link to it in Cloud Trace.
pub fn json_layer<S, W>(writer: W, gcp_project: Option<String>) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(CloudLoggingJson { gcp_project })
        .with_writer(writer)
}

/// Cloud Logging's severity name for a tracing level.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Formats events as Cloud Logging JSON lines (see the module documentation).
///
/// Span fields are read from what the layer's field formatter stored, so use it with
/// [`JsonFields`] (as [`json_layer`] does); with another field formatter only the event's own
/// fields are shown.
#[derive(Clone, Debug, Default)]
pub struct CloudLoggingJson {
    /// The Google Cloud project traces are linked in (`projects/<project>/traces/<id>`).
    pub gcp_project: Option<String>,
}

impl CloudLoggingJson {
    /// The trace fields of a line written inside a traced span, if any.
    fn insert_trace(&self, line: &mut Map<String, Value>) {
        let Some(span_context) = current_span_context() else {
            return;
        };
        let trace_id = span_context.trace_id().to_string();
        let span_id = span_context.span_id().to_string();
        match &self.gcp_project {
            Some(project) => {
                line.insert(
                    TRACE_FIELD.into(),
                    Value::String(format!("projects/{project}/traces/{trace_id}")),
                );
                line.insert(SPAN_ID_FIELD.into(), Value::String(span_id));
                line.insert(
                    TRACE_SAMPLED_FIELD.into(),
                    Value::Bool(span_context.is_sampled()),
                );
            }
            None => {
                line.insert("trace_id".into(), Value::String(trace_id));
                line.insert("span_id".into(), Value::String(span_id));
            }
        }
    }
}

impl<S, N> FormatEvent<S, N> for CloudLoggingJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "time".into(),
            Value::String(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)),
        );
        line.insert(
            "severity".into(),
            Value::String(severity(metadata.level()).into()),
        );

        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        line.insert(
            "message".into(),
            Value::String(fields.message.take().unwrap_or_default()),
        );
        // Events bridged from the `log` crate carry their real target as a field.
        let target = fields
            .log_target
            .take()
            .unwrap_or_else(|| metadata.target().to_owned());
        line.insert("target".into(), Value::String(target));

        let (ids, span) = span_ids(ctx);
        // Inner spans win over outer ones; the event's own fields over both (below).
        line.extend(ids);
        if let Some(name) = span {
            line.insert("span".into(), Value::String(name.to_owned()));
        }
        self.insert_trace(&mut line);

        for (key, value) in fields.values {
            if !matches!(key.as_str(), "time" | "severity" | "message") {
                line.insert(key, value);
            }
        }

        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::{
        layer::{Identity, Layered, SubscriberExt},
        EnvFilter, Registry,
    };

    use super::*;

    /// A `MakeWriter` that appends to a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<Value> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .expect("UTF-8")
                .lines()
                .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
                .collect()
        }
    }

    /// The lines `body` logs through the JSON layer, with spans traced by `tracing`.
    fn capture_with<L>(tracing: L, gcp_project: Option<&str>, body: impl FnOnce()) -> Vec<Value>
    where
        L: Layer<Layered<EnvFilter, Registry>> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(tracing)
            .with(json_layer(buffer.clone(), gcp_project.map(str::to_owned)));
        tracing::subscriber::with_default(subscriber, body);
        buffer.lines()
    }

    /// Like [`capture_with`], with no trace.
    fn capture(body: impl FnOnce()) -> Vec<Value> {
        capture_with(Identity::new(), None, body)
    }

    /// Like [`capture_with`], with spans traced by OpenTelemetry.
    fn capture_traced(gcp_project: Option<&str>, body: impl FnOnce()) -> Vec<Value> {
        let provider = SdkTracerProvider::builder().build();
        let spans = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        capture_with(spans, gcp_project, body)
    }

    #[test]
    fn lines_inside_a_trace_link_to_cloud_trace_on_google_cloud() {
        let mut ids = None;
        let lines = capture_traced(Some("my-project"), || {
            tracing::info!("outside");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            let span_context = current_span_context().unwrap();
            ids = Some((
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            ));
            tracing::info!("inside");
        });
        let (trace_id, span_id) = ids.unwrap();
        assert!(
            lines[0].get(TRACE_FIELD).is_none(),
            "no trace outside spans"
        );
        assert_eq!(
            lines[1][TRACE_FIELD],
            format!("projects/my-project/traces/{trace_id}")
        );
        assert_eq!(lines[1][SPAN_ID_FIELD], span_id.as_str());
        assert_eq!(lines[1][TRACE_SAMPLED_FIELD], true);
        assert!(lines[1].get("trace_id").is_none());
    }

    #[test]
    fn lines_inside_a_trace_carry_plain_ids_elsewhere() {
        let lines = capture_traced(None, || {
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!("inside");
        });
        let trace_id = lines[0]["trace_id"].as_str().expect("trace_id");
        assert_eq!(trace_id.len(), 32);
        assert!(trace_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(lines[0]["span_id"].as_str().unwrap().len(), 16);
        assert!(lines[0].get(TRACE_FIELD).is_none());
    }

    #[test]
    fn lines_inside_a_trace_carry_its_ids_when_spans_are_not_exported() {
        let mut ids = Vec::new();
        let lines = capture_with(crate::telemetry::trace_id_layer(), None, || {
            tracing::info!("outside");
            let request = tracing::info_span!("request");
            let _request = request.enter();
            tracing::info!("in the request");
            ids.push(current_span_context().unwrap());
            let publish = tracing::info_span!("publish");
            let _publish = publish.enter();
            tracing::info!("in the publish");
            ids.push(current_span_context().unwrap());
        });
        assert!(lines[0].get("trace_id").is_none(), "no trace outside spans");
        for (line, ids) in lines[1..].iter().zip(&ids) {
            assert_eq!(line["trace_id"], ids.trace_id().to_string());
            assert_eq!(line["span_id"], ids.span_id().to_string());
        }
        assert_eq!(ids[0].trace_id(), ids[1].trace_id(), "one trace");
        assert_ne!(ids[0].span_id(), ids[1].span_id(), "two spans");
    }

    #[test]
    fn an_event_is_one_cloud_logging_line() {
        let lines = capture(|| {
            tracing::info!(
                delivery = "published",
                attempts = 2u64,
                ok = true,
                "accepted"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["severity"], "INFO");
        assert_eq!(line["message"], "accepted");
        assert_eq!(line["delivery"], "published");
        assert_eq!(line["attempts"], 2);
        assert_eq!(line["ok"], true);
        assert!(line["target"].as_str().unwrap().contains("telemetry"));
        let time = line["time"].as_str().expect("time is a string");
        chrono::DateTime::parse_from_rfc3339(time).expect("time is RFC 3339");
        assert!(line.get("span").is_none(), "no span outside spans");
    }

    #[test]
    fn levels_map_to_cloud_logging_severities() {
        let lines = capture(|| {
            tracing::trace!("t");
            tracing::debug!("d");
            tracing::info!("i");
            tracing::warn!("w");
            tracing::error!(error = %io::Error::other("boom"), "e");
        });
        let severities: Vec<_> = lines.iter().map(|l| l["severity"].clone()).collect();
        assert_eq!(
            severities,
            ["DEBUG", "DEBUG", "INFO", "WARNING", "ERROR"].map(Value::from)
        );
        assert_eq!(lines[4]["error"], "boom");
    }

    #[test]
    fn request_and_correlation_ids_come_from_enclosing_spans() {
        let lines = capture(|| {
            let request = tracing::info_span!(
                "HTTP request",
                request_id = "req-1",
                http.route = "/x",
                correlation_id = tracing::field::Empty
            );
            let _request = request.enter();
            tracing::info!("before");
            request.record("correlation_id", "corr-1");
            let inner = tracing::info_span!("publish", correlation_id = "corr-2");
            let _inner = inner.enter();
            tracing::warn!(message_sid = "SM1", "inside");
        });
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["request_id"], "req-1");
        assert!(lines[0].get("correlation_id").is_none());
        assert_eq!(lines[0]["span"], "HTTP request");
        assert!(
            lines[0].get("http.route").is_none(),
            "only the id fields are copied from spans"
        );

        assert_eq!(lines[1]["request_id"], "req-1");
        assert_eq!(lines[1]["correlation_id"], "corr-2", "the inner span wins");
        assert_eq!(lines[1]["span"], "publish");
        assert_eq!(lines[1]["message_sid"], "SM1");
        assert_eq!(lines[1]["severity"], "WARNING");
    }

    #[test]
    fn an_event_field_overrides_a_span_field() {
        let lines = capture(|| {
            let span = tracing::info_span!("work", correlation_id = "from-span");
            let _span = span.enter();
            tracing::info!(correlation_id = "from-event", "x");
        });
        assert_eq!(lines[0]["correlation_id"], "from-event");
    }

    #[test]
    fn severity_names() {
        assert_eq!(severity(&Level::WARN), "WARNING");
        assert_eq!(severity(&Level::TRACE), "DEBUG");
    }
}
