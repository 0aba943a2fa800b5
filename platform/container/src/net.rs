//! Container networking: a host bridge, one network namespace and veth pair per container with
//! its own IP, and nftables egress rules in the spirit of Cloud Foundry's application security
//! groups.
//!
//! Flow: the executor calls [`Network::setup`] once at start (one bridge, one address pool) →
//! [`Network::attach`] before it starts a container (the container joins the namespace at
//! [`Attachment::netns_path`]) → optionally [`Network::map_port`], so other hosts reach it at
//! `host_ip:host_port` → the router and health checks reach the container (at `ip:8080` from
//! the host itself, or at the mapped port from anywhere) → [`Network::detach`] after the
//! container is gone → [`Network::teardown`] at shutdown.
//!
//! # Default egress policy
//!
//! Evaluated for every *new* connection a container opens (replies to connections the host
//! opened, and replies to connections the container opened, always flow):
//! 1. **Nothing on the host.** New connections from the bridge to any host address (the
//!    gateway, the host's other IPs, where the agent, doppler, NATS, the cloud controller and
//!    every admin port listen) are dropped in an `inet` input hook. Only a container's own
//!    per-attachment rules (the per-binding rules of the services) can open a host address.
//!    `127.0.0.1` inside a container is the namespace's own loopback and reaches nothing of the
//!    platform.
//! 2. **No container-to-container traffic** except through the router: frames between two
//!    ports of the bridge are dropped (a `bridge`-family forward hook), and so is anything routed
//!    back into the bridge's subnet.
//! 3. The container's own per-attachment rules, then the operator's rules, in order; the first
//!    that matches decides (`allow` accepts, `deny` drops).
//! 4. The link-local range `169.254.0.0/16` (cloud metadata) is dropped, and so is every range in
//!    [`NetConfig::deny`] (by default the private ranges 10/8, 172.16/12, 192.168/16, the shared
//!    100.64/10 and multicast 224/4).
//! 5. Everything else (public egress) is accepted and masqueraded behind the host's address.
//!    Routing it needs `net.ipv4.ip_forward = 1`, which [`Network::setup`] sets (and nothing
//!    else does; teardown leaves it on, since other software may rely on it too).
//!
//! New connections from outside the host into the bridge are dropped too, except through a
//! mapped port: only the host itself (router, health checks) and, through a port mapping, other
//! hosts' routers open connections to containers. Containers have IPv6 turned off.
//!
//! # Port mapping (containers across hosts)
//! A container's address lives on its own host's bridge, which no other host can route to. So,
//! as Garden does for Diego, [`Network::map_port`] publishes one TCP port of the host
//! (`host_ip:host_port`, the port taken by the executor from its `port_range`) as the
//! container's app port: a DNAT in the bridge's `inet` table, in `prerouting` for traffic from
//! other hosts and in `output` for the host's own (health checks, a router beside the cell).
//! Both look the destination address and port up in one map, `published`, so a mapping is one
//! map element, added and removed atomically with the container's other pieces, and gone with
//! the table when setup cleans up after a crash. Traffic from the bridge itself is never
//! translated: a container that asks for a neighbour's mapped port on its own host reaches the
//! host, and is dropped as "container to host". When [`NetConfig::mapped_ports`] is set (the
//! executor sets it to its port range), new connections from containers to those ports on any
//! address are dropped too ("mapped port of an instance"), so a container reaches no instance
//! on another cell either, except through the router. Only a container's own exact endpoints
//! (its service bindings) come before that rule; the operator's rules come after it. The price:
//! a public service on a port in that range is out of reach for apps.
//!
//! # Names, and cleaning up after a crash
//! Everything a bridge owns carries its name: veths and namespaces are `<bridge>-<hash of the
//! container id>` (at most 15 bytes, the kernel's limit for interface names), the nftables
//! tables are `inet hydrant_<bridge>` and `bridge hydrant_<bridge>`, a container's own rules
//! live in chain `c_<hash>`. A bridge name has no `-`, so one bridge's prefix never matches
//! another's. [`Network::setup`] removes everything with its prefix before it builds anew, so a
//! platform killed with SIGKILL restarts clean.
//!
//! Because setup removes what it finds, two live owners of one bridge would destroy each
//! other's containers: setup takes an exclusive lock, `/run/hydrant/net-<bridge>.lock`, holding
//! its PID, and refuses while another live process holds it (the kernel frees the lock of a
//! killed one; a [`Network`] forgotten earlier in the same process is taken over). It also
//! refuses a subnet that another interface of the host has addresses in, unless that interface
//! is a container bridge whose owner is gone (its lock is free), which it removes.
//!
//! # Why `ip` and `nft`, not netlink
//! The work is done by iproute2's `ip` and nftables' `nft` run as child processes (arguments as
//! a list, scripts on stdin), not through a netlink crate: `nft -f -` applies a whole ruleset
//! as one atomic kernel transaction in a syntax an operator can read and rerun, the rust nftables
//! crates either shell out to `nft` themselves or bind libnftables, and attach costs a handful
//! of process spawns (`ip -batch`) against a container start of tens of milliseconds. A missing
//! program is reported with its Debian package (`iproute2`, `nftables`). Only the IPv6 switch
//! inside a namespace is done in-process, on a short-lived thread that enters the namespace.

mod cmd;
mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

pub use rules::{Action, EgressRule, Protocol};

use crate::Error;
use cmd::{Program, is_gone, run};

/// Where iproute2 keeps named network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The link-local range (cloud metadata services); always denied unless a rule allows it.
const LINK_LOCAL: &str = "169.254.0.0/16";

/// One bridge and its address pool; made once per executor (or per staging pool).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// The host bridge, and the prefix of every veth and namespace it owns: 1-8 characters,
    /// lowercase letters and digits, starting with a letter. Default `hydrant0`.
    pub bridge: String,
    /// The address pool as a CIDR; the first address is the bridge's (the containers' gateway),
    /// the rest go to containers. Prefix length 16-29. Default `10.254.0.0/22` (1021 containers).
    pub subnet: String,
    /// Operator rules, evaluated in order before the default denies. Default none.
    pub rules: Vec<EgressRule>,
    /// Destinations dropped after the rules (besides `169.254.0.0/16`, always dropped). Default:
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `100.64.0.0/10`, `224.0.0.0/4`.
    pub deny: Vec<String>,
    /// The host ports that [`Network::map_port`] may publish (inclusive), and that no
    /// container may open a connection to on any address. Not read from a config file: the
    /// owner sets it (the executor, from its `port_range`). Default none.
    #[serde(skip)]
    pub mapped_ports: Option<[u16; 2]>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            bridge: "hydrant0".to_owned(),
            subnet: "10.254.0.0/22".to_owned(),
            rules: Vec::new(),
            deny: [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "224.0.0.0/4",
            ]
            .map(str::to_owned)
            .to_vec(),
            mapped_ports: None,
        }
    }
}

