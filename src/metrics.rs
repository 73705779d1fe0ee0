//! Prometheus metrics. Every counter the service keeps lives here, once; `/metrics` renders them
//! and the debug snapshot reads the same values.
//!
//! Every registered family is listed in `/metrics` from the start: one that has no series yet
//! (a labelled counter nothing has touched) still gets its `# HELP` and `# TYPE` lines, so
//! dashboards, alert rules and their tests can rely on the name existing.

use std::sync::{Arc, Mutex};

use prometheus::{
    core::Collector, proto::MetricType, Encoder, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const NAMESPACE: &str = "ingress_egress";

/// The registry, plus every collector registered in it (the registry prunes families without
/// series from what it gathers; rendering lists those from here).
#[derive(Clone)]
struct Families {
    registry: Registry,
    collectors: Arc<Mutex<Vec<Box<dyn Collector>>>>,
}

impl Families {
    fn add<C: Collector + Clone + 'static>(&self, metric: C) -> C {
        self.registry
            .register(Box::new(metric.clone()))
            .expect("metric registered once");
        self.collectors
            .lock()
            .expect("poisoned")
            .push(Box::new(metric.clone()));
        metric
    }

    /// `# HELP` and `# TYPE` lines of the registered families that have no series yet.
    fn render_empty(&self, out: &mut String) {
        for collector in self.collectors.lock().expect("poisoned").iter() {
            for family in collector.collect() {
                if !family.get_metric().is_empty() {
                    continue;
                }
                let name = format!("{NAMESPACE}_{}", family.name());
                let help = family.help().replace('\\', "\\\\").replace('\n', "\\n");
                let kind = match family.get_field_type() {
                    MetricType::COUNTER => "counter",
                    MetricType::GAUGE => "gauge",
                    MetricType::HISTOGRAM => "histogram",
                    MetricType::SUMMARY => "summary",
                    MetricType::UNTYPED => "untyped",
                };
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    families: Families,
    /// Webhook requests by connector, route and outcome (published, outboxed, duplicate,
    /// ignored, bad_signature, bad_request, too_large, unsupported_media_type, unavailable).
    pub webhook_requests: IntCounterVec,
    /// Webhook latency by connector and route.
    pub webhook_duration: HistogramVec,
    /// Publishes by topic and result (confirmed, timed_out, failed).
    pub bus_publishes: IntCounterVec,
    pub bus_confirm_duration: Histogram,
    /// Publishes the broker did not confirm in time (a stalled broker when they pile up).
    pub bus_confirm_timeouts: IntCounter,
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
    /// Requests refused before any work, by reason (client_limit).
    pub rejected_requests: IntCounterVec,
    /// Time egress sends waited for their sender's rate limit, by connector.
    pub egress_rate_limit_wait: HistogramVec,
    /// 1 when `/readyz` would answer 200 (sampled when `/metrics` is scraped).
    pub ready: IntGauge,
    /// State store operations that failed, by store kind and operation.
    pub state_store_errors: IntCounterVec,
    /// Webhooks published after only the local dedupe window was consulted (the shared one
    /// was unreachable); they carry the possible-duplicate mark.
    pub dedupe_fallbacks: IntCounter,
    /// Messages ready in each egress partition queue, sampled by its consumer.
    pub egress_partition_depth: IntGaugeVec,
    /// 1 for each egress partition this instance is the active consumer of (it has received
    /// from it since it subscribed), 0 otherwise.
    pub egress_partition_active: IntGaugeVec,
    /// Instances consuming the egress partitions (counted on their roll-call queue).
    pub egress_instances: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some(NAMESPACE.to_owned()), None)
            .expect("static metric namespace is valid");
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let families = Families {
            registry,
            collectors: Arc::default(),
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            families.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            families.add(
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid metric"),
            )
        };
        let gauge =
            |name: &str, help: &str| families.add(IntGauge::new(name, help).expect("valid metric"));
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            families.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            families.add(IntCounter::new(name, help).expect("valid metric"))
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            families.add(
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(latency_buckets.clone()),
                    labels,
                )
                .expect("valid metric"),
            )
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
            bus_confirm_timeouts: counter(
                "bus_confirm_timeouts_total",
                "Publishes the broker did not confirm within PUBLISH_CONFIRM_TIMEOUT_MS",
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
            rejected_requests: counter_vec(
                "rejected_requests_total",
                "Requests refused before any work, by reason",
                &["reason"],
            ),
            egress_rate_limit_wait: histogram_vec(
                "egress_rate_limit_wait_seconds",
                "Time an egress send waited for its sender's rate limit",
                &["connector"],
            ),
            ready: gauge(
                "ready",
                "1 when the service is ready (broker connected, egress consumer consuming)",
            ),
            state_store_errors: counter_vec(
                "state_store_errors_total",
                "State store operations that failed, by store and operation",
                &["store", "operation"],
            ),
            dedupe_fallbacks: counter(
                "dedupe_fallbacks_total",
                "Webhooks deduplicated only locally because the shared store was unreachable",
            ),
            egress_partition_depth: gauge_vec(
                "egress_partition_queue_depth",
                "Messages waiting in each egress partition queue (sampled every few seconds)",
                &["partition"],
            ),
            egress_partition_active: gauge_vec(
                "egress_partition_active",
                "1 for each egress partition this instance actively consumes",
                &["partition"],
            ),
            egress_instances: gauge(
                "egress_instances",
                "Instances consuming the egress partitions (sampled every few seconds)",
            ),
            families,
        }
    }

    /// Registers a gauge that only some configurations have (its name gets the namespace).
    pub fn register_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.families
            .add(IntGauge::new(name, help).expect("valid metric"))
    }

    /// Registers a connector's own counter (its name gets the service's namespace).
    pub fn register_counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.families
            .add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// Registers a connector's own histogram (its name gets the service's namespace).
    pub fn register_histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.families.add(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric"),
        )
    }

    /// Registers a connector's collector: metrics it computes when scraped, from state it
    /// keeps itself (a socket's counters and connection state).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.families
            .registry
            .register(collector)
            .expect("collector registered once");
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.families.registry.gather(), &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        let mut text = String::from_utf8(buffer).expect("Prometheus text is UTF-8");
        self.families.render_empty(&mut text);
        text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_without_series_are_listed_with_help_and_type() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for (name, kind) in [
            ("ingress_egress_webhook_requests_total", "counter"),
            ("ingress_egress_egress_send_duration_seconds", "histogram"),
            ("ingress_egress_outbox_depth", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} missing from:\n{text}"
            );
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1);
        }
        metrics
            .webhook_requests
            .with_label_values(&["x", "sms", "published"])
            .inc();
        let own = metrics.register_counter_vec("own_total", "A connector's own", &["kind"]);
        let text = metrics.render();
        assert_eq!(
            text.matches("# TYPE ingress_egress_webhook_requests_total counter")
                .count(),
            1,
            "a family with series is listed once"
        );
        assert!(text.contains("ingress_egress_webhook_requests_total{"));
        assert!(text.contains("# TYPE ingress_egress_own_total counter"));
        own.with_label_values(&["a"]).inc();
        assert!(metrics
            .render()
            .contains("ingress_egress_own_total{kind=\"a\"} 1"));
    }
}
