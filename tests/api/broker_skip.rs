//! Without a broker, broker tests pass without running; the run says so where a person reads
//! it (not in the captured output of each test): a notice at the first skip and a count at the
//! end.

use std::process::Command;

/// A broker test that skips at once when no broker answers.
const BROKER_TEST: &str =
    "sms_webhook::a_twilio_retry_of_the_same_message_is_answered_but_published_once";

#[test]
fn skipped_broker_tests_are_reported_despite_output_capture() {
    // This very test binary, run again for one broker test, with a broker address nothing
    // listens on and without REQUIRE_AMQP.
    let output = Command::new(std::env::current_exe().unwrap())
        .args([BROKER_TEST, "--exact", "--test-threads=1"])
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env_remove("REQUIRE_AMQP")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(
        stderr.contains("RabbitMQ is not reachable at amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(stderr.contains("SKIPPED"), "{stderr}");
    assert!(
        stderr.contains("1 test was SKIPPED for want of RabbitMQ: 1"),
        "the count comes at the end: {stderr}"
    );

    // With REQUIRE_AMQP=1 the same test fails instead.
    let required = Command::new(std::env::current_exe().unwrap())
        .args([BROKER_TEST, "--exact", "--test-threads=1"])
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("REQUIRE_AMQP", "1")
        .output()
        .expect("the test binary runs");
    assert!(!required.status.success());
    assert!(String::from_utf8_lossy(&required.stdout)
        .contains("REQUIRE_AMQP=1 but RabbitMQ is not reachable"));
}
