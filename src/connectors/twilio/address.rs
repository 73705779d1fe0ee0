//! Twilio addresses: where a message can go or come from. One type, [`Address`], so every
//! "is this a WhatsApp number?" question is answered here and nowhere else.
//!
//! - `+14155550100`: a phone number (E.164), reached with Programmable Messaging (SMS/MMS);
//! - `whatsapp:+14155550100`: a WhatsApp user, also through Programmable Messaging;
//! - `messenger:<page-scoped id>`: a Facebook Messenger user, through Programmable Messaging;
//! - `CH` + 32 hex: a Conversation, reached through the Conversations API.

use std::fmt;

const WHATSAPP: &str = "whatsapp:";
const MESSENGER: &str = "messenger:";

/// A parsed Twilio address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// An E.164 phone number, `+` included.
    Phone(String),
    /// A WhatsApp user; the E.164 number, `+` included, without the `whatsapp:` prefix.
    WhatsApp(String),
    /// A Messenger user; the id without the `messenger:` prefix.
    Messenger(String),
    /// A Conversation SID (`CH…`).
    Conversation(String),
}

/// Why a text is not a Twilio address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is neither a Conversation SID (CH…), an E.164 number (+…), whatsapp:+… nor messenger:…"
)]
pub struct InvalidAddress(pub String);

impl Address {
    pub fn parse(text: &str) -> Result<Self, InvalidAddress> {
        let invalid = || InvalidAddress(text.to_owned());
        if let Some(number) = text.strip_prefix(WHATSAPP) {
            return is_e164(number)
                .then(|| Address::WhatsApp(number.to_owned()))
                .ok_or_else(invalid);
        }
        if let Some(id) = text.strip_prefix(MESSENGER) {
            return (!id.is_empty() && !id.chars().any(char::is_whitespace))
                .then(|| Address::Messenger(id.to_owned()))
                .ok_or_else(invalid);
        }
        if is_e164(text) {
            return Ok(Address::Phone(text.to_owned()));
        }
        if is_conversation_sid(text) {
            return Ok(Address::Conversation(text.to_owned()));
        }
        Err(invalid())
    }

    /// Sent through Programmable Messaging (phone, WhatsApp, Messenger), not Conversations.
    pub fn is_messaging(&self) -> bool {
        !matches!(self, Address::Conversation(_))
    }

    /// A number Twilio can send from: a phone number, or the same number on WhatsApp.
    pub fn is_phone_number(&self) -> bool {
        matches!(self, Address::Phone(_) | Address::WhatsApp(_))
    }

    pub fn is_whatsapp(&self) -> bool {
        matches!(self, Address::WhatsApp(_))
    }

    /// The same channel for `sender`: a bare `+E.164` sender becomes `whatsapp:+E.164` when this
    /// address is a WhatsApp one (Twilio requires both ends on the same channel).
    pub fn sender_on_same_channel(&self, sender: &str) -> String {
        if self.is_whatsapp() && is_e164(sender) {
            format!("{WHATSAPP}{sender}")
        } else {
            sender.to_owned()
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Phone(number) | Address::Conversation(number) => f.write_str(number),
            Address::WhatsApp(number) => write!(f, "{WHATSAPP}{number}"),
            Address::Messenger(id) => write!(f, "{MESSENGER}{id}"),
        }
    }
}

/// `channelType` of a message that came through Programmable Messaging from `sender`:
/// `whatsapp:…` and `messenger:…` name their channel, anything else is a phone (MMS when it
/// carries media).
pub fn messaging_channel_type(sender: &str, has_media: bool) -> &'static str {
    if sender.starts_with(WHATSAPP) {
        "whatsapp"
    } else if sender.starts_with(MESSENGER) {
        "messenger"
    } else if has_media {
        "mms"
    } else {
        "sms"
    }
}

/// `channelType` for a sender that may be anything Twilio puts in `Author`: a phone or
/// channel address (see [`messaging_channel_type`]), else a chat identity.
pub fn channel_type_of(sender: &str, has_media: bool) -> &'static str {
    if sender.starts_with(WHATSAPP) || sender.starts_with(MESSENGER) || sender.starts_with('+') {
        messaging_channel_type(sender, has_media)
    } else {
        "chat"
    }
}

/// `+` then 8 to 15 digits (E.164).
pub fn is_e164(value: &str) -> bool {
    value.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// `CH` followed by 32 hexadecimal characters.
pub fn is_conversation_sid(value: &str) -> bool {
    value.len() == 34
        && value.starts_with("CH")
        && value[2..].chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_address_parses_and_prints_back() {
        for (text, expected) in [
            ("+14155550100", Address::Phone("+14155550100".into())),
            (
                "whatsapp:+14155550100",
                Address::WhatsApp("+14155550100".into()),
            ),
            (
                "messenger:1234567890",
                Address::Messenger("1234567890".into()),
            ),
            (
                "CH0123456789abcdef0123456789abcdef",
                Address::Conversation("CH0123456789abcdef0123456789abcdef".into()),
            ),
        ] {
            let parsed = Address::parse(text).unwrap();
            assert_eq!(parsed, expected);
            assert_eq!(parsed.to_string(), text);
        }
        for bad in [
            "",
            "14155550100",
            "CH123",
            "whatsapp:foo",
            "sms:+1415555",
            "messenger:",
            "+123",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn senders_follow_the_recipients_channel() {
        let whatsapp = Address::parse("whatsapp:+14155550100").unwrap();
        assert_eq!(
            whatsapp.sender_on_same_channel("+15005550006"),
            "whatsapp:+15005550006"
        );
        assert_eq!(
            whatsapp.sender_on_same_channel("whatsapp:+15005550006"),
            "whatsapp:+15005550006"
        );
        let phone = Address::parse("+14155550100").unwrap();
        assert_eq!(phone.sender_on_same_channel("+15005550006"), "+15005550006");
    }

    #[test]
    fn channel_types() {
        assert_eq!(channel_type_of("+14155550100", false), "sms");
        assert_eq!(channel_type_of("+14155550100", true), "mms");
        assert_eq!(channel_type_of("whatsapp:+14155550100", true), "whatsapp");
        assert_eq!(channel_type_of("messenger:42", false), "messenger");
        assert_eq!(channel_type_of("+1555", false), "sms");
        assert_eq!(channel_type_of("whatsapp:+1555", false), "whatsapp");
        assert_eq!(channel_type_of("alice", false), "chat");
    }

    #[test]
    fn e164_numbers() {
        assert!(is_e164("+15005550006"));
        assert!(!is_e164("15005550006"));
        assert!(!is_e164("+1500555000a"));
        assert!(!is_e164("+123"));
    }
}
