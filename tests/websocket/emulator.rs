//! The Node emulator of Twilio's Conversations socket side (`tests/twilio-emulator/`), one
//! process per test, and its control API (`/_emulator/…`, see its README).

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    time::timeout,
};

/// The bot's identity in these tests.
pub const BOT: &str = "bot";
/// The SMS participant's address.
pub const SMS_USER: &str = "+15551230000";
/// The emulator's default credentials (its README): the service mints tokens with them.
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
pub const API_KEY_SID: &str = "SK00000000000000000000000000000000";
pub const API_KEY_SECRET: &str = "emulator-api-key-secret";
pub const CHAT_SERVICE_SID: &str = "IS00000000000000000000000000000000";
/// How long anything in these tests may take.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn emulator_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/twilio-emulator")
}

pub struct Emulator {
    _child: Child,
    pub port: u16,
    http: reqwest::Client,
}

impl Emulator {
    /// Starts `node tests/twilio-emulator/server.js` with `env`; fails with the command to run
    /// when its dependencies are not installed.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let dir = emulator_dir();
        assert!(
            dir.join("node_modules/ws").is_dir(),
            "the emulator's dependencies are not installed: run `npm ci` in {} \
             (or `bash tests/twilio-emulator/run.sh`)",
            dir.display()
        );
        let mut command = Command::new("node");
        command
            .arg("server.js")
            .current_dir(&dir)
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (Node 20+ is needed): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        timeout(WAIT, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("the emulator printed its port")
            .expect("emulator stdout");
        let ready: Value = serde_json::from_str(&line).expect("the ready line is JSON");
        let port = ready["port"].as_u64().expect("port") as u16;
        Self {
            _child: child,
            port,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/v3/wsconnect", self.port)
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}/_emulator{path}", self.port);
        let request = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let response = request.send().await.expect("emulator control API");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.call("POST", path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "POST {path} → {status} {reply}"
        );
        reply
    }

    pub async fn state(&self) -> Value {
        self.call("GET", "/state", None).await.1
    }

    pub async fn conversation(&self) -> String {
        self.post("/conversations", json!({})).await["sid"]
            .as_str()
            .expect("sid")
            .to_owned()
    }

    pub async fn add_sms_participant(&self, conversation: &str, address: &str) {
        self.post(
            &format!("/conversations/{conversation}/participants"),
            json!({"address": address, "proxyAddress": "+15550001111"}),
        )
        .await;
    }

    pub async fn add_identity(&self, conversation: &str, identity: &str) {
        self.post(
            &format!("/conversations/{conversation}/participants"),
            json!({"identity": identity}),
        )
        .await;
    }

    pub async fn invite(&self, conversation: &str, identity: &str) {
        self.post(
            &format!("/conversations/{conversation}/invite"),
            json!({"identity": identity}),
        )
        .await;
    }

    /// A conversation with an SMS participant and the bot joined.
    pub async fn joined_conversation(&self) -> String {
        let sid = self.conversation().await;
        self.add_sms_participant(&sid, SMS_USER).await;
        self.add_identity(&sid, BOT).await;
        sid
    }

    /// Injects a message; returns its SID and index.
    pub async fn message(&self, conversation: &str, author: &str, body: &str) -> (String, u64) {
        self.message_with(conversation, json!({"author": author, "body": body}))
            .await
    }

    pub async fn message_with(&self, conversation: &str, message: Value) -> (String, u64) {
        let reply = self
            .post(&format!("/conversations/{conversation}/messages"), message)
            .await;
        (
            reply["sid"].as_str().expect("sid").to_owned(),
            reply["index"].as_u64().expect("index"),
        )
    }

    /// The conversation's messages as the emulator stores them.
    pub async fn messages(&self, conversation: &str) -> Vec<Value> {
        let (_, reply) = self
            .call(
                "GET",
                &format!("/conversations/{conversation}/messages"),
                None,
            )
            .await;
        reply["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Upstream requests so far whose `"<METHOD> <host><path>"` contains `needle`.
    pub fn upstream_count(state: &Value, needle: &str) -> u64 {
        state["upstream"]
            .as_object()
            .map(|calls| {
                calls
                    .iter()
                    .filter(|(key, _)| key.contains(needle))
                    .filter_map(|(_, count)| count.as_u64())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Waits until the emulator's state satisfies `check`.
    pub async fn until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = self.state().await;
            if check(&state) {
                return state;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {state:#}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
