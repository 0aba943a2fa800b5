//! One client request, from `Host` to the app's response: lookup, headers, instance choice,
//! safe retries, router-made errors.
//!
//! Flow: `server` hands each request with the connection's current [`Snapshot`] to [`route`]
//! (lookup on the lowercased host without allocating, and the request path; pinning with
//! `X-Cf-App-Instance`), done before any await so the snapshot is only borrowed → [`handle`]
//! tries up to `max_attempts` instances, never one twice, retrying only when no byte reached
//! the app → the response streams back through `body`.
//!
//! Invariants:
//! - A request is retried only after [`Failure::NotSent`]; anything else the app may have seen
//!   ends in 502 (`endpoint_failure`), never a second delivery.
//! - Every response the router makes itself carries `X-Cf-RouterError` and
//!   `X-Hydrant-Router-Error`, so nobody mistakes it for the app's.
//! - Hop-by-hop headers are never forwarded, in either direction.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hydrant_emitter::Emitter;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::access_log::{Exchange, format_into};
use crate::backend::{Backends, Failure, Lease};
use crate::body::ResponseBody;
use crate::metrics::{Metrics, Reason};
use crate::table::{Endpoint, MAX_HOST_LEN, Pool, Snapshot, request_host};

static X_VCAP_REQUEST_ID: HeaderName = HeaderName::from_static("x-vcap-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
static X_CF_APPLICATION_ID: HeaderName = HeaderName::from_static("x-cf-applicationid");
static X_CF_INSTANCE_INDEX: HeaderName = HeaderName::from_static("x-cf-instanceindex");
static X_CF_INSTANCE_ID: HeaderName = HeaderName::from_static("x-cf-instanceid");
static X_CF_APP_INSTANCE: HeaderName = HeaderName::from_static("x-cf-app-instance");
static X_CF_ROUTER_ERROR: HeaderName = HeaderName::from_static("x-cf-routererror");
static X_HYDRANT_ROUTER_ERROR: HeaderName = HeaderName::from_static("x-hydrant-router-error");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The most attempts [`crate::Config::max_attempts`] allows; sizes the tried-list on the stack.
pub(crate) const MAX_ATTEMPTS: usize = 16;

/// What every request needs, shared by the connections of one worker thread (each worker has
/// its own, so the reference counts and pools it touches per request stay on one core).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    pub(crate) backends: Arc<Backends>,
    pub(crate) emitter: Option<Emitter>,
    pub(crate) router_id: Arc<str>,
    pub(crate) clock: tokio::time::Instant,
    pub(crate) eject_ms: u64,
    pub(crate) max_attempts: usize,
}

impl Shared {
    /// Milliseconds on the router clock (tokio time, so tests can pause it).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the access log needs from the request, taken before the request moves on.
struct Seen {
    emitter: Emitter,
    started: Instant,
    started_ns: i64,
    method: http::Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    bytes_received: u64,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
}

/// The client end of one connection, fixed for all its requests.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) remote: SocketAddr,
    /// The client's IP as a header value, made once per connection for `X-Forwarded-For`.
    ip: HeaderValue,
}

impl Client {
    pub(crate) fn new(remote: SocketAddr) -> Self {
        let mut buf = [0u8; 64];
        let ip = format_into(&mut buf, format_args!("{}", remote.ip()));
        Self {
            remote,
            ip: HeaderValue::from_str(ip).unwrap_or_else(|_| HeaderValue::from_static("-")),
        }
    }
}

/// Where a request goes, decided before anything is awaited.
#[derive(Debug)]
pub(crate) struct Routed {
    started: Instant,
    request_id: HeaderValue,
    pool: Arc<Pool>,
    pinned: Option<usize>,
}

