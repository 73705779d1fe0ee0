//! The binary as a newcomer meets it: `--help`, a configuration mistake, the start-up banner (on
//! a terminal and as a log line), quiet logs on a healthy start, and the warning a signature
//! mismatch leaves.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;

use crate::{
    helpers::fixture_tokens,
    process::{die_with_the_test, run, text, PrivateBus, Service, Workdir},
    require_broker,
};

#[test]
fn help_says_where_the_configuration_comes_from() {
    let dir = Workdir::new();
    for args in [&["--help"][..], &["simulate", "--help"]] {
        let output = run(dir.path(), &[], args);
        assert!(output.status.success(), "{args:?}");
        let help = text(&output.stdout);
        assert!(help.contains("environment variables"), "{args:?}: {help}");
        assert!(help.contains(".env.example"), "{args:?}: {help}");
    }
}

#[test]
fn a_public_base_url_with_a_path_stops_start_up_with_one_line() {
    let dir = Workdir::new();
    for (value, says) in [
        (
            "https://abc123.ngrok.app/webhooks/twilio/sms",
            "without the path \"/webhooks/twilio/sms\"",
        ),
        ("https://abc123.ngrok.app/", "must not end with '/'"),
        ("https://abc123.ngrok.app?a=b", "query string"),
    ] {
        let output = run(
            dir.path(),
            &[("PUBLIC_BASE_URL", value), ("PORT", "0")],
            &["serve"],
        );
        assert_eq!(output.status.code(), Some(2), "{value}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("configuration error: PUBLIC_BASE_URL: "),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
        assert!(
            stderr.trim_end().ends_with("use https://abc123.ngrok.app"),
            "{stderr}"
        );
        assert!(text(&output.stdout).is_empty());
    }
}

#[tokio::test]
async fn off_a_terminal_the_banner_is_one_log_line_and_client_mistakes_are_not_warnings() {
    let dir = Workdir::new();
    let service = Service::start(
        dir.path(),
        &[
            ("PUBLIC_BASE_URL", "https://abc123.ngrok.app"),
            dir.outbox(),
        ],
    );
    let started = service
        .log()
        .into_iter()
        .find(|line| line["message"] == "ingress-egress listening")
        .unwrap();
    assert_eq!(
        started["swagger_ui"],
        format!("{}/swagger-ui/", service.address)
    );
    assert!(started["bus"]
        .as_str()
        .unwrap()
        .starts_with("embedded in-memory bus"));
    assert!(started["config"].as_str().unwrap().contains("no .env here"));
    let connectors: Value = serde_json::from_str(started["connectors"].as_str().unwrap()).unwrap();
    let twilio = &connectors[0];
    assert_eq!(twilio["connector"], "twilio");
    assert_eq!(
        twilio["transport"],
        "webhooks in, replies through the REST API"
    );
    assert_eq!(
        twilio["configure"][0]["url"],
        "https://abc123.ngrok.app/webhooks/twilio/sms#rc=3&rp=all&ct=1000&rt=2750&tt=15000"
    );
    let missing = twilio["missing"].to_string();
    for setting in [
        "TWILIO_AUTH_TOKEN is not set",
        "TWILIO_ACCOUNT_SID is not set",
        "TWILIO_PHONE_NUMBER (or TWILIO_MESSAGING_SERVICE_SID) is not set",
        "TWILIO_IDENTITY is not set",
    ] {
        assert!(missing.contains(setting), "{setting}: {missing}");
    }

    // A newcomer's first clicks: the root and Swagger UI without its slash.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, status) in [("/", 307), ("/swagger-ui", 308)] {
        let response = client
            .get(format!("{}{path}", service.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(response.headers()["location"], "/swagger-ui/", "{path}");
    }
    let missing = client
        .get(format!("{}/nothing-here", service.address))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let mut service = service;
    let refused = service.wait_for_log(|line| line["path"] == "/nothing-here");
    assert_eq!(refused["severity"], "INFO", "{refused}");
    assert_eq!(refused["status"], 404);
    assert!(refused["request_id"].is_string(), "{refused}");
    let loud: Vec<_> = service
        .log()
        .into_iter()
        .filter(|line| matches!(line["severity"].as_str(), Some("WARNING" | "ERROR")))
        .filter(|line| {
            !line["message"]
                .as_str()
                .unwrap()
                .contains("DEVELOPMENT token")
        })
        .collect();
    assert!(loud.is_empty(), "{loud:?}");
}

#[test]
fn on_a_terminal_the_banner_says_where_to_go_and_what_is_missing() {
    // `script` runs the service on a pseudo-terminal, as an interactive shell would.
    let dir = Workdir::new();
    let shell_command = format!("exec {}", crate::process::binary().display());
    let mut script = std::process::Command::new("script");
    die_with_the_test(&mut script);
    let mut child = script
        .args(["-q", "-e", "-c", &shell_command, "/dev/null"])
        .env_clear()
        .envs([
            ("PORT", "0"),
            dir.outbox(),
            ("TWILIO_AUTH_TOKEN", "terminal-banner-token"),
            ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000001"),
            ("TWILIO_PHONE_NUMBER", "+15005550006"),
        ])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) from util-linux runs");
    // Held open: script ends the session when its input ends.
    let _stdin = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    while let Ok(line) = receiver.recv_timeout(Duration::from_secs(30)) {
        let done = line.contains("try it from another shell");
        banner.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let banner = banner.join("\n");
    for expected in [
        "ingress-egress ",
        " listening on http://127.0.0.1:",
        "Swagger UI  http://127.0.0.1:",
        "bus         embedded in-memory bus",
        "twilio (transport: webhooks in, replies through the REST API)",
        "not configured yet:",
        "PUBLIC_BASE_URL is not set, so Twilio cannot reach this machine",
        "ngrok http ",
        "TWILIO_IDENTITY is not set",
        "try it from another shell: `cargo run -- simulate sms`",
    ] {
        assert!(
            banner.contains(expected),
            "{expected:?} missing from:\n{banner}"
        );
    }
    assert!(!banner.contains("TWILIO_PHONE_NUMBER (or"), "{banner}");
    assert!(!banner.contains("terminal-banner-token"), "{banner}");
    assert!(
        !banner.contains("\"severity\""),
        "not a JSON log line:\n{banner}"
    );
}

#[tokio::test]
async fn a_healthy_start_against_rabbitmq_logs_no_warning_or_error() {
    let url = require_broker!();
    let dir = Workdir::new();
    let bus = PrivateBus::new(&url);
    let tokens = fixture_tokens();
    let mut vars = bus.vars().to_vec();
    vars.extend([
        dir.outbox(),
        ("TWILIO_AUTH_TOKEN", tokens.primary_auth_token.as_str()),
        ("TWILIO_ACCOUNT_SID", tokens.account_sid.as_str()),
    ]);
    let service = Service::start(dir.path(), &vars);
    service.wait_ready().await;
    let mut service = service;
    service.wait_for_log(|line| line["message"] == "consuming");
    let loud: Vec<_> = service
        .log()
        .into_iter()
        .filter(|line| matches!(line["severity"].as_str(), Some("WARNING" | "ERROR")))
        .collect();
    assert!(loud.is_empty(), "a healthy start logged {loud:#?}");
}

#[tokio::test]
async fn a_signature_mismatch_warns_with_the_checked_url_and_no_secret() {
    let dir = Workdir::new();
    let token = "mismatch-test-auth-token";
    let mut service = Service::start(
        dir.path(),
        &[
            ("PUBLIC_BASE_URL", "https://abc123.ngrok.app"),
            ("TWILIO_AUTH_TOKEN", token),
            dir.outbox(),
        ],
    );
    let signature = "c2lnbmF0dXJlLXRoYXQtZG9lcy1ub3QtbWF0Y2g=";
    let response = reqwest::Client::new()
        .post(format!(
            "{}/webhooks/twilio/sms?correlation=private-query",
            service.address
        ))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body("MessageSid=SM0123456789abcdef0123456789abcdef&Body=hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let warning = service.wait_for_log(|line| line["checked_url"].is_string());
    assert_eq!(warning["severity"], "WARNING");
    assert_eq!(
        warning["checked_url"],
        "https://abc123.ngrok.app/webhooks/twilio/sms"
    );
    assert_eq!(warning["base"], "PUBLIC_BASE_URL");
    let log = service.lines().join("\n");
    for secret in [token, signature, "private-query", "hello"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
