//! A connector's own link and background work, seen by the core: `/readyz` reports the link
//! (503 while it is down), and stopping the service waits for the work the connector started
//! (the Conversations socket of the Twilio connector is one such; here a test-only connector
//! stands in, so the core is tested without any platform).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use actix_web::web;
use futures_util::future::BoxFuture;
use ingress_egress::{
    connectors::{Connector, ConnectorContext, LinkReadiness},
    egress::sink::EgressSink,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::helpers::spawn_app_with_connectors;

const BEACON: &str = "beacon";

struct BeaconConnector {
    up: Arc<AtomicBool>,
    work: Mutex<Option<JoinHandle<()>>>,
}

impl Connector for BeaconConnector {
    fn name(&self) -> &'static str {
        BEACON
    }

    fn configure_routes(&self, _config: &mut web::ServiceConfig) {}

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        utoipa::openapi::OpenApi::default()
    }

    fn egress_sink(&self) -> Option<Arc<dyn EgressSink>> {
        None
    }

    fn snapshot(&self) -> Value {
        json!({})
    }

    fn secrets(&self) -> Vec<&SecretString> {
        Vec::new()
    }

    fn readiness(&self) -> Option<LinkReadiness> {
        let up = self.up.load(Ordering::SeqCst);
        Some(LinkReadiness {
            ready: up,
            detail: json!({"link": "beacon", "up": up}),
        })
    }

    fn stopped(&self) -> BoxFuture<'static, ()> {
        let work = self.work.lock().unwrap().take();
        Box::pin(async move {
            if let Some(work) = work {
                let _ = work.await;
            }
        })
    }
}

async fn readyz(client: &reqwest::Client, address: &str) -> (u16, Value) {
    let response = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn readyz_reports_a_connectors_link_and_stopping_waits_for_its_work() {
    let up = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let (beacon_up, beacon_finished) = (up.clone(), finished.clone());
    let mut app = spawn_app_with_connectors(
        None,
        &[],
        vec![Box::new(move |context: &ConnectorContext| {
            let shutdown = context.shutdown.clone();
            // Work that needs a moment after the stop signal (a last write).
            let work = tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                beacon_finished.store(true, Ordering::SeqCst);
            });
            Arc::new(BeaconConnector {
                up: beacon_up,
                work: Mutex::new(Some(work)),
            }) as Arc<dyn Connector>
        })],
    )
    .await;

    let (status, body) = readyz(&app.client, &app.address).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["connectors"][BEACON],
        json!({"ready": false, "detail": {"link": "beacon", "up": false}})
    );
    up.store(true, Ordering::SeqCst);
    let (status, body) = readyz(&app.client, &app.address).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connectors"][BEACON]["ready"], true);

    app.stop().await;
    assert!(
        finished.load(Ordering::SeqCst),
        "the service stopped before the connector's work had finished"
    );
}
