//! How long each webhook may work. Twilio gives up on a webhook after a fixed time (15 s for
//! Messaging, 5 s for Conversations and Event Streams) and, by default, retries it only after a
//! connection failure, never after a timeout or a 5xx: an answer that comes too late loses the
//! message. So every webhook's work — the broker's confirm, the outbox fallback, any REST call —
//! is bounded by a [`Deadline`] set when the request arrives, a margin before Twilio's.

use std::time::Duration;

use tokio::time::Instant;

/// Time kept for the answer to travel back to Twilio and for the server's own overhead.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// The webhooks Twilio calls, each with the time Twilio waits for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Webhook {
    /// Programmable Messaging "a message comes in".
    Sms,
    /// Programmable Messaging status callbacks.
    Status,
    Conversations,
    EventStreams,
}

impl Webhook {
    /// The `route` label of the webhook metrics.
    pub(crate) fn route(self) -> &'static str {
        match self {
            Webhook::Sms => "sms",
            Webhook::Status => "status",
            Webhook::Conversations => "conversations",
            Webhook::EventStreams => "event_streams",
        }
    }

    /// How long Twilio waits for the answer before it counts the request as failed.
    pub(crate) fn twilio_timeout(self) -> Duration {
        match self {
            Webhook::Sms | Webhook::Status => Duration::from_secs(15),
            Webhook::Conversations | Webhook::EventStreams => Duration::from_secs(5),
        }
    }
}

/// The instant by which a webhook's work must be done so the answer still reaches Twilio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    /// The deadline of `webhook` for a request that arrived at `arrived`.
    pub(crate) fn for_webhook(webhook: Webhook, arrived: Instant) -> Self {
        Self(arrived + webhook.twilio_timeout().saturating_sub(ANSWER_MARGIN))
    }

    pub(crate) fn instant(self) -> Instant {
        self.0
    }

    /// A deadline `reserve` earlier, for a step that must leave time for the steps after it.
    pub(crate) fn earlier_by(self, reserve: Duration) -> Self {
        Self(self.0.checked_sub(reserve).unwrap_or(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_webhook_finishes_a_margin_before_twilio_gives_up() {
        let arrived = Instant::now();
        for webhook in [
            Webhook::Sms,
            Webhook::Status,
            Webhook::Conversations,
            Webhook::EventStreams,
        ] {
            let deadline = Deadline::for_webhook(webhook, arrived).instant();
            assert!(deadline > arrived, "{webhook:?}");
            assert_eq!(
                deadline + ANSWER_MARGIN,
                arrived + webhook.twilio_timeout(),
                "{webhook:?}"
            );
        }
        assert_eq!(Webhook::Sms.twilio_timeout(), Duration::from_secs(15));
        assert_eq!(
            Webhook::Conversations.twilio_timeout(),
            Duration::from_secs(5)
        );
        assert_eq!(
            Webhook::EventStreams.twilio_timeout(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn an_earlier_deadline_leaves_room_for_what_follows() {
        let deadline = Deadline::for_webhook(Webhook::EventStreams, Instant::now());
        let earlier = deadline.earlier_by(Duration::from_secs(1));
        assert_eq!(
            earlier.instant() + Duration::from_secs(1),
            deadline.instant()
        );
    }
}
