//! The four backends behind one interface: finding their binaries, starting their service
//! nodes (one shared node for MariaDB, PostgreSQL and RabbitMQ, one `redis-server` per Redis
//! instance), and the per-instance and per-binding admin operations the OSBAPI layer asks for.
//!
//! Invariants: a node is started once however many requests race for it (one lock per node
//! name); a node's ports come from the pool and are recorded before it starts, so a restarted
//! broker brings it back on the ports its credentials name; names on the servers derive from
//! ids the OSBAPI layer has already checked ([`crate::osb::valid_id`]), and secrets are letters
//! and digits, so nothing a platform sends is ever spliced into SQL or a command unchecked.

pub mod mysql;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Offering, Plan};
use crate::node::{self, Node, Sink};
use crate::store::{Binding, Instance, SharedNode, Store};
use crate::{Config, Error};

/// How long one admin command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Found programs, by name.
#[derive(Debug, Clone, Default)]
pub struct Bins(HashMap<&'static str, PathBuf>);

impl Bins {
    /// The program `name`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when it was not found at start.
    pub fn get(&self, name: &str) -> Result<&Path, Error> {
        self.0
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| Error::Unavailable {
                offering: name.to_owned(),
                why: format!("{name} is not installed"),
            })
    }
}

/// Looks for the programs `offering` needs: `Ok` with them, or why it cannot run here (with
/// the Debian package to install).
///
/// # Errors
/// A sentence naming the missing program and its package.
pub fn detect(offering: &str) -> Result<Bins, String> {
    detect_with(offering, find)
}

/// [`detect`] with `find(program, dirs searched first)` in place of the file system.
fn detect_with(
    offering: &str,
    find: impl Fn(&str, &[PathBuf]) -> Option<PathBuf>,
) -> Result<Bins, String> {
    let postgres_dirs = postgres_bin_dirs();
    // (name as used, candidates, extra dirs searched first, package)
    let wanted: Vec<(&'static str, &[&str], Vec<PathBuf>, &str)> = match offering {
        "mysql" => vec![
            (
                "mysqld",
                &["mariadbd", "mysqld"][..],
                vec![],
                "mariadb-server",
            ),
            (
                "install-db",
                &["mariadb-install-db", "mysql_install_db"][..],
                vec![],
                "mariadb-server",
            ),
            (
                "client",
                &["mariadb", "mysql"][..],
                vec![],
                "mariadb-client",
            ),
        ],
        "postgresql" => vec![
            (
                "initdb",
                &["initdb"][..],
                postgres_dirs.clone(),
                "postgresql",
            ),
            (
                "postgres",
                &["postgres"][..],
                postgres_dirs.clone(),
                "postgresql",
            ),
            ("psql", &["psql"][..], postgres_dirs, "postgresql-client"),
        ],
        "redis" => vec![
            ("server", &["redis-server"][..], vec![], "redis-server"),
            ("cli", &["redis-cli"][..], vec![], "redis-tools"),
        ],
        "rabbitmq" => {
            // Debian's /usr/sbin wrappers switch to the rabbitmq user; the real scripts
            // take the environment the broker sets.
            let lib = vec![PathBuf::from("/usr/lib/rabbitmq/bin")];
            vec![
                (
                    "server",
                    &["rabbitmq-server"][..],
                    lib.clone(),
                    "rabbitmq-server",
                ),
                ("ctl", &["rabbitmqctl"][..], lib, "rabbitmq-server"),
                ("epmd", &["epmd"][..], vec![], "erlang-base"),
            ]
        }
        _ => return Err(format!("{offering} is not an offering")),
    };
    let mut bins = Bins::default();
    for (name, candidates, dirs, package) in wanted {
        let found = candidates.iter().find_map(|c| find(c, &dirs));
        match found {
            Some(path) => {
                bins.0.insert(name, path);
            }
            None => {
                return Err(format!(
                    "{} not found (install the Debian package {package})",
                    candidates.join(" or ")
                ));
            }
        }
    }
    Ok(bins)
}

