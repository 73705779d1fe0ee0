//! The Conversations WebSocket transport (cargo feature `websocket`): the connector holds the
//! socket Twilio's Conversations SDK holds, for deployments that cannot expose a public webhook
//! URL. Messages arriving on it become the same envelopes the `onMessageAdded` webhook produces.
//!
//! The client, bottom up (the protocol as the emulator implements it: `tests/twilio-emulator/README.md`):
//! - [`token`]: Access Tokens minted locally from the API key;
//! - [`frame`]: twilsock v3 framing; [`session`]: the connection task (init, acks, token
//!   renewal, reconnect with the continuation token);
//! - [`upstream`]: HTTP-like requests carried over the socket, with retries;
//! - [`sync`]: the Sync subset (descriptors, item pages, subscriptions, events);
//! - [`conversations`]: the Configuration document, joins, sends, history, [`MessageAdded`];
//! - [`checkpoint`]: the last published message index per conversation, on disk;
//! - [`options`], [`state`], [`engine`] and the facade [`client`].
//!
//! The service side: [`transport`] starts it from the connector's settings, [`ingress`]
//! publishes what it emits, [`egress`] sends replies over it, [`metrics`] exports its counters.
//!
//! [`MessageAdded`]: conversations::MessageAdded

pub mod checkpoint;
pub mod client;
pub mod conversations;
pub mod egress;
mod engine;
pub mod frame;
pub mod ingress;
pub mod metrics;
pub mod options;
pub mod session;
mod state;
pub mod sync;
pub mod token;
pub mod transport;
pub mod upstream;
