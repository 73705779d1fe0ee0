//! Twilio's egress sink: turns one planned part into a Twilio REST call, and finds what an
//! earlier attempt created when its answer was lost.
//!
//! `CH…` targets post to the Conversations API as `TWILIO_IDENTITY`, with `Attributes`
//! `{"origin": "ingress-egress", "key": <part key>}` so the message is recognised as ours (no
//! echo) and can be found again. Phone, WhatsApp and Messenger targets go through Programmable
//! Messaging with `From` = `egress.metadata.twilio.from`, else `TWILIO_PHONE_NUMBER`, else a
//! Messaging Service (`egress.metadata.twilio.messagingServiceSid`, else
//! `TWILIO_MESSAGING_SERVICE_SID`), and a `StatusCallback` (`TWILIO_STATUS_CALLBACK_URL` with
//! the correlation id, the part and its key, the query sorted so Twilio's re-sorting cannot
//! break its own signature).
//!
//! Twilio's creates have no request idempotency, so after an ambiguous attempt (timeout, 5xx)
//! the engine asks [`TwilioSink::resolve`] before sending again: for a conversation, the
//! newest messages are searched for our key (exact); for a message, the delivery status
//! callback may already have recorded its SID in the send ledger (we wait briefly for one),
//! else the recipient's newest messages are searched ([`TwilioRest::find_created_message`]).
//!
//! Media: a conversation attaches media by Media Content Service SID; media we know by URL
//! (from an SMS/MMS) travel as links in the body. A message attaches media by URL; media known
//! only by SID (from a conversation) is first resolved to a temporary URL. WhatsApp carries
//! one media per message. Twilio errors map onto the engine's retry policy: 429, 5xx, network
//! and back-pressure codes (20429, 21611, 14107) retry; other 4xx are permanent; 21610 is an
//! opt-out, remembered for the sender and recipient (see [`super::super::opt_out`]).

#[cfg(feature = "websocket")]
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};
use url::Url;

use super::split;
#[cfg(feature = "websocket")]
use crate::connectors::twilio::websocket::egress::SocketEgress;
use crate::{
    connectors::twilio::{
        address::Address,
        opt_out::OptOuts,
        rest::{
            Created, MessageSender, NewConversationMessage, NewMessage, RestError, TwilioRest,
            ERROR_OPTED_OUT,
        },
        shared::{Twilio, CONNECTOR, OWN_ORIGIN},
    },
    egress::{
        ledger::{PartRecord, SendLedger},
        sink::{
            Accepted, EgressSink, InvalidTarget, Outbound, Resolution, SendFailure, SinkPolicy,
            TextInfo,
        },
    },
    envelope::Media,
};

/// Twilio's body limit for Messaging and for Conversations (anything we append included).
pub const MAX_BODY_CHARS: usize = 1600;
/// Twilio accepts up to 10 `MediaUrl` per message.
const MAX_MEDIA_URLS: usize = 10;
/// How many of a conversation's newest messages are searched for an earlier attempt.
const CONVERSATION_LOOKUP: usize = 50;
/// How often the ledger is read while waiting for a status callback.
const CALLBACK_POLL: Duration = Duration::from_millis(100);

pub struct TwilioSink {
    twilio: Twilio,
    rest: TwilioRest,
    ledger: SendLedger,
    opt_outs: OptOuts,
    /// `TWILIO_EGRESS_TRANSPORT=websocket`: conversation replies go over the socket.
    #[cfg(feature = "websocket")]
    socket: Option<Arc<SocketEgress>>,
}

/// A failure that is ours to report, not Twilio's.
fn refusal(reason: &'static str, message: impl Into<String>) -> SendFailure {
    SendFailure {
        retryable: false,
        ambiguous: false,
        opted_out: false,
        retry_after: None,
        http_status: None,
        error_code: None,
        reason,
        message: message.into(),
    }
}

/// What a Programmable Messaging send of a part is made of.
struct MessagingSend {
    sender: MessageSender,
    media_urls: Vec<String>,
    callback: Option<Url>,
}

impl MessagingSend {
    fn request<'a>(&'a self, part: &Outbound<'a>) -> NewMessage<'a> {
        NewMessage {
            to: part.target,
            sender: &self.sender,
            body: part.text,
            media_urls: &self.media_urls,
            status_callback: self.callback.as_ref(),
            idempotency_token: part.idempotency_token,
        }
    }
}

