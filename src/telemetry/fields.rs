//! Reading an event for a log line: its fields as JSON values ([`FieldCollector`]) and the ids
//! the enclosing spans carry ([`span_ids`]), which every line repeats so one request or one
//! message can be followed.

use std::fmt;

use serde_json::{Map, Value};
use tracing::{field::Field, Subscriber};
use tracing_subscriber::{
    field::Visit,
    fmt::{FmtContext, FormatFields, FormattedFields},
    registry::LookupSpan,
};

/// Span fields copied onto every event logged inside the span.
pub const SPAN_FIELDS: &[&str] = &["request_id", "correlation_id"];

/// The [`SPAN_FIELDS`] of the spans around the current event (inner spans win) and the name of
/// the innermost span.
///
/// Span fields are read from what the layer's field formatter stored, so use it with
/// `JsonFields`; with another field formatter no ids are found.
pub fn span_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> (Map<String, Value>, Option<&'static str>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let mut ids = Map::new();
    let mut leaf = None;
    if let Some(scope) = ctx.event_scope() {
        for span in scope.from_root() {
            leaf = Some(span.name());
            let extensions = span.extensions();
            let Some(stored) = extensions.get::<FormattedFields<N>>() else {
                continue;
            };
            if let Ok(Value::Object(span_fields)) = serde_json::from_str::<Value>(stored.as_str()) {
                for (key, value) in span_fields {
                    if SPAN_FIELDS.contains(&key.as_str()) {
                        ids.insert(key, value);
                    }
                }
            }
        }
    }
    (ids, leaf)
}

/// Collects an event's fields as JSON values.
#[derive(Default)]
pub struct FieldCollector {
    pub message: Option<String>,
    /// The real target of an event bridged from the `log` crate.
    pub log_target: Option<String>,
    /// Every other field.
    pub values: Map<String, Value>,
}

impl FieldCollector {
    fn insert(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                })
            }
            "log.target" => {
                if let Value::String(target) = value {
                    self.log_target = Some(target);
                }
            }
            name if name.starts_with("log.") => {}
            name => {
                self.values.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for FieldCollector {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.insert(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use tracing_subscriber::fmt::MakeWriter;

    /// A `MakeWriter` that appends to a shared buffer, for the formatters' tests.
    #[derive(Clone, Default)]
    pub struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).expect("UTF-8")
        }
    }

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
}
