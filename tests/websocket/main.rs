//! The Conversations socket transport (cargo feature `websocket`) against the in-repo emulator
//! of Twilio's side (`tests/twilio-emulator/`, itself proven against Twilio's own JS SDK by
//! `tests/twilio-emulator/run.sh`):
//! - [`session`]: the connection against a scripted twilsock server (what the emulator cannot
//!   provoke);
//! - [`client`]: the client on its own against the emulator;
//! - [`service`]: the whole service, emulator and a real RabbitMQ;
//! - [`logs`]: the real binary through a whole session, its output checked for secrets.
//!
//! Run: `npm ci` in `tests/twilio-emulator` once, then
//! `cargo test --features websocket --test websocket` (RabbitMQ at 127.0.0.1:5672, as for the
//! other tests).

// The HTTP and broker helpers of the main suite; this target uses part of them.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
// Running the real binary; this target uses part of it.
#[allow(dead_code)]
#[path = "../api/process.rs"]
mod process;

mod client;
mod emulator;
mod logs;
mod service;
mod session;
