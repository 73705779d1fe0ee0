//! `openapi/asyncapi.yaml` against the code and against real traffic: what the service publishes
//! through RabbitMQ validates, payload, AMQP properties and headers, against the document; the
//! document names exactly the topics and event types the code defines; and the service serves
//! it (with the schema files it references) as committed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use ingress_egress::{
    bus::APP_ID,
    configuration::Settings,
    egress::{
        egress_topics,
        events::{DEAD_LETTER_TYPE, STATUS_EVENT_TYPE},
    },
    envelope::{topics, CHAT_MESSAGE_V1},
    routes::event_contract::{ASYNCAPI_PATH, SCHEMAS},
};
use lapin::{message::Delivery, types::AMQPValue};
use serde_json::{json, Map, Value};

use crate::{
    architecture::rust_files,
    egress_support::{egress_app, fake_twilio, reply_to, EgressPublisher},
    helpers::{fixture, spawn_app, BusTap},
    require_broker,
};

/// How long one tap is polled before the next.
const POLL: Duration = Duration::from_millis(200);

fn openapi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi")
}

/// The AsyncAPI document, with its `$ref`s resolvable.
pub struct AsyncApi {
    doc: Value,
}

/// Which message of the document a delivery is, and what it broke.
pub struct Checked {
    pub channel: String,
    pub message: String,
    pub problems: Vec<String>,
}

impl AsyncApi {
    pub fn load() -> Self {
        let text = std::fs::read_to_string(openapi_dir().join("asyncapi.yaml"))
            .expect("openapi/asyncapi.yaml");
        let doc: Value = serde_yaml_ng::from_str(&text).expect("asyncapi.yaml is valid YAML");
        Self { doc }
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// `value` with every `$ref` replaced by what it names: `#/…` within this document, a
    /// relative path a schema file beside it (inlined as is).
    pub fn resolve(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    assert_eq!(map.len(), 1, "$ref with siblings: {value}");
                    return match reference.strip_prefix('#') {
                        Some(pointer) => self.resolve(
                            self.doc
                                .pointer(pointer)
                                .unwrap_or_else(|| panic!("dangling $ref {reference}")),
                        ),
                        None => schema_file(reference),
                    };
                }
                Value::Object(
                    map.iter()
                        .map(|(key, value)| (key.clone(), self.resolve(value)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.resolve(v)).collect()),
            other => other.clone(),
        }
    }

    /// Channel name → address.
    pub fn channels(&self) -> BTreeMap<String, String> {
        self.doc["channels"]
            .as_object()
            .expect("channels")
            .iter()
            .map(|(name, channel)| {
                let address = channel["address"].as_str().expect("address").to_owned();
                (name.clone(), address)
            })
            .collect()
    }

    /// The channel whose address matches `topic` (a parameter matches one dotted segment).
    pub fn channel_for(&self, topic: &str) -> Option<String> {
        self.channels().into_iter().find_map(|(name, address)| {
            let pattern: Vec<&str> = address.split('.').collect();
            let parts: Vec<&str> = topic.split('.').collect();
            let matches = pattern.len() == parts.len()
                && pattern
                    .iter()
                    .zip(&parts)
                    .all(|(p, t)| (p.starts_with('{') && p.ends_with('}')) || p == t);
            matches.then_some(name)
        })
    }

    /// `(operation, resolved operation)` pairs with `action`.
    fn operations(&self, action: &str) -> Vec<(String, Value)> {
        self.doc["operations"]
            .as_object()
            .expect("operations")
            .iter()
            .filter(|(_, op)| op["action"] == action)
            .map(|(name, op)| (name.clone(), op.clone()))
            .collect()
    }

    /// `(channel, message key)` of every message the service publishes (send operations).
    pub fn published_messages(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (_, op) in self.operations("send") {
            for message in op["messages"].as_array().expect("messages") {
                let reference = message["$ref"].as_str().expect("operation message $ref");
                let parts: Vec<&str> = reference.trim_start_matches("#/").split('/').collect();
                assert_eq!(parts.len(), 4, "{reference} names a channel message");
                out.insert((parts[1].to_owned(), parts[3].to_owned()));
            }
        }
        out
    }

