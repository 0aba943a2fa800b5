//! The crate's one error type: what went wrong making, reading or using certificates, each
//! message naming the file or identity involved and what to do about it.

use std::path::PathBuf;

/// Why a certificate could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A name is not one of the role identities.
    #[error(
        "{0:?} is not a role identity; use one of agent, doppler, trafficcontroller, cloudcontroller, executor, router, healthmanager, autoscaler, slo, nozzle, nats"
    )]
    UnknownIdentity(String),
}
