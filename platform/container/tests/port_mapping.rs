//! Port mapping against the real kernel: a container's app port published on the host's
//! address, reached from another "host" (a network namespace this test makes, routed to the
//! host over a veth) and from the host itself, never from a container, and gone on detach and
//! after a crash.
//!
//! Needs root (CI runs as root) and fails saying so otherwise. Like `tests/net.rs`, each test
//! owns one bridge `hyt<n>` with subnet `10.254.<64+4n>.0/22` and one "other host" namespace
//! `hys<n>` at `10.254.<128+n>.0/24` (numbers 10 to 12 here, apart from that file's): every
//! address a test sends to is one of its own namespaces or interfaces. A guard removes all of it
//! on drop, so a failing test leaves nothing behind for the next.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] fns"
)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hydrant_container::net::{EgressRule, NetConfig, Network, Protocol};

#[path = "support/host.rs"]
mod host;

use host::{CONNECTS_WITHIN, Guard, at, in_netns, peer, table, unreachable};

/// The host ports this test's networks may publish.
const MAPPED: [u16; 2] = [47000, 47099];
/// The port apps listen on inside their containers.
const APP_PORT: u16 = 8080;

fn require_root() {
    host::require_root("port mapping");
}

fn config(n: u8) -> NetConfig {
    NetConfig {
        mapped_ports: Some(MAPPED),
        ..host::config(n)
    }
}

