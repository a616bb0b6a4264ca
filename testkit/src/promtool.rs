//! `promtool check metrics`: Prometheus' own parser and linter as the judge of a metrics
//! exposition. promtool comes from Debian's `prometheus` package; without it the test fails.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Fails the test unless `promtool check metrics` accepts `text`.
pub fn check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is required for this test (Debian package `prometheus`): {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
