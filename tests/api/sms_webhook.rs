//! `POST /webhooks/twilio/sms` end to end: signed fixtures in, envelopes on RabbitMQ out.

use std::{collections::BTreeSet, time::Duration};

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::helpers::{all_fixtures, fixture, header, spawn_app, spawn_app_not_ready};
use crate::require_broker;
use ingress_egress::envelope::{stable_correlation_id, topics};

const QUIET: Duration = Duration::from_millis(700);

fn envelope_schema() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/openapi/internal-event-v2.schema.json"
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

pub fn assert_valid_envelope(envelope: &Value) {
    let validator = envelope_schema();
    let errors: Vec<String> = validator
        .iter_errors(envelope)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "envelope violates the schema: {errors:#?}\n{envelope:#}"
    );
}

#[tokio::test]
async fn a_signed_sms_is_published_as_an_internal_event_with_all_properties() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let sms = fixture("sms_basic");

    let response = app.post_fixture(&sms).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    assert!(response.text().await.unwrap().contains("<Response/>"));

    let (delivery, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    let param = |name: &str| sms.param(name);
    let sid = param("MessageSid");
    let from = param("From");

    // Envelope (DESIGN §3.1).
    assert_eq!(envelope["v"], "2");
    assert_eq!(envelope["type"], "chat.message.v1");
    assert_eq!(
        envelope["correlationId"],
        stable_correlation_id(&format!("twilio:{sid}")).to_string()
    );
    assert_eq!(envelope["ingress"]["source"], "ingress.twilio");
    assert_eq!(envelope["ingress"]["connector"], "twilio");
    assert_eq!(envelope["ingress"]["channel"], from.as_str());
    let ingress_at =
        chrono::DateTime::parse_from_rfc3339(envelope["ingress"]["ingressAt"].as_str().unwrap())
            .unwrap();
    assert!(
        (chrono::Utc::now() - ingress_at.to_utc())
            .num_seconds()
            .abs()
            < 60
    );
    assert_eq!(envelope["identity"]["external"]["id"], from.as_str());
    assert_eq!(envelope["identity"]["external"]["platform"], "twilio");
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["channelType"],
        "sms"
    );
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["fromCountry"],
        param("FromCountry").as_str()
    );
    assert_eq!(envelope["egress"]["destination"], "internal.egress.v1");
    assert_eq!(envelope["egress"]["connector"], "twilio");
    assert_eq!(envelope["egress"]["type"], "chat");
    assert_eq!(envelope["egress"]["channel"], from.as_str());
    assert_eq!(
        envelope["egress"]["metadata"]["twilio"]["from"],
        param("To").as_str()
    );
    assert_eq!(
        envelope["egress"]["metadata"]["twilio"]["messagingServiceSid"],
        param("MessagingServiceSid").as_str()
    );
    assert_eq!(envelope["message"]["id"], sid.as_str());
    assert_eq!(envelope["message"]["role"], "user");
    assert_eq!(envelope["message"]["text"], param("Body").as_str());
    for (key, value) in &sms.params {
        assert_eq!(
            envelope["message"]["rawPlatformPayload"][key],
            value.as_str(),
            "raw field {key}"
        );
    }
    assert_eq!(
        envelope["routing"],
        serde_json::json!({"stage": "initial", "slip": [], "history": []})
    );

    // AMQP properties and CloudEvents headers (DESIGN §3.3).
    let props = &delivery.properties;
    assert_eq!(delivery.routing_key.as_str(), "internal.ingress.v1");
    assert_eq!(delivery.exchange.as_str(), app.exchange);
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        format!("twilio:{sid}")
    );
    assert_eq!(
        props.correlation_id().as_ref().unwrap().as_str(),
        envelope["correlationId"].as_str().unwrap()
    );
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "chat.message.v1");
    assert_eq!(props.app_id().as_ref().unwrap().as_str(), "ingress-egress");
    let timestamp = props.timestamp().expect("timestamp") as i64;
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    assert_eq!(
        header(&delivery, "cloudEvents:specversion").as_deref(),
        Some("1.0")
    );
    assert_eq!(
        header(&delivery, "cloudEvents:id"),
        Some(format!("twilio:{sid}"))
    );
    assert_eq!(
        header(&delivery, "cloudEvents:source").as_deref(),
        Some("ingress.twilio")
    );
    assert_eq!(
        header(&delivery, "cloudEvents:type").as_deref(),
        Some("chat.message.v1")
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(&header(&delivery, "cloudEvents:time").unwrap())
            .is_ok()
    );

    assert!(tap.next(QUIET).await.is_none(), "exactly one message");
}