impl NetConfig {
    /// Checks every field; the error names the field and what to write instead.
    pub fn validate(&self) -> Result<(), Error> {
        self.pool().map(|_| ())?;
        for rule in &self.rules {
            rule.validate()?;
        }
        for (i, deny) in self.deny.iter().enumerate() {
            rules::parse_destinations(deny).map_err(|message| Error::Config {
                field: "network.deny",
                message: format!("entry {i}: {message}"),
            })?;
        }
        if let Some([first, last]) = self.mapped_ports
            && (first == 0 || first > last)
        {
            return Err(Error::Config {
                field: "port_range",
                message: format!(
                    "[{first}, {last}] cannot be mapped: write [first, last] with 0 < first <= \
                     last, e.g. [61000, 61999]"
                ),
            });
        }
        Ok(())
    }

    /// The checked bridge name and subnet.
    fn pool(&self) -> Result<(Ipv4Addr, u8), Error> {
        let b = self.bridge.as_bytes();
        let well_formed = (1..=8).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !well_formed {
            return Err(Error::Config {
                field: "network.bridge",
                message: format!(
                    "{:?} cannot name a bridge: use 1-8 lowercase letters and digits, starting \
                     with a letter (veth names add a hash and must fit in 15 bytes), e.g. \"hydrant0\"",
                    self.bridge
                ),
            });
        }
        let (network, prefix) =
            rules::parse_cidr(&self.subnet).map_err(|message| Error::Config {
                field: "network.subnet",
                message,
            })?;
        if !(16..=29).contains(&prefix) {
            return Err(Error::Config {
                field: "network.subnet",
                message: format!(
                    "{:?}: use a prefix length of 16-29 (a /29 holds 5 containers, a /22 1021)",
                    self.subnet
                ),
            });
        }
        Ok((network, prefix))
    }

    /// [`NetConfig::effective_rules`] as [`render_rules`]' aligned table.
    pub fn effective_rules_table(&self) -> String {
        render_rules(&self.effective_rules())
    }

    /// The full egress policy in evaluation order, for `hydrant security-groups` (as JSON, or
    /// through [`render_rules`]): the host and neighbour denies (the host shown as `<host>`),
    /// the mapped-port deny when ports are mapped, the operator's rules, then the default
    /// denies, then the public allow. A container's own per-binding rules come right after the
    /// neighbour deny (exact endpoints the platform opened, so a service node on a port in the
    /// mapped range stays reachable to the app bound to it).
    pub fn effective_rules(&self) -> Vec<EgressRule> {
        let deny = |destination: &str, description: &str| EgressRule {
            action: Action::Deny,
            description: description.to_owned(),
            ..EgressRule::allow(Protocol::All, destination, None)
        };
        let mut out = vec![
            deny(
                "<host>",
                "containers reach nothing on the host (only replies flow)",
            ),
            deny(
                &self.subnet,
                "no container-to-container traffic except through the router",
            ),
        ];
        if let Some([first, last]) = self.mapped_ports {
            out.push(EgressRule {
                action: Action::Deny,
                description: "instances' mapped ports, on any host: only through the router"
                    .to_owned(),
                ..EgressRule::allow(Protocol::Tcp, "0.0.0.0/0", Some(&format!("{first}-{last}")))
            });
        }
        out.extend(self.rules.iter().cloned());
        out.push(deny(LINK_LOCAL, "link-local (cloud metadata)"));
        out.extend(self.deny.iter().map(|d| deny(d, "default deny")));
        out.push(EgressRule {
            description: "public egress, masqueraded".to_owned(),
            ..EgressRule::allow(Protocol::All, "0.0.0.0/0", None)
        });
        out
    }
}

