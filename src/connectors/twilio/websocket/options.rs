//! What the socket client is built from ([`Config`], with [`Tuning`] for its timers and
//! limits) and the errors it reports ([`ClientError`]).

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::conversations::ConversationsError;
use super::token::{TokenError, TokenSpec};
use super::upstream::{RetryPolicy, UpstreamError};

/// Twilio's cap on conversations one identity can be a participant of.
pub const PARTICIPANT_LIMIT: usize = 1000;

/// What the client needs; the service fills it from its environment.
#[derive(Clone)]
pub struct Config {
    pub account_sid: String,
    pub api_key_sid: String,
    pub api_key_secret: SecretString,
    pub chat_service_sid: String,
    pub identity: String,
    /// Where the socket connects (`TWILIO_TWILSOCK_URL`, else Twilio's endpoint for the
    /// region).
    pub twilsock_url: String,
    pub region: String,
    pub token_ttl: Duration,
    /// Leave conversations closed for at least this many days (opt-in).
    pub leave_closed_after_days: Option<u32>,
    pub tuning: Tuning,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("account_sid", &self.account_sid)
            .field("api_key_sid", &self.api_key_sid)
            .field("chat_service_sid", &self.chat_service_sid)
            .field("identity", &self.identity)
            .field("twilsock_url", &self.twilsock_url)
            .field("region", &self.region)
            .field("token_ttl", &self.token_ttl)
            .field("leave_closed_after_days", &self.leave_closed_after_days)
            .finish_non_exhaustive()
    }
}

/// Knobs with production defaults; tests shorten the timers.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    pub keepalive: Duration,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub page_size: u32,
    pub catchup_concurrency: usize,
    pub events_buffer: usize,
    pub participant_limit: usize,
    /// How many of a conversation's latest messages `find_message_by_key` looks through.
    pub find_lookback: u32,
    pub leave_check_interval: Duration,
    /// Pause before retrying a failed sync or catch-up.
    pub retry_pause: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            reconnect_base: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(120),
            keepalive: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            page_size: 100,
            catchup_concurrency: 4,
            events_buffer: 1024,
            participant_limit: PARTICIPANT_LIMIT,
            find_lookback: 50,
            leave_check_interval: Duration::from_secs(3600),
            retry_pause: Duration::from_secs(5),
        }
    }
}

impl Config {
    pub fn new(
        account_sid: impl Into<String>,
        api_key_sid: impl Into<String>,
        api_key_secret: SecretString,
        chat_service_sid: impl Into<String>,
        identity: impl Into<String>,
        twilsock_url: impl Into<String>,
    ) -> Self {
        Self {
            account_sid: account_sid.into(),
            api_key_sid: api_key_sid.into(),
            api_key_secret,
            chat_service_sid: chat_service_sid.into(),
            identity: identity.into(),
            twilsock_url: twilsock_url.into(),
            region: "us1".into(),
            token_ttl: Duration::from_secs(3600),
            leave_closed_after_days: None,
            tuning: Tuning::default(),
        }
    }

    pub(super) fn host_base(&self, service: &str) -> Result<Url, ClientError> {
        Url::parse(&format!("https://{service}.{}.twilio.com", self.region))
            .map_err(|e| ClientError::Config(format!("region {:?}: {e}", self.region)))
    }

    pub fn token_spec(&self) -> TokenSpec {
        TokenSpec {
            account_sid: self.account_sid.clone(),
            api_key_sid: self.api_key_sid.clone(),
            api_key_secret: self.api_key_secret.clone(),
            chat_service_sid: self.chat_service_sid.clone(),
            identity: self.identity.clone(),
            ttl: self.token_ttl,
            // Tokens for the default region carry no `twr`, as Twilio's helper mints them.
            region: Some(self.region.clone()).filter(|region| region != "us1"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Conversations(#[from] ConversationsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The message may or may not have been created; resolve with `find_message_by_key`.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    #[error("not ready: {0}")]
    NotReady(&'static str),
    #[error("conversation {0} is not known to this client")]
    UnknownConversation(String),
}

pub(super) fn client_error(error: ConversationsError) -> ClientError {
    match error {
        ConversationsError::Upstream(error @ UpstreamError::Ambiguous { .. }) => {
            ClientError::Ambiguous(error.to_string())
        }
        other => ClientError::Conversations(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_names_hosts_and_only_a_non_default_one_marks_tokens() {
        let url = "ws://127.0.0.1:1/v3/wsconnect";
        let mut config = Config::new("AC1", "SK1", SecretString::from("s"), "IS1", "bot", url);
        assert_eq!(config.token_spec().region, None);
        assert_eq!(
            config.host_base("aim").unwrap().as_str(),
            "https://aim.us1.twilio.com/"
        );
        config.region = "ie1".into();
        assert_eq!(config.token_spec().region.as_deref(), Some("ie1"));
        assert_eq!(
            config.host_base("cds").unwrap().as_str(),
            "https://cds.ie1.twilio.com/"
        );
        assert!(!format!("{config:?}").contains("\"s\""));
    }
}
