//! An in-test fake of Twilio's REST API, checked against Twilio's own OpenAPI documents
//! (`vendor/twilio-oai/twilio_api_v2010.json` and `twilio_conversations_v1.json`).
//!
//! Every request is matched against the operations of both documents. A request that departs
//! from the document (unknown path or method, a path parameter that breaks its pattern, a wrong
//! `Content-Type`, a missing required or an undefined form parameter, a value that breaks its
//! type / enum / pattern / length, a header parameter with a value outside its enum, missing or
//! wrong HTTP Basic credentials) is recorded in [`FakeTwilio::violations`] and answered with 400
//! (401 with Twilio's error 20003 for authentication), with a body naming the violation, so a
//! broken client fails loudly.
//!
//! The Conversations routes answer both the default-service path and the service-scoped one
//! (`/v1/Services/{ChatServiceSid}/Conversations/…`, see [`Route::service_path_template`]); a
//! service-scoped request records `ChatServiceSid` in [`RecordedRequest::path_params`], is checked
//! against the service-scoped operation and gets that operation's resource shape.
//!
//! Conformant requests to an emulated [`Route`] get the next scripted [`Reply`] for that route
//! (FIFO), or the spec-shaped success resource when nothing is queued.
//!
//! Twilio behaviour that is not in the documents but is emulated because our code depends on it,
//! never kinder than Twilio:
//! - No request idempotency: every successful create creates a new resource, whatever
//!   `I-Twilio-Idempotency-Token` says. ([`FakeTwilio::set_idempotency_emulation`]`(true)` is an
//!   explicit opt-in that replays the first successful create per token; no exactly-once test
//!   uses it.)
//! - Creates that succeed but whose answer is lost: [`Reply::CreatedButFailed`] (a 5xx after
//!   the create) and [`Reply::Delayed`] (created on arrival, answered after the client gave up).
//! - Adding a participant whose `Identity` already is in the conversation answers 409 with
//!   error 50433 (see [`FakeTwilio::seed_participant`]).
//! - A Messages `Body` longer than 1600 characters answers 400 with error 21617; a
//!   conversation message's, 400 with error 50504.
//! - A WhatsApp message keeps only its first `MediaUrl` (`num_media` is at most 1).
//!
//! [`Route::ListMessages`] (`GET …/Messages.json`) lists the messages created so far, newest
//! first, filtered by `To`, `From` and `DateSent` / `DateSent>` / `DateSent<` (compared with
//! `date_sent`; the fake never sends, so its messages stay `queued` with `date_sent` null, as
//! Twilio's do while queued, and a `DateSent` filter does not list them), one page of
//! `PageSize`. [`Route::ListConversationMessages`] lists a conversation's messages (with their
//! `attributes`) in `Order`, one page of `PageSize`.
//! [`Route::ListMedia`] (`GET …/Messages/{MessageSid}/Media.json`) lists the media seeded with
//! [`FakeTwilio::seed_message_media`] as spec-shaped Media resources; a message nothing was
//! seeded for answers 404 with Twilio's error 20404.
//!
//! The fake is split by concern: `spec` reads the documents (operations, `$ref`s, response
//! schemas), `validate` checks a request against its operation, `emulation` holds what the
//! fake remembers and how it answers, and `server` is the HTTP plumbing in between. This file
//! is the API the tests use.

mod emulation;
pub mod mcs;
mod server;
mod spec;
mod validate;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use actix_web::{dev::ServerHandle, web};
use serde_json::Value;

pub use self::spec::{response_problems, service_response_problems, vendored_dir, SpecDocument};
use self::{
    emulation::{new_sid, State},
    spec::success_response,
    validate::header_value,
};

