//! Twilio's egress sink: turns one planned part into a Twilio REST call.
//!
//! `CH…` targets post to the Conversations API as `TWILIO_IDENTITY`; `+E.164` and
//! `whatsapp:+E.164` targets go through Programmable Messaging with `From` =
//! `egress.metadata.twilio.from`, else `TWILIO_PHONE_NUMBER`, else a Messaging Service
//! (`egress.metadata.twilio.messagingServiceSid`, else `TWILIO_MESSAGING_SERVICE_SID`), and a
//! `StatusCallback` (`TWILIO_STATUS_CALLBACK_URL` + `correlationId=`). Twilio errors map onto
//! the engine's retry policy: 429/5xx/network retry, other 4xx are permanent, 21610 is an
//! opt-out.
//!
//! A Messages create is not idempotent at Twilio even with `I-Twilio-Idempotency-Token`: after
//! a 5xx or a timeout the message may already exist. The sink remembers, per idempotency token,
//! when the first such ambiguous attempt started; before the next attempt of that part it lists
//! the recipient's messages since then ([`TwilioRest::find_created_message`]) and, when the
//! message is there, reports it as accepted instead of sending it again. A failed lookup falls
//! back to resending. The memory is per process: a redelivery to another instance resends.

#[cfg(feature = "websocket")]
use std::sync::Arc;
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use url::Url;

use futures_util::future::BoxFuture;

use super::split;
#[cfg(feature = "websocket")]
use crate::connectors::twilio::websocket::egress::SocketEgress;
use crate::{
    connectors::twilio::{
        address::Address,
        rest::{
            Created, MessageSender, NewConversationMessage, NewMessage, RestError, TwilioRest,
            ERROR_OPTED_OUT,
        },
        shared::{Twilio, CONNECTOR},
    },
    egress::sink::{
        Accepted, EgressSink, InvalidTarget, Outbound, SendFailure, SinkPolicy, TextInfo,
    },
};

/// Twilio's body limit for Messaging (and what SMS participants of a conversation receive).
pub const MAX_BODY_CHARS: usize = 1600;
/// Twilio accepts up to 10 `MediaUrl` per message.
const MAX_MEDIA_URLS: usize = 10;

/// How long an ambiguous attempt is remembered (the engine's retries finish far sooner).
const AMBIGUOUS_MEMORY: chrono::TimeDelta = chrono::TimeDelta::hours(1);

pub struct TwilioSink {
    twilio: Twilio,
    rest: TwilioRest,
    /// Idempotency token → start of the first Messages attempt of that part whose outcome is
    /// unknown (5xx, timeout, network failure after connecting).
    ambiguous: Mutex<HashMap<String, DateTime<Utc>>>,
    /// `TWILIO_EGRESS_TRANSPORT=websocket`: conversation replies go over the socket.
    #[cfg(feature = "websocket")]
    socket: Option<Arc<SocketEgress>>,
}

impl TwilioSink {
    pub fn new(twilio: Twilio) -> Self {
        let rest = twilio.rest().clone();
        Self {
            twilio,
            rest,
            ambiguous: Mutex::new(HashMap::new()),
            #[cfg(feature = "websocket")]
            socket: None,
        }
    }

    /// Posts conversation replies over the socket instead of REST (media by SID still go
    /// through REST: the socket cannot attach them).
    #[cfg(feature = "websocket")]
    pub fn with_socket(mut self, socket: Option<Arc<SocketEgress>>) -> Self {
        self.socket = socket;
        self
    }

