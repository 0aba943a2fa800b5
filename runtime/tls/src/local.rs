//! Certificates made in memory for tests of mutual TLS: CAs that are not the platform's, leaves
//! naming any identity, expired leaves. The platform's own directory is made by [`crate::issue`].
//!
//! Flow: [`LocalCa::new`] → [`LocalCa::leaf`] or [`LocalCa::write_leaf`] (files 0600).
//! [`FixedServer`] stands in for a mutual-TLS HTTP endpoint (the cloud controller's internal
//! `/token_keys`) in roles' tests, noting which verified identity asked for what.
//!
//! The invariant: a leaf's identity is its CN and its only DNS SAN, with both client and server
//! usage, as [`crate::issue`] makes them, so a test's leaf is refused or let in for the same
//! reasons a real one would be; a [`FixedServer`] answers only connections that passed the
//! same handshake a role's server runs.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Error, Identity, ServerTls, der};

/// How long a leaf is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for this many days.
    Days(u32),
    /// Expired: valid only during 2020.
    Expired,
}

/// A leaf's PEM texts.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

/// A CA that issues leaves.
#[derive(Debug)]
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn issue_error(e: rcgen::Error) -> Error {
    Error::Issue(e.to_string())
}

/// The year of today, from the system clock.
fn this_year() -> i32 {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0));
    i32::try_from(der::year_of_day(days)).unwrap_or(2026)
}

impl LocalCa {
    /// A new self-signed CA whose subject CN is `common_name`, valid for ten years.
    ///
    /// # Errors
    /// [`Error::Issue`] if the key or certificate cannot be made.
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let year = this_year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        let key = KeyPair::generate().map_err(issue_error)?;
        let cert = params.self_signed(&key).map_err(issue_error)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM), for a trust bundle.
    #[must_use]
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf naming `name` (CN and DNS SAN), for client and server use.
    ///
    /// # Errors
    /// [`Error::Issue`] if it cannot be made.
    pub fn leaf(&self, name: &str, validity: Validity) -> Result<Leaf, Error> {
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(issue_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (from, to) = match validity {
            Validity::Days(days) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let start = date_of(now.saturating_sub(86_400));
                let end = date_of(now.saturating_add(u64::from(days) * 86_400));
                (start, end)
            }
            Validity::Expired => ((2020, 1, 1), (2020, 12, 31)),
        };
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = KeyPair::generate().map_err(issue_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_error)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes a leaf for `identity` into `dir` as `<identity>.pem` and `<identity>.key`.
    ///
    /// # Errors
    /// [`Error::Issue`] or [`Error::Io`].
    pub fn write_leaf(&self, dir: &Path, name: &str, validity: Validity) -> Result<(), Error> {
        let leaf = self.leaf(name, validity)?;
        write_private(&dir.join(format!("{name}.pem")), leaf.cert_pem.as_bytes())?;
        write_private(&dir.join(format!("{name}.key")), leaf.key_pem.as_bytes())
    }
}

/// The calendar date (year, month, day) `secs` after the epoch.
fn date_of(secs: u64) -> (i32, u8, u8) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let year = der::year_of_day(days);
    let mut month = 1;
    while month < 12 && der::days_from_civil(year, month + 1, 1) <= days {
        month += 1;
    }
    let day = days - der::days_from_civil(year, month, 1) + 1;
    (
        i32::try_from(year).unwrap_or(2026),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

/// Writes `contents` to `path` readable by its owner only, replacing it whole (a new file
/// renamed over the old, so a reader never sees half of it).
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Longest request head a [`FixedServer`] reads; a longer one gets no answer.
const MAX_HEAD: usize = 16 * 1024;

/// A stand-in for a mutual-TLS HTTP/1.1 endpoint in tests: answers `GET path` with a fixed
/// JSON body (404 for other paths), one request per connection, and notes the verified
/// identity and path of every request it answered. It speaks only TLS, with the handshake of
/// the [`ServerTls`] it is given (so plaintext or a refused certificate gets nothing).
#[derive(Debug, Clone, Default)]
pub struct FixedServer {
    seen: Arc<Mutex<Vec<Request>>>,
}

/// A request a [`FixedServer`] answered: the identity its client proved, and its path.
pub type Request = (Option<Identity>, String);

impl FixedServer {
    /// Serves `routes` (path, body) on `listener` with `tls` (ALPN `http/1.1`) until the
    /// runtime ends.
    #[must_use]
    pub fn start(listener: TcpListener, tls: &ServerTls, routes: Vec<(String, String)>) -> Self {
        let server = Self::default();
        let seen = Arc::clone(&server.seen);
        let routes = Arc::new(routes);
        let mut incoming =
            crate::grpc::incoming(listener, tls.with_alpn(&[b"http/1.1"])).into_inner();
        tokio::spawn(async move {
            while let Some(Ok(mut conn)) = incoming.recv().await {
                let seen = Arc::clone(&seen);
                let routes = Arc::clone(&routes);
                tokio::spawn(async move {
                    let identity = conn.peer().identity;
                    let Some(path) = read_path(&mut conn).await else {
                        return;
                    };
                    let answer = match routes.iter().find(|(p, _)| *p == path) {
                        Some((_, body)) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\
                                 connection: close\r\n\r\n"
                            .to_owned(),
                    };
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((identity, path));
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        server
    }

    /// The cloud controller's internal listener as a role's test meets it: makes the
    /// platform's certificate directory in `certs` (the CA, the `cloudcontroller` leaf and
    /// `client`'s), then serves `routes` on a loopback port over mutual TLS that lets in
    /// `client` only. Returns the server and its address.
    ///
    /// # Errors
    /// When the certificates cannot be made or loaded, or no loopback port can be bound.
    pub async fn internal_api(
        certs: &Path,
        client: Identity,
        routes: Vec<(String, String)>,
    ) -> Result<(Self, std::net::SocketAddr), Error> {
        crate::issue::ensure(certs, &[Identity::CloudController, client], &[])?;
        let tls = ServerTls::new(
            crate::Material::load(&crate::TlsFiles::in_dir(certs, Identity::CloudController))?,
            "test.internal",
            &[client],
            Arc::new(crate::Tally::default()),
        )?;
        let io = |source| Error::Io {
            path: certs.to_path_buf(),
            source,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        Ok((Self::start(listener, &tls, routes), addr))
    }

    /// How many requests for `path` came from a client proving `identity`.
    #[must_use]
    pub fn hits(&self, identity: Identity, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(i, p)| *i == Some(identity) && p == path)
            .count()
    }

    /// Every request answered: the identity its client proved and its path.
    #[must_use]
    pub fn requests(&self) -> Vec<Request> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The path of a `GET` request whose head arrives on `conn`, or `None` for anything else.
async fn read_path(conn: &mut crate::grpc::TlsConn) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next()?.split(' ');
    match (words.next(), words.next()) {
        (Some("GET"), Some(path)) => Some(path.to_owned()),
        _ => None,
    }
}
