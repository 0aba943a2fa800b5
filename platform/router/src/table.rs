//! The route table: which instances serve which `host[/path]`, and how one is picked.
//!
//! Flow: bus registrations and static routes → [`RouteTable`] (owned by the one routes task,
//! no locks) → an immutable [`Snapshot`] published through [`Table`] → each client connection
//! keeps a [`Reader`] that re-reads the snapshot only when the table's version moved, so the
//! hot path is one relaxed load and a hash lookup on a pre-lowercased key.
//!
//! Invariants:
//! - An [`Endpoint`] (one instance: its address, identity, in-flight count, failure mark and
//!   idle connections, one list per worker thread) lives as long as its registration does not change; snapshot rebuilds
//!   reuse it, so keep-alive pools and least-connection counts survive table changes.
//! - The table is bounded: at most `max_routes` keys and `max_instances_per_route` instances
//!   per key; what does not fit is refused and counted by the caller.
//! - Expiry is driven by the caller's clock (`now`), so it can be paused while the bus is down.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use http::HeaderValue;
use hydrant_bus::messages::RegistryMessage;
use tokio::time::Instant;

use crate::backend::Sender;
use crate::config::{LoadBalancing, StaticRoute};
use crate::metrics::{AppSeries, Metrics};

/// Longest host name (RFC 1035) plus room for a trailing dot.
pub(crate) const MAX_HOST_LEN: usize = 255;

/// A route's key: the lowercased host without port, and the lowercased path without trailing
/// `/` (empty for the whole host).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RouteKey {
    pub(crate) host: Box<str>,
    pub(crate) path: Box<str>,
}

impl RouteKey {
    /// Reads `host`, `host:port`, `host/path` or `http://host/path`; `None` when it is not a
    /// route (empty or oversized host, odd characters, a query string).
    pub(crate) fn parse(uri: &str) -> Option<Self> {
        let uri = uri.trim();
        let uri = uri
            .strip_prefix("http://")
            .or_else(|| uri.strip_prefix("https://"))
            .unwrap_or(uri);
        let (host, path) = match uri.find('/') {
            Some(at) => uri.split_at(at),
            None => (uri, ""),
        };
        let host = strip_port(host.as_bytes())?;
        if host.is_empty()
            || host.len() > MAX_HOST_LEN
            || !host.iter().all(|&b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
            })
        {
            return None;
        }
        if path.len() > 4096 || path.bytes().any(|b| b <= b' ' || b == b'?' || b == 0x7f) {
            return None;
        }
        let host = std::str::from_utf8(host).ok()?.to_ascii_lowercase();
        let path = path.trim_end_matches('/').to_ascii_lowercase();
        Some(Self {
            host: host.into(),
            path: path.into(),
        })
    }
}

/// The host part of a `Host` header value or authority: without `:port`, IPv6 brackets kept.
/// `None` for a malformed bracket.
pub(crate) fn strip_port(host: &[u8]) -> Option<&[u8]> {
    if host.first() == Some(&b'[') {
        let end = host.iter().position(|&b| b == b']')?;
        return Some(&host[..=end]);
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => Some(&host[..colon]),
        None => Some(host),
    }
}

