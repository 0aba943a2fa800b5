//! The envelope contract: Loggregator's `loggregator.v2` messages and services, wire-compatible
//! with the upstream protos, plus the pieces every hop of Hydrant's pipeline shares.
//!
//! # Layout
//! - [`v2`]: the generated prost messages and typed tonic clients/servers (what a stock
//!   Loggregator v2 client speaks). Hydrant-only fields use numbers >= 100.
//! - [`logcache_v1`]: Log Cache's read API (`Read`, `Meta`), served by the doppler.
//! - [`wire`]: a zero-copy walker over encoded envelopes and batches. Hops forward envelopes as
//!   `Bytes` and read only the routing fields they need; this is the hot path.
//! - [`raw`]: the same Ingress/Egress services carrying encoded `Bytes` instead of decoded
//!   messages, so the agent and doppler never decode what they forward.
//! - [`json`]: protojson-shaped JSON for browsers and scripts.
//! - [`gap`]: the in-band marker that tells a consumer how many envelopes it lost and why.
//! - [`cursor`]: resumable subscriptions: a consumer's cursor and the dopplers' ring positions.
//! - [`semantic`]: what the platform's envelopes mean: the router's `http` Timer, the container
//!   metrics, log source types and tag keys, built and read through typed helpers.
//! - [`time`]: envelope timestamps as calendar time (RFC 3339, local offsets), on `jiff`.
//!
//! The invariant this crate keeps: nothing here panics on input, and no allocation is sized by
//! a length read from the wire before that length has been checked against the bytes present.

pub mod cursor;
pub mod gap;
pub mod json;
pub mod raw;
pub mod semantic;
pub mod time;
pub mod wire;

mod error;
pub use error::Error;

/// Generated code, nested by protobuf package so cross-package paths resolve.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    reason = "generated code"
)]
mod generated {
    pub mod loggregator {
        pub mod v2 {
            include!("gen/loggregator.v2.rs");
        }
    }
    pub mod logcache {
        pub mod v1 {
            include!("gen/logcache.v1.rs");
        }
    }
}

/// Loggregator v2 messages and typed services, generated from `proto/loggregator/v2`.
pub use generated::loggregator::v2;

/// Log Cache's read API, generated from `proto/logcache/v1`.
pub use generated::logcache::v1 as logcache_v1;

/// Largest encoded envelope any hop accepts. Loggregator sets every gRPC receive limit to
/// 10 MiB; a single envelope this large would already be a bug upstream, but a log line split at
/// 60 KiB plus tags is far below it.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;

/// Largest gRPC message (one encoded batch) any hop accepts, matching Loggregator's 10 MiB.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// Current UNIX time in nanoseconds, the unit of `Envelope.timestamp`.
#[must_use]
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
