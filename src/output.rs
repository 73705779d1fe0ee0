//! What the command-line tools (`simulate`, `watch`) print: one line at a time on stdout, and an
//! error instead of a panic when the reader has gone away (`… | head`), which `main` turns into
//! a quiet, successful exit.

use std::io::Write;

/// Writes `text` and a newline to stdout and flushes it.
pub fn say(text: impl std::fmt::Display) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()
}

/// `body` as indented JSON when it is JSON, else as text.
pub fn pretty_json(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}
