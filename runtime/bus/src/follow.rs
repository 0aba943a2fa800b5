//! Following the announced dopplers: one follower for every role whose doppler set is what the
//! dopplers say on the bus (`doppler.announce`) rather than a fixed list — the agent (which
//! sends to their ingress) and the firehose edge (which reads their egress).
//!
//! Flow: `doppler.announce` → [`follow`] decodes it → [`Announced`] keeps each doppler's URL
//! and deadline (now + its TTL) and says what changed: a refresh, a doppler that moved to a new
//! URL (it [`Left`] and is heard afresh), a refusal, or a vacancy the role fills
//! ([`Follow::join`]: open a connection, claim a slot) → every check interval the dopplers not
//! heard from by their deadline leave ([`Follow::leave`]). The role keeps only what is its own:
//! what it opens for a doppler ([`Follow::Held`]), its tasks, and its counters.
//!
//! Invariants: at most `max` dopplers are followed (the rest are refused and counted by the
//! role); a malformed or conflicting announcement (an empty or over-long id, a URL that is not
//! `http(s)://` or that the role cannot use, a URL another id already holds) changes nothing
//! but is refused as [`Refusal::Invalid`]; a doppler is keyed by its id, and one that comes
//! back at a new URL leaves and joins afresh; when the bus subscription ends the set is kept
//! (the data plane outlives the control plane); every task the role started is awaited before
//! [`follow`] returns.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::messages::{DOPPLER_ANNOUNCE, DopplerAnnounce};
use crate::{Bus, Error};

/// Longest doppler id accepted (ids name dopplers in cursors and logs).
pub const MAX_ID: usize = 128;
/// How often lapsed announcements are looked for: well inside one announce interval.
pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The fixed list's default: Loggregator's doppler port on loopback.
#[must_use]
pub fn default_dopplers() -> Vec<String> {
    vec!["http://127.0.0.1:8082".to_owned()]
}

/// Where a role's dopplers come from, as its config writes it: the fields the agent and the
/// firehose edge share, borrowed from their configs (which keep them flat, as the files write
/// them).
///
/// - `dopplers`: the fixed list of doppler URLs. Default [`default_dopplers`]. Empty with a
///   `bus`: follow the dopplers announced there (as `dopplers_from_bus = true`).
/// - `dopplers_from_bus`: follow the dopplers announced on the bus (`doppler.announce`)
///   instead of a fixed list: a new doppler is followed as soon as its first announcement
///   arrives, and one whose announcements lapse (their TTL, three announce intervals) is let
///   go. Needs `bus`; `dopplers` must then be empty or left at its default. Default false.
/// - `max_dopplers`: most dopplers followed at once, 1 to 1024; further announcements are
///   refused and counted (`<role>.doppler_announcements{result="over_max_dopplers"}`).
///   Default 64.
/// - `bus`: the control-plane bus (`[bus]`), read only to follow the announcements. Default
///   unset.
#[derive(Debug, Clone, Copy)]
pub struct DopplerSource<'a> {
    /// The fixed list.
    pub dopplers: &'a [String],
    /// Follow the bus instead of the list.
    pub dopplers_from_bus: bool,
    /// Most dopplers followed at once.
    pub max_dopplers: usize,
    /// The `[bus]` section.
    pub bus: Option<&'a crate::Config>,
}

impl<'a> DopplerSource<'a> {
    /// Whether the role follows the dopplers announced on the bus rather than (only) a list.
    #[must_use]
    pub fn follows_bus(&self) -> bool {
        self.bus.is_some() && (self.dopplers_from_bus || self.dopplers.is_empty())
    }

    /// The fixed dopplers read from start to end: none when following the bus with
    /// `dopplers` left at its default.
    #[must_use]
    pub fn static_dopplers(&self) -> &'a [String] {
        if self.follows_bus() && self.dopplers == default_dopplers() {
            &[]
        } else {
            self.dopplers
        }
    }

    /// Checks the bus section and that the fields agree; each role checks its list's URLs.
    ///
    /// # Errors
    /// [`Error::Field`] naming the field; [`Error::into_field`] gives its parts.
    pub fn validate(&self) -> Result<(), Error> {
        let field = |field, message: &str| Error::Field {
            field,
            message: message.to_owned(),
        };
        if let Some(bus) = self.bus {
            bus.validate().map_err(|e| field("bus", &e.to_string()))?;
        }
        if self.dopplers_from_bus && self.bus.is_none() {
            return Err(field(
                "dopplers_from_bus",
                "following the announced dopplers needs a [bus] section (its url)",
            ));
        }
        if self.dopplers_from_bus
            && !self.dopplers.is_empty()
            && self.dopplers != default_dopplers()
        {
            return Err(field(
                "dopplers",
                "a fixed list and dopplers_from_bus = true conflict; write dopplers = [] to \
                 follow the bus, or drop dopplers_from_bus",
            ));
        }
        if !(1..=1024).contains(&self.max_dopplers) {
            return Err(field("max_dopplers", "must be 1 to 1024 (default 64)"));
        }
        if self.dopplers.is_empty() && self.bus.is_none() {
            return Err(field(
                "dopplers",
                "is empty: list at least one doppler, e.g. [\"http://127.0.0.1:8082\"], or \
                 set [bus] to follow the announced ones",
            ));
        }
        Ok(())
    }
}

