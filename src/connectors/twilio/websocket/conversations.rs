//! The Conversations layer over Sync and aim: the Configuration document, the identity's
//! conversations map, joining/leaving, message history and sending, and the mapping of a
//! messages-list item to a [`MessageAdded`] that carries what the `onMessageAdded` webhook
//! carries (so the service builds the same envelope with the same `message_id`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use url::Url;

use super::sync::{Item, ItemsQuery, Order, SyncApi, SyncError};
use super::upstream::{Request, Upstream, UpstreamError};
use crate::connectors::twilio::{
    ingress::{conversations::is_own_message, webhook::FormParams},
    rest::ERROR_ALREADY_PARTICIPANT,
};

/// Twilio's "User conversation limit exceeded" (an identity is in 1,000 conversations).
pub const PARTICIPANT_LIMIT_CODE: i64 = 50214;

#[derive(Debug, thiserror::Error)]
pub enum ConversationsError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("identity {identity} is in the maximum number of conversations ({detail})")]
    ParticipantLimit { identity: String, detail: String },
    #[error("configuration link {0} is missing or not a URL")]
    BadLink(&'static str),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct SyncObjects {
    #[serde(default)]
    pub my_conversations: String,
    #[serde(default)]
    pub my_user_info: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct ConfigLinks {
    #[serde(default)]
    pub my_conversations: String,
    #[serde(default)]
    pub conversations: String,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `GET aim /Client/v2/Configuration`: everything else is found from here.
#[derive(Deserialize, Debug, Clone)]
pub struct Configuration {
    #[serde(default)]
    pub identity: String,
    #[serde(default)]
    pub sync_objects: SyncObjects,
    #[serde(default)]
    pub links: ConfigLinks,
    #[serde(default)]
    pub options: Value,
}

impl Configuration {
    fn conversations_url(&self, segments: &[&str]) -> Result<Url, ConversationsError> {
        let mut url = Url::parse(&self.links.conversations)
            .map_err(|_| ConversationsError::BadLink("conversations"))?;
        url.path_segments_mut()
            .map_err(|_| ConversationsError::BadLink("conversations"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }
}

/// Membership status in the identity's conversations map.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Membership {
    Joined,
    NotParticipating,
    /// A status this client does not know; left alone.
    Unknown,
}

/// One item of the my_conversations map.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationListed {
    pub sid: String,
    pub status: Membership,
    /// Id (unique name or sid) of the conversation document.
    pub channel: Option<String>,
    /// Id of the messages list, when the map item names it.
    pub messages: Option<String>,
    pub friendly_name: Option<String>,
    pub unique_name: Option<String>,
}

impl ConversationListed {
    pub fn from_map_item(key: &str, data: &Value) -> Self {
        let text = |field: &str| data.get(field).and_then(Value::as_str).map(str::to_owned);
        Self {
            sid: key.to_owned(),
            status: match data.get("status").and_then(Value::as_str) {
                Some("joined") => Membership::Joined,
                Some("notParticipating") => Membership::NotParticipating,
                _ => Membership::Unknown,
            },
            channel: text("channel"),
            messages: text("messages"),
            friendly_name: text("friendlyName"),
            unique_name: text("uniqueName"),
        }
    }
}

/// One media attachment, as the webhook's `Media` list names its fields.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MediaItem {
    #[serde(rename = "Sid")]
    pub sid: String,
    #[serde(rename = "Filename", skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(rename = "ContentType", skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(rename = "Size", skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(rename = "Category", skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl MediaItem {
    fn from_sync(value: &Value) -> Option<Self> {
        let text = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| value.get(*name).and_then(Value::as_str))
                .map(str::to_owned)
        };
        Some(Self {
            sid: text(&["sid", "Sid"])?,
            filename: text(&["filename", "Filename"]),
            content_type: text(&["contentType", "content_type", "ContentType"]),
            size: ["size", "Size"]
                .iter()
                .find_map(|name| value.get(*name).and_then(Value::as_u64)),
            category: text(&["category", "Category"]),
        })
    }
}

