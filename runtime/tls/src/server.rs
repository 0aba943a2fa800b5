//! The server side of mutual TLS: a rustls `ServerConfig` that presents the role's certificate
//! and lets in only clients whose certificate chains to the trust bundle AND names an identity
//! the endpoint allows.
//!
//! Flow: a TCP connection → [`crate::grpc::incoming`] runs the handshake with
//! [`ServerTls::config`] → [`AllowList`] checks the client certificate → the connection reaches
//! the gRPC server only if it passed.
//!
//! The invariants: a refused client is refused during the handshake (a TLS alert: `certificate
//! required`, `unknown CA`, `certificate expired` or `access denied`), before any request is
//! read; every refusal is logged with the identity presented and the reason, and counted by
//! reason through the endpoint's [`Observer`]. Unlike Loggregator's servers, a certificate from
//! the right CA is not enough.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig};
use rustls_pki_types::{CertificateDer, DnsName, ServerName, UnixTime};

use crate::files::Material;
use crate::{Error, Identity, der};

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// It presented no certificate.
    NoCertificate,
    /// Its certificate does not chain to a CA in the bundle.
    UnknownCa,
    /// Its certificate is valid but names an identity this endpoint does not accept.
    IdentityNotAllowed,
    /// Its certificate has expired.
    Expired,
    /// Its certificate is unusable for another reason (not yet valid, wrong key usage,
    /// malformed).
    InvalidCertificate,
    /// The handshake failed for a reason not about its certificate (protocol, cipher suites, a
    /// client that distrusts this server, a timeout).
    HandshakeFailed,
}

impl Reason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [Reason; 6] = [
        Reason::NoCertificate,
        Reason::UnknownCa,
        Reason::IdentityNotAllowed,
        Reason::Expired,
        Reason::InvalidCertificate,
        Reason::HandshakeFailed,
    ];

    /// The `reason` label on metrics.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Reason::NoCertificate => "no_certificate",
            Reason::UnknownCa => "unknown_ca",
            Reason::IdentityNotAllowed => "identity_not_allowed",
            Reason::Expired => "expired",
            Reason::InvalidCertificate => "invalid_certificate",
            Reason::HandshakeFailed => "handshake_failed",
        }
    }

    /// The reason for a rustls error met while checking a client.
    #[must_use]
    pub fn of(error: &rustls::Error) -> Reason {
        match error {
            rustls::Error::NoCertificatesPresented => Reason::NoCertificate,
            rustls::Error::InvalidCertificate(e) => match e {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Reason::UnknownCa
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Reason::Expired
                }
                CertificateError::ApplicationVerificationFailure => Reason::IdentityNotAllowed,
                _ => Reason::InvalidCertificate,
            },
            _ => Reason::HandshakeFailed,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Where an endpoint's refusals are counted (a role puts them on `/metrics`).
pub trait Observer: fmt::Debug + Send + Sync {
    /// One client refused at `endpoint` for `reason`.
    fn refused(&self, endpoint: &str, reason: Reason);

    /// [`Observer::refused`], knowing the role identity the client's certificate named (`None`
    /// without a certificate, or when it names none): for counters labelled by identity. Never
    /// the raw CN, which the client chose.
    fn refused_identity(&self, endpoint: &str, identity: Option<Identity>, reason: Reason) {
        let _ = identity;
        self.refused(endpoint, reason);
    }
}

/// An [`Observer`] that only counts, per reason (tests, and roles without a metrics registry).
#[derive(Debug, Default)]
pub struct Tally([AtomicU64; 6]);

impl Tally {
    /// Refusals counted for `reason`.
    #[must_use]
    pub fn get(&self, reason: Reason) -> u64 {
        self.slot(reason).load(Ordering::Relaxed)
    }

    fn slot(&self, reason: Reason) -> &AtomicU64 {
        let index = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        &self.0[index]
    }
}

impl Observer for Tally {
    fn refused(&self, _endpoint: &str, reason: Reason) {
        self.slot(reason).fetch_add(1, Ordering::Relaxed);
    }
}

/// Logs and counts one refusal.
pub(crate) fn refuse(
    observer: &dyn Observer,
    endpoint: &str,
    presented: Option<&str>,
    reason: Reason,
    detail: &dyn fmt::Display,
) {
    let identity = presented.and_then(|cn| cn.parse::<Identity>().ok());
    observer.refused_identity(endpoint, identity, reason);
    tracing::warn!(
        endpoint,
        presented = presented.unwrap_or("-"),
        %reason,
        %detail,
        "refused a client"
    );
}

/// The server side of one endpoint: its TLS config and the identities it lets in.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    material: Arc<Material>,
    endpoint: &'static str,
    observer: Arc<dyn Observer>,
}

