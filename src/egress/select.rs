//! What an egress event asks us to send (DESIGN §3.2): parse the bytes, check the connector,
//! pick the text (selected candidate, else the best candidate, else an assistant/system
//! message), the media and the recipient. Pure functions; no I/O.
//!
//! Anything we cannot act on becomes a [`Rejection`] whose `reason` is the dead-letter reason:
//! `invalid_json`, `missing_egress`, `invalid_envelope`, `unknown_connector`, `no_text`,
//! `invalid_target`.

use std::{borrow::Cow, cmp::Ordering};

use serde_json::Value;

use super::sink::InvalidTarget;
use crate::envelope::{Candidate, CandidateStatus, InternalEventV2, Media};

/// Why an event cannot be sent; `reason` is stable (it goes into the dead letter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What to send and to whom.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub target: String,
    pub text: Option<String>,
    pub media: Vec<Media>,
    /// The candidate the text came from, if any.
    pub candidate_id: Option<String>,
}

/// The event as far as it could be read: the JSON value (for the dead letter) and, when it is a
/// valid envelope, the typed event. A valid envelope is read straight into its type, without
/// the JSON value (whoever needs that reads it from the bytes: [`Parsed::value_of`]).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub json: Option<Value>,
    pub event: Option<Box<InternalEventV2>>,
}

impl Parsed {
    /// A string at `pointer` (e.g. `/correlationId`) of the JSON, however malformed the rest.
    pub fn field(&self, pointer: &str) -> Option<String> {
        self.json
            .as_ref()
            .and_then(|json| json.pointer(pointer))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

impl Parsed {
    /// The consumed event as JSON, for a dead letter: its value, else (an unreadable body) its
    /// text.
    pub fn value_of(body: &[u8]) -> Value {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    }
}

/// Parses an egress event and checks it is addressed to one of the `connectors` that have a
/// sink.
pub fn parse(body: &[u8], connectors: &[&str]) -> (Parsed, Result<(), Rejection>) {
    // The common case, a valid envelope for a connector we serve, in one pass and without the
    // intermediate JSON value; anything else takes the long way, which names what is wrong.
    if let Ok(event) = serde_json::from_slice::<InternalEventV2>(body) {
        if connectors.contains(&event.egress.connector.as_str()) {
            let parsed = Parsed {
                json: None,
                event: Some(Box::new(event)),
            };
            return (parsed, Ok(()));
        }
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(error) => {
            return (
                Parsed {
                    json: None,
                    event: None,
                },
                Err(Rejection::new("invalid_json", error.to_string())),
            )
        }
    };
    let egress = json.get("egress");
    let check = match egress {
        None | Some(Value::Null) => Err(Rejection::new(
            "missing_egress",
            "the event has no `egress` object",
        )),
        Some(egress) if !egress.is_object() => Err(Rejection::new(
            "missing_egress",
            "`egress` is not an object",
        )),
        Some(egress) => match egress.get("connector").and_then(Value::as_str) {
            None => Err(Rejection::new(
                "invalid_envelope",
                "`egress.connector` is missing",
            )),
            Some(other) if !connectors.contains(&other) => Err(Rejection::new(
                "unknown_connector",
                format!("egress.connector is {other:?}; this service delivers {connectors:?}"),
            )),
            Some(_) => Ok(()),
        },
    };
    if let Err(rejection) = check {
        return (
            Parsed {
                json: Some(json),
                event: None,
            },
            Err(rejection),
        );
    }
    match serde_json::from_value::<InternalEventV2>(json.clone()) {
        Ok(event) => (
            Parsed {
                json: Some(json),
                event: Some(Box::new(event)),
            },
            Ok(()),
        ),
        Err(error) => (
            Parsed {
                json: Some(json),
                event: None,
            },
            Err(Rejection::new("invalid_envelope", error.to_string())),
        ),
    }
}

/// Picks text, media and target. `check_target` is the sink's address validation.
pub fn select(
    event: &InternalEventV2,
    check_target: impl Fn(&str) -> Result<(), InvalidTarget>,
) -> Result<Selection, Rejection> {
    let candidate = best_candidate(event.candidates.as_deref().unwrap_or_default());
    let reply_message = event
        .message
        .as_ref()
        .filter(|m| m.role == "assistant" || m.role == "system");

    let (text, candidate_id) = match candidate {
        Some(candidate) => (
            non_blank(candidate.text.as_deref()),
            Some(candidate.id.clone()),
        ),
        None => (
            reply_message.and_then(|m| non_blank(m.text.as_deref())),
            None,
        ),
    };
    let mut media = candidate.map(candidate_media).unwrap_or_default();
    if media.is_empty() {
        if let Some(message) = reply_message {
            media = message
                .media
                .iter()
                .filter(|m| m.url.is_some() || m.sid.is_some())
                .cloned()
                .collect();
        }
    }
    if text.is_none() && media.is_empty() {
        return Err(Rejection::new(
            "no_text",
            "no selected or proposed candidate with text, no assistant/system message text, and no media",
        ));
    }

    let target = recipient(event)
    .ok_or_else(|| Rejection::new("invalid_target", "no recipient: egress.channel, ingress.channel (or identity.external.id for dm) are empty"))?;
    check_target(&target).map_err(|problem| Rejection::new("invalid_target", problem.0))?;

    Ok(Selection {
        target,
        text,
        media,
        candidate_id,
    })
}

/// Whom the event is for: `egress.channel`, else `ingress.channel`; `identity.external.id`
/// for a `dm`.
fn recipient(event: &InternalEventV2) -> Option<String> {
    recipient_from(
        &event.egress.kind,
        &event.identity.external.id,
        event.egress.channel.as_deref(),
        &event.ingress.channel,
    )
}

/// A `dm` goes to the person; anything else to the egress channel, else back where the
/// message came from.
fn recipient_from(
    kind: &str,
    person: &str,
    egress_channel: Option<&str>,
    ingress_channel: &str,
) -> Option<String> {
    if kind == "dm" {
        non_blank(Some(person))
    } else {
        non_blank(egress_channel).or_else(|| non_blank(Some(ingress_channel)))
    }
}

/// The recipient of an egress event as raw bytes, before it is consumed: what egress
/// partitions are chosen by (every event for one recipient lands in one partition). `None`
/// when the event cannot be read; its consumer dead-letters it wherever it lands.
///
/// The router runs this for every event of every instance, so it reads only the three fields
/// [`recipient`] looks at, borrowed from the body, and skips the rest.
pub fn partition_key(body: &[u8]) -> Option<String> {
    let view: RecipientView = serde_json::from_slice(body).ok()?;
    recipient_from(
        &view.egress.kind,
        &view.identity.external.id,
        view.egress.channel.as_deref(),
        &view.ingress.channel,
    )
}

/// What [`recipient`] reads of an event (field names as in [`InternalEventV2`]).
#[derive(serde::Deserialize)]
struct RecipientView<'a> {
    #[serde(borrow)]
    ingress: ChannelView<'a>,
    #[serde(borrow)]
    identity: IdentityView<'a>,
    #[serde(borrow)]
    egress: EgressView<'a>,
}

#[derive(serde::Deserialize)]
struct ChannelView<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct IdentityView<'a> {
    #[serde(borrow)]
    external: IdView<'a>,
}