/// A new conversation message, with what the `onMessageAdded` webhook would carry.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MessageAdded {
    pub account_sid: String,
    pub chat_service_sid: String,
    pub conversation_sid: String,
    pub message_sid: String,
    pub index: u64,
    pub author: String,
    pub body: String,
    /// The attributes JSON as Twilio stores it (a string).
    pub attributes: String,
    pub participant_sid: Option<String>,
    pub media: Vec<MediaItem>,
    pub date_created: Option<String>,
}

impl MessageAdded {
    /// Maps a messages-list item (`{sid, text, author, attributes, timestamp, memberSid,
    /// media|medias}`); `None` when it lacks a sid or author.
    pub fn from_list_item(
        account_sid: &str,
        chat_service_sid: &str,
        conversation_sid: &str,
        index: u64,
        data: &Value,
    ) -> Option<Self> {
        let text = |field: &str| data.get(field).and_then(Value::as_str).map(str::to_owned);
        let attributes = match data.get("attributes") {
            Some(Value::String(text)) => text.clone(),
            // The SDK would reject a non-string; keep it as JSON text for the envelope.
            Some(Value::Object(object)) => Value::Object(object.clone()).to_string(),
            _ => "{}".to_owned(),
        };
        let mut media: Vec<MediaItem> = match data.get("medias") {
            Some(Value::Array(items)) => items.iter().filter_map(MediaItem::from_sync).collect(),
            _ => Vec::new(),
        };
        if media.is_empty() {
            media.extend(data.get("media").and_then(MediaItem::from_sync));
        }
        Some(Self {
            account_sid: account_sid.to_owned(),
            chat_service_sid: chat_service_sid.to_owned(),
            conversation_sid: conversation_sid.to_owned(),
            message_sid: text("sid").filter(|sid| !sid.is_empty())?,
            index,
            author: text("author").filter(|author| !author.is_empty())?,
            body: text("text").or_else(|| text("body")).unwrap_or_default(),
            attributes,
            participant_sid: text("memberSid").or_else(|| text("participantSid")),
            media,
            date_created: text("timestamp").or_else(|| text("dateCreated")),
        })
    }

    /// Written by the bot, by the rule the webhooks use (its identity, or egress's
    /// `Attributes.origin`).
    pub fn is_own(&self, identity: &str) -> bool {
        is_own_message(&self.form(), Some(identity))
    }

    /// The form the equivalent `onMessageAdded` webhook would carry.
    pub fn form(&self) -> FormParams {
        FormParams(self.webhook_params())
    }

    /// The form fields of the equivalent Conversations `onMessageAdded` webhook, for the
    /// service's existing envelope builder.
    pub fn webhook_params(&self) -> Vec<(String, String)> {
        let mut params = vec![
            ("EventType".to_owned(), "onMessageAdded".to_owned()),
            ("AccountSid".to_owned(), self.account_sid.clone()),
            ("ChatServiceSid".to_owned(), self.chat_service_sid.clone()),
            ("ConversationSid".to_owned(), self.conversation_sid.clone()),
            ("MessageSid".to_owned(), self.message_sid.clone()),
            ("Index".to_owned(), self.index.to_string()),
            ("Author".to_owned(), self.author.clone()),
            ("Body".to_owned(), self.body.clone()),
            ("Attributes".to_owned(), self.attributes.clone()),
        ];
        if let Some(participant) = &self.participant_sid {
            params.push(("ParticipantSid".to_owned(), participant.clone()));
        }
        if let Some(date) = &self.date_created {
            params.push(("DateCreated".to_owned(), date.clone()));
        }
        if !self.media.is_empty() {
            params.push((
                "Media".to_owned(),
                serde_json::to_string(&self.media).unwrap_or_else(|_| "[]".into()),
            ));
        }
        params
    }
}

/// A message this client created.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub sid: String,
    pub index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    AlreadyJoined,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

#[derive(Clone)]
pub struct ConversationsApi {
    upstream: Upstream,
    sync: SyncApi,
}

impl ConversationsApi {
    pub fn new(upstream: Upstream, sync: SyncApi) -> Self {
        Self { upstream, sync }
    }

    pub fn sync(&self) -> &SyncApi {
        &self.sync
    }

    /// `aim_base` is `https://aim.<region>.twilio.com`.
    pub async fn configuration(&self, aim_base: &Url) -> Result<Configuration, ConversationsError> {
        let mut url = aim_base.clone();
        url.set_path("/Client/v2/Configuration");
        Ok(self.upstream.json(&Request::get(url)).await?)
    }

