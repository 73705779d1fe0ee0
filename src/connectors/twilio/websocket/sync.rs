//! The Sync subset Conversations runs on: object descriptors, item pages, subscriptions and
//! the events they push (`twilio.sync.event` and `com.twilio.rtd.cds.*` notifications).
//!
//! Conversations, their message lists and the identity's conversation map are all Sync
//! objects; new messages arrive as `list_item_added` events on a conversation's list.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use super::upstream::{Request, Upstream, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("malformed Sync event: {0}")]
    BadEvent(String),
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    Document,
    List,
    Map,
}

impl ObjectType {
    fn collection(self) -> &'static str {
        match self {
            Self::Document => "Documents",
            Self::List => "Lists",
            Self::Map => "Maps",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Document => "document",
            Self::List => "list",
            Self::Map => "map",
        }
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct Links {
    #[serde(default)]
    pub items: Option<String>,
}

/// `GET /v3/{Documents|Lists|Maps}/{id}`.
#[derive(Deserialize, Debug, Clone)]
pub struct Descriptor {
    pub sid: String,
    #[serde(default)]
    pub unique_name: Option<String>,
    #[serde(default)]
    pub last_event_id: u64,
    #[serde(default)]
    pub links: Option<Links>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub items: Option<Vec<Item>>,
}

/// A list item (`index`) or map item (`key`).
#[derive(Deserialize, Debug, Clone)]
pub struct Item {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub last_event_id: u64,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct Meta {
    #[serde(default)]
    pub previous_token: Option<Value>,
    #[serde(default)]
    pub next_token: Option<Value>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ItemsPage {
    #[serde(default)]
    pub items: Vec<Item>,
    #[serde(default)]
    pub meta: Meta,
}

impl ItemsPage {
    pub fn has_next(&self) -> bool {
        self.meta
            .next_token
            .as_ref()
            .is_some_and(|token| !token.is_null())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// `From` is inclusive, as on the server.
#[derive(Clone, Debug)]
pub struct ItemsQuery {
    pub from: Option<String>,
    pub page_size: u32,
    pub order: Order,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub object_sid: String,
    pub object_type: ObjectType,
    pub last_event_id: u64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct SubscribeReply {
    #[serde(default)]
    pub estimated_delivery_in_ms: Option<u64>,
    #[serde(default)]
    pub max_batch_size: Option<usize>,
}

#[derive(Clone)]
pub struct SyncApi {
    upstream: Upstream,
    base: Url,
}

impl SyncApi {
    /// `base` is `https://cds.<region>.twilio.com`.
    pub fn new(upstream: Upstream, base: Url) -> Self {
        Self { upstream, base }
    }

    fn object_url(&self, kind: ObjectType, id: &str) -> Result<Url, UpstreamError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| UpstreamError::BadUrl {
                url: self.base.to_string(),
                reason: "cannot be a base".into(),
            })?
            .clear()
            .push("v3")
            .push(kind.collection())
            .push(id);
        Ok(url)
    }

    pub async fn descriptor(
        &self,
        kind: ObjectType,
        id: &str,
        include_items: bool,
    ) -> Result<Descriptor, SyncError> {
        let mut request = Request::sync("GET", self.object_url(kind, id)?, None);
        if include_items {
            request = request.param("Include", "items");
        }
        Ok(self.upstream.json(&request).await?)
    }

    /// The items URL of an object: from its descriptor when known, else derived from its sid.
    pub fn items_url(&self, kind: ObjectType, descriptor: &Descriptor) -> Result<Url, SyncError> {
        if let Some(items) = descriptor.links.as_ref().and_then(|l| l.items.as_deref()) {
            if let Ok(url) = Url::parse(items) {
                return Ok(url);
            }
        }
        let mut url = self.object_url(kind, &descriptor.sid)?;
        url.path_segments_mut()
            .map_err(|_| UpstreamError::BadUrl {
                url: self.base.to_string(),
                reason: "cannot be a base".into(),
            })?
            .push("Items");
        Ok(url)
    }

    pub async fn items(&self, items_url: &Url, query: &ItemsQuery) -> Result<ItemsPage, SyncError> {
        let mut request =
            Request::sync("GET", items_url.clone(), None).param("HideExpired", "true");
        if let Some(from) = &query.from {
            request = request.param("From", from);
        }
        request = request.param("PageSize", query.page_size).param(
            "Order",
            match query.order {
                Order::Asc => "asc",
                Order::Desc => "desc",
            },
        );
        let mut page: ItemsPage = self.upstream.json(&request).await?;
        // Pages are documented ascending whatever the order; make that true for callers.
        page.items.sort_by(|a, b| match (a.index, b.index) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => a.key.cmp(&b.key),
        });
        Ok(page)
    }