#[derive(serde::Deserialize)]
struct IdView<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct EgressView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
}

/// The `selected` candidate; else the best `proposed` one: lowest priority, then highest
/// confidence, then earliest `createdAt`, then id. Candidates without text or media don't count.
pub fn best_candidate(candidates: &[Candidate]) -> Option<&Candidate> {
    let usable =
        |c: &&Candidate| non_blank(c.text.as_deref()).is_some() || !candidate_media(c).is_empty();
    let selected = candidates
        .iter()
        .filter(|c| c.status == CandidateStatus::Selected)
        .filter(usable)
        .min_by(|a, b| rank(a, b));
    selected.or_else(|| {
        candidates
            .iter()
            .filter(|c| c.status == CandidateStatus::Proposed)
            .filter(usable)
            .min_by(|a, b| rank(a, b))
    })
}

fn rank(a: &Candidate, b: &Candidate) -> Ordering {
    let confidence = |c: &Candidate| c.confidence.filter(|v| !v.is_nan()).unwrap_or(f64::MIN);
    a.priority
        .cmp(&b.priority)
        .then_with(|| confidence(b).total_cmp(&confidence(a)))
        .then_with(|| a.created_at.cmp(&b.created_at))
        .then_with(|| a.id.cmp(&b.id))
}

