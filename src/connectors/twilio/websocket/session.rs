//! The twilsock connection task: one WebSocket to Twilio, kept alive across drops.
//!
//! It sends `init` with the registrations the Conversations SDK uses, routes replies to the
//! upstream requests waiting for them, acks every other server frame, hands notifications to
//! the layer above in arrival order, renews the token (server notice, local timer, or a 410
//! close), and reconnects with jittered backoff carrying the continuation token. Everything is
//! driven by awaits on the socket, the command channel and two timers, so an idle connection
//! costs nothing but the keepalive ping.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, Header, HttpRequest, HttpStatus, Method};
use super::token::{unix_now, AccessToken, TokenSource};
use crate::backoff::Backoff;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Message types the Conversations SDK registers for; Sync events only arrive for these.
pub const MESSAGE_TYPES: [&str; 5] = [
    "twilio.ipmsg.typing_indicator",
    "twilio.sync.event",
    "com.twilio.rtd.cds.document",
    "com.twilio.rtd.cds.list",
    "com.twilio.rtd.cds.map",
];

/// Twilio's "token expired" error code in init/update replies.
const TOKEN_EXPIRED_CODE: i64 = 20104;
/// A connection that lived this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// `wss://tsock.<region>.twilio.com/v3/wsconnect` or an override.
    pub url: String,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    /// How long to wait for the init reply.
    pub init_timeout: Duration,
    /// A ping is sent after this much silence, and the socket is dropped if nothing at all
    /// arrives within the same time after it.
    pub keepalive: Duration,
    pub write_timeout: Duration,
    /// The token is renewed this long before it expires even if the server never warns.
    pub token_refresh_lead: Duration,
}

impl SessionConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            reconnect_base: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(15),
            init_timeout: Duration::from_secs(15),
            keepalive: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            token_refresh_lead: Duration::from_secs(120),
        }
    }
}

/// What `/readyz` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TransportState {
    Connecting,
    Connected,
    Disconnected {
        reason: String,
    },
    /// Terminal: the server refused the credentials.
    Denied {
        reason: String,
    },
    Stopped,
}

/// Counters the service maps to Prometheus; plain atomics so reading them never blocks.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub reconnects: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub malformed_frames: AtomicU64,
    pub upstream_requests: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub notifications: AtomicU64,
    pub token_renewals: AtomicU64,
    /// Unix seconds; 0 before the first token.
    pub token_expires_at: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error("the twilsock session has stopped")]
    Stopped,
    #[error("the server denied the session: {0}")]
    Denied(String),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The request was written but the socket dropped before its reply: it may or may not
    /// have been carried out.
    #[error("connection lost before the reply")]
    ConnectionLost,
    #[error("transport status {code} {status}")]
    Transport { code: u16, status: String },
}

/// Ordered events from the session to the layer above.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A new connection is ready. `resumed` is false on the first connection and when the
    /// server reissued the continuation token (state may have been lost).
    Connected {
        generation: u64,
        resumed: bool,
    },
    Notification(Notification),
}

#[derive(Debug, Clone)]
pub struct Notification {
    pub message_type: String,
    pub payload: Value,
}

/// An upstream reply: HTTP status, headers and body as the server relayed them.
#[derive(Debug, Clone)]
pub struct UpstreamReply {
    pub http_status: HttpStatus,
    pub headers: Map<String, Value>,
    pub payload_type: Option<String>,
    pub body: Vec<u8>,
}

enum Command {
    Request {
        id: String,
        header: Box<Header>,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Frame, SessionError>>,
    },
    Cancel {
        id: String,
    },
}

/// Cheap to clone; dropping every clone stops the session.
#[derive(Clone)]
pub struct SessionHandle {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<TransportState>,
    stats: Arc<SessionStats>,
}

impl SessionHandle {
    pub fn state(&self) -> watch::Receiver<TransportState> {
        self.state.clone()
    }

    pub fn stats(&self) -> &Arc<SessionStats> {
        &self.stats
    }

