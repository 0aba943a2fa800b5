//! The internal API: the cloud controller's endpoints for the platform's own roles, served on
//! `internal_listen` over mutual TLS, apart from the public API (which keeps bearer tokens
//! only).
//!
//! Flow: TCP → the TLS handshake (`hydrant_tls`), which lets in only certificates from the
//! trusted CA naming a role that calls the controller (executor, nozzle, autoscaler, slo,
//! healthmanager) → [`authorize`], which checks that identity against the endpoint's
//! allow-list ([`RULES`]) → the same handlers as the public API, so every call still carries
//! and is judged by its token.
//!
//! Invariants: a client without a certificate, with one from another CA, or naming an identity
//! no endpoint here accepts is refused at the handshake (a TLS alert, no HTTP); a let-in role
//! calling an endpoint that is not its own gets 403 naming its identity; a path no role may
//! call here gets 404. Every refusal is counted as
//! `cloudcontroller.internal_refused{identity,reason}` (identity `none` without a
//! certificate, `unknown` for a name that is no role), and logged; calls let through are
//! counted as `cloudcontroller.internal_calls{identity}`.
//!
//! Connections: a role keeps one connection here for as long as it keeps calling. A client
//! offering ALPN `h2` (every role's client) gets HTTP/2 with keep-alive pings: no header-read
//! timeout applies between its requests (HTTP/2 has no idle request line to wait for, and a
//! dead peer is found by its missing ping answers), so a role polling every 12 s does not pay
//! a TLS handshake per poll. HTTP/1.1 clients keep the 10 s header-read timeout. Either way a
//! connection with no request in flight for [`Timeouts::idle`] is closed gracefully (GOAWAY on
//! HTTP/2), so idle connections stay bounded in time as well as in number, and every
//! connection is closed gracefully after [`Timeouts::max_age`], so a rotated or dropped CA
//! reaches kept connections too. Connections are counted as
//! `cloudcontroller.internal_connections{protocol}`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use hydrant_emitter::Registry;
use hydrant_tls::{Identity, Observer, Reason, ServerTls};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::api::ApiError;

/// The endpoint's name in `tls.refused` and logs.
pub(crate) const ENDPOINT: &str = "cloudcontroller.internal";
const REFUSED: &str = "cloudcontroller.internal_refused";
const REFUSED_HELP: &str =
    "clients refused by the internal API, by the identity their certificate named and reason";
const CALLS: &str = "cloudcontroller.internal_calls";
const CALLS_HELP: &str = "internal API calls let through to their handler, by caller identity";
const CONNECTIONS: &str = "cloudcontroller.internal_connections";
const CONNECTIONS_HELP: &str =
    "connections to the internal API that passed the handshake, by protocol (ALPN)";
/// Connections served at once; past this, accepting waits.
const MAX_CONNECTIONS: usize = 256;

/// How long the internal listener waits, and on what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// HTTP/1.1 only: how long a client may take to send a request's headers, counted from
    /// connecting or from the previous response. Default 10 s.
    pub(crate) header: Duration,
    /// How long a connection may go without a request in flight before it is closed
    /// gracefully. Default 120 s: above the roles' 90 s (they close first, so a call never
    /// meets a closing connection) and far above their poll intervals.
    pub(crate) idle: Duration,
    /// HTTP/2 only: how often the server pings an open connection. Default 30 s.
    pub(crate) ping_interval: Duration,
    /// HTTP/2 only: how long a ping may go unanswered before the connection is closed as
    /// dead. Default 20 s.
    pub(crate) ping_timeout: Duration,
    /// How long a connection may last before it is closed gracefully however busy it is, so
    /// every client handshakes again now and then: a reissued leaf, a rotated CA or a CA
    /// dropped from the bundle applies to every role within this time. Default 15 min.
    pub(crate) max_age: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(20),
            max_age: Duration::from_secs(15 * 60),
        }
    }
}

/// How long a graceful close may take before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

use Identity::{Autoscaler, Executor, HealthManager, Nozzle, Slo, TrafficController};

