//! Wiring: builds the bus, outbox, publisher and connectors from [`Settings`], starts the HTTP
//! server and background tasks (outbox drain, the egress consumer over every connector's sink),
//! and shuts them down in order.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{dev::Server, web, App, HttpResponse, HttpServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    app_state::AppState,
    auth::BearerAuth,
    banner::ConnectorNotes,
    bus::Bus,
    configuration::Settings,
    connectors::{registry, Connector, ConnectorContext},
    egress::{self, sink::EgressSink},
    error::{json_config, ApiError},
    metrics::Metrics,
    openapi,
    outbox::Outbox,
    publisher::EventPublisher,
    routes,
    telemetry::request_log::RequestLog,
};

/// Builds a connector that is not in the registry (see [`Application::build_with_connectors`]).
pub type ConnectorFactory = Box<dyn FnOnce(&ConnectorContext) -> Arc<dyn Connector> + Send>;

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
        let publisher = EventPublisher::new(
            bus.clone(),
            outbox,
            settings.dedupe_ttl,
            settings.bus.confirm_timeout,
            metrics.clone(),
        );

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(
            publisher.clone().drain_outbox(shutdown.clone()),
        ));

        let context = ConnectorContext {
            settings: settings.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            operator_auth: BearerAuth::operator(&settings),
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
                sinks,
                &bus,
                &settings.bus,
                publisher.clone(),
                metrics.clone(),
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
        });

        let connectors_for_notes = connectors.clone();
        let server = HttpServer::new(move || {
            let mut app = App::new()
                .wrap(tracing_actix_web::TracingLogger::<RequestLog>::new())
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
                .route("/", web::get().to(routes::docs::home))
                .route(
                    "/swagger-ui",
                    web::get().to(routes::docs::swagger_ui_without_slash),
                )
                .service(
                    SwaggerUi::new(format!("{}{{_:.*}}", routes::docs::SWAGGER_UI))
                        .url(routes::docs::OPENAPI_JSON, api_doc.clone()),
                );
            for connector in &connectors {
                let connector = connector.clone();
                app = app.configure(move |config| connector.configure_routes(config));
            }
            app.default_service(web::to(|| async {
                HttpResponse::from_error(ApiError::NotFound)
            }))
        })
        .listen(listener)?
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .run();

        Ok(Self {
            port,
            connectors: connectors_for_notes,
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
        self.bus.close().await;
        tracing::info!("stopped");
        result
    }
}
