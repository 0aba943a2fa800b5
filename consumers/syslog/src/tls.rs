//! TLS for `syslog-tls://` and `https://` drains: one rustls client config (ring provider)
//! per nozzle, built from the `[tls]` section.
//!
//! Flow: `[tls]` → [`TlsConfig::client_config`] (system roots + `ca_file`) → every TLS
//! transport's handshake → [`describe`] turns a handshake failure into words an operator can
//! act on.
//!
//! Invariant: certificate and hostname verification are on unless the operator sets
//! `insecure_skip_verify`, which is logged as a warning at start and on every connection, so
//! nobody runs without verification by accident.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Deserialize;

use crate::Error;

/// The `[tls]` section: which servers a TLS drain may be.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// A PEM file of CA certificates to trust besides the system's, for drains behind a
    /// private CA. Default none.
    pub ca_file: Option<PathBuf>,
    /// Trust the system's CA store (`/etc/ssl/certs` and friends). Default true.
    pub system_roots: bool,
    /// Accept any certificate for any name. For a test bench only: anyone on the path can read
    /// and change the logs. Default false, and a warning is logged at every connection.
    pub insecure_skip_verify: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            system_roots: true,
            insecure_skip_verify: false,
        }
    }
}

impl TlsConfig {
    /// Checks that `ca_file`, when set, holds at least one certificate.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) naming `tls.ca_file`.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(path) = &self.ca_file {
            self.ca_certs(path)?;
        }
        Ok(())
    }

    fn ca_certs(&self, path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, Error> {
        let bad = |why: String| {
            Error::config(
                "tls.ca_file".to_owned(),
                format!("{}: {why}", path.display()),
            )
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(format!("cannot be read ({e})")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("is not a PEM certificate file ({e})")))?;
        if certs.is_empty() {
            return Err(bad(
                "holds no \"BEGIN CERTIFICATE\" block; point it at the CA's PEM file".to_owned(),
            ));
        }
        Ok(certs)
    }

    /// The rustls client config every TLS drain of this nozzle uses.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) for an unreadable or empty `ca_file`, or a CA certificate
    /// rustls refuses.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                Error::config("tls".to_owned(), format!("no TLS version available ({e})"))
            })?;
        let config = if self.insecure_skip_verify {
            tracing::warn!(
                "tls.insecure_skip_verify is set: TLS drains are NOT verified; anyone on the path \
                 can read and alter the logs"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            if self.system_roots {
                let found = rustls_native_certs::load_native_certs();
                for error in &found.errors {
                    tracing::warn!(%error, "a system CA certificate could not be loaded");
                }
                let (added, ignored) = roots.add_parsable_certificates(found.certs);
                tracing::debug!(added, ignored, "system CA certificates");
            }
            if let Some(path) = &self.ca_file {
                for cert in self.ca_certs(path)? {
                    roots.add(cert).map_err(|e| {
                        Error::config(
                            "tls.ca_file".to_owned(),
                            format!(
                                "{}: a certificate is unusable as a CA ({e})",
                                path.display()
                            ),
                        )
                    })?;
                }
            }
            if roots.is_empty() {
                tracing::warn!(
                    "no CA certificates are trusted (no system store, no tls.ca_file): every TLS \
                     drain will be refused"
                );
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Arc::new(config))
    }
}

/// The name a drain's certificate must carry.
///
/// # Errors
/// `host` is neither a DNS name nor an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate ({e})"))
}

/// What went wrong in a TLS handshake, in words that say what to fix; `None` when `error` is
/// not a TLS failure.
#[must_use]
pub fn describe(error: &std::io::Error, host: &str) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "TLS: the drain's certificate is not valid for {host:?} (hostname verification \
             failed); use the name the certificate was issued for"
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: the drain's certificate is not signed by a trusted CA; if it uses a private \
             CA, put that CA in tls.ca_file"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "TLS: the drain's certificate has expired".to_owned(),
        rustls::Error::InvalidCertificate(other) => {
            format!("TLS: the drain's certificate was refused ({other:?})")
        }
        other => format!("TLS: {other}"),
    })
}

/// The verifier behind `insecure_skip_verify`: any chain, any name; handshake signatures are
/// still checked so the session keys belong to whoever sent the certificate.
#[derive(Debug)]
struct AcceptAnything(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