    /// The send operation publishing `message` on `channel`.
    fn send_operation(&self, channel: &str, message: &str) -> Value {
        let wanted = format!("#/channels/{channel}/messages/{message}");
        self.operations("send")
            .into_iter()
            .map(|(_, op)| op)
            .find(|op| {
                op["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["$ref"] == wanted.as_str())
            })
            .unwrap_or_else(|| panic!("no send operation for {wanted}"))
    }

    /// Checks one delivery the service published on `topic` (routing key without the prefix)
    /// against the message of the document it claims to be.
    pub fn check(&self, topic: &str, delivery: &Delivery) -> Checked {
        let channel = self
            .channel_for(topic)
            .unwrap_or_else(|| panic!("no channel in asyncapi.yaml for {topic}"));
        let kind = delivery
            .properties
            .kind()
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        let candidates: Vec<String> = self
            .published_messages()
            .into_iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, m)| m)
            .filter(|m| {
                self.doc["channels"][&channel]["messages"][m.as_str()]["$ref"]
                    .as_str()
                    .map(|r| self.resolve(&json!({"$ref": r})))
                    .is_some_and(|message| {
                        message["bindings"]["amqp"]["messageType"] == kind.as_str()
                    })
            })
            .collect();
        assert_eq!(
            candidates.len(),
            1,
            "exactly one published message of type {kind:?} on channel {channel}: {candidates:?}"
        );
        let key = candidates[0].clone();
        let message = self.resolve(&self.doc["channels"][&channel]["messages"][&key]);
        let operation = self.resolve(&self.send_operation(&channel, &key));
        let mut problems = Vec::new();

        let payload: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
        let properties = properties_json(delivery);
        let headers = headers_json(delivery);
        problems.extend(violations(
            "payload",
            &message["payload"]["schema"],
            &payload,
        ));
        problems.extend(violations(
            "properties",
            &message["x-amqp-properties"],
            &properties,
        ));
        problems.extend(violations("headers", &message["headers"], &headers));

        let content_type = message["contentType"]
            .as_str()
            .or_else(|| self.doc["defaultContentType"].as_str());
        if properties["content_type"].as_str() != content_type {
            problems.push(format!("content_type is not {content_type:?}"));
        }
        let binding = &operation["bindings"]["amqp"];
        if properties["delivery_mode"] != binding["deliveryMode"] {
            problems.push(format!("delivery_mode is not {}", binding["deliveryMode"]));
        }
        if binding["timestamp"] == true && properties.get("timestamp").is_none() {
            problems.push("no timestamp although the operation says timestamp: true".into());
        }
        let location = message["correlationId"]["location"]
            .as_str()
            .expect("correlationId location");
        let pointer = location
            .strip_prefix("$message.payload#")
            .expect("correlation id located in the payload");
        if let Some(in_payload) = payload.pointer(pointer) {
            if properties["correlation_id"] != *in_payload {
                problems.push(format!(
                    "correlation_id {} differs from the payload's {in_payload}",
                    properties["correlation_id"]
                ));
            }
        }
        if headers["cloudEvents:id"] != properties["message_id"] {
            problems.push("cloudEvents:id differs from message_id".into());
        }
        if headers["cloudEvents:type"] != properties["type"] {
            problems.push("cloudEvents:type differs from type".into());
        }
        Checked {
            channel,
            message: key,
            problems,
        }
    }
}

/// A payload schema file referenced from the document.
fn schema_file(reference: &str) -> Value {
    let name = reference.trim_start_matches("./");
    assert!(
        !name.contains('/'),
        "payload schemas sit beside the document: {reference}"
    );
    let text = std::fs::read_to_string(openapi_dir().join(name))
        .unwrap_or_else(|e| panic!("{reference}: {e}"));
    assert!(
        !text.contains("\"$ref\""),
        "{reference} must be self-contained (refs inside it are not resolved here)"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{reference}: {e}"))
}

/// Problems of `value` against a (resolved) JSON Schema, draft 7 as the document declares.
pub fn violations(what: &str, schema: &Value, value: &Value) -> Vec<String> {
    assert!(schema.is_object(), "{what}: no schema in the document");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("{what} schema does not compile: {e}"));
    validator
        .iter_errors(value)
        .map(|e| format!("{what}: {e} at {}", e.instance_path))
        .collect()
}

