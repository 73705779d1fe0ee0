//! What a send through Twilio needs from the configuration before it can succeed: REST
//! credentials, a sender for phone and WhatsApp recipients, the bot's identity for
//! Conversations. The operator route refuses a send that lacks one (422 naming the setting), and
//! the start-up banner lists what is missing; both ask [`missing_for`].

use super::{address::Address, config::TwilioSettings};

/// A setting a send needs and does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The variable (or variables) to set.
    pub setting: &'static str,
    /// What happens without it, for whoever reads the message.
    pub consequence: &'static str,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not set: {}", self.setting, self.consequence)
    }
}

/// The kinds of recipient a send can have, as far as the configuration is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A phone number or WhatsApp address (Programmable Messaging).
    Messaging {
        /// The send names its own sender (`from`), so no default sender is needed.
        sender_given: bool,
    },
    /// A Conversation SID (Conversations API).
    Conversation,
}

impl Recipient {
    pub fn of(target: &Address, sender_given: bool) -> Self {
        if target.is_messaging() {
            Recipient::Messaging { sender_given }
        } else {
            Recipient::Conversation
        }
    }
}

const NO_ACCOUNT: Missing = Missing {
    setting: "TWILIO_ACCOUNT_SID",
    consequence: "sends cannot reach Twilio's REST API (every reply is dead-lettered)",
};
pub const NO_CREDENTIALS: Missing = Missing {
    setting: "TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET)",
    consequence: "the development token cannot authenticate with Twilio's REST API (every \
                  reply is dead-lettered)",
};
const NO_SENDER: Missing = Missing {
    setting: "TWILIO_PHONE_NUMBER (or TWILIO_MESSAGING_SERVICE_SID)",
    consequence: "replies to phone numbers and WhatsApp have no sender and are dead-lettered",
};
const NO_IDENTITY: Missing = Missing {
    setting: "TWILIO_IDENTITY",
    consequence: "the bot has no Conversations identity to post as or to join conversations with",
};

/// The first setting a send to `recipient` lacks, if any.
pub fn missing_for(settings: &TwilioSettings, recipient: Recipient) -> Option<Missing> {
    missing(settings, recipient).into_iter().next()
}

/// Every setting a send to `recipient` lacks, REST credentials first.
pub fn missing(settings: &TwilioSettings, recipient: Recipient) -> Vec<Missing> {
    let mut missing = Vec::new();
    if settings.account_sid.is_none() {
        missing.push(NO_ACCOUNT);
    }
    if settings.api_key.is_none() && settings.using_development_token {
        missing.push(NO_CREDENTIALS);
    }
    match recipient {
        Recipient::Messaging {
            sender_given: false,
        } if settings.phone_number.is_none() && settings.messaging_service_sid.is_none() => {
            missing.push(NO_SENDER)
        }
        Recipient::Conversation if settings.identity.is_none() => missing.push(NO_IDENTITY),
        _ => {}
    }
    missing
}

/// What sends of any kind lack, each once (the banner's list).
pub fn missing_for_any(settings: &TwilioSettings) -> Vec<Missing> {
    let mut all = missing(
        settings,
        Recipient::Messaging {
            sender_given: false,
        },
    );
    for item in missing(settings, Recipient::Conversation) {
        if !all.contains(&item) {
            all.push(item);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::{AppEnv, Environment};

    fn settings(vars: &[(&str, &str)]) -> TwilioSettings {
        TwilioSettings::from_environment(
            &Environment::from_pairs(vars.iter().copied()),
            AppEnv::Development,
        )
        .unwrap()
    }

    const CONFIGURED: [(&str, &str); 4] = [
        ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000001"),
        ("TWILIO_AUTH_TOKEN", "0123456789abcdef0123456789abcdef"),
        ("TWILIO_PHONE_NUMBER", "+15005550006"),
        ("TWILIO_IDENTITY", "bot"),
    ];

    #[test]
    fn a_configured_connector_can_send_everywhere() {
        let s = settings(&CONFIGURED);
        assert_eq!(missing_for_any(&s), []);
    }

    #[test]
    fn each_missing_setting_is_named_for_the_sends_that_need_it() {
        let bare = settings(&[]);
        let messaging = Recipient::Messaging {
            sender_given: false,
        };
        assert_eq!(
            missing(&bare, messaging),
            [NO_ACCOUNT, NO_CREDENTIALS, NO_SENDER]
        );
        assert_eq!(
            missing_for_any(&bare),
            [NO_ACCOUNT, NO_CREDENTIALS, NO_SENDER, NO_IDENTITY]
        );

        let without = |name: &str| {
            let vars: Vec<_> = CONFIGURED
                .iter()
                .copied()
                .filter(|(k, _)| *k != name)
                .collect();
            settings(&vars)
        };
        let no_number = without("TWILIO_PHONE_NUMBER");
        assert_eq!(missing_for(&no_number, messaging), Some(NO_SENDER));
        assert_eq!(
            missing_for(&no_number, Recipient::Messaging { sender_given: true }),
            None,
            "a send that names its sender needs no default one"
        );
        assert_eq!(missing_for(&no_number, Recipient::Conversation), None);
        assert_eq!(
            missing_for(&without("TWILIO_IDENTITY"), Recipient::Conversation),
            Some(NO_IDENTITY)
        );
        assert_eq!(
            missing_for(&without("TWILIO_AUTH_TOKEN"), messaging),
            Some(NO_CREDENTIALS)
        );
        let mut with_key: Vec<_> = CONFIGURED
            .iter()
            .copied()
            .filter(|(k, _)| *k != "TWILIO_AUTH_TOKEN")
            .collect();
        with_key.push(("TWILIO_API_KEY", "SK0123456789abcdef0123456789abcdef"));
        with_key.push(("TWILIO_API_SECRET", "secret"));
        assert_eq!(missing_for(&settings(&with_key), messaging), None);
        assert!(NO_SENDER
            .to_string()
            .starts_with("TWILIO_PHONE_NUMBER (or "));
    }
}
