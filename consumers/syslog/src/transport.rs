//! `syslog://` and `syslog-tls://`: octet-counted frames written to one drain over TCP or TLS,
//! and the sender loop that feeds any transport from the drain's queue.
//!
//! Flow: [`DestinationQueue`] of encoded frames → [`run_sender`] / the role's sender (batch,
//! retry with backoff, circuit breaker) → [`Link`]: a [`TcpSender`] (lazy connect through the
//! [`Dialer`], TLS on top for `syslog-tls://`, buffered writes with a deadline) or an
//! [`HttpsSender`].
//!
//! Invariants: a write that fails or passes its deadline closes the connection (a half-written
//! frame must never be followed by another on the same stream, or the receiver would lose its
//! framing); a connection the drain has closed is noticed before the next batch is written to
//! it, so a restarted drain does not silently swallow a batch; a batch is retried whole, so
//! after a reconnect a drain may see a line twice but never a torn one, and every message the
//! failed attempt had handed whole to the connection is counted as a possible duplicate
//! (`nozzle.duplicates_unsure`) before the retry; errors name the drain by its masked URL only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydrant_emitter::Registry;
use hydrant_nozzle_core::{Backoff, CircuitBreaker, DestinationQueue, NozzleMetrics, mask_url};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::dial::{DialError, Dialer};
use crate::drain::Tally;
use crate::https::HttpsSender;
use crate::{DrainUrl, Error, tls};

/// What a drain queue holds: encoded frames, and (when known) the app they came from so a
/// loss can be told to that app.
pub trait Payload: Send + Sync + 'static {
    /// The octet-counted frames of one envelope.
    fn frames(&self) -> &Bytes;
    /// The envelope's `source_id`, if the queue keeps it.
    fn source_id(&self) -> Option<&Arc<str>> {
        None
    }
}

impl Payload for Bytes {
    fn frames(&self) -> &Bytes {
        self
    }
}

/// The frames of one envelope and the app (`source_id`) they belong to.
#[derive(Debug, Clone)]
pub struct Frames {
    /// Octet-counted RFC 5424 frames.
    pub bytes: Bytes,
    /// The envelope's `source_id`.
    pub source_id: Arc<str>,
}

impl Payload for Frames {
    fn frames(&self) -> &Bytes {
        &self.bytes
    }

    fn source_id(&self) -> Option<&Arc<str>> {
        Some(&self.source_id)
    }
}

/// Write buffer kept between batches; a larger batch grows it for its own write only, so a
/// thousand quiet drains do not each hold a big buffer.
const KEEP_BUFFER: usize = 16 * 1024;

/// An open connection to a stream drain.
#[derive(Debug)]
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Writes `bytes` and pushes them out of every buffer on the way, keeping in `accepted`
    /// how many the connection took so far (read after a failure or a deadline: what the drain
    /// may have got). With TLS it counts plaintext taken into records, which may not all have
    /// left: an upper bound, as a possible duplicate count should be.
    async fn write(&mut self, bytes: &[u8], accepted: &mut usize) -> std::io::Result<()> {
        while let Some(rest) = bytes.get(*accepted..).filter(|r| !r.is_empty()) {
            let n = match self {
                Self::Plain(s) => s.write(rest).await?,
                Self::Tls(s) => s.write(rest).await?,
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            *accepted += n;
        }
        match self {
            Self::Plain(_) => Ok(()),
            Self::Tls(s) => s.flush().await,
        }
    }

    /// Whether the drain has closed its end. A syslog receiver never talks, so anything
    /// readable is either the end of the stream or TLS housekeeping (session tickets), which
    /// reading consumes. Reading never waits.
    async fn peer_closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        for _ in 0..16 {
            let read = match self {
                Self::Plain(s) => tokio::time::timeout(Duration::ZERO, s.read(&mut buf)).await,
                Self::Tls(s) => tokio::time::timeout(Duration::ZERO, s.read(&mut buf)).await,
            };
            match read {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
        false
    }
}

/// A drain's TLS (`syslog-tls://` and `https://`): the nozzle's client config and the name
/// the drain's certificate must carry.
#[derive(Debug, Clone)]
pub(crate) struct DrainTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    insecure: bool,
}

impl DrainTls {
    /// TLS to `host` with the nozzle's `config`; `insecure` when certificates are not checked.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) naming the drain by its masked URL when `host` cannot be
    /// checked against a certificate.
    pub(crate) fn new(
        host: &str,
        config: &Arc<ClientConfig>,
        insecure: bool,
        masked: &str,
    ) -> Result<Self, Error> {
        let name =
            tls::server_name(host).map_err(|message| Error::config(masked.to_owned(), message))?;
        Ok(Self {
            config: Arc::clone(config),
            name,
            insecure,
        })
    }