    fn ambiguous(&self) -> std::sync::MutexGuard<'_, HashMap<String, DateTime<Utc>>> {
        self.ambiguous
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends through Programmable Messaging; when an earlier attempt of this part ended
    /// ambiguously, first looks for the message that attempt may have created.
    async fn send_message(&self, message: &NewMessage<'_>) -> Result<Created, RestError> {
        let token = message.idempotency_token;
        let earlier = self.ambiguous().get(token).copied();
        if let Some(since) = earlier {
            match self.rest.find_created_message(message, since).await {
                Ok(Some(found)) => {
                    self.ambiguous().remove(token);
                    tracing::info!(
                        provider_sid = %found.sid,
                        "an earlier ambiguous attempt had created the message; not sending it again"
                    );
                    return Ok(found);
                }
                Ok(None) => {
                    tracing::info!("no message from the earlier ambiguous attempt; sending again");
                }
                Err(error) => {
                    tracing::warn!(
                        error = %error.summary(),
                        "looking up the earlier ambiguous attempt failed; sending again"
                    );
                }
            }
        }
        let started = Utc::now();
        let result = self.rest.create_message(message).await;
        let mut ambiguous = self.ambiguous();
        match &result {
            Err(error) if error.is_ambiguous() => {
                ambiguous.retain(|_, at| started - *at < AMBIGUOUS_MEMORY);
                ambiguous.entry(token.to_owned()).or_insert(started);
            }
            // Rejected but retryable (429): an earlier ambiguous attempt still needs a lookup.
            Err(error) if error.is_retryable() => {}
            _ => {
                ambiguous.remove(token);
            }
        }
        result
    }

    /// Who a Messaging API send to `target` comes from.
    pub fn sender(
        &self,
        target: &Address,
        egress_metadata: &Map<String, Value>,
    ) -> Option<MessageSender> {
        let settings = self.twilio.settings();
        let twilio = egress_metadata.get("twilio");
        let meta = |name: &str| {
            twilio
                .and_then(|t| t.get(name))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let from = meta("from")
            .or_else(|| settings.phone_number.clone())
            .map(|from| target.sender_on_same_channel(&from));
        from.map(MessageSender::From).or_else(|| {
            meta("messagingServiceSid")
                .or_else(|| settings.messaging_service_sid.clone())
                .map(MessageSender::MessagingService)
        })
    }

    fn status_callback(&self, part: &Outbound<'_>) -> Option<Url> {
        let mut url = self.twilio.settings().status_callback_url.clone()?;
        url.query_pairs_mut()
            .append_pair("correlationId", &part.correlation_id.to_string());
        if part.part_count > 1 {
            url.query_pairs_mut()
                .append_pair("part", &part.part_index.to_string());
        }
        Some(url)
    }

    async fn send_part(&self, part: Outbound<'_>) -> Result<Accepted, SendFailure> {
        let target = Address::parse(part.target).map_err(|error| SendFailure {
            retryable: false,
            opted_out: false,
            retry_after: None,
            http_status: None,
            error_code: None,
            reason: "invalid_target",
            message: error.to_string(),
        })?;
        let result = if let Address::Conversation(conversation_sid) = &target {
            let settings = self.twilio.settings();
            let media_sid = part
                .media
                .iter()
                .filter_map(|m| m.sid.as_deref())
                .find(|sid| sid.starts_with("ME"));
            // Conversations attach media by SID only; URL-only media travel as links.
            let links: Vec<&str> = part
                .media
                .iter()
                .filter(|m| m.sid.as_deref() != media_sid || media_sid.is_none())
                .filter_map(|m| m.url.as_deref())
                .collect();
            let body = match (part.text, links.is_empty()) {
                (text, true) => text.map(str::to_owned),
                (Some(text), false) => Some(format!("{text}\n{}", links.join("\n"))),
                (None, false) => Some(links.join("\n")),
            };
            #[cfg(feature = "websocket")]
            if let (Some(socket), None) = (&self.socket, media_sid) {
                return socket
                    .send(conversation_sid, body.as_deref(), part.idempotency_token)
                    .await;
            }
            self.rest
                .create_conversation_message(&NewConversationMessage {
                    conversation_sid,
                    author: settings.identity.as_deref(),
                    body: body.as_deref(),
                    media_sid,
                    idempotency_token: part.idempotency_token,
                })
                .await
        } else {
            let Some(sender) = self.sender(&target, part.egress_metadata) else {
                return Err(SendFailure {
                    retryable: false,
                    opted_out: false,
                    retry_after: None,
                    http_status: None,
                    error_code: None,
                    reason: "no_sender",
                    message: "no sender: set egress.metadata.twilio.from, TWILIO_PHONE_NUMBER or TWILIO_MESSAGING_SERVICE_SID".to_owned(),
                });
            };
            let media_urls: Vec<String> = part.media.iter().filter_map(|m| m.url.clone()).collect();
            let callback = self.status_callback(&part);
            self.send_message(&NewMessage {
                to: part.target,
                sender: &sender,
                body: part.text,
                media_urls: &media_urls,
                status_callback: callback.as_ref(),
                idempotency_token: part.idempotency_token,
            })
            .await
        };
        match result {
            Ok(created) => {
                self.twilio.record_outbound();
                Ok(Accepted {
                    provider_sid: Some(created.sid).filter(|s| !s.is_empty()),
                })
            }
            Err(error) => {
                self.twilio
                    .record_error(format!("REST send failed: {error}"));
                Err(failure(error))
            }
        }
    }
}

fn failure(error: RestError) -> SendFailure {
    let reason = match &error {
        RestError::NotConfigured(_) => "not_configured",
        _ => "provider_rejected",
    };
    SendFailure {
        retryable: error.is_retryable(),
        opted_out: error.error_code() == Some(ERROR_OPTED_OUT),
        retry_after: error.retry_after(),
        http_status: error.http_status(),
        error_code: error.error_code(),
        reason,
        message: error.to_string(),
    }
}

impl EgressSink for TwilioSink {
    fn connector(&self) -> &'static str {
        CONNECTOR
    }

