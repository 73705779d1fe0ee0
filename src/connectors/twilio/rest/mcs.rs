//! Media known only by a Media Content Service SID (attached to a conversation message): the
//! temporary URL Twilio can fetch it from when it is forwarded as an MMS
//! (`GET {TWILIO_MCS_BASE_URL}/v1/Services/{ChatServiceSid}/Media/{Sid}`, field
//! `links.content_direct_temporary`). This API is outside Twilio's OpenAPI documents.

use serde_json::Value;

use super::{
    client::{join, TwilioRest},
    error::RestError,
};

impl TwilioRest {
    /// A temporary, directly downloadable URL of the media `sid`.
    pub async fn media_content_url(&self, sid: &str) -> Result<String, RestError> {
        let service = self
            .chat_service_sid
            .as_deref()
            .ok_or(RestError::NotConfigured(
                "TWILIO_CHAT_SERVICE_SID is needed to read Media Content Service media",
            ))?;
        let url = join(
            &self.mcs_base_url,
            &["v1", "Services", service, "Media", sid],
        );
        let json = self.get_json(url, &[]).await?;
        json.pointer("/links/content_direct_temporary")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| RestError::Http {
                status: 200,
                code: None,
                message: "the media resource has no links.content_direct_temporary".to_owned(),
                retry_after: None,
            })
    }
}
