//! What the tests that drive the real `hydrant` binary share about its commands: a command's
//! whole output (stdout, then stderr), the assertion that it succeeded (showing that output
//! when it did not), its JSON, and polling a condition against a deadline instead of sleeping.
//!
//! Included by path (`#[path = "support/cli.rs"] mod cli;`) so a test binary takes only this and
//! not the multi-host network helpers beside it. Invariant: every helper fails the test with the
//! command's own words, never with a bare `unwrap` on its status.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::process::Output;
use std::time::{Duration, Instant};

/// stdout then stderr, as one string.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The output of a command that must have succeeded.
#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "command failed: {}", text(out));
    text(out)
}

/// The stdout of a command that must have succeeded, as JSON.
#[track_caller]
pub fn json(out: &Output) -> serde_json::Value {
    ok(out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `cond` every 50 ms until it holds; fails the test naming `what` after `timeout`.
#[track_caller]
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
