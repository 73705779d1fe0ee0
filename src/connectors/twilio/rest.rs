//! Twilio REST client: Programmable Messaging (`Messages.json`), Conversations messages and
//! Conversations participants.
//!
//! With `TWILIO_CHAT_SERVICE_SID` configured, Conversations calls use the service-scoped paths
//! (`/v1/Services/{ChatServiceSid}/Conversations/…`): conversations in a non-default
//! Conversation Service are not reachable through the default-service paths.
//!
//! One pooled [`reqwest::Client`] with connect and request timeouts serves every call. Requests
//! authenticate with HTTP Basic: `TWILIO_API_KEY`/`TWILIO_API_SECRET` when configured, else the
//! account SID and auth token. Sends carry an `I-Twilio-Idempotency-Token` chosen by the caller.
//! Twilio does not guarantee that token for a Messages create: after a 5xx or a timeout the
//! message may exist, so a retry of such an attempt first looks it up
//! ([`TwilioRest::find_created_message`]).
//!
//! Errors keep what the retry policy needs ([`RestError::is_retryable`], `Retry-After`, the
//! Twilio error code) and never include credentials or message bodies.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use crate::configuration::TwilioSettings;

/// The header Twilio uses to deduplicate retried requests.
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
/// Twilio's "too many requests" error code (sent with HTTP 429).
pub const ERROR_TOO_MANY_REQUESTS: u32 = 20429;
/// The recipient replied STOP: Twilio refuses to message them.
pub const ERROR_OPTED_OUT: u32 = 21610;
/// Conversations: the identity is already a participant of the conversation.
pub const ERROR_ALREADY_PARTICIPANT: u32 = 50433;

/// How long establishing a TCP/TLS connection to Twilio may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How [`describe`] starts a failure to connect (the request never left).
const CONNECT_FAILED: &str = "connection failed";
/// Longest `Retry-After` we accept; longer values are clamped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Who a Programmable Messaging message is sent from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageSender {
    /// `From`: a phone number (`+E.164`), `whatsapp:+E.164`, or another Twilio sender id.
    From(String),
    /// `MessagingServiceSid` (`MG…`): Twilio picks the number from the service's pool.
    MessagingService(String),
}

/// `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    pub to: &'a str,
    pub sender: &'a MessageSender,
    pub body: Option<&'a str>,
    pub media_urls: &'a [String],
    pub status_callback: Option<&'a Url>,
    pub idempotency_token: &'a str,
}

/// `POST /v1/Conversations/{ConversationSid}/Messages` (or, with a chat service configured,
/// `POST /v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Messages`).
#[derive(Clone, Debug)]
pub struct NewConversationMessage<'a> {
    pub conversation_sid: &'a str,
    pub author: Option<&'a str>,
    pub body: Option<&'a str>,
    /// A media SID (`ME…`) from Twilio's Media Content Service.
    pub media_sid: Option<&'a str>,
    pub idempotency_token: &'a str,
}

/// What Twilio created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// `SM…`/`MM…` for messages, `IM…` for conversation messages.
    pub sid: String,
    /// Twilio's initial status (`queued`, `accepted`, …) when given.
    pub status: Option<String>,
    /// Twilio's segment count when given (Messaging only).
    pub num_segments: Option<u32>,
}

/// Outcome of [`TwilioRest::add_participant`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantAdded {
    /// Twilio created the participant (`MB…`).
    Added { sid: String },
    /// The identity already was a participant (HTTP 409 / error 50433): nothing to do.
    AlreadyParticipant,
}

