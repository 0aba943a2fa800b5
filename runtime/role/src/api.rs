//! The API consumer at run time: one client per role that calls the cloud controller (the
//! autoscaler, the SLO alerter, the health manager, the syslog nozzle) and the mutual-TLS
//! transport those roles and the executor's droplet downloads use to reach the controller's
//! internal listener.
//!
//! Flow: the role's config block ([`ApiConsumer`], with its `tls` files) → [`ApiConsumer::connect`]
//! → an [`ApiClient`]: a `hydrant_api::Client` whose requests go over [`MtlsTransport`] when
//! `tls` is set (presenting the role's certificate, accepting only a server that proves the
//! `cloudcontroller` identity), and the role's token (inline, a file re-read on every use, or
//! OAuth2 client credentials renewed before they expire, fetched over the same transport).
//!
//! Invariants: with `tls` set, nothing reaches the controller in plaintext, and a server that
//! is not the `cloudcontroller` identity of the trusted CA never sees a request; every
//! connection is a fresh handshake with the certificates on disk now, so a reissued leaf or a
//! rotated CA applies to the next call; errors name the URL and the reason, never a token.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyDataStream;
use hydrant_api::{TokenCache, Transport, TransportFuture};
use hydrant_tls::{ClientTls, Identity, Material, TlsFiles};
use hyper_util::rt::TokioIo;

use crate::Error;
use crate::config::{ApiConsumer, invalid};

/// How long dialling and the TLS handshake may take, unless the role says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1.1 over mutual TLS to the cloud controller's internal listener: a `hydrant_api`
/// transport. One connection per request (the callers ask every few seconds at most), so each
/// request runs a handshake with the files as they are now.
#[derive(Debug, Clone)]
pub struct MtlsTransport {
    tls: ClientTls,
    connect_timeout: Duration,
}

impl MtlsTransport {
    /// Presents the certificate in `files` and accepts only a server proving the
    /// `cloudcontroller` identity.
    ///
    /// # Errors
    /// A file that cannot be read or does not hold what it should, named.
    pub fn new(files: &TlsFiles) -> Result<Self, hydrant_tls::Error> {
        let material = Material::load(files)?;
        let tls = ClientTls::new(material, Identity::CloudController)?.with_alpn(&[b"http/1.1"]);
        Ok(Self {
            tls,
            connect_timeout: CONNECT_TIMEOUT,
        })
    }

