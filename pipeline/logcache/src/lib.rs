//! Hydrant's log cache: the most recent envelopes of every `source_id`, kept in memory and read
//! back with Log Cache's `Read`/`Meta` semantics.
//!
//! Flow: the doppler routes each batch to its subscribers, then hands the batch to a cache task
//! that calls [`Store::ingest_run`] per run of envelopes sharing a source; `logcache.v1.Egress/Read` and `Meta` (served by the doppler)
//! call [`Store::read`] and [`Store::meta`]. This serves `logs --recent`, app stats and the
//! console's first screen.
//!
//! The invariant this crate keeps: memory stays within [`StoreConfig`]'s bounds (count per source,
//! total bytes, number of sources) whatever arrives, and every envelope that is not kept is
//! counted as expired or rejected, with the reason, in [`StoreStats`].

mod error;
mod store;

pub use error::Error;
pub use hydrant_envelope::wire::Kind;
pub use store::{
    CHUNK_BYTES, DEFAULT_READ_LIMIT, ENTRY_OVERHEAD, Incoming, MAX_READ_LIMIT, ReadQuery,
    SOURCE_OVERHEAD, SourceMeta, Store, StoreConfig, StoreStats,
};
