//! Hosts for multi-host tests: network namespaces on one machine, each with a veth into one
//! bridge the test makes and an address from a private /24 the test picks, loopback up; and
//! the names that the hosts' executors give their containers (bridges, cgroups), so those go
//! with the hosts.
//!
//! Processes enter a host with [`command_in`] (`nsenter --net`), not `ip netns exec`: that
//! one mounts a fresh `/sys` without the cgroup hierarchies, where no container can be made.
//!
//! Invariant: everything made here, and every container bridge, namespace and cgroup named
//! through [`container_bridge`] and [`cgroup_parent`], carries the creating process's id in its
//! name, is torn down when [`Hosts`] drops (also on a panic), and what an earlier run left
//! behind (its process is gone) is removed before anything new is made. Traffic goes only to
//! these addresses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Names start with this, then the owning test process's id.
const PREFIX: &str = "hmh";
/// Container cgroups (under each hierarchy) start with this, then the test process's id.
const CGROUP_PREFIX: &str = "hydrant-mh";
/// Where the kernel's cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A command running `program` inside host namespace `ns` (its network only; the machine's
/// mounts, `/sys/fs/cgroup` included, stay as they are).
pub fn command_in(ns: &str, program: &Path) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    command
}

/// The container bridge of host `letter`'s executor: `m`, this process's id in 6 hex digits
/// and the letter (8 characters, the container network's limit). Bridges live in their host's
/// namespace, but the bridge's lock file and its containers' namespace names are global.
pub fn container_bridge(letter: char) -> String {
    format!("m{:06x}{letter}", std::process::id() & 0x00ff_ffff)
}

/// The pid in a container bridge's name (or a name it prefixes), when it is one of ours.
fn bridge_owner(name: &str) -> Option<i32> {
    let hex = name.strip_prefix('m')?.get(..6)?;
    let letter = name.chars().nth(7)?;
    (letter.is_ascii_lowercase() && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| i32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// The cgroup (relative to each hierarchy) under which this test's executors make their
/// containers' cgroups, one child per cell: cgroup paths are global, unlike the hosts.
pub fn cgroup_parent() -> String {
    format!("{CGROUP_PREFIX}{:x}", std::process::id())
}

/// `rel` under every cgroup hierarchy that has it (one on cgroup v2, one per controller on v1).
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut dirs = vec![root.join(rel)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(rel)));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Every cgroup directory in the tree at `dir`, children before their parents.
fn cgroup_tree(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_tree(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// Processes in cgroup `rel` and below, in any hierarchy.
pub fn cgroup_procs(rel: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for dir in cgroup_dirs(rel) {
        let mut tree = Vec::new();
        cgroup_tree(&dir, &mut tree);
        for cgroup in tree {
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The child cgroups of `rel` (one per container under a cell's parent), by name.
pub fn cgroup_children(rel: &str) -> Vec<String> {
    let mut names: Vec<String> = cgroup_dirs(rel)
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// SIGKILLs every process in cgroup `rel` and below, until none is left (or 10 s pass): the
/// containers of a lost host die with it.
pub fn kill_cgroup(rel: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = cgroup_procs(rel);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            sigkill(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills what runs in cgroup `rel` and removes it and everything below it.
fn remove_cgroup(rel: &str) {
    kill_cgroup(rel);
    for dir in cgroup_dirs(rel) {
        let mut tree = Vec::new();
        cgroup_tree(&dir, &mut tree);
        for cgroup in tree {
            let _ = std::fs::remove_dir(cgroup);
        }
    }
}

/// Removes the container namespaces (`/run/netns/<bridge>-*`) and bridge lock files of the
/// executors of the test process `pid`.
fn remove_container_netns(pid: i32) {
    let mine = |name: &str| bridge_owner(name) == Some(pid);
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if mine(&name) {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
    for entry in std::fs::read_dir("/run/hydrant")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix("net-")
            .and_then(|n| n.strip_suffix(".lock"))
            .is_some_and(mine)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn sigkill(pid: i32) {
    if pid > 1 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

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

/// SIGKILLs every process in `ns`: the host is lost. (Containers have namespaces of their
/// own: a host's containers go with [`kill_cgroup`] of its cell.)
pub fn kill_all_in(ns: &str) {
    for pid in pids_in(ns) {
        sigkill(pid);
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
    // Containers of executors whose test is gone: their processes, cgroups and namespaces.
    let mut dead = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(CGROUP_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        let mut names = vec![entry.file_name().to_string_lossy().into_owned()];
        names.extend(
            std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
        for name in names {
            if let Some(pid) = name
                .strip_prefix(CGROUP_PREFIX)
                .and_then(|hex| i32::from_str_radix(hex, 16).ok())
                .filter(|pid| !alive(*pid))
            {
                dead.insert((name, pid));
            }
        }
    }
    for (name, pid) in dead {
        remove_cgroup(&name);
        remove_container_netns(pid);
    }
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = bridge_owner(&name).filter(|pid| !alive(*pid)) {
            remove_container_netns(pid);
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
        // The executors' containers first: their processes live in namespaces of their own,
        // which the hosts' do not include.
        remove_cgroup(&cgroup_parent());
        if let Ok(pid) = i32::try_from(std::process::id()) {
            remove_container_netns(pid);
        }
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
