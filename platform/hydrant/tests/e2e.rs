//! End to end through the real `hydrant` binary: `hydrant up` starts the micro cloud, then the CLI
//! sends log lines with `hydrant emit` and reads them back with `hydrant logs` — the path a
//! developer takes on day one, over real sockets between real roles.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

struct Up {
    child: Child,
    home: tempfile::TempDir,
}

impl Up {
    fn start() -> Self {
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(BIN)
            .args(["up", "--ephemeral-ports", "--data-dir"])
            .arg(home.path().join("data"))
            .env("HYDRANT_HOME", home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let up = Self { child, home };
        wait_for(Duration::from_secs(60), "endpoints.json", || {
            up.endpoints_path().exists() && up.home.path().join("config.json").exists()
        });
        up
    }

    fn endpoints_path(&self) -> PathBuf {
        self.home.path().join("data/endpoints.json")
    }

    fn endpoints(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.endpoints_path()).unwrap()).unwrap()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("HYDRANT_HOME", self.home.path())
            .output()
            .unwrap()
    }

    fn cli_spawn(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .args(args)
            .env("HYDRANT_HOME", self.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SIGTERM, as an init system would send; Ctrl-C takes the same path.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hydrant up did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::sync_channel(10_000);
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn http_status(base: &str, path: &str, token: Option<&str>) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn is_cf_line(line: &str, index: &str, stream: &str) -> bool {
    // "   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/0] OUT message"
    line.starts_with("   ") && line.contains(&format!("[APP/PROC/WEB/{index}] {stream} "))
}

#[test]
fn up_emit_logs_recent_and_follow() {
    let up = Up::start();
    let endpoints = up.endpoints();
    let firehose = endpoints["firehose"].as_str().unwrap().to_owned();
    assert!(endpoints["token"].as_str().unwrap().len() > 20);

    // Every role answers its health check.
    for (role, url) in endpoints["admin"].as_object().unwrap() {
        assert_eq!(
            http_status(url.as_str().unwrap(), "/healthz", None),
            200,
            "{role} /healthz"
        );
    }
    // The firehose needs a token.
    assert_eq!(http_status(&firehose, "/api/v1/read/e2e-app", None), 401);
    assert_eq!(
        http_status(&firehose, "/api/v1/read/e2e-app", Some("not-a-token")),
        401
    );

    // A payload with an escape sequence and a bell: it must reach the terminal escaped.
    let out = up.cli(&[
        "emit",
        "e2e-app",
        "--message",
        "hello \u{1b}[2Jworld\u{7}",
        "--count",
        "3",
    ]);
    assert!(
        out.status.success(),
        "emit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut recent = String::new();
    wait_for(Duration::from_secs(20), "3 recent lines", || {
        let out = up.cli(&["logs", "e2e-app", "--recent"]);
        recent = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && recent.lines().filter(|l| l.contains("hello")).count() == 3
    });
    let lines: Vec<&str> = recent.lines().filter(|l| l.contains("hello")).collect();
    for (i, line) in lines.iter().enumerate() {
        assert!(
            is_cf_line(line, "0", "OUT"),
            "not Cloud Foundry's format: {line:?}"
        );
        assert!(
            line.ends_with(&format!("{}", i + 1)),
            "recent lines not oldest first: {lines:?}"
        );
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{7}'),
            "raw control bytes: {line:?}"
        );
        assert!(
            line.contains("\\e[2J"),
            "escape sequence not shown escaped: {line:?}"
        );
    }

    // --json gives one protojson object per line.
    let out = up.cli(&["logs", "e2e-app", "--recent", "--json"]);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["source_id"], "e2e-app");
    assert_eq!(first["tags"]["source_type"], "APP/PROC/WEB");

    // Follow: the recent lines first, then new ones, each exactly once.
    let mut follow = up.cli_spawn(&["logs", "e2e-app"]);
    let rx = stdout_lines(&mut follow);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen
        .iter()
        .filter(|l: &&String| l.contains("hello"))
        .count()
        < 3
    {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap();
        seen.push(line);
    }
    let out = up.cli(&[
        "emit",
        "e2e-app",
        "--message",
        "live",
        "--count",
        "5",
        "--err",
        "--instance",
        "1",
    ]);
    assert!(out.status.success());
    while seen.iter().filter(|l| l.contains("live")).count() < 5 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("live lines did not arrive; saw {seen:?}"));
        seen.push(line);
    }
    let _ = follow.kill();
    let live: Vec<&String> = seen.iter().filter(|l| l.contains("live")).collect();
    assert_eq!(live.len(), 5);
    assert!(live.iter().all(|l| is_cf_line(l, "1", "ERR")), "{live:?}");
    assert_eq!(
        seen.iter().filter(|l| l.contains("hello")).count(),
        3,
        "duplicates: {seen:?}"
    );

    // Unknown command input gets a clear error and a failing exit code.
    let out = up.cli(&["emit", "e2e-app", "--message", "x", "--count", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--count"));

    assert!(up.stop().success(), "hydrant up did not exit cleanly");
}

#[test]
fn commands_without_a_running_cloud_say_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["logs", "some-app", "--recent"])
        .env("HYDRANT_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hydrant up"), "unhelpful error: {err}");
    let _ = Path::new(".");
}
