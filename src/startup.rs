//! Wiring: builds the bus, outbox, publisher and connectors from [`Settings`], starts the HTTP
//! server and background tasks (outbox drain, the egress consumer over every connector's sink),
//! and shuts them down in order.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    dev::{Server, ServerHandle},
    web, App, HttpResponse, HttpServer,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa_swagger_ui::SwaggerUi;

use actix_web::middleware::from_fn;

use crate::{
    app_state::{AppState, StateBackend},
    auth::BearerAuth,
    banner::ConnectorNotes,
    bus::Bus,
    client_limit::{limit_per_client, ClientLimiter},
    configuration::Settings,
    connectors::{registry, Connector, ConnectorContext},
    egress::{self, engine::EngineConfig, ledger::SendLedger, sink::EgressSink, EgressSetup},
    error::{json_config, ApiError},
    metrics::Metrics,
    openapi,
    outbox::Outbox,
    publisher::EventPublisher,
    routes,
    state::{file::FileStore, memory::MemoryStore, redis::RedisStore, RateSlots, StateStore},
    telemetry::request_span::RequestSpan,
};

/// Builds a connector that is not in the registry (see [`Application::build_with_connectors`]).
pub type ConnectorFactory = Box<dyn FnOnce(&ConnectorContext) -> Arc<dyn Connector> + Send>;

/// How often expired entries of the state store are deleted.
const STATE_SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// How long start-up waits for a previous owner of `OUTBOX_DIR/state` to let go of it.
const STATE_LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// How long in-flight work may take to finish after a stop signal (Cloud Run allows 10 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

