//! [`SourceCounters`]: one counter per source that dropped, with bounded label cardinality.
//!
//! Where it sits: a queue with a `hydrant_buffer::FairShare` beside it hands its per-source
//! drop counts here (from its periodic sweep, never per envelope), and `/metrics` shows
//! `<name>{source=...}` for the sources that lose data.
//!
//! Invariant: at most `max` sources have a series of their own, plus one `source="other"`.
//! A source keeps its series while it keeps dropping; a series idle for [`IDLE`] gives its
//! place to the next new source (and leaves `/metrics`); when no place is free the new source
//! is counted under `other`. The loud sources are the ones that drop, so they get the series.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Counter, Registry, lock};

/// How long a source's series lives without a drop before its place may be reused.
pub const IDLE: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Entry {
    counter: Counter,
    last: Instant,
}

/// Drop counters by source: see the module docs.
#[derive(Debug)]
pub struct SourceCounters {
    registry: Registry,
    name: &'static str,
    help: &'static str,
    tags: Vec<(String, String)>,
    max: usize,
    entries: Mutex<HashMap<Box<str>, Entry>>,
    other: Counter,
}

impl SourceCounters {
    /// Counters named `name`, tagged `tags` plus `source`, for at most `max` sources.
    #[must_use]
    pub fn new(
        registry: &Registry,
        name: &'static str,
        help: &'static str,
        tags: &[(&str, &str)],
        max: usize,
    ) -> Self {
        let mut all: Vec<(&str, &str)> = tags.to_vec();
        all.push(("source", "other"));
        Self {
            registry: registry.clone(),
            name,
            help,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            max,
            entries: Mutex::default(),
            other: registry.counter(name, help, &all),
        }
    }

    /// Adds `n` drops of `source` (`None`: a source the owner could not tell apart).
    pub fn add(&self, source: Option<&str>, n: u64) {
        if n == 0 {
            return;
        }
        let Some(source) = source else {
            self.other.add(n);
            return;
        };
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get_mut(source) {
            entry.last = now;
            entry.counter.add(n);
            return;
        }
        if entries.len() >= self.max {
            let idle = entries
                .iter()
                .filter(|(_, e)| now.saturating_duration_since(e.last) >= IDLE)
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| k.clone());
            let Some(idle) = idle else {
                self.other.add(n);
                return;
            };
            entries.remove(&idle);
            let mut tags: Vec<(&str, &str)> = self.tag_refs();
            tags.push(("source", &idle));
            self.registry.remove(self.name, &tags);
        }
        let mut tags: Vec<(&str, &str)> = self.tag_refs();
        tags.push(("source", source));
        let counter = self.registry.counter(self.name, self.help, &tags);
        counter.add(n);
        entries.insert(Box::from(source), Entry { counter, last: now });
    }

    fn tag_refs(&self) -> Vec<(&str, &str)> {
        self.tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_max_sources_new_ones_are_counted_as_other() {
        let registry = Registry::new("agent", "0");
        let c = SourceCounters::new(&registry, "agent.dropped_by_source", "", &[], 2);
        c.add(Some("a"), 5);
        c.add(Some("b"), 1);
        c.add(Some("c"), 7);
        c.add(Some("a"), 1);
        c.add(None, 2);
        let sum = |s| registry.counter_sum("agent.dropped_by_source", &[("source", s)]);
        assert_eq!((sum("a"), sum("b"), sum("c"), sum("other")), (6, 1, 0, 9));
        assert_eq!(registry.counter_sum("agent.dropped_by_source", &[]), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_series_gives_its_place_to_a_new_source() {
        let registry = Registry::new("agent", "0");
        let c = SourceCounters::new(&registry, "agent.dropped_by_source", "", &[], 1);
        c.add(Some("old"), 3);
        tokio::time::advance(IDLE).await;
        c.add(Some("new"), 4);
        let sum = |s| registry.counter_sum("agent.dropped_by_source", &[("source", s)]);
        assert_eq!((sum("old"), sum("new"), sum("other")), (0, 4, 0));
    }
}