/// An app: a listener in `netns` on `port` that answers every connection with `name` and the
/// address it saw the connection come from.
struct App {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl App {
    fn start(netns: &Path, port: u16, name: &'static str) -> Self {
        let listener = in_netns(netns, || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind in netns")
        });
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = write!(conn, "{name} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the app at `to` answers, asked from `from` (the host when `None`).
fn ask(from: Option<&Path>, to: SocketAddr) -> Option<String> {
    let attempt = move || {
        let mut s = TcpStream::connect_timeout(&to, CONNECTS_WITHIN).ok()?;
        s.set_read_timeout(Some(CONNECTS_WITHIN)).ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    match from {
        Some(netns) => in_netns(netns, attempt),
        None => attempt(),
    }
}

/// Another host: the peer namespace `hys<n>` at `10.254.<128+n>.2`, linked to this host's
/// `10.254.<128+n>.1` (the address the host publishes ports on). Returns (its namespace path,
/// its address, the host's).
fn other_host(n: u8, guard: &Guard) -> (std::path::PathBuf, Ipv4Addr, Ipv4Addr) {
    let peer = peer(n, 1, guard);
    (peer.netns, peer.addrs[0], peer.host)
}

#[tokio::test]
async fn a_mapped_port_reaches_its_container_from_other_hosts_and_the_host_but_never_from_a_container()
 {
    require_root();
    let guard = Guard::new(10);
    let (remote, remote_ip, host_ip) = other_host(10, &guard);
    // The operator opens the whole network the other host lives on, so what still shuts a
    // container out of a mapped port below is the mapped-port rule, not the default denies.
    let mut config = config(10);
    config.rules = vec![EgressRule::allow(
        Protocol::Tcp,
        &format!("{remote_ip}/32"),
        None,
    )];
    let net = Network::setup(&config).await.unwrap();
    let mut a = net.attach("app-a/0", &[]).await.unwrap();
    let mut b = net.attach("app-b/0", &[]).await.unwrap();
    let app_a = App::start(&a.netns_path, APP_PORT, "a");
    let app_b = App::start(&b.netns_path, APP_PORT, "b");
    assert_eq!(app_a.addr.port(), APP_PORT);
    let mapped_a = net
        .map_port(&mut a, host_ip, 47010, APP_PORT)
        .await
        .unwrap();
    net.map_port(&mut b, host_ip, 47011, APP_PORT)
        .await
        .unwrap();
    assert_eq!(a.mapping, Some(mapped_a));
    let (port_a, port_b) = (at(host_ip, 47010), at(host_ip, 47011));

    // Another host's router reaches each app at the host's address, and the app sees the
    // router's own address (nothing is masqueraded on the way in).
    let started = Instant::now();
    assert_eq!(
        ask(Some(&remote), port_a).as_deref(),
        Some(format!("a {remote_ip}").as_str()),
        "from another host to a's mapped port"
    );
    let first_answer = started.elapsed();
    assert_eq!(
        ask(Some(&remote), port_b).as_deref(),
        Some(format!("b {remote_ip}").as_str())
    );
    // So does the host itself (health checks, a router beside the cell).
    assert_eq!(
        ask(None, port_a).as_deref(),
        Some(format!("a {host_ip}").as_str()),
        "from the host to a's mapped port"
    );
    // Nothing else of the host is published: an unmapped port in the range answers nothing.
    assert!(unreachable(Some(&remote), at(host_ip, 47012)));

    // A container never reaches a neighbour through its mapped port: not on its own host ...
    let from_b = Some(b.netns_path.as_path());
    assert!(
        unreachable(from_b, port_a),
        "b reached a through a's mapped port on their host"
    );
    // ... nor on another host (a listener in the range there stands in for another cell's
    // mapped port), while the same host on a port outside the range is open to it.
    let other_cell = App::start(&remote, 47050, "other cell");
    let outside = App::start(&remote, 5432, "service");
    assert_eq!(
        ask(from_b, at(remote_ip, outside.addr.port())).as_deref(),
        Some(format!("service {host_ip}").as_str()),
        "the allowed host outside the range (masqueraded behind the host)"
    );
    assert!(
        unreachable(from_b, at(remote_ip, other_cell.addr.port())),
        "b reached a mapped port on another host"
    );
    let drops = net.drop_counts().await.unwrap();
    assert!(
        drops
            .get("mapped port of an instance")
            .copied()
            .unwrap_or(0)
            > 0,
        "{drops:?}"
    );
    assert!(
        drops.get("container to host").copied().unwrap_or(0) > 0,
        "{drops:?}"
    );

    // A port is held by one container at a time.
    let mut c = net.attach("app-c/0", &[]).await.unwrap();
    let err = net
        .map_port(&mut c, host_ip, 47010, APP_PORT)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("47010 is already published"), "{err}");
    let err = net
        .map_port(&mut a, host_ip, 47013, APP_PORT)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already has host port 47010"), "{err}");

    // Detach takes the mapping with it, and the port can be published again, for another.
    net.detach(a).await.unwrap();
    assert!(
        !table(10).contains(&format!("{host_ip} . 47010")),
        "{}",
        table(10)
    );
    assert!(unreachable(Some(&remote), port_a), "a's port after detach");
    let app_c = App::start(&c.netns_path, APP_PORT, "c");
    net.map_port(&mut c, host_ip, 47010, APP_PORT)
        .await
        .unwrap();
    assert_eq!(
        ask(Some(&remote), port_a).as_deref(),
        Some(format!("c {remote_ip}").as_str()),
        "the freed port, mapped to c"
    );
    eprintln!("first answer through a mapped port from another host: {first_answer:?}");
    drop((app_a, app_b, app_c, other_cell, outside));
    net.detach(b).await.unwrap();
    net.detach(c).await.unwrap();
    net.teardown().await.unwrap();
}

#[tokio::test]
async fn mappings_left_by_a_crash_are_gone_after_the_next_setup() {
    require_root();
    let guard = Guard::new(11);
    let (remote, _, host_ip) = other_host(11, &guard);
    let net = Network::setup(&config(11)).await.unwrap();
    let mut a = net.attach("app/0", &[]).await.unwrap();
    let app = App::start(&a.netns_path, APP_PORT, "a");
    net.map_port(&mut a, host_ip, 47020, APP_PORT)
        .await
        .unwrap();
    assert!(ask(Some(&remote), at(host_ip, 47020)).is_some());
    // The platform is SIGKILLed: nothing is detached, nothing torn down.
    std::mem::forget(net);
    drop(a);
    drop(app);

    let net = Network::setup(&config(11)).await.unwrap();
    let rules = table(11);
    assert!(!rules.contains(" . 47020"), "a mapping survived: {rules}");
    // The port is free again in the new network.
    let mut b = net.attach("app/0", &[]).await.unwrap();
    let app = App::start(&b.netns_path, APP_PORT, "b");
    net.map_port(&mut b, host_ip, 47020, APP_PORT)
        .await
        .unwrap();
    assert!(
        ask(Some(&remote), at(host_ip, 47020)).is_some_and(|a| a.starts_with("b ")),
        "the port after a crash and a new setup"
    );
    drop(app);
    net.detach(b).await.unwrap();
    net.teardown().await.unwrap();
}

/// The bridge's MAC address as the kernel shows it.
fn bridge_mac(n: u8) -> String {
    std::fs::read_to_string(format!("/sys/class/net/hyt{n}/address"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_container_keeps_answering_while_others_come_and_go_on_its_bridge() {
    require_root();
    let _guard = Guard::new(12);
    let net = Network::setup(&config(12)).await.unwrap();
    let mac = bridge_mac(12);
    let first = net.attach("first/0", &[]).await.unwrap();
    let app = App::start(&first.netns_path, APP_PORT, "first");
    // The container learns the gateway's MAC answering this.
    let at_first = at(first.ip, APP_PORT);
    assert_eq!(
        ask(None, at_first).as_deref().map(|a| &a[..5]),
        Some("first")
    );
    // Veths join and leave. A bridge without a MAC of its own takes its lowest port's, which
    // would leave `first` replying to a stale gateway MAC for up to ~30 s.
    let mut others = Vec::new();
    for i in 0..8 {
        others.push(net.attach(&format!("other/{i}"), &[]).await.unwrap());
    }
    assert_eq!(
        bridge_mac(12),
        mac,
        "the bridge's MAC changed as veths joined"
    );
    for other in others {
        net.detach(other).await.unwrap();
    }
    assert_eq!(
        bridge_mac(12),
        mac,
        "the bridge's MAC changed as veths left"
    );
    let answered = {
        let attempt = move || {
            let mut s = TcpStream::connect_timeout(&at_first, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).ok()?;
            Some(answer)
        };
        attempt()
    };
    assert!(
        answered.is_some_and(|a| a.starts_with("first")),
        "the first container stopped answering the host after others came and went"
    );
    drop(app);
    net.detach(first).await.unwrap();
    net.teardown().await.unwrap();
}