pub struct Application {
    port: u16,
    connectors: Vec<Arc<dyn Connector>>,
    server: Server,
    bus: Bus,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// Builds everything and binds the port (`PORT=0` picks a free one).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("0.0.0.0", settings.port))?;
        Self::build_with_listener(settings, listener).await
    }

    pub async fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        Self::build_with_connectors(settings, listener, Vec::new()).await
    }

    /// Like [`Self::build_with_listener`], serving `extra` connectors beside the registered
    /// ones (an embedding program's own platforms, or a test's).
    pub async fn build_with_connectors(
        settings: Settings,
        listener: TcpListener,
        extra: Vec<ConnectorFactory>,
    ) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        let settings = Arc::new(settings);
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();

        let outbox = Outbox::open(&settings.outbox_dir)
            .map_err(|e| anyhow::anyhow!("configuration error: OUTBOX_DIR: {e}"))?;
        if outbox.depth() > 0 {
            tracing::info!(depth = outbox.depth(), dir = %outbox.dir().display(), "outbox holds events from a previous run");
        }
        let bus = Bus::from_settings(&settings.bus);
        // With REDIS_URL every instance shares dedupe, ledger, opt-outs, joins and send rates.
        let redis = match &settings.redis {
            Some(redis) => Some(
                RedisStore::connect(redis, &metrics)
                    .await
                    .map_err(|e| anyhow::anyhow!("configuration error: REDIS_URL: {e}"))?,
            ),
            None => None,
        };
        let local_dedupe = || Arc::new(MemoryStore::bounded(settings.dedupe_capacity));
        let seen: Arc<dyn StateStore> = match &redis {
            Some(redis) => Arc::new(redis.clone()),
            None => local_dedupe(),
        };
        let mut publisher = EventPublisher::new(
            bus.clone(),
            outbox,
            seen,
            settings.dedupe_ttl,
            settings.bus.confirm_timeout,
            metrics.clone(),
        );
        let mut tasks = Vec::new();
        let (state, state_store): (Arc<dyn StateStore>, _) = match redis {
            Some(redis) => {
                publisher = publisher.with_local_dedupe(local_dedupe());
                tasks.push(tokio::spawn(redis.clone().watch(shutdown.clone())));
                (Arc::new(redis.clone()), StateBackend::Redis(redis))
            }
            None => {
                let files = FileStore::open_when_free(
                    settings.outbox_dir.join("state"),
                    STATE_LOCK_PATIENCE,
                )
                .await
                .map_err(|e| anyhow::anyhow!("configuration error: OUTBOX_DIR: {e}"))?;
                tasks.push(tokio::spawn(sweep_state(files.clone(), shutdown.clone())));
                (Arc::new(files.clone()), StateBackend::Journal(files))
            }
        };
        let ledger = SendLedger::new(state.clone());
        tasks.push(tokio::spawn(
            publisher.clone().drain_outbox(shutdown.clone()),
        ));

        let context = ConnectorContext {
            settings: settings.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            operator_auth: BearerAuth::operator(&settings),
            state,
            ledger: ledger.clone(),
            shutdown: shutdown.clone(),
        };
        let mut connectors = registry::build(&context)?;
        connectors.extend(extra.into_iter().map(|build| build(&context)));
        let sinks: Vec<Arc<dyn EgressSink>> =
            connectors.iter().filter_map(|c| c.egress_sink()).collect();
        let egress_consuming = if sinks.is_empty() {
            None
        } else {
            // Egress: bus → platforms, stopped by `shutdown` (see `crate::egress`).
            let (consuming, egress_task) = egress::start(
                EgressSetup {
                    sinks,
                    config: EngineConfig {
                        max_parts: settings.egress_max_parts,
                        rate_slots: state_store
                            .redis()
                            .map(|redis| Arc::new(redis.clone()) as Arc<dyn RateSlots>),
                        ..EngineConfig::default()
                    },
                    publisher: publisher.clone(),
                    ledger,
                    metrics: metrics.clone(),
                },
                &bus,
                &settings.bus,
                shutdown.clone(),
            );
            tasks.push(egress_task);
            Some(consuming)
        };

        let api_doc = openapi::document(connectors.iter().map(|c| c.as_ref()));
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            bus: bus.clone(),
            publisher,
            metrics,
            connectors: connectors.clone(),
            egress_consuming,
            debug_auth: BearerAuth::debug(&settings),
            state_store,
        });

        let limiter = web::Data::new(ClientLimiter::new(
            settings.max_requests_per_client,
            settings.trust_forwarded_headers,
            state.metrics.clone(),
        ));
        let routed = connectors.clone();
        let server = HttpServer::new(move || {
            let mut app = App::new()
                .wrap(from_fn(limit_per_client))
                .wrap(tracing_actix_web::TracingLogger::<RequestSpan>::new())
                .app_data(limiter.clone())
                .app_data(state.clone())
                .app_data(json_config())
                .route("/healthz", web::get().to(routes::health::healthz))
                .route("/livez", web::get().to(routes::health::livez))
                .route("/readyz", web::get().to(routes::health::readyz))
                .route("/metrics", web::get().to(routes::metrics::metrics))
                .route(
                    "/_debug/events",
                    web::get().to(routes::debug::recent_events),
                )
                .route(
                    routes::debug::SNAPSHOT_ROUTE,
                    web::get().to(routes::debug::connector_snapshot),
                )
                .configure(routes::event_contract::configure)
                .route("/", web::get().to(routes::docs::home))
                .route(
                    "/swagger-ui",
                    web::get().to(routes::docs::swagger_ui_without_slash),
                )
                .service(
                    SwaggerUi::new(format!("{}{{_:.*}}", routes::docs::SWAGGER_UI))
                        .url(routes::docs::OPENAPI_JSON, api_doc.clone()),
                );
            for connector in &routed {
                let connector = connector.clone();
                app = app.configure(move |config| connector.configure_routes(config));
            }
            app.default_service(web::to(|| async {
                HttpResponse::from_error(ApiError::NotFound)
            }))
        })
        // A request head must arrive within 5 s (the body has its own deadline,
        // BODY_READ_TIMEOUT_MS, in the routes that read one).
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(2))
        .listen(listener)?
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .run();

        Ok(Self {
            port,
            connectors,
            server,
            bus,
            shutdown,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connectors this instance serves.
    pub fn connector_names(&self) -> Vec<&'static str> {
        self.connectors.iter().map(|c| c.name()).collect()
    }

    /// What each connector wants the start-up banner to say.
    pub fn startup_notes(&self) -> Vec<ConnectorNotes> {
        self.connectors
            .iter()
            .map(|c| c.startup_notes(self.port))
            .collect()
    }

    /// Stops the HTTP server as SIGTERM would (`run_until_stopped` then finishes the
    /// background work); for embedding programs and tests.
    pub fn server_handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Cancelling this token stops the background work (egress consumer, outbox drainer) as a
    /// stop signal would; the HTTP server stops on SIGTERM/SIGINT.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGTERM/SIGINT (or until the server is stopped), then stops background
    /// tasks (the outbox gets a last drain) and closes the broker connection.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        tracing::info!("HTTP server stopped; finishing background work");
        self.shutdown.cancel();
        for task in self.tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                tracing::warn!("a background task did not stop in time");
            }
        }
        for connector in &self.connectors {
            if tokio::time::timeout(SHUTDOWN_GRACE, connector.stopped())
                .await
                .is_err()
            {
                tracing::warn!(
                    connector = connector.name(),
                    "a connector's background work did not stop in time"
                );
            }
        }
        self.bus.close().await;
        tracing::info!("stopped");
        result
    }
}

/// Deletes expired state entries now and then, so the directory does not grow without bound.
async fn sweep_state(state: FileStore, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(STATE_SWEEP_INTERVAL);
    every.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let removed = state.sweep().await;
                tracing::debug!(removed, "expired state entries deleted");
            }
        }
    }
}
