//! Which cell each instance was placed on, and the check every consumer of a cell's reports
//! makes with it: a heartbeat, crash or route message from a cell may speak only for that cell
//! and only for instances placed on it.
//!
//! Flow: whoever places an instance (the cloud controller, the health manager) publishes an
//! [`InstancePlaced`] on `executor.placed.<cell>` just before the start request → every
//! consumer ([`Placements::learn`]) → a cell's report arrives on its own subject
//! (`executor.heartbeat.<cell>`, `executor.crash.<cell>`, `router.register.<cell>`; on the
//! authenticated bus each cell's NATS user may publish only its own) → [`Placements::vet_heartbeat`],
//! [`Placements::vet_crash`] or [`Placements::check`] → accepted, or refused with a
//! [`Refusal`] the consumer counts under its own `<role>.dropped{reason}` and logs.
//!
//! An instance whose placement the consumer never saw (it started after the placement) is
//! pinned to the first cell that reports it running or registers it, and a placement seen later
//! overrides the pin; a crash report never pins (a lost crash is repaired by the next heartbeat,
//! which shows the instance crashed). So after a consumer restarts, a hostile cell can claim an
//! instance id nobody has reported yet, until that instance's next placement; it can never
//! speak for an instance placed on, or first reported by, another cell.
//!
//! Invariant: the map is bounded (`max` entries); the oldest placement goes first and would be
//! re-pinned on its next report.

use std::collections::{HashMap, VecDeque};

use crate::Message;
use crate::messages::{self, ExecutorCrash, ExecutorHeartbeat, InstancePlaced};

/// Most placements a consumer remembers by default: far above any cloud's instance count.
pub const MAX_PLACEMENTS: usize = 200_000;

/// Why a cell's report was dropped; [`Refusal::reason`] is the `reason` tag to count it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The payload's `executor_id` is not the cell its subject names (or the subject names
    /// none): a cell speaking for another.
    WrongCell,
    /// The instance was placed on (or first reported by) another cell, or is unknown where
    /// only a placed instance may be reported (crashes), or the report names no instance.
    NotPlaced,
}

/// `reason` tag of [`Refusal::WrongCell`].
pub const REASON_WRONG_CELL: &str = "wrong_cell";
/// `reason` tag of [`Refusal::NotPlaced`].
pub const REASON_NOT_PLACED: &str = "not_placed";

impl Refusal {
    /// The `reason` tag to count the drop under.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::WrongCell => REASON_WRONG_CELL,
            Self::NotPlaced => REASON_NOT_PLACED,
        }
    }
}

/// What a cell claims about an instance, which decides how an unknown instance is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It runs the instance (a heartbeat entry, a route registration): an unknown instance is
    /// pinned to this cell.
    Runs,
    /// It no longer serves the instance (a route unregistration): an unknown instance is
    /// accepted and pins nothing.
    Releases,
    /// The instance crashed: an unknown instance is refused.
    Crashed,
}

/// Where instances run, as far as this consumer knows.
#[derive(Debug)]
pub struct Placements {
    cell_of: HashMap<String, String>,
    order: VecDeque<String>,
    max: usize,
}

impl Default for Placements {
    fn default() -> Self {
        Self::new(MAX_PLACEMENTS)
    }
}

impl Placements {
    /// An empty map holding at most `max` placements (at least one).
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            cell_of: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Learns from one `executor.placed.<cell>` message. `false` (learn nothing) for another
    /// subject, a payload that does not decode, names no instance, or names another cell
    /// than its subject.
    pub fn learn(&mut self, message: &Message) -> bool {
        let Some(cell) = messages::cell_of(&message.subject, messages::EXECUTOR_PLACED) else {
            return false;
        };
        match message.json::<InstancePlaced>() {
            Ok(placed) if !placed.instance.is_empty() && placed.executor_id == cell => {
                self.place(&placed.instance, cell);
                true
            }
            _ => false,
        }
    }

