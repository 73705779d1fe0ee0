//! One short line per event, for a person at a terminal:
//!
//! ```text
//! 09:00:00  INFO inbound message accepted delivery=published message_sid=SM… req=7c0b2c8e
//! ```
//!
//! Time of day (UTC, to the second: the JSON lines carry microseconds), level, message, the
//! event's own fields, then the request id (its first eight characters: enough to tell requests
//! apart on one screen) and the correlation id from the enclosing spans. Span names and the
//! spans' other fields are left out: they repeat on every line and pushed lines far past a
//! terminal's width.

use std::fmt;

use chrono::Utc;
use serde_json::Value;
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

/// How much of the request id a line shows.
const REQUEST_ID_CHARS: usize = 8;

/// The pretty layer, writing one [`CompactPretty`] line per event to `writer`, with coloured
/// levels when `ansi`.
pub fn pretty_layer<S, W>(writer: W, ansi: bool) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(CompactPretty)
        .with_ansi(ansi)
        .with_writer(writer)
}

/// Formats events as short human-readable lines (see the module documentation). Use it with
/// [`JsonFields`], as [`pretty_layer`] does.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompactPretty;

impl<S, N> FormatEvent<S, N> for CompactPretty
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
        let level = *event.metadata().level();
        let (colour, reset) = if writer.has_ansi_escapes() {
            (ansi_colour(level), "\x1b[0m")
        } else {
            ("", "")
        };
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        write!(
            writer,
            "{} {colour}{level:>5}{reset} {}",
            Utc::now().format("%H:%M:%S"),
            fields.message.as_deref().unwrap_or_default()
        )?;
        for (key, value) in &fields.values {
            write!(writer, " {key}={}", show(value))?;
        }
        let (ids, _) = span_ids(ctx);
        for (key, value) in ids {
            if fields.values.contains_key(&key) {
                continue;
            }
            let value = show(&value);
            match key.as_str() {
                "request_id" => write!(
                    writer,
                    " req={}",
                    value.chars().take(REQUEST_ID_CHARS).collect::<String>()
                )?,
                _ => write!(writer, " {key}={value}")?,
            }
        }
        writeln!(writer)
    }
}

fn ansi_colour(level: Level) -> &'static str {
    match level {
        Level::ERROR => "\x1b[31m",
        Level::WARN => "\x1b[33m",
        Level::INFO => "\x1b[32m",
        Level::DEBUG => "\x1b[34m",
        Level::TRACE => "\x1b[35m",
    }
}

/// A field value as `key=value` shows it: bare when it is one word, quoted otherwise.
fn show(value: &Value) -> String {
    match value {
        Value::String(text) if !text.is_empty() && !text.contains(char::is_whitespace) => {
            text.clone()
        }
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::{layer::SubscriberExt, EnvFilter};

    use super::*;
    use crate::telemetry::fields::test_support::Buffer;

    fn capture(body: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(pretty_layer(buffer.clone(), false));
        tracing::subscriber::with_default(subscriber, body);
        buffer.text().lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_line_inside_a_request_fits_a_terminal() {
        let lines = capture(|| {
            let request = tracing::info_span!(
                "HTTP request",
                request_id = "7c0b2c8e-1d2f-4a5b-9c8d-7e6f5a4b3c2d",
                method = "POST",
                path = "/webhooks/twilio/sms",
                user_agent = "TwilioProxy/1.1",
                correlation_id = tracing::field::Empty,
            );
            let _request = request.enter();
            tracing::info!(
                message_sid = "SM0123456789abcdef0123456789abcdef",
                delivery = "published",
                "inbound message accepted"
            );
            tracing::warn!(
                reason = "missing X-Twilio-Signature header",
                "webhook rejected"
            );
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let accepted = &lines[0];
        assert!(
            accepted.len() <= 120,
            "{} characters: {accepted}",
            accepted.len()
        );
        assert!(
            accepted.contains(" INFO inbound message accepted "),
            "{accepted}"
        );
        assert!(accepted.contains("delivery=published"), "{accepted}");
        assert!(accepted.ends_with(" req=7c0b2c8e"), "{accepted}");
        assert!(!accepted.contains("HTTP request"), "{accepted}");
        assert!(!accepted.contains("TwilioProxy"), "{accepted}");
        assert!(
            lines[1]
                .contains(" WARN webhook rejected reason=\"missing X-Twilio-Signature header\""),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn the_correlation_id_is_shown_unless_the_event_has_its_own() {
        let lines = capture(|| {
            let span = tracing::info_span!("work", correlation_id = "corr-1");
            let _span = span.enter();
            tracing::info!("outer");
            tracing::info!(correlation_id = "corr-2", "own");
        });
        assert!(
            lines[0].ends_with("outer correlation_id=corr-1"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with("own correlation_id=corr-2"),
            "{}",
            lines[1]
        );
    }
}
