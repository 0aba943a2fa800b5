//! The staging queue: bounded, and fair across spaces.
//!
//! Flow: `POST /v3/apps/{guid}/builds` reserves a slot for the app's space ([`Queue::reserve`])
//! before it writes the build, then sends the job with the [`Permit`]; workers take jobs with
//! [`Queue::next`], one space after another in turn, so a space with twenty builds waiting
//! delays another space's build by at most one of its own per free worker.
//!
//! Invariants: at most `capacity` builds wait (reserved or queued); one space holds at most
//! `per_space` of those places, so no tenant can fill the queue and lock the others out; a
//! permit dropped unsent gives its place back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::Job;

/// Why a build found no place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every place is taken.
    Full,
    /// The space already holds its share of places.
    SpaceShare,
}

/// The queue. Clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
    per_space: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Jobs waiting, per space.
    waiting: BTreeMap<String, VecDeque<Job>>,
    /// Spaces with jobs waiting, in the order they get a worker.
    turn: VecDeque<String>,
    /// Places held per space (reserved or waiting).
    held: BTreeMap<String, usize>,
    /// Places held in all.
    total: usize,
    /// Jobs waiting in all.
    queued: usize,
}

impl State {
    fn release(&mut self, space: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.held.get_mut(space) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(space);
            }
        }
    }
}

/// A place reserved for one build of one space.
#[derive(Debug)]
pub(crate) struct Permit {
    inner: Arc<Inner>,
    space: String,
    sent: bool,
}

impl Permit {
    /// Queues `job` in the place reserved for it.
    pub(crate) fn send(mut self, job: Job) {
        self.sent = true;
        let mut state = self.inner.lock();
        let space = self.space.clone();
        let waiting = state.waiting.entry(space.clone()).or_default();
        waiting.push_back(job);
        if waiting.len() == 1 {
            state.turn.push_back(space);
        }
        state.queued += 1;
        drop(state);
        self.inner.ready.notify_one();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.sent {
            self.inner.lock().release(&self.space);
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Queue {
    /// A queue of `capacity` places, at most `per_space` (at least 1) for one space.
    pub(crate) fn new(capacity: usize, per_space: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                ready: Notify::new(),
                capacity,
                per_space: per_space.max(1),
            }),
        }
    }

    /// The share of places one space may hold.
    pub(crate) fn per_space(&self) -> usize {
        self.inner.per_space
    }

    /// A place for a build of `space`, or why there is none.
    pub(crate) fn reserve(&self, space: &str) -> Result<Permit, Refused> {
        let mut state = self.inner.lock();
        if state.total >= self.inner.capacity {
            return Err(Refused::Full);
        }
        let held = state.held.get(space).copied().unwrap_or(0);
        if held >= self.inner.per_space {
            return Err(Refused::SpaceShare);
        }
        state.total += 1;
        state.held.insert(space.to_owned(), held + 1);
        Ok(Permit {
            inner: self.inner.clone(),
            space: space.to_owned(),
            sent: false,
        })
    }

    /// Builds waiting.
    pub(crate) fn depth(&self) -> usize {
        self.inner.lock().queued
    }

    /// The next job: from the space whose turn it is; waits while none is queued.
    pub(crate) async fn next(&self) -> Job {
        loop {
            if let Some(job) = self.take() {
                return job;
            }
            self.inner.ready.notified().await;
        }
    }

    fn take(&self) -> Option<Job> {
        let mut state = self.inner.lock();
        let space = state.turn.pop_front()?;
        let waiting = state.waiting.get_mut(&space)?;
        let job = waiting.pop_front()?;
        if waiting.is_empty() {
            state.waiting.remove(&space);
        } else {
            state.turn.push_back(space.clone());
        }
        state.queued = state.queued.saturating_sub(1);
        state.release(&space);
        drop(state);
        // Another worker may be able to take the next one.
        if self.depth() > 0 {
            self.inner.ready.notify_one();
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(build: &str) -> Job {
        Job {
            build_guid: build.to_owned(),
            app_guid: "app".to_owned(),
            package_guid: "pkg".to_owned(),
            command: None,
        }
    }

    #[tokio::test]
    async fn one_space_cannot_fill_the_queue_and_spaces_take_turns() {
        let queue = Queue::new(8, 4);
        for i in 0..4 {
            queue.reserve("greedy").unwrap().send(job(&format!("g{i}")));
        }
        // Its share is used up; another space still finds a place, and goes next.
        assert_eq!(queue.reserve("greedy").unwrap_err(), Refused::SpaceShare);
        queue.reserve("polite").unwrap().send(job("p0"));
        let order: Vec<String> = [queue.next().await, queue.next().await, queue.next().await]
            .into_iter()
            .map(|j| j.build_guid)
            .collect();
        assert_eq!(order, ["g0", "p0", "g1"]);
        // Taking a job gives its place back.
        queue.reserve("greedy").unwrap().send(job("g4"));
        assert_eq!(queue.depth(), 3);
    }

    #[test]
    fn a_full_queue_refuses_and_an_unsent_permit_gives_its_place_back() {
        let queue = Queue::new(2, 2);
        let a = queue.reserve("a").unwrap();
        let _b = queue.reserve("b").unwrap();
        assert_eq!(queue.reserve("c").unwrap_err(), Refused::Full);
        drop(a);
        assert!(queue.reserve("c").is_ok());
    }
}
