//! One HTTP/1.1 GET to the edge's read API, for recent logs.
//!
//! A fresh connection per request: recent reads are rare (once per `hydrant logs`), so pooling
//! buys nothing and a lean client keeps the CLI small.
//!
//! Invariant: the body read is capped at `max_body` bytes (a misbehaving or hostile server
//! cannot make the client allocate without bound).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    let tcp = TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    // The connection task ends by itself once the response is read and the sender dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::get(format!("{}{}", endpoint.prefix, path_and_query))
        .header(http::header::HOST, &endpoint.authority)
        .header(http::header::ACCEPT, accept)
        .header(http::header::CONNECTION, "close");
    if !token.is_empty() {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| Error::Config {
            field: "token",
            message: format!("cannot be sent in an HTTP header ({e}); paste the token again"),
        })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::Protocol {
                    what: "the recent-logs API",
                    reason: format!(
                        "response is larger than max_response_bytes ({max_body}); ask for fewer \
                         envelopes with a lower limit"
                    ),
                }
            } else {
                connect_error(format!("reading the response failed: {e}"))
            }
        })?
        .to_bytes();
    Ok(Response {
        status,
        content_type,
        body,
    })
}
