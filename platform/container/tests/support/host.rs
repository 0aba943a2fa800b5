//! Host-network plumbing shared by the container crate's kernel tests (`net.rs` and
//! `port_mapping.rs`): the root check, shell helpers, the kernel's own lists, a guard that
//! removes a test's bridge and namespaces even when it panics, TCP probes from inside a
//! namespace, and a peer namespace standing in for another machine.
//!
//! Invariant: everything here is named after the test's own number `n` (bridge `hyt<n>`,
//! subnet `10.254.<64+4n>.0/22`, peer namespace `hys<n>` at `10.254.<128+n>.0/24`), so tests
//! running at the same time never touch each other's pieces, and every address a test sends to
//! is one of its own namespaces or interfaces.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "test helpers; each test file uses its part"
)]

use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hydrant_container::net::NetConfig;

/// How long a connection that must fail gets (a dropped SYN never answers).
pub const REFUSED_WITHIN: Duration = Duration::from_millis(800);
/// How long a connection that must succeed gets (veths on one host answer in microseconds).
pub const CONNECTS_WITHIN: Duration = Duration::from_secs(5);

/// Fails, naming the reason, unless running as root.
pub fn require_root(tests: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the {tests} tests create bridges, network namespaces and nftables tables: run them as \
         root (CI does)"
    );
}

/// Test `n`'s network: bridge `hyt<n>`, subnet `10.254.<64+4n>.0/22`.
pub fn config(n: u8) -> NetConfig {
    NetConfig {
        bridge: format!("hyt{n}"),
        subnet: format!("10.254.{}.0/22", 64 + u16::from(n) * 4),
        ..NetConfig::default()
    }
}

/// Runs a command to completion; panics with its stderr if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failure (for cleanup).
pub fn try_sh(program: &str, args: &[&str], stdin: Option<&str>) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut child) = child {
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(text.as_bytes());
        }
        drop(child.stdin.take());
        let _ = child.wait();
    }
}

pub fn netns_list() -> String {
    sh("ip", &["netns", "list"])
}
pub fn links() -> String {
    sh("ip", &["-o", "link", "show"])
}
pub fn ruleset() -> String {
    sh("nft", &["list", "ruleset"])
}
/// One bridge's `inet` table: what other tests running at the same time add is not in it.
pub fn table(n: u8) -> String {
    sh(
        "nft",
        &["list", "table", "inet", &format!("hydrant_hyt{n}")],
    )
}

/// Removes everything test `n` made (its bridge, its tables, its namespaces and links, its
/// peer `hys<n>`), synchronously, even when the test panicked.
pub struct Guard {
    bridge: String,
    peer: String,
}

impl Guard {
    pub fn new(n: u8) -> Self {
        let guard = Self {
            bridge: format!("hyt{n}"),
            peer: format!("hys{n}"),
        };
        // A previous run of this test that was killed may have left its pieces.
        guard.clean();
        guard
    }

    fn clean(&self) {
        let table = format!("hydrant_{}", self.bridge);
        let script = format!(
            "add table inet {table}\ndelete table inet {table}\n\
             add table bridge {table}\ndelete table bridge {table}\n"
        );
        try_sh("nft", &["-f", "-"], Some(&script));
        let prefix = format!("{}-", self.bridge);
        let owned = |name: &str| {
            name.starts_with(&prefix) || name == self.bridge || name.starts_with(&self.peer)
        };
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if owned(&name) {
                    try_sh("ip", &["netns", "del", &name], None);
                }
            }
        }
        let out = Command::new("ip").args(["-o", "link", "show"]).output();
        for line in out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or(name);
            if owned(name) {
                try_sh("ip", &["link", "del", name], None);
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Runs `f` on a thread inside the network namespace at `netns`: sockets it makes live there.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(netns).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// Whether a TCP handshake to `to` completes from inside `from` (the host when `None`).
pub fn connects(from: Option<&Path>, to: SocketAddr, within: Duration) -> bool {
    let attempt = move || TcpStream::connect_timeout(&to, within).is_ok();
    match from {
        Some(netns) => in_netns(netns, attempt),
        None => attempt(),
    }
}

pub fn reachable(from: Option<&Path>, to: SocketAddr) -> bool {
    connects(from, to, CONNECTS_WITHIN)
}

pub fn unreachable(from: Option<&Path>, to: SocketAddr) -> bool {
    !connects(from, to, REFUSED_WITHIN)
}

pub fn listen_in(netns: &Path, addr: SocketAddr) -> TcpListener {
    in_netns(netns, || TcpListener::bind(addr).expect("bind in netns"))
}

pub fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Runs `ip -n <netns> <args>`.
pub fn ip_in(netns: &str, args: &[&str]) {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    sh("ip", &all);
}

/// A namespace standing in for another machine: `hys<n>`, linked to this host by a veth pair
/// (host side `hys<n>h` at `10.254.<128+n>.1`, the namespace's `eth0` at `.2`, `.3`, ...),
/// with its default route through the host.
pub struct Peer {
    /// The namespace's name, `hys<n>`.
    pub name: String,
    /// Its path under `/run/netns`.
    pub netns: PathBuf,
    /// The host's address on the link.
    pub host: Ipv4Addr,
    /// The namespace's addresses, `.2` upwards.
    pub addrs: Vec<Ipv4Addr>,
}

/// Makes test `n`'s peer namespace with `count` addresses; `_guard` removes it.
pub fn peer(n: u8, count: u8, _guard: &Guard) -> Peer {
    let name = format!("hys{n}");
    let net = 128 + u16::from(n);
    let host = format!("10.254.{net}.1");
    let addrs: Vec<String> = (0..count)
        .map(|i| format!("10.254.{net}.{}", 2 + u16::from(i)))
        .collect();
    sh("ip", &["netns", "add", &name]);
    let veth = format!("{name}h");
    sh(
        "ip",
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ],
    );
    sh("ip", &["addr", "add", &format!("{host}/24"), "dev", &veth]);
    sh("ip", &["link", "set", &veth, "up"]);
    for addr in &addrs {
        ip_in(
            &name,
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        );
    }
    ip_in(&name, &["link", "set", "lo", "up"]);
    ip_in(&name, &["link", "set", "eth0", "up"]);
    ip_in(&name, &["route", "add", "default", "via", &host]);
    Peer {
        netns: Path::new("/run/netns").join(&name),
        name,
        host: host.parse().unwrap(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    }
}