/// The first, synchronous half of a request: count it, name it, find its route and instance
/// set. `Err` is the router-made answer (no host, unknown route, bad pin, no instances).
pub(crate) fn route(
    shared: &Shared,
    snapshot: &Snapshot,
    request: &Request<Incoming>,
) -> Result<Routed, Box<Response<ResponseBody>>> {
    let started = Instant::now();
    shared.metrics.requests.inc();
    let request_id = request_id(request.headers());
    // Every refusal here comes before an exchange with a backend: counted, and answered with
    // the page alone.
    let refuse = |reason: Reason, status: StatusCode, page: String| {
        Box::new(router_error(
            shared,
            reason,
            status,
            page,
            &request_id,
            None,
        ))
    };

    let mut buf = [0u8; MAX_HOST_LEN];
    let raw_host = match request.uri().authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => request
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes),
    };
    let Some(host) = raw_host.and_then(|raw| request_host(raw, &mut buf)) else {
        return Err(refuse(
            Reason::EmptyHost,
            StatusCode::BAD_REQUEST,
            "400 Bad Request: the request has no Host.\n".into(),
        ));
    };
    let Some(route) = snapshot.lookup(host, request.uri().path()) else {
        let page = format!(
            "404 Not Found: Requested route ('{}') does not exist.\n",
            host.escape_default()
        );
        return Err(refuse(Reason::UnknownRoute, StatusCode::NOT_FOUND, page));
    };
    let pool = Arc::clone(&route.pool);

    let pinned = match pinned_instance(request.headers(), &pool) {
        Ok(pinned) => pinned,
        Err(reason) => {
            let page = match reason {
                Reason::InvalidAppInstanceHeader => {
                    "400 Bad Request: X-Cf-App-Instance must be APP_GUID:INDEX.\n"
                }
                _ => "400 Bad Request: X-Cf-App-Instance names no instance of this route.\n",
            };
            return Err(refuse(reason, StatusCode::BAD_REQUEST, page.into()));
        }
    };
    if pool.endpoints.is_empty() {
        let page = format!(
            "503 Service Unavailable: Requested route ('{}') has no available endpoints.\n",
            host.escape_default()
        );
        return Err(refuse(
            Reason::NoEndpoints,
            StatusCode::SERVICE_UNAVAILABLE,
            page,
        ));
    }

    Ok(Routed {
        started,
        request_id,
        pool,
        pinned,
    })
}

