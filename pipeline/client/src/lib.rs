//! The firehose client library: what every consumer of Hydrant's read side uses — `hydrant
//! logs`, the terminal console, the nozzles and the platform's control loops.
//!
//! Flow: firehose edge (WebSocket `/firehose/{subscription_id}` or `/apps/{source_id}/stream`,
//! binary frames each one encoded `EnvelopeBatch`) → [`FirehoseClient`] (reconnects, splits
//! out loss as [`Gap`]s, tracks sequences) → the consumer, which walks [`Batch`]es as zero-copy
//! [`EnvelopeView`]s and renders them with [`render`]. A gap says whose envelopes were lost
//! when the pipeline knows ([`Gap::by_source`]: the sources that lost most, and the rest as
//! `other`; on an app stream, only that app's).
//!
//! # Layout
//! - [`FirehoseClient`] / [`StreamEvent`]: one subscription, kept alive with capped exponential
//!   backoff and jitter; final on 401/403/404, except that a [`TokenSource`] (client
//!   credentials, a refresh token) renews an expired or refused token and reconnects at once.
//! - [`recent`] / [`RecentQuery`]: history from the log cache read API (protojson parsed back
//!   by `hydrant_envelope::json`, the same codec the edge writes it with).
//! - [`follow_with_recent`] / [`Follow`]: recent, then live, with no gap and no duplicates.
//! - [`render`]: `cf logs`-compatible lines with every control character escaped, and NDJSON.
//!
//! Invariants this crate keeps: no queue here is unbounded (the client reads the socket no
//! faster than the consumer takes events), every loss the client can see reaches the consumer
//! as a [`StreamEvent::Gap`], and no byte from the wire reaches a terminal unescaped through
//! [`render`].

mod batch;
mod config;
mod error;
mod follow;
mod frame;
mod http;
mod recent;
pub mod render;
mod stream;
mod token;

pub use batch::Batch;
pub use config::{Backoff, ClientConfig, Subscription};
pub use error::Error;
pub use follow::{
    DEFAULT_RECENT_LINES, Follow, OVERLAP_SLACK_NS, follow_with_recent, follow_with_recent_query,
};
pub use hydrant_envelope::gap::{BySource, Gap};
pub use hydrant_envelope::wire::{EnvelopeView, Kind};
pub use recent::{MAX_RECENT_LIMIT, RecentQuery, recent};
pub use stream::{ClientStats, FirehoseClient, StreamEvent};
pub use token::{Secret, TokenError, TokenFuture, TokenSource};