    /// Adds `identity` to the conversation (what the SDK's `join()` does).
    pub async fn join(
        &self,
        config: &Configuration,
        conversation_sid: &str,
        identity: &str,
    ) -> Result<JoinOutcome, ConversationsError> {
        let url = config.conversations_url(&[conversation_sid, "Participants"])?;
        let request = Request::mutation("POST", url, Some(&json!({ "identity": identity })));
        match self.upstream.send_ok(&request).await {
            Ok(_) => Ok(JoinOutcome::Joined),
            Err(error) if error.code() == Some(i64::from(ERROR_ALREADY_PARTICIPANT)) => {
                Ok(JoinOutcome::AlreadyJoined)
            }
            Err(error) if error.code() == Some(PARTICIPANT_LIMIT_CODE) => {
                Err(ConversationsError::ParticipantLimit {
                    identity: identity.to_owned(),
                    detail: error.to_string(),
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    pub async fn leave(
        &self,
        config: &Configuration,
        conversation_sid: &str,
        identity: &str,
    ) -> Result<(), ConversationsError> {
        let url = config.conversations_url(&[conversation_sid, "Participants", identity])?;
        let request = Request::mutation("DELETE", url, None);
        match self.upstream.send_ok(&request).await {
            Ok(_) => Ok(()),
            Err(error) if error.status() == Some(404) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Creates a message; never repeated automatically once it may have reached the server.
    /// `attributes` is JSON text, as Twilio stores it.
    pub async fn send_message(
        &self,
        config: &Configuration,
        conversation_sid: &str,
        body: &str,
        attributes: &str,
    ) -> Result<SentMessage, ConversationsError> {
        let url = config.conversations_url(&[conversation_sid, "Messages"])?;
        let payload = json!({ "body": body, "attributes": attributes });
        let request = Request::mutation("POST", url, Some(&payload));
        let reply: Value = self.upstream.json(&request).await?;
        let sid = reply.get("sid").and_then(Value::as_str);
        let index = reply.get("index").and_then(|index| match index {
            Value::String(text) => text.parse().ok(),
            other => other.as_u64(),
        });
        match (sid, index) {
            (Some(sid), Some(index)) => Ok(SentMessage {
                sid: sid.to_owned(),
                index,
            }),
            _ => Err(ConversationsError::Unexpected(
                "message reply without sid and index".into(),
            )),
        }
    }

    /// The conversation document (state, lastMessage, names of its list and roster).
    pub async fn document(&self, id: &str) -> Result<Value, ConversationsError> {
        let descriptor = self
            .sync
            .descriptor(super::sync::ObjectType::Document, id, false)
            .await?;
        Ok(descriptor.data.unwrap_or(Value::Null))
    }

    /// One page of message-list items around `anchor` (inclusive), ascending by index.
    pub async fn messages_page(
        &self,
        items_url: &Url,
        anchor: Option<u64>,
        direction: Direction,
        page_size: u32,
    ) -> Result<(Vec<Item>, bool), ConversationsError> {
        let page = self
            .sync
            .items(
                items_url,
                &ItemsQuery {
                    from: anchor.map(|index| index.to_string()),
                    page_size,
                    order: match direction {
                        Direction::Forward => Order::Asc,
                        Direction::Backward => Order::Desc,
                    },
                },
            )
            .await?;
        let more = page.has_next();
        Ok((page.items, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sms_item() -> Value {
        json!({
            "sid": "IM00000000000000000000000000000001",
            "text": "Hi, I need help",
            "author": "+15551230000",
            "attributes": "{\"foo\":\"bar\"}",
            "timestamp": "2024-05-14T09:30:01.120Z",
            "dateUpdated": "2024-05-14T09:30:01.120Z",
            "memberSid": "MB00000000000000000000000000000001",
            "lastUpdatedBy": null, "subject": null, "contentSid": null, "type": "text"
        })
    }

    #[test]
    fn list_item_maps_to_message_added_and_webhook_params() {
        let message = MessageAdded::from_list_item("AC1", "IS1", "CH1", 3, &sms_item()).unwrap();
        assert_eq!(message.message_sid, "IM00000000000000000000000000000001");
        assert_eq!(message.body, "Hi, I need help");
        assert_eq!(
            message.participant_sid.as_deref(),
            Some("MB00000000000000000000000000000001")
        );
        assert_eq!(
            message.date_created.as_deref(),
            Some("2024-05-14T09:30:01.120Z")
        );
        assert!(message.media.is_empty());
        let params: std::collections::HashMap<_, _> =
            message.webhook_params().into_iter().collect();
        assert_eq!(params["EventType"], "onMessageAdded");
        assert_eq!(params["MessageSid"], "IM00000000000000000000000000000001");
        assert_eq!(params["ConversationSid"], "CH1");
        assert_eq!(params["Index"], "3");
        assert_eq!(params["Attributes"], "{\"foo\":\"bar\"}");
        assert_eq!(params["Author"], "+15551230000");
        assert!(!params.contains_key("Media"));
    }

    #[test]
    fn media_in_both_shapes() {
        let mut item = sms_item();
        item["type"] = json!("media");
        item["text"] = Value::Null;
        item["medias"] = json!([{"sid": "ME1", "category": "media", "filename": "a.jpg", "contentType": "image/jpeg", "size": 10}]);
        let message = MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &item).unwrap();
        assert_eq!(message.body, "");
        assert_eq!(message.media.len(), 1);
        let params: std::collections::HashMap<_, _> =
            message.webhook_params().into_iter().collect();
        let media: Value = serde_json::from_str(&params["Media"]).unwrap();
        assert_eq!(
            media,
            json!([{"Sid": "ME1", "Filename": "a.jpg", "ContentType": "image/jpeg", "Size": 10, "Category": "media"}])
        );
        let mut item = sms_item();
        item["media"] = json!({"sid": "ME2", "content_type": "image/png", "size": 5});
        let message = MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &item).unwrap();
        assert_eq!(message.media[0].content_type.as_deref(), Some("image/png"));
    }

    #[test]
    fn items_without_sid_or_author_are_rejected() {
        let mut item = sms_item();
        item.as_object_mut().unwrap().remove("sid");
        assert!(MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &item).is_none());
        let mut item = sms_item();
        item["author"] = json!("");
        assert!(MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &item).is_none());
        assert!(MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &json!("text")).is_none());
    }

    #[test]
    fn own_messages_by_author_or_origin() {
        let mut item = sms_item();
        item["author"] = json!("bot");
        let message = MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &item).unwrap();
        assert!(message.is_own("bot"));
        let mut item = sms_item();
        item["attributes"] = json!("{\"origin\":\"ingress-egress\",\"key\":\"m1:0\"}");
        let message = MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &item).unwrap();
        assert!(message.is_own("bot"));
        let message = MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &sms_item()).unwrap();
        assert!(!message.is_own("bot"));
        let mut item = sms_item();
        item["attributes"] = json!("not json");
        let message = MessageAdded::from_list_item("AC1", "IS1", "CH1", 0, &item).unwrap();
        assert!(!message.is_own("bot"));
    }

    #[test]
    fn map_items_map_to_listed_conversations() {
        let listed = ConversationListed::from_map_item(
            "CH1",
            &json!({"channel": "CH1.channel", "messages": "CH1.messages", "roster": "CH1.roster", "status": "notParticipating", "friendlyName": "x"}),
        );
        assert_eq!(listed.status, Membership::NotParticipating);
        assert_eq!(listed.messages.as_deref(), Some("CH1.messages"));
        assert_eq!(
            ConversationListed::from_map_item("CH2", &json!({"status": "invited"})).status,
            Membership::Unknown
        );
    }

    #[test]
    fn configuration_links_build_encoded_paths() {
        let config: Configuration = serde_json::from_value(json!({
            "identity": "bot",
            "sync_objects": {"my_conversations": "MP1", "my_user_info": "MP2"},
            "links": {"my_conversations": "https://aim.us1.twilio.com/Client/v2/Me/Conversations", "conversations": "https://aim.us1.twilio.com/Client/v2/Conversations"},
            "options": {}
        }))
        .unwrap();
        let url = config
            .conversations_url(&["CH1", "Participants", "a bot/x"])
            .unwrap();
        assert_eq!(
            url.path(),
            "/Client/v2/Conversations/CH1/Participants/a%20bot%2Fx"
        );
    }
}