/// Rules as an aligned text table, one per line in evaluation order, for operators.
pub fn render_rules(rules: &[EgressRule]) -> String {
    let rows: Vec<[String; 5]> = rules
        .iter()
        .map(|r| {
            let ports = match (&r.ports, r.icmp_type, r.code) {
                (Some(p), _, _) => p.clone(),
                (None, Some(t), Some(c)) => format!("type {t} code {c}"),
                (None, Some(t), None) => format!("type {t}"),
                _ => "all".to_owned(),
            };
            [
                r.action.as_str().to_owned(),
                r.protocol.as_str().to_owned(),
                r.destination.clone(),
                ports,
                r.description.clone(),
            ]
        })
        .collect();
    let header = ["action", "protocol", "destination", "ports", "description"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A container's place on the bridge: its namespace, its address and its veth.
#[derive(Debug)]
pub struct Attachment {
    /// The container id it was made for.
    pub id: String,
    /// The network namespace to put in the container's OCI config (`linux.namespaces[].path`).
    pub netns_path: PathBuf,
    /// The namespace's name (`ip netns list`).
    pub netns: String,
    /// The container's address; the router reaches the app at `ip:8080`.
    pub ip: Ipv4Addr,
    /// The bridge's address, the container's default route.
    pub gateway: Ipv4Addr,
    /// The pool's prefix length (the container's `eth0` is `ip/prefix_len`).
    pub prefix_len: u8,
    /// The host side of the veth pair (the container side is `eth0`).
    pub veth: String,
    /// The host port published for it by [`Network::map_port`], if any.
    pub mapping: Option<PortMapping>,
    /// The hash part of the names, which also names the container's nft chain.
    key: String,
}

/// A host port forwarded to a container: TCP to `host_ip:host_port` reaches the container's
/// `container_port`, from other hosts and from the host itself (never from a container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    /// The host's address that others reach it on (the executor's `advertise_host`).
    pub host_ip: Ipv4Addr,
    /// The published port, from [`NetConfig::mapped_ports`].
    pub host_port: u16,
    /// The port the app listens on inside the container.
    pub container_port: u16,
}

/// The bridge, its pool and its rules; shared by the executor's tasks (`&self` methods).
#[derive(Debug)]
pub struct Network {
    config: NetConfig,
    gateway: Ipv4Addr,
    prefix_len: u8,
    table: String,
    pool: Mutex<Pool>,
    /// An exclusive lock on `/run/hydrant/net-<bridge>.lock` for this network's life: another
    /// live process set up on the same bridge would remove this one's containers as leftovers,
    /// so it is refused instead. The kernel drops the lock when the process dies, however.
    bridge_lock: Option<std::fs::File>,
}

/// The addresses and names in use. A std mutex: held for a few instructions, never across await.
#[derive(Debug)]
struct Pool {
    first: u32,
    last: u32,
    /// Next-fit cursor, so a freed address is not handed out again at once (conntrack entries
    /// of the old container may linger).
    next: u32,
    used: BTreeSet<u32>,
    keys: BTreeSet<String>,
    /// Host ports published now, so two containers can never be given the same one.
    mapped: BTreeSet<u16>,
}

impl Pool {
    /// The pool of the subnet `start..=end`: every address but the network's, the gateway's
    /// (`start + 1`) and the broadcast address.
    fn of_subnet(start: u32, end: u32) -> Self {
        Pool {
            first: start + 2,
            last: end - 1,
            next: start + 2,
            used: BTreeSet::new(),
            keys: BTreeSet::new(),
            mapped: BTreeSet::new(),
        }
    }

    fn take(&mut self, id: &str, key_len: usize) -> Option<(Ipv4Addr, String)> {
        let size = self.last - self.first + 1;
        let ip = (0..size)
            .map(|i| self.first + (self.next - self.first + i) % size)
            .find(|ip| !self.used.contains(ip))?;
        // A hash collision between two live ids gets the next salt; the names stay derived
        // from the id so cleanup finds them by prefix alone.
        let key = (0u32..)
            .map(|salt| {
                let text = if salt == 0 {
                    id.to_owned()
                } else {
                    format!("{id}#{salt}")
                };
                let mut hex = format!("{:016x}", fnv1a(text.as_bytes()));
                hex.truncate(key_len);
                hex
            })
            .find(|key| !self.keys.contains(key))?;
        self.used.insert(ip);
        self.keys.insert(key.clone());
        self.next = if ip == self.last { self.first } else { ip + 1 };
        Some((Ipv4Addr::from(ip), key))
    }

    fn give_back(&mut self, ip: Ipv4Addr, key: &str) {
        self.used.remove(&u32::from(ip));
        self.keys.remove(key);
    }
}

/// One element of the `published` map: `host_ip . host_port : container_ip . container_port`.
fn published_element(container_ip: Ipv4Addr, m: PortMapping) -> String {
    format!(
        "{} . {} : {container_ip} . {}",
        m.host_ip, m.host_port, m.container_port
    )
}

/// The bridge's own MAC: locally administered unicast (`02:`), the rest from its name, so it is
/// the same on every start and differs between bridges.
fn bridge_mac(bridge: &str) -> String {
    let h = fnv1a(bridge.as_bytes()).to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[0], h[1], h[2], h[3], h[4]
    )
}