/// The configured offerings that can run here (`detect` finds their programs), with their
/// programs; each one left out is logged once, naming the package to install.
pub fn available(
    wanted: &[String],
    detect: impl Fn(&str) -> Result<Bins, String>,
) -> (HashMap<&'static str, Bins>, Vec<&'static Offering>) {
    let mut bins = HashMap::new();
    let mut offerings = Vec::new();
    for o in crate::catalog::OFFERINGS {
        if !wanted.iter().any(|n| n == o.name) {
            continue;
        }
        match detect(o.name) {
            Ok(b) => {
                bins.insert(o.name, b);
                offerings.push(o);
            }
            Err(why) => tracing::warn!("offering {} is absent from the catalog: {why}", o.name),
        }
    }
    (bins, offerings)
}

fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, d)| d).collect()
}

fn find(name: &str, first: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    first
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What instance-level gauges a backend reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Open client connections.
    pub connections: f64,
    /// Memory used, bytes (Redis).
    pub memory_bytes: Option<f64>,
    /// Storage used, bytes (MariaDB, PostgreSQL: database size; Redis: dataset in memory).
    pub storage_bytes: Option<f64>,
    /// A running total of operations, for a rate (Redis commands, PostgreSQL transactions).
    pub ops_total: Option<f64>,
    /// Messages waiting in queues (RabbitMQ).
    pub queue_depth: Option<f64>,
    /// Queues (RabbitMQ).
    pub queues: Option<f64>,
}

/// A started node and what its admin commands need.
#[derive(Debug, Clone)]
pub struct Running {
    /// The supervised process.
    pub node: Arc<Node>,
    /// Its ports, in the backend's order.
    pub ports: Vec<u16>,
    /// Its admin secret.
    pub secret: String,
    /// Its directory.
    pub dir: PathBuf,
}

type Slot = Arc<tokio::sync::Mutex<Option<Running>>>;

/// Everything the backends share: config, programs, the node table, the port pool.
#[derive(Debug)]
pub struct Ctx {
    /// The broker's config.
    pub config: Config,
    /// Who nodes run as (when root).
    pub user: Option<(u32, u32)>,
    /// The OS user the broker's own admin commands run as (MariaDB's socket-auth root).
    pub admin_user: String,
    /// Programs of the offerings that can run here.
    pub bins: HashMap<&'static str, Bins>,
    /// Where nodes' logs and counters go.
    pub sink: Sink,
    /// Durable state.
    pub store: Arc<Store>,
    /// Fires at broker shutdown.
    pub shutdown: CancellationToken,
    /// The HTTP client of admin APIs (RabbitMQ's management API).
    pub http: reqwest::Client,
    /// Where node directories live (see [`nodes_root`]).
    pub nodes_root: PathBuf,
    /// Which instances are over their storage quota.
    pub quotas: crate::quota::Quotas,
    /// The containers nodes run in (`isolation = "container"`), or `None`: child processes.
    pub contain: Option<node::Contain>,
    /// This broker's host-wide claims on node ports.
    pub claims: crate::claims::Claims,
    nodes: Mutex<HashMap<String, Slot>>,
    reserved: Mutex<HashSet<u16>>,
}

impl Ctx {
    /// A context over `store`.
    #[must_use]
    pub fn new(
        config: Config,
        user: Option<(u32, u32)>,
        bins: HashMap<&'static str, Bins>,
        sink: Sink,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> Self {
        let nodes_root = nodes_root(&config.data_dir, user);
        let admin_user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| "root".to_owned(), |u| u.name);
        Self {
            config,
            user,
            admin_user,
            bins,
            sink,
            store,
            shutdown,
            http: reqwest::Client::builder()
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            nodes_root,
            quotas: crate::quota::Quotas::default(),
            contain: None,
            claims: crate::claims::Claims::open(crate::claims::default_dir()),
            nodes: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
        }
    }

    /// A node's memory limit, `bytes`, when it gets one: always in a container, else with
    /// `memory_cgroups`.
    #[must_use]
    pub fn memory_limit(&self, bytes: u64) -> Option<u64> {
        (self.contain.is_some() || self.config.memory_cgroups).then_some(bytes)
    }

    /// The programs of `offering`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when it cannot run here.
    pub fn bins(&self, offering: &str) -> Result<&Bins, Error> {
        self.bins.get(offering).ok_or_else(|| Error::Unavailable {
            offering: offering.to_owned(),
            why: "its binaries were not found at start".to_owned(),
        })
    }

