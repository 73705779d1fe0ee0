//! `ingress-egress simulate …`: shows the service at work on sample traffic.
//! - [`sms`]: signs a sample inbound-SMS webhook exactly as Twilio would and posts it to a
//!   running service;
//! - `websocket` (feature `websocket`): starts the emulator of Twilio's Conversations socket,
//!   a service holding the socket to it, and injects a message;
//!
//! and [`watch`] prints the envelope the service published.

pub mod sms;
pub mod watch;
#[cfg(feature = "websocket")]
pub mod websocket;

use clap::{Args, Subcommand};

use crate::configuration::Settings;

#[derive(Args)]
pub struct SimulateArgs {
    #[command(subcommand)]
    pub kind: SimulateKind,
}

#[derive(Subcommand)]
pub enum SimulateKind {
    /// An inbound SMS (or MMS with --media-url) to /webhooks/twilio/sms.
    Sms(sms::SmsArgs),
    /// A Conversations message over the WebSocket transport, end to end: the emulator of
    /// Twilio's side (Node 20+, `npm ci` in tests/twilio-emulator), a service holding the
    /// socket to it, an injected message.
    #[cfg(feature = "websocket")]
    Websocket(websocket::WebsocketArgs),
}

pub async fn run(settings: &Settings, args: SimulateArgs) -> anyhow::Result<()> {
    match args.kind {
        SimulateKind::Sms(args) => sms::run(settings, args).await,
        #[cfg(feature = "websocket")]
        SimulateKind::Websocket(args) => websocket::run(settings, args).await,
    }
}
