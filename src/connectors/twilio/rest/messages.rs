//! Programmable Messaging: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (SMS, MMS,
//! WhatsApp) and the lookup that tells whether an ambiguous earlier create went through.

use serde_json::Value;
use url::Url;

use super::{
    client::{created, join, Created, TwilioRest},
    error::RestError,
};

/// Who a Programmable Messaging message is sent from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageSender {
    /// `From`: a phone number (`+E.164`), `whatsapp:+E.164`, or another Twilio sender id.
    From(String),
    /// `MessagingServiceSid` (`MG…`): Twilio picks the number from the service's pool.
    MessagingService(String),
}

/// `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    pub to: &'a str,
    pub sender: &'a MessageSender,
    pub body: Option<&'a str>,
    pub media_urls: &'a [String],
    pub status_callback: Option<&'a Url>,
    pub idempotency_token: &'a str,
}

impl TwilioRest {
    /// `{TWILIO_API_BASE_URL}/2010-04-01/Accounts/{AccountSid}/Messages.json` (create and list).
    fn messages_url(&self) -> Result<Url, RestError> {
        let account_sid = self
            .account_sid
            .as_deref()
            .ok_or(RestError::NotConfigured("TWILIO_ACCOUNT_SID is not set"))?;
        Ok(join(
            &self.api_base_url,
            &["2010-04-01", "Accounts", account_sid, "Messages.json"],
        ))
    }

    /// Sends an SMS/MMS/WhatsApp message through Programmable Messaging.
    pub async fn create_message(&self, message: &NewMessage<'_>) -> Result<Created, RestError> {
        let url = self.messages_url()?;
        let mut form: Vec<(&str, &str)> = vec![("To", message.to)];
        match message.sender {
            MessageSender::From(from) => form.push(("From", from)),
            MessageSender::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        if let Some(body) = message.body {
            form.push(("Body", body));
        }
        for media in message.media_urls {
            form.push(("MediaUrl", media));
        }
        if let Some(callback) = message.status_callback {
            form.push(("StatusCallback", callback.as_str()));
        }
        let json = self
            .post_form(url, &form, Some(message.idempotency_token))
            .await?;
        Ok(created(&json))
    }

    /// Looks for a message Twilio already created for `message`: `ListMessage` filtered by `To`,
    /// `From` (when that is the sender) and `DateSent>` = the UTC day of `since`, then matched on
    /// `to`, the sender (`from`, or `messaging_service_sid` for a Messaging Service send), the
    /// body, the media count and `date_created` (RFC 2822, whole seconds) at or after `since`
    /// (truncated to the second). Only the first page (`PageSize=20`) is searched.
    ///
    /// Used before retrying a create whose outcome is unknown (see [`RestError::is_ambiguous`]):
    /// Twilio's idempotency token does not make a Messages create safe to repeat.
    pub async fn find_created_message(
        &self,
        message: &NewMessage<'_>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Created>, RestError> {
        let url = self.messages_url()?;
        let day = since
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut query: Vec<(&str, &str)> = vec![("To", message.to)];
        if let MessageSender::From(from) = message.sender {
            query.push(("From", from));
        }
        query.push(("DateSent>", &day));
        query.push(("PageSize", "20"));
        let json = self.get_json(url, &query).await?;
        let since = since.timestamp();
        let found = json
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|listed| is_same_message(listed, message, since));
        Ok(found.map(created).filter(|c| !c.sid.is_empty()))
    }
}

/// Whether a `ListMessage` entry is the message `message` would create, created at or after
/// `since` (Unix seconds).
fn is_same_message(listed: &Value, message: &NewMessage<'_>, since: i64) -> bool {
    let text = |name: &str| listed.get(name).and_then(Value::as_str);
    let sender_matches = match message.sender {
        MessageSender::From(from) => text("from") == Some(from.as_str()),
        MessageSender::MessagingService(sid) => text("messaging_service_sid") == Some(sid.as_str()),
    };
    let media = listed.get("num_media").and_then(|n| {
        n.as_u64()
            .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
    });
    let created_at = text("date_created")
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
        .map(|d| d.timestamp());
    text("to") == Some(message.to)
        && sender_matches
        && text("body").unwrap_or_default() == message.body.unwrap_or_default()
        && media.is_none_or(|n| n == message.media_urls.len() as u64)
        && created_at.is_some_and(|at| at >= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_message_matches_recipient_sender_body_media_and_time() {
        let since = chrono::DateTime::parse_from_rfc2822("Wed, 25 Nov 2026 10:00:00 +0000")
            .unwrap()
            .timestamp();
        let listed = serde_json::json!({
            "sid": "SM1",
            "to": "+14155550100",
            "from": "+15005550006",
            "messaging_service_sid": "MG00000000000000000000000000000001",
            "body": "hi",
            "num_media": "0",
            "date_created": "Wed, 25 Nov 2026 10:00:00 +0000",
        });
        let from = MessageSender::From("+15005550006".into());
        let service = MessageSender::MessagingService("MG00000000000000000000000000000001".into());
        let other = MessageSender::From("+15005550009".into());
        let message = |sender, body| NewMessage {
            to: "+14155550100",
            sender,
            body,
            media_urls: &[],
            status_callback: None,
            idempotency_token: "t",
        };
        assert!(is_same_message(&listed, &message(&from, Some("hi")), since));
        assert!(is_same_message(
            &listed,
            &message(&service, Some("hi")),
            since
        ));
        assert!(!is_same_message(
            &listed,
            &message(&other, Some("hi")),
            since
        ));
        assert!(!is_same_message(
            &listed,
            &message(&from, Some("ho")),
            since
        ));
        assert!(!is_same_message(
            &listed,
            &message(&from, Some("hi")),
            since + 1
        ));
        let media = ["https://example.com/a.png".to_owned()];
        let with_media = NewMessage {
            media_urls: &media,
            ..message(&from, Some("hi"))
        };
        assert!(!is_same_message(&listed, &with_media, since));
    }
}
