//! The egress consumer survives the broker dropping its connection: the connection is closed
//! from the broker side (`rabbitmqctl close_connection`), and an event published afterwards is
//! still delivered once the app has reconnected. Skips (loudly) where `rabbitmqctl` cannot
//! reach the broker.

use std::{process::Command, time::Duration};

use crate::{
    egress_support::{
        delete_queue, egress_app, fake_twilio, next_matching, reply_to, EgressPublisher,
    },
    fake_twilio::Route,
    require_broker,
};

/// Pids of the broker connections named `name`, or `None` when rabbitmqctl is unusable.
fn connections_named(name: &str) -> Option<Vec<String>> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains(&needle))
            .filter_map(|line| line.split('\t').next().map(str::to_owned))
            .collect(),
    )
}

#[tokio::test]
async fn the_consumer_comes_back_after_the_broker_closes_its_connection() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    let app = egress_app(&url, &fake, &[]).await;
    let mut status = app.tap("internal.egress.status.v1").await;
    let publisher = EgressPublisher::new(&app).await;

    let name = format!("ingress-egress/{}", app.settings.bus.instance_id);
    let pids = match connections_named(&name) {
        Some(pids) if !pids.is_empty() => pids,
        _ => {
            crate::helpers::report_skip(
                "rabbitmqctl",
                "rabbitmqctl cannot list the app's broker connection",
            );
            delete_queue(&url, &app.egress_queue).await;
            return;
        }
    };
    for pid in &pids {
        let closed = Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "egress reconnect test"])
            .status()
            .expect("rabbitmqctl runs");
        assert!(closed.success());
    }

    let event = reply_to("+14155550190", "after the broker came back");
    publisher.publish(&event).await;
    let id = event["correlationId"].as_str().unwrap().to_owned();
    let sent = next_matching(&mut status, |s| s["correlationId"] == id.as_str()).await;
    assert_eq!(sent["status"], "sent");
    assert_eq!(fake.requests_to(Route::Messages).len(), 1);
    // The app is ready again (broker and consumer up), on a new connection.
    app.wait_ready(Duration::from_secs(15)).await;
    let now = connections_named(&name).expect("rabbitmqctl still works");
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(
        !pids.contains(&now[0]),
        "a new connection replaced the closed one"
    );
    fake.assert_no_violations();
    delete_queue(&url, &app.egress_queue).await;
}
