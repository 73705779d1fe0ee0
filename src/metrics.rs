//! Prometheus metrics. Every counter the service keeps lives here, once; `/metrics` renders them
//! and the debug snapshot reads the same values.

use prometheus::{
    core::Collector, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

const NAMESPACE: &str = "ingress_egress";

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Webhook requests by route and outcome (published, outboxed, duplicate, ignored,
    /// bad_signature, bad_request, too_large, unsupported_media_type, unavailable).
    pub webhook_requests: IntCounterVec,
    pub webhook_duration: HistogramVec,
    /// Publishes by topic and result (confirmed, failed).
    pub bus_publishes: IntCounterVec,
    pub bus_confirm_duration: Histogram,
    pub outbox_depth: IntGauge,
    pub outbox_written: IntCounter,
    pub outbox_drained: IntCounter,
    pub broker_connected: IntGauge,
    /// Twilio sends by outcome (sent, retried, failed, dead_lettered, opted_out) and error code.
    pub twilio_sends: IntCounterVec,
    pub twilio_send_duration: Histogram,
    /// Egress events consumed, by result (acked, dead_lettered, requeued).
    pub egress_events: IntCounterVec,
    /// Seconds between an egress event's timestamp and its consumption.
    pub egress_lag: Histogram,
    /// Messages ready in the egress queue, sampled by the consumer.
    pub egress_queue_depth: IntGauge,
    /// Webhook events acknowledged without publishing, by event type.
    pub ignored_events: IntCounterVec,
    /// Auto-join of the bot into Conversations, by outcome (joined, already_participant,
    /// retried, gave_up).
    pub conversation_joins: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some(NAMESPACE.to_owned()), None)
            .expect("static metric namespace is valid");
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let webhook_duration = HistogramVec::new(
            HistogramOpts::new(
                "webhook_duration_seconds",
                "Time from webhook request to response",
            )
            .buckets(latency_buckets.clone()),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(webhook_duration.clone()))
            .expect("metric registered once");

        Self {
            webhook_requests: counter_vec(
                "webhook_requests_total",
                "Webhook requests by route and outcome",
                &["route", "outcome"],
            ),
            webhook_duration,
            bus_publishes: counter_vec(
                "bus_publishes_total",
                "Messages published to the bus by topic and result",
                &["topic", "result"],
            ),
            bus_confirm_duration: histogram(
                "bus_confirm_duration_seconds",
                "Time from publish to broker confirm",
                latency_buckets.clone(),
            ),
            outbox_depth: gauge("outbox_depth", "Events waiting in the durable outbox"),
            outbox_written: counter(
                "outbox_written_total",
                "Events written to the durable outbox",
            ),
            outbox_drained: counter(
                "outbox_drained_total",
                "Events published from the durable outbox",
            ),
            broker_connected: gauge(
                "broker_connected",
                "1 when the broker connection is up (always 1 for the embedded bus)",
            ),
            twilio_sends: counter_vec(
                "twilio_sends_total",
                "Twilio REST sends by outcome and Twilio error code",
                &["outcome", "error_code"],
            ),
            twilio_send_duration: histogram(
                "twilio_send_duration_seconds",
                "Twilio REST request latency",
                latency_buckets.clone(),
            ),
            egress_events: counter_vec(
                "egress_events_total",
                "Egress events consumed by result",
                &["result"],
            ),
            egress_lag: histogram(
                "egress_lag_seconds",
                "Age of egress events when consumed",
                vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0],
            ),
            egress_queue_depth: gauge(
                "egress_queue_depth",
                "Messages waiting in the egress queue (sampled every few seconds)",
            ),
            ignored_events: counter_vec(
                "ignored_events_total",
                "Webhook events acknowledged without publishing, by event type",
                &["event_type"],
            ),
            conversation_joins: counter_vec(
                "conversation_joins_total",
                "Attempts to add the bot to a Twilio conversation, by outcome",
                &["outcome"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("Prometheus text is UTF-8")
    }

    /// Sum of a counter vector over the label values matching `filter`.
    pub fn sum(counter: &IntCounterVec, filter: impl Fn(&[(&str, &str)]) -> bool) -> u64 {
        let mut total = 0;
        for family in counter.collect() {
            for metric in family.get_metric() {
                let labels: Vec<(&str, &str)> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if filter(&labels) {
                    total += metric.get_counter().get_value() as u64;
                }
            }
        }
        total
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