/// 64-bit FNV-1a: a stable, dependency-free hash for short names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Network {
    /// Creates (or adopts) the bridge, its gateway address and the nftables tables; removes what
    /// an earlier run left behind (netns, veths, rules with this bridge's prefix) so a SIGKILLed
    /// platform restarts clean.
    pub async fn setup(config: &NetConfig) -> Result<Network, Error> {
        config.validate()?;
        let (network, prefix_len) = config.pool()?;
        let (start, end) = rules::cidr_interval(network, prefix_len);
        let gateway = Ipv4Addr::from(start + 1);
        let lock = lock_bridge(&config.bridge)?;
        check_subnet_free(&config.bridge, &config.subnet, (start, end)).await?;
        let net = Network {
            bridge_lock: Some(lock),
            config: config.clone(),
            gateway,
            prefix_len,
            table: format!("hydrant_{}", config.bridge),
            pool: Mutex::new(Pool::of_subnet(start, end)),
        };
        net.remove_leftovers().await?;
        let bridge = config.bridge.as_str();
        if !link_exists(bridge).await? {
            run(
                Program::Ip,
                &["link", "add", "name", bridge, "type", "bridge"],
                None,
            )
            .await?;
        }
        // A bridge without an address of its own takes the lowest MAC among its ports, so it
        // changes as veths come and go; containers that cached the gateway's old MAC then send
        // their replies to a port instead of the host for up to ~30 s (their ARP entry's life),
        // which fails health checks and requests. A fixed address never changes.
        let mac = bridge_mac(bridge);
        run(
            Program::Ip,
            &["link", "set", "dev", bridge, "address", &mac],
            None,
        )
        .await?;
        let address = format!("{gateway}/{prefix_len}");
        run(
            Program::Ip,
            &["addr", "replace", &address, "dev", bridge],
            None,
        )
        .await?;
        run(Program::Ip, &["link", "set", bridge, "up"], None).await?;
        let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
        tokio::fs::write(forward, "1\n")
            .await
            .map_err(|source| Error::Io {
                what: "turning on IPv4 forwarding (containers' public egress needs it)",
                path: forward.to_owned(),
                source,
            })?;
        run(Program::Nft, &["-f", "-"], Some(&net.ruleset()?)).await?;
        tracing::info!(bridge, subnet = %config.subnet, rules = config.rules.len(), "container network ready");
        Ok(net)
    }

    /// A network namespace for container `id` with a veth on the bridge, its own IP from the
    /// pool, `lo` up, a default route via the gateway, IPv6 off inside, and `extra` rules
    /// (per-binding rules the services issue will add) that apply to this container only.
    pub async fn attach(&self, id: &str, extra: &[EgressRule]) -> Result<Attachment, Error> {
        if id.is_empty() {
            return Err(Error::Config {
                field: "container id",
                message: "is empty".to_owned(),
            });
        }
        let mut chain_rules = Vec::with_capacity(extra.len());
        for rule in extra {
            chain_rules.push(rule.to_nft()?);
        }
        let key_len = 14 - self.config.bridge.len();
        let (ip, key) = self
            .lock()
            .take(id, key_len)
            .ok_or_else(|| Error::PoolExhausted {
                subnet: self.config.subnet.clone(),
            })?;
        let name = format!("{}-{key}", self.config.bridge);
        let attachment = Attachment {
            id: id.to_owned(),
            netns_path: Path::new(NETNS_DIR).join(&name),
            netns: name.clone(),
            ip,
            gateway: self.gateway,
            prefix_len: self.prefix_len,
            veth: name,
            mapping: None,
            key,
        };
        match self.plumb(&attachment, &chain_rules).await {
            Ok(()) => Ok(attachment),
            Err(error) => {
                // Leave nothing half-made behind; the first error is the one worth reporting.
                if let Err(cleanup) = self.detach_ref(&attachment).await {
                    tracing::warn!(id, error = %cleanup, "cleaning up a failed attach");
                }
                Err(error)
            }
        }
    }

    async fn plumb(&self, a: &Attachment, chain_rules: &[String]) -> Result<(), Error> {
        let bridge = &self.config.bridge;
        let host = format!(
            "netns add {ns}\nlink add {veth} type veth peer name eth0 netns {ns}\n\
             link set {veth} master {bridge} up\n",
            ns = a.netns,
            veth = a.veth,
        );
        run(Program::Ip, &["-batch", "-"], Some(&host)).await?;
        disable_ipv6_in(a.netns_path.clone()).await?;
        let inside = format!(
            "link set lo up\naddr add {ip}/{len} dev eth0\nlink set eth0 up\n\
             route add default via {gw} dev eth0\n",
            ip = a.ip,
            len = a.prefix_len,
            gw = a.gateway,
        );
        run(Program::Ip, &["-n", &a.netns, "-batch", "-"], Some(&inside)).await?;
        let table = &self.table;
        let chain = format!("c_{}", a.key);
        let mut script = format!("add chain inet {table} {chain}\n");
        for rule in chain_rules {
            script.push_str(&format!("add rule inet {table} {chain} {rule}\n"));
        }
        script.push_str(&format!(
            "add element inet {table} containers {{ {} : jump {chain} }}\n",
            a.ip
        ));
        script.push_str(&format!(
            "add element bridge {table} ports {{ \"{}\" . {} }}\n",
            a.veth, a.ip
        ));
        run(Program::Nft, &["-f", "-"], Some(&script)).await?;
        Ok(())
    }

    /// Publishes `host_ip:host_port` (TCP) as the container's `container_port`: from then on
    /// other hosts, and the host itself, reach the app there; containers never do. The port
    /// must lie in [`NetConfig::mapped_ports`] and be free on this network; the mapping goes
    /// with [`Network::detach`].
    ///
    /// # Errors
    /// [`Error::Config`] for an address or port that cannot be published (loopback, unspecified,
    /// outside the range, a second mapping for one container), [`Error::NetworkConflict`] for a
    /// port another container holds, or the `nft` failure.
    pub async fn map_port(
        &self,
        attachment: &mut Attachment,
        host_ip: Ipv4Addr,
        host_port: u16,
        container_port: u16,
    ) -> Result<PortMapping, Error> {
        let bad = |message: String| Error::Config {
            field: "port mapping",
            message,
        };
        if host_ip.is_loopback() || host_ip.is_unspecified() || host_ip.is_multicast() {
            // The kernel will not route 127/8 sources onto the bridge, and other hosts cannot
            // reach it: loopback-only cells keep reaching containers at their own addresses.
            return Err(bad(format!(
                "{host_ip} is not an address other hosts reach this one on: advertise the \
                 host's own address (e.g. its 10.x or public IP)"
            )));
        }
        let Some([first, last]) = self.config.mapped_ports else {
            return Err(bad(
                "this network publishes no ports: set `mapped_ports` (the executor sets its \
                 `port_range`)"
                    .to_owned(),
            ));
        };
        if !(first..=last).contains(&host_port) || container_port == 0 {
            return Err(bad(format!(
                "host port {host_port} is outside the mapped range [{first}, {last}] (or the \
                 container port {container_port} is 0)"
            )));
        }
        if let Some(held) = attachment.mapping {
            return Err(bad(format!(
                "container {} already has host port {} published",
                attachment.id, held.host_port
            )));
        }
        if !self.lock().mapped.insert(host_port) {
            return Err(Error::NetworkConflict(format!(
                "host port {host_port} is already published for another container"
            )));
        }
        let mapping = PortMapping {
            host_ip,
            host_port,
            container_port,
        };
        let script = format!(
            "add element inet {table} published {{ {} }}\n",
            published_element(attachment.ip, mapping),
            table = self.table,
        );
        if let Err(e) = run(Program::Nft, &["-f", "-"], Some(&script)).await {
            self.lock().mapped.remove(&host_port);
            return Err(e);
        }
        attachment.mapping = Some(mapping);
        Ok(mapping)
    }

    /// Removes the namespace, veth, per-container rules, and returns the IP to the pool.
    /// Idempotent.
    pub async fn detach(&self, attachment: Attachment) -> Result<(), Error> {
        self.detach_ref(&attachment).await
    }

    async fn detach_ref(&self, a: &Attachment) -> Result<(), Error> {
        let table = &self.table;
        let chain = format!("c_{}", a.key);
        let element = format!("delete element inet {table} containers {{ {} }}\n", a.ip);
        let drop_chain =
            format!("flush chain inet {table} {chain}\ndelete chain inet {table} {chain}\n");
        let port = format!(
            "delete element bridge {table} ports {{ \"{}\" . {} }}\n",
            a.veth, a.ip
        );
        // The mapping first, in the same transaction: no new connection is forwarded to an
        // address that is about to be handed to another container.
        let published = a.mapping.map_or_else(String::new, |m| {
            format!(
                "delete element inet {table} published {{ {} . {} }}\n",
                m.host_ip, m.host_port
            )
        });
        let mut first_error = None;
        // One transaction when every piece is there (the common case); else each piece alone,
        // so one already gone does not keep the others.
        let all = format!("{published}{element}{drop_chain}{port}");
        if run(Program::Nft, &["-f", "-"], Some(&all)).await.is_err() {
            for script in [published, element, drop_chain, port] {
                if script.is_empty() {
                    continue;
                }
                if let Err(e) = run(Program::Nft, &["-f", "-"], Some(&script)).await
                    && !is_gone(&e)
                {
                    first_error.get_or_insert(e);
                }
            }
        }
        // The veth first: removing it removes its peer in the namespace at once, while a
        // namespace's own removal takes its interfaces down later, in the background.
        for result in [remove_link(&a.veth).await, remove_netns(&a.netns).await] {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                let mut pool = self.lock();
                pool.give_back(a.ip, &a.key);
                if let Some(m) = a.mapping {
                    pool.mapped.remove(&m.host_port);
                }
                Ok(())
            }
        }
    }

    /// Removes everything this bridge owns (for shutdown and tests). Borrowing, so an owner
    /// that shares the network with its tasks can remove it once they are done.
    pub async fn teardown(&self) -> Result<(), Error> {
        self.remove_leftovers().await?;
        if link_exists(&self.config.bridge).await? {
            remove_link(&self.config.bridge).await?;
        }
        // With the bridge gone there is nothing left for a lock to guard, so its file goes
        // too (each micro cloud's own bridge name would otherwise leave one behind). It is
        // unlinked while still held: `lock_bridge` re-checks the path after locking, so a
        // process that opened the old file meanwhile does not take a lock nobody else sees.
        if self.bridge_lock.is_some() {
            let path = lock_path(&self.config.bridge);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove the bridge's lock file");
            }
        }
        tracing::info!(bridge = %self.config.bridge, "container network removed");
        Ok(())
    }

    /// The configuration this network was set up with.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The bridge's address (every container's gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Packets dropped so far, by reason (`container to host`, `container to container`,
    /// `link-local`, `default deny`, `spoofed source`, `unsolicited into containers`, `ipv6`,
    /// an operator rule's description or `operator rule`, `per-container rule`), read from the
    /// kernel's counters, for the executor's metrics.
    pub async fn drop_counts(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut counts = BTreeMap::new();
        for family in ["inet", "bridge"] {
            let json = run(
                Program::Nft,
                &["-j", "list", "table", family, &self.table],
                None,
            )
            .await?;
            let listing: serde_json::Value =
                serde_json::from_str(&json).map_err(|e| Error::Command {
                    program: "nft",
                    args: format!("-j list table {family} {}", self.table),
                    message: format!("unexpected output: {e}"),
                })?;
            let items = listing.get("nftables").and_then(|v| v.as_array());
            for rule in items
                .into_iter()
                .flatten()
                .filter_map(|item| item.get("rule"))
            {
                let exprs = rule.get("expr").and_then(|e| e.as_array());
                let exprs = exprs.map(Vec::as_slice).unwrap_or_default();
                if !exprs.iter().any(|e| e.get("drop").is_some()) {
                    continue;
                }
                let packets = exprs
                    .iter()
                    .find_map(|e| e.get("counter")?.get("packets")?.as_u64())
                    .unwrap_or(0);
                let chain = rule
                    .get("chain")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default();
                let reason = match rule.get("comment").and_then(|c| c.as_str()) {
                    Some(comment) => comment.to_owned(),
                    None if chain.starts_with("c_") => "per-container rule".to_owned(),
                    None => "operator rule".to_owned(),
                };
                *counts.entry(reason).or_insert(0) += packets;
            }
        }
        Ok(counts)
    }

    /// The nft tables, namespaces and veths with this bridge's prefix (not the bridge itself).
    async fn remove_leftovers(&self) -> Result<(), Error> {
        remove_owned_by(&self.config.bridge).await
    }

    /// The bridge's whole ruleset, loaded atomically by `nft -f -`.
    fn ruleset(&self) -> Result<String, Error> {
        let c = &self.config;
        let (table, bridge, subnet) = (&self.table, &c.bridge, &c.subnet);
        let mut operator = String::new();
        for rule in &c.rules {
            operator.push_str(&format!("\t\t{}\n", rule.to_nft()?));
        }
        let mut denies = Vec::new();
        for deny in &c.deny {
            let merged = rules::parse_destinations(deny).map_err(|message| Error::Config {
                field: "network.deny",
                message,
            })?;
            denies.extend(
                merged
                    .into_iter()
                    .map(|(a, b)| rules::render_ip_interval(a, b)),
            );
        }
        // nft refuses an empty element list; an operator may well empty `deny`.
        let denies = if denies.is_empty() {
            String::new()
        } else {
            format!("\n\t\telements = {{ {} }}", denies.join(", "))
        };
        let mapped_deny = match c.mapped_ports {
            Some([first, last]) => format!(
                "\t\ttcp dport {} counter drop comment \"mapped port of an instance\"\n",
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            ),
            None => String::new(),
        };
        Ok(format!(
            "table inet {table} {{
	map containers {{
		type ipv4_addr : verdict
	}}
	map published {{
		type ipv4_addr . inet_service : ipv4_addr . inet_service
	}}
	set default_deny {{
		type ipv4_addr
		flags interval
		auto-merge{denies}
	}}
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname \"{bridge}\" ct state established,related accept
		iifname \"{bridge}\" ip saddr vmap @containers
		iifname \"{bridge}\" counter drop comment \"container to host\"
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		oifname \"{bridge}\" ct state established,related accept
		iifname \"{bridge}\" ct state established,related accept
		iifname \"{bridge}\" jump egress
		oifname \"{bridge}\" ct status dnat counter accept comment \"mapped port\"
		oifname \"{bridge}\" counter drop comment \"unsolicited into containers\"
	}}
	chain egress {{
		ip daddr {subnet} counter drop comment \"container to container\"
		meta nfproto ipv6 counter drop comment \"ipv6\"
		ip saddr vmap @containers
{mapped_deny}{operator}		ip daddr {LINK_LOCAL} counter drop comment \"link-local\"
		ip daddr @default_deny counter drop comment \"default deny\"
		counter accept comment \"public egress\"
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr {subnet} oifname != \"{bridge}\" masquerade
	}}
	chain prerouting_mapped {{
		type nat hook prerouting priority dstnat; policy accept;
		iifname \"{bridge}\" return
		dnat ip to ip daddr . tcp dport map @published
	}}
	chain output_mapped {{
		type nat hook output priority -100; policy accept;
		dnat ip to ip daddr . tcp dport map @published
	}}
}}
table bridge {table} {{
	chain forward {{
		type filter hook forward priority filter; policy accept;
		iifname \"{bridge}-*\" oifname \"{bridge}-*\" counter drop comment \"container to container\"
	}}
	set ports {{
		type ifname . ipv4_addr
	}}
	chain prerouting {{
		type filter hook prerouting priority filter; policy accept;
		iifname \"{bridge}-*\" iifname . ip saddr != @ports counter drop comment \"spoofed source\"
	}}
}}
"
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the per-bridge locks live (a tmpfs: nothing survives a reboot, as nothing should).
const LOCK_DIR: &str = "/run/hydrant";

