//! Several cloud controllers behind one client: the transport every role that calls the
//! controller (its API, its `/token_keys`) uses when its config names more than one
//! (`api_urls`, the edge's `token_keys_urls`), so losing the host of one controller costs a
//! role one failed attempt, not its work.
//!
//! Flow: a call built for the first controller's URL ([`hydrant_api::Client`] or a key fetch)
//! → [`Failover`] rewrites its origin to the controller in use (the last one that answered)
//! → the inner transport (mutual TLS, or plain HTTP) → on no answer (connection refused, a
//! broken exchange, the per-attempt timeout, or the caller's own timeout cancelling the
//! attempt) or a 5xx, the next controller in turn, once each (a request that is not idempotent,
//! a POST or a PATCH, only while it provably did not reach the one that failed: no connection,
//! or a 503); the one that answers is kept for
//! the next calls. A call none answers fails with every controller's reason, so the caller's
//! own backoff schedules the retry; a call every controller answered with a 5xx returns the
//! last answer, so the caller sees the API's error as it would with one controller.
//!
//! Invariants: a call goes to each controller at most once; a change of the controller that
//! answers is logged and counted (`controller.failovers{to}`, `controller_failovers_total` on
//! `/metrics`); a URL that names none of the controllers is sent as it is (no guessing);
//! errors name every URL tried and why, never a token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hydrant_api::{Transport, TransportFuture};
use hydrant_emitter::{Counter, Registry};

use crate::MtlsTransport;

/// How long one attempt may wait for an answer's headers before the next controller is tried,
/// when the caller sets no bound of its own. Far above a healthy controller's answer time;
/// only a host that vanished without closing its connections reaches it.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Dialling a plain-HTTP controller: a dead host's address must not hold a call for long.
const PLAIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How requests reach a controller once the URL is chosen.
#[derive(Debug, Clone)]
enum Inner {
    /// Plain HTTP (the public API, the micro cloud's loopback).
    Plain(reqwest::Client),
    /// Mutual TLS to the controllers' internal listeners.
    Mtls(MtlsTransport),
}

impl Inner {
    /// The answer, or why there is none and whether the request may have reached the
    /// controller (`false` only when it provably did not: no connection was made).
    async fn send(&self, request: reqwest::Request) -> Result<reqwest::Response, (String, bool)> {
        match self {
            Self::Plain(client) => client
                .execute(request)
                .await
                .map_err(|e| (crate::api::chain(&e), !(e.is_connect() || e.is_builder()))),
            Self::Mtls(mtls) => mtls.execute_classified(request).await,
        }
    }
}

/// Which controller is in use, shared by every clone (the API client's and the key fetch's).
#[derive(Debug, Default)]
struct State {
    /// The controller the next call tries first.
    active: AtomicUsize,
    /// The controller that answered last (a change is a failover).
    answered: AtomicUsize,
}

/// A transport over several cloud controllers (see the module docs). Cheap to clone; clones
/// share the controller in use and the counter.
#[derive(Debug, Clone)]
pub struct Failover {
    bases: Arc<[String]>,
    inner: Inner,
    state: Arc<State>,
    failovers: Counter,
    registry: Option<Registry>,
    attempt_timeout: Duration,
}

impl Failover {
    /// Calls to `bases` (each `http(s)://HOST:PORT`, first one first) over `mtls` when given,
    /// plain HTTP otherwise; failovers counted in a counter of its own (see
    /// [`Failover::counted`]).
    #[must_use]
    pub fn new(bases: &[String], mtls: Option<MtlsTransport>) -> Self {
        let inner = match mtls {
            Some(mtls) => Inner::Mtls(mtls),
            None => Inner::Plain(
                reqwest::Client::builder()
                    .connect_timeout(PLAIN_CONNECT_TIMEOUT)
                    .build()
                    .unwrap_or_default(),
            ),
        };
        Self {
            bases: bases
                .iter()
                .map(|b| b.trim().trim_end_matches('/').to_owned())
                .collect(),
            inner,
            state: Arc::default(),
            failovers: Counter::default(),
            registry: None,
            attempt_timeout: ATTEMPT_TIMEOUT,
        }
    }