/// Lowercases the host of a `Host` value into `buf` without its port, so the lookup allocates
/// nothing. `None` when it is empty, too long or not ASCII.
pub(crate) fn request_host<'b>(raw: &[u8], buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    let host = strip_port(raw)?;
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    let out = &mut buf[..host.len()];
    for (o, &b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// One instance behind a route.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// `ip:port`, for the access log.
    pub(crate) addr_text: Box<str>,
    pub(crate) app_id: Option<Box<str>>,
    pub(crate) index: Option<Box<str>>,
    /// The instance guid, or `ip:port` when the registration has none (as gorouter does).
    pub(crate) instance_id: Box<str>,
    pub(crate) tags: Box<[(String, String)]>,
    pub(crate) load_balancing: Option<LoadBalancing>,
    pub(crate) app_header: Option<HeaderValue>,
    pub(crate) index_header: Option<HeaderValue>,
    pub(crate) instance_header: Option<HeaderValue>,
    /// `APP_GUID:INDEX`, the value a client sends in `X-Cf-App-Instance` to pin this instance.
    pub(crate) app_instance: Option<Box<str>>,
    pub(crate) app_instance_header: Option<HeaderValue>,
    in_flight: AtomicUsize,
    /// The app's `/metrics` series, looked up once per instance rather than per request.
    app_series: OnceLock<Option<AppSeries>>,
    /// Milliseconds on the router clock when the last failure happened, plus one; 0 = none.
    failed_at: AtomicU64,
    /// Idle keep-alive connections, one list per worker: a connection's task runs on the
    /// worker that dialled it, so only that worker may reuse it without a cross-thread hop.
    idle: Box<[Mutex<Vec<Sender>>]>,
}

impl Endpoint {
    pub(crate) fn new(
        addr: SocketAddr,
        app_id: Option<&str>,
        instance_id: Option<&str>,
        index: Option<&str>,
        tags: Vec<(String, String)>,
        load_balancing: Option<LoadBalancing>,
        workers: usize,
    ) -> Self {
        let addr_text: Box<str> = addr.to_string().into();
        let header = |v: &str| HeaderValue::from_str(v).ok();
        let app_id: Option<Box<str>> = app_id.filter(|a| !a.is_empty()).map(Into::into);
        let index: Option<Box<str>> = index.filter(|i| !i.is_empty()).map(Into::into);
        let instance_id: Box<str> = instance_id
            .filter(|i| !i.is_empty())
            .map_or_else(|| addr_text.clone(), Into::into);
        let app_instance: Option<Box<str>> = app_id
            .as_deref()
            .map(|app| format!("{app}:{}", index.as_deref().unwrap_or("0")).into());
        Self {
            addr,
            app_header: app_id.as_deref().and_then(header),
            index_header: index.as_deref().and_then(header),
            instance_header: header(&instance_id),
            app_instance_header: app_instance.as_deref().and_then(header),
            addr_text,
            app_id,
            index,
            instance_id,
            tags: tags.into_boxed_slice(),
            load_balancing,
            app_instance,
            in_flight: AtomicUsize::new(0),
            app_series: OnceLock::new(),
            failed_at: AtomicU64::new(0),
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    fn from_registration(addr: SocketAddr, message: &RegistryMessage, workers: usize) -> Self {
        Self::new(
            addr,
            message.app.as_deref(),
            message.private_instance_id.as_deref(),
            message.private_instance_index.as_deref(),
            message
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            message
                .options
                .as_ref()
                .and_then(|o| o.loadbalancing.as_deref())
                .and_then(LoadBalancing::parse),
            workers,
        )
    }

    /// The series of this instance's app (`None` for a route without an app).
    pub(crate) fn app_series(&self, metrics: &Metrics) -> Option<AppSeries> {
        self.app_series.get_or_init(|| metrics.app(self)).clone()
    }

    /// Whether a registration describes this same instance (so refreshing keeps it).
    fn same_instance(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.app_id == other.app_id
            && self.index == other.index
            && self.instance_id == other.instance_id
            && self.tags == other.tags
            && self.load_balancing == other.load_balancing
    }

    /// Worker `worker`'s idle connections to this instance (`None` for a worker it does not know,
    /// which then simply does not pool).
    pub(crate) fn idle(&self, worker: usize) -> Option<&Mutex<Vec<Sender>>> {
        self.idle.get(worker)
    }

    /// Requests in flight to this instance right now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard drops.
    pub(crate) fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Marks the instance unreachable as of `now_ms` (router clock).
    pub(crate) fn mark_failed(&self, now_ms: u64) {
        self.failed_at
            .store(now_ms.saturating_add(1), Ordering::Relaxed);
    }

    /// Forgets a failure mark after the instance answered again.
    pub(crate) fn mark_healthy(&self) {
        // Load first: a healthy instance's cache line stays shared across cores.
        if self.failed_at.load(Ordering::Relaxed) != 0 {
            self.failed_at.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the instance is still skipped at `now_ms` after a failure.
    pub(crate) fn is_ejected(&self, now_ms: u64, eject_ms: u64) -> bool {
        let at = self.failed_at.load(Ordering::Relaxed);
        at != 0 && now_ms.saturating_add(1) < at.saturating_add(eject_ms)
    }
}

/// One request in flight to an [`Endpoint`]; least-connection reads the count.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The instances of one route and how to choose among them.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) endpoints: Box<[Arc<Endpoint>]>,
    pub(crate) load_balancing: LoadBalancing,
    next: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>, load_balancing: LoadBalancing) -> Self {
        // Start round-robin at a random place so routers restarting together do not all send
        // their first requests to instance 0.
        let start = if endpoints.len() > 1 {
            fastrand::usize(..endpoints.len())
        } else {
            0
        };
        Self {
            endpoints: endpoints.into_boxed_slice(),
            load_balancing,
            next: AtomicUsize::new(start),
        }
    }

    /// Picks an instance not in `tried`, preferring ones not ejected at `now_ms`; when every
    /// untried one is ejected it picks among those (fail open). `None` when all were tried.
    pub(crate) fn select(&self, tried: &[usize], now_ms: u64, eject_ms: u64) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 || tried.len() >= n {
            return None;
        }
        let usable = |i: &usize| !tried.contains(i);
        match self.load_balancing {
            LoadBalancing::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                let mut fallback = None;
                for i in (0..n).map(|k| (start + k) % n).filter(usable) {
                    if !self.endpoints[i].is_ejected(now_ms, eject_ms) {
                        return Some(i);
                    }
                    fallback.get_or_insert(i);
                }
                fallback
            }
            LoadBalancing::LeastConnection => {
                let start = if n > 1 { fastrand::usize(..n) } else { 0 };
                let mut best: Option<(bool, usize, usize)> = None;
                for i in (0..n).map(|k| (start + k) % n).filter(usable) {
                    let endpoint = &self.endpoints[i];
                    // Rank: not ejected first, then fewest in flight; the random start breaks
                    // ties.
                    let rank = (
                        endpoint.is_ejected(now_ms, eject_ms),
                        endpoint.in_flight(),
                        i,
                    );
                    if best.is_none_or(|b| (rank.0, rank.1) < (b.0, b.1)) {
                        best = Some(rank);
                    }
                }
                best.map(|(_, _, i)| i)
            }
        }
    }

