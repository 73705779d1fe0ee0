//! Service configuration, read from the environment.
//!
//! `envy` reads every variable as an optional string into [`RawSettings`]; [`Settings::from_raw`]
//! then validates each one so a bad value stops start-up with one line naming the variable (and
//! never echoing a secret). Secrets are held as [`SecretString`], whose `Debug` output is redacted.

use std::{path::PathBuf, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The auth token used when none is configured outside production. It is public, so anything
/// signed with it proves nothing: start-up says so loudly.
pub const DEVELOPMENT_AUTH_TOKEN: &str = "dev-only-insecure-token-do-not-use-in-production";

/// A configuration problem, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

/// Every variable the service reads, as the environment spells it (envy lower-cases names).
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
    max_body_bytes: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    debug_token: Option<String>,
    operator_token: Option<String>,
    twilio_enabled: Option<String>,
    twilio_account_sid: Option<String>,
    twilio_auth_token: Option<String>,
    twilio_secondary_auth_token: Option<String>,
    twilio_api_key: Option<String>,
    twilio_api_secret: Option<String>,
    twilio_chat_service_sid: Option<String>,
    twilio_identity: Option<String>,
    twilio_phone_number: Option<String>,
    twilio_messaging_service_sid: Option<String>,
    twilio_status_callback_url: Option<String>,
    twilio_api_base_url: Option<String>,
    twilio_conversations_base_url: Option<String>,
    twilio_max_send_rate: Option<String>,
    twilio_max_send_attempts: Option<String>,
    twilio_request_timeout_ms: Option<String>,
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

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with Cloud Logging's `severity` field.
    Json,
    /// Human-readable, coloured when on a terminal.
    Pretty,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub app_env: AppEnv,
    pub port: u16,
    /// The exact scheme + host (+ optional port) Twilio calls; used to rebuild signed URLs.
    pub public_base_url: Option<Url>,
    pub bus: BusSettings,
    pub outbox_dir: PathBuf,
    pub dedupe_ttl: Duration,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub debug_token: Option<SecretString>,
    pub operator_token: Option<SecretString>,
    pub twilio: TwilioSettings,
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
}

#[derive(Clone, Debug)]
pub struct TwilioSettings {
    pub enabled: bool,
    pub account_sid: Option<String>,
    pub auth_token: SecretString,
    /// True when `auth_token` is [`DEVELOPMENT_AUTH_TOKEN`].
    pub using_development_token: bool,
    pub secondary_auth_token: Option<SecretString>,
    pub api_key: Option<String>,
    pub api_secret: Option<SecretString>,
    pub chat_service_sid: Option<String>,
    pub identity: Option<String>,
    pub phone_number: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub status_callback_url: Option<Url>,
    pub api_base_url: Url,
    pub conversations_base_url: Url,
    /// Messages per second per sender.
    pub max_send_rate: f64,
    pub max_send_attempts: u32,
    pub request_timeout: Duration,
}

impl Settings {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let raw: RawSettings = envy::from_env()
            .map_err(|e| ConfigError::new("environment", format!("unreadable: {e}")))?;
        Self::from_raw(raw)
    }

    /// Reads and validates the given variables (tests pass their own).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = vars.into_iter().map(|(k, v)| (k.into(), v.into()));
        let raw: RawSettings = envy::from_iter(vars)
            .map_err(|e| ConfigError::new("environment", format!("unreadable: {e}")))?;
        Self::from_raw(raw)
    }

    pub fn from_raw(raw: RawSettings) -> Result<Self, ConfigError> {
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
        };
        if bus.prefetch == 0 {
            return Err(ConfigError::new("AMQP_PREFETCH", "must be at least 1"));
        }

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

        let public_base_url = non_empty(raw.public_base_url)
            .map(|value| parse_base_url("PUBLIC_BASE_URL", &value))
            .transpose()?;

        let twilio = twilio_settings(
            &RawTwilio {
                enabled: non_empty(raw.twilio_enabled),
                account_sid: non_empty(raw.twilio_account_sid),
                auth_token: non_empty(raw.twilio_auth_token),
                secondary_auth_token: non_empty(raw.twilio_secondary_auth_token),
                api_key: non_empty(raw.twilio_api_key),
                api_secret: non_empty(raw.twilio_api_secret),
                chat_service_sid: non_empty(raw.twilio_chat_service_sid),
                identity: non_empty(raw.twilio_identity),
                phone_number: non_empty(raw.twilio_phone_number),
                messaging_service_sid: non_empty(raw.twilio_messaging_service_sid),
                status_callback_url: non_empty(raw.twilio_status_callback_url),
                api_base_url: non_empty(raw.twilio_api_base_url),
                conversations_base_url: non_empty(raw.twilio_conversations_base_url),
                max_send_rate: non_empty(raw.twilio_max_send_rate),
                max_send_attempts: non_empty(raw.twilio_max_send_attempts),
                request_timeout_ms: non_empty(raw.twilio_request_timeout_ms),
            },
            production,
        )?;

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
                300u64,
            )?),
            max_body_bytes: parse_or("MAX_BODY_BYTES", raw.max_body_bytes, 64 * 1024usize)?,
            log_format,
            log_level,
            debug_token: non_empty(raw.debug_token).map(SecretString::from),
            operator_token: non_empty(raw.operator_token).map(SecretString::from),
            twilio,
        })
    }

    /// The AMQP URL with its password removed, for logs and the debug snapshot.
    pub fn redacted_amqp_url(&self) -> String {
        match &self.bus.amqp_url {
            None => "embedded in-memory bus".to_owned(),
            Some(url) => redact_url(url.expose_secret()),
        }
    }
}