/// The roles that get tokens here (client credentials over this listener).
const TOKEN_CALLERS: &[Identity] = &[Executor, Nozzle, Autoscaler, Slo, HealthManager];
/// Every role the handshake lets in: those that call at least one endpoint here (the firehose
/// edge only fetches the token keys it verifies with).
pub(crate) const CALLERS: &[Identity] = &[
    Executor,
    Nozzle,
    Autoscaler,
    Slo,
    HealthManager,
    TrafficController,
];

/// Who may call what: (method, path pattern with `*` for one segment, identities). The token
/// endpoint serves every caller (roles get client-credential tokens over this listener too).
pub(crate) const RULES: &[(Method, &str, &[Identity])] = &[
    (Method::POST, "/v3/tokens", TOKEN_CALLERS),
    (Method::POST, "/oauth/token", TOKEN_CALLERS),
    (Method::GET, "/token_keys", CALLERS),
    // Executors: the droplets of the instances they were told to start.
    (Method::GET, "/internal/droplets/*", &[Executor]),
    // The syslog nozzle: which drains to serve, and how they fare.
    (Method::GET, "/v3/drain_targets", &[Nozzle]),
    (Method::PUT, "/v3/drain_status", &[Nozzle]),
    // The autoscaler: policies, the apps' counts, scaling, and its decisions' history.
    (Method::GET, "/v3/autoscaling_policies", &[Autoscaler]),
    (
        Method::POST,
        "/v3/apps/*/processes/web/actions/scale",
        &[Autoscaler],
    ),
    (Method::POST, "/v3/apps/*/autoscaling_events", &[Autoscaler]),
    // The health manager's desired state and the autoscaler's instance counts.
    (Method::GET, "/v3/apps", &[Autoscaler, HealthManager]),
    (
        Method::POST,
        "/v3/apps/*/instances/*/actions/restart",
        &[HealthManager],
    ),
    // The SLO alerter's objectives.
    (Method::GET, "/v3/slos", &[Slo]),
];

/// The identities allowed at `method` `path`, or `None` when no role may call it here.
pub(crate) fn allowed(method: &Method, path: &str) -> Option<&'static [Identity]> {
    RULES
        .iter()
        .find(|(m, pattern, _)| m == method && matches(pattern, path))
        .map(|(_, _, ids)| *ids)
}

fn matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some("*"), Some(segment)) if !segment.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// Counts refusals by identity and reason, and (for the handshake's) under `tls.refused`
/// like every mTLS endpoint; and the calls let through, by identity.
#[derive(Debug, Clone)]
pub(crate) struct Refusals {
    registry: Registry,
    tls: Arc<dyn Observer>,
}

impl Refusals {
    pub(crate) fn new(registry: &Registry) -> Self {
        for identity in CALLERS {
            registry.counter(CALLS, CALLS_HELP, &[("identity", identity.name())]);
            registry.counter(
                REFUSED,
                REFUSED_HELP,
                &[
                    ("identity", identity.name()),
                    ("reason", "endpoint_not_allowed"),
                ],
            );
        }
        registry.counter(
            REFUSED,
            REFUSED_HELP,
            &[
                ("identity", "none"),
                ("reason", Reason::NoCertificate.label()),
            ],
        );
        for protocol in ["h2", "http/1.1"] {
            registry.counter(CONNECTIONS, CONNECTIONS_HELP, &[("protocol", protocol)]);
        }
        Self {
            registry: registry.clone(),
            tls: hydrant_emitter::tls::observer(registry, ENDPOINT),
        }
    }

    /// Counts a connection that passed the handshake, by the protocol it speaks.
    fn connected(&self, protocol: &'static str) {
        self.registry
            .counter(CONNECTIONS, CONNECTIONS_HELP, &[("protocol", protocol)])
            .inc();
    }

    fn count(&self, identity: Option<Identity>, reason: &str) {
        let identity = match identity {
            Some(i) => i.name(),
            None if reason == Reason::NoCertificate.label() => "none",
            None => "unknown",
        };
        self.registry
            .counter(
                REFUSED,
                REFUSED_HELP,
                &[("identity", identity), ("reason", reason)],
            )
            .inc();
    }
}

impl Observer for Refusals {
    fn refused(&self, endpoint: &str, reason: Reason) {
        self.refused_identity(endpoint, None, reason);
    }

    fn refused_identity(&self, endpoint: &str, identity: Option<Identity>, reason: Reason) {
        self.tls.refused(endpoint, reason);
        self.count(identity, reason.label());
    }
}

