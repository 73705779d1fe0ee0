//! Replies to Conversations over the socket (`TWILIO_EGRESS_TRANSPORT=websocket`), with the
//! care the REST path takes: the sink gives each message the `Attributes`
//! `{"origin":"ingress-egress","key":"<part key>"}`, a failure says whether the message may
//! have been created anyway (the socket dropped or timed out after the request left, or a
//! 5xx), and before the engine sends such a part again the sink asks [`SocketEgress::resolve`]
//! to look for the key among the conversation's latest messages.

use super::client::ClientHandle;
use super::conversations::{ConversationsError, PARTICIPANT_LIMIT_CODE};
use super::options::ClientError;
use super::upstream::UpstreamError;
use crate::{
    connectors::twilio::shared::Twilio,
    egress::sink::{Accepted, Resolution, SendFailure},
};

pub struct SocketEgress {
    client: ClientHandle,
    twilio: Twilio,
}

impl SocketEgress {
    pub fn new(client: ClientHandle, twilio: Twilio) -> Self {
        Self { client, twilio }
    }

    /// Posts one part as the bot (joining the conversation first if needed); `attributes` is
    /// the JSON text the sink gives every conversation message.
    pub async fn send(
        &self,
        conversation_sid: &str,
        body: Option<&str>,
        attributes: &str,
    ) -> Result<Accepted, SendFailure> {
        let result = self
            .client
            .send_message(conversation_sid, body.unwrap_or_default(), attributes)
            .await;
        match result {
            Ok(sent) => {
                self.twilio.record_outbound();
                Ok(Accepted {
                    provider_sid: Some(sent.sid),
                })
            }
            Err(error) => {
                self.twilio
                    .record_error(format!("socket send failed: {error}"));
                Err(failure(&error))
            }
        }
    }

    /// Whether a message carrying the part `key` is in the conversation (an earlier attempt
    /// created it). A failed lookup is a retryable failure: resending blind could double it.
    pub async fn resolve(
        &self,
        conversation_sid: &str,
        key: &str,
    ) -> Result<Resolution, SendFailure> {
        match self.client.find_message_by_key(conversation_sid, key).await {
            Ok(Some(message)) => Ok(Resolution::Found {
                provider_sid: message.sid,
                how: "attributes",
            }),
            Ok(None) => Ok(Resolution::NotFound),
            Err(error) => {
                tracing::warn!(%error, "cannot look for the earlier ambiguous attempt");
                Err(SendFailure {
                    retryable: true,
                    ambiguous: false,
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
    fn lost_answers_and_server_errors_are_ambiguous_refusals_are_not() {
        let lost = failure(&ClientError::Ambiguous(
            "connection lost before the reply".into(),
        ));
        assert!(lost.ambiguous && lost.retryable);
        let server = failure(&http(503, None));
        assert!(server.ambiguous && server.retryable);
        let limited = failure(&http(429, Some(20429)));
        assert!(!limited.ambiguous && limited.retryable);
        assert_eq!(limited.error_code, Some(20429));
        let forbidden = failure(&http(403, Some(50107)));
        assert!(!forbidden.ambiguous && !forbidden.retryable);
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
        let capped = failure(&ClientError::Conversations(
            ConversationsError::ParticipantLimit {
                identity: "bot".into(),
                detail: "limit".into(),
            },
        ));
        assert!(!capped.retryable && !capped.ambiguous);
        assert_eq!(capped.error_code, Some(50214));
        let away = failure(&ClientError::Upstream(UpstreamError::Session(
            SessionError::Stopped,
        )));
        assert!(away.retryable && !away.ambiguous);
        assert!(failure(&ClientError::NotReady("configuration")).retryable);
        let unconfigured = failure(&ClientError::Config("region".into()));
        assert!(!unconfigured.retryable);
        assert_eq!(unconfigured.reason, "not_configured");
    }
}
