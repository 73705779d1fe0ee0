//! An in-test fake of Twilio's REST API, checked against Twilio's own OpenAPI documents
//! (`../shared/twilio-oai/twilio_api_v2010.json` and `twilio_conversations_v1.json`).
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
//! Twilio behaviour that is not in the documents but is emulated because our code depends on it:
//! - `I-Twilio-Idempotency-Token`: a successful create remembers the token (per route and
//!   path); a later *successful* answer for the same token replays the original status and body
//!   and creates nothing new. Scripted non-success replies still take effect (they model a
//!   failure in front of Twilio's idempotency layer).
//! - Adding a participant whose `Identity` already is in the conversation answers 409 with
//!   error 50433 (see [`FakeTwilio::seed_participant`]).
//! - A Messages `Body` longer than 1600 characters answers 400 with error 21617.
//!
//! [`FakeTwilio::set_idempotency_emulation`]`(false)` switches the token replay off (realistic
//! for the Messages API, whose creates are not idempotent: every successful create creates a
//! new message). [`Route::ListMessages`] (`GET …/Messages.json`) lists the messages created so
//! far, newest first, filtered by `To`, `From` and `DateSent` / `DateSent>` / `DateSent<`
//! (compared with `date_sent`, or `date_created` while `date_sent` is still null; the fake never
//! sends, so its messages stay `queued`), one page of `PageSize`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use actix_web::{
    dev::ServerHandle, http::StatusCode, web, App, HttpRequest, HttpResponse, HttpServer,
};
use base64::Engine as _;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

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
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::Messages,
        Route::ConversationMessages,
        Route::ConversationParticipants,
        Route::ListMessages,
    ];

    /// The path template exactly as written in the OpenAPI document (for the Conversations
    /// routes, the default-service one).
    pub fn path_template(self) -> &'static str {
        match self {
            Route::Messages | Route::ListMessages => {
                "/2010-04-01/Accounts/{AccountSid}/Messages.json"
            }
            Route::ConversationMessages => "/v1/Conversations/{ConversationSid}/Messages",
            Route::ConversationParticipants => "/v1/Conversations/{ConversationSid}/Participants",
        }
    }

    /// The service-scoped path template of a Conversations route, as written in the document.
    pub fn service_path_template(self) -> Option<&'static str> {
        match self {
            Route::Messages | Route::ListMessages => None,
            Route::ConversationMessages => {
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
            Route::ListMessages => "GET",
            _ => "POST",
        }
    }

    pub fn document(self) -> SpecDocument {
        match self {
            Route::Messages | Route::ListMessages => SpecDocument::ApiV2010,
            Route::ConversationMessages | Route::ConversationParticipants => {
                SpecDocument::ConversationsV1
            }
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
    /// for the list).
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

/// One of the two Twilio OpenAPI documents the fake checks against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecDocument {
    ApiV2010,
    ConversationsV1,
}

impl SpecDocument {
    pub const ALL: [SpecDocument; 2] = [SpecDocument::ApiV2010, SpecDocument::ConversationsV1];

    pub fn file_name(self) -> &'static str {
        match self {
            SpecDocument::ApiV2010 => "twilio_api_v2010.json",
            SpecDocument::ConversationsV1 => "twilio_conversations_v1.json",
        }
    }

    /// The parsed document (parsed once per process).
    pub fn json(self) -> &'static Value {
        static API: OnceLock<Value> = OnceLock::new();
        static CONVERSATIONS: OnceLock<Value> = OnceLock::new();
        let cell = match self {
            SpecDocument::ApiV2010 => &API,
            SpecDocument::ConversationsV1 => &CONVERSATIONS,
        };
        cell.get_or_init(|| load_document(self.file_name()))
    }
}

