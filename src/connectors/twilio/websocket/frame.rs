//! Twilsock v3 frames: `TWILSOCK V3.0 <header byte length>\r\n<header JSON>\r\n<payload>`.
//!
//! Parsing is strict: anything that does not match the framing exactly is an error value, so a
//! malformed server frame is counted and skipped instead of being half-understood.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const MAGIC: &[u8] = b"TWILSOCK V3.0 ";
/// Longest header-length field accepted; real headers are a few hundred bytes.
const MAX_LENGTH_DIGITS: usize = 9;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame does not start with the twilsock v3 preamble")]
    BadPreamble,
    #[error("header length is missing or not a decimal number")]
    BadLength,
    #[error("frame is truncated: header needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("header is not followed by CRLF")]
    MissingSeparator,
    #[error("header is not UTF-8")]
    HeaderNotUtf8,
    #[error("header is not a valid JSON object: {0}")]
    BadHeader(String),
    #[error("payload_size says {declared} bytes but {actual} follow")]
    PayloadSize { declared: usize, actual: usize },
}

/// Twilsock methods. Unknown ones are kept as `Other` so new server methods are acked, not
/// rejected.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Method {
    #[serde(rename = "init")]
    Init,
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "message")]
    Message,
    #[serde(rename = "reply")]
    Reply,
    #[serde(rename = "notification")]
    Notification,
    #[serde(rename = "client_update")]
    ClientUpdate,
    #[serde(rename = "close")]
    Close,
    #[serde(rename = "ping")]
    Ping,
    #[serde(rename = "telemetry.v1")]
    Telemetry,
    #[serde(other)]
    Other,
}

/// Transport-level status of a reply or close (`status` in the header).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub code: u16,
    #[serde(default)]
    pub status: String,
    #[serde(rename = "errorCode", default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Status {
    pub fn ok() -> Self {
        Self {
            code: 200,
            status: "OK".into(),
            error_code: None,
            description: None,
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// `http_request` of an upstream `message`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequest {
    pub host: String,
    pub path: String,
    pub method: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    #[serde(default)]
    pub headers: Map<String, Value>,
}

/// `http_status` of an upstream reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpStatus {
    pub code: u16,
    #[serde(default)]
    pub status: String,
}

