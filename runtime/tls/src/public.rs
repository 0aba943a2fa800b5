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

/// A client's connection to a public endpoint: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum PublicStream {
    /// `http://`, `ws://`.
    Plain(tokio::net::TcpStream),
    /// `https://`, `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// Dials `authority` (`host:port`) with `TCP_NODELAY`; with `tls`, runs the handshake and checks
/// the server's certificate names `host`.
///
/// # Errors
/// The connection's or the handshake's (an untrusted or misnamed certificate among them).
pub async fn connect_public(
    authority: &str,
    tls: Option<(&Arc<ClientConfig>, &str)>,
) -> std::io::Result<PublicStream> {
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    // Frames are written whole and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let Some((config, host)) = tls else {
        return Ok(PublicStream::Plain(tcp));
    };
    let name = rustls_pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await?;
    Ok(PublicStream::Tls(Box::new(stream)))
}

impl tokio::io::AsyncRead for PublicStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PublicStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PublicStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for PublicStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PublicStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            PublicStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PublicStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            PublicStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PublicStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            PublicStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
