//! HTTP-like requests carried over the socket ("upstream" messages) to the aim
//! (Conversations) and cds (Sync) hosts, with the headers the SDK sends and retries.
//!
//! Retries: 429 is always retried (the server refused the request, so even a mutation is safe
//! to repeat), honouring `Retry-After`; 502/503/504 and transport failures only for requests
//! that are safe to repeat. A mutation whose reply was lost comes back as
//! [`UpstreamError::Ambiguous`] so the caller can look up whether it happened.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::frame::HttpRequest;
use super::session::{SessionError, SessionHandle};
use crate::backoff::Backoff;
use crate::connectors::twilio::rest::parse_retry_after;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("invalid upstream URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{method} {path} failed with HTTP {status}: {message}")]
    Http {
        method: String,
        path: String,
        status: u16,
        /// Twilio's error code from the body (`code`), when present.
        code: Option<i64>,
        message: String,
    },
    #[error("the outcome of {method} {path} is unknown: {source}")]
    Ambiguous {
        method: String,
        path: String,
        source: SessionError,
    },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("unexpected body from {path}: {reason}")]
    Decode { path: String, reason: String },
    #[error("shutting down")]
    Cancelled,
}

impl UpstreamError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Http { code, .. } => *code,
            _ => None,
        }
    }
}

/// Whether a request may be repeated when its outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    Safe,
    /// Only a 429 (refused before doing anything) is retried.
    OnlyIfRefused,
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    pub url: Url,
    pub params: Vec<(String, String)>,
    pub headers: Map<String, Value>,
    pub body: Option<(String, Vec<u8>)>,
    pub repeat: Repeat,
}

impl Request {
    pub fn get(url: Url) -> Self {
        Self::with(
            "GET",
            url,
            Map::new(),
            None,
            "application/json",
            Repeat::Safe,
        )
    }

