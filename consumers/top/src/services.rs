//! What the services screens show: the `:services` table (one row per service instance, from
//! the API's list and the brokers' `service.*` gauges) and the `:service NAME` screen (its
//! summary, every gauge, and its `SVC` log lines).
//!
//! Flow: `State::rebuild` builds the rows and the [`ServiceDetail`] (in `state`) → the drawing
//! code shows them as they are; sorting and filtering work on the same formatted cells as every
//! other table.
//!
//! Invariant: like every view type, everything here was cleaned of control characters when it
//! was built; a value that is not known is `-`, never `0`.

use crate::view::{Column, LogOut, Note, Tone, columns};

/// The services screen.
pub const SERVICE_COLUMNS: &[Column] = columns![
    text "NAME" 16 "the service instance's name (its guid when the API does not list it)",
    text "OFFERING" 13 "mysql, postgresql, redis, rabbitmq, or user-provided",
    text "PLAN" 7 "the plan",
    text "SPACE" 10 "the space it lives in",
    text "STATE" 18 "the last operation and its state (yellow: in progress, red: failed)",
    text "UP" 4 "whether its node answered the broker's last check (red: down; grey: no report in 30 s)",
    num "CONN" 5 "client connections to its node",
    num "OPS/S" 7 "queries, commands or messages per second",
    num "MEM" 7 "memory used by its node",
    num "MEM%" 5 "of the plan's memory (yellow >= 80 %, red >= 90 %)",
    num "DISK" 7 "storage used",
    num "DISK%" 5 "of the plan's storage (yellow >= 80 %, red >= 90 %)",
    num "QUEUE" 6 "messages waiting in its queues (RabbitMQ)",
    num "DIPS" 4 "reports of its node down since the console started (yellow > 0)",
    num "AGE" 4 "seconds since its broker last reported (dim when stale)",
    text "LAST OPERATION" 30 "what the broker or the platform said about the last operation",
];

/// One service instance, in detail.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceDetail {
    /// Its guid (the source id of its gauges and lines).
    pub guid: String,
    /// Its name (the guid when the API does not list it).
    pub name: String,
    /// `redis small · space default · create succeeded · bound to demo`.
    pub summary: String,
    /// The summary's colour (red when the last operation failed or the node is down).
    pub summary_tone: Tone,
    /// One line per gauge, and the node's down history.
    pub gauges: Vec<Note>,
    /// The newest `SVC` (and any other) lines of its source, oldest first.
    pub logs: Vec<LogOut>,
}
