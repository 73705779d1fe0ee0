//! The emulated Twilio: what the fake remembers (requests, violations, scripted replies,
//! created resources) and how it answers a conformant request: scripted replies, creates with
//! Twilio's idempotency-token replay and its conflict and length errors, the message list, and
//! spec-shaped resources with plausible values.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
};

use actix_web::{http::StatusCode, HttpResponse};
use serde_json::{json, Map, Value};

use super::{
    spec::{response_properties, success_response},
    RecordedRequest, Reply, Route,
};

/// Shared by the server's handler and the [`FakeTwilio`](super::FakeTwilio) handle the test
/// holds.
pub(super) struct State {
    pub(super) username: String,
    pub(super) password: String,
    pub(super) account_sid: String,
    inner: Mutex<Inner>,
}

impl State {
    pub(super) fn new(username: &str, password: &str) -> State {
        State {
            username: username.to_owned(),
            password: password.to_owned(),
            account_sid: account_sid_for(username),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Behind one mutex, so recording a request and taking its scripted reply is one step.
#[derive(Default)]
pub(super) struct Inner {
    pub(super) requests: Vec<RecordedRequest>,
    pub(super) violations: Vec<String>,
    pub(super) queues: HashMap<Route, VecDeque<Reply>>,
    pub(super) created: Vec<RecordedRequest>,
    /// (route, path, token) → the answer of the create that succeeded with it.
    idempotent: HashMap<(Route, String, String), (u16, Value)>,
    /// (conversation as in the path, identity) → participant SID.
    pub(super) participants: HashMap<(String, String), String>,
    /// conversation as in the path → next message index.
    message_index: HashMap<String, i64>,
    /// `I-Twilio-Idempotency-Token` replay switched on (Twilio has none: tests opt in).
    pub(super) idempotency_replay: bool,
    /// Every Messages resource created, oldest first (what ListMessages lists).
    pub(super) messages: Vec<Value>,
    /// Every conversation message created, oldest first (what ListConversationMessages lists).
    pub(super) conversation_messages: Vec<Value>,
    /// Media Content Service media: SID → content type.
    pub(super) mcs_media: HashMap<String, String>,
    /// Message SID → its Media resources (what ListMedia lists).
    pub(super) media: HashMap<String, Vec<Value>>,
}

/// A status, extra headers and a JSON body: what the server sends back.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Value,
}

impl Answer {
    pub(super) fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub(super) fn into_response(self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = HttpResponse::build(status);
        builder.insert_header(("Twilio-Request-Id", new_sid("RQ")));
        for (name, value) in self.headers {
            builder.insert_header((name, value));
        }
        builder
            .content_type("application/json")
            .body(self.body.to_string())
    }
}

pub(crate) fn twilio_error(status: u16, code: u32, message: &str) -> Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
}

/// The answer to a conformant request to `route` given its scripted reply; a success reply
/// creates the resource (or replays it for a repeated idempotency token).
pub(super) fn answer_for(
    state: &State,
    route: Route,
    req: &RecordedRequest,
    reply: Reply,
) -> Answer {
    let list = match route {
        Route::ListMessages => Some(list_messages as fn(&State, &RecordedRequest) -> Value),
        Route::ListConversationMessages => Some(list_conversation_messages as _),
        _ => None,
    };
    if let Some(list) = list {
        return match reply {
            Reply::Success => Answer::json(200, list(state, req)),
            Reply::Status { status, .. } if (200..300).contains(&status) => {
                Answer::json(status, list(state, req))
            }
            other => failure_answer(other),
        };
    }
    if route == Route::ListMedia {
        return match reply {
            Reply::Success => list_media(state, req),
            Reply::Status { status, .. } if (200..300).contains(&status) => list_media(state, req),
            other => failure_answer(other),
        };
    }
    match reply {
        Reply::CreatedButFailed { status } => {
            let success = success_response(route, route.template_for(&req.path_params)).0;
            let created = create(state, route, req, success, None);
            if (200..300).contains(&created.status) {
                failure_answer(Reply::Status {
                    status,
                    retry_after: None,
                    body: None,
                })
            } else {
                created
            }
        }
        Reply::Success => {
            let status = success_response(route, route.template_for(&req.path_params)).0;
            create(state, route, req, status, None)
        }
        Reply::Status {
            status,
            retry_after,
            body,
        } => {
            let mut answer = if (200..300).contains(&status) {
                create(state, route, req, status, body)
            } else {
                let body = body.unwrap_or_else(|| {
                    let reason = StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Error");
                    twilio_error(status, 20000 + u32::from(status), reason)
                });
                Answer::json(status, body)
            };
            if let Some(secs) = retry_after {
                answer.headers.push(("Retry-After", secs.to_string()));
            }
            answer
        }
        Reply::TwilioError {
            status,
            code,
            message,
        } => Answer::json(status, twilio_error(status, code, &message)),
        Reply::Delayed { reply, .. } => answer_for(state, route, req, *reply),
    }
}

/// A non-success scripted reply (no resource involved).
fn failure_answer(reply: Reply) -> Answer {
    match reply {
        Reply::Status {
            status,
            retry_after,
            body,
        } => {
            let body = body.unwrap_or_else(|| {
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error");
                twilio_error(status, 20000 + u32::from(status), reason)
            });
            let mut answer = Answer::json(status, body);
            if let Some(secs) = retry_after {
                answer.headers.push(("Retry-After", secs.to_string()));
            }
            answer
        }
        Reply::TwilioError {
            status,
            code,
            message,
        } => Answer::json(status, twilio_error(status, code, &message)),
        Reply::CreatedButFailed { status } => failure_answer(Reply::Status {
            status,
            retry_after: None,
            body: None,
        }),
        Reply::Delayed { reply, .. } => failure_answer(*reply),
        Reply::Success => Answer::json(500, twilio_error(500, 20500, "FakeTwilio: no failure")),
    }
}

/// ListMessage: the created messages, newest first, filtered by `To`, `From` and the
/// `DateSent` filters, one page of `PageSize` (default 50).
fn list_messages(state: &State, req: &RecordedRequest) -> Value {
    let inner = state.lock();
    let account = req
        .path_params
        .get("AccountSid")
        .cloned()
        .unwrap_or_default();
    let instant = |v: &str| chrono::DateTime::parse_from_rfc3339(v).ok();
    let after = req.query_param("DateSent>").and_then(instant);
    let before = req.query_param("DateSent<").and_then(instant);
    let on = req
        .query_param("DateSent")
        .and_then(instant)
        .map(|d| d.date_naive());
    let page_size: usize = req
        .query_param("PageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50);
    let messages: Vec<Value> = inner
        .messages
        .iter()
        .rev()
        .filter(|m| req.query_param("To").is_none_or(|to| m["to"] == to))
        .filter(|m| req.query_param("From").is_none_or(|from| m["from"] == from))
        .filter(|m| {
            // A queued message has no date_sent, so no DateSent filter lists it.
            let sent = m["date_sent"]
                .as_str()
                .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
            let Some(sent) = sent else {
                return after.is_none() && before.is_none() && on.is_none();
            };
            after.is_none_or(|a| sent >= a)
                && before.is_none_or(|b| sent <= b)
                && on.is_none_or(|d| sent.date_naive() == d)
        })
        .take(page_size)
        .cloned()
        .collect();
    first_page(
        &format!("/2010-04-01/Accounts/{account}/Messages.json"),
        page_size,
        "messages",
        messages,
    )
}

/// The only page of a v2010 list at `path`: Twilio's paging fields, the items under `key`.
fn first_page(path: &str, page_size: usize, key: &str, items: Vec<Value>) -> Value {
    let uri = format!("{path}?PageSize={page_size}&Page=0");
    let mut page = json!({
        "end": items.len().saturating_sub(1),
        "first_page_uri": uri,
        "next_page_uri": null,
        "page": 0,
        "page_size": page_size,
        "previous_page_uri": null,
        "start": 0,
        "uri": uri,
    });
    page[key] = Value::Array(items);
    page
}

/// ListMedia: the media seeded for the path's message, one page of `PageSize` (default 50);
/// 404 (error 20404) for a message nothing was seeded for or another account's path.
fn list_media(state: &State, req: &RecordedRequest) -> Answer {
    let inner = state.lock();
    let path_param = |name: &str| req.path_params.get(name).cloned().unwrap_or_default();
    let (account, message) = (path_param("AccountSid"), path_param("MessageSid"));
    let Some(media) = inner
        .media
        .get(&message)
        .filter(|_| account == state.account_sid)
    else {
        return Answer::json(
            404,
            twilio_error(404, 20404, "The requested resource was not found"),
        );
    };
    let page_size: usize = req
        .query_param("PageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50);
    let items = media.iter().take(page_size).cloned().collect();
    Answer::json(
        200,
        first_page(
            &format!("/2010-04-01/Accounts/{account}/Messages/{message}/Media.json"),
            page_size,
            "media_list",
            items,
        ),
    )
}

/// ListConversationMessage: the conversation's messages in `Order` (default `asc`), one page
/// of `PageSize` (default 50).
fn list_conversation_messages(state: &State, req: &RecordedRequest) -> Value {
    let inner = state.lock();
    let conversation = conversation_sid_for(
        req.path_params
            .get("ConversationSid")
            .map_or("", String::as_str),
    );
    let page_size: usize = req
        .query_param("PageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50);
    let mut messages: Vec<Value> = inner
        .conversation_messages
        .iter()
        .filter(|m| m["conversation_sid"] == conversation.as_str())
        .cloned()
        .collect();
    if req.query_param("Order") == Some("desc") {
        messages.reverse();
    }
    messages.truncate(page_size);
    let url = format!("{}/Messages", conversation_resource_url(req, &conversation));
    json!({
        "messages": messages,
        "meta": {
            "page": 0,
            "page_size": page_size,
            "first_page_url": format!("{url}?PageSize={page_size}&Page=0"),
            "previous_page_url": null,
            "url": format!("{url}?PageSize={page_size}&Page=0"),
            "next_page_url": null,
            "key": "messages",
        },
    })
}

/// A successful create (or the replay of one for a repeated idempotency token).
fn create(
    state: &State,
    route: Route,
    req: &RecordedRequest,
    status: u16,
    body: Option<Value>,
) -> Answer {
    let mut inner = state.lock();
    let key = req
        .idempotency_token
        .as_ref()
        .filter(|_| inner.idempotency_replay)
        .map(|t| (route, req.path.clone(), t.clone()));
    if let Some((status, body)) = key.as_ref().and_then(|k| inner.idempotent.get(k)) {
        return Answer::json(*status, body.clone());
    }
    let conversation = req
        .path_params
        .get("ConversationSid")
        .cloned()
        .unwrap_or_default();
    match route {
        Route::Messages => {
            if let Some(text) = req.param("Body") {
                if text.chars().count() > 1600 {
                    return Answer::json(
                        400,
                        twilio_error(
                            400,
                            21617,
                            "The concatenated message body exceeds the 1600 character limit.",
                        ),
                    );
                }
            }
        }
        Route::ConversationParticipants => {
            if let Some(identity) = req.param("Identity") {
                if inner
                    .participants
                    .contains_key(&(conversation.clone(), identity.to_owned()))
                {
                    return Answer::json(
                        409,
                        twilio_error(
                            409,
                            50433,
                            &format!("Participant already exists: Identity '{identity}' is already in this Conversation"),
                        ),
                    );
                }
            }
        }
        Route::ConversationMessages => {
            if req
                .param("Body")
                .is_some_and(|text| text.chars().count() > 1600)
            {
                return Answer::json(
                    400,
                    twilio_error(400, 50504, "Message body parameter is too long"),
                );
            }
        }
        Route::ListMessages | Route::ListConversationMessages | Route::ListMedia => {}
    }
    let body = body.unwrap_or_else(|| success_body(state, &mut inner, route, req));
    match route {
        Route::Messages => inner.messages.push(body.clone()),
        Route::ConversationMessages => inner.conversation_messages.push(body.clone()),
        _ => {}
    }
    if route == Route::ConversationParticipants {
        if let (Some(identity), Some(sid)) = (req.param("Identity"), body["sid"].as_str()) {
            inner
                .participants
                .insert((conversation, identity.to_owned()), sid.to_owned());
        }
    }
    if let Some(key) = key {
        inner.idempotent.insert(key, (status, body.clone()));
    }
    inner.created.push(req.clone());
    Answer::json(status, body)
}

fn success_body(state: &State, inner: &mut Inner, route: Route, req: &RecordedRequest) -> Value {
    // Start from every property the schema lists (null), then fill in plausible values.
    let mut body: Map<String, Value> =
        response_properties(route, route.template_for(&req.path_params))
            .into_iter()
            .map(|k| (k, Value::Null))
            .collect();
    let opt = |name: &str| req.param(name).map_or(Value::Null, |v| json!(v));
    let now = chrono::Utc::now();
    match route {
        Route::Messages => {
            let account = req
                .path_params
                .get("AccountSid")
                .cloned()
                .unwrap_or_default();
            let media = req.params_named("MediaUrl");
            let mut media_count = media.iter().filter(|m| !m.is_empty()).count();
            if req
                .param("To")
                .is_some_and(|to| to.starts_with("whatsapp:"))
            {
                // WhatsApp carries one media per message; Twilio drops the rest.
                media_count = media_count.min(1);
            }
            let sid = new_sid(if media_count > 0 { "MM" } else { "SM" });
            let uri = format!("/2010-04-01/Accounts/{account}/Messages/{sid}");
            let date = now.to_rfc2822();
            let status = if req.param("ScheduleType") == Some("fixed") {
                "scheduled"
            } else {
                "queued"
            };
            let fields = json!({
                "account_sid": account,
                "api_version": "2010-04-01",
                "body": req.param("Body").unwrap_or(""),
                "date_created": date,
                "date_updated": date,
                "date_sent": null,
                "direction": "outbound-api",
                "error_code": null,
                "error_message": null,
                "from": opt("From"),
                "to": opt("To"),
                "messaging_service_sid": opt("MessagingServiceSid"),
                "num_media": media_count.to_string(),
                "num_segments": segments(req.param("Body").unwrap_or("")).to_string(),
                "price": null,
                "price_unit": "USD",
                "sid": sid,
                "status": status,
                "subresource_uris": {
                    "media": format!("{uri}/Media.json"),
                    "feedback": format!("{uri}/Feedback.json"),
                },
                "uri": format!("{uri}.json"),
            });
            merge(&mut body, fields);
        }
        Route::ConversationMessages => {
            let conversation = req
                .path_params
                .get("ConversationSid")
                .cloned()
                .unwrap_or_default();
            let conversation_sid = conversation_sid_for(&conversation);
            let sid = new_sid("IM");
            let index = {
                let next = inner.message_index.entry(conversation.clone()).or_insert(0);
                *next += 1;
                *next - 1
            };
            let author = req.param("Author").unwrap_or("system").to_owned();
            let participant_sid = inner
                .participants
                .get(&(conversation.clone(), author.clone()))
                .map_or(Value::Null, |s| json!(s));
            let url = format!(
                "{}/Messages/{sid}",
                conversation_resource_url(req, &conversation_sid)
            );
            let media = req.param("MediaSid").map_or(Value::Null, |m| {
                json!([{
                    "sid": m,
                    "category": "media",
                    "filename": null,
                    "content_type": "application/octet-stream",
                    "size": 0,
                }])
            });
            let fields = json!({
                "account_sid": state.account_sid,
                "conversation_sid": conversation_sid,
                "sid": sid,
                "index": index,
                "author": author,
                "body": opt("Body"),
                "media": media,
                "attributes": req.param("Attributes").unwrap_or("{}"),
                "participant_sid": participant_sid,
                "date_created": req.param("DateCreated").map_or_else(|| iso(now), str::to_owned),
                "date_updated": req.param("DateUpdated").map_or_else(|| iso(now), str::to_owned),
                "url": url,
                "delivery": null,
                "links": {
                    "delivery_receipts": format!("{url}/Receipts"),
                    "channel_metadata": format!("{url}/ChannelMetadata"),
                },
                "content_sid": opt("ContentSid"),
            });
            merge(&mut body, fields);
            merge_chat_service(&mut body, req);
        }
        Route::ConversationParticipants => {
            let conversation = req
                .path_params
                .get("ConversationSid")
                .cloned()
                .unwrap_or_default();
            let conversation_sid = conversation_sid_for(&conversation);
            let sid = new_sid("MB");
            let binding = if let Some(address) = req.param("MessagingBinding.Address") {
                json!({
                    "type": "sms",
                    "address": address,
                    "proxy_address": req.param("MessagingBinding.ProxyAddress"),
                })
            } else if let Some(projected) = req.param("MessagingBinding.ProjectedAddress") {
                json!({ "type": "sms", "projected_address": projected })
            } else {
                Value::Null
            };
            let fields = json!({
                "account_sid": state.account_sid,
                "conversation_sid": conversation_sid,
                "sid": sid,
                "identity": opt("Identity"),
                "attributes": req.param("Attributes").unwrap_or("{}"),
                "messaging_binding": binding,
                "role_sid": req.param("RoleSid").map_or_else(|| derived_sid("RL", "default-conversation-role"), str::to_owned),
                "date_created": req.param("DateCreated").map_or_else(|| iso(now), str::to_owned),
                "date_updated": req.param("DateUpdated").map_or_else(|| iso(now), str::to_owned),
                "url": format!("{}/Participants/{sid}", conversation_resource_url(req, &conversation_sid)),
                "last_read_message_index": null,
                "last_read_timestamp": null,
            });
            merge(&mut body, fields);
            merge_chat_service(&mut body, req);
        }
        Route::ListMessages | Route::ListConversationMessages | Route::ListMedia => {}
    }
    Value::Object(body)
}

fn merge(body: &mut Map<String, Value>, fields: Value) {
    if let Value::Object(fields) = fields {
        body.extend(fields);
    }
}

/// A service-scoped resource carries `chat_service_sid` (only its schema lists it).
fn merge_chat_service(body: &mut Map<String, Value>, req: &RecordedRequest) {
    if let Some(service) = req.path_params.get("ChatServiceSid") {
        body.insert("chat_service_sid".to_owned(), json!(service));
    }
}

/// `https://conversations.twilio.com/v1[/Services/{ChatServiceSid}]/Conversations/{sid}`,
/// scoped like the request.
fn conversation_resource_url(req: &RecordedRequest, conversation_sid: &str) -> String {
    match req.path_params.get("ChatServiceSid") {
        Some(service) => format!(
            "https://conversations.twilio.com/v1/Services/{service}/Conversations/{conversation_sid}"
        ),
        None => format!("https://conversations.twilio.com/v1/Conversations/{conversation_sid}"),
    }
}

fn iso(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Number of SMS segments: GSM-7 (160 / 153 per part) when every character is plain ASCII
/// (a close-enough stand-in for the GSM alphabet), else UCS-2 (70 / 67 UTF-16 units).
fn segments(body: &str) -> usize {
    let gsm = body
        .chars()
        .all(|c| c.is_ascii() && (c == '\n' || c == '\r' || !c.is_ascii_control()));
    let (units, single, multi) = if gsm {
        (body.chars().count(), 160, 153)
    } else {
        (body.encode_utf16().count(), 70, 67)
    };
    if units <= single {
        1
    } else {
        units.div_ceil(multi)
    }
}

pub(super) fn new_sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

fn derived_sid(prefix: &str, name: &str) -> String {
    format!(
        "{prefix}{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).simple()
    )
}

fn is_sid(prefix: &str, s: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn account_sid_for(username: &str) -> String {
    if is_sid("AC", username) {
        username.to_owned()
    } else {
        derived_sid("AC", username)
    }
}

/// Paths may name a conversation by SID or by unique name; resources always carry a `CH…` SID.
fn conversation_sid_for(conversation: &str) -> String {
    if is_sid("CH", conversation) {
        conversation.to_owned()
    } else {
        derived_sid("CH", conversation)
    }
}