    /// The instance a client pinned with `X-Cf-App-Instance: APP_GUID:INDEX`.
    pub(crate) fn find_instance(&self, app_instance: &str) -> Option<usize> {
        self.endpoints
            .iter()
            .position(|e| e.app_instance.as_deref() == Some(app_instance))
    }
}

/// One path of a host.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) path: Box<str>,
    pub(crate) pool: Arc<Pool>,
}

/// An immutable view of the whole table: host → its routes, longest path first.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    hosts: HashMap<Box<str>, Box<[Route]>>,
}

impl Snapshot {
    /// The route for a lowercased host and a request path: the longest registered path that is
    /// the request path or a whole-segment prefix of it (`/api` matches `/api/x`, not `/apix`).
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        let routes = self.hosts.get(host)?;
        routes.iter().find(|route| path_matches(&route.path, path))
    }

    /// Number of hosts.
    #[cfg(test)]
    pub(crate) fn host_count(&self) -> usize {
        self.hosts.len()
    }
}

fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let (p, r) = (prefix.as_bytes(), path.as_bytes());
    r.len() >= p.len()
        && r[..p.len()].eq_ignore_ascii_case(p)
        && (r.len() == p.len() || r[p.len()] == b'/')
}

/// The published table: a snapshot behind a lock that only the routes task writes, plus a
/// version so readers skip the lock when nothing changed.
#[derive(Debug, Default)]
pub(crate) struct Table {
    version: AtomicU64,
    current: RwLock<Arc<Snapshot>>,
}

