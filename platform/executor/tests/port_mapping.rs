//! A contained instance on a cell that advertises a routable address is reached at that
//! address and a host port from the cell's `port_range`: its route names `advertise_host:port`,
//! its health check passes through the mapping, and another host (a network namespace the test
//! makes, linked to this host by a veth) gets the app's answer there. The port is the
//! instance's alone and goes back to the range when it stops; a cell whose range is used up
//! refuses a start and says why.
//!
//! Needs root (runc, cgroups, a bridge, namespaces and nftables); without it the test fails
//! and says so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "support/rig.rs"]
mod rig;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hydrant_bus::messages::InstanceState;
use hydrant_testkit::wait_for;
use rig::{Rig, droplet};

const WAIT: Duration = Duration::from_secs(15);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Another host: a namespace linked to this one by a veth pair in a /24 of `10.251.0.0/16` that
/// no interface here holds; removed on drop.
struct OtherHost {
    name: String,
    netns: PathBuf,
    /// This host's address on the link (what the cell advertises).
    host: String,
    /// The other host's address.
    other: String,
}

impl OtherHost {
    fn new() -> Self {
        let name = format!("hxm{:x}", std::process::id());
        let taken = ip(&["-4", "-o", "addr", "show"]);
        let third = (0..1000)
            .map(|_| fastrand::u8(..))
            .find(|t| !taken.contains(&format!(" 10.251.{t}.")))
            .expect("every /24 of 10.251.0.0/16 is in use on this host: free one");
        let made = Self {
            netns: Path::new("/run/netns").join(&name),
            host: format!("10.251.{third}.1"),
            other: format!("10.251.{third}.2"),
            name,
        };
        made.remove();
        let veth = format!("{}h", made.name);
        ip(&["netns", "add", &made.name]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &made.name,
        ]);
        ip(&["addr", "add", &format!("{}/24", made.host), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        let inside = format!(
            "addr add {}/24 dev eth0\nlink set lo up\nlink set eth0 up\n",
            made.other
        );
        let mut child = Command::new("ip")
            .args(["-n", &made.name, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(inside.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "plumbing {}", made.name);
        made
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h", self.name)])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }

    /// `GET /` at `to` from inside this host: the status code, if anything answered.
    fn get(&self, to: SocketAddr) -> Option<u16> {
        let netns = self.netns.clone();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&netns).ok()?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).ok()?;
            answer.split_whitespace().nth(1)?.parse().ok()
        })
        .join()
        .ok()
        .flatten()
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        self.remove();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contained_instance_is_reached_from_another_host_at_its_cells_address_and_port() {
    rig::require_root(
        "this test runs real containers behind nftables port mappings and makes a network \
         namespace",
    );
    let other = OtherHost::new();
    let port = 47_200 + fastrand::u16(..100);
    let advertised = other.host.clone();
    let mut bridge = String::new();
    let mut rig = Rig::start("executor-port-mapping", true, |c| {
        c.advertise_host = advertised;
        c.port_range = [port, port];
        bridge = c.network.bridge.clone();
    })
    .await;
    let (url, sha) = rig.droplets.put(
        "web",
        droplet(&[("index.html", "hello from a container\n")]),
    );
    let first = rig.start_message("exec python3 -m http.server 8080", &url, &sha);
    assert!(rig.request_start(&first).await.accepted);
    // RUNNING means the health check passed, and it probes the published address.
    rig.wait_state(&first.instance, InstanceState::Running, WAIT)
        .await;
    let route = rig.registration(&first.instance, WAIT).await;
    assert_eq!(
        (route.host.as_str(), route.port),
        (other.host.as_str(), port),
        "the route names the cell's address and the instance's host port"
    );
    let published: SocketAddr = format!("{}:{port}", other.host).parse().unwrap();
    assert_eq!(other.get(published), Some(200), "from another host");

    // The range holds one port and it is taken: the next start is refused, saying why.
    let mut second = rig.start_message("exec python3 -m http.server 8080", &url, &sha);
    second.app = "other-app".into();
    let refused = rig.request_start(&second).await;
    assert!(!refused.accepted);
    let reason = refused.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "no free host port: all of port_range [{port}, {port}]"
        )),
        "{reason}"
    );

    // Stopped, the instance takes its mapping with it, and the port serves the next one.
    assert!(rig.request_stop(&first.app, &first.instance).await.accepted);
    rig.wait_state(&first.instance, InstanceState::Down, WAIT)
        .await;
    let rules = String::from_utf8_lossy(
        &Command::new("nft")
            .args([
                "list",
                "map",
                "inet",
                &format!("hydrant_{bridge}"),
                "published",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !rules.contains(&format!(". {port} :")),
        "the mapping outlived its instance: {rules}"
    );
    wait_for(WAIT, "the freed port to refuse connections", || {
        let closed = other.get(published).is_none();
        async move { closed }
    })
    .await;
    assert!(rig.request_start(&second).await.accepted);
    rig.wait_state(&second.instance, InstanceState::Running, WAIT)
        .await;
    assert_eq!(other.get(published), Some(200), "the next instance");
    rig.stop().await;
}
