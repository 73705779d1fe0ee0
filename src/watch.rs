//! `ingress-egress watch`: prints what the service publishes on RabbitMQ as it arrives, through
//! a temporary queue of its own (exclusive, deleted when `watch` ends), so a person can see an
//! SMS reach the bus without writing a consumer. Nothing is taken from other consumers.

use clap::Args;
use secrecy::ExposeSecret;

use crate::{
    bus::{amqp::tap::Tap, routing_key},
    configuration::Settings,
    envelope::topics,
    output::{pretty_json, say},
};

#[derive(Args)]
pub struct WatchArgs {
    /// Routing key (without BUS_PREFIX) to watch; `#` for everything, `internal.egress.#` for
    /// replies and their outcomes.
    #[arg(long, default_value = topics::INGRESS)]
    pub topic: String,
    /// Stop after this many messages (default: until interrupted).
    #[arg(long)]
    pub count: Option<usize>,
}

pub async fn run(settings: &Settings, args: WatchArgs) -> anyhow::Result<()> {
    let Some(url) = &settings.bus.amqp_url else {
        anyhow::bail!(
            "watch reads RabbitMQ: set AMQP_URL (as the service has it, e.g. in .env). The \
             embedded bus lives inside the service: see GET /_debug/events there."
        );
    };
    let key = routing_key(&settings.bus.prefix, &args.topic);
    let mut tap = Tap::bind(url.expose_secret(), &settings.bus.exchange, &key).await?;
    say(format_args!(
        "watching {key} on exchange {} of {} (Ctrl-C stops)",
        settings.bus.exchange,
        settings.redacted_amqp_url()
    ))?;
    let mut seen = 0;
    while args.count.is_none_or(|count| seen < count) {
        let Some(delivery) = tap.next_message().await else {
            anyhow::bail!("the broker closed the connection");
        };
        seen += 1;
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(String::new, ToString::to_string);
        say(format_args!(
            "{} {message_id}\n{}",
            delivery.routing_key,
            pretty_json(&delivery.data)
        ))?;
    }
    Ok(())
}
