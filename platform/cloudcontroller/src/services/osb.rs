//! The OSBAPI v2.17 HTTP client: one request to one broker, with the headers the spec requires
//! and the answer reduced to what the job runner decides on.
//!
//! Every request carries `X-Broker-API-Version: 2.17`, a fresh `X-Broker-API-Request-Identity`,
//! HTTP basic auth and, when a user is behind it, `X-Broker-API-Originating-Identity:
//! cloudfoundry <base64 {"user_id"}>`. Broker URLs follow the platform's outbound policy
//! (internal addresses refused after DNS unless the operator allows them), redirects are not
//! followed, no proxy from the environment is used, every request has a deadline and no answer
//! is read past `max_response_bytes`.
//!
//! `http://` brokers go through reqwest; `https://` brokers through one hyper HTTP/1.1
//! connection per request over rustls with the `ring` provider, trusting the CAs of
//! `services.broker_ca_file` or else the system's roots, with certificate and host name checks
//! always on. (The workspace's reqwest has no TLS: turning its rustls on changes reqwest for
//! every crate of the binary, and without an installed crypto provider its other clients would
//! fail when built.)
//!
//! Invariant: the broker's password and the credentials in its answers never reach a log line
//! or an error message; errors name the broker by scheme and host only.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hydrant_api::drain::{Outbound, OutboundRefused};
use hydrant_emitter::Registry;
use hyper_util::rt::TokioIo;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::ServicesConfig;
use crate::Error;

/// The OSBAPI version the platform speaks.
pub(crate) const API_VERSION: &str = "2.17";

/// Longest `operation` string a broker may hand back (spec: 10,000 characters).
pub(crate) const MAX_OPERATION_LEN: usize = 10_000;

/// Where and how to reach one broker.
#[derive(Debug, Clone)]
pub(crate) struct BrokerAddr {
    pub(crate) url: String,
    pub(crate) username: String,
    pub(crate) password: String,
}

/// A broker's answer: status, the body parsed as JSON (`None` when it was not JSON) and the
/// `Retry-After` it asked for.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Option<Value>,
    pub(crate) retry_after: Option<Duration>,
}

impl Answer {
    /// The body if it is a JSON object (what every 2xx must be).
    pub(crate) fn object(&self) -> Option<&serde_json::Map<String, Value>> {
        self.body.as_ref().and_then(Value::as_object)
    }