/// The AMQP basic properties a delivery carries, named as in AMQP (`content_type`, …).
pub fn properties_json(delivery: &Delivery) -> Value {
    let p = &delivery.properties;
    let mut out = Map::new();
    let mut text = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            out.insert(name.to_owned(), Value::String(value));
        }
    };
    text(
        "content_type",
        p.content_type().as_ref().map(|v| v.to_string()),
    );
    text(
        "content_encoding",
        p.content_encoding().as_ref().map(|v| v.to_string()),
    );
    text(
        "correlation_id",
        p.correlation_id().as_ref().map(|v| v.to_string()),
    );
    text("reply_to", p.reply_to().as_ref().map(|v| v.to_string()));
    text("expiration", p.expiration().as_ref().map(|v| v.to_string()));
    text("message_id", p.message_id().as_ref().map(|v| v.to_string()));
    text("type", p.kind().as_ref().map(|v| v.to_string()));
    text("user_id", p.user_id().as_ref().map(|v| v.to_string()));
    text("app_id", p.app_id().as_ref().map(|v| v.to_string()));
    text("cluster_id", p.cluster_id().as_ref().map(|v| v.to_string()));
    if let Some(mode) = p.delivery_mode() {
        out.insert("delivery_mode".into(), json!(mode));
    }
    if let Some(priority) = p.priority() {
        out.insert("priority".into(), json!(priority));
    }
    if let Some(timestamp) = p.timestamp() {
        out.insert("timestamp".into(), json!(timestamp));
    }
    Value::Object(out)
}

/// The AMQP application headers as JSON (strings as strings).
pub fn headers_json(delivery: &Delivery) -> Value {
    let mut out = Map::new();
    if let Some(headers) = delivery.properties.headers() {
        for (name, value) in headers.inner() {
            let value = match value {
                AMQPValue::LongString(s) => Value::String(s.to_string()),
                AMQPValue::ShortString(s) => Value::String(s.to_string()),
                AMQPValue::Boolean(b) => Value::Bool(*b),
                other => Value::String(format!("{other:?}")),
            };
            out.insert(name.to_string(), value);
        }
    }
    Value::Object(out)
}