impl Table {
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        self.version.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn load(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn reader(self: &Arc<Self>) -> Reader {
        let version = self.version.load(Ordering::Acquire);
        Reader {
            table: Arc::clone(self),
            version,
            snapshot: self.load(),
        }
    }
}

/// A connection's cached view of the [`Table`].
#[derive(Debug)]
pub(crate) struct Reader {
    table: Arc<Table>,
    version: u64,
    snapshot: Arc<Snapshot>,
}

impl Reader {
    /// The latest snapshot; takes the lock only when the table changed since the last call.
    pub(crate) fn current(&mut self) -> &Arc<Snapshot> {
        let version = self.table.version.load(Ordering::Acquire);
        if version != self.version {
            self.snapshot = self.table.load();
            self.version = version;
        }
        &self.snapshot
    }
}

/// Why a registration (or part of one) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No usable `host`/`port`, or no URIs.
    InvalidRegistration,
    /// One URI is not a route.
    InvalidUri,
    /// `max_routes` reached.
    TableFull,
    /// `max_instances_per_route` reached.
    RouteFull,
}

impl Refused {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::InvalidRegistration => "invalid_registration",
            Self::InvalidUri => "invalid_uri",
            Self::TableFull => "table_full",
            Self::RouteFull => "route_full",
        }
    }
}

/// What a register or unregister did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The set of instances changed: a new snapshot is due.
    pub(crate) changed: bool,
    /// Parts refused, one entry per URI (or one for the whole message).
    pub(crate) refused: Vec<Refused>,
}

#[derive(Debug)]
struct Slot {
    endpoint: Arc<Endpoint>,
    updated: Instant,
    /// `None` for static routes: they never expire.
    ttl: Option<Duration>,
}

#[derive(Debug, Default)]
struct Entry {
    slots: Vec<Slot>,
    is_static: bool,
    load_balancing: Option<LoadBalancing>,
    /// When the last instance left; the route answers 503 until `empty_ttl` after it.
    emptied: Option<Instant>,
}

/// Limits and defaults of a [`RouteTable`].
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) default_load_balancing: LoadBalancing,
    pub(crate) default_ttl: Duration,
    pub(crate) empty_ttl: Duration,
    pub(crate) max_routes: usize,
    pub(crate) max_instances: usize,
    /// Worker threads, so each endpoint gets one idle list per worker.
    pub(crate) workers: usize,
}

/// The mutable table, owned by the routes task.
#[derive(Debug)]
pub(crate) struct RouteTable {
    routes: HashMap<RouteKey, Entry>,
    limits: Limits,
}

