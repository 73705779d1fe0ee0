//! `ingress-egress simulate sms` from a second shell: it agrees with the service through `.env`,
//! says which setting differs when the service refuses its signature, shows a repeated
//! MessageSid as a duplicate on both buses, and ends quietly when its reader goes away.

use std::{path::Path, process::Stdio};

use crate::{
    helpers::fixture_tokens,
    process::{command, run, text, PrivateBus, Service, Workdir},
    require_broker,
};

/// `simulate sms` in `dir` with exactly `vars`, against `service`.
fn simulate(
    dir: &Path,
    vars: &[(&str, &str)],
    service: &Service,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec!["simulate", "sms", "--url", service.address.as_str()];
    args.extend_from_slice(extra);
    let output = run(dir, vars, &args);
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        output.status.success(),
        format!("{}{stderr}", text(&output.stdout)),
    )
}

#[test]
fn a_second_shell_agrees_with_the_service_through_dot_env() {
    let dir = Workdir::new();
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "# shared by both shells\nTWILIO_AUTH_TOKEN=dot-env-token-42\nPUBLIC_BASE_URL=https://abc123.ngrok.app\nOUTBOX_DIR={}\n",
            dir.outbox().1
        ),
    )
    .unwrap();
    let service = Service::start(dir.path(), &[]);
    let (ok, output) = simulate(dir.path(), &[], &service, &["--body", "through .env"]);
    assert!(ok, "{output}");
    assert!(output.contains("-> 200 OK"), "{output}");
    assert!(
        output.contains("published on internal.ingress.v1:"),
        "{output}"
    );
    assert!(output.contains("\"text\": \"through .env\""), "{output}");
    assert!(!output.contains("dot-env-token-42"));
}

#[test]
fn on_403_simulate_names_the_setting_that_differs() {
    let dir = Workdir::new();
    let service = Service::start(
        dir.path(),
        &[
            ("TWILIO_AUTH_TOKEN", "service-shell-token"),
            ("PUBLIC_BASE_URL", "https://abc123.ngrok.app"),
            dir.outbox(),
        ],
    );
    // A fresh shell: neither variable is set there.
    let (ok, output) = simulate(dir.path(), &[], &service, &[]);
    assert!(!ok, "{output}");
    assert!(output.contains("-> 403 Forbidden"), "{output}");
    assert!(
        output
            .contains("TWILIO_AUTH_TOKEN differs: the service checks with a token of fingerprint"),
        "{output}"
    );
    assert!(
        output.contains("Set PUBLIC_BASE_URL=https://abc123.ngrok.app here."),
        "{output}"
    );
    assert!(!output.contains("service-shell-token"), "{output}");

    // Right token, wrong base URL: only the base URL is named.
    let (ok, output) = simulate(
        dir.path(),
        &[
            ("TWILIO_AUTH_TOKEN", "service-shell-token"),
            ("PUBLIC_BASE_URL", "https://old-tunnel.example"),
        ],
        &service,
        &[],
    );
    assert!(!ok);
    assert!(!output.contains("TWILIO_AUTH_TOKEN differs"), "{output}");
    assert!(output.contains("PUBLIC_BASE_URL differs: the service checks signatures against https://abc123.ngrok.app/webhooks/twilio/sms, while this shell signed for https://old-tunnel.example/webhooks/twilio/sms"), "{output}");
}

#[test]
fn a_repeated_message_sid_is_a_duplicate_on_the_embedded_bus() {
    let dir = Workdir::new();
    let vars = [dir.outbox()];
    let service = Service::start(dir.path(), &vars);
    let sid = ["--message-sid", "SM00000000000000000000000000000042"];
    let (ok, first) = simulate(dir.path(), &vars, &service, &sid);
    assert!(ok, "{first}");
    assert!(
        first.contains("published on internal.ingress.v1:"),
        "{first}"
    );
    let (ok, second) = simulate(dir.path(), &vars, &service, &sid);
    assert!(ok, "{second}");
    assert!(second.contains("-> 200 OK"), "{second}");
    assert!(
        second.contains("duplicate, not published again: SM00000000000000000000000000000042"),
        "{second}"
    );
    assert!(!second.contains("published on"), "{second}");
}

#[tokio::test]
async fn a_repeated_message_sid_is_a_duplicate_on_rabbitmq() {
    let url = require_broker!();
    let dir = Workdir::new();
    let bus = PrivateBus::new(&url);
    let tokens = fixture_tokens();
    let mut vars = bus.vars().to_vec();
    vars.extend([
        dir.outbox(),
        ("TWILIO_AUTH_TOKEN", tokens.primary_auth_token.as_str()),
    ]);
    let service = Service::start(dir.path(), &vars);
    service.wait_ready().await;
    let sid = ["--message-sid", "SM00000000000000000000000000000043"];
    let (ok, first) = simulate(dir.path(), &vars, &service, &sid);
    let (ok_again, second) = simulate(dir.path(), &vars, &service, &sid);
    drop(service);
    assert!(ok, "{first}");
    assert!(
        first.contains("published on internal.ingress.v1:"),
        "{first}"
    );
    assert!(ok_again, "{second}");
    assert!(
        second.contains("duplicate, not published again: SM00000000000000000000000000000043"),
        "{second}"
    );
    assert!(!second.contains("did not arrive"), "{second}");
}

#[test]
fn a_reader_that_goes_away_ends_simulate_quietly() {
    let dir = Workdir::new();
    let vars = [dir.outbox()];
    let service = Service::start(dir.path(), &vars);
    // As `simulate sms | head -0`: the pipe's reading end is closed before anything is written.
    let mut child = command(dir.path(), &vars)
        .args(["simulate", "sms", "--url", &service.address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn watch_prints_what_the_service_publishes_on_rabbitmq() {
    use std::io::{BufRead, BufReader, Read};

    let url = require_broker!();
    let dir = Workdir::new();
    let bus = PrivateBus::new(&url);
    let mut vars = bus.vars().to_vec();
    vars.push(dir.outbox());
    let service = Service::start(dir.path(), &vars);
    service.wait_ready().await;
    let mut watch = command(dir.path(), &vars)
        .args(["watch", "--count", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(
        first.starts_with(&format!(
            "watching internal.ingress.v1 on exchange {} of amqp://guest:***@",
            bus.exchange
        )),
        "{first}"
    );
    let (ok, output) = simulate(
        dir.path(),
        &vars,
        &service,
        &[
            "--message-sid",
            "SM00000000000000000000000000000044",
            "--body",
            "seen by watch",
        ],
    );
    assert!(ok, "{output}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = watch.wait().unwrap();
    drop(service);
    assert!(status.success(), "{rest}");
    assert!(
        rest.starts_with("internal.ingress.v1 twilio:SM00000000000000000000000000000044\n"),
        "{rest}"
    );
    assert!(rest.contains("\"text\": \"seen by watch\""), "{rest}");
}