#[tokio::test]
async fn mms_media_unicode_and_whatsapp_fixtures_are_carried_through() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;

    let mms = fixture("mms_three_media");
    assert_eq!(app.post_fixture(&mms).await.status(), 200);
    let (_, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["channelType"],
        "mms"
    );
    let media = envelope["message"]["media"].as_array().unwrap();
    assert_eq!(media.len(), 3);
    let types: Vec<&str> = media
        .iter()
        .map(|m| m["contentType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["image/jpeg", "image/png", "video/mp4"]);
    for (i, item) in media.iter().enumerate() {
        let url = &mms
            .params
            .iter()
            .find(|(k, _)| *k == format!("MediaUrl{i}"))
            .unwrap()
            .1;
        assert_eq!(item["url"], url.as_str());
        assert!(item["sid"].as_str().unwrap().starts_with("ME"));
    }

    let unicode = fixture("sms_unicode_emoji");
    assert_eq!(app.post_fixture(&unicode).await.status(), 200);
    let (_, envelope) = tap.next_json().await;
    let body = &unicode.params.iter().find(|(k, _)| k == "Body").unwrap().1;
    assert_eq!(envelope["message"]["text"], body.as_str());

    let whatsapp = fixture("sms_whatsapp");
    assert_eq!(app.post_fixture(&whatsapp).await.status(), 200);
    let (_, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["channelType"],
        "whatsapp"
    );
    assert!(envelope["ingress"]["channel"]
        .as_str()
        .unwrap()
        .starts_with("whatsapp:+"));
    assert!(envelope["identity"]["external"]["displayName"].is_string());
}

#[tokio::test]
async fn an_sms_webhook_configured_with_get_is_published_like_post() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    for name in ["sms_get", "sms_get_configured_query"] {
        let get = fixture(name);
        assert_eq!(get.method, "GET");
        let response = app.post_fixture(&get).await;
        assert_eq!(response.status(), 200, "{name}");
        assert!(response.text().await.unwrap().contains("<Response/>"));
        let (delivery, envelope) = tap.next_json().await;
        assert_valid_envelope(&envelope);
        let param = |key: &str| get.params.iter().find(|(k, _)| k == key).unwrap().1.clone();
        assert_eq!(
            delivery.properties.message_id().as_ref().unwrap().as_str(),
            format!("twilio:{}", param("MessageSid"))
        );
        assert_eq!(envelope["message"]["text"], param("Body").as_str());
        assert_eq!(envelope["ingress"]["channel"], param("From").as_str());
        assert_eq!(
            envelope["egress"]["metadata"]["twilio"]["from"],
            param("To").as_str()
        );
        for (key, value) in &get.params {
            assert_eq!(
                envelope["message"]["rawPlatformPayload"][key],
                value.as_str(),
                "{name}: raw field {key}"
            );
        }
    }

    let tampered = fixture("sms_get_tampered_query");
    assert!(!tampered.expect_valid);
    let response = app.post_fixture(&tampered).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_signature");
    // The signature of a GET covers the query, not a body: sent as a POST form it fails.
    let get = fixture("sms_get");
    let as_post = app
        .client
        .post(format!("{}/webhooks/twilio/sms", app.address))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", &get.signature)
        .body(serde_urlencoded::to_string(&get.params).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(as_post.status(), 403);
    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn a_service_behind_an_ipv6_literal_accepts_twilios_signatures() {
    let amqp = require_broker!();
    let host = fixture("sms_ipv6_host");
    assert_eq!(host.public_base_url, "https://[2001:db8::10]");
    let app = spawn_app(Some(&amqp), &[("PUBLIC_BASE_URL", &host.public_base_url)]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    for name in ["sms_ipv6_host", "sms_ipv6_signed_with_port"] {
        let response = app.post_fixture(&fixture(name)).await;
        assert_eq!(response.status(), 200, "{name}");
    }
    assert_eq!(tap.collect_until_quiet(QUIET).await.len(), 2);
    // A request Twilio signed for another host is still refused.
    assert_eq!(app.post_fixture(&fixture("sms_basic")).await.status(), 403);
}

/// Every SMS-route fixture, posted to a service configured with that fixture's public URL:
/// the valid ones are published, the tampered ones are refused with 403 and publish nothing.
#[tokio::test]
async fn every_sms_fixture_is_accepted_or_refused_as_twilios_library_says() {
    let amqp = require_broker!();
    let fixtures: Vec<_> = all_fixtures()
        .into_iter()
        .filter(|f| f.path_and_query.starts_with("/webhooks/twilio/sms"))
        .collect();
    assert!(fixtures.len() >= 15);
    let base_urls: BTreeSet<String> = fixtures.iter().map(|f| f.public_base_url.clone()).collect();
    for base_url in base_urls {
        let app = spawn_app(Some(&amqp), &[("PUBLIC_BASE_URL", &base_url)]).await;
        let mut tap = app.tap(topics::INGRESS).await;
        let mut expected_ids = BTreeSet::new();
        for fixture in fixtures.iter().filter(|f| f.public_base_url == base_url) {
            let response = app.post_fixture(fixture).await;
            let status = response.status().as_u16();
            if fixture.expect_valid {
                assert_eq!(
                    status,
                    200,
                    "{} should be accepted: {}",
                    fixture.name,
                    response.text().await.unwrap()
                );
                let sid = fixture
                    .params
                    .iter()
                    .find(|(k, _)| k == "MessageSid")
                    .unwrap()
                    .1
                    .clone();
                expected_ids.insert(format!("twilio:{sid}"));
            } else {
                assert_eq!(status, 403, "{} should be refused", fixture.name);
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "bad_signature");
            }
        }
        let published: BTreeSet<String> = tap
            .collect_until_quiet(QUIET)
            .await
            .iter()
            .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
            .collect();
        assert_eq!(published, expected_ids, "published set for {base_url}");
    }
}

#[tokio::test]
async fn a_twilio_retry_of_the_same_message_is_answered_but_published_once() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let sms = fixture("sms_basic");
    for _ in 0..3 {
        assert_eq!(app.post_fixture(&sms).await.status(), 200);
    }
    let published = tap.collect_until_quiet(QUIET).await;
    assert_eq!(published.len(), 1);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            r#"ingress_egress_webhook_requests_total{connector="twilio",outcome="duplicate",route="sms"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_requests_get_the_right_status_and_publish_nothing() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[("MAX_BODY_BYTES", "4096")]).await;
    let mut tap = app.tap("#").await;
    let sms = fixture("sms_basic");
    let url = format!("{}/webhooks/twilio/sms", app.address);
    let post = |content_type: &'static str, signature: Option<&str>, body: String| {
        let mut request = app
            .client
            .post(&url)
            .header("Content-Type", content_type)
            .body(body);
        if let Some(signature) = signature {
            request = request.header("X-Twilio-Signature", signature.to_owned());
        }
        request.send()
    };
    let code = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON error body");
        (status, body["error"]["code"].as_str().unwrap().to_owned())
    };

    // Missing signature.
    let r = post("application/x-www-form-urlencoded", None, sms.body.clone())
        .await
        .unwrap();
    assert_eq!(code(r).await, (403, "bad_signature".into()));
    // Wrong content type.
    let r = post("application/json", Some(&sms.signature), sms.body.clone())
        .await
        .unwrap();
    assert_eq!(code(r).await, (415, "unsupported_media_type".into()));
    // Too large (declared length and streamed).
    let r = post(
        "application/x-www-form-urlencoded",
        Some(&sms.signature),
        "a=".repeat(5000),
    )
    .await
    .unwrap();
    assert_eq!(code(r).await, (413, "payload_too_large".into()));
    // Bytes that are not UTF-8 decode lossily and then fail the signature.
    let r = post(
        "application/x-www-form-urlencoded",
        Some(&sms.signature),
        "Body=%FF%FE".into(),
    )
    .await
    .unwrap();
    assert_eq!(code(r).await, (403, "bad_signature".into()));
    // Correctly signed but not a message webhook (no MessageSid): 400.
    let tokens = crate::helpers::fixture_tokens();
    let params = vec![
        ("From".to_owned(), "+14155550100".to_owned()),
        ("To".to_owned(), "+15005550006".to_owned()),
    ];
    let signature = ingress_egress::connectors::twilio::ingress::signature::compute_signature(
        &tokens.primary_auth_token,
        &format!("{}/webhooks/twilio/sms", tokens.public_base_url),
        &params,
    );
    let r = post(
        "application/x-www-form-urlencoded",
        Some(&signature),
        serde_urlencoded::to_string(&params).unwrap(),
    )
    .await
    .unwrap();
    let (status, code_name) = code(r).await;
    assert_eq!((status, code_name.as_str()), (400, "bad_request"));

    assert!(
        tap.collect_until_quiet(QUIET).await.is_empty(),
        "nothing may be published"
    );
}

