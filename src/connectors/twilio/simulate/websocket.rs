//! `ingress-egress simulate websocket`: the Conversations socket transport end to end on one
//! machine. It starts the emulator of Twilio's side (`tests/twilio-emulator/server.js`, Node
//! 20+ after `npm ci`), starts this binary as a service holding the socket to it
//! (`TWILIO_TRANSPORT=websocket`; with `AMQP_URL`, against RabbitMQ), creates a conversation
//! with an SMS participant and the bot, injects the participant's message and prints the
//! envelope the service published. Both processes stop when it is done.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use super::watch::Watch;
use crate::{
    configuration::Settings, connectors::twilio::ingress::envelope::message_id, output::say,
};

/// The credentials the emulator is started with and the service mints its tokens from.
const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
const API_KEY_SID: &str = "SK00000000000000000000000000000000";
const API_KEY_SECRET: &str = "simulate-api-key-secret";
const CHAT_SERVICE_SID: &str = "IS00000000000000000000000000000000";
/// How long each process may take to come up.
const STARTUP: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct WebsocketArgs {
    /// The SMS participant who writes, +E.164.
    #[arg(long, default_value = "+14155550100")]
    from: String,
    /// Message text.
    #[arg(long, default_value = "Hello over the Conversations socket")]
    body: String,
    /// The bot's Conversations identity.
    #[arg(long, default_value = "bot")]
    identity: String,
    /// The emulator's folder (run `npm ci` there first).
    #[arg(long, default_value = "tests/twilio-emulator")]
    emulator_dir: PathBuf,
}

pub async fn run(settings: &Settings, args: WebsocketArgs) -> anyhow::Result<()> {
    let (_emulator, emulator_port) = start_emulator(&args.emulator_dir).await?;
    let control = format!("http://127.0.0.1:{emulator_port}/_emulator");
    let outbox = std::env::temp_dir().join(format!(
        "ingress-egress-simulate-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let port = free_port()?;
    let service = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(std::env::current_exe().context("locating this program")?)
        .arg("serve")
        .env("APP_ENV", "development")
        .env("PORT", port.to_string())
        .env("OUTBOX_DIR", &outbox)
        .env("LOG_LEVEL", "warn")
        .env("TWILIO_ENABLED", "true")
        .env("TWILIO_TRANSPORT", "websocket")
        .env(
            "TWILIO_TWILSOCK_URL",
            format!("ws://127.0.0.1:{emulator_port}/v3/wsconnect"),
        )
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_API_KEY", API_KEY_SID)
        .env("TWILIO_API_SECRET", API_KEY_SECRET)
        .env("TWILIO_CHAT_SERVICE_SID", CHAT_SERVICE_SID)
        .env("TWILIO_IDENTITY", &args.identity)
        .env("TWILIO_REGION", "us1")
        .kill_on_drop(true)
        .spawn()
        .context("starting the service")?;
    let result = demonstrate(settings, &args, &control, &service, &mut child).await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&outbox);
    result
}

async fn demonstrate(
    settings: &Settings,
    args: &WebsocketArgs,
    control: &str,
    service: &str,
    child: &mut Child,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    wait_until_ready(&http, service, child).await?;
    say(format_args!(
        "service at {service} holds the socket to the emulator"
    ))?;

    let conversation = call(&http, control, "/conversations", json!({})).await?["sid"]
        .as_str()
        .context("the emulator created no conversation")?
        .to_owned();
    let participants = format!("/conversations/{conversation}/participants");
    call(
        &http,
        control,
        &participants,
        json!({"address": args.from, "proxyAddress": "+15005550006"}),
    )
    .await?;
    call(
        &http,
        control,
        &participants,
        json!({"identity": args.identity}),
    )
    .await?;

    let mut watch = Watch::start(settings).await?;
    let message = call(
        &http,
        control,
        &format!("/conversations/{conversation}/messages"),
        json!({"author": args.from, "body": args.body}),
    )
    .await?;
    let sid = message["sid"]
        .as_str()
        .context("the emulator created no message")?;
    say(format_args!(
        "{} wrote {sid} in {conversation}\n",
        args.from
    ))?;
    watch.show(settings, service, &message_id(sid)).await
}

/// Starts `node server.js` in `dir`; returns the process and its port.
async fn start_emulator(dir: &Path) -> anyhow::Result<(Child, u16)> {
    if !dir.join("server.js").is_file() {
        bail!(
            "no emulator at {} (run from the repository root or pass --emulator-dir)",
            dir.display()
        );
    }
    if !dir.join("node_modules/ws").is_dir() {
        bail!(
            "the emulator's dependencies are not installed: run `npm ci` in {}",
            dir.display()
        );
    }
    let mut child = Command::new("node")
        .arg("server.js")
        .current_dir(dir)
        .env("PORT", "0")
        .env("EMULATOR_ACCOUNT_SID", ACCOUNT_SID)
        .env("EMULATOR_API_KEY_SID", API_KEY_SID)
        .env("EMULATOR_API_KEY_SECRET", API_KEY_SECRET)
        .env("EMULATOR_CHAT_SERVICE_SID", CHAT_SERVICE_SID)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run `node` (Node 20+ is needed)")?;
    let stdout = child.stdout.take().context("the emulator's output")?;
    let mut line = String::new();
    tokio::time::timeout(STARTUP, BufReader::new(stdout).read_line(&mut line))
        .await
        .context("the emulator did not start")?
        .context("reading the emulator's output")?;
    let ready: Value = serde_json::from_str(&line)
        .with_context(|| format!("unexpected emulator output {line:?}"))?;
    let port = ready["port"]
        .as_u64()
        .and_then(|port| u16::try_from(port).ok())
        .with_context(|| format!("unexpected emulator output {line:?}"))?;
    Ok((child, port))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits for `/readyz` (broker and socket up); fails early when the service exits.
async fn wait_until_ready(
    http: &reqwest::Client,
    service: &str,
    child: &mut Child,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STARTUP;
    let mut last = String::from("no answer");
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the service exited ({status}); see its output above");
        }
        if let Ok(response) = http.get(format!("{service}/readyz")).send().await {
            let ready = response.status().is_success();
            last = response.text().await.unwrap_or_default();
            if ready {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the service was not ready within {STARTUP:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One call to the emulator's control API.
async fn call(
    http: &reqwest::Client,
    control: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let response = http
        .post(format!("{control}{path}"))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("emulator {path}"))?;
    let status = response.status();
    let reply: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("emulator {path} answered {status}: {reply}");
    }
    Ok(reply)
}
