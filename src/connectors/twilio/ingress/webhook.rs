//! Reading a Twilio webhook request safely: cheap checks first (size, content type, presence of
//! a signature), then the capped body within a deadline, then the signature over the rebuilt
//! public URL. Nothing is parsed beyond the form encoding until the signature holds.
//!
//! Twilio's webhooks can be configured to use GET: the parameters then travel in the query
//! string and the signature covers the full URL with no body parameters, as Twilio's helper
//! libraries validate it.
//!
//! The signed URL is `PUBLIC_BASE_URL` + path and query. Without `PUBLIC_BASE_URL` it can only
//! come from the request itself, which the client controls: the `Host` header, and the
//! `Forwarded` / `X-Forwarded-*` headers only when `TRUST_FORWARDED_HEADERS` says a proxy we
//! trust sets them. That is for local use (production requires `PUBLIC_BASE_URL`), and the
//! first webhook says so in the log.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use actix_web::{
    http::{
        header::{CONTENT_LENGTH, CONTENT_TYPE, HOST},
        Method,
    },
    web, HttpRequest,
};
use futures_util::StreamExt;
use url::Url;

use super::signature::{SignatureValidator, SignedBody};
use crate::error::ApiError;

pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// What every Twilio route needs to check a request.
#[derive(Clone, Debug)]
pub struct WebhookVerifier {
    pub validator: SignatureValidator,
    pub public_base_url: Option<Url>,
    /// Cap of form bodies.
    pub max_body_bytes: usize,
    /// Cap of JSON bodies: Event Streams batches, which can be far larger than a form.
    pub max_json_body_bytes: usize,
    /// How long the body may take to arrive.
    pub body_read_timeout: Duration,
    /// Rebuild the signed URL from `Forwarded` / `X-Forwarded-*` (without `PUBLIC_BASE_URL`).
    pub trust_forwarded_headers: bool,
    /// Set until the first webhook has been warned about a missing `PUBLIC_BASE_URL`.
    pub warn_unconfigured_url: Arc<AtomicBool>,
}

/// Decoded form parameters in body order (names may repeat).
#[derive(Clone, Debug, Default)]
pub struct FormParams(pub Vec<(String, String)>);

impl FormParams {
    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first non-empty value of `name`.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|value| !value.is_empty())
    }

    /// A required, non-empty parameter.
    pub fn require(&self, name: &str) -> Result<&str, ApiError> {
        self.non_empty(name)
            .ok_or_else(|| ApiError::BadRequest(format!("missing form parameter {name}")))
    }

    /// Copies each present, non-empty parameter into `map` under its new name
    /// (`(parameter, key)` pairs, e.g. `("FromCountry", "fromCountry")`).
    pub fn copy_into(
        &self,
        map: &mut serde_json::Map<String, serde_json::Value>,
        renames: &[(&str, &str)],
    ) {
        for (param, key) in renames {
            if let Some(value) = self.non_empty(param) {
                map.insert((*key).to_owned(), value.into());
            }
        }
    }

    /// Parameters from `(name, value)` pairs (tests and tools).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// Every parameter as a JSON object; repeated names become arrays.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (key, value) in &self.0 {
            match map.get_mut(key) {
                None => {
                    map.insert(key.clone(), value.clone().into());
                }
                Some(serde_json::Value::Array(values)) => values.push(value.clone().into()),
                Some(existing) => {
                    let first = existing.take();
                    *existing = serde_json::Value::Array(vec![first, value.clone().into()]);
                }
            }
        }
        serde_json::Value::Object(map)
    }
}