    /// Runs `offering`'s client program `tool` as the broker itself (an admin command against
    /// a running node, never one that writes the node's files), bounded by
    /// [`COMMAND_TIMEOUT`]; the strings in `redact` never reach an error.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the program is missing, else what [`node::exec`] reports.
    pub async fn admin_command(
        &self,
        offering: &str,
        tool: &str,
        args: &[&str],
        env: &[(&str, &str)],
        redact: &[&str],
    ) -> Result<String, Error> {
        let program = self.bins(offering)?.get(tool)?;
        node::exec(program, args, env, None, COMMAND_TIMEOUT, redact).await
    }

    /// A node's directory: under [`nodes_root`].
    #[must_use]
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.nodes_root.join(name)
    }

    /// `n` free ports from the pool: not held by any instance or node, not reserved by a
    /// start in flight, bindable now on `bind_address` and loopback, and claimed host-wide
    /// ([`crate::claims`]) so no other broker here hands them out meanwhile.
    ///
    /// # Errors
    /// [`Error::PortsExhausted`].
    pub fn take_ports(&self, n: usize) -> Result<Vec<u16>, Error> {
        let used: HashSet<u16> = self.store.ports_in_use()?.into_iter().collect();
        let ip: IpAddr = self
            .config
            .bind_address
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        // RabbitMQ's distribution and epmd listen on loopback whatever `bind_address` is: a
        // port must be free there too.
        let loopback = if ip.is_ipv6() {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::from([127, 0, 0, 1])
        };
        let mut reserved = hydrant_runtime::lock(&self.reserved);
        let mut out = Vec::with_capacity(n);
        for port in self.config.ports.first..=self.config.ports.last {
            if out.len() == n {
                break;
            }
            if used.contains(&port) || reserved.contains(&port) {
                continue;
            }
            let free = |ip| TcpListener::bind(SocketAddr::new(ip, port)).is_ok();
            // The claim last: another broker on this host may have picked the port a moment
            // ago for a node that is not listening yet.
            if free(ip) && (ip == loopback || free(loopback)) && self.claims.claim(port) {
                out.push(port);
            }
        }
        if out.len() < n {
            return Err(Error::PortsExhausted {
                first: self.config.ports.first,
                last: self.config.ports.last,
            });
        }
        reserved.extend(&out);
        Ok(out)
    }

    /// Releases ports reserved by [`Ctx::take_ports`] once they are recorded (or abandoned).
    pub fn release_ports(&self, ports: &[u16]) {
        let mut reserved = hydrant_runtime::lock(&self.reserved);
        for p in ports {
            reserved.remove(p);
        }
    }

    fn slot(&self, name: &str) -> Slot {
        Arc::clone(
            hydrant_runtime::lock(&self.nodes)
                .entry(name.to_owned())
                .or_default(),
        )
    }

    /// The running node `name`, if it runs.
    pub async fn running(&self, name: &str) -> Option<Running> {
        let slot = hydrant_runtime::lock(&self.nodes).get(name).cloned()?;
        slot.lock().await.clone()
    }

    /// Every running node, by name, with its pid (`/v1/nodes`).
    pub async fn node_pids(&self) -> Vec<(String, u32, Vec<u16>)> {
        let slots: Vec<Slot> = hydrant_runtime::lock(&self.nodes)
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for slot in slots {
            if let Some(r) = slot.lock().await.as_ref() {
                out.push((r.node.name.clone(), r.node.pid(), r.ports.clone()));
            }
        }
        out.sort();
        out
    }

    /// The shared node of `offering` (MariaDB, PostgreSQL, RabbitMQ), started on first use.
    ///
    /// # Errors
    /// The node could not be set up or did not come up.
    pub async fn shared(&self, offering: &str) -> Result<Running, Error> {
        let slot = self.slot(offering);
        let mut guard = slot.lock().await;
        if let Some(r) = guard.as_ref() {
            return Ok(r.clone());
        }
        let row = match self.store.node(offering)? {
            Some(row) => row,
            None => {
                let count = match offering {
                    "rabbitmq" => 4,
                    _ => 1,
                };
                let ports = self.take_ports(count)?;
                let row = SharedNode {
                    offering: offering.to_owned(),
                    ports: ports.clone(),
                    secret: node::secret(24),
                };
                let put = self.store.put_node(&row);
                self.release_ports(&ports);
                put?;
                row
            }
        };
        let dir = self.node_dir(offering);
        node::make_dir(&dir, self.user)?;
        let began = std::time::Instant::now();
        let spec = match offering {
            "mysql" => mysql::prepare(self, &row, &dir).await?,
            "postgresql" => postgres::prepare(self, &row, &dir).await?,
            "rabbitmq" => rabbitmq::prepare(self, &row, &dir)?,
            other => {
                return Err(Error::Unavailable {
                    offering: other.to_owned(),
                    why: "has no shared node".to_owned(),
                });
            }
        };
        let node = Node::spawn(spec, self.sink.clone(), &self.shutdown);
        let running = Running {
            node: Arc::clone(&node),
            ports: row.ports.clone(),
            secret: row.secret.clone(),
            dir,
        };
        let ready = match offering {
            "mysql" => mysql::ready(self, &running).await,
            "postgresql" => postgres::ready(self, &running).await,
            _ => rabbitmq::ready(self, &running).await,
        };
        if let Err(e) = ready {
            node.stop().await;
            return Err(e);
        }
        let took = began.elapsed();
        self.sink
            .registry
            .gauge(
                "broker.node_start_seconds",
                "How long the last start of a shared service node took",
                "seconds",
                &[("node", offering_tag(offering))],
            )
            .set(took.as_secs_f64());
        tracing::info!(node = offering, ports = ?row.ports, took_ms = took.as_millis() as u64, "shared service node ready");
        *guard = Some(running.clone());
        Ok(running)
    }

    /// Starts (or finds) Redis instance `instance`'s own node.
    ///
    /// # Errors
    /// The node could not be set up or did not come up.
    pub async fn redis_node(&self, instance: &Instance, plan: &Plan) -> Result<Running, Error> {
        let name = redis::node_name(&instance.id);
        let slot = self.slot(&name);
        let mut guard = slot.lock().await;
        if let Some(r) = guard.as_ref() {
            return Ok(r.clone());
        }
        let dir = self.node_dir(&name);
        node::make_dir(&dir, self.user)?;
        let spec = redis::prepare(self, instance, plan, &dir)?;
        let node = Node::spawn(spec, self.sink.clone(), &self.shutdown);
        let running = Running {
            node: Arc::clone(&node),
            ports: vec![instance.port],
            secret: instance.secret.clone(),
            dir,
        };
        if let Err(e) = redis::ready(self, &running).await {
            node.stop().await;
            return Err(e);
        }
        // Redis keeps ACL users in memory only: every (re)start gets the bindings' users again.
        tokio::spawn(redis::reapply_users(
            Arc::clone(&self.store),
            self.bins("redis")?.clone(),
            redis::admin_host(&self.config.bind_address).to_owned(),
            running.clone(),
            instance.id.clone(),
        ));
        *guard = Some(running.clone());
        Ok(running)
    }

    /// Stops and forgets node `name` (a deprovisioned Redis instance).
    pub async fn stop_node(&self, name: &str) {
        let slot = hydrant_runtime::lock(&self.nodes).remove(name);
        if let Some(slot) = slot
            && let Some(r) = slot.lock().await.take()
        {
            r.node.stop().await;
        }
    }

    /// Stops every node (broker shutdown); the shared ones' helpers too (RabbitMQ's epmd).
    pub async fn stop_all(&self) {
        let slots: Vec<(String, Slot)> = hydrant_runtime::lock(&self.nodes).drain().collect();
        for (name, slot) in slots {
            if let Some(r) = slot.lock().await.take() {
                r.node.stop().await;
                if name == "rabbitmq" {
                    rabbitmq::stop_epmd(self, &r).await;
                }
            }
        }
    }
}