/// The second half: sends the request to an instance, retrying while that is safe. Never
/// fails (errors become router-made responses).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    routed: Result<Routed, Box<Response<ResponseBody>>>,
    client: Client,
    mut request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let Routed {
        started,
        request_id,
        pool,
        pinned,
    } = match routed {
        Ok(routed) => routed,
        Err(response) => return Ok(*response),
    };
    let remote = client.remote;
    let upgrade = is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    prepare_request(&mut request, &client.ip, &request_id, upgrade);
    let seen = shared
        .emitter
        .as_ref()
        .map(|emitter| seen(emitter, &request, started));

    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut attempts = 0;
    let mut failed_attempts = 0u32;
    loop {
        let choice = match pinned {
            Some(index) => (attempts == 0).then_some(index),
            None if attempts < shared.max_attempts => {
                pool.select(&tried[..attempts], shared.now_ms(), shared.eject_ms)
            }
            None => None,
        };
        let Some(index) = choice else { break };
        if attempts > 0 {
            shared.metrics.retries.inc();
        }
        tried[attempts] = index;
        attempts += 1;
        let endpoint = &pool.endpoints[index];
        set_instance_headers(request.headers_mut(), endpoint);
        let in_flight = endpoint.start_request();
        let sent = Instant::now();
        match shared.backends.send(endpoint, request).await {
            Ok((response, sender)) => {
                endpoint.mark_healthy();
                let backend_time = sent.elapsed();
                shared.metrics.backend_latency(backend_time);
                let exchange = seen.map(|seen| {
                    exchange(
                        &shared,
                        seen,
                        remote,
                        &request_id,
                        endpoint,
                        None,
                        backend_time,
                    )
                });
                return Ok(respond(
                    &shared,
                    response,
                    sender,
                    in_flight,
                    &request_id,
                    exchange,
                    client_upgrade,
                    failed_attempts,
                ));
            }
            Err(Failure::NotSent {
                request: back,
                reason,
            }) => {
                tracing::debug!(backend = %endpoint.addr, reason, "instance unreachable");
                endpoint.mark_failed(shared.now_ms());
                shared.metrics.attempt_failures.inc();
                failed_attempts += 1;
                request = *back;
            }
            Err(failure) => {
                let (reason, page) = match failure {
                    Failure::Failed(error) => {
                        tracing::debug!(backend = %endpoint.addr, %error, "instance failed mid-request");
                        (
                            Reason::EndpointFailure,
                            "502 Bad Gateway: Registered endpoint failed to handle the request.\n",
                        )
                    }
                    Failure::Timeout => (
                        Reason::EndpointTimeout,
                        "502 Bad Gateway: Registered endpoint did not answer in time.\n",
                    ),
                    Failure::NotSent { .. } => (
                        Reason::EndpointFailure,
                        "502 Bad Gateway: Registered endpoint failed to handle the request.\n",
                    ),
                };
                let exchange = seen.map(|seen| {
                    let mut x = exchange(
                        &shared,
                        seen,
                        remote,
                        &request_id,
                        endpoint,
                        Some(reason),
                        sent.elapsed(),
                    );
                    x.failed_attempts = failed_attempts;
                    x
                });
                return Ok(router_error(
                    &shared,
                    reason,
                    StatusCode::BAD_GATEWAY,
                    page.into(),
                    &request_id,
                    exchange,
                ));
            }
        }
    }
    let last = attempts.checked_sub(1).map(|i| &pool.endpoints[tried[i]]);
    let exchange = match (seen, last) {
        (Some(seen), Some(endpoint)) => {
            let mut x = exchange(
                &shared,
                seen,
                remote,
                &request_id,
                endpoint,
                Some(Reason::EndpointFailure),
                Duration::ZERO,
            );
            x.failed_attempts = failed_attempts;
            Some(x)
        }
        _ => None,
    };
    Ok(router_error(
        &shared,
        Reason::EndpointFailure,
        StatusCode::BAD_GATEWAY,
        "502 Bad Gateway: Registered endpoint failed to handle the request.\n".into(),
        &request_id,
        exchange,
    ))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn respond(
    shared: &Shared,
    mut response: Response<Incoming>,
    sender: crate::backend::Sender,
    in_flight: crate::table::InFlight,
    request_id: &HeaderValue,
    exchange: Option<Box<Exchange>>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    failed_attempts: u32,
) -> Response<ResponseBody> {
    let status = response.status();
    shared.metrics.response(status.as_u16());
    let exchange = exchange.map(|mut x| {
        x.status = status.as_u16();
        x.failed_attempts = failed_attempts;
        x
    });
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    strip_hop_by_hop(headers, switching);
    if !headers.contains_key(&X_VCAP_REQUEST_ID) {
        headers.insert(X_VCAP_REQUEST_ID.clone(), request_id.clone());
    }
    if let Some(value) = &in_flight.endpoint().app_instance_header {
        headers.insert(X_CF_APP_INSTANCE.clone(), value.clone());
    }
    if switching {
        // The backend connection becomes the tunnel; it never returns to the pool.
        drop(sender);
        if let Some(client) = client_upgrade {
            shared.metrics.upgrades.inc();
            let backend = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client, backend, in_flight));
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, ResponseBody::full(Bytes::new(), exchange));
    }
    let (parts, body) = response.into_parts();
    let lease = Lease {
        backends: Arc::clone(&shared.backends),
        sender,
    };
    Response::from_parts(
        parts,
        ResponseBody::proxied(body, Some(lease), in_flight, exchange),
    )
}

async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    in_flight: crate::table::InFlight,
) {
    let (Ok(client), Ok(backend)) = tokio::join!(client, backend) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
    drop(in_flight);
}

