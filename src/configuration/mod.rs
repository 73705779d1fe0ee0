//! Service configuration, read from the environment.
//!
//! `envy` reads every core variable as an optional string into [`RawSettings`];
//! [`Settings::from_environment`] then validates each one so a bad value stops start-up with one
//! line naming the variable (and never echoing a secret). Secrets are held as [`SecretString`],
//! whose `Debug` output is redacted. Each connector reads its own variables from the same
//! [`Environment`] (see `connectors::*::config`), with the parsers in [`parse`].

pub mod environment;
pub mod parse;
pub mod telemetry;

use std::{path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

pub use environment::{read_dotenv, Environment, DOTENV_FILE};
use parse::{non_empty, parse_or, parse_origin};
pub use parse::{redact_url, scrub_url_password, ConfigError};
use telemetry::RawTelemetry;
pub use telemetry::{LogFormat, TelemetrySettings};

/// Every core variable the service reads, as the environment spells it (envy lower-cases
/// names). Connectors list their own.
#[derive(Deserialize, Default)]
pub struct RawSettings {
    app_env: Option<String>,
    port: Option<String>,
    public_base_url: Option<String>,
    amqp_url: Option<String>,
    amqp_exchange: Option<String>,
    amqp_egress_queue: Option<String>,
    amqp_egress_queue_type: Option<String>,
    amqp_prefetch: Option<String>,
    bus_prefix: Option<String>,
    instance_id: Option<String>,
    k_service: Option<String>,
    k_revision: Option<String>,
    hostname: Option<String>,
    outbox_dir: Option<String>,
    publish_confirm_timeout_ms: Option<String>,
    dedupe_ttl_seconds: Option<String>,
    dedupe_capacity: Option<String>,
    egress_max_parts: Option<String>,
    trust_forwarded_headers: Option<String>,
    body_read_timeout_ms: Option<String>,
    max_requests_per_client: Option<String>,
    max_body_bytes: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    debug_token: Option<String>,
    operator_token: Option<String>,
    otel_exporter_otlp_endpoint: Option<String>,
    otel_exporter_otlp_protocol: Option<String>,
    otel_service_name: Option<String>,
    google_cloud_project: Option<String>,
    redis_url: Option<String>,
    redis_key_prefix: Option<String>,
    egress_partitions: Option<String>,
}

impl std::fmt::Debug for RawSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawSettings { .. }")
    }
}

/// Whether this is a production deployment; production refuses development shortcuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

/// The kind of queue the egress queue is declared as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated and durable (RabbitMQ 3.8+); falls back to classic where the broker refuses.
    Quorum,
    Classic,
}

impl QueueType {
    /// The name RabbitMQ (its `x-queue-type` argument) and `AMQP_EGRESS_QUEUE_TYPE` use.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub app_env: AppEnv,
    pub port: u16,
    /// The exact scheme + host (+ optional port) providers call, nothing after it; used to
    /// rebuild signed URLs. Required in production.
    pub public_base_url: Option<Url>,
    pub bus: BusSettings,
    pub outbox_dir: PathBuf,
    /// How long a message id, once accepted, is not published again (provider retries and
    /// replays of captured requests).
    pub dedupe_ttl: Duration,
    /// How many accepted message ids are remembered in memory at most.
    pub dedupe_capacity: u64,
    /// The most messages one egress event may become once its text is split.
    pub egress_max_parts: usize,
    /// `Forwarded` / `X-Forwarded-*` are set by a proxy we trust (and so may rebuild the
    /// signed URL without `PUBLIC_BASE_URL`, and name the client); otherwise they are ignored.
    pub trust_forwarded_headers: bool,
    /// How long a request body may take to arrive (a slow sender holds a connection no longer).
    pub body_read_timeout: Duration,
    /// Requests one client may have in progress at once.
    pub max_requests_per_client: usize,
    pub max_body_bytes: usize,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    pub debug_token: Option<SecretString>,
    pub operator_token: Option<SecretString>,
    /// Shared state for several instances; `None` keeps it in this process (and its files).
    pub redis: Option<RedisSettings>,
    /// Every variable the service started with; connectors read their settings from it.
    pub environment: Environment,
}

