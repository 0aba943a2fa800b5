//! `hydrant logs` against an `https://` firehose edge: with `--ca-file` naming the CA that
//! issued the edge's certificate it follows the app's lines; without it (the system's roots,
//! which do not know that CA) it never connects and says it is the certificate.
//!
//! The edge serves TLS for `localhost` beside a micro cloud's pipeline (as a public edge with a
//! certificate does); the CLI reads its endpoints from a `HYDRANT_HOME` of its own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hydrant_emitter::Registry;
use hydrant_microcloud::{MicroCloud, Options};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

/// Each line the child writes to `stdout` (or `stderr`), as it comes.
fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    // Bounded: a reader that stops reading only stalls this thread.
    let (tx, rx) = mpsc::sync_channel(1024);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn logs(home: &std::path::Path, ca_file: Option<&std::path::Path>) -> Killed {
    let mut command = Command::new(BIN);
    command
        .env("HYDRANT_HOME", home)
        .env_remove("HYDRANT_CA_FILE")
        .args(["logs", "tls-app", "--utc"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ca) = ca_file {
        command.arg("--ca-file").arg(ca);
    }
    Killed(command.spawn().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydrant_logs_follows_an_https_edge_trusting_the_ca_it_is_given() {
    let shutdown = CancellationToken::new();
    let cloud = MicroCloud::start(Options::pipeline(), shutdown.clone())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let edge = cloud
        .public_edge(dir.path(), shutdown.clone())
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "firehose": format!("https://localhost:{}", edge.port),
        "agent": cloud.agent_url,
        "token": cloud.token,
    });
    std::fs::write(
        home.path().join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();

    // Without the CA: the system's roots do not know the edge's issuer.
    let mut untrusting = logs(home.path(), None);
    let errors = lines(untrusting.0.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = errors
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("hydrant logs never said why it cannot connect"));
        if line.contains("lost the log stream") {
            assert!(line.contains("certificate"), "{line}");
            break;
        }
    }
    drop(untrusting);

    // With --ca-file: the app's lines arrive over wss://.
    let mut following = logs(home.path(), Some(&edge.ca_file));
    let out = lines(following.0.stdout.take().unwrap());
    let emitter = cloud.emitter(&Registry::new("tls-app", "0"), shutdown.clone());
    // Sent until one arrives: until the stream is open and the edge has subscribed to the
    // doppler, nobody reads it.
    let deadline = Instant::now() + Duration::from_secs(60);
    'arrived: loop {
        emitter.log("tls-app", "0", "APP/PROC/WEB", b"hello over wss", false);
        emitter.flush();
        let wait_until = Instant::now() + Duration::from_millis(300);
        while let Ok(line) = out.recv_timeout(wait_until.saturating_duration_since(Instant::now()))
        {
            if line.contains("hello over wss") {
                break 'arrived;
            }
        }
        assert!(
            Instant::now() < deadline,
            "hydrant logs --ca-file showed no line from the https edge in 60 s"
        );
    }
    drop(following);

    shutdown.cancel();
    edge.stopped().await;
    tokio::time::timeout(Duration::from_secs(30), cloud.stopped())
        .await
        .expect("every role stops");
}
