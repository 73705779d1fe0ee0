//! How a Twilio REST call fails, with what the retry policy needs: retryable or not, whether
//! the request may have created something anyway ([`RestError::is_ambiguous`]), `Retry-After`,
//! and Twilio's error code. Texts never include credentials or message bodies.

use std::time::Duration;

/// The header Twilio uses to deduplicate retried requests.
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
/// Twilio's "too many requests" error code (sent with HTTP 429).
pub const ERROR_TOO_MANY_REQUESTS: u32 = 20429;
/// The recipient replied STOP: Twilio refuses to message them.
pub const ERROR_OPTED_OUT: u32 = 21610;
/// The sender has too many messages queued at Twilio: slow down, it is not a refusal.
pub const ERROR_QUEUE_FULL: u32 = 21611;
/// The sender exceeded its message rate: slow down.
pub const ERROR_RATE_EXCEEDED: u32 = 14107;
/// Conversations: the identity is already a participant of the conversation.
pub const ERROR_ALREADY_PARTICIPANT: u32 = 50433;

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
    /// The connection could not be made (refused, DNS, TLS): the request never left.
    #[error("Twilio unreachable: {0}")]
    ConnectFailed(String),
    /// The request may have reached Twilio, but no answer could be read (timeout, reset,
    /// unreadable body).
    #[error("Twilio did not answer: {0}")]
    NoAnswer(String),
    /// We cannot even build the request (for example no account SID configured).
    #[error("Twilio REST not configured: {0}")]
    NotConfigured(&'static str),
}

impl RestError {
    /// 429, 5xx and network failures are worth retrying; other 4xx are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            RestError::Http { status, code, .. } => {
                *status == 429
                    || *status >= 500
                    || code.is_some_and(|code| {
                        [
                            ERROR_TOO_MANY_REQUESTS,
                            ERROR_QUEUE_FULL,
                            ERROR_RATE_EXCEEDED,
                        ]
                        .contains(&code)
                    })
            }
            RestError::ConnectFailed(_) | RestError::NoAnswer(_) => true,
            RestError::NotConfigured(_) => false,
        }
    }

    /// The request may have reached Twilio and created something although we saw a failure:
    /// a 5xx answer, or a network failure other than failing to connect (a timeout, a reset,
    /// an unreadable answer). 429 and other 4xx are Twilio's refusal: nothing was created.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            RestError::Http { status, .. } => *status >= 500,
            RestError::NoAnswer(_) => true,
            RestError::ConnectFailed(_) => false,
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
            RestError::ConnectFailed(detail) | RestError::NoAnswer(detail) => {
                format!("network: {detail}")
            }
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
        assert!(RestError::NoAnswer("reset".into()).is_retryable());
        assert!(RestError::ConnectFailed("refused".into()).is_retryable());
        assert!(
            http(400, Some(21611)).is_retryable(),
            "queue full is back-pressure"
        );
        assert!(http(429, Some(14107)).is_retryable());
        assert!(
            !http(400, Some(21611)).is_ambiguous(),
            "and nothing was created"
        );
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
        assert!(RestError::NoAnswer("timed out".into()).is_ambiguous());
        assert!(RestError::NoAnswer("request failed: reset".into()).is_ambiguous());
        assert!(!RestError::ConnectFailed("refused".into()).is_ambiguous());
        assert!(!RestError::NotConfigured("x").is_ambiguous());
    }
}