    /// The same transport counting its failovers in `registry` as `controller.failovers`,
    /// tagged with the controller moved to.
    #[must_use]
    pub fn counted(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// The same transport giving each attempt at most `timeout` to answer (default
    /// [`ATTEMPT_TIMEOUT`]).
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The controllers, in the order they are tried from the first.
    #[must_use]
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// The controller the next call goes to first.
    #[must_use]
    pub fn current(&self) -> &str {
        let i = self.state.active.load(Ordering::Relaxed);
        self.bases.get(i).map_or("", String::as_str)
    }

    /// Failovers so far: how often the controller that answers changed.
    #[must_use]
    pub fn failovers(&self) -> u64 {
        self.failovers.get()
    }

    /// Whether requests go out as plain HTTP (no mutual TLS): key fetches then take `http://`.
    #[must_use]
    pub fn is_plain(&self) -> bool {
        matches!(self.inner, Inner::Plain(_))
    }

    /// Which controller `url` names and the rest of it (path and query).
    fn split(&self, url: &str) -> Option<(usize, String)> {
        self.bases.iter().enumerate().find_map(|(i, base)| {
            let rest = url.strip_prefix(base.as_str())?;
            (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
                .then(|| (i, rest.to_owned()))
        })
    }

    /// `i` answered: kept for the next calls; a change from the last one that answered is a
    /// failover, logged and counted.
    fn answered(&self, i: usize) {
        self.state.active.store(i, Ordering::Relaxed);
        let before = self.state.answered.swap(i, Ordering::Relaxed);
        if before != i {
            let (from, to) = (self.base(before), self.base(i));
            tracing::warn!(from, to, "cloud controller failover: calls go to {to} now");
            self.failovers.inc();
            if let Some(registry) = &self.registry {
                registry
                    .counter(
                        "controller.failovers",
                        "Calls that moved to another cloud controller because the one in use \
                         failed, by the controller moved to",
                        &[("to", to)],
                    )
                    .inc();
            }
        }
    }

    /// `i` failed: the next call starts at the one after it (unless another call already
    /// moved on).
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.bases.len().max(1);
        let _ = self
            .state
            .active
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn base(&self, i: usize) -> &str {
        self.bases.get(i).map_or("", String::as_str)
    }

    /// Sends `request` to the controller in use, then to each other one in turn until one
    /// answers (see the module docs).
    ///
    /// # Errors
    /// Every controller failed: each URL tried and why.
    pub async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response, String> {
        let n = self.bases.len();
        let Some((_, rest)) = self.split(request.url().as_str()) else {
            return self.inner.send(request).await.map_err(|(e, _)| e);
        };
        let method = request.method().clone();
        let first = self.state.active.load(Ordering::Relaxed) % n.max(1);
        let mut reasons = Vec::with_capacity(n);
        let mut last_answer = None;
        let mut pending = Some(request);
        for k in 0..n {
            let i = (first + k) % n;
            let Some(template) = pending.take() else {
                break;
            };
            // A body that cannot be copied (a stream) goes to one controller only.
            let mut attempt = if k + 1 < n {
                match template.try_clone() {
                    Some(copy) => {
                        pending = Some(template);
                        copy
                    }
                    None => template,
                }
            } else {
                template
            };
            let url = format!("{}{rest}", self.base(i));
            match reqwest::Url::parse(&url) {
                Ok(parsed) => *attempt.url_mut() = parsed,
                Err(e) => {
                    reasons.push(format!("{url}: not a URL: {e}"));
                    continue;
                }
            }
            // A caller's timeout that drops this future mid-attempt counts as that
            // controller's failure: the next call starts at the next one.
            let mut guard = Attempt {
                failover: self,
                index: i,
                settled: false,
            };
            let outcome =
                tokio::time::timeout(self.attempt_timeout, self.inner.send(attempt)).await;
            guard.settled = true;
            // Whether this controller may have acted on the request: then a request that is
            // not idempotent stops here (a restart or a scale applied twice is worse than a
            // failed call the caller's own backoff retries), unless the answer says it was
            // not processed (503).
            let (reason, maybe_acted) = match outcome {
                Ok(Ok(response)) if !response.status().is_server_error() => {
                    self.answered(i);
                    return Ok(response);
                }
                Ok(Ok(response)) => {
                    let reason = format!("answered {}", response.status());
                    let acted = response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE;
                    last_answer = Some(response);
                    (reason, acted)
                }
                Ok(Err((e, sent))) => (e, sent),
                Err(_) => (
                    format!("no answer within {} ms", self.attempt_timeout.as_millis()),
                    true,
                ),
            };
            if maybe_acted && !crate::api::idempotent(&method) {
                tracing::warn!(controller = self.base(i), error = %reason, "cloud controller call failed after the request went out; not sent to another controller, as it is not idempotent");
                self.failed(i);
                return match last_answer {
                    Some(response) => Ok(response),
                    None => Err(format!(
                        "{}: {reason} (a {method} request that may have reached it is not sent to another controller)",
                        self.base(i)
                    )),
                };
            }
            tracing::warn!(controller = self.base(i), error = %reason, "cloud controller call failed; trying the next controller");
            self.failed(i);
            reasons.push(format!("{}: {reason}", self.base(i)));
        }
        match last_answer {
            Some(response) => Ok(response),
            None => Err(format!(
                "no cloud controller answered: {}",
                reasons.join("; ")
            )),
        }
    }
}

/// One attempt on controller `index`; dropped before it settled, it marks that controller
/// failed.
struct Attempt<'a> {
    failover: &'a Failover,
    index: usize,
    settled: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            tracing::warn!(
                controller = self.failover.base(self.index),
                "cloud controller call abandoned by its caller's timeout; the next call tries \
                 the next controller"
            );
            self.failover.failed(self.index);
        }
    }
}