    /// `error` and `description` of an error body, as one line for a user.
    pub(crate) fn error_text(&self) -> String {
        let field = |k: &str| {
            self.object()
                .and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .map(|s| s.chars().take(500).collect::<String>())
        };
        match (field("error"), field("description")) {
            (Some(e), Some(d)) => format!("{e}: {d}"),
            (None, Some(d)) => d,
            (Some(e), None) => e,
            (None, None) => format!("HTTP {}", self.status),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No answer within the deadline: the broker may have acted (orphan mitigation applies).
    Timeout(String),
    /// No connection was made: the broker never saw the request.
    Connect(String),
    /// The request may have reached the broker but no whole answer came back.
    Broken(String),
    /// The outbound policy refused the broker's address.
    Refused(String),
    /// The answer was larger than `max_response_bytes`.
    TooLarge(String),
}

impl Failure {
    /// Whether the broker may have acted on the request (so a create must be mitigated).
    pub(crate) fn uncertain(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Broken(_) | Self::TooLarge(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(m)
            | Self::Connect(m)
            | Self::Broken(m)
            | Self::Refused(m)
            | Self::TooLarge(m) => f.write_str(m),
        }
    }
}

/// Resolves broker hosts and hands the connector only the addresses the policy allows.
#[derive(Debug, Clone, Copy)]
struct Vetted(Outbound);

impl reqwest::dns::Resolve for Vetted {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = policy.vet(&host, resolved)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The trust for `https://` brokers.
#[derive(Debug, Clone)]
enum BrokerTls {
    /// The CAs of `services.broker_ca_file`, or the system's roots.
    Ready(Arc<rustls::ClientConfig>),
    /// No CA file and no usable system roots: an https broker gets this as its error.
    Unusable(String),
}

impl BrokerTls {
    /// A configured CA file must work (an operator named it); without one, a host with no
    /// system roots still runs, and only an https broker is refused, with the reason.
    fn new(ca_file: Option<&str>) -> Result<Self, Error> {
        match ca_file {
            Some(path) => hydrant_tls::public_client(Some(std::path::Path::new(path)))
                .map(Self::Ready)
                .map_err(|e| {
                    Error::Config(hydrant_runtime::invalid(
                        "services.broker_ca_file",
                        format!(
                            "cannot be used ({e}); point it at the PEM bundle of the CA that \
                             issued your brokers' certificates"
                        ),
                    ))
                }),
            None => Ok(match hydrant_tls::public_client(None) {
                Ok(config) => Self::Ready(config),
                Err(e) => Self::Unusable(format!(
                    "no CA to check https brokers against ({e}); set services.broker_ca_file"
                )),
            }),
        }
    }
}

/// The client every broker call goes through.
#[derive(Debug)]
pub(crate) struct OsbClient {
    http: reqwest::Client,
    tls: BrokerTls,
    timeout: Duration,
    policy: Outbound,
    max_body: usize,
    registry: Registry,
}

impl OsbClient {
    pub(crate) fn new(config: &ServicesConfig, registry: &Registry) -> Result<Self, Error> {
        let policy = Outbound {
            allow_private: config.allow_private_brokers,
        };
        let timeout = Duration::from_secs(config.broker_timeout_secs);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Vetted(policy))
            .no_proxy()
            .build()
            .map_err(|e| {
                Error::Config(hydrant_runtime::invalid(
                    "services",
                    format!("cannot build the broker HTTP client: {e}"),
                ))
            })?;
        Ok(Self {
            http,
            tls: BrokerTls::new(config.broker_ca_file.as_deref())?,
            timeout,
            policy,
            max_body: config.max_response_bytes,
            registry: registry.clone(),
        })
    }

    /// Why `url` cannot be a broker URL, if it cannot: `http(s)://host[:port][/path]`, no
    /// user info, query or fragment, and no internal IP literal unless allowed.
    pub(crate) fn url_problem(&self, url: &str) -> Option<String> {
        let parsed = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => {
                return Some(format!(
                    "{url:?} is not a URL ({e}); write http://HOST:PORT or https://HOST:PORT"
                ));
            }
        };
        if !matches!(parsed.scheme(), "http" | "https") {
            return Some(format!(
                "the broker URL must be http:// or https://, not {}://",
                parsed.scheme()
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Some(
                "put the broker's credentials in USERNAME and PASSWORD, not in the URL".to_owned(),
            );
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Some("the broker URL may not have a query or fragment".to_owned());
        }
        let host = parsed.host_str()?;
        if let Some(ip) = self.policy.refuses_literal(host) {
            return Some(format!(
                "the broker host {host} is {ip}, a loopback, private or link-local address; the \
                 platform does not connect there unless an operator allows it \
                 (services.allow_private_brokers = true in the cloud controller's config)"
            ));
        }
        None
    }

    /// Sends one request. `path` starts with `/v2/` and carries its query; `user` is the
    /// originating user's guid (none for catalog fetches and orphan mitigation).
    pub(crate) async fn send(
        &self,
        broker: &BrokerAddr,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        user: Option<&str>,
    ) -> Result<Answer, Failure> {
        let started = std::time::Instant::now();
        let shown = shown(&broker.url);
        let url = format!("{}{path}", broker.url.trim_end_matches('/'));
        let operation = operation_name(&method, path);
        let headers = headers(broker, user, body.is_some());
        let body = body.map(Value::to_string);
        let result = if url.starts_with("https://") {
            let exchange = self.https_exchange(&url, method, headers, body, &shown);
            tokio::time::timeout(self.timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(timed_out(&shown)))
        } else {
            let mut request = self.http.request(method, &url).headers(headers);
            if let Some(body) = body {
                request = request.body(body);
            }
            self.finish(request, &shown).await
        };
        let outcome = match &result {
            Ok(a) => status_class(a.status),
            Err(Failure::Timeout(_)) => "timeout",
            Err(Failure::Refused(_)) => "refused",
            Err(_) => "unreachable",
        };
        self.registry
            .counter(
                "cloudcontroller.broker_requests",
                "OSBAPI requests to service brokers, by operation and outcome",
                &[("operation", operation), ("outcome", outcome)],
            )
            .inc();
        self.registry
            .gauge(
                "cloudcontroller.broker_request_seconds",
                "duration of the last OSBAPI request, by operation",
                "seconds",
                &[("operation", operation)],
            )
            .set(started.elapsed().as_secs_f64());
        result
    }

    async fn finish(
        &self,
        request: reqwest::RequestBuilder,
        shown: &str,
    ) -> Result<Answer, Failure> {
        let mut response = request.send().await.map_err(|e| classify(&e, shown))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > self.max_body {
                        return Err(Failure::TooLarge(format!(
                            "the broker at {shown} answered with more than {} bytes \
                             (services.max_response_bytes)",
                            self.max_body
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(classify(&e, shown)),
            }
        }
        let body = serde_json::from_slice::<Value>(&bytes).ok();
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }
}

/// Every header a request carries: the API version, a fresh request identity, basic auth
/// (marked sensitive, so no debug output shows it), the originating user when there is one,
/// and the content type when there is a body.
fn headers(broker: &BrokerAddr, user: Option<&str>, json_body: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |name: HeaderName, value: String, sensitive: bool| {
        // Every value here is ASCII built above; one that is not is left out rather than
        // sent mangled (the broker then answers 401 or 412 and says what is missing).
        if let Ok(mut v) = HeaderValue::from_str(&value) {
            v.set_sensitive(sensitive);
            h.insert(name, v);
        }
    };
    let pair = format!("{}:{}", broker.username, broker.password);
    let basic = base64::engine::general_purpose::STANDARD.encode(pair);
    put(
        reqwest::header::AUTHORIZATION,
        format!("Basic {basic}"),
        true,
    );
    put(
        HeaderName::from_static("x-broker-api-version"),
        API_VERSION.to_owned(),
        false,
    );
    put(
        HeaderName::from_static("x-broker-api-request-identity"),
        uuid::Uuid::new_v4().to_string(),
        false,
    );
    put(
        reqwest::header::ACCEPT,
        "application/json".to_owned(),
        false,
    );
    if let Some(user) = user {
        let identity = serde_json::json!({ "user_id": user }).to_string();
        let encoded = base64::engine::general_purpose::STANDARD.encode(identity);
        put(
            HeaderName::from_static("x-broker-api-originating-identity"),
            format!("cloudfoundry {encoded}"),
            false,
        );
    }
    if json_body {
        put(
            reqwest::header::CONTENT_TYPE,
            "application/json".to_owned(),
            false,
        );
    }
    h
}

impl OsbClient {
    /// One request to an `https://` broker ([`OsbClient::send`] bounds it by the broker
    /// deadline): its host resolved and vetted by the outbound policy, a TCP connection to the
    /// first allowed address, the TLS handshake (the certificate must chain to a trusted CA and
    /// name the URL's host), then one HTTP/1.1 exchange whose answer is read up to
    /// `max_response_bytes`.
    async fn https_exchange(
        &self,
        url: &str,
        method: reqwest::Method,
        headers: HeaderMap,
        body: Option<String>,
        shown: &str,
    ) -> Result<Answer, Failure> {
        let connect = |why: String| {
            Failure::Connect(format!("cannot connect to the broker at {shown}: {why}"))
        };
        let parsed = url::Url::parse(url).map_err(|e| connect(e.to_string()))?;
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(connect("the URL has no host".to_owned())),
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        let config = match &self.tls {
            BrokerTls::Ready(config) => Arc::clone(config),
            BrokerTls::Unusable(why) => return Err(connect(why.clone())),
        };
        let resolved = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| connect(format!("cannot resolve {host} ({e})")))?;
        let allowed = self.policy.vet(&host, resolved).map_err(|refused| {
            Failure::Refused(format!(
                "{refused} (services.allow_private_brokers = true in the cloud controller's \
                 config allows it)"
            ))
        })?;
        let mut tcp = None;
        let mut last = format!("{host} resolves to no address");
        for addr in allowed {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or_else(|| connect(last))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| connect(format!("{host} is not a name a certificate can hold ({e})")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                connect(format!(
                    "the TLS handshake failed ({e}); the broker's certificate must name {host} \
                     and be issued by a CA the controller trusts (services.broker_ca_file)"
                ))
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| connect(format!("HTTP handshake: {e}")))?;
        // Drives the connection until the exchange is over and the sender dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let target = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let authority = match parsed.port() {
            Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or_default()),
            None => parsed.host_str().unwrap_or_default().to_owned(),
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header(reqwest::header::HOST, authority)
            .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .map_err(|e| connect(format!("the request cannot be built ({e})")))?;
        request.headers_mut().extend(headers);
        let broken = |e: &dyn std::fmt::Display| {
            Failure::Broken(format!(
                "the connection to the broker at {shown} broke before a whole answer came ({e})"
            ))
        };
        let response = sender.send_request(request).await.map_err(|e| broken(&e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let collected = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await;
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Failure::TooLarge(format!(
                    "the broker at {shown} answered with more than {} bytes \
                     (services.max_response_bytes)",
                    self.max_body
                )));
            }
            Err(e) => return Err(broken(&e)),
        };
        Ok(Answer {
            status,
            body: serde_json::from_slice::<Value>(&bytes).ok(),
            retry_after,
        })
    }
}

/// `Retry-After` as delta seconds (the form the spec recommends); a date is not honoured.
/// The broker's `Retry-After`, when it sent one in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A broker that let the deadline pass, whichever transport carried the request.
fn timed_out(shown: &str) -> Failure {
    Failure::Timeout(format!("the broker at {shown} did not answer in time"))
}

/// The broker URL as it may be shown: scheme and host only.
pub(crate) fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(a broker URL that does not parse)".to_owned(),
    }
}

fn classify(e: &reqwest::Error, shown: &str) -> Failure {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<OutboundRefused>() {
            return Failure::Refused(format!(
                "{refused} (services.allow_private_brokers = true in the cloud controller's \
                 config allows it)"
            ));
        }
        cause = error.source();
    }
    if e.is_timeout() {
        timed_out(shown)
    } else if e.is_connect() {
        Failure::Connect(format!("cannot connect to the broker at {shown}"))
    } else {
        Failure::Broken(format!(
            "the connection to the broker at {shown} broke before a whole answer came"
        ))
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// A bounded set of operation names for metric tags.
fn operation_name(method: &reqwest::Method, path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or(path);
    let binding = path.contains("/service_bindings/");
    let last_op = path.ends_with("/last_operation");
    match (method.as_str(), binding, last_op) {
        (_, _, _) if path == "/v2/catalog" => "catalog",
        ("GET", false, true) => "instance_last_operation",
        ("GET", true, true) => "binding_last_operation",
        ("GET", true, false) => "fetch_binding",
        ("GET", false, false) => "fetch_instance",
        ("PUT", false, _) => "provision",
        ("PATCH", false, _) => "update",
        ("DELETE", false, _) => "deprovision",
        ("PUT", true, _) => "bind",
        ("DELETE", true, _) => "unbind",
        _ => "other",
    }
}

/// Percent-encodes a query value (`operation`, ids).
pub(crate) fn enc(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_broker_addresses_are_refused_unless_allowed() {
        let registry = Registry::new("cloudcontroller", "0");
        let guarded = OsbClient::new(&ServicesConfig::default(), &registry).unwrap();
        let e = guarded.url_problem("http://127.0.0.1:9030").unwrap();
        assert!(e.contains("services.allow_private_brokers"), "{e}");
        assert!(
            guarded
                .url_problem("http://u:p@broker.example")
                .unwrap()
                .contains("USERNAME")
        );
        assert!(
            guarded
                .url_problem("ftp://broker.example")
                .unwrap()
                .contains("http://")
        );
        assert!(
            guarded
                .url_problem("https://broker.example:8443/base")
                .is_none()
        );
        // A name is judged on what it resolves to, before any connection is made.
        let addr = BrokerAddr {
            url: "http://localhost:9".into(),
            username: "u".into(),
            password: "p".into(),
        };
        let failure = guarded
            .send(&addr, reqwest::Method::GET, "/v2/catalog", None, None)
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::Refused(_)), "{failure:?}");
        // The same for an https broker, before any TLS.
        let addr = BrokerAddr {
            url: "https://localhost:9".into(),
            ..addr
        };
        let failure = guarded
            .send(&addr, reqwest::Method::GET, "/v2/catalog", None, None)
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::Refused(_)), "{failure:?}");
        let open = OsbClient::new(
            &ServicesConfig {
                allow_private_brokers: true,
                ..ServicesConfig::default()
            },
            &registry,
        )
        .unwrap();
        assert!(open.url_problem("http://127.0.0.1:9030").is_none());
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn broker_urls_are_shown_without_credentials_or_paths() {
        assert_eq!(
            shown("http://u:secret@broker.example:8080/v2?x=1"),
            "http://broker.example:8080"
        );
    }

    #[test]
    fn operations_are_named_for_metrics() {
        let get = reqwest::Method::GET;
        assert_eq!(operation_name(&get, "/v2/catalog"), "catalog");
        assert_eq!(
            operation_name(&get, "/v2/service_instances/a/last_operation?x=y"),
            "instance_last_operation"
        );
        assert_eq!(
            operation_name(
                &reqwest::Method::DELETE,
                "/v2/service_instances/a/service_bindings/b"
            ),
            "unbind"
        );
    }
}
