//! TLS for public endpoints, where callers prove who they are with bearer tokens rather than
//! certificates: the firehose edge's `https://` and `wss://`, and the clients that read it.
//!
//! Flow, server: [`PublicServer::new`] over the role's [`Material`] → a `TlsAcceptor` per
//! connection; the certificate presented is re-read from disk like every other role's, so a
//! reissued certificate applies to the next handshake. Client: [`public_client`] trusts the
//! CAs of a bundle (the platform's `ca.pem`, or an operator's) or, without one, the system's
//! roots, and checks the server's name against the URL's host.
//!
//! The invariant: no client certificate is asked for, and none is needed; who may read what is
//! still decided by the token, after the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::Error;
use crate::files::Material;
use crate::server::Resolver;

/// A public server's TLS settings.
#[derive(Debug, Clone)]
pub struct PublicServer {
    config: Arc<ServerConfig>,
}

impl PublicServer {
    /// Presents `material`'s certificate (reloaded when its files change) and asks for no
    /// client certificate; ALPN `http/1.1` (WebSocket upgrades and plain reads).
    ///
    /// # Errors
    /// A rustls error building the config.
    pub fn new(material: Arc<Material>) -> Result<Self, Error> {
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::VERSIONS)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(material)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The acceptor for one listener.
    #[must_use]
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// A client config for a public endpoint: trusts the CAs in `bundle`, or the system's roots
/// when there is none; presents no certificate; ALPN `http/1.1`.
///
/// # Errors
/// The bundle cannot be read or holds no usable CA; no system roots could be loaded.
pub fn public_client(bundle: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    match bundle {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| Error::Pem {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                roots.add(cert).map_err(|e| Error::Pem {
                    path: path.to_owned(),
                    message: format!("holds a certificate that is not a usable CA ({e})"),
                })?;
            }
            if roots.is_empty() {
                return Err(Error::Pem {
                    path: path.to_owned(),
                    message: "holds no CERTIFICATE block; point it at the CA bundle (ca.pem)"
                        .to_owned(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system store may hold certificates rustls cannot use; the rest still serve.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(Error::Config {
                    field: "ca_file",
                    message: "no system root certificates were found; name the CA bundle that \
                              issued the server's certificate"
                        .to_owned(),
                });
            }
        }
    }
    let mut config = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