    /// A transport over a client TLS config made elsewhere (a probe, or a test presenting
    /// another CA's certificate or none), speaking `http/1.1`.
    #[must_use]
    pub fn from_client(tls: &ClientTls) -> Self {
        Self {
            tls: tls.with_alpn(&[b"http/1.1"]),
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// The same transport giving up on a connection (dial and handshake) after `timeout`.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

impl MtlsTransport {
    /// Sends `request` (an `https://` URL) and returns the server's answer; its body streams.
    ///
    /// # Errors
    /// Why there is no answer: no connection, a refused handshake, a broken exchange.
    pub async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response, String> {
        send(self.tls.clone(), self.connect_timeout, request).await
    }
}

impl Transport for MtlsTransport {
    fn send(&self, request: reqwest::Request) -> TransportFuture {
        let tls = self.tls.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move { send(tls, timeout, request).await })
    }
}

/// Every message in an error's source chain: a refused certificate shows only deep inside.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

async fn send(
    tls: ClientTls,
    timeout: Duration,
    request: reqwest::Request,
) -> Result<reqwest::Response, String> {
    let url = request.url().clone();
    if url.scheme() != "https" {
        return Err(format!(
            "{} is not an https:// URL; mutual TLS needs the controller's internal https:// address",
            url.scheme()
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| "the URL has no host".to_owned())?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let dial = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((dial.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls.config())
            .connect(tls.server_name(), tcp)
            .await
            .map_err(|e| format!("the TLS handshake failed: {}", chain(&e)))?;
        hyper::client::conn::http1::handshake::<_, reqwest::Body>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/1.1 over TLS failed: {}", chain(&e)))
    };
    let (mut sender, connection) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| format!("no connection within {} ms", timeout.as_millis()))??;
    // Drives the connection until the answer's body has been read (or dropped); its error is
    // the reason a refused request gets no answer.
    let driver = tokio::spawn(connection);
    let mut request: http::Request<reqwest::Body> = request
        .try_into()
        .map_err(|e: reqwest::Error| e.to_string())?;
    let origin: http::Uri = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    *request.uri_mut() = origin;
    let host_header = http::HeaderValue::from_str(&authority).map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert(http::header::HOST, host_header);
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        // Under TLS 1.3 the server judges the client's certificate after the client has
        // finished its half of the handshake: a refusal ends the connection with an alert,
        // which the connection's own error carries.
        Err(e) => {
            let cause = match tokio::time::timeout(Duration::from_secs(1), driver).await {
                Ok(Ok(Err(cause))) => format!(" ({})", chain(&cause)),
                _ => String::new(),
            };
            return Err(format!("no answer: {}{cause}", chain(&e)));
        }
    };
    let (parts, body) = response.into_parts();
    let body = reqwest::Body::wrap_stream(BodyDataStream::new(body));
    Ok(reqwest::Response::from(http::Response::from_parts(
        parts, body,
    )))
}

/// A role's way to the cloud controller: the API client (over mutual TLS when the block has
/// `tls`) and where its token comes from.
#[derive(Debug)]
pub struct ApiClient {
    base: hydrant_api::Client,
    token: Option<String>,
    token_file: Option<std::path::PathBuf>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<std::path::PathBuf>,
    tokens: TokenCache,
}

impl ApiConsumer<'_> {
    /// The client this block describes: over mutual TLS to the controller's internal listener
    /// when `tls` is set, plain HTTP otherwise.
    ///
    /// # Errors
    /// [`Error::Config`] naming `tls` when its files cannot be used (the message names the
    /// file and what is wrong with it).
    pub fn connect(&self) -> Result<ApiClient, Error> {
        let mut base = hydrant_api::Client::new(self.api_url.trim(), None);
        if let Some(files) = self.tls {
            let transport = MtlsTransport::new(files)
                .map_err(|e| invalid("tls", format!("cannot be used: {e}")))?;
            base = base.with_transport(Arc::new(transport));
        }
        Ok(self.with_base(base))
    }

    /// [`ApiConsumer::connect`] for a caller that cannot fail here: when the `tls` files cannot
    /// be used, every call fails saying why (never falling back to plaintext). Roles call
    /// `connect` first, at start, so a bad file stops them there.
    #[must_use]
    pub fn client(&self) -> ApiClient {
        self.connect().unwrap_or_else(|e| {
            let base = hydrant_api::Client::new(self.api_url.trim(), None)
                .with_transport(Arc::new(Unusable(e.to_string())));
            self.with_base(base)
        })
    }

    fn with_base(&self, base: hydrant_api::Client) -> ApiClient {
        ApiClient {
            base,
            token: self.token.map(str::to_owned),
            token_file: self.token_file.map(std::path::Path::to_path_buf),
            client_id: self.client_id.map(str::to_owned),
            client_secret: self.client_secret.map(str::to_owned),
            client_secret_file: self.client_secret_file.map(std::path::Path::to_path_buf),
            tokens: TokenCache::new(),
        }
    }
}

/// The transport of a client whose certificates could not be loaded: refuses every call.
#[derive(Debug)]
struct Unusable(String);

impl Transport for Unusable {
    fn send(&self, _request: reqwest::Request) -> TransportFuture {
        let why = self.0.clone();
        Box::pin(async move { Err(why) })
    }
}

impl ApiClient {
    fn view(&self) -> ApiConsumer<'_> {
        ApiConsumer::new(
            self.base.base_url(),
            self.token.as_ref(),
            self.token_file.as_ref(),
        )
        .with_client(
            self.client_id.as_ref(),
            self.client_secret.as_ref(),
            self.client_secret_file.as_ref(),
        )
    }

    /// The client without a token (e.g. for the token endpoint).
    #[must_use]
    pub fn client(&self) -> &hydrant_api::Client {
        &self.base
    }

    /// The token now: the inline one, the file's contents read afresh, or a client-credential
    /// token renewed before it expires (fetched over the same transport as every call).
    ///
    /// # Errors
    /// Why there is none, naming the file or the client id; never a token or secret.
    pub async fn token(&self) -> Result<String, String> {
        let view = self.view();
        match (view.client_id, view.client_secret()) {
            (Some(id), Some(secret)) => self
                .tokens
                .client_token_via(&self.base, id, &secret?)
                .await
                .map_err(|e| format!("client credentials for {id}: {e}")),
            _ => view.token(),
        }
    }

    /// The client carrying the current token.
    ///
    /// # Errors
    /// As [`ApiClient::token`].
    pub async fn authorized(&self) -> Result<hydrant_api::Client, String> {
        Ok(self.base.with_token(self.token().await?))
    }

    /// Forgets a cached client-credential token (after the API refused it with 401), so the
    /// next call fetches a new one.
    pub fn forget_token(&self) {
        self.tokens.clear();
    }
}
