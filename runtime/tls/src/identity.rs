//! The role identities a certificate can carry, and the one place that spells their names.
//!
//! The invariant: an identity's name is what its certificate holds as subject CN and DNS SAN, and
//! what an allow-list names, so a role is recognised by the same string everywhere.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Who a certificate says its holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// The node agent: receives envelopes from emitters, sends to dopplers.
    Agent,
    /// A doppler: receives from agents, serves egress and log cache reads.
    Doppler,
    /// The traffic controller and firehose edge: reads doppler egress.
    TrafficController,
    /// The cloud controller.
    CloudController,
    /// An executor (a cell).
    Executor,
    /// The HTTP router.
    Router,
    /// The health manager.
    HealthManager,
    /// The autoscaler.
    Autoscaler,
    /// The SLO alerter.
    Slo,
    /// A nozzle (syslog, Datadog, OTLP).
    Nozzle,
    /// The NATS server.
    Nats,
}

impl Identity {
    /// Every identity, in the order `hydrant certs` issues them.
    pub const ALL: [Identity; 11] = [
        Identity::Agent,
        Identity::Doppler,
        Identity::TrafficController,
        Identity::CloudController,
        Identity::Executor,
        Identity::Router,
        Identity::HealthManager,
        Identity::Autoscaler,
        Identity::Slo,
        Identity::Nozzle,
        Identity::Nats,
    ];

    /// The name a certificate carries as subject CN and DNS SAN.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Identity::Agent => "agent",
            Identity::Doppler => "doppler",
            Identity::TrafficController => "trafficcontroller",
            Identity::CloudController => "cloudcontroller",
            Identity::Executor => "executor",
            Identity::Router => "router",
            Identity::HealthManager => "healthmanager",
            Identity::Autoscaler => "autoscaler",
            Identity::Slo => "slo",
            Identity::Nozzle => "nozzle",
            Identity::Nats => "nats",
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Identity::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| Error::UnknownIdentity(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_identity() {
        for id in Identity::ALL {
            assert_eq!(id.name().parse::<Identity>().ok(), Some(id));
        }
        assert!("root".parse::<Identity>().is_err());
    }
}
