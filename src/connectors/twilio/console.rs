//! The exact URLs to paste into the Twilio console (and `TWILIO_STATUS_CALLBACK_URL`): each
//! webhook path on `PUBLIC_BASE_URL`, with the connection overrides Twilio reads from the URL
//! fragment. The start-up banner, the debug snapshot (`consoleUrls`) and the README show what
//! [`console_urls`] returns, and nothing else builds these URLs.
//!
//! Why the overrides: by default Twilio retries a webhook once, and only when it cannot
//! connect; a 5xx or a slow answer loses the message. With `rp=all` Twilio retries on any
//! failure, `rc` times, and `ct`/`rt` bound each attempt so that every attempt fits in the time
//! Twilio gives the webhook in total (`tt`): 15 s for Messaging, 5 s for Conversations. Each
//! attempt's read timeout leaves room for the service's slowest regular answer: a publish that
//! waits `PUBLISH_CONFIRM_TIMEOUT_MS` (2 s by default) before the event goes to the outbox.
//! Retries are safe: a repeated MessageSid is not published twice. The fragment never reaches
//! the service and is not part of the URL Twilio signs.
//!
//! Event Streams retries failed deliveries itself and is given the plain URL.

use serde::Serialize;
use url::Url;

/// One URL to configure, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleUrl {
    /// Which webhook: `sms`, `conversations`, `status` or `event-streams`.
    pub webhook: &'static str,
    /// Where it goes, in the Twilio console's words (or the variable that takes it).
    pub place: &'static str,
    /// The URL to paste, fragment included.
    pub url: String,
}

/// Twilio's connection overrides for one webhook (milliseconds, and a retry count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overrides {
    /// `rc`: retries after the first attempt (Twilio allows 0 to 5).
    pub retries: u32,
    /// `ct`: connect timeout of one attempt (100 to 10000).
    pub connect_ms: u32,
    /// `rt`: read timeout of one attempt (100 to 15000).
    pub read_ms: u32,
    /// `tt`: all attempts together (100 to 15000): the product's own limit.
    pub total_ms: u32,
}

impl Overrides {
    /// Programmable Messaging (incoming messages, status callbacks): 15 s in all, four
    /// attempts of 1 s to connect and 2.75 s to answer.
    pub const MESSAGING: Overrides = Overrides {
        retries: 3,
        connect_ms: 1000,
        read_ms: 2750,
        total_ms: 15_000,
    };

    /// Conversations webhooks: 5 s in all, two attempts of 0.4 s to connect and 2.1 s to
    /// answer (four attempts would leave each less than the service's slowest answer).
    pub const CONVERSATIONS: Overrides = Overrides {
        retries: 1,
        connect_ms: 400,
        read_ms: 2100,
        total_ms: 5000,
    };

    /// The URL fragment: `#rc=…&rp=all&ct=…&rt=…&tt=…`.
    pub fn fragment(&self) -> String {
        format!(
            "rc={}&rp=all&ct={}&rt={}&tt={}",
            self.retries, self.connect_ms, self.read_ms, self.total_ms
        )
    }

    /// The longest all attempts can take.
    pub fn worst_case_ms(&self) -> u32 {
        (self.retries + 1) * (self.connect_ms + self.read_ms)
    }
}

/// What to configure for each webhook, on `base` (the validated `PUBLIC_BASE_URL`).
pub fn console_urls(base: &Url) -> Vec<ConsoleUrl> {
    let origin = base.origin().ascii_serialization();
    let url = |path: &str, overrides: Option<Overrides>| match overrides {
        Some(overrides) => format!("{origin}{path}#{}", overrides.fragment()),
        None => format!("{origin}{path}"),
    };
    vec![
        ConsoleUrl {
            webhook: "sms",
            place: "Phone number (or Messaging Service) → A message comes in",
            url: url("/webhooks/twilio/sms", Some(Overrides::MESSAGING)),
        },
        ConsoleUrl {
            webhook: "conversations",
            place: "Conversations → Webhooks → Post-event URL",
            url: url(
                "/webhooks/twilio/conversations",
                Some(Overrides::CONVERSATIONS),
            ),
        },
        ConsoleUrl {
            webhook: "status",
            place: "TWILIO_STATUS_CALLBACK_URL (delivery receipts of replies)",
            url: url("/webhooks/twilio/status", Some(Overrides::MESSAGING)),
        },
        ConsoleUrl {
            webhook: "event-streams",
            place: "Event Streams → Webhook sink destination (optional)",
            url: url("/webhooks/twilio/event-streams", None),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_webhook_has_its_path_on_the_public_origin() {
        let base = Url::parse("https://abc123.ngrok.app").unwrap();
        let urls = console_urls(&base);
        let paths: Vec<_> = urls
            .iter()
            .map(|u| Url::parse(&u.url).unwrap().path().to_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "/webhooks/twilio/sms",
                "/webhooks/twilio/conversations",
                "/webhooks/twilio/status",
                "/webhooks/twilio/event-streams"
            ]
        );
        assert_eq!(
            urls[0].url,
            "https://abc123.ngrok.app/webhooks/twilio/sms#rc=3&rp=all&ct=1000&rt=2750&tt=15000"
        );
        assert_eq!(
            urls[1].url,
            "https://abc123.ngrok.app/webhooks/twilio/conversations#rc=1&rp=all&ct=400&rt=2100&tt=5000"
        );
        assert!(!urls[3].url.contains('#'));
    }

    #[test]
    fn the_overrides_keep_within_twilios_limits() {
        for (overrides, limit) in [
            (Overrides::MESSAGING, 15_000),
            (Overrides::CONVERSATIONS, 5000),
        ] {
            assert!(overrides.retries <= 5);
            assert!((100..=10_000).contains(&overrides.connect_ms));
            assert!((100..=15_000).contains(&overrides.read_ms));
            assert_eq!(overrides.total_ms, limit);
            assert!(
                overrides.worst_case_ms() <= limit,
                "{overrides:?}: every attempt must fit in {limit} ms"
            );
            // Room for the slowest regular answer: the default 2 s confirm wait.
            assert!(overrides.read_ms > 2000, "{overrides:?}");
        }
    }
}