    /// The TLS handshake over a connection to `host`.
    ///
    /// # Errors
    /// [`Error::Tls`] for a refused certificate (in words), [`Error::Drain`] otherwise.
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
        masked: &str,
    ) -> Result<TlsStream<TcpStream>, Error> {
        if self.insecure {
            tracing::warn!(drain = %masked, "TLS certificate NOT verified (insecure_skip_verify)");
        }
        TlsConnector::from(Arc::clone(&self.config))
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| tls_error(e, host, masked))
    }
}

/// One TCP (or TLS) connection to a drain, opened on first use and again after any failure.
#[derive(Debug)]
pub struct TcpSender {
    host: String,
    port: u16,
    dialer: Dialer,
    tls: Option<DrainTls>,
    masked: String,
    timeout: Duration,
    conn: Option<Conn>,
    buffer: Vec<u8>,
    /// Bytes of the current batch the connection has taken.
    accepted: usize,
    /// Messages of failed attempts the drain may already hold (see [`Self::take_possibly_sent`]).
    possibly_sent: u64,
}

impl TcpSender {
    /// A plain `syslog://` sender for `addr` (`host:port`, any address allowed); `url` is only
    /// used, masked, in errors.
    #[must_use]
    pub fn new(addr: String, url: &str, timeout: Duration) -> Self {
        let (host, port) = split_addr(&addr);
        Self {
            host,
            port,
            dialer: Dialer {
                allow_private: true,
            },
            tls: None,
            masked: mask_url(url),
            timeout,
            conn: None,
            buffer: Vec::new(),
            accepted: 0,
            possibly_sent: 0,
        }
    }

    /// A sender for a `syslog://` or `syslog-tls://` drain; `tls` is the nozzle's client
    /// config, used when the scheme asks for TLS.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) when the host cannot be checked against a certificate.
    pub fn for_url(
        url: &DrainUrl,
        raw_url: &str,
        dialer: Dialer,
        tls: &Arc<ClientConfig>,
        insecure: bool,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let masked = mask_url(raw_url);
        let tls = if url.scheme.is_tls() {
            Some(DrainTls::new(&url.host, tls, insecure, &masked)?)
        } else {
            None
        };
        Ok(Self {
            host: url.host.clone(),
            port: url.port,
            dialer,
            tls,
            masked,
            timeout,
            conn: None,
            buffer: Vec::new(),
            accepted: 0,
            possibly_sent: 0,
        })
    }

    /// Writes every frame and flushes, connecting first if needed.
    ///
    /// # Errors
    /// [`Error::Refused`] for a private address that is not allowed, [`Error::Tls`] for a
    /// refused certificate, [`Error::Drain`] on a failed connect, write or deadline; the
    /// connection is closed.
    pub async fn send<P: Payload>(&mut self, frames: &[P]) -> Result<(), Error> {
        let result = tokio::time::timeout(self.timeout, self.write_all(frames)).await;
        let err = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => Error::Drain {
                url: self.masked.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no progress within {} ms (the drain accepts but does not read?)",
                        self.timeout.as_millis()
                    ),
                ),
            },
        };
        self.conn = None;
        self.possibly_sent = self
            .possibly_sent
            .saturating_add(whole_messages(frames, self.accepted));
        Err(err)
    }

    /// How many messages failed attempts had handed whole to the connection since the last
    /// call: the drain may hold them already, so writing the batch again may duplicate them.
    pub fn take_possibly_sent(&mut self) -> u64 {
        std::mem::take(&mut self.possibly_sent)
    }

    async fn write_all<P: Payload>(&mut self, frames: &[P]) -> Result<(), Error> {
        self.accepted = 0;
        if let Some(conn) = self.conn.as_mut()
            && conn.peer_closed().await
        {
            tracing::debug!(drain = %self.masked, "the drain closed the connection; reconnecting");
            self.conn = None;
        }
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => self.conn.insert(self.connect().await?),
        };
        // One write per batch: the frames are copied once into the buffer, as a buffered
        // writer would, and the syscalls stay few.
        self.buffer.clear();
        for frame in frames {
            self.buffer.extend_from_slice(frame.frames());
        }
        let written = conn.write(&self.buffer, &mut self.accepted).await;
        self.buffer.clear();
        self.buffer.shrink_to(KEEP_BUFFER);
        written.map_err(|source| Error::Drain {
            url: self.masked.clone(),
            source,
        })
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let tcp = self
            .dialer
            .connect(&self.host, self.port)
            .await
            .map_err(|e| dial_error(e, &self.masked))?;
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(tcp));
        };
        let stream = tls.handshake(tcp, &self.host, &self.masked).await?;
        Ok(Conn::Tls(Box::new(stream)))
    }
}

