//! Delivering one request to Datadog: POST, classify the answer, retry what may succeed later,
//! count what never will.
//!
//! Flow: outbox (metrics) or log queue → [`deliver`] → [`HttpClient::post`].
//!
//! Policy, after Datadog's documented answers: 2xx is accepted; 408, 429, 5xx and transport
//! failures are retried with capped jittered backoff, waiting at least what `Retry-After` /
//! `X-RateLimit-Reset` asks (up to `max_retry_after`); 400, 401, 403, 413 and the other 4xx
//! are never retried — the same body would be refused again — and their values are counted as
//! dropped with a reason naming the status. 5xx and transport failures feed the endpoint's
//! circuit breaker; a 429 does not (the endpoint is up, it is pacing us).
//!
//! Invariant: every value handed to [`deliver`] ends as `sent` or as `dropped{reason}`, exactly
//! once.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use hydrant_nozzle_core::{Backoff, CircuitBreaker, NozzleMetrics};
use tokio_util::sync::CancellationToken;

use crate::http::HttpClient;
use crate::series::Payload;
use crate::{ApiKey, Error};

/// One endpoint: its connection, path and the headers every request carries.
#[derive(Debug)]
pub struct Endpoint {
    client: HttpClient,
    path: &'static str,
    api_key: HeaderValue,
}

impl Endpoint {
    /// An endpoint at `path` of `client`'s target, authenticating with `key`.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) when the key cannot be a header value (checked when it was
    /// read, so this does not happen in practice).
    pub fn new(client: HttpClient, path: &'static str, key: &ApiKey) -> Result<Self, Error> {
        let mut api_key = HeaderValue::from_str(key.expose())
            .map_err(|_| Error::config("api_key_env", "the API key is not a valid header value"))?;
        // Keeps the value out of hyper's debug output and marks it for HPACK never-indexing.
        api_key.set_sensitive(true);
        Ok(Self {
            client,
            path,
            api_key,
        })
    }

    /// The endpoint's URL (no credentials in it).
    #[must_use]
    pub fn url(&self) -> String {
        self.client.target().url(self.path)
    }
}

/// Retry policy of a sender.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Backoff between attempts and how many retries.
    pub backoff: Backoff,
    /// Longest server-requested wait honoured.
    pub max_retry_after: Duration,
}

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Datadog took it.
    Accepted,
    /// Try again later, at least `after` if the server said so.
    Retry {
        /// The server's requested wait.
        after: Option<Duration>,
        /// Whether this counts against the endpoint's breaker.
        breaker_failure: bool,
    },
    /// Never send this body again; count its values under `reason`.
    Rejected {
        /// The drop reason.
        reason: &'static str,
    },
}

/// Classifies an HTTP status the way Datadog documents its answers.
#[must_use]
pub fn classify(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Accepted,
        429 => Outcome::Retry {
            after: retry_after,
            breaker_failure: false,
        },
        408 | 500..=599 => Outcome::Retry {
            after: retry_after,
            breaker_failure: true,
        },
        400 => Outcome::Rejected {
            reason: "rejected_400",
        },
        401 | 403 => Outcome::Rejected {
            reason: "rejected_403",
        },
        413 => Outcome::Rejected {
            reason: "rejected_413",
        },
        _ => Outcome::Rejected {
            reason: "rejected_other",
        },
    }
}

/// Sends `payload` until it is accepted, rejected, out of retries or `shutdown` interrupts a
/// wait; counts its values as sent or dropped accordingly.
pub async fn deliver(
    endpoint: &mut Endpoint,
    payload: &Payload,
    policy: &RetryPolicy,
    breaker: &mut CircuitBreaker,
    metrics: &NozzleMetrics,
    shutdown: &CancellationToken,
) {
    let headers = [
        (endpoint_key_header(), endpoint.api_key.clone()),
        (
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static(payload.compression.header()),
        ),
    ];
    let mut attempt = 0u32;
    loop {
        if !breaker.ready(shutdown).await {
            metrics.dropped("shutdown", payload.values);
            return;
        }
        let (outcome, detail) = match endpoint
            .client
            .post(endpoint.path, &headers, payload.body.clone())
            .await
        {
            Ok(r) => (
                classify(r.status, r.retry_after),
                format!("HTTP {} {:?}", r.status, r.body),
            ),
            Err(e) => (
                Outcome::Retry {
                    after: None,
                    breaker_failure: true,
                },
                e.to_string(),
            ),
        };
        let after = match outcome {
            Outcome::Accepted => {
                breaker.record_success();
                metrics.sent(payload.values);
                return;
            }
            Outcome::Rejected { reason } => {
                // The endpoint answered, so it is up.
                breaker.record_success();
                if reason == "rejected_403" {
                    tracing::error!(
                        url = %endpoint.url(),
                        %detail,
                        "Datadog refused the API key; check api_key_env / api_key_file"
                    );
                } else {
                    tracing::warn!(
                        url = %endpoint.url(),
                        %detail,
                        lost = payload.values,
                        "Datadog rejected a request; it is not retried"
                    );
                }
                metrics.dropped(reason, payload.values);
                return;
            }
            Outcome::Retry {
                after,
                breaker_failure,
            } => {
                if breaker_failure {
                    breaker.record_failure();
                }
                after
            }
        };
        if attempt >= policy.backoff.max_retries || shutdown.is_cancelled() {
            tracing::warn!(
                url = %endpoint.url(),
                %detail,
                lost = payload.values,
                "dropping a request after its last retry"
            );
            metrics.dropped("retries_exhausted", payload.values);
            return;
        }
        let delay = policy
            .backoff
            .delay(attempt)
            .max(after.unwrap_or_default().min(policy.max_retry_after));
        tracing::debug!(url = %endpoint.url(), %detail, attempt, ?delay, "retrying a request");
        metrics.retry();
        attempt += 1;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => {
                metrics.dropped("shutdown", payload.values);
                return;
            }
        }
    }
}

fn endpoint_key_header() -> HeaderName {
    HeaderName::from_static("dd-api-key")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Outcome, classify};

    #[test]
    fn retries_what_can_succeed_and_rejects_the_rest() {
        assert_eq!(classify(202, None), Outcome::Accepted);
        let wait = Some(Duration::from_secs(2));
        assert_eq!(
            classify(429, wait),
            Outcome::Retry {
                after: wait,
                breaker_failure: false
            }
        );
        for s in [408, 500, 502, 503] {
            assert!(
                matches!(
                    classify(s, None),
                    Outcome::Retry {
                        breaker_failure: true,
                        ..
                    }
                ),
                "{s}"
            );
        }
        for (s, reason) in [
            (400, "rejected_400"),
            (403, "rejected_403"),
            (413, "rejected_413"),
            (404, "rejected_other"),
        ] {
            assert_eq!(classify(s, None), Outcome::Rejected { reason }, "{s}");
        }
    }
}
