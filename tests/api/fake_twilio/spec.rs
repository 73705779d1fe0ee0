//! Twilio's two OpenAPI documents: loading them, finding the operation a request's path and
//! method name, following `$ref`s, and the success response an operation declares (its status
//! and the schema of its resource).

use std::{collections::BTreeMap, path::PathBuf, sync::OnceLock};

use serde_json::{json, Map, Value};

use super::Route;

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
    let path = vendored_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "FakeTwilio needs Twilio's OpenAPI document {file} at {}: {e}. The repository \
             vendors it (see vendor/twilio-oai/README.md).",
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

/// Where the repository keeps its copy of Twilio's OpenAPI documents (origin, version and
/// checksums in its `README.md`).
pub fn vendored_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vendor/twilio-oai")
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

/// The operation's lowest 2xx response at `template` and its status: what a conformant request
/// gets when nothing else is scripted.
pub(super) fn success_response(route: Route, template: &str) -> (u16, &'static Value) {
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
pub(super) fn response_properties(route: Route, template: &str) -> Vec<String> {
    let doc = route.document().json();
    success_response(route, template)
        .1
        .pointer("/content/application~1json/schema")
        .map(|s| resolve(doc, s))
        .and_then(|s| s["properties"].as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The operation a request matched, with the path parameters its template captured.
pub(super) struct FoundOperation {
    pub(super) document: SpecDocument,
    pub(super) template: &'static str,
    pub(super) operation: &'static Value,
    pub(super) path_params: BTreeMap<String, String>,
}

/// Finds the operation for `path` + `method` in either document (the most specific template).
pub(super) fn find_operation(path: &str, method: &str) -> Result<FoundOperation, String> {
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
pub(super) fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
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
pub(super) fn operation_parameters(found: &FoundOperation) -> Vec<&'static Value> {
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