impl TwilioSink {
    pub fn new(twilio: Twilio, ledger: SendLedger, opt_outs: OptOuts) -> Self {
        let rest = twilio.rest().clone();
        Self {
            twilio,
            rest,
            ledger,
            opt_outs,
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

    fn sender_key_of(sender: &MessageSender) -> String {
        match sender {
            MessageSender::From(from) => format!("from:{from}"),
            MessageSender::MessagingService(sid) => format!("service:{sid}"),
        }
    }

    /// `TWILIO_STATUS_CALLBACK_URL` with `correlationId`, `part` (of a split text), `partKey`
    /// (the send ledger's key) and the URL's own parameters, sorted by name.
    fn status_callback(&self, part: &Outbound<'_>) -> Option<Url> {
        let mut url = self.twilio.settings().status_callback_url.clone()?;
        let mut pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .filter(|(k, _)| !matches!(k.as_str(), "correlationId" | "part" | "partKey"))
            .collect();
        pairs.push(("correlationId".into(), part.correlation_id.to_string()));
        if part.part_count > 1 {
            pairs.push(("part".into(), part.part_index.to_string()));
        }
        pairs.push(("partKey".into(), part.idempotency_token.to_owned()));
        pairs.sort();
        url.query_pairs_mut().clear().extend_pairs(&pairs);
        Some(url)
    }

    /// The body and media SID of a conversation message for `part`: media with a URL (an
    /// SMS/MMS's, or any public one) become links after the text, since a Messaging media SID
    /// is not a Media Content Service SID; media known only by SID attach as `MediaSid`.
    fn conversation_content<'p>(part: &Outbound<'p>) -> (Option<String>, Option<&'p str>) {
        let media_sid = part
            .media
            .iter()
            .filter(|m| m.url.is_none())
            .find_map(|m| m.sid.as_deref());
        let links: Vec<&str> = part.media.iter().filter_map(|m| m.url.as_deref()).collect();
        let body = match (part.text, links.is_empty()) {
            (text, true) => text.map(str::to_owned),
            (Some(text), false) => Some(format!("{text}\n{}", links.join("\n"))),
            (None, false) => Some(links.join("\n")),
        };
        (body, media_sid)
    }

    fn conversation_attributes(part: &Outbound<'_>) -> String {
        json!({"origin": OWN_ORIGIN, "key": part.idempotency_token}).to_string()
    }

    async fn messaging_send(
        &self,
        target: &Address,
        part: &Outbound<'_>,
    ) -> Result<MessagingSend, SendFailure> {
        let sender = self.sender(target, part.egress_metadata).ok_or_else(|| {
            refusal(
                "no_sender",
                "no sender: set egress.metadata.twilio.from, TWILIO_PHONE_NUMBER or TWILIO_MESSAGING_SERVICE_SID",
            )
        })?;
        let mut media_urls = Vec::with_capacity(part.media.len());
        for media in part.media {
            media_urls.push(self.media_url(media).await?);
        }
        Ok(MessagingSend {
            sender,
            media_urls,
            callback: self.status_callback(part),
        })
    }

    /// A URL Twilio can fetch `media` from: its own, else the Media Content Service's
    /// temporary URL for its SID.
    async fn media_url(&self, media: &Media) -> Result<String, SendFailure> {
        if let Some(url) = &media.url {
            return Ok(url.clone());
        }
        let sid = media
            .sid
            .as_deref()
            .ok_or_else(|| refusal("media_unavailable", "a media item has neither url nor sid"))?;
        self.rest
            .media_content_url(sid)
            .await
            .map_err(|error| match error {
                RestError::NotConfigured(what) => refusal(
                    "media_unavailable",
                    format!("media {sid} is known only by SID and cannot be resolved: {what}"),
                ),
                other => failure(other),
            })
    }

    async fn send_part(&self, part: Outbound<'_>) -> Result<Accepted, SendFailure> {
        let target = Address::parse(part.target)
            .map_err(|error| refusal("invalid_target", error.to_string()))?;
        let result = match &target {
            Address::Conversation(conversation_sid) => {
                let (body, media_sid) = Self::conversation_content(&part);
                let attributes = Self::conversation_attributes(&part);
                #[cfg(feature = "websocket")]
                if let (Some(socket), None) = (&self.socket, media_sid) {
                    return socket
                        .send(conversation_sid, body.as_deref(), &attributes)
                        .await;
                }
                self.rest
                    .create_conversation_message(&NewConversationMessage {
                        conversation_sid,
                        author: self.twilio.settings().identity.as_deref(),
                        body: body.as_deref(),
                        media_sid,
                        attributes: Some(&attributes),
                        idempotency_token: part.idempotency_token,
                    })
                    .await
            }
            _ => {
                let send = self.messaging_send(&target, &part).await?;
                let sender_key = Self::sender_key_of(&send.sender);
                match self.opt_outs.is_opted_out(&sender_key, part.target).await {
                    Ok(true) => {
                        return Err(SendFailure {
                            opted_out: true,
                            error_code: Some(ERROR_OPTED_OUT),
                            ..refusal(
                                "opted_out",
                                "the recipient opted out of this sender (remembered); not sent",
                            )
                        })
                    }
                    Ok(false) => {}
                    // Twilio refuses opted-out recipients itself: sending is safe.
                    Err(error) => tracing::warn!(%error, "opt-out memory unavailable"),
                }
                let result = self.rest.create_message(&send.request(&part)).await;
                if matches!(&result, Err(error) if error.error_code() == Some(ERROR_OPTED_OUT)) {
                    if let Err(error) = self.opt_outs.opt_out(&sender_key, part.target).await {
                        tracing::warn!(%error, "opt-out not remembered");
                    }
                }
                result
            }
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
                    .record_error(format!("REST send failed: {}", error.summary()));
                Err(failure(error))
            }
        }
    }

