//! Twilio's REST API, as far as the connector uses it: Programmable Messaging
//! ([`messages`]) and the media of a received message ([`media`]), Conversations messages and
//! participants ([`conversations`]), the Media Content Service's conversation media ([`mcs`]),
//! over one pooled client ([`client`]) whose failures are typed ([`error`]).
//!
//! Twilio's creates have no request idempotency: a retry after a 5xx or a timeout can create a
//! second message, so a retry of such an attempt first looks it up
//! ([`TwilioRest::find_created_message`]).

pub mod client;
pub mod conversations;
pub mod error;
pub mod mcs;
pub mod media;
pub mod messages;

pub use client::{idempotency_token, parse_retry_after, Created, TwilioRest};
pub use conversations::{NewConversationMessage, ParticipantAdded};
pub use error::{
    RestError, ERROR_ALREADY_PARTICIPANT, ERROR_OPTED_OUT, ERROR_TOO_MANY_REQUESTS,
    IDEMPOTENCY_HEADER,
};
pub use media::MessageMedia;
pub use messages::{MessageSender, NewMessage};