/// How many of `messages` (written back to back) have at least one frame wholly inside the
/// first `accepted` bytes: those the drain may have read, since a receiver of octet-counted
/// frames keeps every whole frame and drops only a torn one.
fn whole_messages<P: Payload>(messages: &[P], accepted: usize) -> u64 {
    let mut start = 0usize;
    let mut count = 0u64;
    for message in messages {
        let bytes = message.frames();
        if start >= accepted {
            break;
        }
        let first = first_frame_len(bytes).unwrap_or(bytes.len());
        if start.saturating_add(first) <= accepted {
            count += 1;
        }
        start = start.saturating_add(bytes.len());
    }
    count
}

/// The length of the first octet-counted frame (`LEN SP MSG`) in `bytes`, if it parses.
fn first_frame_len(bytes: &[u8]) -> Option<usize> {
    let space = bytes.iter().position(|b| *b == b' ')?;
    let len: usize = std::str::from_utf8(bytes.get(..space)?)
        .ok()?
        .parse()
        .ok()?;
    Some(space + 1 + len)
}

fn split_addr(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port.parse().unwrap_or(0),
        ),
        None => (addr.to_owned(), 0),
    }
}

/// A dial failure as the nozzle reports it.
pub(crate) fn dial_error(e: DialError, masked: &str) -> Error {
    match e {
        DialError::Refused { .. } => Error::Refused {
            url: masked.to_owned(),
            message: e.to_string(),
        },
        DialError::Io(source) => Error::Drain {
            url: masked.to_owned(),
            source,
        },
    }
}

/// A handshake failure as the nozzle reports it: certificate problems in words.
fn tls_error(e: std::io::Error, host: &str, masked: &str) -> Error {
    match tls::describe(&e, host) {
        Some(message) => Error::Tls {
            url: masked.to_owned(),
            message,
        },
        None => Error::Drain {
            url: masked.to_owned(),
            source: e,
        },
    }
}

/// How one drain is written to.
#[derive(Debug)]
pub enum Link {
    /// `syslog://` or `syslog-tls://`.
    Stream(TcpSender),
    /// `https://`.
    Https(HttpsSender),
}

impl From<TcpSender> for Link {
    fn from(s: TcpSender) -> Self {
        Self::Stream(s)
    }
}

impl From<HttpsSender> for Link {
    fn from(s: HttpsSender) -> Self {
        Self::Https(s)
    }
}

impl Link {
    /// Delivers one batch.
    ///
    /// # Errors
    /// As [`TcpSender::send`] and [`HttpsSender::send`].
    pub async fn send<P: Payload>(&mut self, batch: &[P]) -> Result<(), Error> {
        match self {
            Self::Stream(s) => s.send(batch).await,
            Self::Https(s) => s.send(batch).await,
        }
    }

    /// Messages failed attempts may have delivered already (see
    /// [`TcpSender::take_possibly_sent`]). Always 0 over HTTPS: a request that failed is
    /// answered for the whole batch.
    fn take_possibly_sent(&mut self) -> u64 {
        match self {
            Self::Stream(s) => s.take_possibly_sent(),
            Self::Https(_) => 0,
        }
    }
}

/// Takes batches from `queue` and sends them until the queue is closed and empty (or
/// `shutdown` is cancelled while the breaker holds a batch back).
///
/// A failed batch is retried `backoff.max_retries` times with backoff, then dropped
/// (`retries_exhausted`); while the breaker is open no attempt is made, so the queue absorbs
/// the outage and counts what it has to evict.
pub async fn run_sender<P: Payload>(
    queue: Arc<DestinationQueue<P>>,
    sender: impl Into<Link>,
    backoff: Backoff,
    breaker: CircuitBreaker,
    metrics: NozzleMetrics,
    shutdown: CancellationToken,
) {
    run_with(
        queue,
        sender.into(),
        backoff,
        breaker,
        Tally::new(metrics, None),
        shutdown,
    )
    .await;
}

