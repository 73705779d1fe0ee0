//! The Twilio REST client: one pooled [`reqwest::Client`] with connect and request timeouts,
//! HTTP Basic authentication (`TWILIO_API_KEY`/`TWILIO_API_SECRET` when configured, else the
//! account SID and auth token), and the transport every call shares: JSON answers, Twilio
//! errors, `Retry-After`, URL building. The calls themselves are in [`super::messages`] and
//! [`super::conversations`].

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tracing::Instrument;
use url::Url;

use super::error::{RestError, IDEMPOTENCY_HEADER};
use crate::connectors::twilio::config::TwilioSettings;

/// How long establishing a TCP/TLS connection to Twilio may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `Retry-After` we accept; longer values are clamped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

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

/// The Twilio REST client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    pub(super) api_base_url: Url,
    pub(super) conversations_base_url: Url,
    pub(super) mcs_base_url: Url,
    /// `IS…`: scopes Conversations calls to this Conversation Service.
    pub(super) chat_service_sid: Option<String>,
    pub(super) account_sid: Option<String>,
    /// `Basic …` of the REST credentials, encoded once; marked sensitive, so it is never printed
    /// (`None` without an account SID or API key).
    authorization: Option<HeaderValue>,
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
            // Every connection a send used stays open for the next one: as many idle ones as
            // there were sends in flight (at most AMQP_PREFETCH). A cap below that closes the
            // surplus after each burst and opens new ones (a TLS handshake each) for the next.
            // Over HTTP/2, when Twilio offers it, the sends share one connection.
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(usize::MAX)
            // Twilio's API does not redirect. A redirect means a wrong base URL (http:// for
            // https://, a proxy's login page), and following it would re-send a create (307/308)
            // or turn it into a GET whose list answer looks like a success (301/302): the answer
            // is reported as it came instead.
            .redirect(reqwest::redirect::Policy::none())
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
            mcs_base_url: settings.mcs_base_url.clone(),
            chat_service_sid: settings.chat_service_sid.clone(),
            account_sid: settings.account_sid.clone(),
            authorization: username.map(|username| basic_authorization(&username, &password)),
        }
    }

    fn authorization(&self) -> Result<&HeaderValue, RestError> {
        self.authorization.as_ref().ok_or(RestError::NotConfigured(
            "TWILIO_ACCOUNT_SID (or TWILIO_API_KEY) is not set",
        ))
    }

    pub(super) async fn get_json(
        &self,
        url: Url,
        query: &[(&str, &str)],
    ) -> Result<Value, RestError> {
        let authorization = self.authorization()?;
        let span = request_span("GET", &url);
        let request = self
            .http
            .get(url)
            .header(AUTHORIZATION, authorization)
            .header(reqwest::header::ACCEPT, "application/json")
            .query(query);
        read_response(request).instrument(span).await
    }

    pub(super) async fn post_form(
        &self,
        url: Url,
        form: &[(&str, &str)],
        idempotency_token: Option<&str>,
    ) -> Result<Value, RestError> {
        let authorization = self.authorization()?;
        let span = request_span("POST", &url);
        let mut request = self
            .http
            .post(url)
            .header(AUTHORIZATION, authorization)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form);
        if let Some(token) = idempotency_token {
            request = request.header(IDEMPOTENCY_HEADER, token);
        }
        read_response(request).instrument(span).await
    }
}

/// The `Authorization` value of HTTP Basic authentication, marked sensitive.
fn basic_authorization(username: &str, password: &SecretString) -> HeaderValue {
    use base64::Engine as _;
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{username}:{}", password.expose_secret()));
    let mut value = HeaderValue::try_from(format!("Basic {credentials}"))
        .expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// The client span of one REST request. The path names only SIDs; the query (which can hold
/// phone numbers) is left out.
fn request_span(method: &'static str, url: &Url) -> tracing::Span {
    tracing::info_span!(
        "twilio.rest",
        otel.kind = "client",
        otel.name = %format!("{method} {}", url.path()),
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        server.address = url.host_str().unwrap_or_default(),
        url.path = url.path(),
        http.response.status_code = tracing::field::Empty,
    )
}

/// Sends `request`; a 2xx answer's JSON body, else the error.
async fn read_response(request: reqwest::RequestBuilder) -> Result<Value, RestError> {
    let result = send(request).await;
    if result.is_err() {
        tracing::Span::current().record("otel.status_code", "ERROR");
    }
    result
}

async fn send(request: reqwest::RequestBuilder) -> Result<Value, RestError> {
    let response = request.send().await.map_err(|e| network_error(&e))?;
    let status = response.status();
    tracing::Span::current().record("http.response.status_code", status.as_u16());
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    if status.is_redirection() {
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|location| response.url().join(location).ok());
        return Err(RestError::Http {
            status: status.as_u16(),
            code: None,
            message: redirect_message(to.as_ref()),
            retry_after: None,
        });
    }
    let text = response.text().await.map_err(|e| network_error(&e))?;
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

/// What a redirect answer says: where it pointed (scheme, host, port and path; not the query,
/// which can hold phone numbers, nor credentials) and what to check.
fn redirect_message(to: Option<&Url>) -> String {
    let target = to.map_or("an unreadable location".to_owned(), |url| {
        let port = url
            .port()
            .map(|port| format!(":{port}"))
            .unwrap_or_default();
        format!(
            "{}://{}{port}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.path()
        )
    });
    format!("redirected to {target}, not followed; check the configured Twilio base URL")
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
pub(super) fn join(base: &Url, segments: &[&str]) -> Url {
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

/// The resource a create answered with. An answer without a SID (a proxy's page answered 200,
/// a body cut short) does not say whether the message exists: it is an answer we could not
/// read, resolved like a timeout before anything is sent again, never recorded as sent.
pub(super) fn created(json: &Value) -> Result<Created, RestError> {
    let sid = json
        .get("sid")
        .and_then(Value::as_str)
        .filter(|sid| !sid.is_empty())
        .ok_or_else(|| RestError::NoAnswer("the 2xx answer carried no resource SID".to_owned()))?;
    Ok(Created {
        sid: sid.to_owned(),
        status: json
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned),
        num_segments: json.get("num_segments").and_then(|n| {
            n.as_u64()
                .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
                .and_then(|n| u32::try_from(n).ok())
        }),
    })
}

/// A network error without the URL (which could carry a path-embedded secret in some setups).
fn network_error(error: &reqwest::Error) -> RestError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
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
    let detail = if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    };
    // A timeout can strike after the request was sent, even while connecting was slow.
    if error.is_connect() && !error.is_timeout() {
        RestError::ConnectFailed(detail)
    } else {
        RestError::NoAnswer(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_authorization_is_rfc_7617_and_sensitive() {
        // RFC 7617's own example.
        let value = basic_authorization("Aladdin", &SecretString::from("open sesame"));
        assert_eq!(value, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(value.is_sensitive());
        assert_eq!(format!("{value:?}"), "Sensitive");
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
    fn idempotency_tokens_are_deterministic() {
        assert_eq!(idempotency_token("a|0"), idempotency_token("a|0"));
        assert_ne!(idempotency_token("a|0"), idempotency_token("a|1"));
    }
}
