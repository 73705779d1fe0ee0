//! Logging setup: one JSON object per line for containers and Cloud Logging ([`json`]), or one
//! short line per event for people at a terminal ([`pretty`]). Both read events and the ids of
//! their enclosing spans the same way ([`fields`]); every HTTP request is one span and one line
//! ([`request_log`]).
//!
//! What goes into log fields is decided where events are written: phone numbers and message
//! bodies are never logged at info level.

pub mod fields;
pub mod json;
pub mod pretty;
pub mod request_log;

use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

use crate::configuration::LogFormat;
pub use json::{json_layer, severity, CloudLoggingJson};
pub use pretty::{pretty_layer, CompactPretty};

/// Targets whose routine chatter is not worth a line at the service's level: the HTTP server's
/// worker start-up and the AMQP client's connection life.
const QUIET_TARGETS: &str = "actix_server=warn,lapin=warn";

/// The filter for `level` (a level or a `tracing` directive), or `RUST_LOG` when set.
pub fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},{QUIET_TARGETS}")))
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let registry = tracing_subscriber::registry().with(filter(level));
    let result = match format {
        LogFormat::Json => registry.with(json_layer(std::io::stdout)).try_init(),
        LogFormat::Pretty => {
            use std::io::IsTerminal;
            let ansi = std::io::stdout().is_terminal();
            registry
                .with(pretty_layer(std::io::stdout, ansi))
                .try_init()
        }
    };
    // A second call (tests spawning several apps) keeps the first subscriber.
    let _ = result;
}
