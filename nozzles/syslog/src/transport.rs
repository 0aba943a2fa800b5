//! `syslog://` over TCP: octet-counted frames written to one drain, and the sender loop that
//! feeds it from the drain's queue.
//!
//! Flow: [`DestinationQueue`] of encoded frames → [`run_sender`] (batch, retry with backoff,
//! circuit breaker) → [`TcpSender`] (lazy connect, buffered writes with a deadline).
//!
//! Invariants: a write that fails or passes its deadline closes the connection (a half-written
//! frame must never be followed by another on the same stream, or the receiver would lose its
//! framing); a batch is retried whole, so after a reconnect a drain may see a line twice but
//! never a torn one; errors name the drain by its masked URL only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydrant_nozzle_core::{Backoff, CircuitBreaker, DestinationQueue, NozzleMetrics, mask_url};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The `host:port` of a `syslog://host:port` URL (credentials, path and query ignored).
///
/// # Errors
/// [`Error::Config`] (field `field`) for another scheme, a missing host or a bad port; the
/// message shows the URL masked.
pub fn parse_syslog_url(field: &str, url: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::Config {
        field: field.to_owned(),
        message: format!(
            "{} {why}; write it as \"syslog://HOST:PORT\"",
            mask_url(url)
        ),
    };
    let Some(rest) = url.strip_prefix("syslog://") else {
        return Err(bad(
            "is not a syslog:// URL (syslog-tls:// and https:// are not supported yet)",
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err(bad("has no port"));
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(host_port.to_owned()),
        _ => Err(bad("has an invalid port")),
    }
}

/// One TCP connection to a drain, opened on first use and again after any failure.
#[derive(Debug)]
pub struct TcpSender {
    addr: String,
    masked: String,
    timeout: Duration,
    stream: Option<BufWriter<TcpStream>>,
}

impl TcpSender {
    /// A sender for `addr` (`host:port`); `url` is only used, masked, in errors.
    #[must_use]
    pub fn new(addr: String, url: &str, timeout: Duration) -> Self {
        Self {
            addr,
            masked: mask_url(url),
            timeout,
            stream: None,
        }
    }

    /// Writes every frame and flushes, connecting first if needed.
    ///
    /// # Errors
    /// [`Error::Drain`] on a failed connect, write or deadline; the connection is closed.
    pub async fn send(&mut self, frames: &[Bytes]) -> Result<(), Error> {
        let result = tokio::time::timeout(self.timeout, self.write_all(frames)).await;
        let err = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "write deadline passed"),
        };
        self.stream = None;
        Err(Error::Drain {
            url: self.masked.clone(),
            source: err,
        })
    }

    async fn write_all(&mut self, frames: &[Bytes]) -> std::io::Result<()> {
        if self.stream.is_none() {
            let tcp = TcpStream::connect(&self.addr).await?;
            tcp.set_nodelay(true)?;
            self.stream = Some(BufWriter::with_capacity(64 * 1024, tcp));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        for frame in frames {
            stream.write_all(frame).await?;
        }
        stream.flush().await
    }
}

/// Takes batches from `queue` and sends them until the queue is closed and empty (or
/// `shutdown` is cancelled while the breaker holds a batch back).
///
/// A failed batch is retried `backoff.max_retries` times with backoff, then dropped
/// (`retries_exhausted`); while the breaker is open no attempt is made, so the queue absorbs
/// the outage and counts what it has to evict.
pub async fn run_sender(
    queue: Arc<DestinationQueue<Bytes>>,
    mut sender: TcpSender,
    backoff: Backoff,
    mut breaker: CircuitBreaker,
    metrics: NozzleMetrics,
    shutdown: CancellationToken,
) {
    while let Some(batch) = queue.next_batch().await {
        let mut attempt = 0u32;
        loop {
            let wait = breaker.wait();
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => {
                        metrics.dropped("shutdown", batch.len() as u64);
                        break;
                    }
                }
            }
            match sender.send(&batch).await {
                Ok(()) => {
                    breaker.record_success();
                    metrics.sent(batch.len() as u64);
                    break;
                }
                Err(e) => {
                    breaker.record_failure();
                    if attempt >= backoff.max_retries || shutdown.is_cancelled() {
                        tracing::warn!(error = %e, lost = batch.len(), "dropping a batch");
                        metrics.dropped("retries_exhausted", batch.len() as u64);
                        break;
                    }
                    tracing::debug!(error = %e, attempt, "retrying a batch");
                    metrics.retry();
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_syslog_url;

    #[test]
    fn parses_and_rejects_urls_without_leaking_credentials() {
        assert_eq!(
            parse_syslog_url("drains[0]", "syslog://u:p@127.0.0.1:514").unwrap(),
            "127.0.0.1:514"
        );
        assert_eq!(
            parse_syslog_url("drains[0]", "syslog://logs.example.com:6514/?x=1").unwrap(),
            "logs.example.com:6514"
        );
        for bad in [
            "syslog-udp://h:1",
            "syslog://u:secret@h",
            "syslog://u:secret@h:0",
            "syslog://:514",
        ] {
            let e = parse_syslog_url("drains[1]", bad).unwrap_err().to_string();
            assert!(e.contains("drains[1]") && !e.contains("secret"), "{e}");
        }
    }
}
