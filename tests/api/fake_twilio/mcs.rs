//! Twilio's Media Content Service, which is not in the OpenAPI documents: the one read the
//! service makes (`GET /v1/Services/{ChatServiceSid}/Media/{Sid}`, served here under `/mcs`),
//! answered with the resource shape Twilio documents (`sid`, `service_sid`, `content_type`,
//! `filename`, `size`, `links.content` and `links.content_direct_temporary`). Media must be
//! seeded ([`super::FakeTwilio::seed_mcs_media`]); others answer 404 with error 20404.

use serde_json::{json, Value};

use super::emulation::{twilio_error, Answer, State};

/// The path prefix the fake serves the Media Content Service under.
pub const PREFIX: &str = "/mcs";

/// Answers a request whose path starts with [`PREFIX`].
pub(super) fn answer(state: &State, method: &str, path: &str) -> Answer {
    let segments: Vec<&str> = path
        .trim_start_matches(PREFIX)
        .trim_matches('/')
        .split('/')
        .collect();
    let ["v1", "Services", service, "Media", sid] = segments.as_slice() else {
        return Answer::json(
            404,
            twilio_error(404, 20404, "The requested resource was not found"),
        );
    };
    if method != "GET" {
        return Answer::json(405, twilio_error(405, 20004, "Method not allowed"));
    }
    let inner = state.lock();
    match inner.mcs_media.get(*sid) {
        Some(content_type) => Answer::json(
            200,
            resource(&state.account_sid, service, sid, content_type),
        ),
        None => Answer::json(
            404,
            twilio_error(404, 20404, "The requested resource was not found"),
        ),
    }
}

fn resource(account_sid: &str, service: &str, sid: &str, content_type: &str) -> Value {
    json!({
        "sid": sid,
        "account_sid": account_sid,
        "service_sid": service,
        "date_created": "2026-01-01T00:00:00.000Z",
        "date_upload_updated": "2026-01-01T00:00:00.000Z",
        "date_updated": "2026-01-01T00:00:00.000Z",
        "links": {
            "content": format!("/v1/Services/{service}/Media/{sid}/Content"),
            "content_direct_temporary": temporary_url(sid),
        },
        "size": 1024,
        "content_type": content_type,
        "filename": format!("{sid}.bin"),
        "author": "system",
        "category": "media",
        "message_sid": null,
        "channel_sid": null,
        "url": format!("/v1/Services/{service}/Media/{sid}"),
        "is_multipart_upstreamed": false,
    })
}

/// The temporary download URL the fake hands out for `sid`.
pub fn temporary_url(sid: &str) -> String {
    format!("https://media.us1.twilio.com/{sid}?Expires=1767225600&Signature=fake")
}
