//! Actual state and the crash schedule: what the executors run (from heartbeats), how often
//! each instance index has crashed, when its restart is due, and the newest start request the
//! cloud controller sent for it.
//!
//! Flow: `executor.heartbeat.<cell>`, `executor.crash.<cell>` (vetted by the run loop against
//! the placements), `executor.start.*` (bus) → [`Tracker`] →
//! due restarts ([`Tracker::take_due`]) and extra instances ([`Tracker::extras`]) → the run
//! loop acts on them.
//!
//! Invariants: one crash is counted once, whether it arrives as a crash event, a heartbeat, or
//! both; every restart is scheduled at exactly `crash time + restart_delay(count)`, never
//! rounded to a loop tick; every table is bounded by `max_tracked`, and a full table drops the
//! new entry and says so (the caller counts it). Pure and synchronous: time is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use hydrant_api::{App, AppState};
use hydrant_bus::messages::{ExecutorHeartbeat, InstanceState, StartInstance};
use tokio::time::Instant;

use crate::backoff::{self, MAX_RESTARTS};

/// An app guid and an instance index.
pub(crate) type Key = (String, u32);

/// How long a counted crash's instance guid is remembered, so a heartbeat still showing it
/// crashed (executors keep crashed instances visible for a minute) is not counted again.
const COUNTED_TTL: Duration = Duration::from_secs(600);
/// An index with no crash for this long and nothing pending is forgotten (HM9000 keeps crash
/// counts for twice the longest back-off).
const INDEX_TTL: Duration = Duration::from_secs(32 * 60);

#[derive(Debug)]
struct ExecutorSeen {
    heartbeat: ExecutorHeartbeat,
    seen: Instant,
    /// Its presence says it is evacuating: it takes no new work.
    evacuating: bool,
}

#[derive(Debug, Clone)]
struct InstanceSeen {
    first_seen: Instant,
    last_seen: Instant,
    running_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct IndexState {
    crash_count: u32,
    last_crash: Option<Instant>,
    last_instance: Option<String>,
    due: Option<Instant>,
    gave_up: bool,
}

/// What a newly counted crash means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Restart at `due` (`delay` after the crash).
    Restart {
        count: u32,
        delay: Duration,
        due: Instant,
    },
    /// Crashed [`MAX_RESTARTS`] times: left crashed.
    GiveUp { count: u32 },
}

/// A restart whose time has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) key: Key,
    pub(crate) count: u32,
    pub(crate) instance: Option<String>,
}

/// An instance running that the desired state does not want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extra {
    pub(crate) executor_id: String,
    pub(crate) app: String,
    pub(crate) instance: String,
    pub(crate) index: u32,
    pub(crate) reason: String,
}

/// A crash first noticed in a heartbeat (its crash event was lost or has not arrived yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crashed {
    pub(crate) key: Key,
    pub(crate) instance: String,
}

/// The health manager's picture of actual state.
#[derive(Debug)]
pub(crate) struct Tracker {
    executors: BTreeMap<String, ExecutorSeen>,
    instances: HashMap<String, InstanceSeen>,
    indexes: HashMap<Key, IndexState>,
    schedule: BTreeSet<(Instant, Key)>,
    counted: HashMap<String, Instant>,
    overheard: HashMap<Key, (StartInstance, Instant)>,
    stops_sent: HashMap<String, Instant>,
    /// When each cell's presence lapses unless refreshed (`executor.presence.<cell>`'s TTL).
    presence_until: HashMap<String, Instant>,
    executor_timeout: Duration,
    max_tracked: usize,
}

fn live(state: InstanceState) -> bool {
    matches!(state, InstanceState::Starting | InstanceState::Running)
}

impl Tracker {
    pub(crate) fn new(executor_timeout: Duration, max_tracked: usize) -> Self {
        Self {
            executors: BTreeMap::new(),
            instances: HashMap::new(),
            indexes: HashMap::new(),
            schedule: BTreeSet::new(),
            counted: HashMap::new(),
            overheard: HashMap::new(),
            stops_sent: HashMap::new(),
            presence_until: HashMap::new(),
            executor_timeout,
            max_tracked,
        }
    }

