//! The machinery every nozzle shares. A nozzle reads the firehose and forwards envelopes to
//! an outside system (syslog, Datadog, OTLP); this crate holds the parts that decide what
//! happens when that system is slow or down, and the scaffolding every nozzle's `run` is built
//! on (the [`FirehoseReader`], the shared config checks, a bounded shutdown).
//!
//! Flow: [`FirehoseReader`] → nozzle encoder → one [`DestinationQueue`] per destination (bounded
//! in bytes and count, drop-oldest) → a sender task that takes batches, retries them with
//! [`Backoff`] and stops trying while the destination's [`CircuitBreaker`] is open.
//!
//! Invariants this crate keeps:
//! - one slow or dead destination never slows the firehose or another destination: pushing
//!   never waits, it evicts the oldest entries and counts them by reason;
//! - every loss is counted ([`NozzleMetrics`]) and can be told to the app in-band
//!   ([`loss_notice`]);
//! - a nozzle with a cursor file resumes where its destinations stopped: the cursor of the
//!   last frame they all dealt with is stored after they did ([`CursorFile`], [`Checkpoints`]),
//!   so a restart within the dopplers' window loses nothing (at-least-once); its reader waits
//!   for a destination that is delivering but far behind ([`Keeper::pace`]) rather than evict
//!   what the firehose would have kept for it, and never for one that is stuck;
//! - credentials in destination URLs never leave the process: everything that names a
//!   destination goes through [`mask_url`].

mod backoff;
mod breaker;
mod cursor;
mod error;
mod firehose;
mod metrics;
mod queue;
mod role;
mod watermark;

pub use backoff::Backoff;
pub use breaker::{BreakerConfig, CircuitBreaker};
pub use cursor::{
    Checkpoints, CursorFile, Journal, KEEP_INTERVAL, Keeper, MAX_CHECKPOINTS, PACE_IN_FLIGHT,
    PACE_STALL, Progress, Saved, keep, validate_cursor_file,
};
pub use error::Error;
pub use firehose::FirehoseReader;
pub use hydrant_api::mask_url;
pub use metrics::{LOSS_SOURCE_TYPE, NozzleMetrics, loss_notice, loss_notice_text};
pub use queue::{DestinationQueue, QueueLimits};
pub use role::{ABORT_GRACE, finish_senders, validate_firehose, validate_self_report};
pub use watermark::{Positions, Ticket, Watermark};

/// The error types [`nozzle_error_conversions!`] names, reached through this crate so a
/// nozzle using the macro needs no dependency of its own for them.
#[doc(hidden)]
pub mod __error_sources {
    pub use hydrant_firehose_client::Error as FirehoseError;
    pub use hydrant_runtime::{ConfigError, Error as RuntimeError};
}
