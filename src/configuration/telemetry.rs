//! Telemetry settings: how logs are written and where traces go.
//!
//! Traces use the standard OpenTelemetry variable names. `OTEL_EXPORTER_OTLP_ENDPOINT` unset
//! means no export (trace context is still carried on the bus and in log lines). The exporter
//! speaks OTLP over HTTP with protobuf bodies; `OTEL_EXPORTER_OTLP_PROTOCOL` may say so, and
//! naming another protocol stops start-up rather than exporting nowhere.

use url::Url;

use super::parse::{non_empty, parse_base_url, ConfigError};

/// The only OTLP protocol this build exports with.
pub const OTLP_PROTOCOL: &str = "http/protobuf";
/// `service.name` of exported spans unless `OTEL_SERVICE_NAME` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "ingress-egress";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with Cloud Logging's `severity` field.
    Json,
    /// Human-readable, coloured when on a terminal.
    Pretty,
}

/// The telemetry variables as read from the environment.
#[derive(Default)]
pub struct RawTelemetry {
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub otel_exporter_otlp_endpoint: Option<String>,
    pub otel_exporter_otlp_protocol: Option<String>,
    pub otel_service_name: Option<String>,
    pub google_cloud_project: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
    /// Where spans are exported (`<OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces`); `None` = no export.
    pub otlp_traces_endpoint: Option<Url>,
    /// `service.name` of exported spans.
    pub service_name: String,
    /// The Google Cloud project whose Cloud Trace log lines link to (`GOOGLE_CLOUD_PROJECT`);
    /// set when running on Google Cloud.
    pub gcp_project: Option<String>,
}

impl TelemetrySettings {
    pub fn from_raw(raw: RawTelemetry) -> Result<Self, ConfigError> {
        let log_format = match non_empty(raw.log_format).as_deref() {
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            None => {
                use std::io::IsTerminal;
                if std::io::stdout().is_terminal() {
                    LogFormat::Pretty
                } else {
                    LogFormat::Json
                }
            }
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("expected json or pretty, got {other:?}"),
                ))
            }
        };
        let log_level = non_empty(raw.log_level).unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(ConfigError::new(
                "LOG_LEVEL",
                format!("not a valid level or filter: {log_level:?}"),
            ));
        }

        match non_empty(raw.otel_exporter_otlp_protocol).as_deref() {
            None | Some(OTLP_PROTOCOL) => {}
            Some(other) => {
                return Err(ConfigError::new(
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    format!("only {OTLP_PROTOCOL} is supported, got {other:?}"),
                ))
            }
        }
        let otlp_traces_endpoint = non_empty(raw.otel_exporter_otlp_endpoint)
            .map(|value| traces_endpoint(&value))
            .transpose()?;
        // The value only names a project; its format is Google's business.
        let gcp_project = non_empty(raw.google_cloud_project);
        Ok(Self {
            log_format,
            log_level,
            otlp_traces_endpoint,
            service_name: non_empty(raw.otel_service_name)
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
            gcp_project,
        })
    }
}

/// The OTLP/HTTP traces URL for a base endpoint, as the OpenTelemetry specification builds it:
/// the base plus `v1/traces`.
fn traces_endpoint(base: &str) -> Result<Url, ConfigError> {
    const VARIABLE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let base = parse_base_url(VARIABLE, base)?;
    let joined = format!("{}/v1/traces", base.as_str().trim_end_matches('/'));
    Url::parse(&joined).map_err(|e| ConfigError::new(VARIABLE, format!("not a valid URL ({e})")))
}

#[cfg(test)]
mod tests {
    use crate::configuration::Settings;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, crate::configuration::ConfigError> {
        Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn export_is_off_without_an_endpoint() {
        let telemetry = settings(&[]).unwrap().telemetry;
        assert!(telemetry.otlp_traces_endpoint.is_none());
        assert_eq!(telemetry.service_name, "ingress-egress");
        assert!(telemetry.gcp_project.is_none());
    }

    #[test]
    fn the_traces_path_is_appended_to_the_endpoint() {
        for (base, expected) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otel.example.com/otlp",
                "https://otel.example.com/otlp/v1/traces",
            ),
        ] {
            let telemetry = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", base)])
                .unwrap()
                .telemetry;
            assert_eq!(telemetry.otlp_traces_endpoint.unwrap().as_str(), expected);
        }
    }

    #[test]
    fn bad_telemetry_values_name_their_variable() {
        let err = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert_eq!(err.variable, "OTEL_EXPORTER_OTLP_ENDPOINT");
        let err = settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert_eq!(err.variable, "OTEL_EXPORTER_OTLP_PROTOCOL");
        assert!(settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_ok());
        let err = settings(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(err.variable, "LOG_FORMAT");
    }

    #[test]
    fn service_name_and_project_are_read() {
        let telemetry = settings(&[
            ("OTEL_SERVICE_NAME", "ingress-egress-staging"),
            ("GOOGLE_CLOUD_PROJECT", "my-project"),
        ])
        .unwrap()
        .telemetry;
        assert_eq!(telemetry.service_name, "ingress-egress-staging");
        assert_eq!(telemetry.gcp_project.as_deref(), Some("my-project"));
    }
}
