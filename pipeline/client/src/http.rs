//! One HTTP GET to the edge's read API, for recent logs, through `reqwest`: the workspace's one
//! HTTP client stack (the CLI, the API client and the nozzles use it too).
//!
//! A fresh client per request, without a pool: recent reads are rare (once per `hydrant logs`),
//! so keeping connections buys nothing. Proxies from the environment are not used: the edge is
//! the platform's own endpoint, as it is for the WebSocket streams.
//!
//! Invariant: the body read is capped at `max_body` bytes (a misbehaving or hostile server
//! cannot make the client allocate without bound): chunks are taken one by one and the read
//! stops as soon as the cap would be passed.

use bytes::{Bytes, BytesMut};

use crate::Error;
use crate::config::Endpoint;

/// A response with its whole body.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    /// The `Content-Type`, when it was readable text.
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// GETs `path_and_query` (already percent-encoded) under the endpoint's prefix, asking for
/// `accept`.
pub(crate) async fn get(
    endpoint: &Endpoint,
    path_and_query: &str,
    accept: &str,
    token: &str,
    max_body: usize,
) -> Result<Response, Error> {
    let url = endpoint.http_url(path_and_query);
    let connect_error = |reason: String| Error::Connect {
        url: url.clone(),
        reason,
    };
    if endpoint.tls {
        // The workspace's reqwest is built without TLS; streams over wss:// do not need it.
        return Err(connect_error(
            "recent reads over https:// are not supported by this client yet; the live stream \
             (wss://) is, or read recent logs over http:// on a trusted network"
                .to_owned(),
        ));
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| connect_error(e.to_string()))?;
    let mut request = client
        .get(&url)
        .header(http::header::ACCEPT, accept)
        .header(http::header::CONNECTION, "close");
    if !token.is_empty() {
        let value =
            http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| Error::Config {
                field: "token",
                message: format!("cannot be sent in an HTTP header ({e}); paste the token again"),
            })?;
        request = request.header(http::header::AUTHORIZATION, value);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| connect_error(format!("reading the response failed: {e}")))?
    {
        if body.len() + chunk.len() > max_body {
            return Err(Error::Protocol {
                what: "the recent-logs API",
                reason: format!(
                    "response is larger than max_response_bytes ({max_body}); ask for fewer \
                     envelopes with a lower limit"
                ),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        content_type,
        body: body.freeze(),
    })
}
