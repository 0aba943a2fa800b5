//! What the tests that drive the real `hydrant` binary share: a running `hydrant up` ([`Up`],
//! in its own `HYDRANT_HOME` on ephemeral ports, ready once it has written `endpoints.json` and
//! `config.json`, stopped with SIGTERM when dropped so the executor stops its instances and
//! containers), a command's whole output (stdout, then stderr), the assertion that it succeeded,
//! its JSON, and polling a condition against a deadline instead of sleeping.
//!
//! Included by path (`#[path = "support/cli.rs"] mod cli;`) so a test binary takes only this and
//! not the multi-host network helpers beside it; each test file adds its own methods in an
//! `impl Up` block. Invariant: every helper fails the test with the command's own words, never
//! with a bare `unwrap` on its status, and a test that needs root says so before starting.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
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

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

/// A running `hydrant up`, stopped with SIGTERM when dropped.
pub struct Up {
    pub child: Child,
    pub home: tempfile::TempDir,
}

impl Up {
    /// `hydrant up --ephemeral-ports --data-dir HOME/data EXTRA` in `home` (an existing one
    /// keeps its data dir, as after a crash), waiting up to 90 s until it is ready.
    pub fn launch(home: tempfile::TempDir, extra: &[&str], stdout: Stdio, stderr: Stdio) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "hydrant up runs apps in real containers and needs root: run this test as root, as CI does"
        );
        // A file left by an earlier run would say "ready" before this one is.
        let _ = std::fs::remove_file(home.path().join("data/endpoints.json"));
        let child = Command::new(BIN)
            .args(["up", "--ephemeral-ports", "--data-dir"])
            .arg(home.path().join("data"))
            .args(extra)
            .env("HYDRANT_HOME", home.path())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let up = Self { child, home };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !(up.endpoints_path().exists() && up.home.path().join("config.json").exists()) {
            assert!(
                Instant::now() < deadline,
                "hydrant up did not come up within 90 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    }

    pub fn endpoints_path(&self) -> PathBuf {
        self.home.path().join("data/endpoints.json")
    }

    /// What `hydrant up` wrote to `endpoints.json`.
    pub fn endpoints(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.endpoints_path()).unwrap()).unwrap()
    }

    /// One URL of `endpoints.json`, e.g. `api` or `router`.
    pub fn endpoint(&self, name: &str) -> String {
        self.endpoints()[name].as_str().unwrap().to_owned()
    }

    /// Pushes the demo app ([`demo_app`]) as `name`, which must succeed; the directory pushed,
    /// for pushing it again.
    pub fn push_demo(&self, name: &str) -> tempfile::TempDir {
        let app = demo_app();
        ok(&self.cli(&["push", name, "-p", app.path().to_str().unwrap()]));
        app
    }

    /// `hydrant ARGS` as this micro cloud's admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("HYDRANT_HOME", self.home.path())
            .output()
            .unwrap()
    }
}

/// SIGTERM to `pid`, as an init system (or Ctrl-C) would send it.
pub fn term(pid: u32) {
    let pid = i32::try_from(pid).unwrap();
    assert!(pid > 1);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM first, so the executor stops its app instances and containers (they would
        // outlive a SIGKILLed parent); SIGKILL only if it hangs.
        if matches!(self.child.try_wait(), Ok(None)) {
            term(self.child.id());
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory to push as the demo app (the binary's own `demo-app`, by a Procfile).
pub fn demo_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Procfile"),
        "web: exec \"$HYDRANT_BIN\" demo-app\n",
    )
    .unwrap();
    dir
}

/// The containers `runc` knows under the executor of the micro cloud whose data directory is
/// `data`.
pub fn runc_containers(data: &std::path::Path) -> Vec<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(data.join("executor/containers/runc"))
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Each line `stream` yields, as it comes, through a channel holding at most `capacity` unread
/// lines: a test that stops reading only stalls the thread reading the stream.
pub fn lines(stream: impl std::io::Read + Send + 'static, capacity: usize) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child process killed (and reaped) when the test ends, whichever way.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