#[derive(Clone, Debug)]
pub struct BusSettings {
    /// `None` selects the embedded in-memory bus.
    pub amqp_url: Option<SecretString>,
    pub exchange: String,
    pub egress_queue: String,
    pub egress_queue_type: QueueType,
    pub prefetch: u16,
    pub prefix: String,
    pub instance_id: String,
    /// How long a webhook waits for the broker's confirm before it falls back to the outbox.
    pub confirm_timeout: Duration,
    /// How many partition queues egress is spread over (1: the egress queue is consumed as is).
    pub egress_partitions: u16,
}

/// The Redis that several instances share (`REDIS_URL`, `REDIS_KEY_PREFIX`).
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Holds the password (`redis://:password@host`): a secret.
    pub url: SecretString,
    /// Prepended to every key, so deployments can share one Redis.
    pub key_prefix: String,
}

/// Most partitions `EGRESS_PARTITIONS` may ask for (each is a queue and a consumer per instance).
pub const MAX_EGRESS_PARTITIONS: u16 = 64;

impl Settings {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_environment(Environment::from_process())
    }

    /// Reads and validates the given variables (tests pass their own).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::from_environment(Environment::from_pairs(vars))
    }

    pub fn from_environment(environment: Environment) -> Result<Self, ConfigError> {
        environment.require_utf8::<RawSettings>("")?;
        let raw: RawSettings = envy::from_iter(environment.pairs())
            .map_err(|e| ConfigError::new("environment", format!("unreadable: {e}")))?;
        let app_env = match non_empty(raw.app_env).as_deref() {
            None | Some("development") | Some("dev") | Some("local") | Some("test") => {
                AppEnv::Development
            }
            Some("production") | Some("prod") => AppEnv::Production,
            Some(other) => {
                return Err(ConfigError::new(
                    "APP_ENV",
                    format!("expected development or production, got {other:?}"),
                ))
            }
        };
        let production = app_env == AppEnv::Production;

        let amqp_url = non_empty(raw.amqp_url);
        if let Some(url) = &amqp_url {
            // Parse to reject typos early, without echoing the value (it holds a password).
            let parsed = Url::parse(url)
                .map_err(|e| ConfigError::new("AMQP_URL", format!("not a valid URL ({e})")))?;
            if parsed.scheme() != "amqp" && parsed.scheme() != "amqps" {
                return Err(ConfigError::new(
                    "AMQP_URL",
                    "scheme must be amqp:// or amqps://",
                ));
            }
        } else if production {
            return Err(ConfigError::new(
                "AMQP_URL",
                "required when APP_ENV=production (the embedded bus is for local use only)",
            ));
        }

        let instance_id = non_empty(raw.instance_id)
            .or_else(
                || match (non_empty(raw.k_service), non_empty(raw.k_revision)) {
                    (Some(service), Some(revision)) if revision.starts_with(&service) => {
                        Some(revision)
                    }
                    (Some(service), Some(revision)) => Some(format!("{service}-{revision}")),
                    (Some(service), None) => Some(service),
                    _ => None,
                },
            )
            .or_else(|| non_empty(raw.hostname))
            .or_else(hostname_from_system)
            .unwrap_or_else(|| "local".to_owned());

        let bus = BusSettings {
            amqp_url: amqp_url.map(SecretString::from),
            exchange: non_empty(raw.amqp_exchange).unwrap_or_else(|| "events".to_owned()),
            egress_queue: non_empty(raw.amqp_egress_queue)
                .unwrap_or_else(|| "ingress-egress.egress".to_owned()),
            egress_queue_type: match non_empty(raw.amqp_egress_queue_type).as_deref() {
                None | Some("quorum") => QueueType::Quorum,
                Some("classic") => QueueType::Classic,
                Some(other) => {
                    return Err(ConfigError::new(
                        "AMQP_EGRESS_QUEUE_TYPE",
                        format!("expected quorum or classic, got {other:?}"),
                    ))
                }
            },
            prefetch: parse_or("AMQP_PREFETCH", raw.amqp_prefetch, 32u16)?,
            prefix: raw.bus_prefix.unwrap_or_default(),
            instance_id,
            confirm_timeout: Duration::from_millis(parse_or(
                "PUBLISH_CONFIRM_TIMEOUT_MS",
                raw.publish_confirm_timeout_ms,
                2000u64,
            )?),
            egress_partitions: parse_or("EGRESS_PARTITIONS", raw.egress_partitions, 1u16)?,
        };
        if bus.prefetch == 0 {
            return Err(ConfigError::new("AMQP_PREFETCH", "must be at least 1"));
        }
        if !(1..=MAX_EGRESS_PARTITIONS).contains(&bus.egress_partitions) {
            return Err(ConfigError::new(
                "EGRESS_PARTITIONS",
                format!("must be between 1 and {MAX_EGRESS_PARTITIONS}"),
            ));
        }
        let redis = non_empty(raw.redis_url)
            .map(|url| {
                // Parsed without echoing the value: it holds a password.
                let parsed = Url::parse(&url)
                    .map_err(|e| ConfigError::new("REDIS_URL", format!("not a valid URL ({e})")))?;
                if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                    return Err(ConfigError::new(
                        "REDIS_URL",
                        "scheme must be redis://, rediss:// or redis+unix://",
                    ));
                }
                Ok(RedisSettings {
                    url: SecretString::from(url),
                    key_prefix: raw
                        .redis_key_prefix
                        .clone()
                        .unwrap_or_else(|| "ingress-egress:".to_owned()),
                })
            })
            .transpose()?;

        let telemetry = TelemetrySettings::from_raw(RawTelemetry {
            log_format: raw.log_format,
            log_level: raw.log_level,
            otel_exporter_otlp_endpoint: raw.otel_exporter_otlp_endpoint,
            otel_exporter_otlp_protocol: raw.otel_exporter_otlp_protocol,
            otel_service_name: raw.otel_service_name,
            google_cloud_project: raw.google_cloud_project,
        })?;

        let public_base_url = non_empty(raw.public_base_url)
            .map(|value| parse_origin("PUBLIC_BASE_URL", &value))
            .transpose()?;
        if public_base_url.is_none() && production {
            // Without it the signed URL is rebuilt from the request's Host and Forwarded
            // headers, which the caller chooses.
            return Err(ConfigError::new(
                "PUBLIC_BASE_URL",
                "required when APP_ENV=production (signed webhook URLs are rebuilt from it, not from client-supplied headers)",
            ));
        }

        Ok(Settings {
            app_env,
            port: parse_or("PORT", raw.port, 8080u16)?,
            public_base_url,
            bus,
            outbox_dir: PathBuf::from(
                non_empty(raw.outbox_dir).unwrap_or_else(|| "var/outbox".to_owned()),
            ),
            dedupe_ttl: Duration::from_secs(parse_or(
                "DEDUPE_TTL_SECONDS",
                raw.dedupe_ttl_seconds,
                24 * 3600u64,
            )?),
            dedupe_capacity: parse_or("DEDUPE_CAPACITY", raw.dedupe_capacity, 200_000u64)?,
            trust_forwarded_headers: parse::parse_bool(
                "TRUST_FORWARDED_HEADERS",
                non_empty(raw.trust_forwarded_headers).as_deref(),
                false,
            )?,
            body_read_timeout: Duration::from_millis(parse_or(
                "BODY_READ_TIMEOUT_MS",
                raw.body_read_timeout_ms,
                10_000u64,
            )?),
            max_requests_per_client: match parse_or(
                "MAX_REQUESTS_PER_CLIENT",
                raw.max_requests_per_client,
                128usize,
            )? {
                0 => {
                    return Err(ConfigError::new(
                        "MAX_REQUESTS_PER_CLIENT",
                        "must be at least 1",
                    ))
                }
                limit => limit,
            },
            egress_max_parts: match parse_or("EGRESS_MAX_PARTS", raw.egress_max_parts, 10usize)? {
                0 => return Err(ConfigError::new("EGRESS_MAX_PARTS", "must be at least 1")),
                parts => parts,
            },
            max_body_bytes: parse_or("MAX_BODY_BYTES", raw.max_body_bytes, 64 * 1024usize)?,
            telemetry,
            debug_token: non_empty(raw.debug_token).map(SecretString::from),
            operator_token: non_empty(raw.operator_token).map(SecretString::from),
            redis,
            environment,
        })
    }

    /// The AMQP URL with its password removed, for logs and the debug snapshot.
    pub fn redacted_amqp_url(&self) -> String {
        match &self.bus.amqp_url {
            None => "embedded in-memory bus".to_owned(),
            Some(url) => redact_url(url.expose_secret()),
        }
    }

    /// The Redis URL with its password removed, or `None` without Redis.
    pub fn redacted_redis_url(&self) -> Option<String> {
        self.redis
            .as_ref()
            .map(|redis| redact_url(redis.url.expose_secret()))
    }

    pub fn is_production(&self) -> bool {
        self.app_env == AppEnv::Production
    }
}