impl Transport for Failover {
    fn send(&self, request: reqwest::Request) -> TransportFuture {
        let this = self.clone();
        Box::pin(async move { this.execute(request).await })
    }
}

impl hydrant_auth::KeyTransport for Failover {
    fn send(&self, request: reqwest::Request) -> hydrant_auth::KeyFetchFuture {
        let this = self.clone();
        Box::pin(async move { this.execute(request).await })
    }

    fn plain_http(&self) -> bool {
        self.is_plain()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use std::net::SocketAddr;

    use axum::Router;
    use axum::routing::get;

    use super::*;

    /// A controller answering `GET /v3/info` with its own name, or with `status`.
    async fn controller(name: &'static str, status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/v3/info",
            get(move || async move {
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    format!("{{\"name\":\"{name}\"}}"),
                )
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// An address nothing listens on: connections to it are refused.
    async fn refusing() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    async fn info(failover: &Failover, base: &str) -> Result<(u16, String), String> {
        let request = reqwest::Client::new()
            .get(format!("{base}/v3/info"))
            .build()
            .unwrap();
        let response = failover.execute(request).await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.unwrap()))
    }

    #[tokio::test]
    async fn a_refusing_first_controller_fails_over_to_the_second_and_stays_there() {
        let (dead, alive) = (refusing().await, controller("b", 200).await);
        let registry = Registry::new("healthmanager", "0");
        let failover = Failover::new(&[dead.clone(), alive.clone()], None).counted(&registry);
        let (status, body) = info(&failover, &dead).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "{\"name\":\"b\"}"));
        assert_eq!(failover.failovers(), 1);
        assert_eq!(failover.current(), alive);
        assert_eq!(
            registry.counter_sum("controller.failovers", &[("to", &alive)]),
            1
        );
        assert!(
            registry
                .render_prometheus()
                .contains("controller_failovers_total"),
            "{}",
            registry.render_prometheus()
        );
        // Stays on the one that answered: no more failovers while it does.
        for _ in 0..3 {
            assert_eq!(info(&failover, &dead).await.unwrap().0, 200);
        }
        assert_eq!(failover.failovers(), 1);
    }

    #[tokio::test]
    async fn a_5xx_moves_on_and_every_controller_answering_5xx_gives_the_last_answer() {
        let failing = controller("a", 503).await;
        let alive = controller("b", 200).await;
        let failover = Failover::new(&[failing.clone(), alive.clone()], None);
        assert_eq!(
            info(&failover, &failing).await.unwrap().1,
            "{\"name\":\"b\"}"
        );
        assert_eq!(failover.failovers(), 1);
        // Every controller answering 5xx: the caller sees the last answer, as with one.
        let both = Failover::new(&[failing.clone(), controller("c", 502).await], None);
        assert_eq!(info(&both, &failing).await.unwrap().0, 502);
        assert_eq!(both.failovers(), 0);
    }

    /// A controller answering `POST /v3/restart` with `status`, counting the requests it got.
    async fn counting(status: u16) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = hits.clone();
        let app = Router::new().route(
            "/v3/restart",
            axum::routing::post(move || {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), hits)
    }

    async fn restart(failover: &Failover, base: &str) -> Result<u16, String> {
        let request = reqwest::Client::new()
            .post(format!("{base}/v3/restart"))
            .build()
            .unwrap();
        Ok(failover.execute(request).await?.status().as_u16())
    }

    #[tokio::test]
    async fn a_post_the_first_controller_may_have_applied_is_not_sent_to_another() {
        // Answered 500: it may have acted, so the second never sees it.
        let ((broken, broken_hits), (alive, alive_hits)) =
            (counting(500).await, counting(200).await);
        let failover = Failover::new(&[broken.clone(), alive.clone()], None);
        assert_eq!(restart(&failover, &broken).await.unwrap(), 500);
        assert_eq!(
            (
                broken_hits.load(Ordering::SeqCst),
                alive_hits.load(Ordering::SeqCst)
            ),
            (1, 0)
        );
        // The next call starts at the next controller.
        assert_eq!(restart(&failover, &broken).await.unwrap(), 200);
        assert_eq!(alive_hits.load(Ordering::SeqCst), 1);
        // Refused (never sent) or 503 (not processed): a POST moves on.
        let (busy, busy_hits) = counting(503).await;
        let (other, other_hits) = counting(200).await;
        let failover = Failover::new(&[refusing().await, busy.clone(), other.clone()], None);
        assert_eq!(restart(&failover, &busy).await.unwrap(), 200);
        assert_eq!(
            (
                busy_hits.load(Ordering::SeqCst),
                other_hits.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn both_down_fails_naming_both_controllers() {
        let (a, b) = (refusing().await, refusing().await);
        let failover = Failover::new(&[a.clone(), b.clone()], None);
        let err = info(&failover, &a).await.unwrap_err();
        assert!(err.starts_with("no cloud controller answered"), "{err}");
        assert!(err.contains(&a) && err.contains(&b), "{err}");
        assert_eq!(failover.failovers(), 0);
    }

    #[tokio::test]
    async fn a_caller_timeout_mid_attempt_moves_the_next_call_on() {
        // A controller that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hung = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let alive = controller("b", 200).await;
        let failover = Failover::new(&[hung.clone(), alive.clone()], None);
        let cut = tokio::time::timeout(Duration::from_millis(300), info(&failover, &hung)).await;
        assert!(cut.is_err(), "the hung controller answered");
        assert_eq!(failover.current(), alive);
        assert_eq!(info(&failover, &hung).await.unwrap().0, 200);
        assert_eq!(failover.failovers(), 1);
    }

    #[tokio::test]
    async fn a_url_naming_no_controller_is_sent_as_it_is() {
        let other = controller("x", 200).await;
        let failover = Failover::new(&[refusing().await, refusing().await], None);
        let (status, body) = info(&failover, &other).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "{\"name\":\"x\"}"));
    }
}
