//! The socket's Prometheus metrics, read from the client when `/metrics` is scraped: the
//! client keeps plain atomics and its own state, so nothing is updated twice and an idle
//! socket costs nothing between scrapes.

use std::sync::Mutex;

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use super::client::ClientHandle;
use super::session::TransportState;

/// Every state the connection gauge reports, as its `state` label.
const STATES: [&str; 5] = [
    "connecting",
    "connected",
    "disconnected",
    "denied",
    "stopped",
];

pub struct SocketMetrics {
    client: ClientHandle,
    /// Refresh and read happen together, so two scrapes never interleave.
    scrape: Mutex<()>,
    /// `twilio_socket_events_total{event}`: reconnects, frames, upstream requests and errors,
    /// token renewals, messages emitted/skipped, joins… (the client's counters).
    events: IntCounterVec,
    connection: IntGaugeVec,
    conversations: IntGaugeVec,
    participant_limit_reached: IntGauge,
    token_expires_at: IntGauge,
}

impl SocketMetrics {
    pub fn new(client: ClientHandle) -> Self {
        let events = IntCounterVec::new(
            Opts::new(
                "twilio_socket_events_total",
                "Conversations socket counters by event: reconnects, framesIn, framesOut, \
                 upstreamRequests, upstreamErrors, tokenRenewals, messagesEmitted, joins, …",
            ),
            &["event"],
        )
        .expect("valid metric");
        let connection = IntGaugeVec::new(
            Opts::new(
                "twilio_socket_connection_state",
                "1 for the Conversations socket's current state, 0 for the others",
            ),
            &["state"],
        )
        .expect("valid metric");
        let conversations = IntGaugeVec::new(
            Opts::new(
                "twilio_socket_conversations",
                "Conversations of the bot's identity by status (joined, not_participating, \
                 joining, join_failed)",
            ),
            &["status"],
        )
        .expect("valid metric");
        let participant_limit_reached = IntGauge::new(
            "twilio_socket_participant_limit_reached",
            "1 while the bot's identity cannot join more conversations (Twilio allows 1,000)",
        )
        .expect("valid metric");
        let token_expires_at = IntGauge::new(
            "twilio_socket_token_expires_at_seconds",
            "Unix time at which the socket's current Access Token expires",
        )
        .expect("valid metric");
        Self {
            client,
            scrape: Mutex::new(()),
            events,
            connection,
            conversations,
            participant_limit_reached,
            token_expires_at,
        }
    }

    fn parts(&self) -> [&dyn Collector; 5] {
        [
            &self.events,
            &self.connection,
            &self.conversations,
            &self.participant_limit_reached,
            &self.token_expires_at,
        ]
    }

    fn refresh(&self) {
        for (event, value) in self.client.counters() {
            let counter = self.events.with_label_values(&[event]);
            counter.reset();
            counter.inc_by(value);
        }
        let current = state_label(&self.client.state().borrow());
        for state in STATES {
            self.connection
                .with_label_values(&[state])
                .set(i64::from(state == current));
        }
        for (status, count) in self.client.conversation_counts() {
            self.conversations
                .with_label_values(&[status])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.participant_limit_reached
            .set(i64::from(self.client.participant_limit_reached().is_some()));
        self.token_expires_at.set(
            self.client
                .token_expires_at()
                .and_then(|at| i64::try_from(at).ok())
                .unwrap_or(0),
        );
    }
}

/// The `state` label of a connection state.
pub fn state_label(state: &TransportState) -> &'static str {
    match state {
        TransportState::Connecting => "connecting",
        TransportState::Connected => "connected",
        TransportState::Disconnected { .. } => "disconnected",
        TransportState::Denied { .. } => "denied",
        TransportState::Stopped => "stopped",
    }
}

impl Collector for SocketMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.parts()
            .into_iter()
            .flat_map(|part| part.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh();
        self.parts()
            .into_iter()
            .flat_map(|part| part.collect())
            .collect()
    }
}