    /// Records a heartbeat. Returns crashes it shows that were not counted yet, and how many
    /// instances could not be tracked because the table is full.
    pub(crate) fn heartbeat(
        &mut self,
        heartbeat: ExecutorHeartbeat,
        now: Instant,
    ) -> (Vec<Crashed>, usize) {
        let mut crashed = Vec::new();
        let mut full = 0;
        for i in &heartbeat.instances {
            let key = (i.app.clone(), i.index);
            if !self.instances.contains_key(&i.instance) && self.instances.len() >= self.max_tracked
            {
                full += 1;
                continue;
            }
            let seen = self
                .instances
                .entry(i.instance.clone())
                .or_insert_with(|| InstanceSeen {
                    first_seen: now,
                    last_seen: now,
                    running_since: None,
                });
            seen.last_seen = now;
            if i.state == InstanceState::Running && seen.running_since.is_none() {
                seen.running_since = Some(now);
            }
            match i.state {
                InstanceState::Crashed if !self.counted.contains_key(&i.instance) => {
                    crashed.push(Crashed {
                        key,
                        instance: i.instance.clone(),
                    });
                }
                // Someone (a user's restart, a scale) brought a given-up index back: its
                // history no longer applies.
                InstanceState::Running => {
                    if let Some(state) = self.indexes.get_mut(&key)
                        && state.gave_up
                    {
                        *state = IndexState::default();
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = self.executors.get_mut(&heartbeat.executor_id) {
            e.heartbeat = heartbeat;
            e.seen = now;
        } else if self.executors.len() < self.max_tracked {
            self.executors.insert(
                heartbeat.executor_id.clone(),
                ExecutorSeen {
                    heartbeat,
                    seen: now,
                    evacuating: false,
                },
            );
        } else {
            full += 1;
        }
        (crashed, full)
    }

    /// Counts a crash of `instance` at `key` and schedules its restart. `None` when this
    /// crash was already counted or the table is full (`Err`).
    pub(crate) fn crash(
        &mut self,
        key: &Key,
        instance: &str,
        now: Instant,
    ) -> Result<Option<Verdict>, ()> {
        if self.counted.contains_key(instance) {
            return Ok(None);
        }
        if !self.indexes.contains_key(key) && self.indexes.len() >= self.max_tracked
            || self.counted.len() >= self.max_tracked
        {
            return Err(());
        }
        self.counted.insert(instance.to_owned(), now);
        let ran_for = self
            .instances
            .get(instance)
            .and_then(|i| i.running_since)
            .map(|since| now.saturating_duration_since(since));
        let state = self.indexes.entry(key.clone()).or_default();
        if let Some(due) = state.due.take() {
            self.schedule.remove(&(due, key.clone()));
        }
        state.crash_count = backoff::next_crash_count(state.crash_count, ran_for);
        state.last_crash = Some(now);
        state.last_instance = Some(instance.to_owned());
        let count = state.crash_count;
        match backoff::restart_delay(count) {
            Some(delay) => {
                let due = now + delay;
                state.due = Some(due);
                state.gave_up = false;
                self.schedule.insert((due, key.clone()));
                Ok(Some(Verdict::Restart { count, delay, due }))
            }
            None => {
                let already = state.gave_up;
                state.gave_up = true;
                Ok((!already).then_some(Verdict::GiveUp { count }))
            }
        }
    }

    /// Puts a restart that found no taker back on the schedule.
    pub(crate) fn retry(&mut self, key: &Key, due: Instant) {
        if let Some(state) = self.indexes.get_mut(key)
            && state.due.is_none()
            && !state.gave_up
        {
            state.due = Some(due);
            self.schedule.insert((due, key.clone()));
        }
    }

    /// When the next restart is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.schedule.first().map(|(due, _)| *due)
    }

    /// Restarts scheduled and not yet taken.
    pub(crate) fn pending(&self) -> usize {
        self.schedule.len()
    }

    /// Removes and returns every restart due at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Due> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.schedule.first()
            && *due <= now
        {
            let Some((_, key)) = self.schedule.pop_first() else {
                break;
            };
            let (count, instance) = self.indexes.get_mut(&key).map_or((0, None), |s| {
                s.due = None;
                (s.crash_count, s.last_instance.clone())
            });
            out.push(Due {
                key,
                count,
                instance,
            });
        }
        out
    }

    /// The cells whose last heartbeat shows a starting or running instance at `key` (someone
    /// restarted it already); empty when none does. Instances whose crash was counted do not
    /// count, even when the last heartbeat still shows them running: crash events usually
    /// overtake the next heartbeat.
    pub(crate) fn holders(&self, key: &Key) -> Vec<String> {
        self.executors
            .iter()
            .filter(|(_, e)| {
                e.heartbeat.instances.iter().any(|i| {
                    i.app == key.0
                        && i.index == key.1
                        && live(i.state)
                        && !self.counted.contains_key(&i.instance)
                })
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// `true` when any index of `app` has a starting or running instance whose crash was not
    /// counted. `false` means every instance the executors know of is crashed or gone.
    pub(crate) fn any_live(&self, app: &str) -> bool {
        self.executors.values().any(|e| {
            e.heartbeat
                .instances
                .iter()
                .any(|i| i.app == app && live(i.state) && !self.counted.contains_key(&i.instance))
        })
    }

    /// Keeps the newest start request for its index. `false` when the table is full.
    pub(crate) fn overhear(&mut self, start: StartInstance, now: Instant) -> bool {
        let key = (start.app.clone(), start.index);
        if !self.overheard.contains_key(&key) && self.overheard.len() >= self.max_tracked {
            return false;
        }
        self.overheard.insert(key, (start, now));
        true
    }

    /// The newest start request overheard for `key`.
    pub(crate) fn overheard(&self, key: &Key) -> Option<&StartInstance> {
        self.overheard.get(key).map(|(start, _)| start)
    }

    /// `true` when the cloud controller sent a start for `key` after `at`: the app was started
    /// or scaled since a copy fetched at `at`, so that copy is behind for this index.
    pub(crate) fn overheard_after(&self, key: &Key, at: Instant) -> bool {
        self.overheard.get(key).is_some_and(|(_, seen)| *seen > at)
    }

    /// Records whether cell `executor_id` is evacuating (from its presence); a cell not yet
    /// heard from in a heartbeat is left alone.
    pub(crate) fn set_evacuating(&mut self, executor_id: &str, evacuating: bool) {
        if let Some(e) = self.executors.get_mut(executor_id) {
            e.evacuating = evacuating;
        }
    }

    /// Records a presence of cell `executor_id` that lives until `until` unless refreshed.
    pub(crate) fn presence(&mut self, executor_id: &str, evacuating: bool, until: Instant) {
        self.set_evacuating(executor_id, evacuating);
        if self.presence_until.contains_key(executor_id)
            || self.presence_until.len() < self.max_tracked
        {
            self.presence_until.insert(executor_id.to_owned(), until);
        }
    }

    /// How long a cell not heard from is still believed.
    pub(crate) fn executor_timeout(&self) -> Duration {
        self.executor_timeout
    }

    /// When the next known presence lapses.
    pub(crate) fn next_lapse(&self) -> Option<Instant> {
        self.presence_until.values().min().copied()
    }

    /// Forgets every cell whose presence lapsed by `now` (a lost cell): its last heartbeat no
    /// longer counts as instances running, nor the cell as a place for restarts, without
    /// waiting `executor_timeout` for its heartbeats to age out. Returns the cells lost; one that
    /// comes back is learned again from its next heartbeat.
    pub(crate) fn lapse(&mut self, now: Instant) -> Vec<String> {
        let lost: Vec<String> = self
            .presence_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost {
            self.presence_until.remove(id);
            self.executors.remove(id);
        }
        lost
    }

    /// Executors that can take an instance of `app` needing `memory_mb`, best first (never an
    /// evacuating one): those
    /// that ran the app before (they are likely to hold its droplet in their cache, which
    /// matters when the droplet URL's token has expired or the controller is down), then the
    /// one the copy was sent to, then the most free memory.
    pub(crate) fn candidates(&self, app: &str, memory_mb: u64, preferred: &str) -> Vec<String> {
        let mut out: Vec<(bool, bool, std::cmp::Reverse<u64>, String)> = self
            .executors
            .iter()
            .filter(|(_, e)| !e.evacuating)
            .filter_map(|(id, e)| {
                let hb = &e.heartbeat;
                let free_mb = hb.capacity.memory_mb.saturating_sub(hb.used.memory_mb);
                let free_slots = hb.capacity.instances.saturating_sub(hb.used.instances);
                if free_mb < memory_mb || free_slots == 0 {
                    return None;
                }
                let ran_app = hb.instances.iter().any(|i| i.app == app);
                Some((
                    !ran_app,
                    id != preferred,
                    std::cmp::Reverse(free_mb),
                    id.clone(),
                ))
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, _, _, id)| id).collect()
    }

    /// Instances nobody wants according to `apps` (fetched at `fetched_at`). An instance is
    /// only judged once it has been seen for `grace` and the copy is newer than its first
    /// sighting. Stops already sent within `resend` are not repeated.
    pub(crate) fn extras(
        &mut self,
        apps: &HashMap<String, App>,
        fetched_at: Instant,
        now: Instant,
        grace: Duration,
        resend: Duration,
    ) -> Vec<Extra> {
        let mut out = Vec::new();
        for e in self.executors.values() {
            for i in &e.heartbeat.instances {
                if !live(i.state) {
                    continue;
                }
                let Some(seen) = self.instances.get(&i.instance) else {
                    continue;
                };
                if now.saturating_duration_since(seen.first_seen) < grace
                    || seen.first_seen > fetched_at
                {
                    continue;
                }
                let reason = match apps.get(&i.app) {
                    None => "the app is not desired (deleted)".to_owned(),
                    Some(app) if app.state != AppState::Started => "the app is stopped".to_owned(),
                    Some(app) if i.index >= app.instances => format!(
                        "index {} is above the desired {} instance(s)",
                        i.index, app.instances
                    ),
                    Some(_) => continue,
                };
                out.push(Extra {
                    executor_id: e.heartbeat.executor_id.clone(),
                    app: i.app.clone(),
                    instance: i.instance.clone(),
                    index: i.index,
                    reason,
                });
            }
        }
        out.retain(|x| {
            self.stops_sent
                .get(&x.instance)
                .is_none_or(|at| now.saturating_duration_since(*at) >= resend)
        });
        for x in &out {
            if self.stops_sent.len() < self.max_tracked {
                self.stops_sent.insert(x.instance.clone(), now);
            }
        }
        out
    }

    /// Apps that run instances which `apps` would call extra, ignoring freshness and grace:
    /// what a stale copy makes the health manager hold back on.
    pub(crate) fn would_stop(&self, apps: &HashMap<String, App>) -> Vec<String> {
        let mut out: Vec<String> = self
            .executors
            .values()
            .flat_map(|e| e.heartbeat.instances.iter())
            .filter(|i| live(i.state))
            .filter(|i| {
                apps.get(&i.app)
                    .is_none_or(|a| a.state != AppState::Started || i.index >= a.instances)
            })
            .map(|i| i.app.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Forgets executors and instances not heard of, and indexes long quiet. With a fresh
    /// desired copy fetched at `fetched_at`, also forgets overheard starts and crash history
    /// of apps it does not want, but only what was heard before the copy was taken (an app
    /// created after the poll is not forgotten before the next one).
    pub(crate) fn prune(&mut self, now: Instant, fresh: Option<(&HashMap<String, App>, Instant)>) {
        let timeout = self.executor_timeout;
        self.executors
            .retain(|_, e| now.saturating_duration_since(e.seen) < timeout);
        self.instances
            .retain(|_, i| now.saturating_duration_since(i.last_seen) < timeout);
        self.counted
            .retain(|_, at| now.saturating_duration_since(*at) < COUNTED_TTL);
        self.stops_sent
            .retain(|_, at| now.saturating_duration_since(*at) < COUNTED_TTL);
        self.indexes.retain(|_, s| {
            s.due.is_some()
                || s.gave_up
                || s.last_crash
                    .is_some_and(|at| now.saturating_duration_since(at) < INDEX_TTL)
        });
        if let Some((apps, fetched_at)) = fresh {
            let wanted = |(app, index): &Key| {
                apps.get(app)
                    .is_some_and(|a| a.state == AppState::Started && *index < a.instances)
            };
            self.overheard
                .retain(|key, (_, heard)| *heard >= fetched_at || wanted(key));
            let dropped: Vec<Key> = self
                .indexes
                .iter()
                .filter(|(k, s)| !wanted(k) && s.last_crash.is_none_or(|at| at < fetched_at))
                .map(|(k, _)| k)
                .cloned()
                .collect();
            for key in dropped {
                if let Some(state) = self.indexes.remove(&key)
                    && let Some(due) = state.due
                {
                    self.schedule.remove(&(due, key));
                }
            }
        }
    }

    /// The index's crash count (0 once forgotten).
    pub(crate) fn crash_count(&self, key: &Key) -> u32 {
        self.indexes.get(key).map_or(0, |s| s.crash_count)
    }
}

/// "Restarting instance 0 (crash 3 of 200, next back-off 60 s)".
pub(crate) fn restart_line(index: u32, count: u32) -> String {
    let next = match backoff::restart_delay(count.saturating_add(1)) {
        Some(d) => format!("next back-off {} s", d.as_secs()),
        None => "gives up on the next crash".to_owned(),
    };
    format!("Restarting instance {index} (crash {count} of {MAX_RESTARTS}, {next})")
}

#[cfg(test)]
mod tests {
    use hydrant_bus::messages::{InstanceHeartbeat, Resources};

    use super::*;

    fn key(index: u32) -> Key {
        ("app".to_owned(), index)
    }

    fn heartbeat(instances: &[(&str, u32, InstanceState)]) -> ExecutorHeartbeat {
        ExecutorHeartbeat {
            executor_id: "e1".into(),
            host: "127.0.0.1".into(),
            capacity: Resources {
                memory_mb: 1024,
                instances: 10,
            },
            used: Resources::default(),
            instances: instances
                .iter()
                .map(|(guid, index, state)| InstanceHeartbeat {
                    app: "app".into(),
                    instance: (*guid).into(),
                    index: *index,
                    state: *state,
                    since: 0,
                    port: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_crash_is_counted_once_from_event_and_heartbeat() {
        let now = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(30), 100);
        let v = t.crash(&key(0), "g1", now).unwrap().unwrap();
        assert_eq!(
            v,
            Verdict::Restart {
                count: 1,
                delay: Duration::ZERO,
                due: now
            }
        );
        let (crashed, full) = t.heartbeat(heartbeat(&[("g1", 0, InstanceState::Crashed)]), now);
        assert!(crashed.is_empty());
        assert_eq!(full, 0);
        assert_eq!(t.crash(&key(0), "g1", now).unwrap(), None);
        // A crash seen only in a heartbeat is reported.
        let (crashed, _) = t.heartbeat(heartbeat(&[("g2", 0, InstanceState::Crashed)]), now);
        assert_eq!(crashed.len(), 1);
    }

    #[test]
    fn restarts_are_due_exactly_at_their_back_off() {
        let start = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(30), 100);
        let mut now = start;
        let expected = [0u64, 0, 30, 60, 120, 240, 480, 960, 960];
        for (n, wait) in expected.iter().enumerate() {
            let guid = format!("g{n}");
            let Verdict::Restart { count, due, .. } =
                t.crash(&key(0), &guid, now).unwrap().unwrap()
            else {
                panic!("gave up early");
            };
            assert_eq!(count as usize, n + 1);
            assert_eq!(due, now + Duration::from_secs(*wait));
            if *wait > 0 {
                assert!(t.take_due(due - Duration::from_millis(1)).is_empty());
            }
            assert_eq!(t.next_due(), Some(due));
            let taken = t.take_due(due);
            assert_eq!(
                taken,
                vec![Due {
                    key: key(0),
                    count,
                    instance: Some(guid.clone())
                }]
            );
            assert_eq!(t.pending(), 0);
            now = due + Duration::from_secs(1);
        }
    }

    #[test]
    fn gives_up_at_200_and_resets_after_five_minutes_running() {
        let mut now = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(30), 1000);
        for n in 1..200 {
            assert!(matches!(
                t.crash(&key(1), &format!("g{n}"), now).unwrap(),
                Some(Verdict::Restart { .. })
            ));
            now += Duration::from_secs(1);
        }
        assert_eq!(
            t.crash(&key(1), "g200", now).unwrap(),
            Some(Verdict::GiveUp { count: 200 })
        );
        assert_eq!(t.pending(), 0);
        // A user brings it back; it runs for more than five minutes, then crashes: count 1.
        t.heartbeat(heartbeat(&[("fresh", 1, InstanceState::Running)]), now);
        assert_eq!(t.crash_count(&key(1)), 0);
        now += Duration::from_secs(301);
        t.heartbeat(heartbeat(&[("fresh", 1, InstanceState::Running)]), now);
        let v = t.crash(&key(1), "fresh", now).unwrap().unwrap();
        assert!(matches!(v, Verdict::Restart { count: 1, .. }), "{v:?}");
        // Four crashes, then one that ran only four minutes: the count goes on.
        for n in 0..3 {
            t.crash(&key(1), &format!("x{n}"), now).unwrap();
        }
        t.heartbeat(heartbeat(&[("y", 1, InstanceState::Running)]), now);
        now += Duration::from_secs(240);
        let v = t.crash(&key(1), "y", now).unwrap().unwrap();
        assert!(matches!(v, Verdict::Restart { count: 5, .. }), "{v:?}");
    }

    #[test]
    fn extras_wait_for_grace_and_a_newer_copy() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(30), 100);
        t.heartbeat(
            heartbeat(&[
                ("a", 0, InstanceState::Running),
                ("b", 1, InstanceState::Running),
                ("c", 2, InstanceState::Crashed),
            ]),
            t0,
        );
        let app: App = serde_json::from_value(serde_json::json!({
            "guid": "app", "name": "a", "space_guid": "s", "space_name": "s",
            "state": "STARTED", "instances": 1, "memory_mb": 64, "disk_mb": 64,
            "command": null, "env": {}, "health_check_type": "port",
            "health_check_endpoint": null, "current_droplet_guid": "d", "routes": [],
            "created_at": 0, "updated_at": 0
        }))
        .unwrap();
        let apps = HashMap::from([("app".to_owned(), app)]);
        let grace = Duration::from_secs(30);
        let resend = Duration::from_secs(30);
        // Copy older than the sighting: nothing.
        let later = t0 + Duration::from_secs(40);
        assert!(
            t.extras(&apps, t0 - Duration::from_secs(1), later, grace, resend)
                .is_empty()
        );
        // Within grace: nothing.
        assert!(
            t.extras(&apps, t0, t0 + Duration::from_secs(5), grace, resend)
                .is_empty()
        );
        let extras = t.extras(&apps, later, later, grace, resend);
        assert_eq!(extras.len(), 1);
        assert_eq!(extras[0].instance, "b");
        // Not re-sent within `resend`.
        assert!(t.extras(&apps, later, later, grace, resend).is_empty());
        assert_eq!(t.would_stop(&apps), vec!["app".to_owned()]);
        assert!(t.would_stop(&HashMap::new()).contains(&"app".to_owned()));
    }

    #[test]
    fn an_app_is_live_while_any_uncounted_instance_starts_or_runs() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(30), 100);
        t.heartbeat(
            heartbeat(&[
                ("i-0", 0, InstanceState::Crashed),
                ("i-1", 1, InstanceState::Running),
            ]),
            t0,
        );
        assert!(t.any_live("app"));
        assert!(!t.any_live("other"));
        // The running one crashes: its event overtakes the next heartbeat.
        t.crash(&key(1), "i-1", t0).unwrap();
        assert!(!t.any_live("app"));
        t.heartbeat(
            heartbeat(&[
                ("i-0", 0, InstanceState::Crashed),
                ("i-1", 1, InstanceState::Crashed),
                ("i-0b", 0, InstanceState::Starting),
            ]),
            t0,
        );
        assert!(t.any_live("app"));
    }

    #[test]
    fn tables_are_bounded() {
        let now = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(30), 2);
        t.crash(&key(0), "g0", now).unwrap();
        t.crash(&key(1), "g1", now).unwrap();
        assert!(t.crash(&key(2), "g2", now).is_err());
        let (_, full) = t.heartbeat(
            heartbeat(&[
                ("a", 0, InstanceState::Running),
                ("b", 1, InstanceState::Running),
                ("c", 2, InstanceState::Running),
            ]),
            now,
        );
        assert_eq!(full, 1);
    }

    #[test]
    fn the_restart_line_reads_like_the_brief() {
        assert_eq!(
            restart_line(0, 3),
            "Restarting instance 0 (crash 3 of 200, next back-off 60 s)"
        );
        assert_eq!(
            restart_line(2, 1),
            "Restarting instance 2 (crash 1 of 200, next back-off 0 s)"
        );
        assert_eq!(
            restart_line(1, 199),
            "Restarting instance 1 (crash 199 of 200, gives up on the next crash)"
        );
    }

    #[test]
    fn an_evacuating_cell_gets_no_restart() {
        let now = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(30), 100);
        t.heartbeat(heartbeat(&[]), now);
        assert_eq!(t.candidates("app", 256, ""), ["e1"]);
        t.set_evacuating("e1", true);
        assert!(t.candidates("app", 256, "").is_empty());
        // A heartbeat does not undo what the presence said.
        t.heartbeat(heartbeat(&[]), now);
        assert!(t.candidates("app", 256, "").is_empty());
        t.set_evacuating("e1", false);
        assert_eq!(t.candidates("app", 256, ""), ["e1"]);
        t.set_evacuating("unknown", true);
    }
}
