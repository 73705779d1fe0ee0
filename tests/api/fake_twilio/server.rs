//! The HTTP side of the fake: an actix server on 127.0.0.1 whose one catch-all handler records
//! each request, checks it against the documents, and answers a conformant one through the
//! emulation (a departure gets 400, or 401 for authentication, and no emulated effect).

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;

use super::{
    emulation::{answer_for, twilio_error, Answer, State},
    mcs,
    spec::find_operation,
    validate::{check_auth, check_operation, header_value},
    RecordedRequest, Reply, Route,
};

/// Serves `state` on a free port of 127.0.0.1 in the background; returns the port and the
/// handle that stops the server.
pub(super) fn start(state: web::Data<State>) -> (u16, ServerHandle) {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("FakeTwilio: cannot bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
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
    (port, handle)
}

/// Every request lands here. It is recorded before it is answered, so a test also sees the
/// requests that got 400 / 401.
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
    if path.starts_with(mcs::PREFIX) {
        let answer = mcs::answer(&state, &method, &path);
        let mut inner = state.lock();
        if let Some(p) = &auth_problem {
            inner
                .violations
                .push(format!("{method} {path}: authentication: {p}"));
        }
        inner.requests.push(RecordedRequest {
            route: None,
            method,
            path,
            path_params: BTreeMap::new(),
            params,
            headers,
            idempotency_token,
            query,
            received_at,
        });
        return answer.into_response();
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
