//! The client half of the pipeline's first hop: a bounded, batching, never-blocking sender of
//! envelopes to the local agent's v2 `BatchSender`.
//!
//! PLACEHOLDER API: the signatures below are the contract other crates build against; the
//! implementation is being written (see the agent/emitter work).

use std::time::Duration;

use hydrant_envelope::v2;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::Registry;

/// Where and how a role sends its own telemetry. Part of every role's config as `[telemetry]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The local agent's v2 ingress URL, e.g. `http://127.0.0.1:3458`. Unset: metrics are only
    /// served on `/metrics`, not emitted into the pipeline.
    pub agent: Option<String>,
    /// How often the role's counters and gauges are emitted as envelopes. Default 5 s (what
    /// Doppler uses).
    pub interval_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            agent: None,
            interval_secs: 5,
        }
    }
}

impl TelemetryConfig {
    /// Starts an emitter and a reporter that emits `registry` every `interval_secs`, when an
    /// agent is configured.
    #[must_use]
    pub fn start(&self, registry: &Registry, shutdown: CancellationToken) -> Option<Emitter> {
        let agent = self.agent.clone()?;
        let emitter = Emitter::start(
            EmitterConfig {
                agent,
                ..EmitterConfig::default()
            },
            registry,
            shutdown.clone(),
        );
        spawn_reporter(
            registry.clone(),
            emitter.clone(),
            Duration::from_secs(self.interval_secs.max(1)),
            shutdown,
        );
        Some(emitter)
    }
}

/// Emitter settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EmitterConfig {
    /// The agent's v2 ingress URL.
    pub agent: String,
    /// Flush a batch at this many envelopes.
    pub batch_max_envelopes: usize,
    /// Flush a batch at this many encoded bytes.
    pub batch_max_bytes: usize,
    /// Flush a non-empty batch after this long.
    pub flush_interval_ms: u64,
    /// Batches waiting to be sent; past this the oldest is dropped and counted.
    pub queue_max_batches: usize,
}

impl Default for EmitterConfig {
    fn default() -> Self {
        Self {
            agent: "http://127.0.0.1:3458".to_owned(),
            batch_max_envelopes: 100,
            batch_max_bytes: 64 * 1024,
            flush_interval_ms: 10,
            queue_max_batches: 1024,
        }
    }
}

/// A cheap-to-clone handle for emitting envelopes. Emitting never blocks.
#[derive(Debug, Clone)]
pub struct Emitter {
    _private: (),
}

impl Emitter {
    /// Starts the background sender. Its counters (`emitter.emitted`, `emitter.sent`,
    /// `emitter.dropped{reason}`) are registered in `registry`.
    #[must_use]
    pub fn start(
        _config: EmitterConfig,
        _registry: &Registry,
        _shutdown: CancellationToken,
    ) -> Self {
        Self { _private: () }
    }

    /// Emits one envelope (encoded here).
    pub fn emit(&self, _envelope: &v2::Envelope) {}

    /// Emits one already-encoded envelope.
    pub fn emit_encoded(&self, _envelope: &[u8]) {}
}

/// Emits `registry` as envelopes every `interval` until `shutdown`.
pub fn spawn_reporter(
    _registry: Registry,
    _emitter: Emitter,
    _interval: Duration,
    _shutdown: CancellationToken,
) {
}