/// A failed Twilio REST call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RestError {
    /// Twilio answered with a non-2xx status.
    #[error("Twilio answered HTTP {status}{}: {message}", code.map(|c| format!(" (error {c})")).unwrap_or_default())]
    Http {
        status: u16,
        /// Twilio's error code from the JSON body (`code`), e.g. 21211.
        code: Option<u32>,
        /// Twilio's error message (never contains our credentials).
        message: String,
        /// `Retry-After`, when Twilio sent one.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused/reset, timeout, TLS failure.
    #[error("Twilio unreachable: {0}")]
    Network(String),
    /// We cannot even build the request (for example no account SID configured).
    #[error("Twilio REST not configured: {0}")]
    NotConfigured(&'static str),
}

impl RestError {
    /// 429, 5xx and network failures are worth retrying; other 4xx are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            RestError::Http { status, code, .. } => {
                *status == 429 || *status >= 500 || *code == Some(ERROR_TOO_MANY_REQUESTS)
            }
            RestError::Network(_) => true,
            RestError::NotConfigured(_) => false,
        }
    }

    /// The request may have reached Twilio and created something although we saw a failure:
    /// a 5xx answer, or a network failure other than failing to connect (a timeout, a reset,
    /// an unreadable answer). 429 and other 4xx are Twilio's refusal: nothing was created.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            RestError::Http { status, .. } => *status >= 500,
            RestError::Network(detail) => !detail.starts_with(CONNECT_FAILED),
            RestError::NotConfigured(_) => false,
        }
    }

    /// Status, code and kind only: safe for logs and the debug snapshot (Twilio's message text
    /// can quote the recipient's number).
    pub fn summary(&self) -> String {
        match self {
            RestError::Http { status, code, .. } => match code {
                Some(code) => format!("HTTP {status}, Twilio error {code}"),
                None => format!("HTTP {status}"),
            },
            RestError::Network(detail) => format!("network: {detail}"),
            RestError::NotConfigured(what) => format!("not configured: {what}"),
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            RestError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn error_code(&self) -> Option<u32> {
        match self {
            RestError::Http { code, .. } => *code,
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RestError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The Twilio REST client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    api_base_url: Url,
    conversations_base_url: Url,
    /// `IS…`: scopes Conversations calls to this Conversation Service.
    chat_service_sid: Option<String>,
    account_sid: Option<String>,
    username: Option<String>,
    password: SecretString,
}

impl std::fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioRest")
            .field("api_base_url", &self.api_base_url.as_str())
            .field(
                "conversations_base_url",
                &self.conversations_base_url.as_str(),
            )
            .field("chat_service_sid", &self.chat_service_sid)
            .field("account_sid", &self.account_sid)
            .finish_non_exhaustive()
    }
}

impl TwilioRest {
    /// Builds the client from the Twilio settings (timeouts, base URLs, credentials).
    pub fn new(settings: &TwilioSettings) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(settings.request_timeout))
            .timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(32)
            .user_agent(concat!("ingress-egress/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static HTTP client configuration is valid");
        let (username, password) = match (&settings.api_key, &settings.api_secret) {
            (Some(key), Some(secret)) => (Some(key.clone()), secret.clone()),
            _ => (settings.account_sid.clone(), settings.auth_token.clone()),
        };
        Self {
            http,
            api_base_url: settings.api_base_url.clone(),
            conversations_base_url: settings.conversations_base_url.clone(),
            chat_service_sid: settings.chat_service_sid.clone(),
            account_sid: settings.account_sid.clone(),
            username,
            password,
        }
    }

    /// `{TWILIO_API_BASE_URL}/2010-04-01/Accounts/{AccountSid}/Messages.json` (create and list).
    fn messages_url(&self) -> Result<Url, RestError> {
        let account_sid = self
            .account_sid
            .as_deref()
            .ok_or(RestError::NotConfigured("TWILIO_ACCOUNT_SID is not set"))?;
        Ok(join(
            &self.api_base_url,
            &["2010-04-01", "Accounts", account_sid, "Messages.json"],
        ))
    }

    /// Sends an SMS/MMS/WhatsApp message through Programmable Messaging.
    pub async fn create_message(&self, message: &NewMessage<'_>) -> Result<Created, RestError> {
        let url = self.messages_url()?;
        let mut form: Vec<(&str, &str)> = vec![("To", message.to)];
        match message.sender {
            MessageSender::From(from) => form.push(("From", from)),
            MessageSender::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        if let Some(body) = message.body {
            form.push(("Body", body));
        }
        for media in message.media_urls {
            form.push(("MediaUrl", media));
        }
        if let Some(callback) = message.status_callback {
            form.push(("StatusCallback", callback.as_str()));
        }
        let json = self
            .post_form(url, &form, Some(message.idempotency_token))
            .await?;
        Ok(created(&json))
    }

    /// Looks for a message Twilio already created for `message`: `ListMessage` filtered by `To`,
    /// `From` (when that is the sender) and `DateSent>` = the UTC day of `since`, then matched on
    /// `to`, the sender (`from`, or `messaging_service_sid` for a Messaging Service send), the
    /// body, the media count and `date_created` (RFC 2822, whole seconds) at or after `since`
    /// (truncated to the second). Only the first page (`PageSize=20`) is searched.
    ///
    /// Used before retrying a create whose outcome is unknown (see [`RestError::is_ambiguous`]):
    /// Twilio's idempotency token does not make a Messages create safe to repeat.
    pub async fn find_created_message(
        &self,
        message: &NewMessage<'_>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Created>, RestError> {
        let url = self.messages_url()?;
        let day = since
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut query: Vec<(&str, &str)> = vec![("To", message.to)];
        if let MessageSender::From(from) = message.sender {
            query.push(("From", from));
        }
        query.push(("DateSent>", &day));
        query.push(("PageSize", "20"));
        let json = self.get_json(url, &query).await?;
        let since = since.timestamp();
        let found = json
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|listed| is_same_message(listed, message, since));
        Ok(found.map(created).filter(|c| !c.sid.is_empty()))
    }

    /// Posts a message into a conversation (as `author`).
    pub async fn create_conversation_message(
        &self,
        message: &NewConversationMessage<'_>,
    ) -> Result<Created, RestError> {
        let url = self.conversation_url(message.conversation_sid, "Messages");
        let mut form: Vec<(&str, &str)> = Vec::new();
        if let Some(author) = message.author {
            form.push(("Author", author));
        }
        if let Some(body) = message.body {
            form.push(("Body", body));
        }
        if let Some(media_sid) = message.media_sid {
            form.push(("MediaSid", media_sid));
        }
        let json = self
            .post_form(url, &form, Some(message.idempotency_token))
            .await?;
        Ok(created(&json))
    }

    /// Adds `identity` as a chat participant of the conversation. "Already a participant"
    /// (HTTP 409 or error 50433) counts as success.
    pub async fn add_participant(
        &self,
        conversation_sid: &str,
        identity: &str,
    ) -> Result<ParticipantAdded, RestError> {
        let url = self.conversation_url(conversation_sid, "Participants");
        let token = idempotency_token(&format!("participant|{conversation_sid}|{identity}"));
        match self
            .post_form(url, &[("Identity", identity)], Some(&token))
            .await
        {
            Ok(json) => Ok(ParticipantAdded::Added {
                sid: json
                    .get("sid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }),
            Err(RestError::Http { status, code, .. })
                if status == 409 || code == Some(ERROR_ALREADY_PARTICIPANT) =>
            {
                Ok(ParticipantAdded::AlreadyParticipant)
            }
            Err(error) => Err(error),
        }
    }

    /// The URL of a conversation's sub-resource (`Messages`, `Participants`), scoped to the
    /// configured chat service when there is one.
    fn conversation_url(&self, conversation_sid: &str, resource: &str) -> Url {
        conversation_resource_url(
            &self.conversations_base_url,
            self.chat_service_sid.as_deref(),
            conversation_sid,
            resource,
        )
    }

    async fn get_json(&self, url: Url, query: &[(&str, &str)]) -> Result<Value, RestError> {
        let username = self.username.as_deref().ok_or(RestError::NotConfigured(
            "TWILIO_ACCOUNT_SID (or TWILIO_API_KEY) is not set",
        ))?;
        let request = self
            .http
            .get(url)
            .basic_auth(username, Some(self.password.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
            .query(query);
        read_response(request).await
    }

    async fn post_form(
        &self,
        url: Url,
        form: &[(&str, &str)],
        idempotency_token: Option<&str>,
    ) -> Result<Value, RestError> {
        let username = self.username.as_deref().ok_or(RestError::NotConfigured(
            "TWILIO_ACCOUNT_SID (or TWILIO_API_KEY) is not set",
        ))?;
        let mut request = self
            .http
            .post(url)
            .basic_auth(username, Some(self.password.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form);
        if let Some(token) = idempotency_token {
            request = request.header(IDEMPOTENCY_HEADER, token);
        }
        read_response(request).await
    }
}

/// Sends `request`; a 2xx answer's JSON body, else the error.
async fn read_response(request: reqwest::RequestBuilder) -> Result<Value, RestError> {
    let response = request
        .send()
        .await
        .map_err(|e| RestError::Network(describe(&e)))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let text = response
        .text()
        .await
        .map_err(|e| RestError::Network(describe(&e)))?;
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(json);
    }
    let code = json.get("code").and_then(|c| {
        c.as_u64()
            .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
            .and_then(|c| u32::try_from(c).ok())
    });
    let message = json
        .get("message")
        .and_then(Value::as_str)
        .map(|m| m.chars().take(300).collect())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    Err(RestError::Http {
        status: status.as_u16(),
        code,
        message,
        retry_after,
    })
}

/// Whether a `ListMessage` entry is the message `message` would create, created at or after
/// `since` (Unix seconds).
fn is_same_message(listed: &Value, message: &NewMessage<'_>, since: i64) -> bool {
    let text = |name: &str| listed.get(name).and_then(Value::as_str);
    let sender_matches = match message.sender {
        MessageSender::From(from) => text("from") == Some(from.as_str()),
        MessageSender::MessagingService(sid) => text("messaging_service_sid") == Some(sid.as_str()),
    };
    let media = listed.get("num_media").and_then(|n| {
        n.as_u64()
            .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
    });
    let created_at = text("date_created")
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
        .map(|d| d.timestamp());
    text("to") == Some(message.to)
        && sender_matches
        && text("body").unwrap_or_default() == message.body.unwrap_or_default()
        && media.is_none_or(|n| n == message.media_urls.len() as u64)
        && created_at.is_some_and(|at| at >= since)
}

/// A deterministic idempotency token for a logical request identified by `key`.
pub fn idempotency_token(key: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3f2a_77c1_0b8e_4d5a_a1f3_6c9e_2d40_b817);
    uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes()).to_string()
}

/// `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(seconds) = value.parse::<f64>() {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return None;
        }
        Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Appends path segments (percent-encoded) to a base URL that may carry a path prefix.
fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .expect("base URLs are http(s) URLs, which have paths");
        path.pop_if_empty();
        path.extend(segments);
    }
    url
}

