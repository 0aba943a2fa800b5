//! Which cell each instance was placed on, so the router can ignore a route registration from
//! a cell for an instance that cell does not run.
//!
//! Flow: the router learns placements from the start commands on `executor.start.<cell>` (on
//! the authenticated bus only the cloud controller and the health manager may publish those),
//! and who sent a registration from its subject, `router.register.<cell>` (each cell's NATS
//! user may publish only its own). A registration from cell B for an instance placed on cell A
//! is refused and counted (`router.dropped{reason=not_placed}`).
//!
//! An instance whose start the router never saw (the router started after it) is pinned to the
//! first cell that registers it, and a start command seen later overrides the pin; so after a
//! router restart a cell can claim an instance id nobody has registered yet, until the next
//! placement of that instance. The plain gorouter subjects (`router.register`) carry no cell and
//! are not checked; on the authenticated bus nobody may publish them.
//!
//! Invariant: the map is bounded ([`MAX_PLACEMENTS`]); the oldest entries go first.

use std::collections::{HashMap, VecDeque};

use hydrant_bus::Message;
use hydrant_bus::messages::{EXECUTOR_START, StartInstance};

/// Most instances remembered. Far above any one router's table (whose own limits are lower);
/// beyond it the oldest placement is forgotten and would be re-pinned on first registration.
pub(crate) const MAX_PLACEMENTS: usize = 200_000;

/// Where instances run, as far as this router knows.
#[derive(Debug, Default)]
pub(crate) struct Placements {
    cell_of: HashMap<String, String>,
    order: VecDeque<String>,
}

/// What to do with a registration from a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The instance was placed on (or first registered by) this cell.
    Accept,
    /// Another cell runs it, or the registration names no instance: ignore it.
    NotPlaced,
}

impl Placements {
    /// Learns from one `executor.start.<cell>` message; other messages are ignored.
    pub(crate) fn learn(&mut self, message: &Message) {
        let Some(cell) = message
            .subject
            .strip_prefix(EXECUTOR_START)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            return;
        };
        if let Ok(start) = message.json::<StartInstance>()
            && !start.instance.is_empty()
        {
            self.place(&start.instance, cell);
        }
    }

    fn place(&mut self, instance: &str, cell: &str) {
        match self.cell_of.get_mut(instance) {
            Some(known) => cell.clone_into(known),
            None => {
                if self.order.len() >= MAX_PLACEMENTS
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.cell_of.remove(&oldest);
                }
                self.cell_of.insert(instance.to_owned(), cell.to_owned());
                self.order.push_back(instance.to_owned());
            }
        }
    }

    /// May `cell` register (`pin` = true) or unregister `instance`?
    pub(crate) fn check(&mut self, instance: Option<&str>, cell: &str, pin: bool) -> Verdict {
        let Some(instance) = instance.filter(|i| !i.is_empty()) else {
            return Verdict::NotPlaced;
        };
        match self.cell_of.get(instance) {
            Some(known) if known == cell => Verdict::Accept,
            Some(_) => Verdict::NotPlaced,
            None => {
                if pin {
                    self.place(instance, cell);
                }
                Verdict::Accept
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.cell_of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hydrant_bus::messages;

    fn start(cell: &str, instance: &str) -> Message {
        let start = StartInstance {
            executor_id: cell.to_owned(),
            instance: instance.to_owned(),
            ..StartInstance::default()
        };
        Message {
            subject: messages::executor_start_subject(cell),
            payload: messages::encode(&start).unwrap(),
            reply: None,
        }
    }

    #[test]
    fn a_cell_may_register_only_what_was_placed_on_it() {
        let mut p = Placements::default();
        p.learn(&start("e1", "i-1"));
        assert_eq!(p.check(Some("i-1"), "e1", true), Verdict::Accept);
        assert_eq!(p.check(Some("i-1"), "e2", true), Verdict::NotPlaced);
        assert_eq!(p.check(Some("i-1"), "e2", false), Verdict::NotPlaced);
        assert_eq!(p.check(None, "e1", true), Verdict::NotPlaced);
        assert_eq!(p.check(Some(""), "e1", true), Verdict::NotPlaced);
        // Moved: the new placement wins.
        p.learn(&start("e2", "i-1"));
        assert_eq!(p.check(Some("i-1"), "e2", true), Verdict::Accept);
        assert_eq!(p.check(Some("i-1"), "e1", true), Verdict::NotPlaced);
    }

    #[test]
    fn an_unknown_instance_is_pinned_to_its_first_registrant() {
        let mut p = Placements::default();
        assert_eq!(p.check(Some("i-9"), "e1", false), Verdict::Accept);
        assert_eq!(p.len(), 0, "an unregister pins nothing");
        assert_eq!(p.check(Some("i-9"), "e1", true), Verdict::Accept);
        assert_eq!(p.check(Some("i-9"), "e2", true), Verdict::NotPlaced);
        p.learn(&start("e2", "i-9"));
        assert_eq!(p.check(Some("i-9"), "e2", true), Verdict::Accept);
    }

    #[test]
    fn garbage_and_other_subjects_teach_nothing_and_the_map_is_bounded() {
        let mut p = Placements::default();
        p.learn(&Message {
            subject: "executor.start.e1".into(),
            payload: Bytes::from_static(b"not json"),
            reply: None,
        });
        let mut other = start("e1", "i-1");
        other.subject = "executor.stop.e1".into();
        p.learn(&other);
        assert_eq!(p.len(), 0);
        for i in 0..MAX_PLACEMENTS + 10 {
            p.place(&format!("i-{i}"), "e1");
        }
        assert_eq!(p.len(), MAX_PLACEMENTS);
        assert_eq!(p.check(Some("i-0"), "e2", false), Verdict::Accept);
    }
}
