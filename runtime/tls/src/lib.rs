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
//! - [`files`]: the `tls` config block ([`TlsFiles`]) and the [`Material`] read from it,
//!   reloaded when the files change.
//! - [`server`]: the server config, whose verifier checks the client's identity against the
//!   endpoint's allow-list during the handshake and counts refusals by [`Reason`].
//! - [`client`]: the client config, presenting the role's certificate and checking the
//!   server's identity by name.
//! - [`grpc`]: tonic adapters: the TLS incoming stream, the connector, the per-service gate.
//! - [`der`]: reading a certificate's CN and `notAfter`.
//! - [`local`]: CAs and leaves made on the spot for tests (other CAs, expired leaves).
//! - [`public`]: TLS for public endpoints (the firehose edge's `https://`/`wss://`), where
//!   tokens, not certificates, say who the caller is.
//!
//! # The certificate directory
//! - `ca.pem`: the trust bundle, every CA a role accepts (one, or two during a rotation).
//! - `ca-signing.pem`, `ca-signing.key`: the CA that issues new leaves. Only the host that runs
//!   `hydrant certs` holds the key.
//! - `<identity>.pem`, `<identity>.key`: a leaf (certificate chain, private key) per identity.

pub mod client;
pub mod der;
pub mod error;
pub mod files;
pub mod grpc;
pub mod identity;
pub mod issue;
pub mod local;
pub mod public;
pub mod server;

pub use client::ClientTls;
pub use error::Error;
pub use files::{Material, TlsFiles};
pub use grpc::{Connector, Gate, PeerInfo, peer_identity};
pub use identity::Identity;
pub use public::{PublicServer, PublicStream, connect_public, public_client};
pub use server::{Observer, Reason, ServerTls, Tally};

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// TLS 1.3 first; TLS 1.2 for stock Loggregator clients.
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// ring with the suites Hydrant offers: TLS 1.3's, and under TLS 1.2 Loggregator's two
/// (`ECDHE-RSA-AES256-GCM-SHA384`, `ECDHE-RSA-AES128-GCM-SHA256`) plus their ECDSA
/// equivalents for Hydrant's own ECDSA keys. AES-128 first: cheapest on the data path.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    Arc::new(provider)
}
pub use issue::{CertDir, CertInfo, LeafSpec};
