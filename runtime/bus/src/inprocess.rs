//! The in-process backend: the micro cloud's bus, with no server.
//!
//! Every role in a process that connects with `url = "inprocess"` (or the same
//! `inprocess://NAME`) shares one [`Hub`]: a routing table of subscriptions, each with its own
//! bounded queue. A publish walks the table under a read lock and `try_send`s to each match, so
//! it never waits for a subscriber; a full queue drops the message and counts it against the
//! subscribing role. Invariant: routing agrees with NATS ([`crate::subject::matches`]; one member
//! per queue group; "no responders" when nothing matches) so code tested here behaves the same
//! against a real nats-server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::{BusStatus, Config, Error, Message, Subscription, subject};

/// Hubs by name. Weak, so a hub disappears with the last handle or subscription using it.
static HUBS: OnceLock<Mutex<HashMap<String, Weak<Hub>>>> = OnceLock::new();

/// Numbers the private hubs made by [`Handle::isolated`].
static ISOLATED: AtomicU64 = AtomicU64::new(0);

/// One bus handle's view of a hub.
#[derive(Debug)]
pub(crate) struct Handle {
    hub: Arc<Hub>,
    subscriber_buffer: usize,
}

#[derive(Debug)]
struct Hub {
    name: String,
    routes: RwLock<Routes>,
    down: AtomicBool,
    status: watch::Sender<BusStatus>,
    /// The metrics of every handle on this hub, so an outage shows on each role's gauges.
    handles: Mutex<Vec<Weak<Metrics>>>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct Routes {
    plain: Vec<Entry>,
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    pattern: String,
    tx: mpsc::Sender<Message>,
    /// `None` for request inboxes, whose extra answers are expected and not worth counting.
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug)]
struct Group {
    pattern: String,
    name: String,
    members: Vec<Entry>,
    next: AtomicUsize,
}

/// Removes a subscription from its hub when the [`Subscription`] is dropped.
#[derive(Debug)]
pub(crate) struct Unsubscribe {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let mut routes = self
            .hub
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        routes.plain.retain(|e| e.id != self.id);
        for group in &mut routes.groups {
            group.members.retain(|e| e.id != self.id);
        }
        routes.groups.retain(|g| !g.members.is_empty());
    }
}

impl Handle {
    /// Joins the process-wide hub called `name`, creating it if this is the first handle.
    pub(crate) fn named(name: &str, config: &Config, metrics: &Arc<Metrics>) -> Self {
        let hubs = HUBS.get_or_init(Mutex::default);
        let mut hubs = hubs.lock().unwrap_or_else(PoisonError::into_inner);
        hubs.retain(|_, hub| hub.strong_count() > 0);
        let hub = if let Some(hub) = hubs.get(name).and_then(Weak::upgrade) {
            hub
        } else {
            let hub = Arc::new(Hub::new(name.to_owned()));
            hubs.insert(name.to_owned(), Arc::downgrade(&hub));
            hub
        };
        drop(hubs);
        Self::attach(hub, config, metrics)
    }

    /// A hub nobody else can join.
    pub(crate) fn isolated(config: &Config, metrics: &Arc<Metrics>) -> Self {
        let n = ISOLATED.fetch_add(1, Ordering::Relaxed);
        Self::attach(Arc::new(Hub::new(format!("isolated-{n}"))), config, metrics)
    }

    fn attach(hub: Arc<Hub>, config: &Config, metrics: &Arc<Metrics>) -> Self {
        let mut handles = hub.handles.lock().unwrap_or_else(PoisonError::into_inner);
        handles.retain(|m| m.strong_count() > 0);
        handles.push(Arc::downgrade(metrics));
        drop(handles);
        Self {
            hub,
            subscriber_buffer: config.subscriber_buffer,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.hub.name
    }

    pub(crate) fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        reply: Option<&str>,
        metrics: &Metrics,
    ) {
        metrics.published.inc();
        if self.hub.down.load(Ordering::Acquire) {
            metrics.dropped_disconnected.inc();
            return;
        }
        metrics.sent.inc();
        self.hub.route(subject, &payload, reply);
    }

