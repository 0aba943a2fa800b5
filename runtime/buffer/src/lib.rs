//! The one bounded buffer of the pipeline: every hop that holds data for a slower reader (the
//! emitter, the agent's egress lanes, the doppler's ingress ring and subscription queues, the
//! firehose edge's outboxes, the nozzles' destination queues) keeps it in a [`Buffer`].
//!
//! Where it sits: between a producer that must not wait (an app's log line, a router thread, a
//! fan-out) and a consumer that takes batches (a gRPC stream, a WebSocket writer, a destination).
//!
//! # Invariants
//! - **Bounded.** A buffer never holds more than [`Limits`] allow, counted three ways: entries
//!   (`items`), what the entries carry (`events`: envelopes, metric values) and `bytes`. The one
//!   exception is [`Oversize::Keep`]: a single entry larger than the limits on its own is kept
//!   alone (the newest data is the most useful), so depth exceeds a limit by at most that entry.
//! - **Never backpressures a producer** unless it chose [`WhenFull::Block`] and awaits
//!   [`Buffer::push_wait`]: [`Buffer::push`] is one short lock and never waits.
//! - **The ledger balances.** Every event pushed is, at any moment, exactly one of: popped,
//!   dropped under one [`DropReason`], or still queued:
//!   `pushed = popped + Σ dropped + depth.events` ([`Stats::balanced`]). Drops are counted in
//!   the buffer (by reason, readable with [`Buffer::stats`]) and reported to the owner's
//!   [`Observer`] so it keeps its own metric names.
//! - **Order is kept**: entries leave in the order they were admitted.
//! - **Loss is reportable in-band.** Events lost to overflow since the consumer's last take are
//!   handed to it as [`Drained::gap`], so it can put a gap marker (`hydrant_envelope::gap`) in
//!   front of the next data, at the hop where the loss happened; per-source sequence numbers
//!   downstream then show no unexplained hole.
//! - Nothing here panics on input, and no lock is held across an await.
//!
//! # Design, and why not a lock-free queue
//! A `Mutex<VecDeque<T>>` plus two `tokio::sync::Notify` (one for the consumer, one for blocked
//! producers). Every pop is a batch pop ([`Buffer::drain_into`], [`Buffer::swap_all`]), so the
//! consumer pays one lock per batch, not per entry, and the byte and event bounds stay exact
//! under the same lock as the entries. `crossbeam-queue`'s `ArrayQueue` (whose `force_push` is
//! a lock-free drop-oldest ring) was measured against it in `benches/buffer.rs` with 250-byte
//! `Bytes` envelopes, on the 2-core build machine (`cargo bench -p hydrant-buffer`):
//!
//! | case (100 000 envelopes) | this buffer | `ArrayQueue` + `Notify` | old edge outbox |
//! | --- | --- | --- | --- |
//! | 1 producer, 1 consumer draining 256 at a time | see README "Speed" | | |
//!
//! The numbers are in the README's "Speed" notes; the mutex design won or tied in every case
//! measured and is the only one that can bound bytes exactly, so `crossbeam` is used only in
//! the bench that shows it.

mod buffer;
mod error;

pub use buffer::{Buffer, Depth, Drained, DropReason, Observer, Oversize, Pushed, Stats, WhenFull};
pub use buffer::{BufferConfig, Limits, Weigh};
pub use error::Error;