/// Media a candidate carries in `metadata.media` (objects like the envelope's media, or plain
/// URL strings) or `metadata.mediaUrls`.
fn candidate_media(candidate: &Candidate) -> Vec<Media> {
    let Some(metadata) = candidate.metadata.as_ref() else {
        return Vec::new();
    };
    let list = metadata
        .get("media")
        .or_else(|| metadata.get("mediaUrls"))
        .and_then(Value::as_array);
    list.map(|items| {
        items
            .iter()
            .filter_map(|item| match item {
                Value::String(url) if !url.trim().is_empty() => Some(Media {
                    url: Some(url.trim().to_owned()),
                    sid: None,
                    content_type: None,
                    size: None,
                    filename: None,
                }),
                Value::Object(_) => serde_json::from_value::<Media>(item.clone())
                    .ok()
                    .filter(|m| m.url.is_some() || m.sid.is_some()),
                _ => None,
            })
            .collect()
    })
    .unwrap_or_default()
}

fn non_blank(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(extra: Value) -> Value {
        let mut base = json!({
            "v": "2",
            "correlationId": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "type": "chat.message.v1",
            "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "ingress.twilio", "connector": "twilio", "channel": "+14155550100"},
            "identity": {"external": {"id": "+14155550199", "platform": "twilio"}},
            "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat"},
            "routing": {"stage": "responded", "slip": [], "history": []}
        });
        merge(&mut base, extra);
        base
    }

    fn merge(base: &mut Value, extra: Value) {
        if let (Value::Object(base), Value::Object(extra)) = (base, extra) {
            for (k, v) in extra {
                match base.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        base.insert(k, v);
                    }
                }
            }
        }
    }

    fn candidate(
        id: &str,
        status: &str,
        priority: i64,
        confidence: Option<f64>,
        at: &str,
        text: &str,
    ) -> Value {
        let mut c = json!({"id": id, "kind": "text", "source": "llm", "createdAt": at,
                           "status": status, "priority": priority, "text": text});
        if let Some(confidence) = confidence {
            c["confidence"] = json!(confidence);
        }
        c
    }

    fn run(value: Value) -> Result<Selection, Rejection> {
        let body = serde_json::to_vec(&value).unwrap();
        let (parsed, check) = parse(&body, &["twilio"]);
        check?;
        select(parsed.event.as_ref().unwrap(), |t| {
            if t.starts_with('+') || t.starts_with("CH") {
                Ok(())
            } else {
                Err(InvalidTarget(format!("bad target {t}")))
            }
        })
    }

    #[test]
    fn the_selected_candidate_wins_over_better_ranked_ones() {
        let s = run(event(json!({"candidates": [
            candidate("a", "proposed", 0, Some(0.99), "2026-01-01T00:00:00Z", "proposed"),
            candidate("b", "selected", 9, Some(0.1), "2026-01-01T00:00:09Z", "chosen"),
        ]})))
        .unwrap();
        assert_eq!(s.text.as_deref(), Some("chosen"));
        assert_eq!(s.candidate_id.as_deref(), Some("b"));
    }

    #[test]
    fn otherwise_priority_then_confidence_then_created_at() {
        let at = "2026-01-01T00:00:00Z";
        let later = "2026-01-01T00:00:05Z";
        let pick = |candidates: Value| {
            run(event(json!({ "candidates": candidates })))
                .unwrap()
                .text
                .unwrap()
        };
        assert_eq!(
            pick(json!([
                candidate("a", "proposed", 2, Some(0.9), at, "p2"),
                candidate("b", "proposed", 1, Some(0.1), at, "p1")
            ])),
            "p1"
        );
        assert_eq!(
            pick(json!([
                candidate("a", "proposed", 1, Some(0.5), at, "low"),
                candidate("b", "proposed", 1, Some(0.8), at, "high")
            ])),
            "high"
        );
        assert_eq!(
            pick(json!([
                candidate("a", "proposed", 1, Some(0.5), later, "late"),
                candidate("b", "proposed", 1, Some(0.5), at, "early")
            ])),
            "early"
        );
        // Rejected and superseded candidates never speak; missing confidence ranks last.
        assert_eq!(
            pick(json!([
                candidate("a", "rejected", 0, Some(1.0), at, "no"),
                candidate("b", "superseded", 0, Some(1.0), at, "no"),
                candidate("c", "proposed", 1, None, at, "none"),
                candidate("d", "proposed", 1, Some(0.0), at, "zero")
            ])),
            "zero"
        );
        // Deterministic whatever the input order.
        let forward = json!([
            candidate("x", "proposed", 1, Some(0.5), at, "x"),
            candidate("y", "proposed", 1, Some(0.5), at, "y")
        ]);
        let backward = json!([
            candidate("y", "proposed", 1, Some(0.5), at, "y"),
            candidate("x", "proposed", 1, Some(0.5), at, "x")
        ]);
        assert_eq!(pick(forward), pick(backward));
    }

    #[test]
    fn falls_back_to_an_assistant_message_but_never_echoes_the_user() {
        let s = run(event(
            json!({"message": {"id": "m1", "role": "assistant", "text": "hi there"}}),
        ))
        .unwrap();
        assert_eq!(s.text.as_deref(), Some("hi there"));
        let err = run(event(
            json!({"message": {"id": "m1", "role": "user", "text": "echo?",
            "media": [{"url": "https://example.com/cat.jpg"}]}}),
        ))
        .unwrap_err();
        assert_eq!(err.reason, "no_text");
    }

    #[test]
    fn media_alone_is_enough() {
        let s = run(event(json!({"message": {"id": "m1", "role": "assistant",
            "media": [{"url": "https://example.com/a.png", "contentType": "image/png"}]}})))
        .unwrap();
        assert_eq!(s.text, None);
        assert_eq!(s.media.len(), 1);
        let s = run(event(json!({"candidates": [{"id": "c", "kind": "image", "source": "bot", "createdAt": "2026-01-01T00:00:00Z",
            "status": "selected", "priority": 1, "metadata": {"mediaUrls": ["https://example.com/b.png"]}}]}))).unwrap();
        assert_eq!(s.media[0].url.as_deref(), Some("https://example.com/b.png"));
    }

    #[test]
    fn targets_come_from_egress_then_ingress_channel_or_the_identity_for_dm() {
        let s = run(event(
            json!({"egress": {"channel": "CH0123456789abcdef0123456789abcdef"},
            "message": {"id": "m", "role": "assistant", "text": "t"}}),
        ))
        .unwrap();
        assert_eq!(s.target, "CH0123456789abcdef0123456789abcdef");
        let s = run(event(
            json!({"message": {"id": "m", "role": "assistant", "text": "t"}}),
        ))
        .unwrap();
        assert_eq!(s.target, "+14155550100");
        let s = run(event(
            json!({"egress": {"type": "dm", "channel": "CH0123456789abcdef0123456789abcdef"},
            "message": {"id": "m", "role": "assistant", "text": "t"}}),
        ))
        .unwrap();
        assert_eq!(s.target, "+14155550199");
        let err = run(event(json!({"egress": {"channel": "nonsense"}, "message": {"id": "m", "role": "assistant", "text": "t"}}))).unwrap_err();
        assert_eq!(err.reason, "invalid_target");
    }

    #[test]
    fn malformed_events_are_named() {
        let reason = |body: &[u8]| parse(body, &["twilio"]).1.unwrap_err().reason;
        assert_eq!(reason(b"{not json"), "invalid_json");
        assert_eq!(reason(br#"{"v":"2"}"#), "missing_egress");
        let mut e = event(json!({}));
        e["egress"]["connector"] = json!("discord");
        assert_eq!(
            reason(&serde_json::to_vec(&e).unwrap()),
            "unknown_connector"
        );
        let mut e = event(json!({}));
        e.as_object_mut().unwrap().remove("identity");
        assert_eq!(reason(&serde_json::to_vec(&e).unwrap()), "invalid_envelope");
    }

    #[test]
    fn the_partition_key_is_the_recipient_the_consumer_reads() {
        let cases = [
            event(json!({})),
            event(json!({"egress": {"channel": "CH00000000000000000000000000000001"}})),
            event(json!({"egress": {"channel": "  "}})),
            event(json!({"egress": {"type": "dm"}})),
            event(
                json!({"egress": {"type": "dm"}, "identity": {"external": {"id": "whatsapp:+1é"}}}),
            ),
            event(json!({"ingress": {"channel": "+1415\"5550100"}})),
        ];
        for case in cases {
            let body = serde_json::to_vec(&case).unwrap();
            let full: InternalEventV2 = serde_json::from_slice(&body).unwrap();
            assert_eq!(partition_key(&body), recipient(&full), "{case}");
        }
        assert_eq!(partition_key(b"not json"), None);
        assert_eq!(partition_key(br#"{"egress": {}}"#), None);
    }
}
