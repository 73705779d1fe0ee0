//! Replies to Conversations over the socket (`TWILIO_EGRESS_TRANSPORT=websocket`), with the
//! care the REST path takes: a message create is not idempotent, so every message carries
//! `Attributes` `{"origin":"ingress-egress","key":"<part key>"}` (the part's idempotency
//! token). When an attempt ends without a clear answer (the socket dropped or timed out after
//! the request left, or a 5xx), the next attempt of that part first looks through the
//! conversation's latest messages for that key ([`SocketEgress::resolve`]) and reports the
//! message found instead of posting it again. The `origin` also keeps the bot's replies from
//! being published as inbound messages.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::client::ClientHandle;
use super::conversations::{ConversationsError, PARTICIPANT_LIMIT_CODE};
use super::options::ClientError;
use super::upstream::UpstreamError;
use crate::{
    connectors::twilio::shared::{Twilio, OWN_ORIGIN},
    egress::sink::{Accepted, SendFailure},
};

/// How long an ambiguous attempt is remembered (the engine's retries finish far sooner).
const AMBIGUOUS_MEMORY: Duration = Duration::from_secs(3600);

pub struct SocketEgress {
    client: ClientHandle,
    twilio: Twilio,
    /// Part key → when its first ambiguous attempt started.
    ambiguous: Mutex<HashMap<String, Instant>>,
}

/// The attributes a message posted for the part `key` carries.
pub fn attributes(key: &str) -> Value {
    json!({ "origin": OWN_ORIGIN, "key": key })
}

impl SocketEgress {
    pub fn new(client: ClientHandle, twilio: Twilio) -> Self {
        Self {
            client,
            twilio,
            ambiguous: Mutex::new(HashMap::new()),
        }
    }