    /// Every item of a map, paged by key (`From` inclusive, the anchor dropped).
    pub async fn all_map_items(
        &self,
        items_url: &Url,
        page_size: u32,
    ) -> Result<Vec<Item>, SyncError> {
        let mut items: Vec<Item> = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let page = self
                .items(
                    items_url,
                    &ItemsQuery {
                        from: from.clone(),
                        page_size,
                        order: Order::Asc,
                    },
                )
                .await?;
            let before = items.len();
            for item in page.items.iter() {
                if from.is_some() && item.key == from {
                    continue;
                }
                items.push(item.clone());
            }
            let progressed = items.len() > before;
            if !page.has_next() || !progressed {
                return Ok(items);
            }
            from = items.last().and_then(|item| item.key.clone());
        }
    }

    pub async fn subscribe(
        &self,
        establish: bool,
        correlation_id: u64,
        retried: u32,
        requests: &[SubscriptionRequest],
    ) -> Result<SubscribeReply, SyncError> {
        let mut url = self.base.clone();
        url.set_path("/v4/Subscriptions");
        let body = json!({
            "event_protocol_version": 4,
            "action": if establish { "establish" } else { "cancel" },
            "correlation_id": correlation_id,
            "retried_requests": retried,
            "ttl_in_s": -1,
            "requests": requests,
        });
        let request = Request::sync("POST", url, Some(&body));
        Ok(self.upstream.json(&request).await?)
    }
}

/// What changed on an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Updated,
    Removed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ItemKey {
    Index(u64),
    Key(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    Established {
        correlation_id: Option<u64>,
        objects: Vec<(String, Option<u64>)>,
    },
    Failed {
        object_sid: String,
        status: Option<u64>,
        message: Option<String>,
    },
    Canceled {
        object_sid: String,
    },
    Item {
        object_type: ObjectType,
        object_sid: String,
        event_id: u64,
        change: Change,
        key: ItemKey,
        data: Value,
    },
    DocumentUpdated {
        object_sid: String,
        event_id: u64,
        data: Value,
    },
    Removed {
        object_type: ObjectType,
        object_sid: String,
    },
    /// An event type this client does not act on.
    Ignored(String),
}

/// Whether a notification type carries Sync events.
pub fn is_sync_message_type(message_type: &str) -> bool {
    message_type == "twilio.sync.event" || message_type.starts_with("com.twilio.rtd.cds.")
}

/// Turns one notification payload into events (`event` or `events`).
pub fn parse_notification(payload: &Value) -> Result<Vec<SyncEvent>, SyncError> {
    let event_type = payload
        .get("event_type")
        .and_then(Value::as_str)
        .ok_or_else(|| SyncError::BadEvent("no event_type".into()))?;
    let bodies: Vec<&Value> = match (payload.get("events"), payload.get("event")) {
        (Some(Value::Array(events)), _) => events.iter().collect(),
        (_, Some(event)) => vec![event],
        _ => {
            return Err(SyncError::BadEvent(format!(
                "{event_type} without event(s)"
            )))
        }
    };
    if event_type == "subscription_established" {
        let correlation_id = payload.get("correlation_id").and_then(Value::as_u64);
        let objects = bodies
            .iter()
            .filter_map(|body| {
                let sid = body.get("object_sid").and_then(Value::as_str)?;
                Some((
                    sid.to_owned(),
                    body.get("last_event_id").and_then(Value::as_u64),
                ))
            })
            .collect();
        return Ok(vec![SyncEvent::Established {
            correlation_id,
            objects,
        }]);
    }
    bodies
        .into_iter()
        .map(|body| parse_event(event_type, body))
        .collect()
}

fn parse_event(event_type: &str, body: &Value) -> Result<SyncEvent, SyncError> {
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
    let required = |field: &str| {
        text(field).ok_or_else(|| SyncError::BadEvent(format!("{event_type} without {field}")))
    };
    let event_id = || {
        body.get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| SyncError::BadEvent(format!("{event_type} without a numeric id")))
    };
    let item = |object_type: ObjectType, change: Change| -> Result<SyncEvent, SyncError> {
        let object_sid = required(&format!("{}_sid", object_type.prefix()))?;
        let key =
            match object_type {
                ObjectType::List => {
                    ItemKey::Index(body.get("item_index").and_then(Value::as_u64).ok_or_else(
                        || SyncError::BadEvent(format!("{event_type} without item_index")),
                    )?)
                }
                _ => ItemKey::Key(required("item_key")?),
            };
        Ok(SyncEvent::Item {
            object_type,
            object_sid,
            event_id: event_id()?,
            change,
            key,
            data: body.get("item_data").cloned().unwrap_or(Value::Null),
        })
    };
    match event_type {
        "subscription_failed" => Ok(SyncEvent::Failed {
            object_sid: required("object_sid")?,
            status: body
                .get("error")
                .and_then(|error| error.get("status"))
                .and_then(Value::as_u64),
            message: body
                .get("error")
                .and_then(|error| error.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
        "subscription_canceled" => Ok(SyncEvent::Canceled {
            object_sid: required("object_sid")?,
        }),
        "list_item_added" => item(ObjectType::List, Change::Added),
        "list_item_updated" => item(ObjectType::List, Change::Updated),
        "list_item_removed" => item(ObjectType::List, Change::Removed),
        "map_item_added" => item(ObjectType::Map, Change::Added),
        "map_item_updated" => item(ObjectType::Map, Change::Updated),
        "map_item_removed" => item(ObjectType::Map, Change::Removed),
        "document_updated" => Ok(SyncEvent::DocumentUpdated {
            object_sid: required("document_sid")?,
            event_id: event_id()?,
            data: body.get("document_data").cloned().unwrap_or(Value::Null),
        }),
        "document_removed" => Ok(SyncEvent::Removed {
            object_type: ObjectType::Document,
            object_sid: required("document_sid")?,
        }),
        "list_removed" => Ok(SyncEvent::Removed {
            object_type: ObjectType::List,
            object_sid: required("list_sid")?,
        }),
        "map_removed" => Ok(SyncEvent::Removed {
            object_type: ObjectType::Map,
            object_sid: required("map_sid")?,
        }),
        other => Ok(SyncEvent::Ignored(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_item_added_is_parsed() {
        let payload = json!({
            "event_type": "list_item_added",
            "event": {
                "id": 7, "date_created": "2024-05-14T09:30:01.120Z",
                "list_sid": "ES1", "list_revision": "7", "list_unique_name": "CH1.messages",
                "item_index": 3, "item_revision": "0", "item_url": "https://cds/…",
                "item_data": {"sid": "IM1", "text": "hi", "author": "+15551230000", "attributes": "{}"}
            }
        });
        let events = parse_notification(&payload).unwrap();
        assert_eq!(
            events,
            vec![SyncEvent::Item {
                object_type: ObjectType::List,
                object_sid: "ES1".into(),
                event_id: 7,
                change: Change::Added,
                key: ItemKey::Index(3),
                data: payload["event"]["item_data"].clone(),
            }]
        );
    }

    #[test]
    fn replayed_batches_and_map_events_are_parsed() {
        let payload = json!({
            "event_type": "map_item_updated",
            "correlation_id": 17,
            "events": [
                {"id": 2, "map_sid": "MP1", "item_key": "CH1", "item_data": {"status": "joined"}},
                {"id": 3, "map_sid": "MP1", "item_key": "CH2", "item_data": {"status": "notParticipating"}}
            ]
        });
        let events = parse_notification(&payload).unwrap();
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[1], SyncEvent::Item { key: ItemKey::Key(k), event_id: 3, change: Change::Updated, .. } if k == "CH2")
        );
    }

    #[test]
    fn subscription_control_events() {
        let established = json!({
            "event_type": "subscription_established", "correlation_id": 5,
            "events": [{"object_sid": "MP1", "object_type": "map", "replay_status": "completed", "last_event_id": 9}]
        });
        assert_eq!(
            parse_notification(&established).unwrap(),
            vec![SyncEvent::Established {
                correlation_id: Some(5),
                objects: vec![("MP1".into(), Some(9))]
            }]
        );
        let single =
            json!({"event_type": "subscription_established", "event": {"object_sid": "ES1"}});
        assert!(
            matches!(&parse_notification(&single).unwrap()[0], SyncEvent::Established { objects, .. } if objects[0].1.is_none())
        );
        let failed = json!({"event_type": "subscription_failed", "event": {"object_sid": "ES1", "error": {"status": 404, "code": 54100, "message": "gone"}}});
        assert_eq!(
            parse_notification(&failed).unwrap(),
            vec![SyncEvent::Failed {
                object_sid: "ES1".into(),
                status: Some(404),
                message: Some("gone".into())
            }]
        );
    }

    #[test]
    fn documents_and_unknown_types() {
        let doc = json!({"event_type": "document_updated", "event": {"id": 4, "document_sid": "ET1", "document_data": {"state": {"current": "closed"}}}});
        assert!(matches!(
            &parse_notification(&doc).unwrap()[0],
            SyncEvent::DocumentUpdated { event_id: 4, .. }
        ));
        let other = json!({"event_type": "stream_message_published", "event": {}});
        assert_eq!(
            parse_notification(&other).unwrap(),
            vec![SyncEvent::Ignored("stream_message_published".into())]
        );
    }

    #[test]
    fn malformed_events_are_errors_not_panics() {
        for payload in [
            json!({}),
            json!({"event_type": "list_item_added"}),
            json!({"event_type": "list_item_added", "event": {"id": 1, "list_sid": "ES1"}}),
            json!({"event_type": "list_item_added", "event": {"id": "x", "list_sid": "ES1", "item_index": 1}}),
            json!({"event_type": "map_item_added", "event": {"id": 1, "map_sid": "MP1"}}),
            json!({"event_type": "list_item_added", "event": {"id": 1, "item_index": 1}}),
        ] {
            assert!(parse_notification(&payload).is_err(), "{payload}");
        }
    }

    #[test]
    fn message_types() {
        assert!(is_sync_message_type("twilio.sync.event"));
        assert!(is_sync_message_type("com.twilio.rtd.cds.list"));
        assert!(!is_sync_message_type("twilio.ipmsg.typing_indicator"));
    }

    #[test]
    fn page_tokens() {
        let page: ItemsPage = serde_json::from_value(
            json!({"items": [], "meta": {"previous_token": null, "next_token": "x"}}),
        )
        .unwrap();
        assert!(page.has_next());
        let page: ItemsPage =
            serde_json::from_value(json!({"items": [], "meta": {"next_token": null}})).unwrap();
        assert!(!page.has_next());
    }
}
