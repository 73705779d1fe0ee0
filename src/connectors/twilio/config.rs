//! The Twilio connector's settings: every `TWILIO_*` variable, read with
//! `envy::prefixed("TWILIO_")` into [`RawTwilio`] (listed once, here) and validated into
//! [`TwilioSettings`], so a bad value stops start-up with one line naming the variable.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::address::Address;
use crate::configuration::{
    parse::{check_sid, non_empty, parse_absolute_url, parse_base_url, parse_bool, parse_or},
    AppEnv, ConfigError, Environment,
};

/// The auth token used when none is configured outside production. It is public, so anything
/// signed with it proves nothing: start-up says so loudly.
pub const DEVELOPMENT_AUTH_TOKEN: &str = "dev-only-insecure-token-do-not-use-in-production";

/// `TWILIO_EVENT_STREAMS_MAX_BODY_BYTES` when unset: 1 MiB.
pub const DEFAULT_EVENT_STREAMS_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every `TWILIO_*` variable the connector reads (without the prefix, lower case, as envy
/// names them).
#[derive(Deserialize, Default)]
pub struct RawTwilio {
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
    mcs_base_url: Option<String>,
    resolve_wait_ms: Option<String>,
    max_send_rate: Option<String>,
    max_send_attempts: Option<String>,
    request_timeout_ms: Option<String>,
    event_streams_max_body_bytes: Option<String>,
    transport: Option<String>,
    egress_transport: Option<String>,
    twilsock_url: Option<String>,
    region: Option<String>,
    token_ttl_seconds: Option<String>,
    leave_closed_after_days: Option<String>,
}

/// Where inbound messages come from (`TWILIO_TRANSPORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Twilio calls the webhooks.
    Webhook,
    /// The service holds a Conversations WebSocket session (feature `websocket`).
    Websocket,
    /// Both; a message seen both ways is published once.
    Both,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Webhook => "webhook",
            Transport::Websocket => "websocket",
            Transport::Both => "both",
        }
    }

    /// Whether the WebSocket session runs.
    pub fn uses_socket(self) -> bool {
        self != Transport::Webhook
    }
}

/// How replies to Conversations (`CH…`) are posted (`TWILIO_EGRESS_TRANSPORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressTransport {
    /// The Conversations REST API.
    Rest,
    /// The WebSocket session the ingress side holds.
    Websocket,
}

impl EgressTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressTransport::Rest => "rest",
            EgressTransport::Websocket => "websocket",
        }
    }
}

/// The Conversations socket: where it connects and how its tokens and conversations are
/// managed. Read whatever the transport; only used when it includes the socket.
#[derive(Clone, Debug)]
pub struct SocketSettings {
    /// `TWILIO_TWILSOCK_URL`, else Twilio's endpoint for the region.
    pub twilsock_url: Url,
    /// `TWILIO_REGION` (`us1`): the twilsock host, the hosts named inside frames and the
    /// token's `twr` header.
    pub region: String,
    /// Lifetime of each locally minted Access Token.
    pub token_ttl: Duration,
    /// Leave conversations closed for at least this many days (opt-in).
    pub leave_closed_after_days: Option<u32>,
}

/// Twilio's twilsock endpoint for a region.
pub fn default_twilsock_url(region: &str) -> String {
    format!("wss://tsock.{region}.twilio.com/v3/wsconnect")
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
    /// The Media Content Service (media attached to conversation messages).
    pub mcs_base_url: Url,
    /// How long the egress sink waits for a status callback to tell what an ambiguous send
    /// created, before it searches the recipient's messages.
    pub resolve_wait: Duration,
    /// Messages per second per sender.
    pub max_send_rate: f64,
    pub max_send_attempts: u32,
    pub request_timeout: Duration,
    /// Body cap of the Event Streams webhook: its batches outgrow the form webhooks' cap, and
    /// a 4xx answer makes Twilio discard the whole batch.
    pub event_streams_max_body_bytes: usize,
    pub transport: Transport,
    pub egress_transport: EgressTransport,
    pub socket: SocketSettings,
}

impl TwilioSettings {
    /// Reads and validates the `TWILIO_*` variables of `environment`.
    pub fn from_environment(
        environment: &Environment,
        app_env: AppEnv,
    ) -> Result<Self, ConfigError> {
        environment.require_utf8::<RawTwilio>("TWILIO_")?;
        let raw: RawTwilio = envy::prefixed("TWILIO_")
            .from_iter(environment.pairs())
            .map_err(|e| ConfigError::new("environment", format!("unreadable: {e}")))?;
        Self::from_raw(raw, app_env == AppEnv::Production)
    }