impl RouteTable {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            routes: HashMap::new(),
            limits,
        }
    }

    /// Adds the config file's routes; they never expire. Entries were validated with the config.
    pub(crate) fn add_static(&mut self, routes: &[StaticRoute], now: Instant) {
        for route in routes {
            let Some(key) = RouteKey::parse(&route.uri) else {
                continue;
            };
            let entry = self.routes.entry(key).or_default();
            entry.is_static = true;
            entry.load_balancing = route.load_balancing;
            for backend in &route.backends {
                let Ok(addr) = backend.parse::<SocketAddr>() else {
                    continue;
                };
                if entry.slots.iter().any(|s| s.endpoint.addr == addr) {
                    continue;
                }
                let endpoint = Endpoint::new(
                    addr,
                    route.app_id.as_deref(),
                    None,
                    Some(&entry.slots.len().to_string()),
                    Vec::new(),
                    None,
                    self.limits.workers,
                );
                entry.slots.push(Slot {
                    endpoint: Arc::new(endpoint),
                    updated: now,
                    ttl: None,
                });
            }
        }
    }

    /// Adds or refreshes `message`'s instance on each of its URIs.
    pub(crate) fn register(&mut self, message: &RegistryMessage, now: Instant) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(addr) = backend_addr(message) else {
            outcome.refused.push(Refused::InvalidRegistration);
            return outcome;
        };
        if message.uris.is_empty() {
            outcome.refused.push(Refused::InvalidRegistration);
            return outcome;
        }
        let ttl = message
            .stale_threshold(self.limits.default_ttl)
            .min(self.limits.default_ttl);
        let fresh = Arc::new(Endpoint::from_registration(
            addr,
            message,
            self.limits.workers,
        ));
        for uri in &message.uris {
            let Some(key) = RouteKey::parse(uri) else {
                outcome.refused.push(Refused::InvalidUri);
                continue;
            };
            if !self.routes.contains_key(&key) && self.routes.len() >= self.limits.max_routes {
                outcome.refused.push(Refused::TableFull);
                continue;
            }
            let entry = self.routes.entry(key).or_default();
            entry.emptied = None;
            let full = entry.slots.len() >= self.limits.max_instances;
            match entry.slots.iter_mut().find(|s| s.endpoint.addr == addr) {
                Some(slot) => {
                    slot.updated = now;
                    if slot.ttl.is_some() {
                        slot.ttl = Some(ttl);
                    }
                    if !slot.endpoint.same_instance(&fresh) {
                        // A new process on a reused port: start its pool and marks afresh.
                        slot.endpoint = Arc::clone(&fresh);
                        outcome.changed = true;
                    }
                }
                None if full => {
                    outcome.refused.push(Refused::RouteFull);
                }
                None => {
                    entry.slots.push(Slot {
                        endpoint: Arc::clone(&fresh),
                        updated: now,
                        ttl: Some(ttl),
                    });
                    outcome.changed = true;
                }
            }
        }
        outcome
    }

    /// Removes `message`'s instance from each of its URIs (matched on host, port and URI only).
    pub(crate) fn unregister(&mut self, message: &RegistryMessage, now: Instant) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(addr) = backend_addr(message) else {
            outcome.refused.push(Refused::InvalidRegistration);
            return outcome;
        };
        for uri in &message.uris {
            let Some(key) = RouteKey::parse(uri) else {
                outcome.refused.push(Refused::InvalidUri);
                continue;
            };
            let Some(entry) = self.routes.get_mut(&key) else {
                continue;
            };
            let before = entry.slots.len();
            entry
                .slots
                .retain(|s| s.ttl.is_none() || s.endpoint.addr != addr);
            if entry.slots.len() != before {
                outcome.changed = true;
                if entry.slots.is_empty() {
                    entry.emptied = Some(now);
                }
            }
        }
        if outcome.changed {
            self.drop_empty(now);
        }
        outcome
    }

    /// Removes registrations not refreshed within their TTL, and empty routes past the empty
    /// timeout. Returns how many instances were removed; `changed` says a new snapshot is due.
    pub(crate) fn prune(&mut self, now: Instant) -> (usize, bool) {
        let mut removed = 0;
        for entry in self.routes.values_mut() {
            let before = entry.slots.len();
            entry.slots.retain(|s| match s.ttl {
                Some(ttl) => now.saturating_duration_since(s.updated) < ttl,
                None => true,
            });
            if entry.slots.len() != before {
                removed += before - entry.slots.len();
                if entry.slots.is_empty() {
                    entry.emptied = Some(now);
                }
            }
        }
        let dropped = self.drop_empty(now);
        (removed, removed > 0 || dropped)
    }

    /// Restarts every registration's TTL at `now`: after the bus comes back, publishers need a
    /// register interval to reach us before anything may expire.
    pub(crate) fn freshen(&mut self, now: Instant) {
        for entry in self.routes.values_mut() {
            for slot in &mut entry.slots {
                slot.updated = now;
            }
            if entry.emptied.is_some() {
                entry.emptied = Some(now);
            }
        }
    }

    fn drop_empty(&mut self, now: Instant) -> bool {
        let before = self.routes.len();
        let empty_ttl = self.limits.empty_ttl;
        self.routes.retain(|_, entry| {
            entry.is_static
                || !entry.slots.is_empty()
                || entry
                    .emptied
                    .is_some_and(|at| now.saturating_duration_since(at) < empty_ttl)
        });
        self.routes.len() != before
    }

    /// Routes (host + path keys) in the table.
    pub(crate) fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// The guids of the apps with an instance in the table.
    pub(crate) fn app_ids(&self) -> HashSet<&str> {
        self.routes
            .values()
            .flat_map(|e| &e.slots)
            .filter_map(|s| s.endpoint.app_id.as_deref())
            .collect()
    }

    /// Instances over all routes.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.routes.values().map(|e| e.slots.len()).sum()
    }

    /// The immutable view requests read.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut hosts: HashMap<Box<str>, Vec<Route>> = HashMap::new();
        for (key, entry) in &self.routes {
            let endpoints: Vec<Arc<Endpoint>> = entry
                .slots
                .iter()
                .map(|s| Arc::clone(&s.endpoint))
                .collect();
            let load_balancing = entry
                .load_balancing
                .or_else(|| endpoints.iter().rev().find_map(|e| e.load_balancing))
                .unwrap_or(self.limits.default_load_balancing);
            hosts.entry(key.host.clone()).or_default().push(Route {
                path: key.path.clone(),
                pool: Arc::new(Pool::new(endpoints, load_balancing)),
            });
        }
        Snapshot {
            hosts: hosts
                .into_iter()
                .map(|(host, mut routes)| {
                    routes.sort_by_key(|route| std::cmp::Reverse(route.path.len()));
                    (host, routes.into_boxed_slice())
                })
                .collect(),
        }
    }
}