fn load_document(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/twilio-oai")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "FakeTwilio needs Twilio's OpenAPI document {file} at {}: {e}. It is published in \
             https://github.com/twilio/twilio-oai (spec/json/{file}); put it in ../shared/twilio-oai/.",
            path.display()
        )
    });
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("FakeTwilio: {} is not valid JSON: {e}", path.display()));
    assert!(
        doc.get("paths").is_some_and(Value::is_object),
        "FakeTwilio: {} has no `paths` object; is it really an OpenAPI document?",
        path.display()
    );
    doc
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("FakeTwilio: cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let state = web::Data::new(State {
            username: username.to_owned(),
            password: password.to_owned(),
            account_sid: account_sid_for(username),
            inner: Mutex::new(Inner::default()),
        });
        let data = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .expect("FakeTwilio: listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        FakeTwilio {
            base_url: format!("http://127.0.0.1:{port}"),
            state,
            server: handle,
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

    /// On (the default): a repeated `I-Twilio-Idempotency-Token` replays the first successful
    /// create. Off: every successful create creates a new resource, as the Messages API may.
    pub fn set_idempotency_emulation(&self, on: bool) {
        self.state.lock().no_idempotency = !on;
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

/// Checks a response body against the response schema `route`'s operation declares for its
/// success status: every listed property present, none unlisted, each value valid for its
/// property schema (OpenAPI `nullable` honoured). Empty = spec-shaped.
pub fn response_problems(route: Route, body: &Value) -> Vec<String> {
    response_problems_at(route, route.path_template(), body)
}

/// [`response_problems`] against the service-scoped operation of a Conversations route.
pub fn service_response_problems(route: Route, body: &Value) -> Vec<String> {
    let template = route
        .service_path_template()
        .unwrap_or_else(|| panic!("FakeTwilio: {route:?} has no service-scoped path"));
    response_problems_at(route, template, body)
}

fn response_problems_at(route: Route, template: &str, body: &Value) -> Vec<String> {
    let doc = route.document().json();
    let (status, response) = success_response(route, template);
    let Some(schema) = response
        .pointer("/content/application~1json/schema")
        .map(|s| resolve(doc, s))
    else {
        return vec![format!(
            "the {status} response of {route:?} has no JSON schema"
        )];
    };
    let Some(object) = body.as_object() else {
        return vec![format!("body is not a JSON object: {body}")];
    };
    let properties = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (name, property) in &properties {
        match object.get(name) {
            None => problems.push(format!("property `{name}` is missing")),
            Some(value) => {
                let json_schema = to_json_schema(doc, property);
                match jsonschema::draft202012::new(&json_schema) {
                    Ok(validator) => {
                        for e in validator.iter_errors(value) {
                            problems.push(format!("property `{name}`: {e}"));
                        }
                    }
                    Err(e) => problems.push(format!("property `{name}`: schema error {e}")),
                }
            }
        }
    }
    for name in object.keys() {
        if !properties.contains_key(name) {
            problems.push(format!("property `{name}` is not in the response schema"));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Server state
// ---------------------------------------------------------------------------------------------

struct State {
    username: String,
    password: String,
    account_sid: String,
    inner: Mutex<Inner>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct Inner {
    requests: Vec<RecordedRequest>,
    violations: Vec<String>,
    queues: HashMap<Route, VecDeque<Reply>>,
    created: Vec<RecordedRequest>,
    /// (route, path, token) → the answer of the create that succeeded with it.
    idempotent: HashMap<(Route, String, String), (u16, Value)>,
    /// (conversation as in the path, identity) → participant SID.
    participants: HashMap<(String, String), String>,
    /// conversation as in the path → next message index.
    message_index: HashMap<String, i64>,
    /// `I-Twilio-Idempotency-Token` replay switched off.
    no_idempotency: bool,
    /// Every Messages resource created, oldest first (what ListMessages lists).
    messages: Vec<Value>,
}

struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn into_response(self) -> HttpResponse {
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

fn twilio_error(status: u16, code: u32, message: &str) -> Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
}

// ---------------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------------

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let received_at = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let idempotency_token = header_value(&headers, "i-twilio-idempotency-token").map(str::to_owned);

    let mut problems = Vec::new();
    let auth_problem = check_auth(&headers, &state.username, &state.password);
    if let Some(p) = &auth_problem {
        problems.push(format!("authentication: {p}"));
    }
    let (route, path_params) = match find_operation(&path, &method) {
        Err(p) => {
            problems.push(p);
            (None, BTreeMap::new())
        }
        Ok(found) => {
            check_operation(&found, &headers, &query, &params, &body, &mut problems);
            let route = Route::from_template(found.template, &method);
            if route.is_none() {
                problems.push(format!(
                    "{} {} ({}) is in {} but FakeTwilio does not emulate it",
                    method,
                    found.template,
                    found.operation["operationId"].as_str().unwrap_or("?"),
                    found.document.file_name()
                ));
            }
            (route, found.path_params)
        }
    };

    let recorded = RecordedRequest {
        route,
        method: method.clone(),
        path: path.clone(),
        path_params,
        params,
        headers,
        idempotency_token,
        query,
        received_at,
    };
    let violations: Vec<String> = problems
        .iter()
        .map(|p| format!("{method} {path}: {p}"))
        .collect();
    for v in &violations {
        eprintln!("FakeTwilio violation: {v}");
    }
    let reply = {
        let mut inner = state.lock();
        inner.requests.push(recorded.clone());
        inner.violations.extend(violations.iter().cloned());
        if auth_problem.is_some() || !violations.is_empty() {
            None
        } else {
            let route = route.expect("conformant request has a route");
            Some(
                inner
                    .queues
                    .get_mut(&route)
                    .and_then(VecDeque::pop_front)
                    .unwrap_or(Reply::Success),
            )
        }
    };

    if auth_problem.is_some() {
        let mut answer = Answer::json(401, twilio_error(401, 20003, "Authenticate"));
        answer
            .headers
            .push(("WWW-Authenticate", "Basic realm=\"Twilio API\"".to_owned()));
        return answer.into_response();
    }
    let Some(reply) = reply else {
        let mut body = twilio_error(
            400,
            20001,
            &format!(
                "FakeTwilio: request departs from Twilio's OpenAPI document: {}",
                problems.join("; ")
            ),
        );
        body["fake_twilio_violations"] = json!(violations);
        return Answer::json(400, body).into_response();
    };
    let route = route.expect("conformant request has a route");

    let mut delay = Duration::ZERO;
    let mut reply = reply;
    while let Reply::Delayed {
        delay: d,
        reply: inner,
    } = reply
    {
        delay += d;
        reply = *inner;
    }
    let answer = answer_for(&state, route, &recorded, reply);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    answer.into_response()
}

fn answer_for(state: &State, route: Route, req: &RecordedRequest, reply: Reply) -> Answer {
    if route == Route::ListMessages {
        return match reply {
            Reply::Success => Answer::json(200, list_messages(state, req)),
            Reply::Status { status, .. } if (200..300).contains(&status) => {
                Answer::json(status, list_messages(state, req))
            }
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
            let sent = m["date_sent"]
                .as_str()
                .or(m["date_created"].as_str())
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
    let uri = format!("/2010-04-01/Accounts/{account}/Messages.json?PageSize={page_size}&Page=0");
    json!({
        "end": messages.len().saturating_sub(1),
        "first_page_uri": uri,
        "next_page_uri": null,
        "page": 0,
        "page_size": page_size,
        "previous_page_uri": null,
        "start": 0,
        "uri": uri,
        "messages": messages,
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
        .filter(|_| !inner.no_idempotency)
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
        Route::ConversationMessages | Route::ListMessages => {}
    }
    let body = body.unwrap_or_else(|| success_body(state, &mut inner, route, req));
    if route == Route::Messages {
        inner.messages.push(body.clone());
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

// ---------------------------------------------------------------------------------------------
// Spec-shaped success bodies
// ---------------------------------------------------------------------------------------------

fn success_response(route: Route, template: &str) -> (u16, &'static Value) {
    let doc = route.document().json();
    let responses = route.operation_at(template)["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("FakeTwilio: {route:?} has no responses in the document"));
    responses
        .iter()
        .filter_map(|(code, r)| {
            let code: u16 = code.parse().ok()?;
            (200..300).contains(&code).then(|| (code, resolve(doc, r)))
        })
        .min_by_key(|(code, _)| *code)
        .unwrap_or_else(|| panic!("FakeTwilio: {route:?} declares no 2xx response"))
}

/// The property names of the success response schema, in document order.
fn response_properties(route: Route, template: &str) -> Vec<String> {
    let doc = route.document().json();
    success_response(route, template)
        .1
        .pointer("/content/application~1json/schema")
        .map(|s| resolve(doc, s))
        .and_then(|s| s["properties"].as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
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
            let media_count = media.iter().filter(|m| !m.is_empty()).count();
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
        Route::ListMessages => {}
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

fn new_sid(prefix: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Checks against the documents
// ---------------------------------------------------------------------------------------------

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn check_auth(headers: &[(String, String)], username: &str, password: &str) -> Option<String> {
    let Some(value) = header_value(headers, "authorization") else {
        return Some(
            "no Authorization header; both documents require HTTP Basic auth (securityScheme \
             accountSid_authToken)"
                .to_owned(),
        );
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Some(format!("Authorization header `{value}` is not HTTP Basic"));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Some(format!("Authorization scheme `{scheme}` is not Basic"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let Some(decoded) = decoded else {
        return Some("Authorization Basic credentials are not valid base64 UTF-8".to_owned());
    };
    let Some((user, pass)) = decoded.split_once(':') else {
        return Some("Authorization Basic credentials have no `:`".to_owned());
    };
    match (user == username, pass == password) {
        (true, true) => None,
        (false, _) => Some(format!(
            "HTTP Basic username `{user}` is not the configured `{username}`"
        )),
        (true, false) => Some(format!(
            "HTTP Basic password for `{user}` is not the configured one"
        )),
    }
}

struct FoundOperation {
    document: SpecDocument,
    template: &'static str,
    operation: &'static Value,
    path_params: BTreeMap<String, String>,
}

/// Finds the operation for `path` + `method` in either document (the most specific template).
fn find_operation(path: &str, method: &str) -> Result<FoundOperation, String> {
    type Candidate = (
        usize,
        SpecDocument,
        &'static str,
        &'static Value,
        BTreeMap<String, String>,
    );
    let mut best: Option<Candidate> = None;
    for document in SpecDocument::ALL {
        let Some(paths) = document.json()["paths"].as_object() else {
            continue;
        };
        for (template, item) in paths {
            if let Some((params, literal)) = match_template(template, path) {
                if best.as_ref().is_none_or(|b| literal > b.0) {
                    best = Some((literal, document, template.as_str(), item, params));
                }
            }
        }
    }
    let Some((_, document, template, item, path_params)) = best else {
        return Err(format!(
            "no path in {} or {} matches `{path}`",
            SpecDocument::ApiV2010.file_name(),
            SpecDocument::ConversationsV1.file_name()
        ));
    };
    let operation = &item[method.to_ascii_lowercase()];
    if !operation.is_object() {
        let defined: Vec<String> = item
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| {
                        ["get", "post", "put", "delete", "patch", "head", "options"]
                            .contains(&k.as_str())
                    })
                    .map(|k| k.to_ascii_uppercase())
                    .collect()
            })
            .unwrap_or_default();
        return Err(format!(
            "{} defines no {method} operation on `{template}` (it defines {})",
            document.file_name(),
            defined.join(", ")
        ));
    }
    Ok(FoundOperation {
        document,
        template,
        operation,
        path_params,
    })
}

/// Matches a document path template against a request path; returns the decoded path
/// parameters and the number of literal characters matched (higher = more specific).
fn match_template(template: &str, path: &str) -> Option<(BTreeMap<String, String>, usize)> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut literal = 0;
    for (ts, ps) in t.iter().zip(&p) {
        match (ts.find('{'), ts.find('}')) {
            (Some(open), Some(close)) if open < close => {
                let (prefix, name, suffix) = (&ts[..open], &ts[open + 1..close], &ts[close + 1..]);
                if ps.len() <= prefix.len() + suffix.len()
                    || !ps.starts_with(prefix)
                    || !ps.ends_with(suffix)
                {
                    return None;
                }
                let raw = &ps[prefix.len()..ps.len() - suffix.len()];
                params.insert(name.to_owned(), percent_decode(raw));
                literal += prefix.len() + suffix.len();
            }
            _ => {
                if *ts != *ps && *ts != percent_decode(ps) {
                    return None;
                }
                literal += ts.len() + 1;
            }
        }
    }
    Some((params, literal))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Follows `$ref`s (`#/…` JSON pointers) within `doc`.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with('#') => {
                value = doc
                    .pointer(&r[1..])
                    .unwrap_or_else(|| panic!("FakeTwilio: unresolvable $ref `{r}`"));
            }
            _ => return value,
        }
    }
    value
}

/// The operation's parameters (path-item level ones overridden by operation level ones).
fn operation_parameters(found: &FoundOperation) -> Vec<&'static Value> {
    let doc = found.document.json();
    let item = &doc["paths"][found.template];
    let mut out: Vec<&'static Value> = Vec::new();
    for list in [&item["parameters"], &found.operation["parameters"]] {
        for p in list.as_array().into_iter().flatten() {
            let p = resolve(doc, p);
            out.retain(|q| q["name"] != p["name"] || q["in"] != p["in"]);
            out.push(p);
        }
    }
    out
}

fn check_operation(
    found: &FoundOperation,
    headers: &[(String, String)],
    query: &[(String, String)],
    params: &[(String, String)],
    raw_body: &[u8],
    problems: &mut Vec<String>,
) {
    let doc = found.document.json();
    let op_id = found.operation["operationId"].as_str().unwrap_or("?");
    let parameters = operation_parameters(found);
    let by_location = |location: &str| -> Vec<&'static Value> {
        parameters
            .iter()
            .copied()
            .filter(|p| p["in"] == location)
            .collect()
    };

    // Path parameters.
    for p in by_location("path") {
        let name = p["name"].as_str().unwrap_or_default();
        if let Some(value) = found.path_params.get(name) {
            for problem in value_problems(doc, &p["schema"], value) {
                problems.push(format!("path parameter `{name}` = `{value}`: {problem}"));
            }
        }
    }

    // Query parameters.
    let query_defs = by_location("query");
    for (name, value) in query {
        match query_defs.iter().find(|p| p["name"] == name.as_str()) {
            None => problems.push(format!(
                "query parameter `{name}` is not defined for {op_id}"
            )),
            Some(p) => {
                for problem in value_problems(doc, &p["schema"], value) {
                    problems.push(format!("query parameter `{name}` = `{value}`: {problem}"));
                }
            }
        }
    }
    for p in &query_defs {
        let name = p["name"].as_str().unwrap_or_default();
        if p["required"] == true && !query.iter().any(|(k, _)| k == name) {
            problems.push(format!("required query parameter `{name}` is missing"));
        }
    }

    // Header parameters (e.g. X-Twilio-Webhook-Enabled).
    for p in by_location("header") {
        let name = p["name"].as_str().unwrap_or_default();
        let values: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        if values.is_empty() && p["required"] == true {
            problems.push(format!("required header `{name}` is missing"));
        }
        if values.len() > 1 {
            problems.push(format!("header `{name}` is given {} times", values.len()));
        }
        for value in values {
            for problem in value_problems(doc, &p["schema"], value) {
                problems.push(format!("header `{name}: {value}`: {problem}"));
            }
        }
    }

    // Request body.
    let request_body = resolve(doc, &found.operation["requestBody"]);
    let Some(content) = request_body["content"].as_object() else {
        if !raw_body.is_empty() {
            problems.push(format!("{op_id} takes no request body, but one was sent"));
        }
        return;
    };
    let content_type = header_value(headers, "content-type").unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    const FORM: &str = "application/x-www-form-urlencoded";
    let Some(media) = content.get(FORM) else {
        if !content.contains_key(&essence) {
            problems.push(format!(
                "Content-Type `{content_type}` is not one of {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        }
        return;
    };
    if essence != FORM {
        problems.push(format!(
            "Content-Type must be `{FORM}` for {op_id}, got `{content_type}`"
        ));
        return;
    }
    if raw_body.is_empty() && request_body["required"] == true {
        problems.push("the request body is required but empty".to_owned());
    }
    let schema = resolve(doc, &media["schema"]);
    let title = schema["title"].as_str().unwrap_or(op_id);
    let properties = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in params {
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        let Some(property) = properties.get(name) else {
            problems.push(format!(
                "parameter `{name}` is not defined by the request body schema {title}"
            ));
            continue;
        };
        let property = resolve(doc, property);
        let values: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        let item_schema = if property["type"] == "array" {
            resolve(doc, &property["items"])
        } else {
            if values.len() > 1 {
                problems.push(format!(
                    "parameter `{name}` is given {} times but is not an array in {title}",
                    values.len()
                ));
            }
            property
        };
        for value in values {
            for problem in value_problems(doc, item_schema, value) {
                problems.push(format!("parameter `{name}` = `{value}`: {problem}"));
            }
        }
    }
    let present = |name: &str| params.iter().any(|(k, v)| k == name && !v.is_empty());
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap_or_default();
        if !present(name) {
            problems.push(format!(
                "required parameter `{name}` (listed in {title}.required) is missing or empty"
            ));
        }
    }
    if op_id == "CreateMessage" {
        // Twilio's schema lists only `To` as required. The other requirements are documented
        // in prose, not in the schema: the content is `Body`, `MediaUrl` or `ContentSid` (at
        // least one), and the sender is `From` or `MessagingServiceSid` (at least one). Twilio
        // rejects requests without them (errors 21602 / 21603 / 21604), so they are checked
        // here as if the schema said so.
        if !["Body", "MediaUrl", "ContentSid"]
            .iter()
            .any(|n| present(n))
        {
            problems.push(
                "one of `Body`, `MediaUrl`, `ContentSid` is required (Twilio docs; the schema \
                 only marks `To`)"
                    .to_owned(),
            );
        }
        if !["From", "MessagingServiceSid"].iter().any(|n| present(n)) {
            problems.push(
                "one of `From`, `MessagingServiceSid` is required (Twilio docs; the schema only \
                 marks `To`)"
                    .to_owned(),
            );
        }
    }
}

/// Problems of a string `value` (from a form, query, path or header) against `schema`.
fn value_problems(doc: &Value, schema: &Value, value: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut problems = Vec::new();
    if let Some(allowed) = schema["enum"].as_array() {
        let ok = allowed.iter().any(|a| match a {
            Value::String(s) => s == value,
            other => serde_json::from_str::<Value>(value).ok().as_ref() == Some(other),
        });
        if !ok {
            problems.push(format!(
                "not one of the allowed values {}",
                Value::Array(allowed.clone())
            ));
        }
    }
    let ignore_format = schema["x-twilio"]["ignoreFormat"] == true;
    let type_problem = match schema["type"].as_str() {
        Some("integer") => value.parse::<i64>().is_err().then_some("not an integer"),
        Some("number") => value.parse::<f64>().is_err().then_some("not a number"),
        Some("boolean") => (!value.eq_ignore_ascii_case("true")
            && !value.eq_ignore_ascii_case("false"))
        .then_some("not a boolean (`true` / `false`)"),
        Some("string") | None => match schema["format"].as_str() {
            Some("uri") if !ignore_format => url::Url::parse(value)
                .is_err()
                .then_some("not an absolute URI (format: uri)"),
            Some("date-time") if !ignore_format => chrono::DateTime::parse_from_rfc3339(value)
                .is_err()
                .then_some("not an RFC 3339 date-time (format: date-time)"),
            _ => None,
        },
        _ => None,
    };
    problems.extend(type_problem.map(str::to_owned));
    if matches!(schema["type"].as_str(), Some("string") | None) {
        let len = value.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64().filter(|min| len < *min) {
            problems.push(format!("shorter than minLength {min}"));
        }
        if let Some(max) = schema["maxLength"].as_u64().filter(|max| len > *max) {
            problems.push(format!("longer than maxLength {max}"));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            if !pattern_matches(pattern, value) {
                problems.push(format!("does not match pattern `{pattern}`"));
            }
        }
    }
    problems
}

fn pattern_matches(pattern: &str, value: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let validator = {
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache
            .entry(pattern.to_owned())
            .or_insert_with(|| {
                Arc::new(
                    jsonschema::draft202012::new(&json!({ "type": "string", "pattern": pattern }))
                        .unwrap_or_else(|e| {
                            panic!("FakeTwilio: the document's pattern `{pattern}` does not compile: {e}")
                        }),
                )
            })
            .clone()
    };
    validator.is_valid(&Value::String(value.to_owned()))
}

/// An OpenAPI 3.0 schema as JSON Schema 2020-12: `$ref`s inlined, `nullable` turned into a
/// `null` type, vendor extensions and formats left as annotations.
fn to_json_schema(doc: &Value, schema: &Value) -> Value {
    let schema = resolve(doc, schema);
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "nullable" | "description" | "example" | "examples" => {}
            k if k.starts_with("x-") => {}
            "items" => {
                out.insert(key.clone(), to_json_schema(doc, value));
            }
            "properties" => {
                let props = value
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.clone(), to_json_schema(doc, v)))
                            .collect::<Map<_, _>>()
                    })
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Object(props));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if object.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".to_owned(), json!([t, "null"]));
        }
        if let Some(Value::Array(mut allowed)) = out.get("enum").cloned() {
            allowed.push(Value::Null);
            out.insert("enum".to_owned(), Value::Array(allowed));
        }
    }
    Value::Object(out)
}