/// Where service nodes keep their directories: `data_dir/nodes`, unless nodes run as another
/// user (`run_as`, the broker being root) who cannot reach it because a directory above
/// `data_dir` is closed to them (the micro cloud's data directory is 0700): then
/// `/var/lib/hydrant/broker-nodes/<hash of data_dir>`, the same place at every start.
#[must_use]
pub fn nodes_root(data_dir: &Path, user: Option<(u32, u32)>) -> PathBuf {
    let inside = data_dir.join("nodes");
    let Some(user) = user else {
        return inside;
    };
    match closed_ancestor(data_dir, user) {
        None => inside,
        Some(closed) => {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
            let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            let outside = PathBuf::from("/var/lib/hydrant/broker-nodes").join(hex);
            tracing::info!(
                "service nodes keep their data in {}: {} is closed to the user they run as",
                outside.display(),
                closed.display()
            );
            outside
        }
    }
}

/// The first directory above `dir` (not `dir` itself: the broker opens that one) that `user`
/// may not search.
fn closed_ancestor(dir: &Path, (uid, gid): (u32, u32)) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    dir.ancestors().skip(1).find_map(|d| {
        let meta = std::fs::metadata(d).ok()?;
        let mode = meta.mode();
        let searchable = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        (!searchable).then(|| d.to_path_buf())
    })
}

