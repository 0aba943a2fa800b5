//! Recent envelopes from the edge's log cache read API:
//! `GET /api/v1/read/{source_id}?start_time=&end_time=&envelope_types=&limit=&descending=`.
//!
//! Sits beside the stream: `hydrant logs --recent`, the console's first screen and follow mode
//! read history here, then live data from the WebSocket.
//!
//! Invariant: the response is bounded (`max_response_bytes`, `request_timeout_ms`) and every
//! failure is an [`Error`] a person can act on (401: log in again; 404: no such app or not
//! yours; 429: the limit was halved and retried, as `cf logs --recent` does).

use hydrant_envelope::v2;
use hydrant_envelope::wire::Kind;
use prost::Message as _;

use crate::config::percent_encode;
use crate::render::escape_text;
use crate::{ClientConfig, Error};

/// Log Cache's maximum `limit`.
pub const MAX_RECENT_LIMIT: u32 = 1000;

/// How many times a 429 halves the limit before giving up.
const TOO_MANY_RETRIES: u32 = 4;

/// What to read. The default asks for whatever the server's defaults are (100 envelopes of any
/// type, oldest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentQuery {
    /// Inclusive start, UNIX ns (server default: the oldest envelope it holds).
    pub start_time: Option<i64>,
    /// Exclusive end, UNIX ns (server default: now).
    pub end_time: Option<i64>,
    /// Types to return; empty means any. [`Kind::None`] is ignored.
    pub envelope_types: Vec<Kind>,
    /// At most this many (server default 100, max [`MAX_RECENT_LIMIT`]).
    pub limit: Option<u32>,
    /// Newest first (with `limit`, this picks the newest N).
    pub descending: bool,
}

impl RecentQuery {
    /// The newest `limit` log lines, newest first: what `cf logs --recent` asks for.
    #[must_use]
    pub fn logs(limit: u32) -> Self {
        Self {
            envelope_types: vec![Kind::Log],
            limit: Some(limit.min(MAX_RECENT_LIMIT)),
            descending: true,
            ..Self::default()
        }
    }

    fn query_string(&self, limit: Option<u32>) -> String {
        let mut params: Vec<String> = Vec::new();
        if let Some(t) = self.start_time {
            params.push(format!("start_time={t}"));
        }
        if let Some(t) = self.end_time {
            params.push(format!("end_time={t}"));
        }
        for kind in &self.envelope_types {
            if *kind != Kind::None {
                params.push(format!("envelope_types={}", kind.as_str()));
            }
        }
        if let Some(limit) = limit {
            params.push(format!("limit={limit}"));
        }
        if self.descending {
            params.push("descending=true".to_owned());
        }
        if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        }
    }
}

/// Reads recent envelopes of `source_id`, in the order the server returns them (oldest first
/// unless `query.descending`).
///
/// # Errors
/// [`Error::Unauthorized`] (401), [`Error::NotFound`] (404), [`Error::Forbidden`] (403),
/// [`Error::Status`] for other statuses, [`Error::Timeout`], [`Error::Connect`], and
/// [`Error::Protocol`] when the body is not the documented JSON.
pub async fn recent(
    config: &ClientConfig,
    source_id: &str,
    query: &RecentQuery,
) -> Result<Vec<v2::Envelope>, Error> {
    config.validate()?;
    let endpoint = config.endpoint()?;
    let token = match config.credentials()? {
        Some(source) => source.token(false).await.map_err(|e| match e {
            crate::TokenError::Refused(reason) | crate::TokenError::Unavailable(reason) => {
                Error::TokenRenewal(crate::render::escape_text(&reason))
            }
        })?,
        None => config.token.clone(),
    };
    let mut limit = query.limit;
    let mut retries = 0;
    loop {
        let path = format!(
            "/api/v1/read/{}{}",
            percent_encode(source_id),
            query.query_string(limit)
        );
        let read = crate::http::get(&endpoint, &path, ACCEPT, &token, config.max_response_bytes);
        let response = tokio::time::timeout(config.request_timeout(), read)
            .await
            .map_err(|_| Error::Timeout {
                what: "the recent-logs read",
                after_ms: config.request_timeout_ms,
            })??;
        let what = || format!("app {source_id:?}");
        match response.status {
            200 => return decode(&response),
            401 => return Err(Error::Unauthorized),
            403 => return Err(Error::Forbidden { what: what() }),
            404 => return Err(Error::NotFound { what: what() }),
            429 if retries < TOO_MANY_RETRIES => {
                // The server found the answer too big: ask for half as much, as cf does.
                let current = limit.unwrap_or(100);
                if current <= 1 {
                    return Err(too_many(&response.body));
                }
                limit = Some(current / 2);
                retries += 1;
            }
            429 => return Err(too_many(&response.body)),
            status => {
                return Err(Error::Status {
                    what: "the recent-logs API",
                    status,
                    body: body_excerpt(&response.body),
                });
            }
        }
    }
}

/// What the client asks the read API for: the binary batch first (no JSON on the way), Log
/// Cache's JSON from an edge or log cache that only speaks that.
const ACCEPT: &str = "application/x-protobuf, application/json;q=0.5";

/// The envelopes of a 200 answer, binary or JSON as its `Content-Type` says.
fn decode(response: &crate::http::Response) -> Result<Vec<v2::Envelope>, Error> {
    let protocol = |reason: String| Error::Protocol {
        what: "the recent-logs API",
        reason,
    };
    let binary = response
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/x-protobuf"));
    if binary {
        return v2::EnvelopeBatch::decode(&response.body[..])
            .map(|b| b.batch)
            .map_err(|e| protocol(format!("the binary batch does not decode: {e}")));
    }
    hydrant_envelope::json::read_response(&response.body).map_err(protocol)
}

fn too_many(body: &[u8]) -> Error {
    Error::Status {
        what: "the recent-logs API",
        status: 429,
        body: body_excerpt(body),
    }
}

/// The start of an error body, made safe for a terminal.
fn body_excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(200)];
    escape_text(String::from_utf8_lossy(cut).trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        assert_eq!(RecentQuery::default().query_string(None), "");
        let q = RecentQuery {
            start_time: Some(-5),
            end_time: Some(10),
            envelope_types: vec![Kind::Log, Kind::None, Kind::Gauge],
            limit: Some(7),
            descending: true,
        };
        assert_eq!(
            q.query_string(q.limit),
            "?start_time=-5&end_time=10&envelope_types=LOG&envelope_types=GAUGE&limit=7&descending=true"
        );
        assert_eq!(RecentQuery::logs(5000).limit, Some(MAX_RECENT_LIMIT));
    }
}
