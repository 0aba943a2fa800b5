//! The scaffolding around every nozzle's `run`: the config sections all nozzles share, and the
//! end of a run — senders given a deadline to deliver what is queued.
//!
//! Invariant: a nozzle's shutdown is bounded. Senders get the configured drain time plus
//! [`ABORT_GRACE`] and are then aborted, so a destination that hangs cannot hold the process;
//! what they did not deliver is counted by the caller when the deadline passes.

use std::time::Duration;

use hydrant_emitter::TelemetryConfig;
use hydrant_firehose_client::ClientConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Error;
use hydrant_runtime::invalid;

/// Grace after the drain deadline for senders stuck in a write or call before they are aborted.
pub const ABORT_GRACE: Duration = Duration::from_millis(500);

/// Checks the `[firehose]` section and `subscription_id`; `example_id` (the nozzle's default
/// shard group) is suggested when the id is empty.
///
/// # Errors
/// [`Error::Config`] naming `firehose.FIELD` or `subscription_id`; never the token.
pub fn validate_firehose(
    firehose: &ClientConfig,
    subscription_id: &str,
    example_id: &str,
) -> Result<(), Error> {
    firehose.validate().map_err(|e| match e {
        hydrant_firehose_client::Error::Config { field, message } => {
            Error::from(invalid(format!("firehose.{field}"), message))
        }
        other => Error::Firehose(other),
    })?;
    if firehose.token.is_empty() && firehose.client_id.is_empty() {
        return Err(Error::from(invalid(
            "firehose.token",
            "is empty; put a token with the `firehose` scope here, or client_id and \
             client_secret_file (with api_url) so the token is renewed",
        )));
    }
    if subscription_id.is_empty() {
        return Err(Error::from(invalid(
            "subscription_id",
            format!("is empty; name the shard group, e.g. \"{example_id}\""),
        )));
    }
    Ok(())
}

/// Checks `admin_listen` (suggesting `example`, the nozzle's default, when it is not an
/// address) and the `[telemetry]` section.
///
/// # Errors
/// [`Error::Config`] naming `admin_listen` or `telemetry`.
pub fn validate_self_report(
    admin_listen: &str,
    example: &str,
    telemetry: &TelemetryConfig,
) -> Result<(), Error> {
    if admin_listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(Error::from(invalid(
            "admin_listen",
            format!("({admin_listen:?}) is not an address; write it like {example}"),
        )));
    }
    telemetry
        .validate()
        .map_err(|e| Error::from(invalid("telemetry", e.to_string())))
}

/// Gives `senders` (whose queues the caller has closed) up to `drain` to deliver what is
/// queued and finish. Past it, `stop` is cancelled so held-back batches are given up,
/// `on_deadline` counts (and tells) what is still queued, and the senders get [`ABORT_GRACE`]
/// before they are aborted.
pub async fn finish_senders<T: 'static>(
    senders: &mut JoinSet<T>,
    drain: Duration,
    stop: &CancellationToken,
    on_deadline: impl FnOnce(),
) {
    let drained = tokio::time::timeout(drain, async {
        while senders.join_next().await.is_some() {}
    })
    .await;
    if drained.is_ok() {
        return;
    }
    stop.cancel();
    on_deadline();
    let grace = tokio::time::timeout(ABORT_GRACE, async {
        while senders.join_next().await.is_some() {}
    })
    .await;
    if grace.is_err() {
        senders.shutdown().await;
    }
}
