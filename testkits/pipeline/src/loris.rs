//! A slow-loris client and a latency probe, for the abuse-limit tests of every public
//! listener (cloud controller, firehose edge, router).
//!
//! [`SlowLoris`] opens many connections from one loopback address and trickles a request head
//! that never ends, one byte per interval; it tells refused connections (the server's `503`
//! at accept) from ones the server closed later (its header read timeout). [`probe`] is the
//! normal client beside it: one plain HTTP/1.1 request from another loopback address, timed.
//!
//! Invariant: traffic goes only to the loopback target the test names, from loopback source
//! addresses (the whole of 127.0.0.0/8 is the loopback interface on Linux).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// What the loris's connections have met so far.
#[derive(Debug, Default)]
struct Tally {
    /// Connected and still trickling.
    open: AtomicUsize,
    /// Answered `503` (a connection cap) and closed.
    refused: AtomicUsize,
    /// Closed by the server without an answer after being admitted (a timeout).
    closed: AtomicUsize,
    /// Could not connect at all.
    failed: AtomicUsize,
}

/// A snapshot of a [`SlowLoris`]'s connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LorisCounts {
    /// Connected and still sending.
    pub open: usize,
    /// Refused with `503` at accept.
    pub refused: usize,
    /// Closed by the server later, without an answer.
    pub closed: usize,
    /// Never connected.
    pub failed: usize,
}

impl LorisCounts {
    /// Every connection whose fate is known (open counts: it is being held).
    #[must_use]
    pub fn settled(&self) -> usize {
        self.open + self.refused + self.closed + self.failed
    }
}

/// Many connections sending one byte of an endless request head per interval.
#[derive(Debug)]
pub struct SlowLoris {
    tally: Arc<Tally>,
    tasks: JoinSet<()>,
}

/// A request head that never ends: after the request line it repeats a header forever.
const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: loris\r\n";
const FILLER: &[u8] = b"X-Loris: a\r\n";

impl SlowLoris {
    /// Opens `count` connections from `from` to `target`, each sending one byte every
    /// `interval` until the server closes it or the loris is dropped.
    #[must_use]
    pub fn start(target: SocketAddr, from: IpAddr, count: usize, interval: Duration) -> Self {
        let tally = Arc::new(Tally::default());
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            tasks.spawn(one(target, from, interval, Arc::clone(&tally)));
        }
        Self { tally, tasks }
    }

    /// Where the connections stand now.
    #[must_use]
    pub fn counts(&self) -> LorisCounts {
        LorisCounts {
            open: self.tally.open.load(Ordering::SeqCst),
            refused: self.tally.refused.load(Ordering::SeqCst),
            closed: self.tally.closed.load(Ordering::SeqCst),
            failed: self.tally.failed.load(Ordering::SeqCst),
        }
    }

    /// Closes every connection.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn connect_from(target: SocketAddr, from: IpAddr) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(target).await
}

async fn one(target: SocketAddr, from: IpAddr, interval: Duration, tally: Arc<Tally>) {
    let Ok(mut stream) = connect_from(target, from).await else {
        tally.failed.fetch_add(1, Ordering::SeqCst);
        return;
    };
    tally.open.fetch_add(1, Ordering::SeqCst);
    let bytes = HEAD.iter().chain(FILLER.iter().cycle());
    let mut answer = [0u8; 64];
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        // Wait out the interval, but notice at once when the server answers or closes.
        match tokio::time::timeout(interval, stream.read(&mut answer)).await {
            Err(_) => continue,
            Ok(Ok(n)) if n > 0 && answer[..n].starts_with(b"HTTP/1.1 503") => {
                tally.open.fetch_sub(1, Ordering::SeqCst);
                tally.refused.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(_) => break,
        }
    }
    tally.open.fetch_sub(1, Ordering::SeqCst);
    tally.closed.fetch_add(1, Ordering::SeqCst);
}

/// One `GET path` with `Host: host` over a new connection from `from`; the status code and
/// how long the whole exchange took (connect to the end of the response).
///
/// # Errors
/// The connection failed, the response took longer than 10 s, or it is not HTTP.
pub async fn probe(
    target: SocketAddr,
    from: IpAddr,
    host: &str,
    path: &str,
) -> io::Result<(u16, Duration)> {
    let start = Instant::now();
    let (status, _) = fetch(target, from, host, path).await?;
    Ok((status, start.elapsed()))
}

/// One `GET path` with `Host: host` over a new connection from `from`: the status code and
/// the body (headers stripped; the server must not chunk it, as `/metrics` does not).
///
/// # Errors
/// The connection failed, the response took longer than 10 s, or it is not HTTP.
pub async fn fetch(
    target: SocketAddr,
    from: IpAddr,
    host: &str,
    path: &str,
) -> io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    exchange(target, from, &request).await
}

/// Sends `request` (a whole HTTP/1 request that asks the server to close after answering) over
/// a new connection from `from` and reads the answer to the end: the status code and the body
/// (headers stripped).
///
/// # Errors
/// The connection failed, the response took longer than 10 s, or it is not HTTP.
pub(crate) async fn exchange(
    target: SocketAddr,
    from: IpAddr,
    request: &str,
) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = connect_from(target, from).await?;
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response within 10 s"))??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/1.1 response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

/// The 99th percentile of `samples` (nearest rank); zero for none.
#[must_use]
pub fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * 99).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The value of the Prometheus series `name` whose labels include every `labels` pair, from
/// `/metrics` text; 0 when absent.
#[must_use]
pub fn prometheus_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}
