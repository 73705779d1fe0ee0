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
    /// Webhook requests by connector, route and outcome (published, outboxed, duplicate,
    /// ignored, bad_signature, bad_request, too_large, unsupported_media_type, unavailable).
    pub webhook_requests: IntCounterVec,
    /// Webhook latency by connector and route.
    pub webhook_duration: HistogramVec,
    /// Publishes by topic and result (confirmed, failed).
    pub bus_publishes: IntCounterVec,
    pub bus_confirm_duration: Histogram,
    pub outbox_depth: IntGauge,
    pub outbox_written: IntCounter,
    pub outbox_drained: IntCounter,
    pub broker_connected: IntGauge,
    /// Egress send attempts and outcomes by connector, outcome (sent, retried, failed,
    /// dead_lettered, opted_out) and the platform's error code.
    pub egress_sends: IntCounterVec,
    /// Latency of one send to the platform, by connector.
    pub egress_send_duration: HistogramVec,
    /// Egress events consumed, by result (acked, dead_lettered, requeued).
    pub egress_events: IntCounterVec,
    /// Seconds between an egress event's timestamp and its consumption.
    pub egress_lag: Histogram,
    /// Messages ready in the egress queue, sampled by the consumer.
    pub egress_queue_depth: IntGauge,
    /// Webhook events acknowledged without publishing, by connector and event type.
    pub ignored_events: IntCounterVec,
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
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(latency_buckets.clone()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };

        Self {
            webhook_requests: counter_vec(
                "webhook_requests_total",
                "Webhook requests by connector, route and outcome",
                &["connector", "route", "outcome"],
            ),
            webhook_duration: histogram_vec(
                "webhook_duration_seconds",
                "Time from webhook request to response",
                &["connector", "route"],
            ),
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
            egress_sends: counter_vec(
                "egress_sends_total",
                "Egress send attempts and outcomes by connector, outcome and platform error code",
                &["connector", "outcome", "error_code"],
            ),
            egress_send_duration: histogram_vec(
                "egress_send_duration_seconds",
                "Latency of one send to the platform",
                &["connector"],
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
                "Webhook events acknowledged without publishing, by connector and event type",
                &["connector", "event_type"],
            ),
            registry,
        }
    }

    /// Registers a connector's own counter (its name gets the service's namespace).
    pub fn register_counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.registry
            .register(Box::new(metric.clone()))
            .expect("metric registered once");
        metric
    }

    /// Registers a connector's collector: metrics it computes when scraped, from state it
    /// keeps itself (a socket's counters and connection state).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .register(collector)
            .expect("collector registered once");
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("Prometheus text is UTF-8")
    }

    /// Sum of a counter vector over the series whose labels include every `(name, value)` of
    /// `labels`.
    pub fn sum_where(counter: &IntCounterVec, labels: &[(&str, &str)]) -> u64 {
        Self::sum(counter, |series| {
            labels.iter().all(|wanted| series.contains(wanted))
        })
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
