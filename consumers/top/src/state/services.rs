//! Service instances as the console knows them: what the API lists (offering, plan, space, last
//! operation) and what their brokers report into the pipeline — `service.*` gauges every 10 s
//! with the instance guid as source id (`service.up`, connections, operations per second,
//! memory and storage against the plan, RabbitMQ queue depth). Their `SVC` log lines are kept
//! with every other source's lines (`State::logs`).
//!
//! Flow: gauges from the feed → [`Services::record`]; the API poller's list →
//! [`Services::apply_list`]; the services table and the service screen read both.
//!
//! Invariants: bounded — at most `max` instances with live gauges and [`MAX_METRICS`] metrics
//! each, refusals counted; an instance silent for ten minutes and no longer listed is
//! forgotten; a gauge is told apart from an app's by its `service.` prefix alone, so no app
//! metric is ever taken for a service's.

use std::collections::{BTreeMap, HashMap};

use hydrant_api::services::ServiceInstance;
use hydrant_envelope::wire::EnvelopeView;

/// The prefix of every gauge a broker reports per instance.
pub(crate) const PREFIX: &str = "service.";

/// `service.up`: 1 while the instance's node answers, 0 while it does not.
pub(crate) const UP: &str = "service.up";

/// Metrics kept per instance (the broker sends about ten).
pub(crate) const MAX_METRICS: usize = 32;

/// One instance's newest gauges.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveService {
    /// The `offering` and `plan` tags of its gauges.
    pub offering: Box<str>,
    pub plan: Box<str>,
    /// When it last reported, UNIX ns.
    pub ts: i64,
    /// Metric name → (value, when), newest report each.
    pub metrics: BTreeMap<Box<str>, (f64, i64)>,
    /// Reports with `service.up` = 0 since the console started: a node that died and came
    /// back shows here after its dip is over.
    pub down_reports: u64,
    /// When the node last read down, UNIX ns.
    pub last_down: Option<i64>,
}

impl LiveService {
    /// A metric's newest value.
    pub(crate) fn get(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).map(|(v, _)| *v)
    }
}

/// Every service instance seen, from the API and from the stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Services {
    /// The API's list, by guid (what this token may see).
    pub listed: HashMap<String, ServiceInstance>,
    /// True once the API answered a list.
    pub seen: bool,
    /// Why the last list failed, cleaned.
    pub error: Option<String>,
    /// Live gauges, by instance guid.
    pub live: HashMap<Box<str>, LiveService>,
    /// Most instances with live gauges.
    max: usize,
    /// Reports of a new instance refused because `max` were already kept.
    pub refused: u64,
}

