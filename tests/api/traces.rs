//! Traces across the bus: one trace runs from the webhook through the publish, a downstream
//! reply (the echo bot, keeping the `traceparent`), the egress consumer and the Twilio REST
//! call; spans are read through OpenTelemetry's in-memory exporter. And the service binary
//! exports its spans over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with log lines
//! naming the trace the way Cloud Logging links them.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use ingress_egress::envelope::topics;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;
use serde_json::Value;

use crate::{
    echo_bot::RunningBot,
    egress_support::{egress_app, fake_twilio, next_matching},
    fake_twilio::Route,
    helpers::{fixture, fixture_tokens, header, spans},
    process::{Service, Workdir},
    require_broker,
};

const WAIT: Duration = Duration::from_secs(20);

/// The finished spans of one trace, once `done` holds for them (panics after [`WAIT`]).
async fn trace_spans(trace_id: TraceId, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let trace: Vec<SpanData> = spans()
            .get_finished_spans()
            .expect("finished spans")
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace_id)
            .collect();
        if done(&trace) {
            return trace;
        }
        if tokio::time::Instant::now() > deadline {
            let names: Vec<_> = trace.iter().map(|s| s.name.to_string()).collect();
            panic!("trace {trace_id} incomplete after {WAIT:?}: {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn named<'a>(trace: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    trace.iter().filter(|span| span.name == name).collect()
}

fn one<'a>(trace: &'a [SpanData], name: &str) -> &'a SpanData {
    let found = named(trace, name);
    assert_eq!(found.len(), 1, "one {name} span: {found:#?}");
    found[0]
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// `(trace id, span id)` of a `traceparent`.
fn parse_traceparent(value: &str) -> (TraceId, SpanId) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
    )
}

