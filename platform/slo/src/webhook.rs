//! Webhook delivery: alert notices POSTed as JSON, retried with capped exponential backoff and
//! jitter, off the evaluation path.
//!
//! Flow: the evaluation loop → [`Webhooks::send`] (never waits: a full queue drops the notice
//! and counts it) → one dispatcher task → up to `concurrency` delivery tasks, each retrying
//! its POST until it succeeds, gets a final refusal, runs out of attempts or shutdown comes.
//!
//! Invariants: the queue is bounded and every notice ends delivered or counted as dropped by
//! reason; a webhook URL is never logged whole (it may carry credentials in its user info,
//! path or query) — only its scheme and host appear, via [`redact`].
//!
//! A webhook URL is written by a developer, so delivery follows the platform's outbound
//! policy (`hydrant_api::drain::Outbound`, the one syslog drains use): loopback, private and
//! link-local destinations are refused — IP literals before connecting, names on what DNS
//! answered, and the POST goes only to an address that passed — unless the operator set
//! `webhook.allow_private`; redirects are followed only within the same scheme, host and
//! port (at most [`MAX_REDIRECTS`]); no proxy from the environment is used; every POST has a
//! deadline; and the response body is never read, so its size costs nothing. A refused
//! notice is not retried and is counted as `slo.dropped{reason="webhook_refused"}`.

use std::sync::Arc;
use std::time::Duration;

use hydrant_api::drain::{Outbound, OutboundRefused};
use hydrant_emitter::{Counter, Registry};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::WebhookConfig;

/// The scheme and host of `url`, without user info, path or query: what may be logged.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}/…")
}

/// Redirects one delivery follows, all within the webhook's own host.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone)]
struct Metrics {
    delivered: Counter,
    retried: Counter,
    queue_full: Counter,
    gave_up: Counter,
    refused: Counter,
}

/// A redirect to another scheme, host or port: refused, whatever the address.
#[derive(Debug, thiserror::Error)]
#[error(
    "the webhook redirected to another host ({to}); webhooks may redirect within their host only"
)]
struct CrossHostRedirect {
    /// Scheme and host of the target, never its path or credentials.
    to: String,
}

/// More redirects than [`MAX_REDIRECTS`].
#[derive(Debug, thiserror::Error)]
#[error("the webhook redirected more than {MAX_REDIRECTS} times")]
struct TooManyRedirects;

/// Resolves webhook hosts and hands the connector only the addresses the policy allows.
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

/// Follows a redirect only to the same scheme, host and port as the webhook itself.
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let next = attempt.url();
        let same = attempt.previous().first().is_some_and(|first| {
            first.scheme() == next.scheme()
                && first.host_str() == next.host_str()
                && first.port_or_known_default() == next.port_or_known_default()
        });
        if !same {
            let to = redact(next.as_str());
            attempt.error(CrossHostRedirect { to })
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(TooManyRedirects)
        } else {
            attempt.follow()
        }
    })
}

/// The HTTP client every delivery uses, with the outbound policy built in.
fn client(config: &WebhookConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .connect_timeout(Duration::from_millis(config.timeout_ms))
        .redirect(same_host_redirects())
        .dns_resolver(Vetted(Outbound {
            allow_private: config.allow_private,
        }))
        .no_proxy()
        .build()
}

/// Whether `e` is the outbound policy refusing the destination (not worth a retry).
fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(error) = cause {
        if error.is::<OutboundRefused>()
            || error.is::<CrossHostRedirect>()
            || error.is::<TooManyRedirects>()
        {
            return true;
        }
        cause = error.source();
    }
    false
}

struct Delivery {
    url: String,
    body: Vec<u8>,
}