    /// A JSON mutation to aim, with a mutation id the server can use to spot repeats.
    pub fn mutation(method: &'static str, url: Url, body: Option<&Value>) -> Self {
        let mut headers = Map::new();
        headers.insert(
            "X-Twilio-Mutation-Id".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        Self::with(
            method,
            url,
            headers,
            body,
            "application/json; charset=utf-8",
            Repeat::OnlyIfRefused,
        )
    }

    /// A Sync (cds) request, with the headers the Sync client sends.
    pub fn sync(method: &'static str, url: Url, body: Option<&Value>) -> Self {
        let mut headers = Map::new();
        headers.insert(
            "Twilio-Sync-Client-Info".into(),
            Value::String(format!(
                r#"{{"sdk":"rust","sdkVer":"{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )),
        );
        headers.insert(
            "Twilio-Request-Id".into(),
            Value::String(format!("RQ{}", uuid::Uuid::new_v4().simple())),
        );
        Self::with(method, url, headers, body, "application/json", Repeat::Safe)
    }

    /// A request whose JSON `body`, when there is one, is sent as `content_type`.
    fn with(
        method: &'static str,
        url: Url,
        mut headers: Map<String, Value>,
        body: Option<&Value>,
        content_type: &str,
        repeat: Repeat,
    ) -> Self {
        let body = body.map(|body| {
            headers.insert("Content-Type".into(), Value::String(content_type.into()));
            (content_type.to_owned(), body.to_string().into_bytes())
        });
        Self {
            method,
            url,
            params: Vec::new(),
            headers,
            body,
            repeat,
        }
    }

    pub fn param(mut self, key: &str, value: impl ToString) -> Self {
        self.params.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn repeat(mut self, repeat: Repeat) -> Self {
        self.repeat = repeat;
        self
    }

    fn http_request(&self) -> Result<HttpRequest, UpstreamError> {
        let host = self.url.host_str().ok_or_else(|| UpstreamError::BadUrl {
            url: self.url.to_string(),
            reason: "no host".into(),
        })?;
        let host = match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        // Query pairs are passed on as written (the SDK does not URL-decode them either).
        let mut params = Map::new();
        if let Some(query) = self.url.query() {
            for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                params.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        for (key, value) in &self.params {
            params.insert(key.clone(), Value::String(value.clone()));
        }
        Ok(HttpRequest {
            host,
            path: self.url.path().to_owned(),
            method: self.method.to_owned(),
            params,
            headers: self.headers.clone(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Map<String, Value>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn header(&self, name: &str) -> Option<&Value> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// `Retry-After`, read as the REST client reads it (relayed headers may carry it as a
    /// number or a string).
    fn retry_after(&self) -> Option<Duration> {
        match self.header("Retry-After")? {
            Value::Number(number) => parse_retry_after(&number.to_string()),
            Value::String(text) => parse_retry_after(text),
            _ => None,
        }
    }

    pub fn json_value(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends requests through a session.
#[derive(Clone)]
pub struct Upstream {
    session: SessionHandle,
    timeout: Duration,
    retry: RetryPolicy,
    cancel: CancellationToken,
}

impl Upstream {
    pub fn new(
        session: SessionHandle,
        timeout: Duration,
        retry: RetryPolicy,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            session,
            timeout,
            retry,
            cancel,
        }
    }

    pub fn session(&self) -> &SessionHandle {
        &self.session
    }

    /// Sends with retries and returns the final `(status, body)`, whatever the status.
    pub async fn send(&self, request: &Request) -> Result<Response, UpstreamError> {
        let http_request = request.http_request()?;
        let (payload_type, payload) = match &request.body {
            Some((kind, bytes)) => (Some(kind.as_str()), bytes.clone()),
            None => (None, Vec::new()),
        };
        let mut backoff = Backoff::new(self.retry.base, self.retry.max);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.attempts.max(1);
            let result = self
                .session
                .request(
                    http_request.clone(),
                    payload_type,
                    payload.clone(),
                    self.timeout,
                )
                .await;
            let floor = match result {
                Ok(reply) => {
                    let response = Response {
                        status: reply.http_status.code,
                        headers: reply.headers,
                        body: reply.body,
                    };
                    let retryable = response.status == 429
                        || (request.repeat == Repeat::Safe && matches!(response.status, 502..=504));
                    if !retryable || last {
                        return Ok(response);
                    }
                    tracing::debug!(
                        status = response.status,
                        path = %http_request.path,
                        attempt,
                        "upstream request will be retried"
                    );
                    response.retry_after()
                }
                Err(error @ (SessionError::Stopped | SessionError::Denied(_))) => {
                    return Err(error.into())
                }
                Err(error) => {
                    let ambiguous = matches!(
                        error,
                        SessionError::ConnectionLost | SessionError::Timeout(_)
                    );
                    if request.repeat == Repeat::OnlyIfRefused && ambiguous {
                        return Err(UpstreamError::Ambiguous {
                            method: request.method.to_owned(),
                            path: http_request.path.clone(),
                            source: error,
                        });
                    }
                    if last || request.repeat == Repeat::OnlyIfRefused {
                        return Err(error.into());
                    }
                    None
                }
            };
            let delay = backoff.next_delay_at_least(floor);
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(UpstreamError::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Sends and requires a 2xx; non-2xx becomes [`UpstreamError::Http`].
    pub async fn send_ok(&self, request: &Request) -> Result<Response, UpstreamError> {
        let response = self.send(request).await?;
        if response.is_success() {
            return Ok(response);
        }
        Err(http_error(request, &response))
    }

    /// Sends, requires a 2xx and decodes the JSON body.
    pub async fn json<T: DeserializeOwned>(&self, request: &Request) -> Result<T, UpstreamError> {
        let response = self.send_ok(request).await?;
        serde_json::from_slice(&response.body).map_err(|e| UpstreamError::Decode {
            path: request.url.path().to_owned(),
            reason: e.to_string(),
        })
    }
}

pub fn http_error(request: &Request, response: &Response) -> UpstreamError {
    let body = response.json_value();
    let code = body
        .as_ref()
        .and_then(|b| b.get("code"))
        .and_then(Value::as_i64);
    let message = body
        .as_ref()
        .and_then(|b| b.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(200)
                .collect()
        });
    UpstreamError::Http {
        method: request.method.to_owned(),
        path: request.url.path().to_owned(),
        status: response.status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn url_becomes_host_path_and_raw_params() {
        let url =
            Url::parse("https://cds.us1.twilio.com/v3/Lists/ES1/Items?HideExpired=true&From=16")
                .unwrap();
        let request = Request::sync("GET", url, None)
            .param("PageSize", 11)
            .param("Order", "desc");
        let http = request.http_request().unwrap();
        assert_eq!(http.host, "cds.us1.twilio.com");
        assert_eq!(http.path, "/v3/Lists/ES1/Items");
        assert_eq!(
            Value::Object(http.params),
            json!({"HideExpired": "true", "From": "16", "PageSize": "11", "Order": "desc"})
        );
        assert!(http.headers.contains_key("Twilio-Request-Id"));
        assert!(http.headers.contains_key("Twilio-Sync-Client-Info"));
    }

    #[test]
    fn mutation_carries_json_and_a_mutation_id() {
        let url =
            Url::parse("https://aim.us1.twilio.com/v1/Conversations/CH1/Participants").unwrap();
        let request = Request::mutation("POST", url, Some(&json!({"identity": "bot"})));
        let http = request.http_request().unwrap();
        assert_eq!(http.method, "POST");
        assert!(http.headers["X-Twilio-Mutation-Id"].as_str().unwrap().len() >= 32);
        assert_eq!(
            http.headers["Content-Type"],
            "application/json; charset=utf-8"
        );
        let (kind, body) = request.body.unwrap();
        assert!(kind.starts_with("application/json"));
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"identity": "bot"})
        );
        assert_eq!(request.repeat, Repeat::OnlyIfRefused);
    }

    #[test]
    fn retry_after_is_read_case_insensitively_and_capped() {
        let mut response = Response {
            status: 429,
            headers: Map::new(),
            body: Vec::new(),
        };
        assert_eq!(response.retry_after(), None);
        response.headers.insert("retry-after".into(), json!("2"));
        assert_eq!(response.retry_after(), Some(Duration::from_secs(2)));
        response.headers.insert("retry-after".into(), json!(0.5));
        assert_eq!(response.retry_after(), Some(Duration::from_millis(500)));
        response.headers.insert("retry-after".into(), json!("9999"));
        assert!(response.retry_after().unwrap() < Duration::from_secs(9999));
        response.headers.insert("retry-after".into(), json!("soon"));
        assert_eq!(response.retry_after(), None);
    }

    #[test]
    fn http_errors_carry_twilio_codes() {
        let url = Url::parse("https://aim.us1.twilio.com/x").unwrap();
        let request = Request::get(url);
        let response = Response {
            status: 400,
            headers: Map::new(),
            body: br#"{"status":400,"code":50214,"message":"User conversation limit exceeded"}"#
                .to_vec(),
        };
        let error = http_error(&request, &response);
        assert_eq!((error.status(), error.code()), (Some(400), Some(50214)));
        assert!(error.to_string().contains("limit exceeded"));
        let response = Response {
            status: 500,
            headers: Map::new(),
            body: b"oops".to_vec(),
        };
        assert!(http_error(&request, &response).to_string().contains("oops"));
    }
}
