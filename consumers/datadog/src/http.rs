//! A small HTTP/1.1 client for one Datadog endpoint: plain `http://` (tests, local proxies) or
//! `https://` over rustls with the `ring` provider, one keep-alive connection reused between
//! requests and reopened after any failure.
//!
//! Why not reqwest: turning on its rustls support changes reqwest for every crate of the binary
//! (cargo unifies features), and without an installed crypto provider reqwest's other clients
//! would then fail when built. A sender only ever has one request in flight, so a hand-held
//! hyper connection is all it needs.
//!
//! Invariants: one deadline covers connect, TLS, request and response; certificate and host
//! name verification are always on; errors name the endpoint by its masked URL and never carry
//! a header (the API key travels only in a sensitive header value).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hydrant_nozzle_core::mask_url;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Error;

/// Most of a response body read (Datadog answers with a short JSON object).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Where an endpoint is: scheme, host, port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 443 / 80).
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path prefix without a trailing `/` (usually empty).
    pub base_path: String,
}

impl Target {
    /// Parses `http(s)://host[:port][/prefix]`.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) naming `field`, URL masked.
    pub fn parse(field: &str, url: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::config(
                field,
                format!(
                    "({}) {why}; write it like \"https://api.datadoghq.com\"",
                    mask_url(url)
                ),
            )
        };
        // The parse error never repeats the input, so nothing secret leaks through it.
        let parsed = url::Url::parse(url).map_err(|e| bad(&format!("is not a valid URL ({e})")))?;
        let tls = match parsed.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("is not an http:// or https:// URL")),
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("must not have a query or fragment"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "must not carry credentials (the API key goes in api_key_env)",
            ));
        }
        let (host, authority) = match (parsed.host(), parsed.host_str()) {
            (Some(url::Host::Ipv6(ip)), Some(written)) => (ip.to_string(), written),
            (Some(_), Some(written)) if !written.is_empty() => (written.to_owned(), written),
            _ => return Err(bad("has no host")),
        };
        let port = match parsed.port_or_known_default() {
            Some(p) if p > 0 => p,
            _ => return Err(bad("has an invalid port")),
        };
        let authority = match parsed.port() {
            Some(p) => format!("{authority}:{p}"),
            None => authority.to_owned(),
        };
        if tls && ServerName::try_from(host.clone()).is_err() {
            return Err(bad("has a host that is not a valid TLS server name"));
        }
        Ok(Self {
            tls,
            host,
            port,
            authority,
            base_path: parsed.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The full URL of `path` (for metrics and errors; has no credentials).
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{path}", self.authority, self.base_path)
    }
}

/// The rustls client config every https endpoint uses: the system's trusted roots plus those
/// of `extra_ca_file`, `ring` crypto, HTTP/1.1 only.
///
/// # Errors
/// A config error ([`Error::Core`]) naming `ca_file` when it cannot be read, or when no root at all
/// is found.
pub fn tls_config(
    extra_ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A malformed system certificate is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca_file {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
            Error::config("ca_file", format!("cannot read {}: {e}", path.display()))
        })?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| {
                Error::config("ca_file", format!("{} is not PEM: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                Error::config(
                    "ca_file",
                    format!("{} holds a bad certificate: {e}", path.display()),
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::config(
                "ca_file",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
    }
    if roots.is_empty() {
        return Err(Error::config(
            "ca_file",
            "no trusted root certificates were found on this system; install the \
             ca-certificates package or point ca_file at a PEM bundle",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("ca_file", format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// `Retry-After` (seconds) or else `X-RateLimit-Reset` (seconds until the limit resets).
    pub retry_after: Option<Duration>,
    /// The start of the body, for the log (escaped when shown).
    pub body: String,
}

/// One endpoint's connection.
pub struct HttpClient {
    target: Target,
    tls: Option<TlsConnector>,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("target", &self.target)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for `target`; `tls` is required for an https target.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) for an https target without a TLS config.
    pub fn new(
        field: &str,
        target: Target,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let tls = match (target.tls, tls) {
            (true, Some(c)) => Some(TlsConnector::from(c)),
            (true, None) => {
                return Err(Error::config(
                    field,
                    "is https:// but no TLS config was built",
                ));
            }
            (false, _) => None,
        };
        Ok(Self {
            target,
            tls,
            timeout,
            conn: None,
        })
    }

    /// The endpoint's target.
    #[must_use]
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// POSTs `body` to `path` with `headers`, within the deadline.
    ///
    /// # Errors
    /// [`Error::Request`] when no answer came back; the connection is then closed.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response, Error> {
        let result = tokio::time::timeout(self.timeout, self.exchange(path, headers, body)).await;
        let message = match result {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(m)) => m,
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.conn = None;
        Err(Error::Request {
            url: mask_url(&self.target.url(path)),
            message,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("connect: {e}"))?;
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.target.host.clone())
                    .map_err(|e| format!("server name: {e}"))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                handshake(TokioIo::new(stream)).await
            }
            None => handshake(TokioIo::new(tcp)).await,
        }
    }

    async fn exchange(
        &mut self,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response, String> {
        if self.conn.as_ref().is_none_or(SendRequest::is_closed) {
            self.conn = Some(self.connect().await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".to_owned());
        };
        conn.ready().await.map_err(|e| format!("connection: {e}"))?;
        let mut request = Request::post(format!("{}{path}", self.target.base_path))
            .header(http::header::HOST, self.target.authority.as_str())
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        for (name, value) in headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let response = conn
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        let shown = &body[..body.len().min(512)];
        Ok(Response {
            status,
            retry_after,
            body: String::from_utf8_lossy(shown).into_owned(),
        })
    }
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // Drives the connection until the sender is dropped or the peer closes it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
    };
    secs("retry-after")
        .or_else(|| secs("x-ratelimit-reset"))
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Target, retry_after};

    #[test]
    fn parses_endpoints_and_refuses_bad_ones() {
        let t = Target::parse("api_url", "https://api.datadoghq.eu").unwrap();
        assert!(t.tls && t.port == 443 && t.host == "api.datadoghq.eu");
        assert_eq!(
            t.url("/api/v2/series"),
            "https://api.datadoghq.eu/api/v2/series"
        );
        let t = Target::parse("api_url", "http://127.0.0.1:8125/proxy/").unwrap();
        assert!(!t.tls && t.port == 8125 && t.base_path == "/proxy");
        let t = Target::parse("api_url", "http://[::1]:9").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        for bad in [
            "api.datadoghq.com",
            "https://",
            "https://u:secret@h",
            "http://h:0",
            "http://h/?api_key=secret",
        ] {
            let e = Target::parse("api_url", bad).unwrap_err().to_string();
            assert!(e.contains("api_url") && !e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn reads_retry_after_then_rate_limit_reset() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("x-ratelimit-reset", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", "1.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }
}