fn backend_addr(message: &RegistryMessage) -> Option<SocketAddr> {
    if message.port == 0 {
        return None;
    }
    let host = message.host.trim();
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?
    };
    Some(SocketAddr::new(ip, message.port))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "test code"
    )]

    use super::*;
    use hydrant_bus::messages::RegistryOptions;

    fn limits() -> Limits {
        Limits {
            default_load_balancing: LoadBalancing::RoundRobin,
            default_ttl: Duration::from_secs(120),
            empty_ttl: Duration::from_secs(120),
            max_routes: 100,
            max_instances: 4,
            workers: 2,
        }
    }

    fn reg(port: u16, uris: &[&str]) -> RegistryMessage {
        RegistryMessage {
            app: Some("app-1".into()),
            private_instance_index: Some((port % 10).to_string()),
            ..RegistryMessage::new(
                "127.0.0.1",
                port,
                uris.iter().map(|u| (*u).to_owned()).collect(),
            )
        }
    }

    fn pool_of(table: &RouteTable, host: &str, path: &str) -> Arc<Pool> {
        Arc::clone(&table.snapshot().lookup(host, path).unwrap().pool)
    }

    #[test]
    fn keys_are_lowercased_without_port_or_trailing_slash() {
        let key = RouteKey::parse("Shop.Example.COM:8080/API/").unwrap();
        assert_eq!(&*key.host, "shop.example.com");
        assert_eq!(&*key.path, "/api");
        let key = RouteKey::parse("http://a.b").unwrap();
        assert_eq!((&*key.host, &*key.path), ("a.b", ""));
        for bad in ["", "/path", "a b.com", "a.com/x?y=1", "[::1"] {
            assert!(RouteKey::parse(bad).is_none(), "{bad}");
        }
        let long = "a".repeat(300);
        assert!(RouteKey::parse(&long).is_none());
    }

    #[test]
    fn request_hosts_are_normalized_without_allocating() {
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(
            request_host(b"App.Apps.LocalHost:8080", &mut buf),
            Some("app.apps.localhost")
        );
        assert_eq!(request_host(b"[::1]:80", &mut buf), Some("[::1]"));
        assert_eq!(request_host(b"", &mut buf), None);
        assert_eq!(request_host(&[b'a'; 400], &mut buf), None);
    }

    #[test]
    fn longest_whole_segment_path_wins() {
        let mut table = RouteTable::new(limits());
        let now = Instant::now();
        table.register(&reg(1001, &["a.com"]), now);
        table.register(&reg(1002, &["a.com/api"]), now);
        table.register(&reg(1003, &["a.com/api/v2"]), now);
        let snap = table.snapshot();
        let port = |path: &str| {
            snap.lookup("a.com", path).unwrap().pool.endpoints[0]
                .addr
                .port()
        };
        assert_eq!(port("/"), 1001);
        assert_eq!(port("/apix"), 1001);
        assert_eq!(port("/api"), 1002);
        assert_eq!(port("/API/users"), 1002);
        assert_eq!(port("/api/v2/x"), 1003);
        assert!(snap.lookup("b.com", "/").is_none());
        assert_eq!(snap.host_count(), 1);
    }

    #[test]
    fn refresh_keeps_the_endpoint_and_a_new_instance_replaces_it() {
        let mut table = RouteTable::new(limits());
        let now = Instant::now();
        assert!(table.register(&reg(1001, &["a.com"]), now).changed);
        let first = Arc::clone(&pool_of(&table, "a.com", "/").endpoints[0]);
        assert!(!table.register(&reg(1001, &["a.com"]), now).changed);
        assert!(Arc::ptr_eq(
            &first,
            &pool_of(&table, "a.com", "/").endpoints[0]
        ));
        let mut other = reg(1001, &["a.com"]);
        other.private_instance_index = Some("7".into());
        assert!(table.register(&other, now).changed);
        let second = &pool_of(&table, "a.com", "/").endpoints[0];
        assert!(!Arc::ptr_eq(&first, second));
        assert_eq!(second.index.as_deref(), Some("7"));
        assert_eq!(table.endpoint_count(), 1);
    }

    #[test]
    fn bad_registrations_are_refused_with_a_reason() {
        let mut table = RouteTable::new(limits());
        let now = Instant::now();
        let mut bad = reg(1001, &["a.com"]);
        bad.host = "not-an-ip".into();
        assert_eq!(
            table.register(&bad, now).refused,
            vec![Refused::InvalidRegistration]
        );
        assert_eq!(
            table.register(&reg(0, &["a.com"]), now).refused,
            vec![Refused::InvalidRegistration]
        );
        let outcome = table.register(&reg(1001, &["a.com", "bad uri"]), now);
        assert!(outcome.changed);
        assert_eq!(outcome.refused, vec![Refused::InvalidUri]);
        for port in 1002..1010 {
            table.register(&reg(port, &["a.com"]), now);
        }
        assert_eq!(table.endpoint_count(), 4, "max_instances bounds a route");
        let mut small = RouteTable::new(Limits {
            max_routes: 1,
            ..limits()
        });
        small.register(&reg(1, &["a.com"]), now);
        assert_eq!(
            small.register(&reg(1, &["b.com"]), now).refused,
            vec![Refused::TableFull]
        );
    }

    #[test]
    fn registrations_expire_after_their_threshold_and_freshen_restarts_it() {
        let mut table = RouteTable::new(limits());
        let t0 = Instant::now();
        table.register(&reg(1001, &["a.com"]), t0);
        let mut short = reg(1002, &["a.com"]);
        short.stale_threshold_in_seconds = Some(10);
        table.register(&short, t0);
        let mut long = reg(1003, &["a.com"]);
        long.stale_threshold_in_seconds = Some(1000);
        table.register(&long, t0);
        assert_eq!(table.prune(t0 + Duration::from_secs(9)).0, 0);
        assert_eq!(table.prune(t0 + Duration::from_secs(10)).0, 1);
        // A threshold above the router's is capped at it.
        table.freshen(t0 + Duration::from_secs(100));
        assert_eq!(table.prune(t0 + Duration::from_secs(219)).0, 0);
        let (removed, changed) = table.prune(t0 + Duration::from_secs(220));
        assert_eq!((removed, changed), (2, true));
        // The emptied route answers 503 for a while, then disappears.
        assert!(table.snapshot().lookup("a.com", "/").is_some());
        assert_eq!(table.route_count(), 1);
        table.prune(t0 + Duration::from_secs(340));
        assert_eq!(table.route_count(), 0);
    }

    #[test]
    fn unregister_matches_host_port_and_uri_and_spares_static_routes() {
        let mut table = RouteTable::new(Limits {
            empty_ttl: Duration::ZERO,
            ..limits()
        });
        let now = Instant::now();
        table.add_static(
            &[StaticRoute {
                uri: "s.com".into(),
                backends: vec!["127.0.0.1:1001".into()],
                ..StaticRoute::default()
            }],
            now,
        );
        table.register(&reg(1001, &["a.com", "b.com", "s.com"]), now);
        assert_eq!(table.endpoint_count(), 3);
        let outcome = table.unregister(&reg(1001, &["a.com", "s.com"]), now);
        assert!(outcome.changed);
        assert_eq!(table.endpoint_count(), 2);
        assert!(table.snapshot().lookup("a.com", "/").is_none());
        assert!(table.snapshot().lookup("b.com", "/").is_some());
        assert!(table.snapshot().lookup("s.com", "/").is_some());
        assert_eq!(table.prune(now + Duration::from_secs(1000)).0, 1);
        assert!(table.snapshot().lookup("s.com", "/").is_some());
    }

    fn pool(n: u16, lb: LoadBalancing) -> Pool {
        let endpoints = (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    SocketAddr::from(([127, 0, 0, 1], 2000 + i)),
                    Some("app"),
                    None,
                    Some(&i.to_string()),
                    Vec::new(),
                    None,
                    1,
                ))
            })
            .collect();
        Pool::new(endpoints, lb)
    }

    #[test]
    fn round_robin_spreads_evenly_and_skips_tried_and_ejected() {
        let pool = pool(3, LoadBalancing::RoundRobin);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[pool.select(&[], 0, 30_000).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        pool.endpoints[1].mark_failed(1000);
        for _ in 0..10 {
            assert_ne!(pool.select(&[], 2000, 30_000), Some(1));
        }
        assert_eq!(pool.select(&[0, 2], 2000, 30_000), Some(1), "fail open");
        assert_eq!(pool.select(&[0, 1, 2], 2000, 30_000), None);
        // The mark lapses after the ejection time.
        let mut seen = [false; 3];
        for _ in 0..3 {
            seen[pool.select(&[], 31_000, 30_000).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn least_connection_prefers_idle_instances_and_fails_open() {
        let pool = pool(3, LoadBalancing::LeastConnection);
        let busy0 = pool.endpoints[0].start_request();
        let busy2 = pool.endpoints[2].start_request();
        for _ in 0..20 {
            assert_eq!(pool.select(&[], 0, 30_000), Some(1));
        }
        let busy1 = pool.endpoints[1].start_request();
        let _again = pool.endpoints[1].start_request();
        for _ in 0..20 {
            assert_ne!(pool.select(&[], 0, 30_000), Some(1));
        }
        pool.endpoints[0].mark_failed(0);
        pool.endpoints[2].mark_failed(0);
        assert_eq!(pool.select(&[], 10, 30_000), Some(1), "healthy beats idle");
        assert_eq!(pool.select(&[1], 10, 30_000).map(|i| i != 1), Some(true));
        drop((busy0, busy1, busy2));
        assert_eq!(pool.endpoints[0].in_flight(), 0);
    }

    #[test]
    fn pinning_finds_app_and_index() {
        let pool = pool(3, LoadBalancing::RoundRobin);
        assert_eq!(pool.find_instance("app:2"), Some(2));
        assert_eq!(pool.find_instance("app:9"), None);
    }

    #[test]
    fn options_override_the_default_balancing() {
        let mut table = RouteTable::new(limits());
        let mut message = reg(1001, &["a.com"]);
        message.options = Some(RegistryOptions {
            loadbalancing: Some("least-connection".into()),
        });
        table.register(&message, Instant::now());
        assert_eq!(
            pool_of(&table, "a.com", "/").load_balancing,
            LoadBalancing::LeastConnection
        );
    }
}
