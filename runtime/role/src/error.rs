//! The runtime's one error type: what stops a role before its own code runs (a config file that
//! cannot be read or parsed, an address that cannot be bound) and the config-field error every
//! role's `validate` reports through.

use std::path::PathBuf;

use crate::ConfigError;

/// Why the runtime could not start a role.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the role cannot use.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// The config file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for the role, or names a field the role does not
    /// have.
    #[error("{path} is not a valid config: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message: the line, the field and what it expected.
        message: String,
    },
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} (config field `{field}`): {source}; pick a free address")]
    Bind {
        /// The config field holding the address.
        field: &'static str,
        /// The address.
        addr: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// The admin listener (`/healthz`, `/metrics`) failed while the role ran.
    #[error("the admin listener failed: {0}")]
    Admin(std::io::Error),
    /// A role asked for a listener it did not declare in [`crate::Role::LISTENERS`] (a bug in
    /// the role's `run`, reported rather than panicking).
    #[error("the role has no listener named `{0}`; declare it in Role::LISTENERS")]
    NoListener(&'static str),
}