/// Removes user info from a URL so it can be shown.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable>".to_owned(),
    }
}

struct RawTwilio {
    enabled: Option<String>,
    account_sid: Option<String>,
    auth_token: Option<String>,
    secondary_auth_token: Option<String>,
    api_key: Option<String>,
    api_secret: Option<String>,
    chat_service_sid: Option<String>,
    identity: Option<String>,
    phone_number: Option<String>,
    messaging_service_sid: Option<String>,
    status_callback_url: Option<String>,
    api_base_url: Option<String>,
    conversations_base_url: Option<String>,
    max_send_rate: Option<String>,
    max_send_attempts: Option<String>,
    request_timeout_ms: Option<String>,
}

fn twilio_settings(raw: &RawTwilio, production: bool) -> Result<TwilioSettings, ConfigError> {
    let enabled = parse_bool("TWILIO_ENABLED", raw.enabled.as_deref(), true)?;

    if let Some(sid) = &raw.account_sid {
        check_sid("TWILIO_ACCOUNT_SID", sid, "AC")?;
    }
    if let Some(sid) = &raw.messaging_service_sid {
        check_sid("TWILIO_MESSAGING_SERVICE_SID", sid, "MG")?;
    }
    if let Some(sid) = &raw.chat_service_sid {
        check_sid("TWILIO_CHAT_SERVICE_SID", sid, "IS")?;
    }
    if let Some(key) = &raw.api_key {
        check_sid("TWILIO_API_KEY", key, "SK")?;
    }
    if raw.api_key.is_some() != raw.api_secret.is_some() {
        let missing = if raw.api_key.is_some() {
            "TWILIO_API_SECRET"
        } else {
            "TWILIO_API_KEY"
        };
        return Err(ConfigError::new(
            missing,
            "TWILIO_API_KEY and TWILIO_API_SECRET must be set together",
        ));
    }
    if let Some(number) = &raw.phone_number {
        let bare = number.strip_prefix("whatsapp:").unwrap_or(number);
        if !is_e164(bare) {
            return Err(ConfigError::new(
                "TWILIO_PHONE_NUMBER",
                "must be an E.164 number such as +15005550006 (optionally whatsapp:+…)",
            ));
        }
    }

    let (auth_token, using_development_token) = match &raw.auth_token {
        Some(token) => (SecretString::from(token.clone()), false),
        None if enabled && production => {
            return Err(ConfigError::new(
                "TWILIO_AUTH_TOKEN",
                "required when TWILIO_ENABLED=true and APP_ENV=production",
            ))
        }
        None => (SecretString::from(DEVELOPMENT_AUTH_TOKEN), true),
    };
    if enabled && production && raw.account_sid.is_none() {
        return Err(ConfigError::new(
            "TWILIO_ACCOUNT_SID",
            "required when TWILIO_ENABLED=true and APP_ENV=production",
        ));
    }

    let max_send_rate: f64 = parse_or("TWILIO_MAX_SEND_RATE", raw.max_send_rate.clone(), 1.0)?;
    if !(max_send_rate.is_finite() && max_send_rate > 0.0) {
        return Err(ConfigError::new(
            "TWILIO_MAX_SEND_RATE",
            "must be a positive number of messages per second",
        ));
    }
    let max_send_attempts: u32 =
        parse_or("TWILIO_MAX_SEND_ATTEMPTS", raw.max_send_attempts.clone(), 6)?;
    if max_send_attempts == 0 {
        return Err(ConfigError::new(
            "TWILIO_MAX_SEND_ATTEMPTS",
            "must be at least 1",
        ));
    }

    Ok(TwilioSettings {
        enabled,
        account_sid: raw.account_sid.clone(),
        auth_token,
        using_development_token,
        secondary_auth_token: raw.secondary_auth_token.clone().map(SecretString::from),
        api_key: raw.api_key.clone(),
        api_secret: raw.api_secret.clone().map(SecretString::from),
        chat_service_sid: raw.chat_service_sid.clone(),
        identity: raw.identity.clone(),
        phone_number: raw.phone_number.clone(),
        messaging_service_sid: raw.messaging_service_sid.clone(),
        status_callback_url: raw
            .status_callback_url
            .as_deref()
            .map(|v| parse_absolute_url("TWILIO_STATUS_CALLBACK_URL", v))
            .transpose()?,
        api_base_url: parse_base_url(
            "TWILIO_API_BASE_URL",
            raw.api_base_url
                .as_deref()
                .unwrap_or("https://api.twilio.com"),
        )?,
        conversations_base_url: parse_base_url(
            "TWILIO_CONVERSATIONS_BASE_URL",
            raw.conversations_base_url
                .as_deref()
                .unwrap_or("https://conversations.twilio.com"),
        )?,
        max_send_rate,
        max_send_attempts,
        request_timeout: Duration::from_millis(parse_or(
            "TWILIO_REQUEST_TIMEOUT_MS",
            raw.request_timeout_ms.clone(),
            10_000u64,
        )?),
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn parse_or<T>(variable: &'static str, value: Option<String>, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match non_empty(value) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|e| ConfigError::new(variable, format!("cannot parse {text:?}: {e}"))),
    }
}

fn parse_bool(
    variable: &'static str,
    value: Option<&str>,
    default: bool,
) -> Result<bool, ConfigError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError::new(
            variable,
            format!("expected true or false, got {other:?}"),
        )),
    }
}