    fn from_raw(raw: RawTwilio, production: bool) -> Result<Self, ConfigError> {
        let enabled = parse_bool("TWILIO_ENABLED", non_empty(raw.enabled).as_deref(), true)?;
        let account_sid = non_empty(raw.account_sid);
        let auth_token = non_empty(raw.auth_token);
        let api_key = non_empty(raw.api_key);
        let api_secret = non_empty(raw.api_secret);
        let chat_service_sid = non_empty(raw.chat_service_sid);
        let phone_number = non_empty(raw.phone_number);
        let messaging_service_sid = non_empty(raw.messaging_service_sid);

        if let Some(sid) = &account_sid {
            check_sid("TWILIO_ACCOUNT_SID", sid, "AC")?;
        }
        if let Some(sid) = &messaging_service_sid {
            check_sid("TWILIO_MESSAGING_SERVICE_SID", sid, "MG")?;
        }
        if let Some(sid) = &chat_service_sid {
            check_sid("TWILIO_CHAT_SERVICE_SID", sid, "IS")?;
        }
        if let Some(key) = &api_key {
            check_sid("TWILIO_API_KEY", key, "SK")?;
        }
        let transport = match non_empty(raw.transport).as_deref() {
            None | Some("webhook") => Transport::Webhook,
            Some("websocket") => Transport::Websocket,
            Some("both") => Transport::Both,
            Some(other) => {
                return Err(ConfigError::new(
                    "TWILIO_TRANSPORT",
                    format!("expected webhook, websocket or both, got {other:?}"),
                ))
            }
        };
        let egress_transport = match non_empty(raw.egress_transport).as_deref() {
            None | Some("rest") => EgressTransport::Rest,
            Some("websocket") => EgressTransport::Websocket,
            Some(other) => {
                return Err(ConfigError::new(
                    "TWILIO_EGRESS_TRANSPORT",
                    format!("expected rest or websocket, got {other:?}"),
                ))
            }
        };
        let socket = socket_settings(
            raw.twilsock_url,
            raw.region,
            raw.token_ttl_seconds,
            raw.leave_closed_after_days,
        )?;
        if enabled {
            check_socket_requirements(
                transport,
                egress_transport,
                &[
                    ("TWILIO_ACCOUNT_SID", account_sid.is_some()),
                    ("TWILIO_API_KEY", api_key.is_some()),
                    ("TWILIO_API_SECRET", api_secret.is_some()),
                    ("TWILIO_CHAT_SERVICE_SID", chat_service_sid.is_some()),
                    ("TWILIO_IDENTITY", non_empty(raw.identity.clone()).is_some()),
                ],
            )?;
        }

        if api_key.is_some() != api_secret.is_some() {
            let missing = if api_key.is_some() {
                "TWILIO_API_SECRET"
            } else {
                "TWILIO_API_KEY"
            };
            return Err(ConfigError::new(
                missing,
                "TWILIO_API_KEY and TWILIO_API_SECRET must be set together",
            ));
        }
        if let Some(number) = &phone_number {
            if !Address::parse(number).is_ok_and(|sender| sender.is_phone_number()) {
                return Err(ConfigError::new(
                    "TWILIO_PHONE_NUMBER",
                    "must be an E.164 number such as +15005550006 (optionally whatsapp:+…)",
                ));
            }
        }

        let (auth_token, using_development_token) = match auth_token {
            Some(token) => (SecretString::from(token), false),
            None if enabled && production => {
                return Err(ConfigError::new(
                    "TWILIO_AUTH_TOKEN",
                    "required when TWILIO_ENABLED=true and APP_ENV=production",
                ))
            }
            None => (SecretString::from(DEVELOPMENT_AUTH_TOKEN), true),
        };
        if enabled && production && account_sid.is_none() {
            return Err(ConfigError::new(
                "TWILIO_ACCOUNT_SID",
                "required when TWILIO_ENABLED=true and APP_ENV=production",
            ));
        }

        let max_send_rate: f64 = parse_or("TWILIO_MAX_SEND_RATE", raw.max_send_rate, 1.0)?;
        if !(max_send_rate.is_finite() && max_send_rate > 0.0) {
            return Err(ConfigError::new(
                "TWILIO_MAX_SEND_RATE",
                "must be a positive number of messages per second",
            ));
        }
        let max_send_attempts: u32 =
            parse_or("TWILIO_MAX_SEND_ATTEMPTS", raw.max_send_attempts, 6)?;
        if max_send_attempts == 0 {
            return Err(ConfigError::new(
                "TWILIO_MAX_SEND_ATTEMPTS",
                "must be at least 1",
            ));
        }

        let event_streams_max_body_bytes: usize = parse_or(
            "TWILIO_EVENT_STREAMS_MAX_BODY_BYTES",
            raw.event_streams_max_body_bytes,
            DEFAULT_EVENT_STREAMS_MAX_BODY_BYTES,
        )?;
        if event_streams_max_body_bytes == 0 {
            return Err(ConfigError::new(
                "TWILIO_EVENT_STREAMS_MAX_BODY_BYTES",
                "must be at least 1",
            ));
        }

        Ok(TwilioSettings {
            enabled,
            account_sid,
            auth_token,
            using_development_token,
            secondary_auth_token: non_empty(raw.secondary_auth_token).map(SecretString::from),
            api_key,
            api_secret: api_secret.map(SecretString::from),
            chat_service_sid,
            identity: non_empty(raw.identity),
            phone_number,
            messaging_service_sid,
            status_callback_url: non_empty(raw.status_callback_url)
                .as_deref()
                .map(|v| parse_absolute_url("TWILIO_STATUS_CALLBACK_URL", v))
                .transpose()?,
            api_base_url: parse_base_url(
                "TWILIO_API_BASE_URL",
                non_empty(raw.api_base_url)
                    .as_deref()
                    .unwrap_or("https://api.twilio.com"),
            )?,
            conversations_base_url: parse_base_url(
                "TWILIO_CONVERSATIONS_BASE_URL",
                non_empty(raw.conversations_base_url)
                    .as_deref()
                    .unwrap_or("https://conversations.twilio.com"),
            )?,
            mcs_base_url: parse_base_url(
                "TWILIO_MCS_BASE_URL",
                non_empty(raw.mcs_base_url)
                    .as_deref()
                    .unwrap_or("https://mcs.us1.twilio.com"),
            )?,
            resolve_wait: Duration::from_millis(parse_or(
                "TWILIO_RESOLVE_WAIT_MS",
                raw.resolve_wait_ms,
                3_000u64,
            )?),
            max_send_rate,
            max_send_attempts,
            request_timeout: Duration::from_millis(parse_or(
                "TWILIO_REQUEST_TIMEOUT_MS",
                raw.request_timeout_ms,
                10_000u64,
            )?),
            event_streams_max_body_bytes,
            transport,
            egress_transport,
            socket,
        })
    }

