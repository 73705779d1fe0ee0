//! One JSON object per line, for containers and Cloud Logging.
//!
//! The shape follows Cloud Logging's structured-logging conventions, so Cloud Run turns each
//! line into a log entry with the right severity and summary:
//!
//! ```json
//! {"time":"2026-11-25T09:00:00.123456Z","severity":"INFO","message":"inbound message accepted",
//!  "target":"ingress_egress::connectors::twilio::ingress","span":"HTTP request",
//!  "request_id":"7c0b…","correlation_id":"4f1e…","delivery":"published"}
//! ```
//!
//! - `severity`: `DEBUG` (for TRACE and DEBUG), `INFO`, `WARNING` or `ERROR`.
//! - `message`: the event's message; `time`: RFC 3339 in UTC (Cloud Logging's `time` field).
//! - `request_id` (set on every HTTP request span, see `super::request_log`) and `correlation_id`
//!   are copied from the enclosing spans when the event itself does not carry them.
//! - Every other field of the event is kept as a top-level key.

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

use super::fields::{span_ids, FieldCollector};

/// The JSON layer, writing one Cloud Logging line per event to `writer`.
pub fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(CloudLoggingJson)
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
/// Use it with [`JsonFields`] (as [`json_layer`] does): span ids are read from what that field
/// formatter stored.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloudLoggingJson;

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
        line.extend(ids);
        if let Some(name) = span {
            line.insert("span".into(), Value::String(name.to_owned()));
        }

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
    use std::io;

    use tracing_subscriber::{layer::SubscriberExt, EnvFilter};

    use super::*;
    use crate::telemetry::fields::test_support::Buffer;

    fn capture(body: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(json_layer(buffer.clone()));
        tracing::subscriber::with_default(subscriber, body);
        buffer
            .text()
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect()
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