/// Which of an announcement's URLs a follower uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where agents send (v2 Ingress): the agent's side.
    Ingress,
    /// Where firehose edges read (v2 Egress and the log cache): the edge's side.
    Egress,
}

impl Side {
    fn of(self, announce: &DopplerAnnounce) -> &str {
        match self {
            Self::Ingress => &announce.ingress,
            Self::Egress => &announce.egress,
        }
    }
}

/// Why an announcement changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, unusable, or claiming a URL another doppler holds.
    Invalid,
    /// The set (or the role's slots) is full.
    OverMax,
}

/// Why a doppler left the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Not heard from by its deadline.
    Lapsed,
    /// Announced at a new URL: it leaves at the old one and is heard afresh at the new one.
    Moved,
}

/// A doppler that left the set, with what the role held for it.
#[derive(Debug)]
pub struct Left<T> {
    /// The doppler's id.
    pub id: String,
    /// The URL it was followed at.
    pub url: String,
    /// What the role opened for it.
    pub held: T,
    /// Why it left.
    pub why: Leave,
}

/// A doppler the set has room for. The role opens what it needs and hands it to
/// [`Announced::join`] before the set changes again.
#[derive(Debug)]
pub struct Vacancy {
    /// The doppler's id.
    pub id: String,
    /// The URL to follow it at (its ingress or egress, by [`Side`]).
    pub url: String,
    /// Heard within its first TTL after the follower started: it was most likely up before
    /// this follower, rather than joining while it runs.
    pub early: bool,
    deadline: Instant,
}

/// What one announcement did to the set.
#[derive(Debug)]
pub enum Heard {
    /// A doppler already followed at that URL: its deadline moved on.
    Refreshed,
    /// Nothing changed (beyond a [`Heard`]'s `moved`).
    Refused(Refusal),
    /// A new doppler the set has room for.
    Vacant(Vacancy),
}

#[derive(Debug)]
struct Entry<T> {
    url: String,
    deadline: Instant,
    held: T,
}

/// The followed dopplers, keyed by id, each with its URL, its deadline and what the role holds
/// for it (`T`: a lane, a hub slot). Bounded by `max`.
#[derive(Debug)]
pub struct Announced<T> {
    side: Side,
    max: usize,
    started: Instant,
    followed: HashMap<String, Entry<T>>,
}

impl<T> Announced<T> {
    /// An empty set reading `side` of each announcement, holding at most `max` dopplers.
    #[must_use]
    pub fn new(side: Side, max: usize) -> Self {
        Self {
            side,
            max,
            started: Instant::now(),
            followed: HashMap::new(),
        }
    }

    /// How many dopplers are followed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.followed.len()
    }

    /// Whether no doppler is followed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.followed.is_empty()
    }

    /// The most dopplers followed at once.
    #[must_use]
    pub fn max(&self) -> usize {
        self.max
    }

    /// What the role holds for doppler `id`.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&T> {
        self.followed.get(id).map(|e| &e.held)
    }

    /// Applies one announcement heard at `now`; `usable` is the role's own check of the URL
    /// (one it cannot connect to is refused as invalid). The second value is the doppler that
    /// left because it moved, already out of the set: the role closes what it held for it.
    pub fn heard(
        &mut self,
        announce: &DopplerAnnounce,
        usable: impl FnOnce(&str) -> bool,
        now: Instant,
    ) -> (Heard, Option<Left<T>>) {
        let id = announce.id.as_str();
        let url = self.side.of(announce);
        let well_formed = !id.is_empty()
            && id.len() <= MAX_ID
            && (url.starts_with("http://") || url.starts_with("https://"));
        if !well_formed || !usable(url) {
            return (Heard::Refused(Refusal::Invalid), None);
        }
        let ttl = announce.ttl();
        let deadline = now + ttl;
        let mut moved = None;
        if let Some(known) = self.followed.get_mut(id) {
            if known.url == url {
                known.deadline = deadline;
                return (Heard::Refreshed, None);
            }
            // Same doppler, new address (restarted elsewhere): follow it there instead.
            moved = self.followed.remove(id).map(|old| Left {
                id: id.to_owned(),
                url: old.url,
                held: old.held,
                why: Leave::Moved,
            });
        }
        let heard = if self.followed.values().any(|f| f.url == url) {
            // Two ids claiming one address: the first keeps it.
            Heard::Refused(Refusal::Invalid)
        } else if self.followed.len() >= self.max {
            Heard::Refused(Refusal::OverMax)
        } else {
            Heard::Vacant(Vacancy {
                id: id.to_owned(),
                url: url.to_owned(),
                early: now.saturating_duration_since(self.started) < ttl,
                deadline,
            })
        };
        (heard, moved)
    }

    /// Fills a vacancy from [`Announced::heard`] with what the role opened for it.
    pub fn join(&mut self, vacancy: Vacancy, held: T) {
        self.followed.insert(
            vacancy.id,
            Entry {
                url: vacancy.url,
                deadline: vacancy.deadline,
                held,
            },
        );
    }

    /// Takes out every doppler whose announcement lapsed by `now`.
    pub fn lapsed(&mut self, now: Instant) -> Vec<Left<T>> {
        let ids: Vec<String> = self
            .followed
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let gone = self.followed.remove(&id)?;
                Some(Left {
                    id,
                    url: gone.url,
                    held: gone.held,
                    why: Leave::Lapsed,
                })
            })
            .collect()
    }

    /// Takes out the doppler whose held value matches (e.g. the one whose task gave up),
    /// returning its id and what was held.
    pub fn remove_where(&mut self, matches: impl Fn(&T) -> bool) -> Option<(String, T)> {
        let id = self
            .followed
            .iter()
            .find(|(_, f)| matches(&f.held))
            .map(|(id, _)| id.clone())?;
        self.followed.remove(&id).map(|gone| (id, gone.held))
    }
}