    /// Sends one upstream request (`method: message`) and waits for its reply. Requests made
    /// while disconnected wait in a queue and go out on the next connection.
    pub async fn request(
        &self,
        http_request: HttpRequest,
        payload_type: Option<&str>,
        payload: Vec<u8>,
        wait: Duration,
    ) -> Result<UpstreamReply, SessionError> {
        let id = new_id();
        let mut header = Header::new(Method::Message, id.clone());
        header.active_grant = Some("ip_messaging".into());
        header.payload_type = payload_type.map(str::to_owned);
        header.http_request = Some(http_request);
        let (reply, receiver) = oneshot::channel();
        bump(&self.stats.upstream_requests);
        self.commands
            .send(Command::Request {
                id: id.clone(),
                header: Box::new(header),
                payload,
                reply,
            })
            .map_err(|_| SessionError::Stopped)?;
        let frame = match timeout(wait, receiver).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SessionError::Stopped),
            Err(_) => {
                let _ = self.commands.send(Command::Cancel { id });
                Err(SessionError::Timeout(wait))
            }
        }
        .inspect_err(|_| bump(&self.stats.upstream_errors))?;
        if let Some(status) = frame.header.status.as_ref().filter(|s| !s.is_success()) {
            bump(&self.stats.upstream_errors);
            return Err(SessionError::Transport {
                code: status.code,
                status: status.status.clone(),
            });
        }
        let http_status = frame.header.http_status.clone().unwrap_or(HttpStatus {
            code: 200,
            status: "OK".into(),
        });
        if !(200..300).contains(&http_status.code) {
            bump(&self.stats.upstream_errors);
        }
        Ok(UpstreamReply {
            http_status,
            headers: frame.header.http_headers.clone().unwrap_or_default(),
            payload_type: frame.header.payload_type.clone(),
            body: frame.payload,
        })
    }
}

pub fn new_id() -> String {
    format!("TM{}", uuid::Uuid::new_v4().simple())
}

/// Starts the connection task.
pub fn spawn(
    config: SessionConfig,
    tokens: Arc<dyn TokenSource>,
    cancel: CancellationToken,
) -> (
    SessionHandle,
    mpsc::UnboundedReceiver<SessionEvent>,
    tokio::task::JoinHandle<()>,
) {
    // rustls needs one process-wide crypto provider when more than one is compiled in; the
    // error only says one was installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (events, event_rx) = mpsc::unbounded_channel();
    let (state_tx, state) = watch::channel(TransportState::Connecting);
    let stats = Arc::new(SessionStats::default());
    let task = Task {
        backoff: Backoff::new(config.reconnect_base, config.reconnect_max),
        config,
        tokens,
        cancel,
        commands: command_rx,
        events,
        state: state_tx,
        stats: stats.clone(),
        token: None,
        last_issued_at: 0,
        continuation_token: None,
        queue: VecDeque::new(),
        in_flight: HashMap::new(),
        generation: 0,
    };
    let join = tokio::spawn(task.run());
    (
        SessionHandle {
            commands,
            state,
            stats,
        },
        event_rx,
        join,
    )
}

struct Outgoing {
    id: String,
    header: Box<Header>,
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<Frame, SessionError>>,
}

/// Why a connection ended and what to do next.
enum Ending {
    Reconnect {
        reason: String,
        /// Server-imposed minimum wait.
        floor: Option<Duration>,
        /// Reconnect without waiting when the connection had been stable (token expiry).
        eager: bool,
    },
    Denied(String),
    Stop,
}

impl Ending {
    /// The connection is lost: reconnect after the usual backoff.
    fn lost(reason: impl Into<String>) -> Self {
        Ending::Reconnect {
            reason: reason.into(),
            floor: None,
            eager: false,
        }
    }
}

enum InitOutcome {
    Ready(Box<Socket>),
    Failed(Ending),
    TokenExpired(String),
}

struct Task {
    config: SessionConfig,
    tokens: Arc<dyn TokenSource>,
    cancel: CancellationToken,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<SessionEvent>,
    state: watch::Sender<TransportState>,
    stats: Arc<SessionStats>,
    backoff: Backoff,
    token: Option<AccessToken>,
    last_issued_at: u64,
    continuation_token: Option<String>,
    queue: VecDeque<Outgoing>,
    in_flight: HashMap<String, oneshot::Sender<Result<Frame, SessionError>>>,
    generation: u64,
}

