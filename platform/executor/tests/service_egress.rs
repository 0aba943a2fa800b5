//! A bound service is reachable from the app's container, and only from there: a real
//! `redis-server` on the cell's bridge address (where the micro cloud's broker puts its service
//! nodes), one contained app whose start message carries the binding's endpoint, and one that
//! does not. Needs root (runc, cgroups, a bridge and nftables); without it the test fails and
//! says so. Needs `redis-server` (Debian package `redis-server`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "support/rig.rs"]
mod rig;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hydrant_bus::messages::{InstanceState, ServiceEgress, StartInstance};
use hydrant_testkit::wait_for;
use rig::{Rig, droplet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "binding-secret";

/// An app that, on each request, counts a visit in the Redis at `?redis=HOST:PORT` and answers
/// `reached: ` and whatever the server replied once connected, or `blocked: <error>` when it
/// cannot connect (2 s deadline; a dropped SYN is a `TimeoutError`).
const APP: &str = r#"
import socket, urllib.parse, http.server

class Visit(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        host, port = query["redis"][0].rsplit(":", 1)
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
        except Exception as error:
            body = "blocked: " + type(error).__name__
        else:
            data = b""
            try:
                s.settimeout(2)
                s.sendall(b"AUTH " + query["password"][0].encode() + b"\r\nINCR visits\r\n")
                while data.count(b"\r\n") < 2:
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    data += chunk
            except Exception:
                pass
            s.close()
            body = "reached: " + data.decode()
        body = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Visit).serve_forever()
"#;

/// Starts `start` and returns the `ip:port` its route registration names.
async fn run(rig: &mut Rig, start: &StartInstance) -> String {
    assert!(rig.request_start(start).await.accepted);
    rig.wait_state(&start.instance, InstanceState::Running, WAIT)
        .await;
    let route = rig.registration(&start.instance, WAIT).await;
    format!("{}:{}", route.host, route.port)
}

async fn visit(app: &str, redis: &str) -> String {
    let page = reqwest::get(format!("http://{app}/?redis={redis}&password={PASSWORD}"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    page.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_bound_app_reaches_its_service_on_the_bridge() {
    rig::require_root(
        "this test runs real containers on a bridge with nftables rules and needs root",
    );
    let mut subnet = String::new();
    let mut rig = Rig::start("executor-service-egress", true, |c| {
        subnet = c.network.subnet.clone();
    })
    .await;
    let gateway = {
        let base: Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
        Ipv4Addr::from(u32::from(base) + 1)
    };

    // The service node, on the bridge's address as the micro cloud's broker runs it.
    let port = std::net::TcpListener::bind(SocketAddr::from((gateway, 0)))
        .expect("the executor made its bridge before it answered")
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let _redis = tokio::process::Command::new("redis-server")
        .args(["--bind", &gateway.to_string(), "--port", &port.to_string()])
        .args([
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server runs (Debian package redis-server)");
    let redis = format!("{gateway}:{port}");
    wait_for(WAIT, "redis-server listening on the bridge", || {
        let redis = redis.clone();
        async move { tokio::net::TcpStream::connect(&redis).await.is_ok() }
    })
    .await;

    let (url, sha) = rig.droplets.put("visit", droplet(&[("visit.py", APP)]));
    let mut bound = rig.start_message("exec python3 visit.py", &url, &sha);
    bound.egress = vec![ServiceEgress {
        service: "cache".into(),
        host: gateway.to_string(),
        port: port.into(),
    }];
    let mut unbound = rig.start_message("exec python3 visit.py", &url, &sha);
    unbound.app = "unbound-app".into();
    let bound_at = run(&mut rig, &bound).await;
    let unbound_at = run(&mut rig, &unbound).await;

    // The bound app reaches its service, and its writes land there.
    assert_eq!(visit(&bound_at, &redis).await, "reached: +OK\r\n:1\r\n");
    assert_eq!(visit(&bound_at, &redis).await, "reached: +OK\r\n:2\r\n");
    // The app beside it, on the same bridge, gets nowhere near the same host:port.
    assert_eq!(visit(&unbound_at, &redis).await, "blocked: TimeoutError");
    // The binding opened that one port, not the host: another listener on the same address
    // (which would accept anyone it is let to) stays out of reach.
    let other = std::net::TcpListener::bind(SocketAddr::from((gateway, 0))).unwrap();
    let other = other.local_addr().unwrap().to_string();
    assert_eq!(visit(&bound_at, &other).await, "blocked: TimeoutError");
    // Nothing was counted but the bound app's two visits.
    let mut admin = tokio::net::TcpStream::connect(&redis).await.unwrap();
    let mut reply = [0u8; 32];
    admin
        .write_all(format!("AUTH {PASSWORD}\r\nGET visits\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"2\r\n") && got.len() < 20 {
        let n = tokio::time::timeout(WAIT, admin.read(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(n, 0, "redis closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&reply[..n]);
    }
    assert_eq!(got, b"+OK\r\n$1\r\n2\r\n");
    rig.stop().await;
}