    /// Records that `instance` runs on `cell`, replacing what was known.
    pub fn place(&mut self, instance: &str, cell: &str) {
        match self.cell_of.get_mut(instance) {
            Some(known) => cell.clone_into(known),
            None => {
                if self.order.len() >= self.max
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.cell_of.remove(&oldest);
                }
                self.cell_of.insert(instance.to_owned(), cell.to_owned());
                self.order.push_back(instance.to_owned());
            }
        }
    }

    /// The cell `instance` was placed on (or pinned to), if known.
    #[must_use]
    pub fn cell(&self, instance: &str) -> Option<&str> {
        self.cell_of.get(instance).map(String::as_str)
    }

    /// How many placements are remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.cell_of.len()
    }

    /// `true` when nothing is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.cell_of.is_empty()
    }

    /// May `cell` make `claim` about `instance`?
    pub fn check(
        &mut self,
        instance: Option<&str>,
        cell: &str,
        claim: Claim,
    ) -> Result<(), Refusal> {
        let Some(instance) = instance.filter(|i| !i.is_empty()) else {
            return Err(Refusal::NotPlaced);
        };
        match self.cell_of.get(instance) {
            Some(known) if known == cell => Ok(()),
            Some(_) => Err(Refusal::NotPlaced),
            None => match claim {
                Claim::Runs => {
                    self.place(instance, cell);
                    Ok(())
                }
                Claim::Releases => Ok(()),
                Claim::Crashed => Err(Refusal::NotPlaced),
            },
        }
    }

    /// Vets a heartbeat that arrived on `subject`. A heartbeat whose `executor_id` is not its
    /// subject's cell is refused whole; otherwise the instances placed on another cell are
    /// removed from it and returned (the caller counts each as [`Refusal::NotPlaced`]), and the
    /// rest is the cell's own report.
    pub fn vet_heartbeat(
        &mut self,
        subject: &str,
        heartbeat: &mut ExecutorHeartbeat,
    ) -> Result<Vec<String>, Refusal> {
        let cell = sender(
            subject,
            messages::EXECUTOR_HEARTBEAT,
            &heartbeat.executor_id,
        )?;
        let mut forged = Vec::new();
        heartbeat.instances.retain(|i| {
            let own = self.check(Some(&i.instance), cell, Claim::Runs).is_ok();
            if !own {
                forged.push(i.instance.clone());
            }
            own
        });
        Ok(forged)
    }

    /// Vets a crash report that arrived on `subject`: it must come from the cell its
    /// `executor_id` names, about an instance placed on that cell.
    pub fn vet_crash(&mut self, subject: &str, crash: &ExecutorCrash) -> Result<(), Refusal> {
        let cell = sender(subject, messages::EXECUTOR_CRASH, &crash.executor_id)?;
        self.check(Some(&crash.instance), cell, Claim::Crashed)
    }
}

