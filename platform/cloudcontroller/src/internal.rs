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

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use hydrant_emitter::Registry;
use hydrant_tls::{Identity, Observer, Reason, ServerTls};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
/// Connections served at once; past this, accepting waits.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
        Self {
            registry: registry.clone(),
            tls: hydrant_emitter::tls::observer(registry, ENDPOINT),
        }
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

/// Serves `router` on `listener` over mutual TLS (`tls`, ALPN `http/1.1`) until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: ServerTls,
    router: Router,
    shutdown: CancellationToken,
) {
    let mut incoming =
        hydrant_tls::grpc::incoming(listener, tls.with_alpn(&[b"http/1.1"])).into_inner();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
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
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(peer);
                    router.clone().oneshot(request.map(axum::body::Body::new))
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(conn), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