/// A twilsock header. Fields not named here are kept in `extra`, so nothing a server sends is
/// lost between parse and use.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Header {
    pub method: Method,
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_grant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_request: Option<HttpRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<HttpStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_headers: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_update_type: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Header {
    pub fn new(method: Method, id: impl Into<String>) -> Self {
        Self {
            method,
            id: id.into(),
            status: None,
            token: None,
            payload_size: None,
            payload_type: None,
            active_grant: None,
            http_request: None,
            http_status: None,
            http_headers: None,
            message_type: None,
            client_update_type: None,
            extra: Map::new(),
        }
    }

    /// The acknowledgement the client sends for every non-reply server frame.
    pub fn ack(id: &str) -> Self {
        let mut header = Self::new(Method::Reply, id);
        header.status = Some(Status::ok());
        header
    }

    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(header: Header) -> Self {
        Self {
            header,
            payload: Vec::new(),
        }
    }

    pub fn with_json(mut header: Header, payload: &Value) -> Self {
        header.payload_type = Some("application/json".into());
        Self {
            header,
            payload: payload.to_string().into_bytes(),
        }
    }

    /// The payload as JSON when it is JSON (or untyped and non-empty, which twilsock treats as
    /// JSON); `None` for an empty payload.
    pub fn json_payload(&self) -> Result<Option<Value>, serde_json::Error> {
        if self.payload.is_empty() {
            return Ok(None);
        }
        match self.header.payload_type.as_deref() {
            Some(kind) if !kind.starts_with("application/json") => Ok(None),
            _ => serde_json::from_slice(&self.payload).map(Some),
        }
    }

    /// Serializes the frame; `payload_size` is always set from the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        header.payload_size = Some(self.payload.len());
        // A header of plain strings, numbers and maps always serializes.
        let header_json = serde_json::to_vec(&header).unwrap_or_else(|_| b"{}".to_vec());
        let length = header_json.len().to_string();
        let mut out = Vec::with_capacity(
            MAGIC.len() + length.len() + header_json.len() + self.payload.len() + 4,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(length.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&header_json);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(FrameError::BadPreamble)?;
        let digits_end = rest
            .iter()
            .position(|byte| !byte.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 || digits_end > MAX_LENGTH_DIGITS {
            return Err(FrameError::BadLength);
        }
        let header_len: usize = std::str::from_utf8(&rest[..digits_end])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or(FrameError::BadLength)?;
        let rest = rest[digits_end..]
            .strip_prefix(b"\r\n")
            .ok_or(FrameError::BadLength)?;
        if rest.len() < header_len {
            return Err(FrameError::Truncated {
                needed: header_len,
                available: rest.len(),
            });
        }
        let (header_bytes, rest) = rest.split_at(header_len);
        let header_text =
            std::str::from_utf8(header_bytes).map_err(|_| FrameError::HeaderNotUtf8)?;
        let header: Header =
            serde_json::from_str(header_text).map_err(|e| FrameError::BadHeader(e.to_string()))?;
        let payload = match rest.strip_prefix(b"\r\n") {
            Some(payload) => payload,
            // A header-only frame may end right after the header.
            None if rest.is_empty() => rest,
            None => return Err(FrameError::MissingSeparator),
        };
        let declared = header.payload_size.unwrap_or(0);
        if declared != payload.len() {
            return Err(FrameError::PayloadSize {
                declared,
                actual: payload.len(),
            });
        }
        Ok(Self {
            header,
            payload: payload.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(header: &str, payload: &str) -> Vec<u8> {
        format!("TWILSOCK V3.0 {}\r\n{header}\r\n{payload}", header.len()).into_bytes()
    }

    #[test]
    fn round_trip_with_json_payload() {
        let mut header = Header::new(Method::Message, "TM1");
        header.active_grant = Some("ip_messaging".into());
        header.http_request = Some(HttpRequest {
            host: "aim.us1.twilio.com".into(),
            path: "/Client/v2/Configuration".into(),
            method: "GET".into(),
            ..Default::default()
        });
        let frame = Frame::with_json(header, &json!({"a": "é"}));
        let bytes = frame.encode();
        let decoded = Frame::decode(&bytes).unwrap();
        assert_eq!(decoded.header.payload_size, Some(frame.payload.len()));
        assert_eq!(decoded.json_payload().unwrap(), Some(json!({"a": "é"})));
        assert_eq!(decoded.header.http_request, frame.header.http_request);
    }

    #[test]
    fn parses_a_server_notification_with_unknown_fields() {
        let payload = r#"{"event_type":"list_item_added","event":{"id":3}}"#;
        let header = format!(
            r#"{{"method":"notification","id":"TM9","message_type":"com.twilio.rtd.cds.list","payload_type":"application/json","payload_size":{},"future":{{"x":1}}}}"#,
            payload.len()
        );
        let frame = Frame::decode(&raw(&header, payload)).unwrap();
        assert_eq!(frame.header.method, Method::Notification);
        assert_eq!(
            frame.header.message_type.as_deref(),
            Some("com.twilio.rtd.cds.list")
        );
        assert_eq!(frame.header.extra["future"], json!({"x": 1}));
        assert_eq!(frame.json_payload().unwrap().unwrap()["event"]["id"], 3);
    }

    #[test]
    fn unknown_method_is_other_and_reply_status_parses() {
        let frame = Frame::decode(&raw(
            r#"{"method":"reply","id":"TM1","status":{"code":401,"status":"Unauthorized","errorCode":20104,"description":"expired"}}"#,
            "",
        ))
        .unwrap();
        let status = frame.header.status.unwrap();
        assert_eq!((status.code, status.error_code), (401, Some(20104)));
        assert!(!status.is_success());
        let frame = Frame::decode(&raw(r#"{"method":"brand_new","id":"x"}"#, "")).unwrap();
        assert_eq!(frame.header.method, Method::Other);
    }

    #[test]
    fn header_only_frame_without_trailing_crlf_is_accepted() {
        let header =
            r#"{"method":"close","id":"TM2","status":{"code":410,"status":"Token expired"}}"#;
        let bytes = format!("TWILSOCK V3.0 {}\r\n{header}", header.len()).into_bytes();
        let frame = Frame::decode(&bytes).unwrap();
        assert_eq!(frame.header.status.unwrap().code, 410);
    }

    #[test]
    fn truncated_frames_are_errors_at_every_cut() {
        let frame = Frame::with_json(
            Header::new(Method::Notification, "TM1"),
            &json!({"k": [1, 2, 3]}),
        );
        let bytes = frame.encode();
        for cut in 0..bytes.len() {
            let result = Frame::decode(&bytes[..cut]);
            assert!(result.is_err(), "cut at {cut} parsed: {result:?}");
        }
        assert!(Frame::decode(&bytes).is_ok());
    }

    #[test]
    fn bad_lengths_are_rejected() {
        let header = r#"{"method":"reply","id":"a"}"#;
        for bad in [
            format!("TWILSOCK V3.0 \r\n{header}\r\n"),
            format!("TWILSOCK V3.0 -5\r\n{header}\r\n"),
            format!("TWILSOCK V3.0 12a\r\n{header}\r\n"),
            format!("TWILSOCK V3.0 99999999999999999999\r\n{header}\r\n"),
            format!("TWILSOCK V3.0 {}\n{header}\r\n", header.len()),
        ] {
            assert_eq!(
                Frame::decode(bad.as_bytes()).unwrap_err(),
                FrameError::BadLength,
                "{bad}"
            );
        }
        // Length too short: the header JSON is cut, so it is bad JSON or a missing separator.
        let short = format!("TWILSOCK V3.0 {}\r\n{header}\r\n", header.len() - 1);
        assert!(Frame::decode(short.as_bytes()).is_err());
        let long = format!("TWILSOCK V3.0 {}\r\n{header}\r\n", header.len() + 10);
        assert!(matches!(
            Frame::decode(long.as_bytes()).unwrap_err(),
            FrameError::Truncated { .. }
        ));
    }

    #[test]
    fn other_preambles_are_rejected() {
        assert_eq!(Frame::decode(b"").unwrap_err(), FrameError::BadPreamble);
        assert_eq!(
            Frame::decode(b"TWILSOCK V2.0 2\r\n{}\r\n").unwrap_err(),
            FrameError::BadPreamble
        );
        assert_eq!(
            Frame::decode(b"twilsock v3.0 2\r\n{}\r\n").unwrap_err(),
            FrameError::BadPreamble
        );
    }

    #[test]
    fn non_utf8_header_is_rejected() {
        let mut bytes = b"TWILSOCK V3.0 4\r\n".to_vec();
        bytes.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
        bytes.extend_from_slice(b"\r\n");
        assert_eq!(
            Frame::decode(&bytes).unwrap_err(),
            FrameError::HeaderNotUtf8
        );
    }

    #[test]
    fn non_object_or_methodless_header_is_rejected() {
        for header in ["[1,2]", "\"x\"", r#"{"id":"TM1"}"#, "{not json}"] {
            assert!(matches!(
                Frame::decode(&raw(header, "")).unwrap_err(),
                FrameError::BadHeader(_)
            ));
        }
    }

    #[test]
    fn payload_size_must_match() {
        let header = r#"{"method":"notification","id":"a","payload_size":5}"#;
        assert_eq!(
            Frame::decode(&raw(header, "abc")).unwrap_err(),
            FrameError::PayloadSize {
                declared: 5,
                actual: 3
            }
        );
        let header = r#"{"method":"notification","id":"a"}"#;
        assert_eq!(
            Frame::decode(&raw(header, "abc")).unwrap_err(),
            FrameError::PayloadSize {
                declared: 0,
                actual: 3
            }
        );
        let header = r#"{"method":"notification","id":"a","payload_size":3}"#;
        let mut bytes = raw(header, "abc");
        bytes.truncate(bytes.len() - 3);
        bytes.extend_from_slice(b"ab");
        assert!(Frame::decode(&bytes).is_err());
    }

    #[test]
    fn missing_separator_after_header() {
        let header = r#"{"method":"reply","id":"a"}"#;
        let bytes = format!("TWILSOCK V3.0 {}\r\n{header}XX", header.len());
        assert_eq!(
            Frame::decode(bytes.as_bytes()).unwrap_err(),
            FrameError::MissingSeparator
        );
    }

    #[test]
    fn payload_size_counts_utf8_bytes() {
        let frame = Frame::with_json(Header::new(Method::Message, "TM1"), &json!("ünïcödé"));
        let bytes = frame.encode();
        let decoded = Frame::decode(&bytes).unwrap();
        assert_eq!(decoded.header.payload_size, Some("\"ünïcödé\"".len()));
    }

    #[test]
    fn text_payload_is_not_json() {
        let mut header = Header::new(Method::Notification, "TM1");
        header.payload_type = Some("text/plain".into());
        let frame = Frame {
            header,
            payload: b"hello".to_vec(),
        };
        assert_eq!(
            Frame::decode(&frame.encode())
                .unwrap()
                .json_payload()
                .unwrap(),
            None
        );
    }

    #[test]
    fn pseudo_random_mutations_never_panic() {
        let frame = Frame::with_json(Header::new(Method::Notification, "TM1"), &json!({"k": "v"}));
        let bytes = frame.encode();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut mutated = bytes.clone();
            let position = (seed as usize) % mutated.len();
            mutated[position] = (seed >> 32) as u8;
            let _ = Frame::decode(&mutated);
        }
    }
}