/// Random bodies, content types and signatures: never a 5xx, never a publish, and the service
/// stays healthy.
#[tokio::test]
async fn random_requests_never_panic_and_never_publish() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap("#").await;
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sms = fixture("sms_basic");
    let content_types = [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "",
    ];
    let paths = [
        "/webhooks/twilio/sms",
        "/webhooks/twilio/sms?x=1",
        "/webhooks/twilio/sms/../sms",
    ];
    for i in 0..300 {
        let body: Vec<u8> = match i % 4 {
            0 => (0..rng.random_range(0..2048))
                .map(|_| rng.random())
                .collect(),
            1 => {
                // Mutate a real signed body by one byte.
                let mut bytes = sms.body.clone().into_bytes();
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
                bytes
            }
            2 => format!(
                "MessageSid=SM{i}&From=%2B1555&To=%2B1666&Body={}&NumMedia={}",
                "x".repeat(i),
                rng.random::<i32>()
            )
            .into_bytes(),
            _ => (0..rng.random_range(0..64))
                .map(|_| *b"=&%+a".get(rng.random_range(0..5)).unwrap())
                .collect(),
        };
        let signature: String = match i % 3 {
            0 => sms.signature.clone(),
            1 => (0..rng.random_range(0..40))
                .map(|_| rng.random_range(b'!'..=b'~') as char)
                .collect(),
            _ => String::new(),
        };
        let mut request = app
            .client
            .post(format!("{}{}", app.address, paths[i % paths.len()]))
            .body(body);
        let content_type = content_types[rng.random_range(0..content_types.len())];
        if !content_type.is_empty() {
            request = request.header("Content-Type", content_type);
        }
        if !signature.is_empty() {
            request = request.header("X-Twilio-Signature", signature);
        }
        let response = request.send().await.expect("the service answers");
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "request {i} got {status}");
    }
    assert!(
        tap.collect_until_quiet(QUIET).await.is_empty(),
        "random input was published"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn readyz_reports_the_broker_and_metrics_are_prometheus_text() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["broker"], "connected");
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/livez").await.status(), 200);
    app.post_fixture(&fixture("sms_basic")).await;
    let response = app.get("/metrics").await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(text.contains("# TYPE ingress_egress_webhook_duration_seconds histogram"));
    assert!(
        text.contains(
            r#"ingress_egress_webhook_requests_total{connector="twilio",outcome="published",route="sms"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("ingress_egress_outbox_depth 0"));
    assert!(text.contains("ingress_egress_broker_connected 1"));
}

#[tokio::test]
async fn readyz_is_503_while_the_broker_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let app = spawn_app_not_ready(Some(&url), &[]).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["broker"], "connecting");
}
