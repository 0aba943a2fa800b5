//! The demo app bound to a Redis service, as `hydrant bind-service demo cache` leaves it: the real
//! `hydrant demo-app` with a `VCAP_SERVICES` in Cloud Foundry's shape naming a real
//! `redis-server` (password and ACL user, as the broker's bindings have) counts each visit there,
//! and with the wrong password it says so in its answer instead of hanging or failing the page.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");
const DEADLINE: Duration = Duration::from_secs(15);

/// A child process killed on drop; the directory it worked in goes with it.
struct Killed(
    Child,
    #[allow(dead_code, reason = "kept until the process is gone")] Option<tempfile::TempDir>,
);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real redis-server with an ACL user `b1` (password `s3cret`), as a broker binding makes.
fn redis() -> (Killed, u16) {
    let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed: this test drives a real one. Run ./scripts/test \
                 (it installs the Debian package redis-server)"
            )
        });
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("redis.conf");
    // ACL users need a config file: on the command line the rule's spaces split it.
    std::fs::write(
        &config,
        format!(
            "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\n\
             dir {}\nuser default off\nuser b1 on >s3cret ~* &* +@all\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child, Some(dir));
    wait_for_port(port, "redis-server");
    (child, port)
}

fn demo_app(vcap: &str) -> (Killed, u16) {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["demo-app", "--port", &port.to_string()])
        .env("VCAP_SERVICES", vcap)
        .env("INSTANCE_INDEX", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child, None);
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    wait_for_port(port, "the demo app");
    (child, port)
}

fn get(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn vcap(port: u16, password: &str) -> String {
    serde_json::json!({
        "redis": [{
            "name": "cache",
            "label": "redis",
            "plan": "small",
            "tags": ["redis"],
            "credentials": {
                "host": "127.0.0.1",
                "hostname": "127.0.0.1",
                "port": port,
                "username": "b1",
                "password": password,
                "uri": format!("redis://b1:{password}@127.0.0.1:{port}"),
            }
        }]
    })
    .to_string()
}

#[test]
fn the_demo_app_counts_visits_in_its_bound_redis() {
    let (_redis, redis_port) = redis();
    let (_app, port) = demo_app(&vcap(redis_port, "s3cret"));
    let counts: Vec<String> = (0..3)
        .map(|_| {
            let page = get(port);
            page.lines()
                .find_map(|l| l.strip_prefix("visits counted in Redis service \"cache\": "))
                .unwrap_or_else(|| panic!("no visit count on the page:\n{page}"))
                .to_owned()
        })
        .collect();
    assert_eq!(counts, ["1", "2", "3"]);
}

#[test]
fn a_wrong_password_is_reported_on_the_page_not_hidden() {
    let (_redis, redis_port) = redis();
    let (_app, port) = demo_app(&vcap(redis_port, "wrong"));
    let page = get(port);
    assert!(
        page.contains("Redis service \"cache\": AUTH refused"),
        "{page}"
    );
    assert!(page.contains("Hello from the Hydrant demo app"), "{page}");
}