#[tokio::test]
async fn one_trace_links_a_webhook_to_the_twilio_call_of_its_reply() {
    let amqp = require_broker!();
    let fake = fake_twilio().await;
    let app = egress_app(&amqp, &fake, &[]).await;
    let mut inbound = app.tap(topics::INGRESS).await;
    let mut statuses = app.tap(topics::EGRESS_STATUS).await;
    let bot = RunningBot::start(&app).await;

    assert_eq!(app.post_fixture(&fixture("sms_basic")).await.status(), 200);
    let (delivery, envelope) = inbound.next_json().await;
    let traceparent = header(&delivery, "traceparent").expect("the inbound message's traceparent");
    let (trace_id, publish_id) = parse_traceparent(&traceparent);
    assert_eq!(
        envelope["traceId"],
        trace_id.to_string(),
        "envelope traceId"
    );

    fake.wait_for_requests(Route::Messages, 1, WAIT).await;
    let status = next_matching(&mut statuses, |s| s["status"] == "sent").await;
    assert_eq!(status["correlationId"], envelope["correlationId"]);

    let trace = trace_spans(trace_id, |trace| {
        ["egress.consume", "POST /webhooks/twilio/sms"]
            .iter()
            .all(|name| !named(trace, name).is_empty())
    })
    .await;

    // Webhook: the request span starts the trace; the publish is its child and is the span the
    // message's traceparent names.
    let request = one(&trace, "POST /webhooks/twilio/sms");
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(
        request.parent_span_id,
        SpanId::INVALID,
        "the webhook starts the trace"
    );
    let publish = one(&trace, "publish internal.ingress.v1");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(publish.parent_span_id, request.span_context.span_id());
    assert_eq!(publish.span_context.span_id(), publish_id);

    // Downstream → egress: the consumer continues from the reply's traceparent (the bot kept
    // the inbound one), so its parent is the ingress publish, across the process boundary.
    let consume = one(&trace, "egress.consume");
    assert_eq!(consume.span_kind, SpanKind::Consumer);
    assert_eq!(consume.parent_span_id, publish_id);
    assert!(consume.parent_span_is_remote);
    assert_eq!(
        attribute(consume, "correlation_id").as_deref(),
        envelope["correlationId"].as_str()
    );

    // The send, and Twilio's REST call inside it.
    let send = one(&trace, "egress.send");
    assert_eq!(send.parent_span_id, consume.span_context.span_id());
    let rest: Vec<&SpanData> = trace
        .iter()
        .filter(|span| span.name.starts_with("POST /2010-04-01/Accounts/"))
        .collect();
    assert_eq!(rest.len(), 1, "one Messages create: {rest:#?}");
    let rest = rest[0];
    assert_eq!(rest.span_kind, SpanKind::Client);
    assert_eq!(rest.parent_span_id, send.span_context.span_id());
    assert_eq!(
        attribute(rest, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert!(rest.name.ends_with("/Messages.json"));

    // The outcome is published from inside the consume span.
    let status_publish = one(&trace, "publish internal.egress.status.v1");
    assert_eq!(
        status_publish.parent_span_id,
        consume.span_context.span_id()
    );

    bot.stop().await;
}

#[tokio::test]
async fn a_reply_with_only_a_trace_id_joins_that_trace() {
    let amqp = require_broker!();
    let fake = fake_twilio().await;
    let app = egress_app(&amqp, &fake, &[]).await;
    let trace_id = TraceId::from_bytes(rand::random::<[u8; 16]>());
    let mut event = crate::egress_support::reply_to("+15005550012", "no header, just traceId");
    event["traceId"] = Value::String(trace_id.to_string());
    crate::egress_support::EgressPublisher::new(&app)
        .await
        .publish(&event)
        .await;
    fake.wait_for_requests(Route::Messages, 1, WAIT).await;
    let trace = trace_spans(trace_id, |trace| !named(trace, "egress.consume").is_empty()).await;
    let consume = one(&trace, "egress.consume");
    assert!(consume.parent_span_is_remote);
    assert_ne!(consume.parent_span_id, SpanId::INVALID);
    assert_eq!(
        one(&trace, "egress.send").parent_span_id,
        consume.span_context.span_id()
    );
}

#[tokio::test]
async fn a_webhook_continues_the_trace_its_request_arrived_with() {
    let amqp = require_broker!();
    let app = crate::helpers::spawn_app(Some(&amqp), &[]).await;
    let mut inbound = app.tap(topics::INGRESS).await;
    let caller = TraceId::from_bytes(rand::random::<[u8; 16]>());
    let sms = fixture("sms_basic");
    let response = app
        .client
        .post(format!("{}{}", app.address, sms.path_and_query))
        .header("Content-Type", &sms.content_type)
        .header("X-Twilio-Signature", &sms.signature)
        .header("traceparent", format!("00-{caller}-00f067aa0ba902b7-01"))
        .body(sms.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (delivery, envelope) = inbound.next_json().await;
    let (trace_id, _) = parse_traceparent(&header(&delivery, "traceparent").unwrap());
    assert_eq!(trace_id, caller);
    assert_eq!(envelope["traceId"], caller.to_string());
    let trace = trace_spans(caller, |trace| {
        !named(trace, "POST /webhooks/twilio/sms").is_empty()
    })
    .await;
    let request = one(&trace, "POST /webhooks/twilio/sms");
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert!(request.parent_span_is_remote);
}

/// What a fake OTLP collector received: `(path, content type, body)` per request.
type Exports = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn collect(
    request: HttpRequest,
    body: web::Bytes,
    exports: web::Data<Exports>,
) -> HttpResponse {
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    exports
        .lock()
        .unwrap()
        .push((request.path().to_owned(), content_type, body.to_vec()));
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(Vec::new())
}

/// The service binary on the embedded bus, with the fixtures' Twilio credentials and `vars`.
fn start_binary(workdir: &Workdir, vars: &[(&str, &str)]) -> Service {
    let tokens = fixture_tokens();
    let mut all = vec![
        ("APP_ENV", "development"),
        ("LOG_LEVEL", "info"),
        ("PUBLIC_BASE_URL", tokens.public_base_url.as_str()),
        ("TWILIO_ACCOUNT_SID", tokens.account_sid.as_str()),
        ("TWILIO_AUTH_TOKEN", tokens.primary_auth_token.as_str()),
        workdir.outbox(),
    ];
    all.extend_from_slice(vars);
    Service::start(workdir.path(), &all)
}

/// Posts the signed SMS webhook `name` (a fixture), with `traceparent` when given; the envelope
/// it published.
async fn post_sms(service: &Service, name: &str, traceparent: Option<&str>) -> Value {
    let sms = fixture(name);
    let client = reqwest::Client::new();
    let mut request = client
        .post(format!("{}{}", service.address, sms.path_and_query))
        .header("Content-Type", &sms.content_type)
        .header("X-Twilio-Signature", &sms.signature);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.body(sms.body.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let recent: Value = client
        .get(format!("{}/_debug/events", service.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    recent["events"]
        .as_array()
        .expect("recent events")
        .iter()
        .rev()
        .find(|m| m["routingKey"] == topics::INGRESS)
        .map(|m| m["body"].clone())
        .expect("the SMS was published on the embedded bus")
}

/// The lines logged for accepted webhooks, in order.
fn accepted_lines(logs: &[Value]) -> Vec<&Value> {
    logs.iter()
        .filter(|line| line["message"] == "inbound message accepted")
        .collect()
}

#[tokio::test]
async fn the_binary_exports_spans_over_otlp_and_logs_link_to_the_trace() {
    // A fake OTLP/HTTP collector.
    let exports: Exports = Arc::default();
    let data = web::Data::new(exports.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector_port = listener.local_addr().unwrap().port();
    let collector = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(collect))
    })
    .listen(listener)
    .unwrap()
    .workers(1)
    .run();
    let collector_handle = collector.handle();
    tokio::spawn(collector);

    let workdir = Workdir::new();
    let endpoint = format!("http://127.0.0.1:{collector_port}");
    let mut service = start_binary(
        &workdir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "ingress-egress-otlp-test"),
            ("GOOGLE_CLOUD_PROJECT", "test-project"),
        ],
    );
    let listening = service.wait_for_log(|line| line["message"] == "ingress-egress listening");
    assert_eq!(
        listening["trace_export"],
        format!("http://127.0.0.1:{collector_port}/v1/traces")
    );
    let published = post_sms(&service, "sms_basic", None).await;
    let trace_id =
        TraceId::from_hex(published["traceId"].as_str().expect("traceId")).expect("a W3C trace id");
    service.terminate();
    let logs = service.log();
    collector_handle.stop(true).await;

    let exports = exports.lock().unwrap().clone();
    assert!(!exports.is_empty(), "nothing was exported");
    let trace_bytes = trace_id.to_bytes();
    let mut found = false;
    for (path, content_type, body) in &exports {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
        let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        if contains(&trace_bytes) {
            found = true;
            assert!(
                contains(b"ingress-egress-otlp-test"),
                "service.name is exported"
            );
            assert!(
                contains(b"POST /webhooks/twilio/sms"),
                "the request span is exported"
            );
        }
    }
    assert!(found, "the webhook's trace was exported");

    let accepted = accepted_lines(&logs)[0];
    assert_eq!(
        accepted["logging.googleapis.com/trace"],
        format!("projects/test-project/traces/{trace_id}")
    );
    assert_eq!(accepted["logging.googleapis.com/trace_sampled"], true);
}

#[tokio::test]
async fn without_span_export_the_binary_still_carries_and_logs_the_trace() {
    let workdir = Workdir::new();
    let mut service = start_binary(&workdir, &[]);
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let continued = post_sms(
        &service,
        "sms_basic",
        Some(&format!("00-{caller_trace}-00f067aa0ba902b7-01")),
    )
    .await;
    let started = post_sms(&service, "sms_empty_body", None).await;
    service.terminate();
    let logs = service.log();

    assert_eq!(
        continued["traceId"], caller_trace,
        "the caller's trace continues into the envelope"
    );
    let new_trace = started["traceId"]
        .as_str()
        .expect("a trace without a caller");
    assert_eq!(new_trace.len(), 32);
    assert!(new_trace.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(new_trace, caller_trace);

    let accepted = accepted_lines(&logs);
    assert_eq!(accepted.len(), 2, "{logs:#?}");
    assert_eq!(accepted[0]["trace_id"], caller_trace);
    assert_eq!(accepted[1]["trace_id"], new_trace);
    for line in accepted {
        assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
    }
}
