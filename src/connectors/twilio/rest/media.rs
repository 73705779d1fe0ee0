//! Programmable Messaging media: `GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media.json`
//! (ListMedia), for messages whose media URLs we were not told, such as Event Streams'
//! `Messaging.InboundMessageV1`, which carries only `numMedia`.

use serde_json::Value;

use super::{
    client::{join, TwilioRest},
    error::RestError,
};

/// One media item of a message, addressed as Twilio's messaging webhooks address it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMedia {
    /// `ME…`.
    pub sid: String,
    pub content_type: Option<String>,
    /// Where the content is fetched: the Media resource's `uri` (relative to the API base,
    /// ending in `.json`) without `.json`, on the API base: the form of the webhooks'
    /// `MediaUrlN`.
    pub url: String,
}

/// More media than one message carries; one page of this size holds them all.
const PAGE_SIZE: &str = "20";

impl TwilioRest {
    /// The media of message `message_sid` (`SM…`/`MM…`), in the order Twilio lists them.
    pub async fn list_message_media(
        &self,
        message_sid: &str,
    ) -> Result<Vec<MessageMedia>, RestError> {
        let account_sid = self
            .account_sid
            .as_deref()
            .ok_or(RestError::NotConfigured("TWILIO_ACCOUNT_SID is not set"))?;
        let url = join(
            &self.api_base_url,
            &[
                "2010-04-01",
                "Accounts",
                account_sid,
                "Messages",
                message_sid,
                "Media.json",
            ],
        );
        let json = self.get_json(url, &[("PageSize", PAGE_SIZE)]).await?;
        Ok(json
            .get("media_list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| self.message_media(item))
            .collect())
    }

    /// A listed Media resource, or `None` when it lacks its SID.
    fn message_media(&self, item: &Value) -> Option<MessageMedia> {
        let text = |name: &str| {
            item.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let sid = text("sid")?;
        let path = text("uri")
            .map(|uri| uri.strip_suffix(".json").unwrap_or(uri).to_owned())
            .unwrap_or_else(|| {
                let account = text("account_sid").or(self.account_sid.as_deref());
                let parent = text("parent_sid").unwrap_or_default();
                format!(
                    "/2010-04-01/Accounts/{}/Messages/{parent}/Media/{sid}",
                    account.unwrap_or_default()
                )
            });
        let base = self.api_base_url.as_str().trim_end_matches('/');
        Some(MessageMedia {
            sid: sid.to_owned(),
            content_type: text("content_type").map(str::to_owned),
            url: format!("{base}{path}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::{AppEnv, Environment};
    use crate::connectors::twilio::config::TwilioSettings;

    fn rest(base: &str) -> TwilioRest {
        let settings = TwilioSettings::from_environment(
            &Environment::from_pairs([
                ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000001"),
                ("TWILIO_API_BASE_URL", base),
            ]),
            AppEnv::Development,
        )
        .unwrap();
        TwilioRest::new(&settings)
    }

    #[test]
    fn media_urls_have_the_webhooks_form() {
        let listed = serde_json::json!({
            "account_sid": "AC00000000000000000000000000000001",
            "content_type": "image/jpeg",
            "parent_sid": "MM00000000000000000000000000000002",
            "sid": "ME00000000000000000000000000000003",
            "uri": "/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages/MM00000000000000000000000000000002/Media/ME00000000000000000000000000000003.json"
        });
        let media = rest("https://api.twilio.com")
            .message_media(&listed)
            .unwrap();
        assert_eq!(
            media.url,
            "https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages/MM00000000000000000000000000000002/Media/ME00000000000000000000000000000003"
        );
        assert_eq!(media.content_type.as_deref(), Some("image/jpeg"));

        let without_uri = serde_json::json!({
            "parent_sid": "MM00000000000000000000000000000002",
            "sid": "ME00000000000000000000000000000003",
            "uri": null
        });
        let media = rest("http://127.0.0.1:9/twilio/")
            .message_media(&without_uri)
            .unwrap();
        assert_eq!(
            media.url,
            "http://127.0.0.1:9/twilio/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages/MM00000000000000000000000000000002/Media/ME00000000000000000000000000000003"
        );
        assert!(rest("https://api.twilio.com")
            .message_media(&serde_json::json!({"uri": "/x.json"}))
            .is_none());
    }
}
