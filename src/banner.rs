//! What the service says when it starts: where it listens and where Swagger UI is, which bus it
//! uses, where its configuration came from, and per connector how events reach it, the URLs to
//! configure on the platform and what is not configured yet.
//!
//! On a terminal this is a short block of text ([`Banner::render`]); otherwise the same facts
//! are one structured log line ([`Banner::log`]), which Cloud Logging and tests can read.

use serde::Serialize;

use crate::{
    configuration::{redact_url, Settings},
    routes::docs::SWAGGER_UI,
};

/// A URL to configure on a platform, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Place {
    pub place: String,
    pub url: String,
}

/// What one connector wants a person starting the service to know.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectorNotes {
    pub connector: &'static str,
    /// How events from the platform reach the service (e.g. `webhooks`).
    pub transport: String,
    /// URLs to paste into the platform's console.
    pub configure: Vec<Place>,
    /// Settings not configured yet, each with what it means.
    pub missing: Vec<String>,
    /// One-line suggestions, e.g. how to try the connector out.
    pub hints: Vec<String>,
}

/// The facts of the start-up banner.
#[derive(Clone, Debug, Serialize)]
pub struct Banner {
    pub version: &'static str,
    pub port: u16,
    pub local_url: String,
    pub swagger_ui: String,
    pub app_env: &'static str,
    pub instance_id: String,
    pub bus: String,
    /// Where the configuration came from.
    pub config: String,
    /// Where spans are exported (`off` without `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub trace_export: String,
    pub connectors: Vec<ConnectorNotes>,
}

impl Banner {
    /// The banner of a service listening on `port`, configured from `config`.
    pub fn new(
        settings: &Settings,
        port: u16,
        config: String,
        connectors: Vec<ConnectorNotes>,
    ) -> Self {
        let local_url = format!("http://127.0.0.1:{port}");
        let bus = match &settings.bus.amqp_url {
            None => "embedded in-memory bus: events stay in this process (set AMQP_URL for \
                     RabbitMQ)"
                .to_owned(),
            Some(_) => format!(
                "RabbitMQ {}, exchange {}, egress queue {} ({})",
                settings.redacted_amqp_url(),
                settings.bus.exchange,
                settings.bus.egress_queue,
                settings.bus.egress_queue_type.as_str()
            ),
        };
        Self {
            version: env!("CARGO_PKG_VERSION"),
            port,
            swagger_ui: format!("{local_url}{SWAGGER_UI}"),
            local_url,
            app_env: if settings.is_production() {
                "production"
            } else {
                "development"
            },
            instance_id: settings.bus.instance_id.clone(),
            bus,
            config,
            trace_export: settings
                .telemetry
                .otlp_traces_endpoint
                .as_ref()
                .map_or_else(|| "off".to_owned(), |url| redact_url(url.as_str())),
            connectors,
        }
    }

    /// The banner as text for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "\ningress-egress {} listening on {} ({}, instance {})\n",
            self.version, self.local_url, self.app_env, self.instance_id
        );
        out += &format!("  Swagger UI  {}\n", self.swagger_ui);
        out += &format!("  bus         {}\n", self.bus);
        out += &format!("  config      {}\n", self.config);
        if self.trace_export != "off" {
            out += &format!("  traces      {}\n", self.trace_export);
        }
        for notes in &self.connectors {
            out += &format!("\n{} (transport: {})\n", notes.connector, notes.transport);
            if !notes.configure.is_empty() {
                out += "  paste into the console:\n";
                for place in &notes.configure {
                    out += &format!("    {}\n      {}\n", place.place, place.url);
                }
            }
            if !notes.missing.is_empty() {
                out += "  not configured yet:\n";
                for missing in &notes.missing {
                    out += &format!("    - {missing}\n");
                }
            }
            for hint in &notes.hints {
                out += &format!("  {hint}\n");
            }
        }
        out
    }

    /// The banner's facts as one structured log line.
    pub fn log(&self) {
        let connectors = serde_json::to_string(&self.connectors).unwrap_or_default();
        tracing::info!(
            version = self.version,
            port = self.port,
            local_url = %self.local_url,
            swagger_ui = %self.swagger_ui,
            app_env = self.app_env,
            instance_id = %self.instance_id,
            bus = %self.bus,
            config = %self.config,
            trace_export = %self.trace_export,
            connectors = %connectors,
            "ingress-egress listening"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminal_banner_shows_every_fact() {
        let settings = Settings::from_vars([("INSTANCE_ID", "local-1")]).unwrap();
        let banner = Banner::new(
            &settings,
            8080,
            "environment only".to_owned(),
            vec![ConnectorNotes {
                connector: "demo",
                transport: "webhooks".to_owned(),
                configure: vec![Place {
                    place: "Inbound messages".to_owned(),
                    url: "https://abc.example/webhooks/demo#retry=3".to_owned(),
                }],
                missing: vec!["DEMO_SENDER is not set: replies are dead-lettered".to_owned()],
                hints: vec!["try it: ingress-egress simulate demo".to_owned()],
            }],
        );
        let text = banner.render();
        for expected in [
            "listening on http://127.0.0.1:8080 (development, instance local-1)",
            "Swagger UI  http://127.0.0.1:8080/swagger-ui/",
            "bus         embedded in-memory bus",
            "config      environment only",
            "demo (transport: webhooks)",
            "    Inbound messages\n      https://abc.example/webhooks/demo#retry=3\n",
            "    - DEMO_SENDER is not set: replies are dead-lettered\n",
            "  try it: ingress-egress simulate demo\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        let rabbit = Settings::from_vars([
            ("AMQP_URL", "amqp://user:pw-secret@broker:5672/%2f"),
            ("AMQP_EGRESS_QUEUE_TYPE", "classic"),
        ])
        .unwrap();
        let text = Banner::new(&rabbit, 1, String::new(), Vec::new()).render();
        assert!(text.contains("RabbitMQ amqp://user:***@broker:5672/%2f, exchange events, egress queue ingress-egress.egress (classic)"), "{text}");
        assert!(!text.contains("pw-secret"));
    }
}
