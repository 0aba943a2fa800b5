//! The client side of mutual TLS: a rustls `ClientConfig` that presents the role's certificate
//! and accepts a server only if its certificate chains to the trust bundle and names the
//! identity the client expects, whatever address it dialled (as Loggregator's clients set
//! `ServerName = "doppler"` while dialling an IP).
//!
//! Flow: [`ClientTls::new`] → [`crate::grpc::Connector`] dials TCP and runs the handshake with
//! [`ClientTls::config`] for each (re)connection.
//!
//! The invariant: both the certificate presented and the bundle trusted are read from
//! [`Material`] on every handshake, so a reconnect after a reload uses the new files.

use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::files::Material;
use crate::{Error, Identity};

/// A client's TLS settings for talking to servers holding one identity.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server: Identity,
    server_name: ServerName<'static>,
}

impl ClientTls {
    /// Presents `material`'s certificate and expects the server to be `server`.
    ///
    /// # Errors
    /// A rustls error building the config.
    pub fn new(material: Arc<Material>, server: Identity) -> Result<Self, Error> {
        let mut config = ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::VERSIONS)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Bundle(material.clone())))
            .with_client_cert_resolver(Arc::new(Presenter(material)));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self::from_config(Arc::new(config), server)
    }

    /// A client that trusts the CAs in `bundle` and presents no certificate: what a probe, or
    /// a test of what an anonymous client is told, needs.
    ///
    /// # Errors
    /// The bundle cannot be read or holds no usable CA.
    pub fn without_certificate(bundle: &Path, server: Identity) -> Result<Self, Error> {
        let pem = std::fs::read(bundle).map_err(|source| Error::Io {
            path: bundle.to_owned(),
            source,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| Error::Pem {
                path: bundle.to_owned(),
                message: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| Error::Pem {
                path: bundle.to_owned(),
                message: format!("holds a certificate that is not a usable CA ({e})"),
            })?;
        }
        let mut config = ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::VERSIONS)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self::from_config(Arc::new(config), server)
    }

    /// A client with a rustls config made elsewhere, expecting the server to be `server`.
    ///
    /// # Errors
    /// [`Error::Config`] if `server` is not a DNS name (never, for a role identity).
    pub fn from_config(config: Arc<ClientConfig>, server: Identity) -> Result<Self, Error> {
        let server_name =
            ServerName::try_from(server.name().to_owned()).map_err(|e| Error::Config {
                field: "server",
                message: format!("{server} is not a DNS name ({e})"),
            })?;
        Ok(Self {
            config,
            server,
            server_name,
        })
    }

    /// The rustls config (for `tokio_rustls::TlsConnector`).
    #[must_use]
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The same client offering `protocols` by ALPN instead of gRPC's `h2` (e.g. `http/1.1`
    /// for an HTTP API over mutual TLS).
    #[must_use]
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Self {
            config: Arc::new(config),
            ..self.clone()
        }
    }

    /// The identity the server must prove.
    #[must_use]
    pub fn server(&self) -> Identity {
        self.server
    }

    /// The name checked against the server's certificate.
    #[must_use]
    pub fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }
}

/// Presents the role's current certificate, whatever CA the server hints at.
#[derive(Debug)]
struct Presenter(Arc<Material>);

impl ResolvesClientCert for Presenter {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the server against the current bundle and the expected name.
#[derive(Debug)]
struct Bundle(Arc<Material>);

impl ServerCertVerifier for Bundle {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().server_verifier.supported_verify_schemes()
    }
}