/// The operations the fake emulates (logical routes: a Conversations route answers both its
/// default-service and its service-scoped path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (CreateMessage, v2010 document).
    Messages,
    /// `POST /v1/Conversations/{ConversationSid}/Messages` (CreateConversationMessage) and
    /// `POST /v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Messages`
    /// (CreateServiceConversationMessage).
    ConversationMessages,
    /// `POST /v1/Conversations/{ConversationSid}/Participants` (CreateConversationParticipant)
    /// and `POST /v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Participants`
    /// (CreateServiceConversationParticipant).
    ConversationParticipants,
    /// `GET /2010-04-01/Accounts/{AccountSid}/Messages.json` (ListMessage, v2010 document).
    ListMessages,
    /// `GET /v1/Conversations/{ConversationSid}/Messages` (ListConversationMessage) and
    /// `GET /v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Messages`
    /// (ListServiceConversationMessage).
    ListConversationMessages,
    /// `GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media.json` (ListMedia,
    /// v2010 document).
    ListMedia,
}

impl Route {
    pub const ALL: [Route; 6] = [
        Route::Messages,
        Route::ConversationMessages,
        Route::ConversationParticipants,
        Route::ListMessages,
        Route::ListConversationMessages,
        Route::ListMedia,
    ];

    /// The path template exactly as written in the OpenAPI document (for the Conversations
    /// routes, the default-service one).
    pub fn path_template(self) -> &'static str {
        match self {
            Route::Messages | Route::ListMessages => {
                "/2010-04-01/Accounts/{AccountSid}/Messages.json"
            }
            Route::ListMedia => {
                "/2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media.json"
            }
            Route::ConversationMessages | Route::ListConversationMessages => {
                "/v1/Conversations/{ConversationSid}/Messages"
            }
            Route::ConversationParticipants => "/v1/Conversations/{ConversationSid}/Participants",
        }
    }

    /// The service-scoped path template of a Conversations route, as written in the document.
    pub fn service_path_template(self) -> Option<&'static str> {
        match self {
            Route::Messages | Route::ListMessages | Route::ListMedia => None,
            Route::ConversationMessages | Route::ListConversationMessages => {
                Some("/v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Messages")
            }
            Route::ConversationParticipants => {
                Some("/v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Participants")
            }
        }
    }

    /// Every path template the route answers: [`Route::path_template`], then
    /// [`Route::service_path_template`] when there is one.
    pub fn path_templates(self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.path_template()).chain(self.service_path_template())
    }

    pub fn method(self) -> &'static str {
        match self {
            Route::ListMessages | Route::ListConversationMessages | Route::ListMedia => "GET",
            _ => "POST",
        }
    }

    pub fn document(self) -> SpecDocument {
        match self {
            Route::Messages | Route::ListMessages | Route::ListMedia => SpecDocument::ApiV2010,
            Route::ConversationMessages
            | Route::ConversationParticipants
            | Route::ListConversationMessages => SpecDocument::ConversationsV1,
        }
    }

    /// The operation object from the OpenAPI document (at [`Route::path_template`]).
    pub fn operation(self) -> &'static Value {
        self.operation_at(self.path_template())
    }

    /// The operation object at one of the route's templates.
    fn operation_at(self, template: &str) -> &'static Value {
        let method = self.method().to_ascii_lowercase();
        let operation = &self.document().json()["paths"][template][method.as_str()];
        if operation.is_object() {
            return operation;
        }
        panic!(
            "FakeTwilio: {} has no {} {}",
            self.document().file_name(),
            self.method(),
            template
        )
    }

    /// The success status code the document declares for the operation (201 for creates, 200
    /// for the lists).
    pub fn success_status(self) -> u16 {
        success_response(self, self.path_template()).0
    }

    /// The template a request to this route was matched with: the service-scoped one when the
    /// path carried a `ChatServiceSid`.
    fn template_for(self, path_params: &BTreeMap<String, String>) -> &'static str {
        match self.service_path_template() {
            Some(scoped) if path_params.contains_key("ChatServiceSid") => scoped,
            _ => self.path_template(),
        }
    }

    fn from_template(template: &str, method: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| {
            r.path_templates().any(|t| t == template) && r.method().eq_ignore_ascii_case(method)
        })
    }
}