/// [`run_sender`], also counting in `registry` the messages a retry may deliver twice
/// (`nozzle.duplicates_unsure{destination}`).
pub async fn run_sender_counted<P: Payload>(
    queue: Arc<DestinationQueue<P>>,
    sender: impl Into<Link>,
    backoff: Backoff,
    breaker: CircuitBreaker,
    metrics: NozzleMetrics,
    registry: &Registry,
    shutdown: CancellationToken,
) {
    let tally = Tally::new(metrics, None).counting_resends(registry);
    run_with(queue, sender.into(), backoff, breaker, tally, shutdown).await;
}

/// One sender loop for a lone destination: nothing unbinds it, so only `shutdown` ends it.
async fn run_with<P: Payload>(
    queue: Arc<DestinationQueue<P>>,
    link: Link,
    backoff: Backoff,
    breaker: CircuitBreaker,
    tally: Tally,
    shutdown: CancellationToken,
) {
    let never = CancellationToken::new();
    drive(&queue, link, &backoff, breaker, &tally, &shutdown, &never).await;
}

/// The sender loop behind [`run_sender`] and every drain of the role. `stop` ends it at once
/// (the drain was unbound): the batch in hand is counted as `unbound`.
pub(crate) async fn drive<P: Payload>(
    queue: &DestinationQueue<P>,
    mut link: Link,
    backoff: &Backoff,
    mut breaker: CircuitBreaker,
    tally: &Tally,
    shutdown: &CancellationToken,
    stop: &CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            batch = queue.next_batch() => batch,
        };
        let Some(batch) = batch else { return };
        tally.taken(batch.len() as u64);
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                tally.drop_batch("unbound", &batch);
                return;
            }
            () = deliver(&batch, &mut link, backoff, &mut breaker, tally, shutdown) => {}
        }
    }
}

/// One batch: attempts, retries and the breaker, ending in sent or counted as dropped.
async fn deliver<P: Payload>(
    batch: &[P],
    link: &mut Link,
    backoff: &Backoff,
    breaker: &mut CircuitBreaker,
    tally: &Tally,
    shutdown: &CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        if !breaker.ready(shutdown).await {
            tally.drop_batch("shutdown", batch);
            return;
        }
        match link.send(batch).await {
            Ok(()) => {
                breaker.record_success();
                tally.sent(batch.len() as u64);
                return;
            }
            Err(e) if e.is_refused() => {
                // Retrying soon cannot help: the breaker waits a full cool-down before
                // resolving the name again.
                breaker.trip();
                tally.failed(&e, breaker.is_open());
                link.take_possibly_sent();
                tracing::warn!(error = %e, lost = batch.len(), "drain refused");
                tally.drop_batch("refused", batch);
                return;
            }
            Err(e) if e.is_rejected() => {
                breaker.record_failure();
                tally.failed(&e, breaker.is_open());
                link.take_possibly_sent();
                tracing::warn!(error = %e, lost = batch.len(), "the drain rejected a batch");
                tally.drop_batch("rejected", batch);
                return;
            }
            Err(e) => {
                breaker.record_failure();
                tally.failed(&e, breaker.is_open());
                // Taken on every failure so a count never outlives its batch; only a retry
                // writes them again.
                let possibly_sent = link.take_possibly_sent();
                if attempt >= backoff.max_retries || shutdown.is_cancelled() {
                    tracing::warn!(error = %e, lost = batch.len(), "dropping a batch");
                    tally.drop_batch("retries_exhausted", batch);
                    return;
                }
                tracing::debug!(error = %e, attempt, "retrying a batch");
                tally.retry();
                tally.resent(possibly_sent);
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{split_addr, whole_messages};

    #[test]
    fn a_message_counts_as_possibly_sent_once_one_of_its_frames_was_taken_whole() {
        // Two messages: one frame ("3 abc", 5 bytes), then two frames ("1 x" and "2 yz").
        let batch = [Bytes::from_static(b"3 abc"), Bytes::from_static(b"1 x2 yz")];
        assert_eq!(whole_messages(&batch, 0), 0);
        assert_eq!(
            whole_messages(&batch, 4),
            0,
            "a torn frame is dropped by the drain"
        );
        assert_eq!(whole_messages(&batch, 5), 1);
        assert_eq!(whole_messages(&batch, 7), 1);
        assert_eq!(
            whole_messages(&batch, 8),
            2,
            "its first line may be there twice"
        );
        assert_eq!(whole_messages(&batch, 100), 2);
    }

    #[test]
    fn splits_legacy_addresses() {
        assert_eq!(split_addr("127.0.0.1:514"), ("127.0.0.1".to_owned(), 514));
        assert_eq!(split_addr("[::1]:6514"), ("::1".to_owned(), 6514));
        assert_eq!(split_addr("nonsense").1, 0);
    }
}
