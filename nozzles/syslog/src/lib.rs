//! The syslog nozzle: reads the firehose and forwards envelopes to syslog drains as the RFC
//! 5424 lines Cloud Foundry's syslog agent writes, framed with RFC 6587 octet counting.
//!
//! Flow: firehose edge → [`hydrant_firehose_client::FirehoseClient`] (a shared subscription
//! id, so several copies split the stream) → [`rfc5424::encode`] (once per envelope) → one
//! bounded [`hydrant_nozzle_core::DestinationQueue`] per drain URL → a sender task per drain
//! ([`transport::TcpSender`]) with retries, backoff and a circuit breaker. [`run`] is the role
//! that wires it together from a [`Config`] (`hydrant nozzle syslog --config FILE`).
//!
//! Invariants: a slow or dead drain never slows the firehose or another drain (its queue drops
//! its oldest lines and counts them); drain credentials are masked in every log, metric and
//! error; every frame is one valid RFC 5424 message whatever the envelope carries.

mod config;
mod error;
pub mod rfc5424;
mod role;
pub mod rsyslogd;
pub mod transport;

pub use config::{Config, EncoderConfig};
pub use error::Error;
pub use rfc5424::{DrainData, ENTERPRISE, EncoderOptions, encode, encode_messages};
pub use role::{Listeners, ROLE, run};
pub use transport::{TcpSender, parse_syslog_url, run_sender};