/// The sending side of webhook delivery; cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<Delivery>,
    metrics: Metrics,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("url", &redact(&self.url))
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts the dispatcher; it stops at `shutdown`, abandoning what is still queued.
    #[must_use]
    pub fn spawn(config: &WebhookConfig, registry: &Registry, shutdown: CancellationToken) -> Self {
        let dropped = |reason: &str| {
            registry.counter(
                "slo.dropped",
                "Notices and records the SLO alerter did not keep, by reason",
                &[("reason", reason)],
            )
        };
        let metrics = Metrics {
            delivered: registry.counter("slo.webhook_delivered", "Webhook POSTs accepted", &[]),
            retried: registry.counter(
                "slo.webhook_retries",
                "Webhook POSTs tried again after a failure",
                &[],
            ),
            queue_full: dropped("webhook_queue_full"),
            gave_up: dropped("webhook_gave_up"),
            refused: dropped("webhook_refused"),
        };
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        // A client without the policy would be worse than none: without one, every notice
        // is dropped and counted.
        let http = client(config)
            .inspect_err(|e| tracing::error!(error = %e, "webhooks disabled: no HTTP client"))
            .ok();
        tokio::spawn(dispatch(
            rx,
            config.clone(),
            http,
            metrics.clone(),
            shutdown,
        ));
        Self { tx, metrics }
    }

    /// Queues `body` for `url`; a full queue drops it (counted), never waits.
    pub fn send(&self, url: &str, body: Vec<u8>) {
        let delivery = Delivery {
            url: url.to_owned(),
            body,
        };
        if self.tx.try_send(delivery).is_err() {
            self.metrics.queue_full.inc();
            tracing::warn!(webhook = %redact(url), "webhook queue full; notice dropped");
        }
    }
}

async fn dispatch(
    mut rx: mpsc::Receiver<Delivery>,
    config: WebhookConfig,
    http: Option<reqwest::Client>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => return,
            d = rx.recv() => d,
        };
        let Some(delivery) = delivery else { return };
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = Arc::clone(&permits).acquire_owned() => p,
        };
        let Ok(permit) = permit else { return };
        let (config, http, metrics, shutdown) = (
            config.clone(),
            http.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let Some(http) = http else {
                metrics.gave_up.inc();
                return;
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = deliver(&delivery, &config, &http, &metrics) => {}
            }
        });
    }
}

/// The delay before retry number `attempt` (1-based): doubling from the initial delay, capped,
/// then jittered down by up to half so that many alerters do not retry in step.
#[must_use]
pub fn backoff(config: &WebhookConfig, attempt: u32) -> Duration {
    hydrant_runtime::Backoff::from_ms(config.initial_backoff_ms, config.max_backoff_ms, 0.5)
        .delay(attempt.saturating_sub(1))
}

async fn deliver(d: &Delivery, config: &WebhookConfig, http: &reqwest::Client, m: &Metrics) {
    let policy = Outbound {
        allow_private: config.allow_private,
    };
    // An IP literal is never resolved, so the resolver cannot judge it: judge it here.
    let literal = reqwest::Url::parse(&d.url)
        .ok()
        .and_then(|url| url.host_str().and_then(|host| policy.refuses_literal(host)));
    if let Some(ip) = literal {
        m.refused.inc();
        tracing::warn!(webhook = %redact(&d.url), %ip,
            "webhook refused: a loopback, private or link-local address \
             (webhook.allow_private is off)");
        return;
    }
    for attempt in 1..=config.max_attempts {
        let result = http
            .post(&d.url)
            .header("content-type", "application/json")
            .body(d.body.clone())
            .send()
            .await;
        let retriable = match result {
            Ok(r) if r.status().is_success() => {
                m.delivered.inc();
                return;
            }
            Ok(r) => {
                let s = r.status();
                tracing::warn!(webhook = %redact(&d.url), status = s.as_u16(), attempt,
                    "webhook refused the notice");
                s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429
            }
            Err(e) if is_refusal(&e) => {
                m.refused.inc();
                tracing::warn!(webhook = %redact(&d.url),
                    "webhook refused: it resolves or redirects to a loopback, private or \
                     link-local address or to another host (webhook.allow_private is off, or \
                     the redirect left the webhook's host)");
                return;
            }
            Err(e) => {
                // reqwest's error text includes the URL; print only its kind.
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                tracing::warn!(webhook = %redact(&d.url), error = kind, attempt,
                    "webhook unreachable");
                true
            }
        };
        if !retriable || attempt == config.max_attempts {
            break;
        }
        m.retried.inc();
        tokio::time::sleep(backoff(config, attempt)).await;
    }
    m.gave_up.inc();
    tracing::warn!(webhook = %redact(&d.url), "webhook notice dropped after its attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(
            redact("https://user:s3cret@hooks.example.com:8443/t/0k3n?key=abc"),
            "https://hooks.example.com:8443/…"
        );
        assert_eq!(redact("http://h/x"), "http://h/…");
        assert_eq!(redact("garbage s3cret"), "(not a URL)");
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let c = WebhookConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..WebhookConfig::default()
        };
        for _ in 0..100 {
            let first = backoff(&c, 1).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff(&c, 3).as_millis();
            assert!((200..=400).contains(&third), "{third}");
            let late = backoff(&c, 40).as_millis();
            assert!((500..=1000).contains(&late), "{late}");
        }
    }
}
