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
        created(&json)
    }

    /// Looks for a message Twilio already created for `message` by an attempt at or after
    /// `since`: `ListMessage` filtered by `To` and `From` (when that is the sender; no `DateSent`
    /// filter, since `date_sent` stays null while a message is queued, which can last hours),
    /// newest first, one page of [`LOOKUP_PAGE_SIZE`], matched by [`is_same_message`].
    ///
    /// Used before retrying a create whose outcome is unknown (see [`RestError::is_ambiguous`]):
    /// Twilio has no request idempotency for Messages creates.
    pub async fn find_created_message(
        &self,
        message: &NewMessage<'_>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Created>, RestError> {
        let url = self.messages_url()?;
        let mut query: Vec<(&str, &str)> = vec![("To", message.to)];
        if let MessageSender::From(from) = message.sender {
            query.push(("From", from));
        }
        let page_size = LOOKUP_PAGE_SIZE.to_string();
        query.push(("PageSize", &page_size));
        let json = self.get_json(url, &query).await?;
        let found = json
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|listed| is_same_message(listed, message, since));
        Ok(found.and_then(|listed| created(listed).ok()))
    }
}

/// How many of the recipient's newest messages a lookup reads.
pub const LOOKUP_PAGE_SIZE: usize = 50;

/// Whether a `ListMessage` entry is the message `message` would create, created at or after
/// `since`: same recipient, same sender (`from`, or `messaging_service_sid` for a Messaging
/// Service send), same number of media, `date_created` (RFC 2822, whole seconds) no earlier
/// than `since` truncated to the second, and the same body once Twilio's known rewrites are
/// undone ([`same_body`]).
pub fn is_same_message(
    listed: &Value,
    message: &NewMessage<'_>,
    since: chrono::DateTime<chrono::Utc>,
) -> bool {
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
        && same_body(
            text("body").unwrap_or_default(),
            message.body.unwrap_or_default(),
        )
        && media.is_none_or(|n| n == message.media_urls.len() as u64)
        && created_at.is_some_and(|at| at >= since.timestamp())
}

/// What trial accounts put before every body.
const TRIAL_PREFIX: &str = "Sent from your Twilio trial account - ";

/// Whether Twilio stored `ours` as `listed`: equal once normalised ([`normalise_body`]),
/// after taking off the trial-account prefix, or with opt-out language appended (a Messaging
/// Service's compliance toolkit adds e.g. "Reply STOP to unsubscribe"). Any other difference is
/// another message.
pub fn same_body(listed: &str, ours: &str) -> bool {
    let ours = normalise_body(ours);
    let listed = normalise_body(listed);
    let listed = listed.strip_prefix(TRIAL_PREFIX).unwrap_or(&listed);
    if listed == ours {
        return true;
    }
    listed.strip_prefix(ours.as_str()).is_some_and(|appended| {
        appended.starts_with(' ') && appended.to_ascii_uppercase().contains("STOP")
    })
}

/// A body as Twilio's rewrites leave it comparable: smart-encoded characters folded to their
/// GSM-7 stand-ins (curly quotes, dashes, ellipsis, non-breaking spaces) and whitespace runs
/// collapsed.
pub fn normalise_body(body: &str) -> String {
    let mut folded = String::with_capacity(body.len());
    for c in body.chars() {
        match c {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{2032}' => folded.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2033}' => folded.push('"'),
            '\u{2013}' | '\u{2014}' | '\u{2212}' => folded.push('-'),
            '\u{2026}' => folded.push_str("..."),
            c if c.is_whitespace() => folded.push(' '),
            c => folded.push(c),
        }
    }
    folded
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_message_matches_recipient_sender_body_media_and_time() {
        let since = chrono::DateTime::parse_from_rfc2822("Wed, 25 Nov 2026 10:00:00 +0000")
            .unwrap()
            .to_utc();
        let listed = serde_json::json!({
            "sid": "SM1",
            "to": "+14155550100",
            "from": "+15005550006",
            "messaging_service_sid": "MG00000000000000000000000000000001",
            "body": "hi",
            "num_media": "0",
            "date_created": "Wed, 25 Nov 2026 10:00:00 +0000",
            "date_sent": null,
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
        let later = since + chrono::TimeDelta::seconds(1);
        assert!(!is_same_message(
            &listed,
            &message(&from, Some("hi")),
            later
        ));
        // Sub-second attempt times still match a whole-second date_created.
        let within = since + chrono::TimeDelta::milliseconds(400);
        assert!(is_same_message(
            &listed,
            &message(&from, Some("hi")),
            within
        ));
        let media = ["https://example.com/a.png".to_owned()];
        let with_media = NewMessage {
            media_urls: &media,
            ..message(&from, Some("hi"))
        };
        assert!(!is_same_message(&listed, &with_media, since));
    }

    #[test]
    fn bodies_match_through_twilios_known_rewrites_only() {
        let ours = "We\u{2019}re open \u{2014} see you\u{2026}";
        assert!(same_body("We're open - see you...", ours), "smart encoding");
        assert!(same_body(
            "Sent from your Twilio trial account - We're open - see you...",
            ours
        ));
        assert!(same_body(
            "We're open - see you... Reply STOP to unsubscribe.",
            ours
        ));
        assert!(same_body("hi  there", "hi there"), "whitespace");
        assert!(
            !same_body("Yes, we are open", "Yes"),
            "another message that starts alike"
        );
        assert!(!same_body("No", "Yes"));
        assert!(same_body("", ""), "media only");
    }
}