    pub(crate) fn subscribe(
        &self,
        pattern: &str,
        group: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> Subscription {
        let (rx, guard) = self
            .hub
            .add(pattern, group, self.subscriber_buffer, Some(metrics));
        Subscription::new(pattern, group, rx, Some(guard))
    }

    pub(crate) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, Error> {
        if self.hub.down.load(Ordering::Acquire) {
            return Err(Error::Disconnected {
                subject: subject.to_owned(),
            });
        }
        let inbox = format!(
            "_INBOX.{}",
            self.hub.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (mut rx, _guard) = self.hub.add(&inbox, None, 1, None);
        if self.hub.route(subject, &payload, Some(&inbox)) == 0 {
            return Err(Error::NoResponders {
                subject: subject.to_owned(),
            });
        }
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(message)) => Ok(message),
            Ok(None) | Err(_) => Err(Error::Timeout {
                subject: subject.to_owned(),
                timeout,
            }),
        }
    }

    pub(crate) fn watch_status(&self) -> watch::Receiver<BusStatus> {
        self.hub.status.subscribe()
    }

    pub(crate) fn set_outage(&self, down: bool) {
        if self.hub.down.swap(down, Ordering::AcqRel) == down {
            return;
        }
        self.hub.status.send_modify(|status| {
            *status = if down {
                BusStatus::Disconnected {
                    since: Instant::now(),
                }
            } else {
                BusStatus::Connected
            };
        });
        let handles = self
            .hub
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for metrics in handles.iter().filter_map(Weak::upgrade) {
            metrics.connected.set(if down { 0.0 } else { 1.0 });
            if !down {
                metrics.reconnects.inc();
            }
        }
    }
}

impl Hub {
    fn new(name: String) -> Self {
        let (status, _) = watch::channel(BusStatus::Connected);
        Self {
            name,
            routes: RwLock::default(),
            down: AtomicBool::new(false),
            status,
            handles: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }

    fn add(
        self: &Arc<Self>,
        pattern: &str,
        group: Option<&str>,
        capacity: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> (mpsc::Receiver<Message>, Unsubscribe) {
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            id,
            pattern: pattern.to_owned(),
            tx,
            metrics,
        };
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        match group {
            None => routes.plain.push(entry),
            Some(name) => {
                if let Some(g) = routes
                    .groups
                    .iter_mut()
                    .find(|g| g.pattern == pattern && g.name == name)
                {
                    g.members.push(entry);
                } else {
                    routes.groups.push(Group {
                        pattern: pattern.to_owned(),
                        name: name.to_owned(),
                        members: vec![entry],
                        next: AtomicUsize::new(0),
                    });
                }
            }
        }
        drop(routes);
        let guard = Unsubscribe {
            hub: Arc::clone(self),
            id,
        };
        (rx, guard)
    }

    /// Offers the message to every matching subscription and to one member of every matching
    /// queue group. Returns how many live subscriptions or groups matched (whether or not
    /// their queues had room), which is what "no responders" is decided on.
    fn route(&self, subject: &str, payload: &Bytes, reply: Option<&str>) -> usize {
        let message = || Message {
            subject: subject.to_owned(),
            payload: payload.clone(),
            reply: reply.map(str::to_owned),
        };
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let mut matched = 0;
        for entry in routes
            .plain
            .iter()
            .filter(|e| subject::matches(&e.pattern, subject))
        {
            match entry.tx.try_send(message()) {
                Ok(()) => {
                    matched += 1;
                    entry.count(true);
                }
                Err(TrySendError::Full(_)) => {
                    matched += 1;
                    entry.count(false);
                }
                // Unsubscribing right now: no longer a subscriber.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        for group in routes
            .groups
            .iter()
            .filter(|g| subject::matches(&g.pattern, subject))
        {
            let n = group.members.len();
            let start = group.next.fetch_add(1, Ordering::Relaxed);
            let mut pending = message();
            let mut first_full: Option<&Entry> = None;
            let mut delivered = false;
            // Rotate the starting member for fairness, then fall through to the others so one
            // slow member does not cost the group a message while its peers have room.
            for i in 0..n {
                let member = &group.members[(start.wrapping_add(i)) % n];
                match member.tx.try_send(pending) {
                    Ok(()) => {
                        member.count(true);
                        delivered = true;
                        break;
                    }
                    Err(TrySendError::Full(m)) => {
                        first_full.get_or_insert(member);
                        pending = m;
                    }
                    Err(TrySendError::Closed(m)) => pending = m,
                }
            }
            if delivered {
                matched += 1;
            } else if let Some(member) = first_full {
                matched += 1;
                member.count(false);
            }
        }
        matched
    }
}

impl Entry {
    fn count(&self, delivered: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.received.inc();
            if delivered {
                metrics.delivered.inc();
            } else {
                metrics.dropped_subscriber_queue_full.inc();
            }
        }
    }
}