fn router_error(
    shared: &Shared,
    reason: Reason,
    status: StatusCode,
    page: String,
    request_id: &HeaderValue,
    exchange: Option<Box<Exchange>>,
) -> Response<ResponseBody> {
    shared.metrics.error(reason);
    shared.metrics.response(status.as_u16());
    let exchange = exchange.map(|mut x| {
        x.status = status.as_u16();
        x
    });
    let mut response = Response::new(ResponseBody::full(Bytes::from(page), exchange));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        X_CF_ROUTER_ERROR.clone(),
        HeaderValue::from_static(reason.gorouter()),
    );
    headers.insert(
        X_HYDRANT_ROUTER_ERROR.clone(),
        HeaderValue::from_static(reason.as_str()),
    );
    headers.insert(X_VCAP_REQUEST_ID.clone(), request_id.clone());
    response
}

fn seen(emitter: &Emitter, request: &Request<Incoming>, started: Instant) -> Seen {
    let headers = request.headers();
    let started_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Seen {
        emitter: emitter.clone(),
        started,
        started_ns,
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        host: headers.get(header::HOST).cloned(),
        bytes_received: headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        referer: headers.get(header::REFERER).cloned(),
        user_agent: headers.get(header::USER_AGENT).cloned(),
        forwarded_for: headers.get(&X_FORWARDED_FOR).cloned(),
        forwarded_proto: headers.get(&X_FORWARDED_PROTO).cloned(),
    }
}

fn exchange(
    shared: &Shared,
    seen: Seen,
    remote: SocketAddr,
    request_id: &HeaderValue,
    endpoint: &Arc<Endpoint>,
    router_error: Option<Reason>,
    backend_time: Duration,
) -> Box<Exchange> {
    Box::new(Exchange {
        emitter: seen.emitter,
        router_id: Arc::clone(&shared.router_id),
        started: seen.started,
        started_ns: seen.started_ns,
        method: seen.method,
        uri: seen.uri,
        version: seen.version,
        host: seen.host,
        status: 0,
        bytes_received: seen.bytes_received,
        bytes_sent: 0,
        referer: seen.referer,
        user_agent: seen.user_agent,
        remote,
        forwarded_for: seen.forwarded_for,
        forwarded_proto: seen.forwarded_proto,
        request_id: request_id.clone(),
        endpoint: Arc::clone(endpoint),
        router_error,
        backend_time,
        failed_attempts: 0,
        app: endpoint.app_series(&shared.metrics),
    })
}

/// The client's `X-Vcap-Request-Id` when it is a sane token (so a trace can span routers),
/// otherwise a fresh UUID v4.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_VCAP_REQUEST_ID) {
        let bytes = id.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= 128
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return id.clone();
        }
    }
    new_request_id()
}

/// A random UUID (version 4) as a header value.
pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut nibble = 32;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
            continue;
        }
        nibble -= 1;
        *slot = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `Ok(Some(i))` when the client pinned instance `i` with `X-Cf-App-Instance: GUID:INDEX`.
fn pinned_instance(headers: &HeaderMap, pool: &Pool) -> Result<Option<usize>, Reason> {
    let Some(value) = headers.get(&X_CF_APP_INSTANCE) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Reason::InvalidAppInstanceHeader)?;
    let (app, index) = text
        .trim()
        .split_once(':')
        .ok_or(Reason::InvalidAppInstanceHeader)?;
    if app.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::InvalidAppInstanceHeader);
    }
    pool.find_instance(text.trim())
        .map(Some)
        .ok_or(Reason::UnknownAppInstance)
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), keeping `Connection: upgrade` and `Upgrade`
/// for a protocol switch.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(connection) = headers.get(header::CONNECTION) {
        // Headers the sender named in `Connection` are hop-by-hop too.
        let named: Vec<HeaderName> = connection
            .as_bytes()
            .split(|&b| b == b',')
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
        if !keep_upgrade {
            headers.remove(header::CONNECTION);
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    for name in [header::TE, header::TRAILER, header::TRANSFER_ENCODING] {
        if headers.contains_key(&name) {
            headers.remove(name);
        }
    }
    if !keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.remove(header::UPGRADE);
    }
}