/// What a role does for the dopplers it follows; [`follow`] calls it.
pub trait Follow {
    /// What the role opens for one doppler (a lane, a hub slot) and closes when it leaves.
    type Held;
    /// What the role's per-doppler tasks return.
    type Done: Send + 'static;

    /// Whether the role can use `url` (parses as an endpoint). Default: yes.
    fn usable(&self, _url: &str) -> bool {
        true
    }

    /// Opens what a new doppler needs; a refusal leaves the set unchanged.
    ///
    /// # Errors
    /// [`Refusal::OverMax`] when the role has no slot for it, [`Refusal::Invalid`] when its
    /// URL cannot be opened.
    fn join(&mut self, vacancy: &Vacancy) -> Result<Self::Held, Refusal>;

    /// Closes what was held for a doppler that left.
    fn leave(&mut self, left: Left<Self::Held>);

    /// An announcement that changed nothing (`id` and `url` are empty when it did not decode).
    fn refused(&mut self, why: Refusal, id: &str, url: &str);

    /// The role's per-doppler tasks, awaited here.
    fn tasks(&mut self) -> &mut JoinSet<Self::Done>;

    /// A task ended while following (e.g. it gave up on an unreachable doppler).
    fn ended(&mut self, _announced: &mut Announced<Self::Held>, _done: Self::Done) {}

    /// A task ended after the follower was stopped.
    fn drained(&mut self, _done: Self::Done) {}

    /// The set may have changed: update gauges.
    fn report(&mut self, _announced: &Announced<Self::Held>) {}
}

/// Follows `doppler.announce` on `bus` for `role` until `stop` is cancelled, then waits for
/// every task the role started. Fails only if the subscription to the bus cannot be made.
///
/// # Errors
/// The bus's, when subscribing fails.
pub async fn follow<F: Follow>(
    bus: &Bus,
    side: Side,
    max: usize,
    role: &mut F,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let mut announcements = bus.subscribe(DOPPLER_ANNOUNCE).await?;
    let mut announced = Announced::new(side, max);
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut subscribed = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            message = announcements.next(), if subscribed => {
                let Some(message) = message else {
                    // The bus client is gone: keep what we follow, as the data plane outlives
                    // the control plane.
                    subscribed = false;
                    tracing::warn!("the bus subscription ended; keeping the dopplers followed so far");
                    continue;
                };
                match message.json::<DopplerAnnounce>() {
                    Ok(announce) => heard(&mut announced, role, &announce),
                    Err(_) => role.refused(Refusal::Invalid, "", ""),
                }
            }
            _ = check.tick() => {
                for left in announced.lapsed(Instant::now()) {
                    role.leave(left);
                }
                role.report(&announced);
            }
            Some(done) = role.tasks().join_next(), if !role.tasks().is_empty() => {
                if let Ok(done) = done {
                    role.ended(&mut announced, done);
                    role.report(&announced);
                }
            }
        }
    }
    while let Some(done) = role.tasks().join_next().await {
        if let Ok(done) = done {
            role.drained(done);
        }
    }
    Ok(())
}

fn heard<F: Follow>(announced: &mut Announced<F::Held>, role: &mut F, announce: &DopplerAnnounce) {
    let (heard, moved) = announced.heard(announce, |url| role.usable(url), Instant::now());
    if let Some(left) = moved {
        role.leave(left);
    }
    match heard {
        Heard::Refreshed => {}
        Heard::Refused(why) => role.refused(why, &announce.id, announced.side.of(announce)),
        Heard::Vacant(vacancy) => match role.join(&vacancy) {
            Ok(held) => {
                announced.join(vacancy, held);
                role.report(announced);
            }
            Err(why) => role.refused(why, &vacancy.id, &vacancy.url),
        },
    }
}
