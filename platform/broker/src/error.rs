//! The one error type of the broker: what stops it from starting, and what a backend
//! operation (a service node's start, an admin command) reports back to the OSBAPI layer,
//! which turns it into a 500 or a failed `last_operation` with the text below.
//!
//! Invariant: a message names the thing that failed (the program, the file, the node) and,
//! where an operator can act, what to do; it never holds a password (commands are reported by
//! program name and stderr, never by their arguments).

use std::path::PathBuf;

/// Why the broker or one of its operations failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the broker cannot use.
    #[error("invalid broker config: {0}")]
    Config(#[from] hydrant_runtime::ConfigError),
    /// The `[telemetry]` section is invalid.
    #[error(transparent)]
    Telemetry(#[from] hydrant_emitter::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
    /// A file or directory could not be used.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The broker's SQLite state failed.
    #[error("broker state ({}): {source}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// An admin command against a service node failed.
    #[error("{program} failed: {detail}")]
    Command {
        /// The program (`mariadb`, `psql`, `redis-cli`, `rabbitmqctl`, ...).
        program: String,
        /// Its exit status and the last lines of its stderr.
        detail: String,
    },
    /// A service node did not come up.
    #[error("service node {node} did not start: {detail}")]
    NodeStart {
        /// The node (`postgresql`, `redis-<instance>`, ...).
        node: String,
        /// Why.
        detail: String,
    },
    /// Every port of the pool is taken.
    #[error("no free port left in the pool {first}-{last}; widen ports in the broker config")]
    PortsExhausted {
        /// The pool's first port.
        first: u16,
        /// The pool's last port.
        last: u16,
    },
    /// The offering cannot run here (its binaries are missing).
    #[error("offering {offering} is not available: {why}")]
    Unavailable {
        /// The offering.
        offering: String,
        /// Why.
        why: String,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn command(program: &str, detail: impl Into<String>) -> Self {
        Self::Command {
            program: program.to_owned(),
            detail: detail.into(),
        }
    }
}
