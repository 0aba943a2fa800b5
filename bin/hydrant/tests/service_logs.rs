//! `hydrant logs INSTANCE` outlives its log token, through the real binary against a real
//! `hydrant up` whose log tokens live a few seconds (`--log-token-ttl-secs`, hidden): the
//! firehose edge closes the stream when the instance's token expires, and the CLI mints a new
//! one for the instance and carries on, as an app's stream does. Without the renewal the
//! command ends with "token expired" after the first lifetime (ten minutes by default).
//!
//! Runs without root (`--isolation none`): a user-provided instance is a source like a managed
//! one, and `hydrant emit` writes its lines as the broker writes a node's `SVC` lines.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "support/cli.rs"]
mod cli;

use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli::{Killed, ok};
use hydrant_testkit::MicroCloud;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

/// The controller's log token lifetime in this test.
const TTL_SECS: u64 = 4;

/// Emits `line` for `guid` every half second until a stdout line of the follower holds it,
/// or fails after `within`.
fn emit_until_seen(
    cloud: &MicroCloud,
    guid: &str,
    line: &str,
    lines: &mpsc::Receiver<String>,
    follower: &mut Killed,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        ok(&cloud.cli(&["emit", guid, "--message", line, "--source-type", "SVC"]));
        let next = Instant::now() + Duration::from_millis(500);
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(seen) if seen.contains(line) => return,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = follower.0.wait().unwrap();
                    panic!("`hydrant logs` ended ({status}) before {line:?} arrived");
                }
            }
        }
        if let Some(status) = follower.0.try_wait().unwrap() {
            panic!("`hydrant logs` ended ({status}) before {line:?} arrived");
        }
        assert!(
            Instant::now() < deadline,
            "{line:?} did not reach `hydrant logs` within {within:?}"
        );
    }
}

#[test]
fn a_service_instance_log_stream_outlives_its_log_token() {
    let ttl = TTL_SECS.to_string();
    let cloud = MicroCloud::start(
        BIN,
        &["--isolation", "none", "--log-token-ttl-secs", ttl.as_str()],
    );
    ok(&cloud.cli(&[
        "create-user-provided-service",
        "ledger",
        "-p",
        r#"{"uri": "kv://ledger.example:1"}"#,
    ]));
    let guid = ok(&cloud.cli(&["service", "ledger", "--guid"]))
        .trim()
        .to_owned();
    assert_eq!(guid.len(), 36, "a guid: {guid:?}");

    let child = cloud
        .command(&["logs", "ledger"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut follower = Killed(child);
    let lines = cli::lines(follower.0.stdout.take().unwrap(), 1024);
    let started = Instant::now();
    emit_until_seen(
        &cloud,
        &guid,
        "first lifetime",
        &lines,
        &mut follower,
        Duration::from_secs(60),
    );
    // Past two lifetimes of the first token, so at least one expiry close has happened and
    // the renewed token is in use (the edge closes at `exp`; the clock is the condition here).
    let expired = started + Duration::from_secs(2 * TTL_SECS + 1);
    while Instant::now() < expired {
        if let Some(status) = follower.0.try_wait().unwrap() {
            panic!("`hydrant logs` ended ({status}) when its log token expired");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    emit_until_seen(
        &cloud,
        &guid,
        "after renewal",
        &lines,
        &mut follower,
        Duration::from_secs(30),
    );
    assert!(
        follower.0.try_wait().unwrap().is_none(),
        "`hydrant logs` still follows the instance"
    );
}
