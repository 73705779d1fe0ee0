//! Start-up refuses bad configuration with one line naming the variable, never its value and
//! never a panic, whatever bytes the environment holds.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, process::Command};

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingress-egress"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // Away from the repository, whose .env the binary would read.
        .current_dir(std::env::temp_dir());
    command
}

#[test]
fn a_variable_we_read_that_is_not_utf8_stops_start_up_naming_it() {
    let secret = b"tok\xffen-secret";
    let output = binary()
        .env("TWILIO_AUTH_TOKEN", OsStr::from_bytes(secret))
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        "configuration error: TWILIO_AUTH_TOKEN: is not valid UTF-8"
    );
    assert!(!stderr.contains("panicked"));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("en-secret"));
}

#[test]
fn someone_elses_variable_that_is_not_utf8_is_ignored() {
    // Start-up gets past the environment and stops at the next problem, a bad PORT.
    let output = binary()
        .env("SOME_TOOL_SETTING", OsStr::from_bytes(b"\xc3\x28 not text"))
        .env("PORT", "eighty")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("configuration error: PORT:"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