/// The offering tag of a node name.
fn offering_tag(name: &str) -> &'static str {
    crate::catalog::OFFERINGS
        .iter()
        .map(|o| o.name)
        .find(|o| name.starts_with(o))
        .unwrap_or("other")
}

/// The name of an instance's database (MariaDB, PostgreSQL): `cf_` and the id with `-` as `_`.
#[must_use]
pub fn database_name(instance_id: &str) -> String {
    format!("cf_{}", instance_id.replace('-', "_"))
}

/// A SQL database's credentials for binding `b`, the keys both MariaDB's and PostgreSQL's
/// brokers hand out: `scheme://u:p@host:port/db{uri_query}` and its JDBC twin.
fn sql_credentials(
    (scheme, jdbc, uri_query): (&str, &str, &str),
    (host, port): (&str, u16),
    i: &Instance,
    b: &Binding,
) -> serde_json::Map<String, Value> {
    let db = database_name(&i.id);
    let (u, p) = (&b.username, &b.password);
    let mut c = serde_json::Map::new();
    c.insert("hostname".to_owned(), host.into());
    c.insert("port".to_owned(), port.into());
    c.insert("name".to_owned(), db.as_str().into());
    c.insert("username".to_owned(), u.as_str().into());
    c.insert("password".to_owned(), p.as_str().into());
    let uri = format!("{scheme}://{u}:{p}@{host}:{port}/{db}{uri_query}");
    c.insert("uri".to_owned(), uri.into());
    let jdbc = format!("jdbc:{jdbc}://{host}:{port}/{db}?user={u}&password={p}");
    c.insert("jdbcUrl".to_owned(), jdbc.into());
    c
}

impl Ctx {
    /// Waits up to the configured start timeout for `probe` to succeed on node `r`.
    ///
    /// # Errors
    /// [`Error::NodeStart`] with the probe's last error or the node's last output.
    async fn wait_ready<F, Fut>(&self, r: &Running, probe: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        let timeout = Duration::from_secs(self.config.start_timeout_secs);
        node::wait_ready(&r.node, timeout, probe).await
    }
}

/// Makes instance `i` on its backend.
///
/// # Errors
/// What the backend reported.
pub async fn provision(ctx: &Ctx, o: &Offering, plan: &Plan, i: &Instance) -> Result<(), Error> {
    match o.name {
        "mysql" => mysql::provision(ctx, i).await,
        "postgresql" => postgres::provision(ctx, plan, i).await,
        "redis" => ctx.redis_node(i, plan).await.map(drop),
        _ => rabbitmq::provision(ctx, plan, i).await,
    }
}

/// Removes instance `i` and every binding of it from its backend.
///
/// # Errors
/// What the backend reported.
pub async fn deprovision(
    ctx: &Ctx,
    o: &Offering,
    i: &Instance,
    bindings: &[Binding],
) -> Result<(), Error> {
    match o.name {
        "mysql" => mysql::deprovision(ctx, i, bindings).await,
        "postgresql" => postgres::deprovision(ctx, i, bindings).await,
        "redis" => {
            let name = redis::node_name(&i.id);
            ctx.stop_node(&name).await;
            node::cgroup::remove(&name);
            let dir = ctx.node_dir(&name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("cannot remove", dir, e)),
            }
        }
        _ => rabbitmq::deprovision(ctx, i, bindings).await,
    }
}

