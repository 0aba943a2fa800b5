//! The syslog nozzle: reads the firehose and forwards envelopes to syslog drains as the RFC
//! 5424 lines Cloud Foundry's syslog agent writes: octet-counted over TCP (`syslog://`) or
//! TLS (`syslog-tls://`), or batched into HTTPS POSTs (`https://`).
//!
//! Flow: firehose edge → [`hydrant_firehose_client::FirehoseClient`] (a shared subscription
//! id, so several copies split the stream) → [`rfc5424::encode`] (once per envelope and
//! distinct encoding) → one bounded [`hydrant_nozzle_core::DestinationQueue`] per drain → a
//! sender task per drain ([`transport::Link`]: [`TcpSender`] or [`HttpsSender`]) with
//! retries, backoff and a circuit breaker. [`SyslogNozzle`] is the role that wires it together
//! from a [`Config`] (`hydrant nozzle syslog --config FILE`).
//!
//! Invariants: a slow or dead drain never slows the firehose or another drain (its queue drops
//! its oldest lines and counts them, and the app is told in its own stream); drain credentials
//! are masked in every log, metric and error; every frame is one valid RFC 5424 message
//! whatever the envelope carries; TLS drains are verified unless the operator says otherwise.

mod config;
pub mod dial;
mod drain;
mod error;
mod https;
mod platform;
pub mod rfc5424;
mod role;
pub mod rsyslogd;
mod status;
mod tls;
pub mod transport;
mod url;

pub use config::{Config, EncoderConfig, drain_options};
pub use drain::{DrainState, MAX_LEDGER_APPS};
pub use error::Error;
pub use https::HttpsSender;
pub use platform::PlatformConfig;
pub use rfc5424::{DrainData, ENTERPRISE, EncoderOptions, encode, encode_messages};
pub use role::{DrainReport, ROLE, SyslogNozzle};
pub use tls::TlsConfig;
pub use transport::{Frames, Payload, TcpSender, run_sender, run_sender_counted};
pub use url::{DrainUrl, Scheme, parse_syslog_url};
