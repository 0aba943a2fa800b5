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
    /// A directory already holds a CA and something asked to make another.
    #[error(
        "{0} already exists: this directory has a CA; issue leaves from it, or replace it with `hydrant certs rotate begin`"
    )]
    CaExists(PathBuf),
    /// No CA to sign with.
    #[error("no CA in {0}: run `hydrant certs init --dir {0}` first")]
    NoCa(PathBuf),
    /// A file that should hold a certificate or key does not hold a usable one.
    #[error("{path}: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The crypto library could not make a key or certificate.
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    /// A subject alternative name that is neither a host name nor an IP address.
    #[error(
        "{0:?} is neither a host name nor an IP address; use e.g. cell-1.example.com or 10.0.0.5"
    )]
    BadName(String),
    /// A validity out of range.
    #[error("--days {0}: must be between 1 and 36500")]
    BadDays(u32),
    /// A rotation step run out of order.
    #[error("cannot run `rotate {step}`: {state}; run `{next}` next")]
    RotationOrder {
        /// The step asked for.
        step: &'static str,
        /// Where the rotation stands.
        state: &'static str,
        /// The command that comes next.
        next: &'static str,
    },
    /// A `tls` config field is wrong.
    #[error("{field} {message}")]
    Config {
        /// The field, e.g. `tls.cert_file`.
        field: &'static str,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// A PEM file does not hold what it should.
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused a TLS configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate could not be made.
    #[error("cannot make a certificate: {0}")]
    Issue(String),
}