/// Takes the bridge's lock and writes our PID into it. The lock is already ours when an
/// earlier [`Network`] of this same process was forgotten without a teardown (a role restarted
/// in-process, a test simulating a crash; a child forked meanwhile may hold it for a moment
/// too): then this setup takes over. Any other live holder is refused.
fn lock_bridge(bridge: &str) -> Result<std::fs::File, Error> {
    // A clean teardown unlinks the lock file while holding it; a lock taken on a file that
    // was unlinked meanwhile guards nothing, so lock again on the file the path names now.
    for _ in 0..8 {
        let file = lock_bridge_once(bridge)?;
        let path = lock_path(bridge);
        let same = match (file.metadata(), std::fs::metadata(&path)) {
            (Ok(held), Ok(named)) => {
                use std::os::unix::fs::MetadataExt as _;
                held.dev() == named.dev() && held.ino() == named.ino()
            }
            _ => false,
        };
        if same {
            return Ok(file);
        }
    }
    Err(Error::NetworkConflict(format!(
        "the lock file of bridge {bridge:?} keeps being replaced under {LOCK_DIR}: another \
         process is setting up and tearing down the same bridge; give this one its own \
         `network.bridge` and `network.subnet`"
    )))
}

fn lock_path(bridge: &str) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("net-{bridge}.lock"))
}