    fn policy(&self) -> SinkPolicy {
        let settings = self.twilio.settings();
        SinkPolicy {
            max_attempts: settings.max_send_attempts,
            max_send_rate: settings.max_send_rate,
            ..SinkPolicy::default()
        }
    }

    fn check_target(&self, target: &str) -> Result<(), InvalidTarget> {
        Address::parse(target)
            .map(|_| ())
            .map_err(|error| InvalidTarget(error.to_string()))
    }

    fn split_text(&self, _target: &str, text: &str) -> Vec<String> {
        split::split(text, MAX_BODY_CHARS)
    }

    fn describe_text(&self, text: &str) -> TextInfo {
        split::analyze(text)
    }

    fn max_media_per_part(&self, target: &str) -> usize {
        match Address::parse(target) {
            Ok(Address::Conversation(_)) => 1,
            _ => MAX_MEDIA_URLS,
        }
    }

    fn sender_key(&self, target: &str, egress_metadata: &Map<String, Value>) -> String {
        match Address::parse(target) {
            Ok(Address::Conversation(_)) => {
                let identity = self.twilio.settings().identity.as_deref().unwrap_or("-");
                format!("conversations:{identity}")
            }
            Ok(address) => match self.sender(&address, egress_metadata) {
                Some(MessageSender::From(from)) => format!("from:{from}"),
                Some(MessageSender::MessagingService(sid)) => format!("service:{sid}"),
                None => "none".to_owned(),
            },
            Err(_) => "none".to_owned(),
        }
    }