impl Task {
    async fn run(mut self) {
        let mut expired_retry = false;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            self.state.send_replace(TransportState::Connecting);
            if let Err(reason) = self.ensure_token(expired_retry).await {
                self.deny(reason).await;
                break;
            }
            let started = Instant::now();
            let ending = match self.connect_and_init().await {
                InitOutcome::Ready(socket) => {
                    expired_retry = false;
                    self.connected(*socket).await
                }
                InitOutcome::TokenExpired(reason) if !expired_retry => {
                    // One immediate retry with a freshly minted token; a second refusal is
                    // a real credential problem.
                    expired_retry = true;
                    self.token = None;
                    tracing::info!(%reason, "twilsock init refused an expired token; re-minting");
                    continue;
                }
                InitOutcome::TokenExpired(reason) => Ending::Denied(reason),
                InitOutcome::Failed(ending) => ending,
            };
            self.fail_in_flight();
            match ending {
                Ending::Stop => break,
                Ending::Denied(reason) => {
                    self.deny(reason).await;
                    break;
                }
                Ending::Reconnect {
                    reason,
                    floor,
                    eager,
                } => {
                    tracing::warn!(%reason, "twilsock disconnected; reconnecting");
                    self.state
                        .send_replace(TransportState::Disconnected { reason });
                    bump(&self.stats.reconnects);
                    let stable = started.elapsed() >= STABLE_AFTER;
                    if stable {
                        self.backoff.reset();
                    }
                    let delay = if eager && stable {
                        Duration::ZERO
                    } else {
                        self.backoff.next_delay_at_least(floor)
                    };
                    if !self.wait(delay).await {
                        break;
                    }
                }
            }
        }
        self.fail_all(SessionError::Stopped);
        self.state.send_replace(TransportState::Stopped);
    }

    /// Mints a token when there is none or it is about to lapse.
    async fn ensure_token(&mut self, force: bool) -> Result<(), String> {
        let now = unix_now().map_err(|e| e.to_string())?;
        let lead = self.config.token_refresh_lead.as_secs();
        let fresh_enough = self
            .token
            .as_ref()
            .is_some_and(|token| token.remaining(now) > lead.min(token_ttl(token) / 2));
        if fresh_enough && !force {
            return Ok(());
        }
        let token = self.mint_fresh().await.map_err(|e| e.to_string())?;
        self.stats
            .token_expires_at
            .store(token.expires_at, Ordering::Relaxed);
        self.token = Some(token);
        Ok(())
    }

    /// Mints a token that differs from the previous one. Tokens have one-second resolution, so
    /// a re-mint within the same second would repeat a token the server just rejected.
    async fn mint_fresh(&mut self) -> Result<AccessToken, super::token::TokenError> {
        if unix_now()? <= self.last_issued_at {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let to_next_second =
                Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()));
            sleep(to_next_second + Duration::from_millis(5)).await;
        }
        let token = self.tokens.mint()?;
        self.last_issued_at = token.issued_at;
        Ok(token)
    }

    async fn deny(&mut self, reason: String) {
        tracing::error!(%reason, "twilsock session denied; not reconnecting");
        self.state.send_replace(TransportState::Denied {
            reason: reason.clone(),
        });
        self.fail_all(SessionError::Denied(reason.clone()));
        // Keep answering requests with the terminal error until shutdown.
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                command = self.commands.recv() => match command {
                    None => return,
                    Some(Command::Request { reply, .. }) => {
                        let _ = reply.send(Err(SessionError::Denied(reason.clone())));
                    }
                    Some(Command::Cancel { .. }) => {}
                },
            }
        }
    }

    /// Sleeps, still queueing requests; false when the session should stop.
    async fn wait(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = sleep_until(deadline) => return true,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(command) => self.enqueue(command),
                },
            }
        }
    }

    fn enqueue(&mut self, command: Command) {
        match command {
            Command::Request {
                id,
                header,
                payload,
                reply,
            } => self.queue.push_back(Outgoing {
                id,
                header,
                payload,
                reply,
            }),
            Command::Cancel { id } => {
                self.queue.retain(|outgoing| outgoing.id != id);
                self.in_flight.remove(&id);
            }
        }
    }

    fn fail_in_flight(&mut self) {
        for (_, reply) in self.in_flight.drain() {
            let _ = reply.send(Err(SessionError::ConnectionLost));
        }
    }

    fn fail_all(&mut self, error: SessionError) {
        self.fail_in_flight();
        for outgoing in self.queue.drain(..) {
            let _ = outgoing.reply.send(Err(error.clone()));
        }
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Request { reply, .. } = command {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    fn init_frame(&self, id: &str) -> Frame {
        let mut header = Header::new(Method::Init, id);
        header.token = self.token.as_ref().map(|token| token.jwt().to_owned());
        let extra = &mut header.extra;
        extra.insert(
            "continuation_token".into(),
            self.continuation_token
                .clone()
                .map_or(Value::Null, Value::String),
        );
        // Same capability set as the JS SDK: it is the one the server is known to accept.
        extra.insert(
            "capabilities".into(),
            json!(["client_update", "offline_storage", "telemetry.v1"]),
        );
        extra.insert(
            "metadata".into(),
            json!({
                "ver": env!("CARGO_PKG_VERSION"),
                "env": "rust",
                "os": std::env::consts::OS,
                "type": "conversations",
                "sdk": "rust",
                "sdkv": env!("CARGO_PKG_VERSION"),
            }),
        );
        extra.insert(
            "registrations".into(),
            json!([{
                "product": "ip_messaging",
                "type": "ers",
                "notification_protocol_version": 0,
                "message_types": MESSAGE_TYPES,
            }]),
        );
        extra.insert("tweaks".into(), Value::Null);
        Frame::new(header)
    }

    async fn connect_and_init(&mut self) -> InitOutcome {
        let retry = |reason: String| InitOutcome::Failed(Ending::lost(reason));
        let connecting = tokio::select! {
            _ = self.cancel.cancelled() => return InitOutcome::Failed(Ending::Stop),
            result = timeout(
                self.config.connect_timeout,
                tokio_tungstenite::connect_async_with_config(self.config.url.as_str(), None, true),
            ) => result,
        };
        let mut socket = match connecting {
            Ok(Ok((socket, _response))) => socket,
            Ok(Err(error)) => return retry(format!("connect failed: {error}")),
            Err(_) => return retry("connect timed out".into()),
        };
        let init_id = new_id();
        let init = self.init_frame(&init_id);
        if let Err(reason) = self.write(&mut socket, &init).await {
            return retry(reason);
        }
        let deadline = Instant::now() + self.config.init_timeout;
        loop {
            let message = tokio::select! {
                _ = self.cancel.cancelled() => return InitOutcome::Failed(Ending::Stop),
                _ = sleep_until(deadline) => return retry("no init reply".into()),
                message = socket.next() => message,
            };
            let frame = match self.read_frame(message) {
                ReadResult::Frame(frame) => *frame,
                ReadResult::Skip => continue,
                ReadResult::Lost(reason) => return retry(reason),
            };
            if frame.header.method == Method::Reply && frame.header.id == init_id {
                return self.init_reply(socket, frame).await;
            }
            match self.server_frame(&mut socket, frame).await {
                Ok(()) => {}
                Err(ending) => return InitOutcome::Failed(ending),
            }
        }
    }

    async fn init_reply(&mut self, socket: Socket, frame: Frame) -> InitOutcome {
        let status = frame.header.status.clone().unwrap_or_default();
        let description = status
            .description
            .clone()
            .unwrap_or_else(|| status.status.clone());
        match status.code {
            200..=299 => {
                let reissued = frame
                    .header
                    .extra
                    .get("continuation_token_status")
                    .and_then(|s| s.get("reissued"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let had_token = self.continuation_token.is_some();
                if let Some(token) = frame.header.extra_str("continuation_token") {
                    self.continuation_token = Some(token.to_owned());
                }
                self.generation += 1;
                // Readiness flips before the layer above hears of the connection, so whatever
                // it does in response sees a connected session.
                self.state.send_replace(TransportState::Connected);
                let _ = self.events.send(SessionEvent::Connected {
                    generation: self.generation,
                    resumed: had_token && !reissued,
                });
                InitOutcome::Ready(Box::new(socket))
            }
            401 | 403 if status.error_code == Some(TOKEN_EXPIRED_CODE) => {
                InitOutcome::TokenExpired(description)
            }
            401 | 403 => InitOutcome::Failed(Ending::Denied(format!(
                "init refused with {}: {description}",
                status.code
            ))),
            code => InitOutcome::Failed(Ending::Reconnect {
                reason: format!("init failed with {code}: {description}"),
                floor: backoff_floor(&frame),
                eager: false,
            }),
        }
    }

    async fn connected(&mut self, mut socket: Socket) -> Ending {
        self.state.send_replace(TransportState::Connected);
        tracing::info!(generation = self.generation, "twilsock connected");
        // Requests that waited through the outage go out first, in order.
        while let Some(outgoing) = self.queue.pop_front() {
            if outgoing.reply.is_closed() {
                continue;
            }
            if let Err(ending) = self.send_request(&mut socket, outgoing).await {
                return ending;
            }
        }
        let keepalive = self.config.keepalive;
        let mut ping_due = Instant::now() + keepalive;
        let mut awaiting_pong = false;
        let mut pending_update: Option<(String, AccessToken)> = None;
        loop {
            let refresh_at = self.refresh_deadline(pending_update.is_some());
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    let close = Frame::new(Header::new(Method::Close, new_id()));
                    let _ = self.write(&mut socket, &close).await;
                    let _ = timeout(self.config.write_timeout, socket.close(None)).await;
                    return Ending::Stop;
                }
                command = self.commands.recv() => match command {
                    None => return Ending::Stop,
                    Some(Command::Request { id, header, payload, reply }) => {
                        let outgoing = Outgoing { id, header, payload, reply };
                        if let Err(ending) = self.send_request(&mut socket, outgoing).await {
                            return ending;
                        }
                    }
                    Some(command @ Command::Cancel { .. }) => self.enqueue(command),
                },
                message = socket.next() => {
                    ping_due = Instant::now() + keepalive;
                    awaiting_pong = false;
                    let frame = match self.read_frame(message) {
                        ReadResult::Frame(frame) => *frame,
                        ReadResult::Skip => continue,
                        ReadResult::Lost(reason) => {
                            return Ending::lost(reason);
                        }
                    };
                    if frame.header.method == Method::Reply {
                        if let Some((id, token)) = pending_update.take() {
                            if id == frame.header.id {
                                if let Err(ending) = self.update_reply(&frame, token) {
                                    return ending;
                                }
                                continue;
                            }
                            pending_update = Some((id, token));
                        }
                        self.route_reply(frame);
                        continue;
                    }
                    let about_to_expire = frame.header.method == Method::ClientUpdate
                        && frame.header.client_update_type.as_deref() == Some("token_about_to_expire");
                    if let Err(ending) = self.server_frame(&mut socket, frame).await {
                        return ending;
                    }
                    if about_to_expire && pending_update.is_none() {
                        match self.send_update(&mut socket).await {
                            Ok(update) => pending_update = Some(update),
                            Err(ending) => return ending,
                        }
                    }
                }
                _ = sleep_until(ping_due) => {
                    if awaiting_pong {
                        return Ending::lost("keepalive timed out");
                    }
                    awaiting_pong = true;
                    ping_due = Instant::now() + keepalive;
                    let ping = timeout(self.config.write_timeout, socket.send(Message::Ping(Vec::new().into()))).await;
                    if !matches!(ping, Ok(Ok(()))) {
                        return Ending::lost("ping failed");
                    }
                }
                _ = sleep_until(refresh_at) => {
                    match self.send_update(&mut socket).await {
                        Ok(update) => pending_update = Some(update),
                        Err(ending) => return ending,
                    }
                }
            }
        }
    }

    /// When to renew the token without a server notice; far away while an update is pending.
    fn refresh_deadline(&self, update_pending: bool) -> Instant {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        if update_pending {
            return far;
        }
        let (Some(token), Ok(now)) = (self.token.as_ref(), unix_now()) else {
            return far;
        };
        let lead = self
            .config
            .token_refresh_lead
            .as_secs()
            .min(token_ttl(token) / 2);
        let refresh_at = token.expires_at.saturating_sub(lead);
        Instant::now() + Duration::from_secs(refresh_at.saturating_sub(now))
    }

    async fn send_update(&mut self, socket: &mut Socket) -> Result<(String, AccessToken), Ending> {
        let token = self
            .mint_fresh()
            .await
            .map_err(|e| Ending::Denied(format!("cannot mint a token: {e}")))?;
        let id = new_id();
        let mut header = Header::new(Method::Update, id.clone());
        header.token = Some(token.jwt().to_owned());
        self.write(socket, &Frame::new(header))
            .await
            .map_err(Ending::lost)?;
        tracing::info!(expires_at = token.expires_at, "twilsock token update sent");
        Ok((id, token))
    }

    fn update_reply(&mut self, frame: &Frame, token: AccessToken) -> Result<(), Ending> {
        let status = frame.header.status.clone().unwrap_or_default();
        if status.is_success() {
            bump(&self.stats.token_renewals);
            self.stats
                .token_expires_at
                .store(token.expires_at, Ordering::Relaxed);
            self.token = Some(token);
            return Ok(());
        }
        // A fresh init with a fresh token settles whether the credentials are still good.
        self.token = None;
        Err(Ending::lost(format!(
            "token update refused with {}",
            status.code
        )))
    }

    async fn send_request(
        &mut self,
        socket: &mut Socket,
        outgoing: Outgoing,
    ) -> Result<(), Ending> {
        let frame = Frame {
            header: *outgoing.header,
            payload: outgoing.payload,
        };
        match self.write(socket, &frame).await {
            Ok(()) => {
                self.in_flight.insert(outgoing.id, outgoing.reply);
                Ok(())
            }
            Err(reason) => {
                // Never reached the server, so it is safe to send again after reconnecting.
                self.queue.push_front(Outgoing {
                    id: outgoing.id,
                    header: Box::new(frame.header),
                    payload: frame.payload,
                    reply: outgoing.reply,
                });
                Err(Ending::lost(reason))
            }
        }
    }

    fn route_reply(&mut self, frame: Frame) {
        match self.in_flight.remove(&frame.header.id) {
            Some(reply) => {
                let _ = reply.send(Ok(frame));
            }
            None => tracing::debug!(id = %frame.header.id, "reply for no pending request"),
        }
    }

    /// Handles a non-reply server frame: ack it, then act on it.
    async fn server_frame(&mut self, socket: &mut Socket, frame: Frame) -> Result<(), Ending> {
        if frame.header.method == Method::Reply {
            self.route_reply(frame);
            return Ok(());
        }
        let ack = Frame::new(Header::ack(&frame.header.id));
        self.write(socket, &ack).await.map_err(Ending::lost)?;
        match frame.header.method {
            Method::Notification => {
                bump(&self.stats.notifications);
                let message_type = frame.header.message_type.clone().unwrap_or_default();
                match frame.json_payload() {
                    Ok(Some(payload)) => {
                        let _ = self.events.send(SessionEvent::Notification(Notification {
                            message_type,
                            payload,
                        }));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        bump(&self.stats.malformed_frames);
                        tracing::warn!(%error, %message_type, "notification payload is not JSON");
                    }
                }
                Ok(())
            }
            Method::Close => Err(self.close_frame(&frame)),
            _ => Ok(()),
        }
    }

    fn close_frame(&mut self, frame: &Frame) -> Ending {
        let status = frame.header.status.clone().unwrap_or_default();
        match status.code {
            410 => {
                self.token = None;
                Ending::Reconnect {
                    reason: "token expired (410)".into(),
                    floor: None,
                    eager: true,
                }
            }
            401 => Ending::Denied(format!("server closed with 401 {}", status.status)),
            308 => Ending::Reconnect {
                reason: "server offload (308)".into(),
                floor: backoff_floor(frame),
                eager: false,
            },
            code => Ending::Reconnect {
                reason: format!("server closed with {code} {}", status.status),
                floor: backoff_floor(frame),
                eager: false,
            },
        }
    }

    fn read_frame(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> ReadResult {
        match message {
            None => ReadResult::Lost("socket closed".into()),
            Some(Err(error)) => ReadResult::Lost(format!("socket error: {error}")),
            Some(Ok(Message::Close(close))) => ReadResult::Lost(match close {
                Some(close) => {
                    format!("websocket close {} {}", u16::from(close.code), close.reason)
                }
                None => "websocket close".into(),
            }),
            Some(Ok(Message::Binary(bytes))) => {
                bump(&self.stats.frames_in);
                match Frame::decode(&bytes) {
                    Ok(frame) => ReadResult::Frame(Box::new(frame)),
                    Err(error) => {
                        bump(&self.stats.malformed_frames);
                        tracing::warn!(%error, "malformed twilsock frame skipped");
                        ReadResult::Skip
                    }
                }
            }
            Some(Ok(Message::Text(_))) => {
                // The SDK drops text frames too; twilsock is binary only.
                bump(&self.stats.malformed_frames);
                ReadResult::Skip
            }
            Some(Ok(_)) => ReadResult::Skip,
        }
    }

    async fn write(&self, socket: &mut Socket, frame: &Frame) -> Result<(), String> {
        let bytes = frame.encode();
        match timeout(
            self.config.write_timeout,
            socket.send(Message::binary(bytes)),
        )
        .await
        {
            Ok(Ok(())) => {
                bump(&self.stats.frames_out);
                Ok(())
            }
            Ok(Err(error)) => Err(format!("write failed: {error}")),
            Err(_) => Err("write timed out".into()),
        }
    }
}

enum ReadResult {
    Frame(Box<Frame>),
    Skip,
    Lost(String),
}

fn token_ttl(token: &AccessToken) -> u64 {
    token.expires_at.saturating_sub(token.issued_at)
}

/// `backoff_policy.reconnect_min_ms` from a close or init-failure payload.
fn backoff_floor(frame: &Frame) -> Option<Duration> {
    let payload = frame.json_payload().ok().flatten()?;
    let policy = payload.get("backoff_policy").or_else(|| {
        payload
            .get("body")
            .and_then(|body| body.get("backoff_policy"))
    })?;
    policy
        .get("reconnect_min_ms")
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
}

/// Sleeps without holding anything; used by callers that need a cancellable pause.
pub async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::Status;
    use super::*;

    #[test]
    fn backoff_floor_reads_both_payload_shapes() {
        let mut header = Header::new(Method::Close, "x");
        header.status = Some(Status {
            code: 308,
            ..Default::default()
        });
        let frame = Frame::with_json(
            header.clone(),
            &json!({"backoff_policy": {"reconnect_min_ms": 1500}}),
        );
        assert_eq!(backoff_floor(&frame), Some(Duration::from_millis(1500)));
        let frame = Frame::with_json(
            header.clone(),
            &json!({"body": {"backoff_policy": {"reconnect_min_ms": 7}}}),
        );
        assert_eq!(backoff_floor(&frame), Some(Duration::from_millis(7)));
        assert_eq!(backoff_floor(&Frame::new(header)), None);
    }

    #[test]
    fn transport_state_serializes_for_readyz() {
        let state = TransportState::Disconnected {
            reason: "socket closed".into(),
        };
        assert_eq!(
            serde_json::to_value(state).unwrap(),
            json!({"state": "disconnected", "reason": "socket closed"})
        );
        assert_eq!(
            serde_json::to_value(TransportState::Connected).unwrap(),
            json!({"state": "connected"})
        );
    }
}