/// Makes binding `b`'s user on the backend.
///
/// # Errors
/// What the backend reported.
pub async fn bind(
    ctx: &Ctx,
    o: &Offering,
    plan: &Plan,
    i: &Instance,
    b: &Binding,
) -> Result<(), Error> {
    match o.name {
        "mysql" => mysql::bind(ctx, plan, i, b).await,
        "postgresql" => postgres::bind(ctx, i, b).await,
        "redis" => redis::bind(ctx, &ctx.redis_node(i, plan).await?, b).await,
        _ => rabbitmq::bind(ctx, i, b).await,
    }
}

/// Drops binding `b`'s user on the backend (its open connections with it).
///
/// # Errors
/// What the backend reported.
pub async fn unbind(
    ctx: &Ctx,
    o: &Offering,
    plan: &Plan,
    i: &Instance,
    b: &Binding,
) -> Result<(), Error> {
    match o.name {
        "mysql" => mysql::unbind(ctx, b).await,
        "postgresql" => postgres::unbind(ctx, i, b).await,
        "redis" => redis::unbind(ctx, &ctx.redis_node(i, plan).await?, b).await,
        _ => rabbitmq::unbind(ctx, b).await,
    }
}

/// Binding `b`'s credentials, as the bind response carries them.
///
/// # Errors
/// The node's ports are unknown (it was never started).
pub fn credentials(ctx: &Ctx, o: &Offering, i: &Instance, b: &Binding) -> Result<Value, Error> {
    let host = ctx.config.host();
    let shared_port = |offering: &str| -> Result<Vec<u16>, Error> {
        ctx.store
            .node(offering)?
            .map(|n| n.ports)
            .filter(|p| p.len() >= 2 || (offering != "rabbitmq" && !p.is_empty()))
            .ok_or_else(|| Error::NodeStart {
                node: offering.to_owned(),
                detail: "has never started".to_owned(),
            })
    };
    Ok(match o.name {
        "mysql" => mysql::credentials(
            host,
            shared_port("mysql")?.first().copied().unwrap_or(0),
            i,
            b,
        ),
        "postgresql" => postgres::credentials(
            host,
            shared_port("postgresql")?.first().copied().unwrap_or(0),
            i,
            b,
        ),
        "redis" => redis::credentials(host, i.port, b),
        _ => {
            let ports = shared_port("rabbitmq")?;
            let port = |n: usize| ports.get(n).copied().unwrap_or(0);
            rabbitmq::credentials(host, port(0), port(1), i, b)
        }
    })
}

/// Instance `i`'s gauges now.
///
/// # Errors
/// The node did not answer.
pub async fn usage(ctx: &Ctx, o: &Offering, i: &Instance) -> Result<Usage, Error> {
    match o.name {
        "mysql" => mysql::usage(ctx, i).await,
        "postgresql" => postgres::usage(ctx, i).await,
        "redis" => {
            let r =
                ctx.running(&redis::node_name(&i.id))
                    .await
                    .ok_or_else(|| Error::NodeStart {
                        node: redis::node_name(&i.id),
                        detail: "is not running".to_owned(),
                    })?;
            redis::usage(ctx, &r).await
        }
        _ => rabbitmq::usage(ctx, i).await,
    }
}

