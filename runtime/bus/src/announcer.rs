//! The announcer: a task that keeps re-publishing a control message so the bus heals itself.
//!
//! Every control message on the bus is soft state: a router forgets a route it has not heard
//! about for 120 s, a health manager distrusts an executor it has not heard from. So instead of
//! retrying lost messages, publishers repeat them: every `interval`, at once when the bus comes
//! back after an outage, and at once when a trigger subject arrives (`router.start`: a router
//! that just booted or reconnected asks everyone to re-register). Bursts of triggers collapse
//! into one announcement per `min_gap`, so a flood of `router.start` never becomes a storm.
//! Invariant: while the bus is up, the subscribers' view is never more than one `interval`
//! stale; while it is down, nothing is queued up to replay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Bus, Error, Subscription, subject};

/// Builds an announcer; see the module docs. Start it with [`Announcer::spawn`].
#[derive(Debug)]
pub struct Announcer {
    bus: Bus,
    subject: String,
    interval: Duration,
    triggers: Vec<String>,
    min_gap: Duration,
    trigger_jitter: Duration,
}

/// A running announcer. Dropping the handle does not stop it; cancel its shutdown token.
#[derive(Debug)]
pub struct AnnouncerHandle {
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl AnnouncerHandle {
    /// Announces as soon as `min_gap` allows, e.g. because an instance just became RUNNING and
    /// its route should not wait for the next interval.
    pub fn announce_now(&self) {
        self.wake.notify_one();
    }

    /// Waits for the task to end (after its shutdown token is cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

impl Announcer {
    /// Announces on `subject` every `interval` (e.g. [`crate::messages::ROUTER_REGISTER`] every
    /// [`crate::messages::REGISTER_INTERVAL`]). Triggered announcements are at least
    /// `min(1 s, interval)` apart unless [`Announcer::min_gap`] says otherwise.
    #[must_use]
    pub fn new(bus: &Bus, subject: &str, interval: Duration) -> Self {
        Self {
            bus: bus.clone(),
            subject: subject.to_owned(),
            interval,
            triggers: Vec::new(),
            min_gap: interval.min(Duration::from_secs(1)),
            trigger_jitter: Duration::ZERO,
        }
    }

    /// Also announces at once whenever a message arrives on `pattern`
    /// (e.g. [`crate::messages::ROUTER_START`]).
    #[must_use]
    pub fn retrigger_on(mut self, pattern: &str) -> Self {
        self.triggers.push(pattern.to_owned());
        self
    }

    /// The shortest time between two triggered announcements.
    #[must_use]
    pub fn min_gap(mut self, gap: Duration) -> Self {
        self.min_gap = gap;
        self
    }

    /// Delays announcements caused by a trigger subject by a random time up to `jitter`, so a
    /// large fleet answering one `router.start` spreads out (the route-emitter uses 20 % of the
    /// register interval). Default: none.
    #[must_use]
    pub fn trigger_jitter(mut self, jitter: Duration) -> Self {
        self.trigger_jitter = jitter;
        self
    }

    /// Subscribes to the trigger subjects and starts the task; the first announcement goes out
    /// at once. `messages` is called for each announcement and returns the payloads to publish
    /// (one per route, say); returning none is fine.
    pub async fn spawn<F>(
        self,
        shutdown: CancellationToken,
        messages: F,
    ) -> Result<AnnouncerHandle, Error>
    where
        F: FnMut() -> Vec<Bytes> + Send + 'static,
    {
        subject::validate_publish(&self.subject)?;
        if self.interval.is_zero() {
            return Err(Error::Config(format!(
                "announcer for {:?}: the interval must be greater than zero",
                self.subject
            )));
        }
        let mut triggers = SelectAll::new();
        for pattern in &self.triggers {
            triggers.push(self.bus.subscribe(pattern).await?);
        }
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(self.run(shutdown, messages, triggers, Arc::clone(&wake)));
        Ok(AnnouncerHandle { wake, task })
    }

    async fn run<F>(
        self,
        shutdown: CancellationToken,
        mut messages: F,
        mut triggers: SelectAll<Subscription>,
        wake: Arc<Notify>,
    ) where
        F: FnMut() -> Vec<Bytes> + Send + 'static,
    {
        let announced = self.bus.registry().counter(
            "bus.announcements",
            "Announcement rounds published by an announcer",
            &[("subject", &self.subject)],
        );
        let mut status = self.bus.watch_status();
        let mut status_open = true;
        let mut was_connected = status.borrow_and_update().is_connected();
        let mut next_tick = Instant::now();
        let mut pending: Option<Instant> = None;
        let mut last: Option<Instant> = None;

        loop {
            let due = pending.map_or(next_tick, |p| p.min(next_tick));
            let mut request = None;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(due) => {
                    let now = Instant::now();
                    // While the bus is down there is nobody to tell; the reconnect announces.
                    if status.borrow().is_connected() {
                        for payload in messages() {
                            if let Err(err) = self.bus.publish(&self.subject, payload) {
                                tracing::warn!(subject = %self.subject, error = %err,
                                    "announcer: message not published");
                            }
                        }
                        announced.inc();
                        last = Some(now);
                    }
                    next_tick = now + self.interval;
                    pending = None;
                }
                Some(_) = triggers.next(), if !self.triggers.is_empty() => {
                    request = Some(jitter(self.trigger_jitter));
                }
                () = wake.notified() => request = Some(Duration::ZERO),
                changed = status.changed(), if status_open => {
                    if changed.is_err() {
                        status_open = false;
                    } else {
                        let connected = status.borrow_and_update().is_connected();
                        if connected && !was_connected {
                            request = Some(Duration::ZERO);
                        }
                        was_connected = connected;
                    }
                }
            }
            if let Some(delay) = request {
                let mut at = Instant::now() + delay;
                if let Some(last) = last {
                    at = at.max(last + self.min_gap);
                }
                pending = Some(pending.map_or(at, |p| p.min(at)));
            }
        }
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        max.mul_f64(fastrand::f64())
    }
}
