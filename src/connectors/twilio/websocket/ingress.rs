//! Publishes what the socket emits. Each [`MessageAdded`] becomes the form of the
//! `onMessageAdded` webhook and goes through the webhook's own handler (envelope builder,
//! own-message rule, dedupe, publisher), so it is the same `InternalEventV2` with the same
//! `message_id`; with `TWILIO_TRANSPORT=both` whichever copy comes second is a duplicate.
//!
//! The conversation's checkpoint moves only once the publisher took the message (confirmed,
//! in the outbox, or already published by the webhook). While neither the broker nor the
//! outbox takes it, the same message is retried; a stop before that leaves the checkpoint
//! where it was, so the next start reads the message from history again.

use std::time::Duration;

use chrono::Utc;
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::ClientHandle;
use super::conversations::MessageAdded;
use crate::connectors::twilio::ingress::deadline::{Deadline, Webhook};
use crate::{
    backoff::Backoff,
    connectors::twilio::ingress::{
        conversations::on_message_added, publish::WebhookOutcome, IngressContext,
    },
    error::ApiError,
};

/// What became of one message, as the `outcome` label of
/// `twilio_socket_messages_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Published, outboxed, or a duplicate of what was already published.
    Accepted(&'static str),
    /// The bot's own (the webhook rule caught what the client did not).
    Own,
    /// Not an envelope (malformed fields); it can never be published.
    Rejected,
    /// Neither the broker nor the outbox took it; tried again.
    Retried,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted(delivery) => delivery,
            Outcome::Own => "own",
            Outcome::Rejected => "rejected",
            Outcome::Retried => "retried",
        }
    }
}

/// Runs until `cancel` fires or the client stops emitting.
pub async fn run(
    mut messages: mpsc::Receiver<MessageAdded>,
    client: ClientHandle,
    ingress: IngressContext,
    outcomes: IntCounterVec,
    cancel: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            message = messages.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let outcome = publish(&ingress, &message).await;
            outcomes.with_label_values(&[outcome.label()]).inc();
            if outcome != Outcome::Retried {
                client.commit(&message.conversation_sid, message.index);
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// Publishes one message the way the webhook would.
pub async fn publish(ingress: &IngressContext, message: &MessageAdded) -> Outcome {
    // The Conversations webhook's own budget: the broker's confirm is bounded the same way,
    // then the outbox takes the message.
    let deadline = Deadline::for_webhook(Webhook::Conversations, tokio::time::Instant::now());
    // Each socket message starts its own trace, as each webhook request does.
    let span = tracing::info_span!("twilio.socket.message", otel.kind = "consumer");
    let published = on_message_added(ingress, &message.form(), Utc::now(), None, deadline)
        .instrument(span)
        .await;
    match published {
        Ok(WebhookOutcome::Delivered(delivery)) => {
            ingress.record_inbound();
            Outcome::Accepted(delivery.as_str())
        }
        // A pre-event answer is only given to onMessageAdd, never to a message already added.
        Ok(WebhookOutcome::Ignored | WebhookOutcome::PreEvent) => Outcome::Own,
        Err(ApiError::Unavailable(_)) => Outcome::Retried,
        Err(error) => {
            tracing::error!(
                conversation = %message.conversation_sid,
                index = message.index,
                message_sid = %message.message_sid,
                %error,
                "a socket message cannot become an envelope; skipped"
            );
            ingress.record_error(format!("socket message skipped: {error}"));
            Outcome::Rejected
        }
    }
}