fn parse_absolute_url(variable: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value)
        .map_err(|e| ConfigError::new(variable, format!("not a valid URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ConfigError::new(variable, "scheme must be http or https"));
    }
    if url.host_str().is_none() {
        return Err(ConfigError::new(variable, "must include a host"));
    }
    Ok(url)
}

/// A base URL: scheme, host, optional port and path prefix, without query or fragment.
fn parse_base_url(variable: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = parse_absolute_url(variable, value.trim_end_matches('/'))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            variable,
            "must not carry a query string or fragment",
        ));
    }
    Ok(url)
}

fn check_sid(variable: &'static str, value: &str, prefix: &str) -> Result<(), ConfigError> {
    let well_formed = value.len() == 34
        && value.starts_with(prefix)
        && value[2..].chars().all(|c| c.is_ascii_hexdigit());
    if well_formed {
        Ok(())
    } else {
        Err(ConfigError::new(
            variable,
            format!("must be {prefix} followed by 32 hexadecimal characters"),
        ))
    }
}

/// `+` then 8 to 15 digits (E.164).
pub fn is_e164(value: &str) -> bool {
    value.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
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
        assert!(s.twilio.enabled);
        assert!(s.twilio.using_development_token);
        assert_eq!(s.twilio.api_base_url.as_str(), "https://api.twilio.com/");
    }

    #[test]
    fn a_malformed_value_names_its_variable() {
        let err = settings(&[("PORT", "eighty")]).unwrap_err();
        assert_eq!(err.variable, "PORT");
        assert!(err.to_string().starts_with("configuration error: PORT:"));
        assert!(!err.to_string().contains('\n'));

        let err = settings(&[("TWILIO_ACCOUNT_SID", "XX123")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_ACCOUNT_SID");
        let err = settings(&[("TWILIO_MAX_SEND_RATE", "-1")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_MAX_SEND_RATE");
        let err = settings(&[("PUBLIC_BASE_URL", "not a url")]).unwrap_err();
        assert_eq!(err.variable, "PUBLIC_BASE_URL");
        let err =
            settings(&[("TWILIO_API_KEY", "SK0123456789abcdef0123456789abcdef")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_API_SECRET");
    }

    #[test]
    fn production_requires_real_credentials_and_a_broker() {
        let err = settings(&[("APP_ENV", "production")]).unwrap_err();
        assert_eq!(err.variable, "AMQP_URL");
        let err = settings(&[
            ("APP_ENV", "production"),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "TWILIO_AUTH_TOKEN");
    }

    #[test]
    fn secrets_never_appear_in_debug_output_or_errors() {
        let s = settings(&[
            ("AMQP_URL", "amqp://user:amqp-password-42@broker:5672/%2f"),
            ("TWILIO_AUTH_TOKEN", "auth-token-secret-42"),
            ("TWILIO_SECONDARY_AUTH_TOKEN", "secondary-secret-42"),
            ("TWILIO_API_KEY", "SK0123456789abcdef0123456789abcdef"),
            ("TWILIO_API_SECRET", "api-secret-42"),
            ("DEBUG_TOKEN", "debug-secret-42"),
            ("OPERATOR_TOKEN", "operator-secret-42"),
        ])
        .unwrap();
        let debug = format!("{s:?}");
        for secret in [
            "amqp-password-42",
            "auth-token-secret-42",
            "secondary-secret-42",
            "api-secret-42",
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

    #[test]
    fn e164_numbers() {
        assert!(is_e164("+15005550006"));
        assert!(!is_e164("15005550006"));
        assert!(!is_e164("+1500555000a"));
        assert!(!is_e164("+123"));
    }
}