/// `/v1/Conversations/{conversation_sid}/{resource}`, or with a chat service
/// `/v1/Services/{chat_service_sid}/Conversations/{conversation_sid}/{resource}`.
fn conversation_resource_url(
    base: &Url,
    chat_service_sid: Option<&str>,
    conversation_sid: &str,
    resource: &str,
) -> Url {
    match chat_service_sid {
        Some(service) => join(
            base,
            &[
                "v1",
                "Services",
                service,
                "Conversations",
                conversation_sid,
                resource,
            ],
        ),
        None => join(base, &["v1", "Conversations", conversation_sid, resource]),
    }
}

fn created(json: &Value) -> Created {
    Created {
        sid: json
            .get("sid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        status: json
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned),
        num_segments: json.get("num_segments").and_then(|n| {
            n.as_u64()
                .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
                .and_then(|n| u32::try_from(n).ok())
        }),
    }
}

/// A network error without the URL (which could carry a path-embedded secret in some setups).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        CONNECT_FAILED
    } else if error.is_body() || error.is_decode() {
        "response body unreadable"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_429_5xx_and_network() {
        let http = |status, code| RestError::Http {
            status,
            code,
            message: String::new(),
            retry_after: None,
        };
        assert!(http(429, Some(20429)).is_retryable());
        assert!(http(500, None).is_retryable());
        assert!(http(503, None).is_retryable());
        assert!(RestError::Network("reset".into()).is_retryable());
        for code in [21211, 21610, 21614, 21408, 20003] {
            assert!(!http(400, Some(code)).is_retryable(), "{code}");
        }
        assert!(!http(401, Some(20003)).is_retryable());
    }

    #[test]
    fn ambiguous_errors_are_5xx_and_network_after_connecting() {
        let http = |status| RestError::Http {
            status,
            code: None,
            message: String::new(),
            retry_after: None,
        };
        assert!(http(500).is_ambiguous());
        assert!(http(503).is_ambiguous());
        assert!(!http(429).is_ambiguous());
        assert!(!http(400).is_ambiguous());
        assert!(RestError::Network("timed out".into()).is_ambiguous());
        assert!(RestError::Network("request failed: reset".into()).is_ambiguous());
        assert!(!RestError::Network(format!("{CONNECT_FAILED}: refused")).is_ambiguous());
        assert!(!RestError::NotConfigured("x").is_ambiguous());
    }

    #[test]
    fn a_listed_message_matches_recipient_sender_body_media_and_time() {
        let since = chrono::DateTime::parse_from_rfc2822("Wed, 25 Nov 2026 10:00:00 +0000")
            .unwrap()
            .timestamp();
        let listed = serde_json::json!({
            "sid": "SM1",
            "to": "+14155550100",
            "from": "+15005550006",
            "messaging_service_sid": "MG00000000000000000000000000000001",
            "body": "hi",
            "num_media": "0",
            "date_created": "Wed, 25 Nov 2026 10:00:00 +0000",
        });
        let from = MessageSender::From("+15005550006".into());
        let service = MessageSender::MessagingService("MG00000000000000000000000000000001".into());
        let other = MessageSender::From("+15005550009".into());
        let message = |sender, body| NewMessage {
            to: "+14155550100",
            sender,
            body,
            media_urls: &[],
            status_callback: None,
            idempotency_token: "t",
        };
        assert!(is_same_message(&listed, &message(&from, Some("hi")), since));
        assert!(is_same_message(
            &listed,
            &message(&service, Some("hi")),
            since
        ));
        assert!(!is_same_message(
            &listed,
            &message(&other, Some("hi")),
            since
        ));
        assert!(!is_same_message(
            &listed,
            &message(&from, Some("ho")),
            since
        ));
        assert!(!is_same_message(
            &listed,
            &message(&from, Some("hi")),
            since + 1
        ));
        let media = ["https://example.com/a.png".to_owned()];
        let with_media = NewMessage {
            media_urls: &media,
            ..message(&from, Some("hi"))
        };
        assert!(!is_same_message(&listed, &with_media, since));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn urls_keep_a_base_path_prefix() {
        let base = Url::parse("http://127.0.0.1:9/twilio").unwrap();
        assert_eq!(
            join(&base, &["2010-04-01", "Accounts", "AC1", "Messages.json"]).as_str(),
            "http://127.0.0.1:9/twilio/2010-04-01/Accounts/AC1/Messages.json"
        );
        let base = Url::parse("https://api.twilio.com/").unwrap();
        assert_eq!(
            join(&base, &["v1", "Conversations", "CH1", "Messages"]).as_str(),
            "https://api.twilio.com/v1/Conversations/CH1/Messages"
        );
    }

    #[test]
    fn conversation_urls_are_service_scoped_only_with_a_chat_service() {
        const SERVICE: &str = "IS0123456789abcdef0123456789abcdef";
        const CONVERSATION: &str = "CH0123456789abcdef0123456789abcdef";
        let base = Url::parse("https://conversations.twilio.com").unwrap();
        assert_eq!(
            conversation_resource_url(&base, None, CONVERSATION, "Messages").as_str(),
            format!("https://conversations.twilio.com/v1/Conversations/{CONVERSATION}/Messages")
        );
        assert_eq!(
            conversation_resource_url(&base, None, CONVERSATION, "Participants").as_str(),
            format!(
                "https://conversations.twilio.com/v1/Conversations/{CONVERSATION}/Participants"
            )
        );
        assert_eq!(
            conversation_resource_url(&base, Some(SERVICE), CONVERSATION, "Messages").as_str(),
            format!(
                "https://conversations.twilio.com/v1/Services/{SERVICE}/Conversations/{CONVERSATION}/Messages"
            )
        );
        assert_eq!(
            conversation_resource_url(&base, Some(SERVICE), CONVERSATION, "Participants")
                .as_str(),
            format!(
                "https://conversations.twilio.com/v1/Services/{SERVICE}/Conversations/{CONVERSATION}/Participants"
            )
        );
        // A base path prefix is kept, and a unique name is percent-encoded as one segment.
        let base = Url::parse("http://127.0.0.1:9/twilio/").unwrap();
        assert_eq!(
            conversation_resource_url(&base, Some(SERVICE), "my room/1", "Messages").as_str(),
            format!("http://127.0.0.1:9/twilio/v1/Services/{SERVICE}/Conversations/my%20room%2F1/Messages")
        );
    }

    #[test]
    fn idempotency_tokens_are_deterministic() {
        assert_eq!(idempotency_token("a|0"), idempotency_token("a|0"));
        assert_ne!(idempotency_token("a|0"), idempotency_token("a|1"));
    }
}
