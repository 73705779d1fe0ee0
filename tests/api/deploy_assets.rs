//! The dashboard and alert rules in `deploy/` name only metrics the service exports: every
//! `ingress_egress_*` name in their expressions is a family listed in `/metrics` (by its
//! `# TYPE` line, present from start-up even before a labelled family has series), histogram
//! series (`_bucket`, `_sum`, `_count`) of a histogram family.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use serde_json::Value;

use crate::{egress_support::IDENTITY, helpers::spawn_app};

fn deploy(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the Grafana dashboard.
fn dashboard_expressions() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&deploy("grafana/ingress-egress.json"))
        .expect("the dashboard is JSON");
    let mut out = Vec::new();
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard["panels"], &mut out);
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has queries",
            panel["title"]
        );
    }
    out
}

/// Every `expr` of the alerting rules.
fn rule_expressions() -> Vec<String> {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&deploy("prometheus/alerts.yaml")).expect("rules are YAML");
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            assert!(
                rule["alert"].as_str().is_some(),
                "alerting rules only: {rule:?}"
            );
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{rule:?} has a severity"
            );
            out.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    out
}

/// `ingress_egress_…` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut at = 0;
    while let Some(found) = expr[at..].find("ingress_egress_") {
        let start = at + found;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |n| start + n);
        if !preceded {
            names.insert(expr[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// Family name → type, from the `# TYPE` lines of `/metrics`.
fn exported_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let app = spawn_app(None, &[("TWILIO_IDENTITY", IDENTITY)]).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    let families = exported_families(&text);
    assert!(families.len() > 10, "{text}");

    let mut used = BTreeSet::new();
    for (source, exprs) in [
        (
            "deploy/grafana/ingress-egress.json",
            dashboard_expressions(),
        ),
        ("deploy/prometheus/alerts.yaml", rule_expressions()),
    ] {
        assert!(!exprs.is_empty(), "{source} has expressions");
        for expr in exprs {
            let names = metric_names(&expr);
            assert!(
                !names.is_empty(),
                "{source}: {expr} names no service metric"
            );
            for name in names {
                // Exported only with the socket transport on; tests/websocket checks them.
                if name.starts_with("ingress_egress_twilio_socket_") {
                    used.insert(name);
                    continue;
                }
                let exported = families.contains_key(&name)
                    || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                        name.strip_suffix(suffix)
                            .and_then(|family| families.get(family))
                            .is_some_and(|kind| kind == "histogram")
                    });
                assert!(
                    exported,
                    "{source}: {name} (in `{expr}`) is not exported at /metrics"
                );
                used.insert(name);
            }
        }
    }
    // The dashboard covers what the issue asks for.
    for wanted in [
        "ingress_egress_webhook_requests_total",
        "ingress_egress_bus_confirm_duration_seconds_bucket",
        "ingress_egress_outbox_depth",
        "ingress_egress_egress_sends_total",
        "ingress_egress_egress_events_total",
        "ingress_egress_egress_queue_depth",
        "ingress_egress_egress_lag_seconds_bucket",
        "ingress_egress_egress_rate_limit_wait_seconds_bucket",
        "ingress_egress_ready",
    ] {
        assert!(used.contains(wanted), "nothing shows {wanted}");
    }
}

#[test]
fn metric_names_are_read_from_expressions() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le) (rate(ingress_egress_webhook_duration_seconds_bucket{job=~"$job"}[5m]))) / my_ingress_egress_x"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ingress_egress_webhook_duration_seconds_bucket"]
    );
}
