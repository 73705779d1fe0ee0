//! Conversations: posting a message into a conversation and adding a participant, on the
//! default-service paths or, with `TWILIO_CHAT_SERVICE_SID`, the service-scoped ones
//! (`/v1/Services/{ChatServiceSid}/Conversations/…`): conversations in a non-default
//! Conversation Service are not reachable through the default-service paths.

use serde_json::Value;
use url::Url;

use super::{
    client::{created, idempotency_token, join, Created, TwilioRest},
    error::{RestError, ERROR_ALREADY_PARTICIPANT},
};

/// `POST /v1/Conversations/{ConversationSid}/Messages` (or, with a chat service configured,
/// `POST /v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Messages`).
#[derive(Clone, Debug)]
pub struct NewConversationMessage<'a> {
    pub conversation_sid: &'a str,
    pub author: Option<&'a str>,
    pub body: Option<&'a str>,
    /// A media SID (`ME…`) from Twilio's Media Content Service.
    pub media_sid: Option<&'a str>,
    /// A JSON object, as a string (`Attributes`).
    pub attributes: Option<&'a str>,
    pub idempotency_token: &'a str,
}

/// Outcome of [`TwilioRest::add_participant`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantAdded {
    /// Twilio created the participant (`MB…`).
    Added { sid: String },
    /// The identity already was a participant (HTTP 409 / error 50433): nothing to do.
    AlreadyParticipant,
}

impl TwilioRest {
    /// Posts a message into a conversation (as `author`).
    pub async fn create_conversation_message(
        &self,
        message: &NewConversationMessage<'_>,
    ) -> Result<Created, RestError> {
        let url = self.conversation_url(message.conversation_sid, "Messages");
        let mut form: Vec<(&str, &str)> = Vec::new();
        if let Some(author) = message.author {
            form.push(("Author", author));
        }
        if let Some(body) = message.body {
            form.push(("Body", body));
        }
        if let Some(media_sid) = message.media_sid {
            form.push(("MediaSid", media_sid));
        }
        if let Some(attributes) = message.attributes {
            form.push(("Attributes", attributes));
        }
        let json = self
            .post_form(url, &form, Some(message.idempotency_token))
            .await?;
        created(&json)
    }

    /// The conversation's newest messages, newest first (one page of `page_size`).
    pub async fn list_conversation_messages(
        &self,
        conversation_sid: &str,
        page_size: usize,
    ) -> Result<Vec<Value>, RestError> {
        let url = self.conversation_url(conversation_sid, "Messages");
        let page_size = page_size.to_string();
        let json = self
            .get_json(url, &[("Order", "desc"), ("PageSize", &page_size)])
            .await?;
        Ok(json
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Adds `identity` as a chat participant of the conversation. "Already a participant"
    /// (HTTP 409 or error 50433) counts as success.
    pub async fn add_participant(
        &self,
        conversation_sid: &str,
        identity: &str,
    ) -> Result<ParticipantAdded, RestError> {
        let url = self.conversation_url(conversation_sid, "Participants");
        let token = idempotency_token(&format!("participant|{conversation_sid}|{identity}"));
        match self
            .post_form(url, &[("Identity", identity)], Some(&token))
            .await
        {
            Ok(json) => Ok(ParticipantAdded::Added {
                sid: json
                    .get("sid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }),
            Err(RestError::Http { status, code, .. })
                if status == 409 || code == Some(ERROR_ALREADY_PARTICIPANT) =>
            {
                Ok(ParticipantAdded::AlreadyParticipant)
            }
            Err(error) => Err(error),
        }
    }

    /// The URL of a conversation's sub-resource (`Messages`, `Participants`), scoped to the
    /// configured chat service when there is one.
    fn conversation_url(&self, conversation_sid: &str, resource: &str) -> Url {
        conversation_resource_url(
            &self.conversations_base_url,
            self.chat_service_sid.as_deref(),
            conversation_sid,
            resource,
        )
    }
}

/// `/v1/Conversations/{conversation_sid}/{resource}`, or with a chat service
/// `/v1/Services/{chat_service_sid}/Conversations/{conversation_sid}/{resource}`.
fn conversation_resource_url(
    base: &Url,
    chat_service_sid: Option<&str>,
    conversation_sid: &str,
    resource: &str,
) -> Url {
    match chat_service_sid {
        Some(service) => join(
            base,
            &[
                "v1",
                "Services",
                service,
                "Conversations",
                conversation_sid,
                resource,
            ],
        ),
        None => join(base, &["v1", "Conversations", conversation_sid, resource]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_urls_are_service_scoped_only_with_a_chat_service() {
        const SERVICE: &str = "IS0123456789abcdef0123456789abcdef";
        const CONVERSATION: &str = "CH0123456789abcdef0123456789abcdef";
        let base = Url::parse("https://conversations.twilio.com").unwrap();
        assert_eq!(
            conversation_resource_url(&base, None, CONVERSATION, "Messages").as_str(),
            format!("https://conversations.twilio.com/v1/Conversations/{CONVERSATION}/Messages")
        );
        assert_eq!(
            conversation_resource_url(&base, None, CONVERSATION, "Participants").as_str(),
            format!(
                "https://conversations.twilio.com/v1/Conversations/{CONVERSATION}/Participants"
            )
        );
        assert_eq!(
            conversation_resource_url(&base, Some(SERVICE), CONVERSATION, "Messages").as_str(),
            format!(
                "https://conversations.twilio.com/v1/Services/{SERVICE}/Conversations/{CONVERSATION}/Messages"
            )
        );
        assert_eq!(
            conversation_resource_url(&base, Some(SERVICE), CONVERSATION, "Participants")
                .as_str(),
            format!(
                "https://conversations.twilio.com/v1/Services/{SERVICE}/Conversations/{CONVERSATION}/Participants"
            )
        );
        // A base path prefix is kept, and a unique name is percent-encoded as one segment.
        let base = Url::parse("http://127.0.0.1:9/twilio/").unwrap();
        assert_eq!(
            conversation_resource_url(&base, Some(SERVICE), "my room/1", "Messages").as_str(),
            format!("http://127.0.0.1:9/twilio/v1/Services/{SERVICE}/Conversations/my%20room%2F1/Messages")
        );
    }
}
