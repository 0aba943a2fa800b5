//! The emitter: how every Hydrant role (and the executor, on behalf of apps) sends envelopes to
//! the local agent, plus the self-telemetry registry behind every role's `/metrics`.
//!
//! Flow: role code → [`Emitter`] (bounded, never blocks) → gRPC `BatchSender` → agent.
//!
//! # Layout
//! - [`telemetry`]: named counters, gauges and histograms with tags; rendered as Prometheus
//!   text on `/metrics` (which the role runtime serves) and emitted as envelopes into the
//!   pipeline (invariant 7: the platform observes itself through its own pipeline).
//! - [`SourceCounters`]: drop counters by source with bounded label cardinality.
//! - [`tls`]: mutual TLS refusals and certificate expiry on a role's `/metrics`.
//! - [`Emitter`]: the bounded, batching, never-blocking client of the agent's v2 ingress, and
//!   [`spawn_reporter`], which feeds a [`Registry`] through it.

mod emitter;
mod error;
mod sources;
pub mod telemetry;
pub mod tls;

pub use emitter::{BatchStream, Emitter, EmitterConfig, TelemetryConfig, lock, spawn_reporter};
pub use error::Error;
pub use sources::SourceCounters;
pub use telemetry::{Counter, Gauge, Histogram, Registry};