/// What the fake answers to the next conformant request for a route.
#[derive(Clone, Debug)]
pub enum Reply {
    /// The spec-shaped success resource with the spec's success status (201 for creates).
    Success,
    /// An arbitrary status. `retry_after` becomes a `Retry-After` header (seconds). Without a
    /// body, a 2xx status answers (and creates) the spec-shaped resource; other statuses answer
    /// Twilio's error JSON with code `20000 + status` (20429, 20500, 20503, …).
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: Option<Value>,
    },
    /// Twilio's error JSON: `{code, message, more_info, status}`.
    TwilioError {
        status: u16,
        code: u32,
        message: String,
    },
    /// `reply`, answered after `delay`. A success is created when the request arrives (as it
    /// would be at Twilio), only the answer is late, so a client that times out and retries
    /// with the same idempotency token gets the same resource back.
    Delayed { delay: Duration, reply: Box<Reply> },
    /// Creates the resource as [`Reply::Success`] would (it counts in
    /// [`FakeTwilio::created`] and is listed), then answers `status` with Twilio's error JSON
    /// (code `20000 + status`): Twilio created the message but we see a failure.
    CreatedButFailed { status: u16 },
}

impl Reply {
    pub fn delayed(delay: Duration, reply: Reply) -> Reply {
        Reply::Delayed {
            delay,
            reply: Box::new(reply),
        }
    }

    /// A bare status with Twilio's error body (e.g. 500, 503).
    pub fn status(status: u16) -> Reply {
        Reply::Status {
            status,
            retry_after: None,
            body: None,
        }
    }