    fn send<'a>(&'a self, part: Outbound<'a>) -> BoxFuture<'a, Result<Accepted, SendFailure>> {
        Box::pin(self.send_part(part))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{
        bus::{memory::MemoryBus, Bus},
        configuration::{AppEnv, Environment},
        connectors::twilio::config::TwilioSettings,
        metrics::Metrics,
        outbox::Outbox,
        publisher::EventPublisher,
    };

    fn make_sink(vars: &[(&str, &str)]) -> (TwilioSink, tempfile::TempDir) {
        let environment = Environment::from_pairs(
            vars.iter()
                .copied()
                .chain([("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000001")]),
        );
        let settings = TwilioSettings::from_environment(&environment, AppEnv::Development).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let publisher = EventPublisher::new(
            Bus::Memory(MemoryBus::new(String::new())),
            Outbox::open(dir.path()).unwrap(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Metrics::new(),
        );
        let twilio = Twilio::new(settings, publisher, Metrics::new());
        (TwilioSink::new(twilio), dir)
    }

    fn metadata(value: serde_json::Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn address(text: &str) -> Address {
        Address::parse(text).unwrap()
    }

    #[test]
    fn targets() {
        let (sink, _dir) = make_sink(&[]);
        assert!(sink.check_target("+14155550100").is_ok());
        assert!(sink.check_target("whatsapp:+14155550100").is_ok());
        assert!(sink
            .check_target("CH0123456789abcdef0123456789abcdef")
            .is_ok());
        for bad in ["", "14155550100", "CH123", "whatsapp:foo", "sms:+1415555"] {
            assert!(sink.check_target(bad).is_err(), "{bad}");
        }
        assert_eq!(sink.max_media_per_part("+14155550100"), 10);
        assert_eq!(
            sink.max_media_per_part("CH0123456789abcdef0123456789abcdef"),
            1
        );
    }

    #[test]
    fn the_sender_comes_from_the_event_then_the_configuration() {
        let (sink, _dir) = make_sink(&[
            ("TWILIO_PHONE_NUMBER", "+15005550006"),
            (
                "TWILIO_MESSAGING_SERVICE_SID",
                "MG00000000000000000000000000000001",
            ),
        ]);
        let from_event = metadata(json!({"twilio": {"from": "+15005550009"}}));
        assert_eq!(
            sink.sender(&address("+14155550100"), &from_event),
            Some(MessageSender::From("+15005550009".into()))
        );
        assert_eq!(
            sink.sender(&address("+14155550100"), &Map::new()),
            Some(MessageSender::From("+15005550006".into()))
        );
        assert_eq!(
            sink.sender(&address("whatsapp:+14155550100"), &Map::new()),
            Some(MessageSender::From("whatsapp:+15005550006".into()))
        );

        let (service_only, _dir) = sink_with_service();
        assert_eq!(
            service_only.sender(&address("+14155550100"), &Map::new()),
            Some(MessageSender::MessagingService(
                "MG00000000000000000000000000000001".into()
            ))
        );
        let (nothing, _dir) = make_sink(&[]);
        assert_eq!(nothing.sender(&address("+14155550100"), &Map::new()), None);
        assert_eq!(nothing.sender_key("+14155550100", &Map::new()), "none");
    }

    fn sink_with_service() -> (TwilioSink, tempfile::TempDir) {
        make_sink(&[(
            "TWILIO_MESSAGING_SERVICE_SID",
            "MG00000000000000000000000000000001",
        )])
    }

    #[test]
    fn the_status_callback_carries_the_correlation_id() {
        let (sink, _dir) = make_sink(&[(
            "TWILIO_STATUS_CALLBACK_URL",
            "https://hooks.example.com/webhooks/twilio/status?tenant=a",
        )]);
        let metadata = Map::new();
        let id = uuid::Uuid::new_v4();
        let part = Outbound {
            correlation_id: id,
            target: "+14155550100",
            egress_metadata: &metadata,
            text: Some("hi"),
            media: &[],
            part_index: 1,
            part_count: 2,
            idempotency_token: "t",
        };
        let url = sink.status_callback(&part).unwrap();
        assert_eq!(
            url.as_str(),
            format!(
                "https://hooks.example.com/webhooks/twilio/status?tenant=a&correlationId={id}&part=1"
            )
        );
    }

    #[test]
    fn opted_out_and_retryable_errors_map_onto_the_policy() {
        let opted_out = failure(RestError::Http {
            status: 400,
            code: Some(21610),
            message: "unsubscribed".into(),
            retry_after: None,
        });
        assert!(opted_out.opted_out && !opted_out.retryable);
        let limited = failure(RestError::Http {
            status: 429,
            code: Some(20429),
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(2)),
        });
        assert!(limited.retryable && !limited.opted_out);
        assert_eq!(limited.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(
            failure(RestError::NotConfigured("x")).reason,
            "not_configured"
        );
    }
}