    async fn resolve_part(
        &self,
        part: Outbound<'_>,
        since: DateTime<Utc>,
    ) -> Result<Resolution, SendFailure> {
        let target = Address::parse(part.target)
            .map_err(|error| refusal("invalid_target", error.to_string()))?;
        if let Address::Conversation(conversation_sid) = &target {
            // The socket sees the same messages (REST-posted ones carry the key too).
            #[cfg(feature = "websocket")]
            if let Some(socket) = &self.socket {
                return socket
                    .resolve(conversation_sid, part.idempotency_token)
                    .await;
            }
            let listed = self
                .rest
                .list_conversation_messages(conversation_sid, CONVERSATION_LOOKUP)
                .await
                .map_err(failure)?;
            let ours = listed.iter().find(|message| {
                message
                    .get("attributes")
                    .and_then(Value::as_str)
                    .and_then(|text| serde_json::from_str::<Value>(text).ok())
                    .is_some_and(|attributes| attributes["key"] == part.idempotency_token)
            });
            return Ok(
                match ours.and_then(|m| m.get("sid")).and_then(Value::as_str) {
                    Some(sid) => Resolution::Found {
                        provider_sid: sid.to_owned(),
                        how: "attributes",
                    },
                    None => Resolution::NotFound,
                },
            );
        }
        let send = self.messaging_send(&target, &part).await?;
        if send.callback.is_some() {
            if let Some(sid) = self.wait_for_status_callback(part.idempotency_token).await {
                return Ok(Resolution::Found {
                    provider_sid: sid,
                    how: "status_callback",
                });
            }
        }
        let found = self
            .rest
            .find_created_message(&send.request(&part), since)
            .await
            .map_err(failure)?;
        Ok(match found {
            Some(Created { sid, .. }) => Resolution::Found {
                provider_sid: sid,
                how: "listing",
            },
            None => Resolution::NotFound,
        })
    }

    /// Waits up to `TWILIO_RESOLVE_WAIT_MS` for a status callback of the part (any status,
    /// even `queued`) to record its SID in the ledger.
    async fn wait_for_status_callback(&self, part_key: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + self.twilio.settings().resolve_wait;
        loop {
            if let Ok(Some(PartRecord::Sent { provider_sid, .. })) = self.ledger.get(part_key).await
            {
                return Some(provider_sid);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(CALLBACK_POLL).await;
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
        ambiguous: error.is_ambiguous(),
        opted_out: error.error_code() == Some(ERROR_OPTED_OUT),
        retry_after: error.retry_after(),
        http_status: error.http_status(),
        error_code: error.error_code(),
        reason,
        message: error.to_string(),
    }
}

/// Conversations count the body in characters.
fn body_chars(text: Option<&str>, media: &[Media]) -> usize {
    let links: usize = media
        .iter()
        .filter_map(|m| m.url.as_deref())
        .map(|url| url.chars().count() + 1)
        .sum();
    text.map_or(0, |t| t.chars().count()) + links
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
            // Conversations attach one media per message; WhatsApp delivers only the first.
            Ok(Address::Conversation(_) | Address::WhatsApp(_)) => 1,
            _ => MAX_MEDIA_URLS,
        }
    }

    fn fits(&self, target: &str, text: Option<&str>, media: &[Media]) -> bool {
        match Address::parse(target) {
            // Media URLs become links in a conversation message's body.
            Ok(Address::Conversation(_)) => body_chars(text, media) <= MAX_BODY_CHARS,
            _ => true,
        }
    }

    fn sender_key(&self, target: &str, egress_metadata: &Map<String, Value>) -> String {
        match Address::parse(target) {
            Ok(Address::Conversation(_)) => {
                let identity = self.twilio.settings().identity.as_deref().unwrap_or("-");
                format!("conversations:{identity}")
            }
            Ok(address) => self
                .sender(&address, egress_metadata)
                .map_or_else(|| "none".to_owned(), |sender| Self::sender_key_of(&sender)),
            Err(_) => "none".to_owned(),
        }
    }

    fn send<'a>(&'a self, part: Outbound<'a>) -> BoxFuture<'a, Result<Accepted, SendFailure>> {
        Box::pin(self.send_part(part))
    }

    fn resolve<'a>(
        &'a self,
        part: Outbound<'a>,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Resolution, SendFailure>> {
        Box::pin(self.resolve_part(part, since))
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
        state::memory::MemoryStore,
    };
    use std::sync::Arc;

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
            Arc::new(MemoryStore::default()),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Metrics::new(),
        );
        let twilio = Twilio::new(settings, publisher, Metrics::new());
        let store = Arc::new(MemoryStore::default());
        (
            TwilioSink::new(twilio, SendLedger::new(store.clone()), OptOuts::new(store)),
            dir,
        )
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
                "https://hooks.example.com/webhooks/twilio/status?correlationId={id}&part=1&partKey=t&tenant=a"
            ),
            "every parameter present, sorted by name"
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