fn lock_bridge_once(bridge: &str) -> Result<std::fs::File, Error> {
    use std::io::Write as _;
    let path = lock_path(bridge);
    let io = |source| Error::Io {
        what: "locking the container bridge",
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(LOCK_DIR).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            if holder.trim().parse::<u32>().ok() == Some(std::process::id()) {
                return Ok(file);
            }
            Err(Error::NetworkConflict(format!(
                "bridge {bridge:?} is in use by another running process (pid {}, holding {}): \
                 stop it, or give this one its own `network.bridge` and `network.subnet`",
                match holder.trim() {
                    "" => "unknown",
                    pid => pid,
                },
                path.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Refuses a subnet that an interface other than our bridge already has an address in (or a
/// narrower network inside): both would claim the same addresses and routing would pick one.
async fn check_subnet_free(
    bridge: &str,
    subnet: &str,
    (start, end): (u32, u32),
) -> Result<(), Error> {
    #[derive(Deserialize)]
    struct Link {
        ifname: String,
        #[serde(default)]
        addr_info: Vec<Addr>,
    }
    #[derive(Deserialize)]
    struct Addr {
        family: String,
        #[serde(default)]
        local: String,
        #[serde(default)]
        prefixlen: u8,
    }
    let links: Vec<Link> = ip_json(&["addr", "show"]).await?;
    for link in links.iter().filter(|l| l.ifname != bridge) {
        for addr in link.addr_info.iter().filter(|a| a.family == "inet") {
            let Ok(ip) = addr.local.parse::<Ipv4Addr>() else {
                continue;
            };
            let (net_start, net_end) = rules::cidr_interval(ip, addr.prefixlen.min(32));
            let inside =
                (start..=end).contains(&u32::from(ip)) || (net_start >= start && net_end <= end);
            if inside && owner_is_gone(&link.ifname) {
                tracing::warn!(stale = %link.ifname, subnet, "removing a container bridge whose owner is gone");
                remove_owned_by(&link.ifname).await?;
                remove_link(&link.ifname).await?;
                break;
            }
            if inside {
                return Err(Error::NetworkConflict(format!(
                    "subnet {subnet} is already used on this host: interface {} has {}/{}; \
                     pick another `network.subnet`",
                    link.ifname, addr.local, addr.prefixlen
                )));
            }
        }
    }
    Ok(())
}

/// Removes the nft tables, namespaces and veths that bridge `bridge` owns (not the bridge).
async fn remove_owned_by(bridge: &str) -> Result<(), Error> {
    let table = format!("hydrant_{bridge}");
    // `add` then `delete` in one transaction: removes the table whether or not it exists.
    let script = format!(
        "add table inet {table}\ndelete table inet {table}\n\
         add table bridge {table}\ndelete table bridge {table}\n"
    );
    run(Program::Nft, &["-f", "-"], Some(&script)).await?;
    let prefix = format!("{bridge}-");
    for name in netns_names().await? {
        if name.starts_with(&prefix) {
            remove_netns(&name).await?;
        }
    }
    for name in link_names().await? {
        if name.starts_with(&prefix) {
            remove_link(&name).await?;
        }
    }
    Ok(())
}

/// Whether `bridge` is a container bridge whose owner is gone: it has a lock file here that
/// nobody holds (a process killed while it ran under another bridge name, e.g. a test's).
fn owner_is_gone(bridge: &str) -> bool {
    let path = lock_path(bridge);
    std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .is_ok_and(|file| file.try_lock().is_ok())
}

/// `ip -j ARGS`, its JSON read as `T`; output of another shape (another `ip` version) is an
/// error naming the command.
async fn ip_json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T, Error> {
    let json = run(Program::Ip, &[&["-j"], args].concat(), None).await?;
    serde_json::from_str(&json).map_err(|e| Error::Command {
        program: "ip",
        args: format!("-j {}", args.join(" ")),
        message: format!("unexpected output: {e}"),
    })
}

/// Names of every network interface in the host's namespace.
async fn link_names() -> Result<Vec<String>, Error> {
    #[derive(Deserialize)]
    struct Link {
        ifname: String,
    }
    let links: Vec<Link> = ip_json(&["link", "show"]).await?;
    Ok(links.into_iter().map(|l| l.ifname).collect())
}

async fn link_exists(name: &str) -> Result<bool, Error> {
    Ok(link_names().await?.iter().any(|n| n == name))
}

async fn remove_link(name: &str) -> Result<(), Error> {
    match run(Program::Ip, &["link", "del", name], None).await {
        Err(e) if !is_gone(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Names of the namespaces iproute2 knows (its bind mounts under `/run/netns`).
async fn netns_names() -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    let mut dir = match tokio::fs::read_dir(NETNS_DIR).await {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(source) => {
            return Err(Error::Io {
                what: "listing network namespaces",
                path: NETNS_DIR.into(),
                source,
            });
        }
    };
    loop {
        match dir.next_entry().await {
            Ok(Some(entry)) => names.push(entry.file_name().to_string_lossy().into_owned()),
            Ok(None) => return Ok(names),
            Err(source) => {
                return Err(Error::Io {
                    what: "listing network namespaces",
                    path: NETNS_DIR.into(),
                    source,
                });
            }
        }
    }
}

async fn remove_netns(name: &str) -> Result<(), Error> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    match run(Program::Ip, &["netns", "del", name], None).await {
        Err(e) if !is_gone(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Turns IPv6 off inside a namespace before its `eth0` comes up (so it never gets an address).
/// Done on a fresh thread that enters the namespace and exits: a thread's namespace is its own,
/// and no runtime thread is ever moved.
async fn disable_ipv6_in(netns: PathBuf) -> Result<(), Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("hydrant-netns".to_owned())
        .spawn(move || {
            let _ = tx.send(disable_ipv6_blocking(&netns));
        });
    let io = |source| Error::Io {
        what: "turning IPv6 off in a network namespace",
        path: NETNS_DIR.into(),
        source,
    };
    spawned.map_err(io)?;
    rx.await.map_err(|_| {
        io(std::io::Error::other(
            "the namespace thread ended without answering",
        ))
    })?
}

fn disable_ipv6_blocking(netns: &Path) -> Result<(), Error> {
    let io = |path: &Path, source| Error::Io {
        what: "turning IPv6 off in a network namespace",
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(netns).map_err(|e| io(netns, e))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io(netns, std::io::Error::from(e)))?;
    for scope in ["all", "default"] {
        let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"));
        match std::fs::write(&path, "1\n") {
            // A kernel without IPv6 has no such file: nothing to turn off.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
            Ok(()) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(config: NetConfig) -> Network {
        let (network, prefix_len) = config.pool().unwrap();
        let (start, end) = rules::cidr_interval(network, prefix_len);
        Network {
            bridge_lock: None,
            gateway: Ipv4Addr::from(start + 1),
            prefix_len,
            table: format!("hydrant_{}", config.bridge),
            pool: Mutex::new(Pool::of_subnet(start, end)),
            config,
        }
    }

    #[test]
    fn defaults_validate_and_read_from_config() {
        NetConfig::default().validate().unwrap();
        let config: NetConfig = serde_json::from_str(
            r#"{"bridge": "hyx1", "rules": [{"protocol": "tcp", "destination": "10.0.0.5", "ports": "5432"}]}"#,
        )
        .unwrap();
        assert_eq!(config.subnet, "10.254.0.0/22");
        assert_eq!(config.rules.len(), 1);
        assert!(serde_json::from_str::<NetConfig>(r#"{"bridges": "x"}"#).is_err());
    }

    #[test]
    fn bad_config_names_the_field_and_the_fix() {
        type Spoil = fn(&mut NetConfig);
        let cases: [(Spoil, &[&str]); 4] = [
            (
                |c| c.bridge = "hydrant-br0".into(),
                &["network.bridge", "1-8 lowercase"],
            ),
            (
                |c| c.subnet = "10.254.0.1/22".into(),
                &["network.subnet", "10.254.0.0/22"],
            ),
            (|c| c.subnet = "10.0.0.0/8".into(), &["16-29"]),
            (|c| c.deny = vec!["10.0.0.0/40".into()], &["network.deny"]),
        ];
        for (spoil, wants) in cases {
            let mut config = NetConfig::default();
            spoil(&mut config);
            let err = config.validate().unwrap_err().to_string();
            for want in wants {
                assert!(err.contains(want), "{want:?} is not in {err}");
            }
        }
    }

    #[test]
    fn pool_hands_out_distinct_addresses_and_names_until_full() {
        let net = network(NetConfig {
            subnet: "10.254.8.0/29".into(),
            ..NetConfig::default()
        });
        let mut pool = net.lock();
        let taken: Vec<_> = (0..5)
            .map(|i| pool.take(&format!("app-{i}"), 6).unwrap())
            .collect();
        let ips: BTreeSet<_> = taken.iter().map(|(ip, _)| *ip).collect();
        assert_eq!(ips.len(), 5);
        assert!(
            !ips.contains(&"10.254.8.1".parse().unwrap()),
            "the gateway is never handed out"
        );
        assert!(
            !ips.contains(&"10.254.8.7".parse().unwrap()),
            "nor the broadcast address"
        );
        assert!(pool.take("app-5", 6).is_none(), "a /29 holds 5 containers");
        pool.give_back(taken[2].0, &taken[2].1);
        let (ip, _) = pool.take("app-6", 6).unwrap();
        assert_eq!(ip, taken[2].0);
        // The same id twice (a restart racing a stop) still gets two distinct names.
        drop(pool);
        let mut pool = network(NetConfig::default()).pool.into_inner().unwrap();
        let (_, a) = pool.take("same", 6).unwrap();
        let (_, b) = pool.take("same", 6).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 6);
    }

    #[test]
    fn ruleset_puts_host_and_neighbours_first_then_rules_then_default_denies() {
        let config = NetConfig {
            bridge: "hyx2".into(),
            subnet: "10.254.12.0/22".into(),
            rules: vec![EgressRule::allow(
                Protocol::Tcp,
                "10.0.11.0/24",
                Some("5432"),
            )],
            deny: vec!["192.168.0.0/16".into(), "10.0.0.0/8".into()],
            mapped_ports: None,
        };
        let ruleset = network(config).ruleset().unwrap();
        let at = |needle: &str| {
            ruleset
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} missing:\n{ruleset}"))
        };
        assert!(ruleset.contains("table inet hydrant_hyx2"));
        assert!(ruleset.contains("iifname \"hyx2\" counter drop comment \"container to host\""));
        assert!(ruleset.contains("iifname \"hyx2-*\" oifname \"hyx2-*\" counter drop"));
        assert!(ruleset.contains("elements = { 192.168.0.0/16, 10.0.0.0/8 }"));
        let subnet = at("ip daddr 10.254.12.0/22 counter drop");
        let own = at("\n\t\tip saddr vmap @containers\n");
        let operator = at("ip daddr 10.0.11.0/24 tcp dport 5432 counter accept");
        let link_local = at("ip daddr 169.254.0.0/16 counter drop");
        let deny = at("ip daddr @default_deny counter drop");
        let public = at("counter accept comment \"public egress\"");
        assert!(
            subnet < own
                && own < operator
                && operator < link_local
                && link_local < deny
                && deny < public,
            "{ruleset}"
        );
        assert!(ruleset.contains("ip saddr 10.254.12.0/22 oifname != \"hyx2\" masquerade"));
    }

    #[test]
    fn effective_rules_list_the_whole_policy_in_order() {
        let config = NetConfig {
            rules: vec![EgressRule::allow(Protocol::Udp, "10.0.0.2", Some("53"))],
            ..NetConfig::default()
        };
        let rules = config.effective_rules();
        assert_eq!(rules[0].destination, "<host>");
        assert_eq!(rules[2], config.rules[0]);
        assert_eq!(rules[3].destination, LINK_LOCAL);
        assert_eq!(rules.last().map(|r| r.action), Some(Action::Allow));
        assert_eq!(rules.len(), 2 + 1 + 1 + 5 + 1);
        let table = render_rules(&rules);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), rules.len() + 1);
        assert!(
            lines[0].starts_with("action  protocol  destination"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("allow   udp       10.0.0.2") && lines[3].contains(" 53"),
            "{table}"
        );
        assert!(
            lines[4].starts_with("deny    all       169.254.0.0/16  all"),
            "{table}"
        );
    }
    #[test]
    fn mapped_ports_publish_through_dnat_and_no_container_opens_them() {
        let config = NetConfig {
            bridge: "hyx3".into(),
            subnet: "10.254.16.0/22".into(),
            rules: vec![EgressRule::allow(Protocol::All, "10.0.0.0/8", None)],
            mapped_ports: Some([61000, 61999]),
            ..NetConfig::default()
        };
        config.validate().unwrap();
        let ruleset = network(config.clone()).ruleset().unwrap();
        let at = |needle: &str| {
            ruleset
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} missing:\n{ruleset}"))
        };
        // Translated on the way in from other hosts and from the host itself, never from the
        // bridge (a container asking for a neighbour's port meets the "container to host" drop).
        let pre = at("type nat hook prerouting priority dstnat");
        let from_bridge =
            at("iifname \"hyx3\" return\n\t\tdnat ip to ip daddr . tcp dport map @published");
        assert!(pre < from_bridge, "{ruleset}");
        assert!(ruleset.contains(
            "type nat hook output priority -100; policy accept;\n\t\tdnat ip to ip daddr . tcp dport map @published"
        ));
        // Forwarded in (only what was translated), and the replies forwarded back out.
        let forward_in =
            at("oifname \"hyx3\" ct status dnat counter accept comment \"mapped port\"");
        let unsolicited = at("counter drop comment \"unsolicited into containers\"");
        assert!(forward_in < unsolicited, "{ruleset}");
        assert!(ruleset.contains(
            "iifname \"hyx3\" ct state established,related accept\n\t\tiifname \"hyx3\" jump egress"
        ));
        // The mapped ports are shut after the container's own exact endpoints (a bound service
        // node may listen in the range) but before the operator's rules, even one that opens
        // the whole network the cells live in.
        let own = at("\n\t\tip saddr vmap @containers\n");
        let shut = at("tcp dport 61000-61999 counter drop comment \"mapped port of an instance\"");
        let operator = at("ip daddr 10.0.0.0/8 counter accept");
        assert!(own < shut && shut < operator, "{ruleset}");
        let rules = config.effective_rules();
        assert_eq!(rules[2].ports.as_deref(), Some("61000-61999"));
        assert_eq!(rules[2].action, Action::Deny);
        assert_eq!(rules[3], config.rules[0]);
        // Without a range nothing is shut, and the empty map stays for a later owner.
        let plain = network(NetConfig::default()).ruleset().unwrap();
        assert!(!plain.contains("mapped port of an instance"));
        assert!(plain.contains("map published"));
        let bad = NetConfig {
            mapped_ports: Some([62000, 61000]),
            ..NetConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("port_range") && err.contains("[61000, 61999]"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn map_port_refuses_what_cannot_be_published_before_touching_the_kernel() {
        let net = network(NetConfig {
            mapped_ports: Some([61000, 61009]),
            ..NetConfig::default()
        });
        let mut attachment = Attachment {
            id: "app/0".into(),
            netns_path: PathBuf::from("/run/netns/none"),
            netns: "none".into(),
            ip: "10.254.0.2".parse().unwrap(),
            gateway: net.gateway(),
            prefix_len: 22,
            veth: "none".into(),
            mapping: None,
            key: "abc".into(),
        };
        let host: Ipv4Addr = "192.0.2.10".parse().unwrap();
        let cases: [(Ipv4Addr, u16, &str); 3] = [
            (
                Ipv4Addr::LOCALHOST,
                61000,
                "advertise the host's own address",
            ),
            (
                Ipv4Addr::UNSPECIFIED,
                61000,
                "advertise the host's own address",
            ),
            (host, 62000, "outside the mapped range [61000, 61009]"),
        ];
        for (ip, port, want) in cases {
            let err = refusal(&net, &mut attachment, ip, port).await;
            assert!(err.contains(want), "{want:?} is not in {err}");
        }
        // A port another container holds is refused, not taken over.
        net.lock().mapped.insert(61003);
        let err = refusal(&net, &mut attachment, host, 61003).await;
        assert!(err.contains("61003 is already published"), "{err}");
        assert!(attachment.mapping.is_none());
        let unmapped = network(NetConfig::default());
        let err = refusal(&unmapped, &mut attachment, host, 61000).await;
        assert!(err.contains("publishes no ports"), "{err}");
    }

    /// Why `net` refuses to publish container port 8080 of `attachment` on `ip:port`.
    async fn refusal(
        net: &Network,
        attachment: &mut Attachment,
        ip: Ipv4Addr,
        port: u16,
    ) -> String {
        let refused = net.map_port(attachment, ip, port, 8080).await;
        refused.unwrap_err().to_string()
    }

    #[test]
    fn bridges_get_a_fixed_local_unicast_mac_of_their_own() {
        let a = bridge_mac("hydrant0");
        assert_eq!(a, bridge_mac("hydrant0"), "the same on every start");
        assert_ne!(a, bridge_mac("hydrant1"));
        assert!(a.starts_with("02:") && a.len() == 17, "{a}");
    }
}