/// The cell that sent a message on `prefix.<cell>`, when the payload agrees with the subject.
fn sender<'a>(subject: &'a str, prefix: &str, executor_id: &str) -> Result<&'a str, Refusal> {
    match messages::cell_of(subject, prefix) {
        Some(cell) if cell == executor_id => Ok(cell),
        _ => Err(Refusal::WrongCell),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{InstanceHeartbeat, InstanceState};
    use bytes::Bytes;

    fn placed(cell: &str, instance: &str) -> Message {
        let placed = InstancePlaced {
            executor_id: cell.to_owned(),
            instance: instance.to_owned(),
            ..InstancePlaced::default()
        };
        Message {
            subject: messages::executor_placed_subject(cell),
            payload: messages::encode(&placed).unwrap(),
            reply: None,
        }
    }

    fn heartbeat(cell: &str, instances: &[&str]) -> ExecutorHeartbeat {
        ExecutorHeartbeat {
            executor_id: cell.to_owned(),
            instances: instances
                .iter()
                .map(|i| InstanceHeartbeat {
                    instance: (*i).to_owned(),
                    state: InstanceState::Running,
                    ..InstanceHeartbeat::default()
                })
                .collect(),
            ..ExecutorHeartbeat::default()
        }
    }

    fn crash(cell: &str, instance: &str) -> ExecutorCrash {
        ExecutorCrash {
            executor_id: cell.to_owned(),
            instance: instance.to_owned(),
            ..ExecutorCrash::default()
        }
    }

    #[test]
    fn a_cell_speaks_only_for_itself_and_its_own_instances() {
        let mut p = Placements::default();
        assert!(p.learn(&placed("e1", "i-1")));
        assert!(p.learn(&placed("e2", "i-2")));
        // e2 reports e1's instance crashed, on its own subject: not placed on it.
        assert_eq!(
            p.vet_crash("executor.crash.e2", &crash("e2", "i-1")),
            Err(Refusal::NotPlaced)
        );
        // ... or under e1's name: the subject says e2 sent it.
        assert_eq!(
            p.vet_crash("executor.crash.e2", &crash("e1", "i-1")),
            Err(Refusal::WrongCell)
        );
        assert_eq!(
            p.vet_crash("executor.crash", &crash("e1", "i-1")),
            Err(Refusal::WrongCell)
        );
        assert_eq!(
            p.vet_crash("executor.crash.e1", &crash("e1", "i-1")),
            Ok(())
        );
        // A crash of an instance nobody placed is refused and pins nothing.
        assert_eq!(
            p.vet_crash("executor.crash.e2", &crash("e2", "i-9")),
            Err(Refusal::NotPlaced)
        );
        assert_eq!(p.cell("i-9"), None);

        let mut hb = heartbeat("e2", &["i-1", "i-2", "i-new"]);
        let forged = p.vet_heartbeat("executor.heartbeat.e2", &mut hb).unwrap();
        assert_eq!(forged, ["i-1"]);
        let kept: Vec<&str> = hb.instances.iter().map(|i| i.instance.as_str()).collect();
        assert_eq!(kept, ["i-2", "i-new"]);
        // The unknown instance is now pinned to the cell that reported it running.
        assert_eq!(p.cell("i-new"), Some("e2"));
        let mut hb = heartbeat("e1", &["i-1"]);
        assert_eq!(
            p.vet_heartbeat("executor.heartbeat.e2", &mut hb),
            Err(Refusal::WrongCell)
        );
        // A placement seen later wins over a pin.
        p.learn(&placed("e1", "i-new"));
        assert_eq!(
            p.check(Some("i-new"), "e2", Claim::Runs),
            Err(Refusal::NotPlaced)
        );
        assert_eq!(p.check(Some("i-new"), "e1", Claim::Runs), Ok(()));
        assert_eq!(p.check(Some("i-x"), "e1", Claim::Releases), Ok(()));
        assert_eq!(p.cell("i-x"), None, "a release pins nothing");
        assert_eq!(p.check(None, "e1", Claim::Runs), Err(Refusal::NotPlaced));
        assert_eq!(
            p.check(Some(""), "e1", Claim::Runs),
            Err(Refusal::NotPlaced)
        );
    }

    #[test]
    fn garbage_mismatched_and_other_subjects_teach_nothing_and_the_map_is_bounded() {
        let mut p = Placements::new(3);
        assert!(!p.learn(&Message {
            subject: "executor.placed.e1".into(),
            payload: Bytes::from_static(b"not json"),
            reply: None,
        }));
        let mut other = placed("e1", "i-1");
        other.subject = "executor.start.e1".into();
        assert!(!p.learn(&other));
        let mut mismatched = placed("e1", "i-1");
        mismatched.subject = messages::executor_placed_subject("e2");
        assert!(!p.learn(&mismatched));
        assert!(p.is_empty());
        for i in 0..5 {
            p.place(&format!("i-{i}"), "e1");
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.cell("i-0"), None);
        assert_eq!(p.cell("i-4"), Some("e1"));
        assert_eq!(Refusal::WrongCell.reason(), "wrong_cell");
        assert_eq!(Refusal::NotPlaced.reason(), "not_placed");
    }
}
