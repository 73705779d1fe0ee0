//! What start-up says about the Twilio connector: the URLs to paste into the Twilio console
//! (from [`console_urls`]) and what is not configured yet, each with its consequence (what a
//! send lacks comes from [`super::prerequisites`]).

use url::Url;

use super::{
    config::{EgressTransport, Transport, TwilioSettings},
    console::console_urls,
    prerequisites::{missing_for_any, NO_CREDENTIALS},
    shared::CONNECTOR,
};
use crate::banner::{ConnectorNotes, Place};

/// The banner notes for a service listening on `port`.
pub fn startup_notes(
    settings: &TwilioSettings,
    public_base_url: Option<&Url>,
    port: u16,
) -> ConnectorNotes {
    let mut missing = Vec::new();
    let configure = match public_base_url {
        Some(base) => console_urls(base)
            .into_iter()
            .map(|u| Place {
                place: u.place.to_owned(),
                url: u.url,
            })
            .collect(),
        // Without webhooks (the socket alone) Twilio need not reach this machine.
        None if settings.transport == Transport::Websocket => Vec::new(),
        None => {
            missing.push(format!(
                "PUBLIC_BASE_URL is not set, so Twilio cannot reach this machine: start a \
                 tunnel (`ngrok http {port}`) and set PUBLIC_BASE_URL to its https:// \
                 address; the URLs for the Twilio console then appear here"
            ));
            Vec::new()
        }
    };
    let for_sends = missing_for_any(settings);
    if settings.using_development_token {
        let rest_too = for_sends.contains(&NO_CREDENTIALS);
        missing.push(format!(
            "TWILIO_AUTH_TOKEN is not set: the public development token checks webhooks, so \
             Twilio's real requests are refused (403){}",
            if rest_too {
                ", and it cannot authenticate sends (replies are dead-lettered)"
            } else {
                ""
            }
        ));
    }
    missing.extend(
        for_sends
            .iter()
            .filter(|m| !(settings.using_development_token && **m == NO_CREDENTIALS))
            .map(ToString::to_string),
    );
    if settings.status_callback_url.is_none() {
        missing.push(
            "TWILIO_STATUS_CALLBACK_URL is not set: replies report no delivery receipts \
             (set it to the status URL)"
                .to_owned(),
        );
    }
    ConnectorNotes {
        connector: CONNECTOR,
        transport: transport(settings),
        configure,
        missing,
        hints: vec![
            "try it from another shell: `cargo run -- simulate sms` (or `ingress-egress \
             simulate sms`)"
                .to_owned(),
        ],
    }
}

/// How messages reach the service and replies leave it, in words.
fn transport(settings: &TwilioSettings) -> String {
    let inbound = match settings.transport {
        Transport::Webhook => "webhooks",
        Transport::Websocket => "the Conversations WebSocket",
        Transport::Both => "webhooks and the Conversations WebSocket",
    };
    let replies = match settings.egress_transport {
        EgressTransport::Rest => "the REST API",
        EgressTransport::Websocket => "the REST API (the WebSocket for Conversations)",
    };
    format!("{inbound} in, replies through {replies}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::{AppEnv, Environment};

    fn settings() -> TwilioSettings {
        TwilioSettings::from_environment(
            &Environment::from_pairs([
                ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000001"),
                ("TWILIO_AUTH_TOKEN", "0123456789abcdef0123456789abcdef"),
            ]),
            AppEnv::Development,
        )
        .unwrap()
    }

    #[test]
    fn without_a_public_url_webhooks_need_one_and_the_socket_alone_does_not() {
        let webhooks = startup_notes(&settings(), None, 8080);
        assert_eq!(
            webhooks.transport,
            "webhooks in, replies through the REST API"
        );
        assert!(webhooks.configure.is_empty());
        assert!(
            webhooks.missing[0].starts_with("PUBLIC_BASE_URL is not set")
                && webhooks.missing[0].contains("ngrok http 8080"),
            "{:?}",
            webhooks.missing
        );

        let mut socket = settings();
        socket.transport = Transport::Websocket;
        socket.egress_transport = EgressTransport::Websocket;
        let notes = startup_notes(&socket, None, 8080);
        assert_eq!(
            notes.transport,
            "the Conversations WebSocket in, replies through the REST API (the WebSocket for \
             Conversations)"
        );
        assert!(
            !notes.missing.iter().any(|m| m.contains("PUBLIC_BASE_URL")),
            "{:?}",
            notes.missing
        );

        let base = Url::parse("https://abc123.ngrok.app").unwrap();
        let pasted = startup_notes(&settings(), Some(&base), 8080);
        assert_eq!(pasted.configure.len(), console_urls(&base).len());
        assert!(!pasted.missing.iter().any(|m| m.contains("PUBLIC_BASE_URL")));
    }
}
