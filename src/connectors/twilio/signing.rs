//! The non-secret facts of how this service checks webhook signatures: the public base URL the
//! signed URL is rebuilt from, whether it uses the development token, and fingerprints of its
//! tokens. The debug snapshot shows them; `simulate` compares them with its own configuration to
//! say which setting differs when the service refuses its signature ([`differences`]).

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{config::TwilioSettings, ingress::signature::token_fingerprint};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningFacts {
    /// `PUBLIC_BASE_URL` (scheme and host), or `None`: the request's own address is used.
    pub public_base_url: Option<String>,
    /// `TWILIO_AUTH_TOKEN` is not set and the public development token is used.
    pub development_token: bool,
    /// The first 8 hex digits of the SHA-256 of `TWILIO_AUTH_TOKEN`.
    pub auth_token_fingerprint: String,
    /// The same of `TWILIO_SECONDARY_AUTH_TOKEN`, when set.
    pub secondary_auth_token_fingerprint: Option<String>,
}

impl SigningFacts {
    pub fn new(settings: &TwilioSettings, public_base_url: Option<&Url>) -> Self {
        Self {
            public_base_url: public_base_url.map(|url| url.origin().ascii_serialization()),
            development_token: settings.using_development_token,
            auth_token_fingerprint: token_fingerprint(settings.auth_token.expose_secret()),
            secondary_auth_token_fingerprint: settings
                .secondary_auth_token
                .as_ref()
                .map(|token| token_fingerprint(token.expose_secret())),
        }
    }
}

/// How `local` (the signer's configuration) differs from `service` (the verifier's), one line
/// per setting, each saying what to change. `service_url` is where the signer reached the
/// service; `path` is the webhook path it signed.
pub fn differences(
    local: &SigningFacts,
    service: &SigningFacts,
    service_url: &str,
    path: &str,
) -> Vec<String> {
    let mut found = Vec::new();
    let accepted = std::iter::once(&service.auth_token_fingerprint)
        .chain(service.secondary_auth_token_fingerprint.as_ref());
    let token_matches = accepted
        .into_iter()
        .any(|fingerprint| *fingerprint == local.auth_token_fingerprint);
    if !token_matches {
        found.push(match (service.development_token, local.development_token) {
            (true, false) => format!(
                "TWILIO_AUTH_TOKEN differs: the service has none (it checks with the development \
                 token) while this shell signs with a token of fingerprint {}. Unset it here, or \
                 give the service the same TWILIO_AUTH_TOKEN.",
                local.auth_token_fingerprint
            ),
            (false, true) => format!(
                "TWILIO_AUTH_TOKEN differs: the service checks with a token of fingerprint {} \
                 while this shell has none (it signs with the development token). Set the \
                 service's TWILIO_AUTH_TOKEN here, or in .env, which both read.",
                service.auth_token_fingerprint
            ),
            _ => format!(
                "TWILIO_AUTH_TOKEN differs: the service's has fingerprint {}, this shell's {} \
                 (first 8 hex digits of the SHA-256). Use the same token in both, e.g. in .env.",
                service.auth_token_fingerprint, local.auth_token_fingerprint
            ),
        });
    }
    match (&service.public_base_url, &local.public_base_url) {
        (Some(theirs), ours) if ours.as_ref() != Some(theirs) => found.push(format!(
            "PUBLIC_BASE_URL differs: the service checks signatures against {theirs}{path}, \
             while this shell signed for {}{path}. Set PUBLIC_BASE_URL={theirs} here.",
            ours.as_deref().unwrap_or(service_url)
        )),
        (None, Some(ours)) => found.push(format!(
            "PUBLIC_BASE_URL differs: the service has none (it checks the address it is called \
             on, {service_url}{path}) while this shell signed for {ours}{path}. Unset it here, or \
             start the service with PUBLIC_BASE_URL={ours}."
        )),
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(base: Option<&str>, dev: bool, fingerprint: &str) -> SigningFacts {
        SigningFacts {
            public_base_url: base.map(str::to_owned),
            development_token: dev,
            auth_token_fingerprint: fingerprint.to_owned(),
            secondary_auth_token_fingerprint: None,
        }
    }

    const SERVICE: &str = "http://127.0.0.1:8080";
    const PATH: &str = "/webhooks/twilio/sms";

    #[test]
    fn the_same_configuration_has_no_differences() {
        let same = facts(Some("https://abc.ngrok.app"), false, "1a2b3c4d");
        assert!(differences(&same, &same, SERVICE, PATH).is_empty());
        let mut rotating = facts(None, false, "aaaaaaaa");
        rotating.secondary_auth_token_fingerprint = Some("1a2b3c4d".into());
        let signer = facts(None, false, "1a2b3c4d");
        assert!(differences(&signer, &rotating, SERVICE, PATH).is_empty());
    }

    #[test]
    fn each_difference_names_its_setting_and_the_fix() {
        let service = facts(Some("https://abc.ngrok.app"), false, "1a2b3c4d");
        let shell = facts(None, true, "99999999");
        let found = differences(&shell, &service, SERVICE, PATH);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("TWILIO_AUTH_TOKEN differs: the service checks with a token of fingerprint 1a2b3c4d while this shell has none"), "{}", found[0]);
        assert!(found[1].contains("the service checks signatures against https://abc.ngrok.app/webhooks/twilio/sms, while this shell signed for http://127.0.0.1:8080/webhooks/twilio/sms. Set PUBLIC_BASE_URL=https://abc.ngrok.app here."), "{}", found[1]);

        let found = differences(
            &facts(Some("https://old.example"), false, "1"),
            &facts(None, true, "2"),
            SERVICE,
            PATH,
        );
        assert!(found[0].contains("the service has none (it checks with the development token)"));
        assert!(found[1].contains(
            "Unset it here, or start the service with PUBLIC_BASE_URL=https://old.example."
        ));

        let found = differences(
            &facts(None, false, "1"),
            &facts(None, false, "2"),
            SERVICE,
            PATH,
        );
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("the service's has fingerprint 2, this shell's 1"));
    }
}