#[tokio::test]
async fn what_the_service_publishes_validates_against_the_asyncapi_document() {
    let amqp = require_broker!();
    let asyncapi = AsyncApi::load();
    let fake = fake_twilio().await;
    let app = egress_app(&amqp, &fake, &[]).await;
    let mut taps: Vec<(&str, BusTap)> = Vec::new();
    for topic in [
        topics::INGRESS,
        topics::EGRESS,
        topics::EGRESS_STATUS,
        topics::DEADLETTER,
    ] {
        taps.push((topic, app.tap(topic).await));
    }

    // Inbound message, Twilio status callback, operator send (and its outcome), and an egress
    // event no connector claims (dead letter and its outcome).
    assert_eq!(app.post_fixture(&fixture("sms_basic")).await.status(), 200);
    assert_eq!(
        app.post_fixture(&fixture("status_delivered"))
            .await
            .status(),
        200
    );
    let operator = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .json(&json!({"to": "+15005550010", "text": "hello from the contract test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(operator.status(), 202);
    let mut unclaimed = reply_to("+15005550011", "nobody sends this");
    unclaimed["egress"]["connector"] = json!("carrier-pigeon");
    let own = EgressPublisher::new(&app).await.publish(&unclaimed).await;

    let published = asyncapi.published_messages();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut checked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !published.is_subset(&seen) && tokio::time::Instant::now() < deadline {
        for (topic, tap) in &mut taps {
            while let Some(delivery) = tap.next(POLL).await {
                let message_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string());
                if message_id.as_deref() == Some(own.as_str()) {
                    continue; // the test's own egress event, not the service's
                }
                let result = asyncapi.check(topic, &delivery);
                assert!(
                    result.problems.is_empty(),
                    "{topic} {:?} breaks the AsyncAPI document: {:#?}\n{}",
                    message_id,
                    result.problems,
                    String::from_utf8_lossy(&delivery.data)
                );
                assert!(
                    crate::helpers::header(&delivery, "traceparent").is_some(),
                    "{topic} {message_id:?} carries no traceparent"
                );
                seen.insert((result.channel, result.message));
                checked += 1;
            }
        }
    }
    let missing: Vec<_> = published.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "no traffic checked for {missing:?} (saw {seen:?})"
    );
    assert!(checked >= published.len());
}

#[test]
fn the_asyncapi_document_matches_the_code() {
    let asyncapi = AsyncApi::load();
    let doc = asyncapi.doc();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // Topics: the code's, every one, and nothing else.
    let instance = format!("{}.{{instanceId}}", topics::EGRESS);
    let expected: BTreeSet<String> = [
        topics::INGRESS,
        topics::EGRESS,
        instance.as_str(),
        topics::EGRESS_STATUS,
        topics::DEADLETTER,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let addresses: BTreeSet<String> = asyncapi.channels().into_values().collect();
    assert_eq!(addresses, expected, "channel addresses");
    for topic in egress_topics("pod-7") {
        let channel = asyncapi
            .channel_for(&topic)
            .expect("egress topic has a channel");
        let consumed = doc["operations"].as_object().unwrap().values().any(|op| {
            op["action"] == "receive" && op["channel"]["$ref"] == format!("#/channels/{channel}")
        });
        assert!(
            consumed,
            "the service consumes {topic}: a receive operation says so"
        );
    }

    // Every versioned name the code defines (topics and event types) is in the document.
    let (code_topics, code_types) = versioned_constants();
    for topic in &code_topics {
        assert!(
            expected.contains(topic),
            "topic {topic} (in src/) is not a channel"
        );
    }
    let doc_types: BTreeSet<String> = doc["components"]["messages"]
        .as_object()
        .unwrap()
        .values()
        .map(|m| {
            m["bindings"]["amqp"]["messageType"]
                .as_str()
                .expect("messageType")
                .to_owned()
        })
        .collect();
    for kind in [CHAT_MESSAGE_V1, STATUS_EVENT_TYPE, DEAD_LETTER_TYPE] {
        assert!(code_types.contains(kind), "{kind} found by the source scan");
    }
    assert_eq!(
        doc_types, code_types,
        "message types in the document vs. src/"
    );
    for message in doc["components"]["messages"].as_object().unwrap().values() {
        assert_eq!(message["name"], message["bindings"]["amqp"]["messageType"]);
    }
    let status_types: BTreeSet<String> = doc["channels"]["egressStatus"]["messages"]
        .as_object()
        .unwrap()
        .values()
        .map(|m| {
            asyncapi.resolve(m)["bindings"]["amqp"]["messageType"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        status_types.len(),
        2,
        "both status event types share their topic"
    );
    assert!(status_types.contains(STATUS_EVENT_TYPE));

    // architecture.yaml names the same payload schemas for the topics it lists.
    let architecture: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("architecture.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let service = &architecture["services"][0];
    assert_eq!(service["topics"]["asyncapi"], "openapi/asyncapi.yaml");
    for topic in service["topics"]["publishes"]
        .as_sequence()
        .expect("publishes")
    {
        let address = topic["name"].as_str().unwrap();
        let channel = asyncapi
            .channel_for(address)
            .expect("a channel for every published topic");
        let files: BTreeSet<String> = doc["channels"][&channel]["messages"]
            .as_object()
            .unwrap()
            .values()
            .map(|m| {
                asyncapi.doc()["components"]["messages"]
                    [m["$ref"].as_str().unwrap().rsplit('/').next().unwrap()]["payload"]["schema"]
                    ["$ref"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("./")
                    .to_owned()
            })
            .collect();
        for key in ["schema", "alsoSchema"] {
            if let Some(schema) = topic[key].as_str() {
                let file = schema
                    .strip_prefix("openapi/")
                    .expect("schemas live in openapi/");
                assert!(
                    files.contains(file),
                    "{address}: {file} not among {files:?}"
                );
            }
        }
    }

    // The exchange as the service declares it, and what it stamps on every message.
    let defaults = Settings::from_vars(Vec::<(String, String)>::new()).unwrap();
    let exchange = &doc["components"]["channelBindings"]["eventsExchange"]["amqp"]["exchange"];
    assert_eq!(exchange["name"], defaults.bus.exchange.as_str());
    assert_eq!(exchange["type"], "topic");
    assert_eq!(exchange["durable"], true);
    let topology = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/bus/amqp/topology.rs"),
    )
    .unwrap();
    assert!(topology.contains("ExchangeKind::Topic") && topology.contains("durable: true"));
    let properties = &doc["components"]["schemas"]["PublishedProperties"]["properties"];
    assert_eq!(properties["app_id"]["const"], APP_ID);
    assert_eq!(properties["delivery_mode"]["const"], 2);

    // Operations reference messages of their own channel; payload files are served.
    for (name, op) in doc["operations"].as_object().unwrap() {
        let channel = op["channel"]["$ref"].as_str().expect("operation channel");
        for message in op["messages"].as_array().unwrap() {
            let reference = message["$ref"].as_str().unwrap();
            assert!(
                reference.starts_with(&format!("{channel}/messages/")),
                "{name}: {reference} is not a message of {channel}"
            );
            assert!(doc.pointer(reference.trim_start_matches('#')).is_some());
        }
    }
    let served: BTreeSet<&str> = SCHEMAS.iter().map(|(name, _)| *name).collect();
    for message in doc["components"]["messages"].as_object().unwrap().values() {
        let file = message["payload"]["schema"]["$ref"]
            .as_str()
            .expect("payload file");
        assert!(
            served.contains(file.trim_start_matches("./")),
            "{file} is not served"
        );
        assert_eq!(
            message["payload"]["schemaFormat"],
            "application/schema+json;version=draft-07"
        );
        let schema = schema_file(file);
        assert_eq!(
            schema["$schema"], "http://json-schema.org/draft-07/schema#",
            "{file}"
        );
    }
}

/// `pub const NAME: &str = "….v<N>";` string literals under `src/`: topics (`internal.…`) and
/// event types (the rest).
fn versioned_constants() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut files = Vec::new();
    rust_files(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let (mut found_topics, mut types) = (BTreeSet::new(), BTreeSet::new());
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for line in source.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("pub const ") else {
                continue;
            };
            let Some((_, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            let value = value.trim_end_matches("\";");
            let versioned = value.rsplit('.').next().is_some_and(|last| {
                last.len() > 1
                    && last.starts_with('v')
                    && last[1..].chars().all(|c| c.is_ascii_digit())
            });
            if !versioned || value.contains(' ') {
                continue;
            }
            if value.starts_with("internal.") {
                found_topics.insert(value.to_owned());
            } else {
                types.insert(value.to_owned());
            }
        }
    }
    (found_topics, types)
}

#[tokio::test]
async fn the_asyncapi_document_and_its_schemas_are_served_as_committed() {
    let app = spawn_app(None, &[]).await;
    let response = app.get(ASYNCAPI_PATH).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    let served = response.text().await.unwrap();
    let committed = std::fs::read_to_string(openapi_dir().join("asyncapi.yaml")).unwrap();
    assert_eq!(served, committed);

    // Relative references resolve against the served document's URL.
    let base = url::Url::parse(&format!("{}{ASYNCAPI_PATH}", app.address)).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&served).unwrap();
    let mut files = BTreeSet::new();
    for message in doc["components"]["messages"].as_object().unwrap().values() {
        files.insert(
            message["payload"]["schema"]["$ref"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(files.len(), SCHEMAS.len());
    for file in files {
        let url = base.join(&file).unwrap();
        let response = app.client.get(url.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "application/schema+json"
        );
        let body = response.text().await.unwrap();
        let committed =
            std::fs::read_to_string(openapi_dir().join(file.trim_start_matches("./"))).unwrap();
        assert_eq!(body, committed, "{url}");
    }

    // Swagger UI's description links to it.
    let openapi = app.openapi_document().await;
    let description = openapi["info"]["description"].as_str().unwrap();
    assert!(
        description.contains(&format!("]({ASYNCAPI_PATH})")),
        "{description}"
    );
}