    fn ambiguous(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.ambiguous
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Posts one part as the bot (joining the conversation first if needed).
    pub async fn send(
        &self,
        conversation_sid: &str,
        body: Option<&str>,
        key: &str,
    ) -> Result<Accepted, SendFailure> {
        let earlier = self.ambiguous().contains_key(key);
        if earlier {
            if let Some(found) = self.resolve(conversation_sid, key).await? {
                tracing::info!(
                    provider_sid = ?found.provider_sid,
                    "an earlier ambiguous attempt had created the message; not sending it again"
                );
                self.ambiguous().remove(key);
                self.twilio.record_outbound();
                return Ok(found);
            }
            tracing::info!("no message from the earlier ambiguous attempt; sending again");
        }
        let started = Instant::now();
        let result = self
            .client
            .send_message(conversation_sid, body.unwrap_or_default(), &attributes(key))
            .await;
        match result {
            Ok(sent) => {
                self.ambiguous().remove(key);
                self.twilio.record_outbound();
                Ok(Accepted {
                    provider_sid: Some(sent.sid),
                })
            }
            Err(error) => {
                if is_ambiguous(&error) {
                    let mut ambiguous = self.ambiguous();
                    ambiguous.retain(|_, at| started.duration_since(*at) < AMBIGUOUS_MEMORY);
                    ambiguous.entry(key.to_owned()).or_insert(started);
                }
                self.twilio
                    .record_error(format!("socket send failed: {error}"));
                Err(failure(&error))
            }
        }
    }

    /// Whether a message for the part `key` exists in the conversation (an earlier attempt
    /// created it). A failed lookup is a retryable failure: resending blind could double it.
    pub async fn resolve(
        &self,
        conversation_sid: &str,
        key: &str,
    ) -> Result<Option<Accepted>, SendFailure> {
        match self.client.find_message_by_key(conversation_sid, key).await {
            Ok(found) => Ok(found.map(|message| Accepted {
                provider_sid: Some(message.sid),
            })),
            Err(error) => {
                tracing::warn!(%error, "cannot look for the earlier ambiguous attempt");
                Err(SendFailure {
                    retryable: true,
                    ..failure(&error)
                })
            }
        }
    }
}

/// Twilio's HTTP answer relayed over the socket, when there was one.
fn http_answer(error: &ClientError) -> Option<(u16, Option<i64>)> {
    match error {
        ClientError::Conversations(ConversationsError::Upstream(error))
        | ClientError::Upstream(error) => match error {
            UpstreamError::Http { status, code, .. } => Some((*status, *code)),
            _ => None,
        },
        ClientError::Conversations(ConversationsError::ParticipantLimit { .. }) => {
            Some((400, Some(PARTICIPANT_LIMIT_CODE)))
        }
        _ => None,
    }
}

/// The request may have created the message although it failed: its answer was lost, or
/// Twilio answered 5xx.
fn is_ambiguous(error: &ClientError) -> bool {
    matches!(error, ClientError::Ambiguous(_))
        || http_answer(error).is_some_and(|(status, _)| status >= 500)
}

fn failure(error: &ClientError) -> SendFailure {
    let answer = http_answer(error);
    let retryable = match (error, answer) {
        (_, Some((status, _))) => status == 429 || status >= 500,
        (ClientError::Config(_) | ClientError::Token(_), None) => false,
        // Not ready, the socket away, an unknown outcome: another attempt may do.
        _ => true,
    };
    let reason = match error {
        ClientError::Config(_) | ClientError::Token(_) => "not_configured",
        _ => "provider_rejected",
    };
    SendFailure {
        retryable,
        ambiguous: is_ambiguous(error),
        opted_out: false,
        retry_after: None,
        http_status: answer.map(|(status, _)| status),
        error_code: answer
            .and_then(|(_, code)| code)
            .and_then(|code| u32::try_from(code).ok()),
        reason,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::twilio::websocket::session::SessionError;

    fn http(status: u16, code: Option<i64>) -> ClientError {
        ClientError::Conversations(ConversationsError::Upstream(UpstreamError::Http {
            method: "POST".into(),
            path: "/Client/v2/Conversations/CH1/Messages".into(),
            status,
            code,
            message: "refused".into(),
        }))
    }

    #[test]
    fn the_attributes_name_the_origin_and_the_part() {
        assert_eq!(
            attributes("twilio:IM1:0"),
            json!({"origin": "ingress-egress", "key": "twilio:IM1:0"})
        );
    }

    #[test]
    fn lost_answers_and_server_errors_are_ambiguous_refusals_are_not() {
        let lost = ClientError::Ambiguous("connection lost before the reply".into());
        assert!(is_ambiguous(&lost) && failure(&lost).retryable);
        let server = http(503, None);
        assert!(is_ambiguous(&server) && failure(&server).retryable);
        let limited = http(429, Some(20429));
        assert!(!is_ambiguous(&limited) && failure(&limited).retryable);
        assert_eq!(failure(&limited).error_code, Some(20429));
        let forbidden = http(403, Some(50107));
        assert!(!is_ambiguous(&forbidden));
        let forbidden = failure(&forbidden);
        assert!(!forbidden.retryable);
        assert_eq!(
            (
                forbidden.http_status,
                forbidden.error_code,
                forbidden.reason
            ),
            (Some(403), Some(50107), "provider_rejected")
        );
    }

    #[test]
    fn the_participant_cap_is_permanent_and_an_absent_socket_is_not() {
        let capped = ClientError::Conversations(ConversationsError::ParticipantLimit {
            identity: "bot".into(),
            detail: "limit".into(),
        });
        let capped = failure(&capped);
        assert!(!capped.retryable);
        assert_eq!(capped.error_code, Some(50214));
        let away = ClientError::Upstream(UpstreamError::Session(SessionError::Stopped));
        assert!(failure(&away).retryable);
        assert!(!is_ambiguous(&away));
        assert!(failure(&ClientError::NotReady("configuration")).retryable);
        let unconfigured = failure(&ClientError::Config("region".into()));
        assert!(!unconfigured.retryable);
        assert_eq!(unconfigured.reason, "not_configured");
    }
}