/// Moves instance `i` from plan `from` to `to`: `Ok(Err(reason))` when the change is unsafe
/// (current use exceeds the new plan), with the reason a user reads.
///
/// # Errors
/// The node did not answer.
pub async fn resize(
    ctx: &Ctx,
    o: &Offering,
    i: &Instance,
    to: &Plan,
) -> Result<Result<(), String>, Error> {
    let usage = usage(ctx, o, i).await?;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    match o.name {
        "mysql" | "postgresql" => {
            let used = usage.storage_bytes.unwrap_or(0.0);
            if mib(used) > to.storage_mb as f64 {
                return Ok(Err(format!(
                    "the instance stores {:.1} MiB and the {} plan allows {} MiB; delete data first",
                    mib(used),
                    to.name,
                    to.storage_mb
                )));
            }
            if o.name == "postgresql" {
                postgres::resize(ctx, i, to).await?;
            } else {
                mysql::resize(ctx, i, to).await?;
            }
        }
        "redis" => {
            let used = usage.memory_bytes.unwrap_or(0.0);
            if mib(used) > to.memory_mb as f64 {
                return Ok(Err(format!(
                    "Redis holds {:.1} MiB and the {} plan allows {} MiB; delete keys first",
                    mib(used),
                    to.name,
                    to.memory_mb
                )));
            }
            let r = ctx.redis_node(i, to).await?;
            redis::resize(ctx, &r, i, to).await?;
            if ctx.contain.is_some() {
                // A container's limits are fixed when it is made: the node starts again in one
                // of the new plan's size (its append-only file keeps the data).
                ctx.stop_node(&r.node.name).await;
                let r = ctx.redis_node(i, to).await?;
                // Its bindings work again before the plan change is answered (the users the
                // start re-applies on its own may come a moment later).
                for b in ctx.store.bindings_of(&i.id)? {
                    redis::bind(ctx, &r, &b).await?;
                }
            }
        }
        _ => {
            if usage.connections > f64::from(to.connections)
                || usage.queues.unwrap_or(0.0) > f64::from(to.queues)
            {
                return Ok(Err(format!(
                    "the vhost has {} connections and {} queues; the {} plan allows {} and {}",
                    usage.connections,
                    usage.queues.unwrap_or(0.0),
                    to.name,
                    to.connections,
                    to.queues
                )));
            }
            rabbitmq::limits(ctx, i, to).await?;
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_live_under_the_data_dir_unless_their_user_cannot_reach_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let top = tempfile::tempdir().unwrap();
        let data = top.path().join("private/broker");
        std::fs::create_dir_all(&data).unwrap();
        let nobody = (65_534, 65_534);
        assert_eq!(nodes_root(&data, None), data.join("nodes"));
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            top.path().join("private"),
            std::fs::Permissions::from_mode(0o711),
        )
        .unwrap();
        if closed_ancestor(top.path(), nobody).is_none() {
            assert_eq!(nodes_root(&data, Some(nobody)), data.join("nodes"));
        }
        std::fs::set_permissions(
            top.path().join("private"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        assert_eq!(
            closed_ancestor(&data, nobody),
            Some(top.path().join("private"))
        );
        let outside = nodes_root(&data, Some(nobody));
        assert!(
            outside.starts_with("/var/lib/hydrant/broker-nodes/"),
            "{}",
            outside.display()
        );
        assert_eq!(
            outside,
            nodes_root(&data, Some(nobody)),
            "the same place at every start"
        );
    }

    #[test]
    fn a_missing_program_names_its_package() {
        let without_cli = |name: &str, _: &[PathBuf]| {
            (name != "redis-cli").then(|| PathBuf::from("/usr/bin").join(name))
        };
        assert_eq!(
            detect_with("redis", without_cli).unwrap_err(),
            "redis-cli not found (install the Debian package redis-tools)"
        );
        let nothing = |_: &str, _: &[PathBuf]| None;
        assert_eq!(
            detect_with("mysql", nothing).unwrap_err(),
            "mariadbd or mysqld not found (install the Debian package mariadb-server)"
        );
        let everything = |name: &str, _: &[PathBuf]| Some(PathBuf::from("/x").join(name));
        let bins = detect_with("rabbitmq", everything).unwrap();
        assert_eq!(bins.get("ctl").unwrap(), Path::new("/x/rabbitmqctl"));
    }

    #[test]
    fn an_offering_that_cannot_run_is_absent_and_the_others_stay() {
        let wanted: Vec<String> = ["mysql", "redis", "rabbitmq"].map(str::to_owned).to_vec();
        let (bins, offerings) = available(&wanted, |name| {
            if name == "rabbitmq" {
                Err("rabbitmq-server not found".to_owned())
            } else {
                Ok(Bins::default())
            }
        });
        let names: Vec<&str> = offerings.iter().map(|o| o.name).collect();
        assert_eq!(names, ["mysql", "redis"], "postgresql was not asked for");
        assert!(!bins.contains_key("rabbitmq"));
        let catalog = crate::catalog::body(&offerings);
        assert_eq!(catalog["services"].as_array().unwrap().len(), 2);
    }
}