/// The identity the handshake verified, in every request's extensions.
#[derive(Debug, Clone, Copy)]
struct Peer(Option<Identity>);

/// Lets a request through only if its certificate's identity may call the endpoint.
async fn authorize(
    axum::extract::State(refusals): axum::extract::State<Refusals>,
    request: Request,
    next: Next,
) -> Response {
    let identity = request.extensions().get::<Peer>().and_then(|p| p.0);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let Some(allowed) = allowed(&method, &path) else {
        refusals.count(identity, "no_such_endpoint");
        return ApiError::not_found("Internal endpoint").into_response();
    };
    match identity {
        Some(identity) if allowed.contains(&identity) => {
            refusals
                .registry
                .counter(CALLS, CALLS_HELP, &[("identity", identity.name())])
                .inc();
            next.run(request).await
        }
        _ => {
            let shown = identity.map_or("a client without an identity", Identity::name);
            let accepts: Vec<&str> = allowed.iter().map(|i| i.name()).collect();
            refusals.count(identity, "endpoint_not_allowed");
            tracing::warn!(
                endpoint = ENDPOINT,
                identity = shown,
                %method,
                path,
                "refused an internal call"
            );
            ApiError::forbidden(format!(
                "identity {shown} may not call {method} {path} on the internal API; it accepts {}",
                accepts.join(", ")
            ))
            .into_response()
        }
    }
}

/// The internal API's router: the API's handlers behind [`authorize`].
pub(crate) fn router(api: Router, refusals: Refusals) -> Router {
    api.layer(axum::middleware::from_fn_with_state(refusals, authorize))
}

/// Serves `router` on `listener` over mutual TLS (`tls`, ALPN `h2` or `http/1.1`) with the
/// default [`Timeouts`] until `shutdown`; connections are counted in `refusals`' registry.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: ServerTls,
    router: Router,
    refusals: Refusals,
    shutdown: CancellationToken,
) {
    serve_with(
        listener,
        tls,
        router,
        refusals,
        Timeouts::default(),
        shutdown,
    )
    .await;
}

/// [`serve`] with `timeouts` (tests shorten them).
pub(crate) async fn serve_with(
    listener: TcpListener,
    tls: ServerTls,
    router: Router,
    refusals: Refusals,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let mut incoming =
        hydrant_tls::grpc::incoming(listener, tls.with_alpn(&[b"h2", b"http/1.1"])).into_inner();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
    h1.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
    h2.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeouts.ping_interval)
        .keep_alive_timeout(timeouts.ping_timeout);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let conn = tokio::select! {
            () = shutdown.cancelled() => break,
            conn = incoming.recv() => match conn {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let peer = Peer(conn.peer().identity);
        // The protocol is the one ALPN agreed on; a client naming none speaks HTTP/1.1.
        let (builder, protocol) = if conn.alpn() == Some(b"h2".as_slice()) {
            (h2.clone(), "h2")
        } else {
            (h1.clone(), "http/1.1")
        };
        refusals.connected(protocol);
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let activity = Arc::new(Activity::new());
            let watched = Arc::clone(&activity);
            let service =
                hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(peer);
                    let call = watched.start();
                    let answer = router.clone().oneshot(request.map(axum::body::Body::new));
                    async move {
                        let answer = answer.await;
                        drop(call);
                        answer
                    }
                });
            let connection = builder.serve_connection(TokioIo::new(conn), service);
            tokio::pin!(connection);
            let retire_at = Instant::now() + timeouts.max_age;
            loop {
                let idle_at = activity.idle_deadline(timeouts.idle);
                tokio::select! {
                    _ = connection.as_mut() => return,
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(retire_at) => break,
                    () = tokio::time::sleep_until(idle_at) => {
                        if activity.idle_deadline(timeouts.idle) <= Instant::now() {
                            break;
                        }
                    }
                }
            }
            // Shutting down, idle too long or old enough: finish what is in flight (HTTP/2
            // says GOAWAY first), then close; a peer that does not let go is dropped after the
            // grace.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// One connection's requests in flight and when the last one ended: what the idle bound
/// looks at (pings and partial requests do not count as use).
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