impl ServerTls {
    /// An endpoint named `endpoint` (in logs and metrics) that lets in the `allowed` identities
    /// and refuses everyone else at the handshake, counting refusals into `observer`.
    ///
    /// # Errors
    /// [`Error::Config`] when `allowed` is empty; a rustls error building the config.
    pub fn new(
        material: Arc<Material>,
        endpoint: &'static str,
        allowed: &[Identity],
        observer: Arc<dyn Observer>,
    ) -> Result<Self, Error> {
        if allowed.is_empty() {
            return Err(Error::Config {
                field: "allowed",
                message: format!("endpoint {endpoint} would let no identity in"),
            });
        }
        let verifier = Arc::new(AllowList {
            material: material.clone(),
            allowed: allowed.to_vec(),
            endpoint,
            observer: observer.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::VERSIONS)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(material.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Every connection is verified in full, so a CA dropped from the bundle or a client
        // refused since cannot come back by resuming an older session.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.ignore_client_order = true;
        Ok(Self {
            config: Arc::new(config),
            material,
            endpoint,
            observer,
        })
    }

    /// The rustls config (for `tokio_rustls::TlsAcceptor`).
    #[must_use]
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The same endpoint speaking `protocols` by ALPN instead of gRPC's `h2` (e.g.
    /// `http/1.1` for an HTTP API over mutual TLS).
    #[must_use]
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Self {
            config: Arc::new(config),
            ..self.clone()
        }
    }

    /// The certificates this endpoint serves with.
    #[must_use]
    pub fn material(&self) -> &Arc<Material> {
        &self.material
    }

    /// The endpoint's name in logs and metrics.
    #[must_use]
    pub fn endpoint(&self) -> &'static str {
        self.endpoint
    }

    pub(crate) fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }
}

/// Presents the role's current certificate.
#[derive(Debug)]
pub(crate) struct Resolver(pub(crate) Arc<Material>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

/// Whether `cert` carries `name` as a DNS SAN.
pub(crate) fn valid_for(cert: &CertificateDer<'_>, name: &'static str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(dns) = DnsName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
        .is_ok()
}

/// The identity a verified certificate names: its CN, when it is a role identity repeated as a
/// DNS SAN.
#[must_use]
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let identity: Identity = der::subject_cn(cert.as_ref())?.parse().ok()?;
    valid_for(cert, identity.name()).then_some(identity)
}

/// Chains the client certificate to the bundle, then checks its identity against the list.
#[derive(Debug)]
struct AllowList {
    material: Arc<Material>,
    allowed: Vec<Identity>,
    endpoint: &'static str,
    observer: Arc<dyn Observer>,
}

impl ClientCertVerifier for AllowList {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Empty: "send whatever certificate you have". The bundle changes on reload, and a
        // client with one certificate sends it anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = der::subject_cn(end_entity.as_ref());
        let chained = self.material.current().client_verifier.verify_client_cert(
            end_entity,
            intermediates,
            now,
        );
        if let Err(error) = chained {
            let reason = Reason::of(&error);
            refuse(
                self.observer.as_ref(),
                self.endpoint,
                presented.as_deref(),
                reason,
                &error,
            );
            return Err(error);
        }
        match identity_of(end_entity) {
            Some(identity) if self.allowed.contains(&identity) => {
                Ok(ClientCertVerified::assertion())
            }
            _ => {
                let allowed: Vec<&str> = self.allowed.iter().map(|i| i.name()).collect();
                refuse(
                    self.observer.as_ref(),
                    self.endpoint,
                    presented.as_deref(),
                    Reason::IdentityNotAllowed,
                    &format_args!("this endpoint accepts {}", allowed.join(", ")),
                );
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material
            .current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.material
            .current()
            .client_verifier
            .supported_verify_schemes()
    }
}