impl Services {
    /// An empty store that keeps gauges of at most `max` instances.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            ..Self::default()
        }
    }

    /// Folds a gauge envelope in when it carries `service.*` metrics; false when it is not a
    /// service's (so the caller offers it to the app and platform readers).
    pub(crate) fn record(&mut self, view: &EnvelopeView<'_>) -> bool {
        if view.source_id.is_empty() {
            return false;
        }
        let mut values = view
            .gauge_values()
            .filter(|(name, value, _)| name.starts_with(PREFIX) && value.is_finite())
            .peekable();
        if values.peek().is_none() {
            return false;
        }
        if !self.live.contains_key(view.source_id) && self.live.len() >= self.max {
            self.refused += 1;
            return true;
        }
        let live = self.live.entry(view.source_id.into()).or_default();
        if let Some(o) = view.tag("offering") {
            live.offering = o.into();
        }
        if let Some(p) = view.tag("plan") {
            live.plan = p.into();
        }
        live.ts = live.ts.max(view.timestamp);
        for (name, value, _) in values {
            if !live.metrics.contains_key(name) && live.metrics.len() >= MAX_METRICS {
                continue;
            }
            let slot = live.metrics.entry(name.into()).or_insert((value, i64::MIN));
            // A replayed older report never overwrites a newer one.
            if view.timestamp >= slot.1 {
                *slot = (value, view.timestamp);
                if name == UP && value < 0.5 {
                    live.down_reports += 1;
                    live.last_down = Some(live.last_down.unwrap_or(i64::MIN).max(view.timestamp));
                }
            }
        }
        true
    }

    /// The API's list: `Some` replaces what was known, `None` (the call failed) keeps it.
    pub(crate) fn apply_list(&mut self, list: Option<Vec<ServiceInstance>>, error: Option<String>) {
        if let Some(list) = list {
            self.listed = list.into_iter().map(|i| (i.guid.clone(), i)).collect();
            self.seen = true;
        }
        self.error = error.map(|e| crate::format::clean(&e).into_owned());
    }

    /// Whether `id` is a service instance's source id.
    pub(crate) fn is_service(&self, id: &str) -> bool {
        self.listed.contains_key(id) || self.live.contains_key(id)
    }

    /// Forgets live gauges of instances silent since `before` (UNIX ns) that the API no longer
    /// lists.
    pub(crate) fn forget_older_than(&mut self, before: i64) {
        let listed = &self.listed;
        self.live
            .retain(|id, l| l.ts >= before || listed.contains_key(&**id));
    }

    /// The instance guid whose name is `name` (or which is `name`).
    pub(crate) fn find(&self, name: &str) -> Option<String> {
        if self.is_service(name) {
            return Some(name.to_owned());
        }
        self.listed
            .values()
            .find(|i| i.name == name)
            .map(|i| i.guid.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;
    use hydrant_envelope::v2;
    use hydrant_testkit::envelopes::{self, envelope};

    fn report(source: &str, metrics: &[(&str, f64, &str)], ts: i64) -> Vec<u8> {
        let e: v2::Envelope = envelope(
            ts,
            source,
            "0",
            &[("offering", "redis"), ("plan", "small")],
            envelopes::gauge(metrics),
        );
        hydrant_envelope::wire::encode(&e).to_vec()
    }

    fn record(s: &mut Services, bytes: &[u8]) -> bool {
        s.record(&EnvelopeView::parse(bytes).unwrap())
    }

    #[test]
    fn only_service_gauges_are_taken_and_an_older_report_never_wins() {
        let mut s = Services::new(8);
        assert!(!record(&mut s, &report("app", &[("cpu", 5.0, "%")], 10)));
        assert!(s.live.is_empty(), "an app's gauge is not a service's");
        assert!(record(
            &mut s,
            &report("i-1", &[("service.up", 1.0, "bool")], 20)
        ));
        assert!(record(
            &mut s,
            &report("i-1", &[("service.up", 0.0, "bool")], 15)
        ));
        let live = &s.live["i-1"];
        assert_eq!(live.get(UP), Some(1.0), "the replayed older report lost");
        assert_eq!((&*live.offering, &*live.plan), ("redis", "small"));
        assert!(record(
            &mut s,
            &report("i-1", &[("service.up", 0.0, "bool")], 30)
        ));
        assert_eq!(
            s.live["i-1"].down_reports, 1,
            "a down report counts once it is the newest (the replayed one lost)"
        );
        assert_eq!(s.live["i-1"].last_down, Some(30));
    }

    #[test]
    fn instances_and_their_metrics_are_bounded_and_refusals_counted() {
        let mut s = Services::new(2);
        for id in ["a", "b", "c", "d"] {
            assert!(record(
                &mut s,
                &report(id, &[("service.up", 1.0, "bool")], 1)
            ));
        }
        assert_eq!(s.live.len(), 2);
        assert_eq!(s.refused, 2);
        let names: Vec<String> = (0..MAX_METRICS + 5)
            .map(|i| format!("service.m{i}"))
            .collect();
        let metrics: Vec<(&str, f64, &str)> =
            names.iter().map(|n| (n.as_str(), 1.0, "count")).collect();
        record(&mut s, &report("a", &metrics, 2));
        assert_eq!(s.live["a"].metrics.len(), MAX_METRICS);
        // Silent and no longer listed: forgotten.
        s.forget_older_than(2);
        assert_eq!(s.live.len(), 1);
        assert!(s.is_service("a") && !s.is_service("b"));
    }
}