    pub fn too_many_requests(retry_after: Option<u64>) -> Reply {
        Reply::Status {
            status: 429,
            retry_after,
            body: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// `None` when the request matched no emulated operation.
    pub route: Option<Route>,
    pub method: String,
    /// The path as received (still percent-encoded), without the query string.
    pub path: String,
    /// Decoded path parameters named as in the document, e.g. `AccountSid`, `ConversationSid`,
    /// and `ChatServiceSid` for a service-scoped Conversations request.
    pub path_params: BTreeMap<String, String>,
    /// The decoded form body, in order (repeated keys stay repeated).
    pub params: Vec<(String, String)>,
    /// Header names lower-cased; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    /// `I-Twilio-Idempotency-Token`.
    pub idempotency_token: Option<String>,
    /// The decoded query string, in order.
    pub query: Vec<(String, String)>,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// The first value of form parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name` (e.g. `DateSent>`).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated form parameter such as `MediaUrl`.
    pub fn params_named(&self, name: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

pub struct FakeTwilio {
    /// e.g. `http://127.0.0.1:PORT`; serves both api.twilio.com and conversations.twilio.com paths.
    pub base_url: String,
    state: web::Data<State>,
    server: ServerHandle,
}

impl FakeTwilio {
    /// Starts on 127.0.0.1:0. Requests must carry HTTP Basic auth `username:password`.
    pub async fn start(username: &str, password: &str) -> FakeTwilio {
        for doc in SpecDocument::ALL {
            doc.json(); // parse once, and fail here (not in a handler) when missing
        }
        let state = web::Data::new(State::new(username, password));
        let (port, server) = server::start(state.clone());
        FakeTwilio {
            base_url: format!("http://127.0.0.1:{port}"),
            state,
            server,
        }
    }

    /// Queues a scripted reply for the next conformant request to `route` (FIFO per route);
    /// when the queue is empty the route answers its spec-shaped success. Requests answered
    /// 400/401 for a violation do not consume the queue.
    pub fn enqueue(&self, route: Route, reply: Reply) {
        self.state
            .lock()
            .queues
            .entry(route)
            .or_default()
            .push_back(reply);
    }

    /// Every request, in arrival order (including ones answered 400/401).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// Every request that matched `route`'s path and method (including ones answered 400/401).
    pub fn requests_to(&self, route: Route) -> Vec<RecordedRequest> {
        self.state
            .lock()
            .requests
            .iter()
            .filter(|r| r.route == Some(route))
            .cloned()
            .collect()
    }

    /// Waits until `route` has received at least `count` requests (panics after `timeout`).
    pub async fn wait_for_requests(
        &self,
        route: Route,
        count: usize,
        timeout: Duration,
    ) -> Vec<RecordedRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests_to(route);
            if got.len() >= count {
                return got;
            }
            if Instant::now() >= deadline {
                panic!(
                    "FakeTwilio: waited {timeout:?} for {count} request(s) to {route:?}, got {}.\n\
                     all requests: {:#?}\nviolations: {:#?}",
                    got.len(),
                    self.requests()
                        .iter()
                        .map(|r| format!("{} {} {:?}", r.method, r.path, r.params))
                        .collect::<Vec<_>>(),
                    self.violations()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resources Twilio would really have created on `route`: successful creates, counting a
    /// repeated `I-Twilio-Idempotency-Token` that already succeeded only once.
    pub fn created(&self, route: Route) -> Vec<RecordedRequest> {
        self.state
            .lock()
            .created
            .iter()
            .filter(|r| r.route == Some(route))
            .cloned()
            .collect()
    }

    /// The Messages resources created so far (what ListMessages lists), oldest first.
    pub fn messages(&self) -> Vec<Value> {
        self.state.lock().messages.clone()
    }

    /// Off (the default, as at Twilio): every successful create creates a new resource,
    /// whatever `I-Twilio-Idempotency-Token` says. On: a repeated token replays the first
    /// successful create. No exactly-once test may switch it on.
    pub fn set_idempotency_emulation(&self, on: bool) {
        self.state.lock().idempotency_replay = on;
    }

    /// Makes `sid` a Media Content Service media the fake can describe (see [`mcs`]).
    pub fn seed_mcs_media(&self, sid: &str, content_type: &str) {
        self.state
            .lock()
            .mcs_media
            .insert(sid.to_owned(), content_type.to_owned());
    }

    /// The conversation messages created so far, oldest first.
    pub fn conversation_messages(&self) -> Vec<Value> {
        self.state.lock().conversation_messages.clone()
    }

    /// Every way a request departed from the OpenAPI documents (empty = all conformant).
    /// Each entry starts with `METHOD path: `.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().violations.clone()
    }

    /// Panics listing the violations, if any.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "FakeTwilio: requests departed from Twilio's OpenAPI documents:\n  {}",
            v.join("\n  ")
        );
    }

    /// The account SID used in Conversations resources: the username when it is an `AC…` SID,
    /// else a stable SID derived from it. (Messages resources use the path's `AccountSid`.)
    pub fn account_sid(&self) -> String {
        self.state.account_sid.clone()
    }

    /// Gives message `message_sid` (`SM…`/`MM…`, as received) one media item per content type,
    /// listed by [`Route::ListMedia`] in this order. Returns their `ME…` SIDs.
    pub fn seed_message_media(&self, message_sid: &str, content_types: &[&str]) -> Vec<String> {
        let account = self.state.account_sid.clone();
        let date = chrono::Utc::now().to_rfc2822();
        let mut inner = self.state.lock();
        let media = inner.media.entry(message_sid.to_owned()).or_default();
        content_types
            .iter()
            .map(|content_type| {
                let sid = new_sid("ME");
                media.push(serde_json::json!({
                    "account_sid": account,
                    "content_type": content_type,
                    "date_created": date,
                    "date_updated": date,
                    "parent_sid": message_sid,
                    "sid": sid,
                    "uri": format!("/2010-04-01/Accounts/{account}/Messages/{message_sid}/Media/{sid}.json"),
                }));
                sid
            })
            .collect()
    }

    /// Makes `identity` an existing participant of `conversation` (SID or unique name, as used
    /// in request paths), so adding it again answers 409 / error 50433. Returns its `MB…` SID.
    pub fn seed_participant(&self, conversation: &str, identity: &str) -> String {
        let mut inner = self.state.lock();
        inner
            .participants
            .entry((conversation.to_owned(), identity.to_owned()))
            .or_insert_with(|| new_sid("MB"))
            .clone()
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        // Sends the stop command now; the completion future is not needed.
        drop(self.server.stop(false));
        if !std::thread::panicking() {
            let v = self.violations();
            if !v.is_empty() {
                eprintln!(
                    "FakeTwilio dropped with {} violation(s):\n  {}",
                    v.len(),
                    v.join("\n  ")
                );
            }
        }
    }
}