/// A request in flight: counted from the service call to its answer (or its cancellation).
#[derive(Debug)]
struct Call(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn start(self: &Arc<Self>) -> Call {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Call(Arc::clone(self))
    }

    /// When the connection will have been idle for `idle`: never while a request is in
    /// flight (checked again after `idle`).
    fn idle_deadline(&self, idle: Duration) -> Instant {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return now + idle;
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) + idle
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use hydrant_runtime::MtlsTransport;
    use hydrant_tls::{Material, TlsFiles};

    #[test]
    fn each_role_reaches_exactly_its_own_endpoints() {
        let at = |m: Method, p: &str| allowed(&m, p).map(<[Identity]>::to_vec);
        assert_eq!(
            at(Method::GET, "/internal/droplets/abc"),
            Some(vec![Executor])
        );
        assert_eq!(at(Method::GET, "/internal/droplets/"), None);
        assert_eq!(at(Method::GET, "/internal/droplets/a/b"), None);
        assert_eq!(at(Method::GET, "/v3/drain_targets"), Some(vec![Nozzle]));
        assert_eq!(
            at(Method::POST, "/v3/apps/g1/processes/web/actions/scale"),
            Some(vec![Autoscaler])
        );
        assert_eq!(
            at(Method::POST, "/v3/apps/g1/instances/0/actions/restart"),
            Some(vec![HealthManager])
        );
        assert_eq!(at(Method::GET, "/v3/slos"), Some(vec![Slo]));
        // Nothing else of the API is served here: not users, not deletes, not the dashboard.
        assert_eq!(at(Method::GET, "/v3/users"), None);
        assert_eq!(at(Method::DELETE, "/v3/apps/g1"), None);
        assert_eq!(at(Method::GET, "/"), None);
        assert_eq!(at(Method::POST, "/v3/tokens").map(|v| v.len()), Some(5));
    }

    /// The internal listener with `timeouts`, answering `GET /v3/slos` to the `slo` identity:
    /// its address, registry and certificate directory.
    async fn internal_api(
        timeouts: Timeouts,
        shutdown: &CancellationToken,
    ) -> (String, Registry, tempfile::TempDir) {
        let certs = tempfile::tempdir().unwrap();
        hydrant_tls::issue::ensure(
            certs.path(),
            &[Identity::CloudController, Identity::Slo, Identity::Agent],
            &[],
        )
        .unwrap();
        let registry = Registry::new("cloudcontroller", "0");
        let refusals = Refusals::new(&registry);
        let tls = ServerTls::new(
            Material::load(&TlsFiles::in_dir(certs.path(), Identity::CloudController)).unwrap(),
            ENDPOINT,
            CALLERS,
            Arc::new(refusals.clone()),
        )
        .unwrap();
        let api = Router::new().route("/v3/slos", axum::routing::get(|| async { "[]" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/v3/slos", listener.local_addr().unwrap());
        tokio::spawn(serve_with(
            listener,
            tls,
            router(api, refusals.clone()),
            refusals,
            timeouts,
            shutdown.clone(),
        ));
        (url, registry, certs)
    }

    /// `calls` GETs of `url`, `every` apart, each answered 200.
    async fn poll(transport: &MtlsTransport, url: &str, calls: usize, every: Duration) {
        for call in 0..calls {
            if call > 0 {
                tokio::time::sleep(every).await;
            }
            let request = reqwest::Client::new().get(url).build().unwrap();
            let response = transport.execute(request).await.unwrap();
            assert_eq!(response.status(), 200, "call {call}");
            assert_eq!(response.text().await.unwrap(), "[]");
        }
    }

    fn connections(registry: &Registry, protocol: &str) -> u64 {
        registry.counter_sum(CONNECTIONS, &[("protocol", protocol)])
    }

    /// A role polling less often than the header-read timeout keeps one connection (one TLS
    /// handshake): HTTP/2 has no header timeout between requests. An HTTP/1.1-only client
    /// still meets it and reconnects for every call, which is what HTTP/2 ends. (The
    /// timeouts are scaled down from 10 s and a 12 s poll to 300 ms and 700 ms.)
    #[tokio::test]
    async fn a_role_polling_slower_than_the_header_timeout_keeps_one_connection() {
        let shutdown = CancellationToken::new();
        let timeouts = Timeouts {
            header: Duration::from_millis(300),
            ..Timeouts::default()
        };
        let (url, registry, certs) = internal_api(timeouts, &shutdown).await;
        let files = TlsFiles::in_dir(certs.path(), Identity::Slo);

        let role = MtlsTransport::new(&files).unwrap();
        poll(&role, &url, 3, Duration::from_millis(700)).await;
        assert_eq!(role.connections_opened(), 1);
        assert_eq!(connections(&registry, "h2"), 1);

        let old = MtlsTransport::new(&files).unwrap().http1_only();
        poll(&old, &url, 3, Duration::from_millis(700)).await;
        assert_eq!(old.connections_opened(), 3);
        assert_eq!(connections(&registry, "http/1.1"), 3);
        shutdown.cancel();
    }

    /// Idle connections stay bounded in time: one with no request for the idle bound is
    /// closed by the server (GOAWAY), and the client's next call opens a new one without
    /// failing.
    #[tokio::test]
    async fn an_idle_connection_is_closed_and_the_next_call_reconnects() {
        let shutdown = CancellationToken::new();
        let timeouts = Timeouts {
            idle: Duration::from_millis(300),
            ..Timeouts::default()
        };
        let (url, registry, certs) = internal_api(timeouts, &shutdown).await;
        let role = MtlsTransport::new(&TlsFiles::in_dir(certs.path(), Identity::Slo))
            .unwrap()
            .with_idle_timeout(Duration::from_secs(30));
        // Two quick calls share the connection; a pause past the bound ends it.
        poll(&role, &url, 2, Duration::from_millis(50)).await;
        assert_eq!(role.connections_opened(), 1);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        poll(&role, &url, 1, Duration::ZERO).await;
        assert_eq!(role.connections_opened(), 2);
        assert_eq!(connections(&registry, "h2"), 2);
        shutdown.cancel();
    }

    /// A client the handshake refuses still learns why over HTTP/2 (the TLS alert is in the
    /// error), and a let-in role calling another's endpoint gets 403 over HTTP/2 as well.
    #[tokio::test]
    async fn refusals_are_the_same_over_http2() {
        let shutdown = CancellationToken::new();
        let (url, registry, certs) = internal_api(Timeouts::default(), &shutdown).await;
        let agent = hydrant_tls::ClientTls::new(
            Material::load(&TlsFiles::in_dir(certs.path(), Identity::Agent)).unwrap(),
            Identity::CloudController,
        )
        .unwrap();
        let request = reqwest::Client::new().get(&url).build().unwrap();
        let refused = MtlsTransport::from_client(&agent)
            .execute(request)
            .await
            .unwrap_err();
        assert!(refused.contains("AccessDenied"), "{refused}");

        let slo = MtlsTransport::new(&TlsFiles::in_dir(certs.path(), Identity::Slo)).unwrap();
        let other = url.replace("/v3/slos", "/v3/drain_targets");
        let request = reqwest::Client::new().get(&other).build().unwrap();
        let response = slo.execute(request).await.unwrap();
        assert_eq!(response.status(), 403);
        assert_eq!(connections(&registry, "h2"), 1);
        shutdown.cancel();
    }

    /// A busy connection is still renewed after its maximum age (a dropped CA reaches it),
    /// without failing a call: the server says GOAWAY and the next call handshakes again.
    #[tokio::test]
    async fn a_connection_is_renewed_after_its_maximum_age_without_a_failed_call() {
        let shutdown = CancellationToken::new();
        let timeouts = Timeouts {
            max_age: Duration::from_millis(400),
            ..Timeouts::default()
        };
        let (url, registry, certs) = internal_api(timeouts, &shutdown).await;
        let role = MtlsTransport::new(&TlsFiles::in_dir(certs.path(), Identity::Slo)).unwrap();
        // Calls every 100 ms for 1.5 s: never idle, yet a few connections in turn.
        poll(&role, &url, 15, Duration::from_millis(100)).await;
        // Renewed at least once, and still kept between renewals (not one per call).
        let opened = role.connections_opened();
        assert!((2..15).contains(&opened), "{opened} connections");
        assert_eq!(connections(&registry, "h2"), opened);
        shutdown.cancel();
    }
}
