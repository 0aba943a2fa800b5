//! `https://` drains: each batch is one POST whose body is the batch's RFC 5424 messages, each
//! ending in a newline, as Cloud Foundry's syslog agent sends `https-batch` drains.
//!
//! Flow: the drain's queue (octet-counted frames) → sender loop → [`HttpsSender::send`]
//! (frames unwrapped into newline-terminated lines) → one kept-alive HTTP/1.1 connection over
//! TLS (verified as for `syslog-tls://`) opened through the [`Dialer`].
//!
//! Invariants: only 2xx counts as delivered; 429 and 5xx are retried with the batch whole;
//! other answers are refused batches that are dropped and counted, never retried; the drain's
//! answer body is read only up to a small bound (a drain cannot make the nozzle allocate
//! without limit); URL credentials travel only in the `Authorization` header, never in an
//! error or a log line.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;

use crate::dial::Dialer;
use crate::transport::{DrainTls, Payload, dial_error};
use crate::{DrainUrl, Error};

/// The most of a drain's answer body read before the connection is given up.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One `https://` drain.
#[derive(Debug)]
pub struct HttpsSender {
    host: String,
    port: u16,
    path: String,
    host_header: HeaderValue,
    authorization: Option<HeaderValue>,
    dialer: Dialer,
    tls: DrainTls,
    masked: String,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl HttpsSender {
    /// A sender for the `https://` drain `url`.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) when the host cannot be checked against a certificate or
    /// the URL cannot be written into a request.
    pub fn for_url(
        url: &DrainUrl,
        raw_url: &str,
        dialer: Dialer,
        tls: &Arc<ClientConfig>,
        insecure: bool,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let masked = hydrant_nozzle_core::mask_url(raw_url);
        let bad = |message: String| Error::config(masked.clone(), message);
        let tls = DrainTls::new(&url.host, tls, insecure, &masked)?;
        let host = if url.port == 443 {
            url.authority().trim_end_matches(":443").to_owned()
        } else {
            url.authority()
        };
        let host_header = HeaderValue::from_str(&host)
            .map_err(|_| bad("the host cannot go into a Host header".to_owned()))?;
        let authorization = match &url.userinfo {
            Some(info) => {
                let info = if info.contains(':') {
                    info.clone()
                } else {
                    format!("{info}:")
                };
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(info)
                );
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|_| bad("the credentials cannot go into a header".to_owned()))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            host: url.host.clone(),
            port: url.port,
            path: url.path_and_query.clone(),
            host_header,
            authorization,
            dialer,
            tls,
            masked,
            timeout,
            conn: None,
        })
    }

    /// POSTs the batch as newline-terminated lines.
    ///
    /// # Errors
    /// [`Error::Http`] for 429/5xx (retry), [`Error::Rejected`] for other non-2xx answers,
    /// [`Error::Refused`], [`Error::Tls`] or [`Error::Drain`] when the request did not get
    /// through; the connection is closed on every error.
    pub async fn send<P: Payload>(&mut self, batch: &[P]) -> Result<(), Error> {
        let body = lines(batch);
        let result = tokio::time::timeout(self.timeout, self.post(body)).await;
        let err = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => Error::Drain {
                url: self.masked.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} ms", self.timeout.as_millis()),
                ),
            },
        };
        self.conn = None;
        Err(err)
    }

    async fn post(&mut self, body: Bytes) -> Result<(), Error> {
        if self.conn.as_ref().is_some_and(SendRequest::is_closed) {
            self.conn = None;
        }
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => self.conn.insert(self.connect().await?),
        };
        let io = |e: hyper::Error| Error::Drain {
            url: self.masked.clone(),
            source: std::io::Error::other(e),
        };
        conn.ready().await.map_err(io)?;
        let mut request = Request::post(self.path.as_str())
            .header(HOST, self.host_header.clone())
            .header(CONTENT_TYPE, "text/plain")
            .header(USER_AGENT, "hydrant-nozzle-syslog");
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request.body(Full::new(body)).map_err(|e| Error::Drain {
            url: self.masked.clone(),
            source: std::io::Error::other(e),
        })?;
        let answer = conn.send_request(request).await.map_err(io)?;
        let status = answer.status();
        // Read the (small) answer so the connection can carry the next batch.
        if Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .is_err()
        {
            self.conn = None;
        }
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        if code == 429 || status.is_server_error() {
            Err(Error::Http {
                url: self.masked.clone(),
                status: code,
            })
        } else {
            Err(Error::Rejected {
                url: self.masked.clone(),
                status: code,
            })
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Error> {
        let tcp = self
            .dialer
            .connect(&self.host, self.port)
            .await
            .map_err(|e| dial_error(e, &self.masked))?;
        let stream = self.tls.handshake(tcp, &self.host, &self.masked).await?;
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Error::Drain {
                    url: self.masked.clone(),
                    source: std::io::Error::other(e),
                })?;
        // The connection task ends when the sender is dropped or the drain hangs up.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "https drain connection ended");
            }
        });
        Ok(sender)
    }
}

/// The batch's messages without their octet counts, each already ending in `\n`.
fn lines<P: Payload>(batch: &[P]) -> Bytes {
    let total: usize = batch.iter().map(|p| p.frames().len()).sum();
    let mut body = BytesMut::with_capacity(total);
    for item in batch {
        let mut rest = &item.frames()[..];
        while let Some(space) = rest.iter().position(|&b| b == b' ') {
            let len = std::str::from_utf8(&rest[..space])
                .ok()
                .and_then(|s| s.parse::<usize>().ok());
            let Some(len) = len.filter(|&n| n < rest.len() - space) else {
                break;
            };
            body.extend_from_slice(&rest[space + 1..space + 1 + len]);
            rest = &rest[space + 1 + len..];
        }
    }
    body.freeze()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::lines;

    #[test]
    fn unwraps_octet_counted_frames_into_lines() {
        let batch = [
            Bytes::from_static(b"4 one\n6 two 2\n"),
            Bytes::from_static(b"6 three\n"),
        ];
        assert_eq!(&lines(&batch)[..], b"one\ntwo 2\nthree\n");
        // A corrupt count stops at the frame instead of reading past it.
        assert_eq!(&lines(&[Bytes::from_static(b"99 x\n")])[..], b"");
    }
}
