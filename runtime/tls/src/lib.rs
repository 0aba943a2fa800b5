//! Hydrant's internal trust: who may talk to whom inside the platform.
//!
//! Every internal hop (emitter → agent → doppler → traffic controller, log cache reads, the bus,
//! role → cloud controller) runs mutual TLS with certificates from one internal CA. A
//! certificate's identity is its subject CN, repeated as a DNS SAN (`agent`, `doppler`,
//! `trafficcontroller`, `cloudcontroller`, `executor`, `router`, `healthmanager`, `autoscaler`,
//! `slo`, `nozzle`, `nats`), as in Loggregator's certificates. Unlike Loggregator, a server does
//! not accept every certificate the CA signed: each endpoint names the identities it accepts and
//! refuses the rest during the handshake.
//!
//! # Layout
//! - [`issue`]: makes the CA and the leaves (`hydrant certs`), writes them 0600, and rotates the
//!   CA in three steps without dropping a stream.
//! - [`identity`]: the role identities and how a certificate names one.
//!
//! # The certificate directory
//! - `ca.pem`: the trust bundle, every CA a role accepts (one, or two during a rotation).
//! - `ca-signing.pem`, `ca-signing.key`: the CA that issues new leaves. Only the host that runs
//!   `hydrant certs` holds the key.
//! - `<identity>.pem`, `<identity>.key`: a leaf (certificate chain, private key) per identity.

pub mod error;
pub mod identity;
pub mod issue;

pub use error::Error;
pub use identity::Identity;
pub use issue::{CertDir, CertInfo, LeafSpec};
