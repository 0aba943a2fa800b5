//! Hosts for multi-host tests: network namespaces on one machine, each with a veth into one
//! bridge the test makes and an address from a private /24 the test picks, loopback up.
//!
//! Invariant: everything made here carries the creating process's id in its name, is torn down
//! when [`Hosts`] drops (also on a panic), and what an earlier run left behind (its process is
//! gone) is removed before anything new is made. Traffic goes only to these addresses.

use std::collections::BTreeMap;
use std::process::Command;

/// Names start with this, then the owning test process's id.
const PREFIX: &str = "hmh";

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (install iproute2)", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The pid in a name made here (`hmh<pid in hex>-...`), when it is one of ours.
fn owner(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    i32::from_str_radix(&hex, 16).ok()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Processes running in network namespace `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs every process in `ns`: the host is lost.
pub fn kill_all_in(ns: &str) {
    for pid in pids_in(ns) {
        if pid > 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes namespaces and bridges an earlier run of this test left (its process is gone).
fn clean_stale() {
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if owner(name).is_some_and(|pid| !alive(pid)) {
            kill_all_in(name);
            let _ = ip(&["netns", "delete", name]);
        }
    }
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or_default();
        if owner(name).is_some_and(|pid| !alive(pid)) {
            let _ = ip(&["link", "delete", name]);
        }
    }
}

/// The test's hosts: namespaces by letter, their addresses, and the bridge joining them.
pub struct Hosts {
    bridge: String,
    namespaces: BTreeMap<char, String>,
    addresses: BTreeMap<char, String>,
    /// The bridge's own address (how the test, in the root namespace, reaches the hosts).
    pub gateway: String,
}

impl Hosts {
    /// Makes one host per letter in `letters` on a fresh bridge and /24 in `10.253.0.0/16`.
    pub fn new(letters: &[char]) -> Self {
        clean_stale();
        let tag = format!("{PREFIX}{:x}", std::process::id());
        let taken = must(&["-4", "-o", "addr", "show"]);
        let third = (0..=255_u8)
            .map(|_| fastrand::u8(..))
            .find(|t| !taken.contains(&format!(" 10.253.{t}.")))
            .expect("every /24 of 10.253.0.0/16 is in use on this machine: free one");
        let net = format!("10.253.{third}");
        let mut hosts = Self {
            bridge: format!("{tag}-br"),
            namespaces: BTreeMap::new(),
            addresses: BTreeMap::new(),
            gateway: format!("{net}.254"),
        };
        must(&["link", "add", &hosts.bridge, "type", "bridge"]);
        must(&[
            "addr",
            "add",
            &format!("{}/24", hosts.gateway),
            "dev",
            &hosts.bridge,
        ]);
        must(&["link", "set", &hosts.bridge, "up"]);
        for (n, &letter) in letters.iter().enumerate() {
            let ns = format!("{tag}-{letter}");
            let veth = format!("{tag}-v{letter}");
            let address = format!("{net}.{}", n + 1);
            must(&["netns", "add", &ns]);
            hosts.namespaces.insert(letter, ns.clone());
            must(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["link", "set", &veth, "master", &hosts.bridge]);
            must(&["link", "set", &veth, "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
            hosts.addresses.insert(letter, address);
        }
        hosts
    }

    /// Host `letter`'s namespace.
    pub fn ns(&self, letter: char) -> &str {
        &self.namespaces[&letter]
    }

    /// Host `letter`'s address.
    pub fn addr(&self, letter: char) -> &str {
        &self.addresses[&letter]
    }

    /// Every host's address.
    pub fn all_addresses(&self) -> Vec<String> {
        self.addresses.values().cloned().collect()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.namespaces.values() {
            kill_all_in(ns);
        }
        for ns in self.namespaces.values() {
            // Processes take a moment to leave; the namespace's name goes at once regardless.
            let _ = ip(&["netns", "delete", ns]);
        }
        let _ = ip(&["link", "delete", &self.bridge]);
    }
}