fn hostname_from_system() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_need_no_configuration() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.port, 8080);
        assert_eq!(s.bus.exchange, "events");
        assert_eq!(s.bus.egress_queue, "ingress-egress.egress");
        assert!(s.bus.amqp_url.is_none());
    }

    #[test]
    fn a_malformed_value_names_its_variable() {
        let err = settings(&[("PORT", "eighty")]).unwrap_err();
        assert_eq!(err.variable, "PORT");
        assert!(err.to_string().starts_with("configuration error: PORT:"));
        assert!(!err.to_string().contains('\n'));
        let err = settings(&[("PUBLIC_BASE_URL", "not a url")]).unwrap_err();
        assert_eq!(err.variable, "PUBLIC_BASE_URL");
    }

    #[test]
    fn production_requires_a_broker() {
        let err = settings(&[("APP_ENV", "production")]).unwrap_err();
        assert_eq!(err.variable, "AMQP_URL");
    }

    #[test]
    fn production_requires_the_public_base_url() {
        let broker = ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let err = settings(&[("APP_ENV", "production"), broker]).unwrap_err();
        assert_eq!(err.variable, "PUBLIC_BASE_URL");
        assert!(!err.to_string().contains('\n'));
        let s = settings(&[
            ("APP_ENV", "production"),
            broker,
            ("PUBLIC_BASE_URL", "https://ingress.example.com"),
        ])
        .unwrap();
        assert!(s.is_production());
        assert!(settings(&[broker]).unwrap().public_base_url.is_none());
    }

    #[test]
    fn secrets_never_appear_in_debug_output_or_errors() {
        let s = settings(&[
            ("AMQP_URL", "amqp://user:amqp-password-42@broker:5672/%2f"),
            ("SOME_CONNECTOR_SECRET", "connector-secret-42"),
            ("DEBUG_TOKEN", "debug-secret-42"),
            ("OPERATOR_TOKEN", "operator-secret-42"),
        ])
        .unwrap();
        let debug = format!("{s:?}");
        for secret in [
            "amqp-password-42",
            "connector-secret-42",
            "debug-secret-42",
            "operator-secret-42",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked into Debug output");
        }
        assert!(!s.redacted_amqp_url().contains("amqp-password-42"));
        assert!(s.redacted_amqp_url().contains("broker:5672"));

        let err = settings(&[("AMQP_URL", "http://user:amqp-password-42@broker")]).unwrap_err();
        assert_eq!(err.variable, "AMQP_URL");
        assert!(!err.to_string().contains("amqp-password-42"));
    }

    #[test]
    fn redis_and_partitions_are_optional_and_checked() {
        let s = settings(&[]).unwrap();
        assert!(s.redis.is_none());
        assert_eq!(s.bus.egress_partitions, 1);
        let s = settings(&[
            (
                "REDIS_URL",
                "rediss://:redis-password-42@memorystore:6378/0",
            ),
            ("EGRESS_PARTITIONS", "8"),
        ])
        .unwrap();
        assert_eq!(s.bus.egress_partitions, 8);
        assert_eq!(s.redis.as_ref().unwrap().key_prefix, "ingress-egress:");
        let shown = s.redacted_redis_url().unwrap();
        assert!(shown.contains("memorystore:6378"), "{shown}");
        assert!(!format!("{s:?} {shown}").contains("redis-password-42"));

        let err = settings(&[("REDIS_URL", "http://:redis-password-42@x")]).unwrap_err();
        assert_eq!(err.variable, "REDIS_URL");
        assert!(!err.to_string().contains("redis-password-42"));
        for bad in ["0", "65", "many"] {
            let err = settings(&[("EGRESS_PARTITIONS", bad)]).unwrap_err();
            assert_eq!(err.variable, "EGRESS_PARTITIONS");
        }
    }

    #[test]
    fn instance_id_falls_back_to_cloud_run_names() {
        let s = settings(&[
            ("K_SERVICE", "ingress"),
            ("K_REVISION", "ingress-00042-abc"),
        ])
        .unwrap();
        assert_eq!(s.bus.instance_id, "ingress-00042-abc");
        let s = settings(&[("K_SERVICE", "ingress"), ("K_REVISION", "r7")]).unwrap();
        assert_eq!(s.bus.instance_id, "ingress-r7");
        let s = settings(&[("INSTANCE_ID", "pod-1"), ("K_SERVICE", "ingress")]).unwrap();
        assert_eq!(s.bus.instance_id, "pod-1");
    }
}