fn prepare_request(
    request: &mut Request<Incoming>,
    client_ip: &HeaderValue,
    request_id: &HeaderValue,
    upgrade: bool,
) {
    // Absolute-form requests (proxy style) become origin-form with a Host header.
    if request.uri().authority().is_some() {
        let authority = request.uri().authority().map(|a| a.as_str().to_owned());
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Ok(uri) = path.parse::<Uri>() {
            *request.uri_mut() = uri;
        }
        if let Some(authority) = authority
            && !request.headers().contains_key(header::HOST)
            && let Ok(value) = HeaderValue::from_str(&authority)
        {
            request.headers_mut().insert(header::HOST, value);
        }
    }
    *request.version_mut() = Version::HTTP_11;
    prepare_headers(request.headers_mut(), client_ip, request_id, upgrade);
}

/// The request headers the app sees: hop-by-hop ones gone, the forwarding ones added.
fn prepare_headers(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    request_id: &HeaderValue,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);

    let forwarded = match headers.get(&X_FORWARDED_FOR) {
        Some(previous) => {
            let mut value = Vec::with_capacity(previous.len() + 2 + client_ip.len());
            value.extend_from_slice(previous.as_bytes());
            value.extend_from_slice(b", ");
            value.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&value).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(forwarded) = forwarded {
        headers.insert(X_FORWARDED_FOR.clone(), forwarded);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_REQUEST_START) {
        headers.insert(X_REQUEST_START.clone(), request_start());
    }
    headers.insert(X_VCAP_REQUEST_ID.clone(), request_id.clone());
}

thread_local! {
    /// The last `X-Request-Start` value made on this thread and its millisecond: requests in
    /// the same millisecond share it instead of each formatting and allocating one.
    static REQUEST_START: RefCell<(u128, HeaderValue)> =
        const { RefCell::new((0, HeaderValue::from_static("0"))) };
}

/// Now, in milliseconds since the Unix epoch, as a header value.
fn request_start() -> HeaderValue {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    REQUEST_START.with_borrow_mut(|(at, value)| {
        if *at != ms {
            let mut buf = [0u8; 40];
            let text = format_into(&mut buf, format_args!("{ms}"));
            if let Ok(fresh) = HeaderValue::from_str(text) {
                *at = ms;
                *value = fresh;
            }
        }
        value.clone()
    })
}

fn set_instance_headers(headers: &mut HeaderMap, endpoint: &Endpoint) {
    for (name, value) in [
        (&X_CF_APPLICATION_ID, &endpoint.app_header),
        (&X_CF_INSTANCE_INDEX, &endpoint.index_header),
        (&X_CF_INSTANCE_ID, &endpoint.instance_header),
    ] {
        match value {
            Some(value) => {
                headers.insert(name.clone(), value.clone());
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn request_start_is_the_current_unix_millisecond() {
        let now_ms = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        for _ in 0..3 {
            let before = now_ms();
            let value: u128 = request_start().to_str().unwrap().parse().unwrap();
            let after = now_ms();
            assert!(
                (before..=after).contains(&value),
                "{before} {value} {after}"
            );
            // The cached value must move on with the clock.
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    #[test]
    fn forwarded_for_appends_the_client_ip() {
        let client = Client::new("[::1]:5000".parse().unwrap());
        let request_id = HeaderValue::from_static("id");
        let mut request = Request::new(());
        request
            .headers_mut()
            .insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        let mut again = Request::new(());
        prepare_headers(request.headers_mut(), &client.ip, &request_id, false);
        prepare_headers(again.headers_mut(), &client.ip, &request_id, false);
        assert_eq!(request.headers()[&X_FORWARDED_FOR], "10.0.0.1, ::1");
        assert_eq!(again.headers()[&X_FORWARDED_FOR], "::1");
    }

    #[test]
    fn client_request_ids_are_kept_only_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_VCAP_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(&X_VCAP_REQUEST_ID, HeaderValue::from_static("a b\"c"));
        assert_eq!(request_id(&headers).len(), 36);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-app"));

        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers.len(), 2);
    }
}