    /// Every secret this connector holds, for scrubbing what it shows.
    pub fn secrets(&self) -> Vec<&SecretString> {
        [
            Some(&self.auth_token),
            self.secondary_auth_token.as_ref(),
            self.api_secret.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The socket's settings, validated whatever the transport so a typo never waits for the day
/// the socket is switched on.
fn socket_settings(
    twilsock_url: Option<String>,
    region: Option<String>,
    token_ttl_seconds: Option<String>,
    leave_closed_after_days: Option<String>,
) -> Result<SocketSettings, ConfigError> {
    let region = non_empty(region).unwrap_or_else(|| "us1".to_owned());
    // It becomes part of host names.
    if region.len() > 16
        || !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(ConfigError::new(
            "TWILIO_REGION",
            "must be a Twilio region such as us1, ie1 or au1",
        ));
    }
    let twilsock_url = non_empty(twilsock_url).unwrap_or_else(|| default_twilsock_url(&region));
    let twilsock_url = Url::parse(&twilsock_url)
        .map_err(|e| ConfigError::new("TWILIO_TWILSOCK_URL", format!("not a valid URL ({e})")))?;
    if !matches!(twilsock_url.scheme(), "ws" | "wss") || twilsock_url.host_str().is_none() {
        return Err(ConfigError::new(
            "TWILIO_TWILSOCK_URL",
            "must be a ws:// or wss:// URL with a host",
        ));
    }
    let ttl: u64 = parse_or("TWILIO_TOKEN_TTL_SECONDS", token_ttl_seconds, 3600)?;
    // Twilio refuses tokens valid for more than 24 hours; very short ones would renew
    // constantly.
    if !(60..=86_400).contains(&ttl) {
        return Err(ConfigError::new(
            "TWILIO_TOKEN_TTL_SECONDS",
            "must be between 60 and 86400 seconds",
        ));
    }
    let leave_closed_after_days = non_empty(leave_closed_after_days)
        .map(|days| {
            days.parse::<u32>().map_err(|e| {
                ConfigError::new(
                    "TWILIO_LEAVE_CLOSED_AFTER_DAYS",
                    format!("cannot parse {days:?} as a number of days: {e}"),
                )
            })
        })
        .transpose()?;
    Ok(SocketSettings {
        twilsock_url,
        region,
        token_ttl: Duration::from_secs(ttl),
        leave_closed_after_days,
    })
}

/// A transport that uses the socket needs the feature compiled in and the credentials the
/// socket's Access Tokens are minted from.
fn check_socket_requirements(
    transport: Transport,
    egress_transport: EgressTransport,
    credentials: &[(&'static str, bool)],
) -> Result<(), ConfigError> {
    let (variable, setting) = if transport.uses_socket() {
        ("TWILIO_TRANSPORT", transport.as_str())
    } else if egress_transport == EgressTransport::Websocket {
        return Err(ConfigError::new(
            "TWILIO_EGRESS_TRANSPORT",
            "websocket sends over the socket TWILIO_TRANSPORT=websocket or both holds; \
             TWILIO_TRANSPORT is webhook",
        ));
    } else {
        return Ok(());
    };
    if !cfg!(feature = "websocket") {
        return Err(ConfigError::new(
            variable,
            format!(
                "{setting} needs the `websocket` cargo feature, which this build does not \
                 have (build with --features websocket)"
            ),
        ));
    }
    let missing: Vec<&'static str> = credentials
        .iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| *name)
        .collect();
    match missing.first() {
        None => Ok(()),
        Some(&first) => Err(ConfigError::new(
            first,
            format!(
                "required by {variable}={setting} (missing: {})",
                missing.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<TwilioSettings, ConfigError> {
        let production = vars.contains(&("APP_ENV", "production"));
        let app_env = if production {
            AppEnv::Production
        } else {
            AppEnv::Development
        };
        TwilioSettings::from_environment(&Environment::from_pairs(vars.iter().copied()), app_env)
    }

    #[test]
    fn defaults_need_no_configuration() {
        let s = settings(&[]).expect("defaults are valid");
        assert!(s.enabled);
        assert!(s.using_development_token);
        assert_eq!(s.api_base_url.as_str(), "https://api.twilio.com/");
        assert_eq!(s.max_send_rate, 1.0);
        assert_eq!(s.event_streams_max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn a_malformed_value_names_its_variable() {
        let err = settings(&[("TWILIO_ACCOUNT_SID", "XX123")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_ACCOUNT_SID");
        assert!(err
            .to_string()
            .starts_with("configuration error: TWILIO_ACCOUNT_SID:"));
        let err = settings(&[("TWILIO_MAX_SEND_RATE", "-1")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_MAX_SEND_RATE");
        let err =
            settings(&[("TWILIO_API_KEY", "SK0123456789abcdef0123456789abcdef")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_API_SECRET");
        let err = settings(&[("TWILIO_PHONE_NUMBER", "5550100")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_PHONE_NUMBER");
        for bad in ["0", "a lot"] {
            let err = settings(&[("TWILIO_EVENT_STREAMS_MAX_BODY_BYTES", bad)]).unwrap_err();
            assert_eq!(err.variable, "TWILIO_EVENT_STREAMS_MAX_BODY_BYTES");
        }
    }

    #[test]
    fn production_requires_real_credentials() {
        let err = settings(&[("APP_ENV", "production")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_AUTH_TOKEN");
        let err = settings(&[("APP_ENV", "production"), ("TWILIO_AUTH_TOKEN", "t")]).unwrap_err();
        assert_eq!(err.variable, "TWILIO_ACCOUNT_SID");
    }

    #[test]
    fn secrets_never_appear_in_debug_output_or_errors() {
        let s = settings(&[
            ("TWILIO_AUTH_TOKEN", "auth-token-secret-42"),
            ("TWILIO_SECONDARY_AUTH_TOKEN", "secondary-secret-42"),
            ("TWILIO_API_KEY", "SK0123456789abcdef0123456789abcdef"),
            ("TWILIO_API_SECRET", "api-secret-42"),
        ])
        .unwrap();
        let debug = format!("{s:?}");
        for secret in [
            "auth-token-secret-42",
            "secondary-secret-42",
            "api-secret-42",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked into Debug output");
        }
        assert_eq!(s.secrets().len(), 3);
    }

    const SOCKET_CREDENTIALS: &[(&str, &str)] = &[
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_API_KEY", "SK0123456789abcdef0123456789abcdef"),
        ("TWILIO_API_SECRET", "api-secret"),
        (
            "TWILIO_CHAT_SERVICE_SID",
            "IS0123456789abcdef0123456789abcdef",
        ),
        ("TWILIO_IDENTITY", "bot"),
    ];

    fn with_credentials(
        extra: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        SOCKET_CREDENTIALS
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    }

    #[test]
    fn the_transport_defaults_to_webhooks_and_rest() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.transport, Transport::Webhook);
        assert_eq!(s.egress_transport, EgressTransport::Rest);
        assert_eq!(
            s.socket.twilsock_url.as_str(),
            "wss://tsock.us1.twilio.com/v3/wsconnect"
        );
        assert_eq!(s.socket.region, "us1");
        assert_eq!(s.socket.token_ttl, Duration::from_secs(3600));
        assert_eq!(s.socket.leave_closed_after_days, None);
        let s = settings(&[("TWILIO_REGION", "ie1")]).unwrap();
        assert_eq!(
            s.socket.twilsock_url.as_str(),
            "wss://tsock.ie1.twilio.com/v3/wsconnect"
        );
    }

    #[test]
    fn malformed_socket_settings_name_their_variable() {
        for (variable, value) in [
            ("TWILIO_TRANSPORT", "sockets"),
            ("TWILIO_EGRESS_TRANSPORT", "carrier-pigeon"),
            (
                "TWILIO_TWILSOCK_URL",
                "https://tsock.us1.twilio.com/v3/wsconnect",
            ),
            ("TWILIO_TWILSOCK_URL", "not a url"),
            ("TWILIO_REGION", "us1.evil.example"),
            ("TWILIO_TOKEN_TTL_SECONDS", "10"),
            ("TWILIO_TOKEN_TTL_SECONDS", "100000"),
            ("TWILIO_TOKEN_TTL_SECONDS", "soon"),
            ("TWILIO_LEAVE_CLOSED_AFTER_DAYS", "-1"),
        ] {
            let err = settings(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable, "{value}: {err}");
        }
    }

    #[test]
    fn egress_over_the_socket_needs_the_socket() {
        let err = settings(&with_credentials(&[(
            "TWILIO_EGRESS_TRANSPORT",
            "websocket",
        )]))
        .unwrap_err();
        assert_eq!(err.variable, "TWILIO_EGRESS_TRANSPORT");
    }

    #[cfg(not(feature = "websocket"))]
    #[test]
    fn the_socket_transports_need_the_feature() {
        for transport in ["websocket", "both"] {
            let err = settings(&with_credentials(&[("TWILIO_TRANSPORT", transport)])).unwrap_err();
            assert_eq!(err.variable, "TWILIO_TRANSPORT");
            let line = err.to_string();
            assert!(line.contains("--features websocket"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[cfg(feature = "websocket")]
    #[test]
    fn the_socket_transports_need_credentials_and_name_each_missing_one() {
        for transport in ["websocket", "both"] {
            let s = settings(&with_credentials(&[
                ("TWILIO_TRANSPORT", transport),
                ("TWILIO_EGRESS_TRANSPORT", "websocket"),
                ("TWILIO_TWILSOCK_URL", "ws://127.0.0.1:9/v3/wsconnect"),
                ("TWILIO_TOKEN_TTL_SECONDS", "600"),
                ("TWILIO_LEAVE_CLOSED_AFTER_DAYS", "30"),
            ]))
            .unwrap();
            assert!(s.transport.uses_socket());
            assert_eq!(s.egress_transport, EgressTransport::Websocket);
            assert_eq!(
                s.socket.twilsock_url.as_str(),
                "ws://127.0.0.1:9/v3/wsconnect"
            );
            assert_eq!(s.socket.token_ttl, Duration::from_secs(600));
            assert_eq!(s.socket.leave_closed_after_days, Some(30));
            for (missing, _) in SOCKET_CREDENTIALS {
                let vars: Vec<(&str, &str)> = with_credentials(&[("TWILIO_TRANSPORT", transport)])
                    .into_iter()
                    .filter(|(name, _)| name != missing)
                    .collect();
                let err = settings(&vars).unwrap_err();
                assert_eq!(err.variable, *missing);
                let line = err.to_string();
                assert!(
                    line.contains(&format!("TWILIO_TRANSPORT={transport}")),
                    "{line}"
                );
                assert!(!line.contains('\n'), "{line}");
            }
        }
        let err = settings(&[
            ("TWILIO_TRANSPORT", "websocket"),
            ("TWILIO_IDENTITY", "bot"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "TWILIO_ACCOUNT_SID");
        assert!(err.to_string().contains(
            "missing: TWILIO_ACCOUNT_SID, TWILIO_API_KEY, TWILIO_API_SECRET, TWILIO_CHAT_SERVICE_SID"
        ));
        // A disabled connector needs nothing.
        assert!(settings(&[
            ("TWILIO_ENABLED", "false"),
            ("TWILIO_TRANSPORT", "websocket")
        ])
        .is_ok());
    }
}