impl WebhookVerifier {
    /// Reads and verifies a webhook's parameters: the form body of a POST, or the query string
    /// of a GET.
    pub async fn params(
        &self,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<FormParams, ApiError> {
        if req.method() == Method::GET {
            self.query(req)
        } else {
            self.form(req, payload).await
        }
    }

    /// Reads and verifies a form-encoded webhook.
    pub async fn form(
        &self,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<FormParams, ApiError> {
        let signature = self.precheck(req, Some(FORM), self.max_body_bytes)?;
        let body = self.read_body(req, payload, self.max_body_bytes).await?;
        let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|e| ApiError::BadRequest(format!("body is not valid form encoding: {e}")))?;
        self.check(req, SignedBody::Form(&params), &signature)?;
        Ok(FormParams(params))
    }

    /// Verifies a GET webhook, whose parameters are its query string (any body is ignored,
    /// as Twilio sends none).
    pub fn query(&self, req: &HttpRequest) -> Result<FormParams, ApiError> {
        let signature = self.precheck(req, None, self.max_body_bytes)?;
        // Signed as Twilio's validators do for GET: the full URL, no body parameters.
        self.check(req, SignedBody::Form(&[]), &signature)?;
        let params: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
            .map_err(|e| ApiError::BadRequest(format!("query is not valid form encoding: {e}")))?;
        Ok(FormParams(params))
    }

    /// Reads and verifies a JSON webhook (signed through the URL's `bodySHA256`).
    pub async fn json(
        &self,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<web::Bytes, ApiError> {
        let limit = self.max_json_body_bytes;
        let signature = self.precheck(req, Some(JSON), limit)?;
        let body = self.read_body(req, payload, limit).await?;
        self.check(req, SignedBody::Json(&body), &signature)?;
        Ok(body)
    }

    /// The signature over the rebuilt URL and `body`, or 403.
    fn check(
        &self,
        req: &HttpRequest,
        body: SignedBody<'_>,
        signature: &str,
    ) -> Result<(), ApiError> {
        let url = self.signed_url(req);
        if self.validator.is_valid(&url, body, signature) {
            return Ok(());
        }
        self.log_mismatch(&url);
        Err(ApiError::BadSignature(match body {
            SignedBody::Form(_) => "X-Twilio-Signature does not match this request",
            SignedBody::Json(_) => "X-Twilio-Signature or bodySHA256 does not match this request",
        }))
    }

    /// Says which URL the signature was checked against (scheme, host and path: never the
    /// signature, the token or the query), since a URL that differs from the one Twilio called
    /// is the usual cause.
    fn log_mismatch(&self, signed_url: &str) {
        let checked = Url::parse(signed_url).map_or_else(
            |_| "<unparseable>".to_owned(),
            |url| format!("{}{}", url.origin().ascii_serialization(), url.path()),
        );
        let base = if self.public_base_url.is_some() {
            "PUBLIC_BASE_URL"
        } else {
            "the request's own scheme and host (PUBLIC_BASE_URL is not set)"
        };
        tracing::warn!(
            checked_url = %checked,
            base,
            "webhook rejected: X-Twilio-Signature does not match checked_url and the auth token"
        );
    }

    /// Size, content type (when a body is expected) and signature presence, before reading
    /// anything.
    fn precheck(
        &self,
        req: &HttpRequest,
        expected_type: Option<&'static str>,
        limit: usize,
    ) -> Result<String, ApiError> {
        if let Some(length) = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if length > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
        }
        if let Some(expected_type) = expected_type {
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_ascii_lowercase());
            if content_type.as_deref() != Some(expected_type) {
                return Err(ApiError::UnsupportedMediaType {
                    expected: expected_type,
                });
            }
        }
        req.headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or(ApiError::BadSignature("missing X-Twilio-Signature header"))
    }

    async fn read_body(
        &self,
        req: &HttpRequest,
        mut payload: web::Payload,
        limit: usize,
    ) -> Result<web::Bytes, ApiError> {
        let capacity = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1024)
            .min(limit);
        let read = async {
            let mut body = web::BytesMut::with_capacity(capacity);
            while let Some(chunk) = payload.next().await {
                let chunk =
                    chunk.map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body.freeze())
        };
        // The signature covers the body, so nothing can be rejected before it has arrived:
        // a deadline keeps a slow sender from holding the connection.
        tokio::time::timeout(self.body_read_timeout, read)
            .await
            .map_err(|_| ApiError::RequestTimeout(self.body_read_timeout))?
    }

    /// The URL Twilio signed: `PUBLIC_BASE_URL` + the raw path and query, or, without it, the
    /// scheme and host this request was addressed to (see the module documentation).
    pub fn signed_url(&self, req: &HttpRequest) -> String {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.path(), |pq| pq.as_str());
        if let Some(base) = &self.public_base_url {
            return format!("{}{}", base.as_str().trim_end_matches('/'), path_and_query);
        }
        if self.warn_unconfigured_url.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                trusted_forwarded_headers = self.trust_forwarded_headers,
                "PUBLIC_BASE_URL is not set: signatures are checked against the URL the request \
                 names (its sender chooses it)"
            );
        }
        if self.trust_forwarded_headers {
            let info = req.connection_info();
            return format!("{}://{}{}", info.scheme(), info.host(), path_and_query);
        }
        let config = req.app_config();
        let scheme = if config.secure() { "https" } else { "http" };
        let host = req
            .headers()
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| config.host());
        format!("{scheme}://{host}{path_and_query}")
    }
}
