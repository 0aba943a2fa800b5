//! Syslog drains bound to apps: what a developer binds (`hydrant drain NAME URL`), what the
//! platform's syslog nozzle reads to know where each app's logs go, and the status the nozzle
//! reports back so `hydrant drain NAME --status` can show a developer their drain's health.
//!
//! Flow: CLI → `POST /v3/apps/{guid}/drains` → cloud controller (validates the URL, refuses
//! private addresses unless the operator allows them) → `GET /v3/drain_targets` (admin) → the
//! syslog nozzle → `PUT /v3/drain_status` (admin) → `GET /v3/apps/{guid}/drains` → CLI.
//!
//! Invariant: only [`DrainTarget`] carries a drain URL with its credentials, and only admin
//! tokens can read it; everything a developer or a log line sees is masked.

use serde::{Deserialize, Serialize};

/// `POST /v3/apps/{guid}/drains` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDrain {
    /// `syslog://`, `syslog-tls://` or `https://` URL, with Cloud Foundry's query options
    /// (`drain-data=logs|metrics|traces|all`, `disable-metadata=true`).
    pub url: String,
}

/// A drain as the app's developer sees it: URL masked, with the nozzle's last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The binding's id.
    pub guid: String,
    /// The app whose logs it receives.
    pub app_guid: String,
    /// The drain URL with any password masked.
    pub url: String,
    /// When it was bound, UNIX seconds.
    pub created_at: i64,
    /// The nozzle's last report, if one has arrived since the binding was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DrainStatus>,
}

/// A drain as the syslog nozzle needs it (admin only): the full URL and the names that go into
/// syslog's HOSTNAME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainTarget {
    /// The binding's id.
    pub guid: String,
    /// The app whose envelopes (by `source_id`) the drain receives.
    pub app_guid: String,
    /// The app's name.
    pub app_name: String,
    /// The app's space name.
    pub space_name: String,
    /// The full URL, credentials included.
    pub url: String,
}

/// What the nozzle reports about one drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    /// The binding's id ([`DrainTarget::guid`]).
    pub guid: String,
    /// Messages the drain accepted since the nozzle started.
    pub sent: u64,
    /// Messages lost on the way to the drain since the nozzle started.
    pub dropped: u64,
    /// Messages queued for the drain now.
    pub queue_depth: u64,
    /// Age of the oldest queued message, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// The last failure, credentials masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the drain last accepted a batch, UNIX ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_unix_ms: Option<u64>,
    /// Where the drain stands.
    pub state: DrainState,
    /// When the cloud controller received this report, UNIX seconds (set by the server).
    #[serde(default)]
    pub reported_at: i64,
}

/// Where a drain stands, as its nozzle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Delivering.
    Ok,
    /// The last batch failed; it is being retried.
    Retrying,
    /// The drain failed too often; the nozzle is not trying it for a while (circuit open).
    Open,
    /// The drain resolves to a loopback, private or link-local address and the operator has not
    /// allowed those.
    Refused,
}

impl DrainState {
    /// The word `hydrant drain NAME --status` prints.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retrying => "retrying",
            Self::Open => "failing (paused)",
            Self::Refused => "refused (private address)",
        }
    }
}
