//! Checks a request against the operation it matched: HTTP Basic credentials, the
//! `Content-Type`, and the form, query, path and header parameters against their schemas
//! (type, enum, pattern, length). Each departure becomes one problem string, so a test failure
//! names every way the request broke the document.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use base64::Engine as _;
use serde_json::{json, Value};

use super::spec::{operation_parameters, resolve, FoundOperation};

pub(super) fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub(super) fn check_auth(
    headers: &[(String, String)],
    username: &str,
    password: &str,
) -> Option<String> {
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

pub(super) fn check_operation(
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
