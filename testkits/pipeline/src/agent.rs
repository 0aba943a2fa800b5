//! A fake Loggregator v2 Ingress on loopback that records every envelope it is sent: decoded,
//! with its bytes as they arrived and when. It stands in for the agent in front of a role's
//! emitter, or for a doppler behind an agent (the same service one hop later).
//!
//! It runs on a runtime of its own so that [`FakeAgent::kill`] closes every socket at once, as
//! when the process dies, and a test can bring a fresh one back on the same port with
//! [`FakeAgent::start_on`]. Invariant: a message is recorded whole or not at all; one that does
//! not decode is refused with `InvalidArgument` and counted in [`FakeAgent::rejected`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hydrant_envelope::raw::ingress::ingress_server::{Ingress, IngressServer};
use hydrant_envelope::raw::{CONNECTION_WINDOW, Empty, STREAM_WINDOW};
use hydrant_envelope::v2;
use hydrant_envelope::wire;
use prost::Message as _;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

/// How often [`FakeAgent::wait_for`] looks: its predicate only reads memory, so it can look
/// often without loading anything.
const POLL: Duration = Duration::from_millis(5);

/// One envelope as the fake received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope, decoded.
    pub envelope: v2::Envelope,
    /// Its encoding exactly as it arrived.
    pub bytes: Bytes,
    /// When it arrived, by the fake's clock (real time, never paused).
    pub at: Instant,
}

/// What has arrived, in arrival order. `envelopes` and `arrivals` run in parallel, so that
/// [`FakeAgent::wait_for`] can hand its predicate a slice of envelopes without copying.
#[derive(Debug, Default)]
struct Ledger {
    envelopes: Vec<v2::Envelope>,
    arrivals: Vec<(Bytes, Instant)>,
    batches: usize,
    rejected: usize,
}

#[derive(Debug, Clone, Default)]
struct Recorder {
    ledger: Arc<Mutex<Ledger>>,
    batch_sender_only: bool,
}

impl Recorder {
    /// A test that panicked while holding the lock has already failed; what was recorded is
    /// still worth reading.
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(&self, why: String) -> Status {
        self.lock().rejected += 1;
        Status::invalid_argument(why)
    }

    /// Records `encoded` envelopes if every one of them decodes.
    fn record(&self, encoded: Vec<Bytes>, is_batch: bool) -> Result<(), Status> {
        let at = Instant::now();
        let decoded = encoded
            .iter()
            .map(|e| v2::Envelope::decode(e.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.refuse(format!("not an Envelope: {e}")))?;
        let mut ledger = self.lock();
        ledger.batches += usize::from(is_batch);
        ledger.envelopes.extend(decoded);
        ledger.arrivals.extend(encoded.into_iter().map(|e| (e, at)));
        Ok(())
    }

    fn record_batch(&self, batch: &Bytes) -> Result<(), Status> {
        let encoded = wire::split_batch(batch)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.refuse(format!("not an EnvelopeBatch: {e}")))?;
        self.record(encoded, true)
    }

    fn only_batches(&self) -> Result<(), Status> {
        if self.batch_sender_only {
            return Err(Status::unimplemented(
                "this fake accepts only BatchSender, as a doppler expects of an agent",
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Ingress for Recorder {
    async fn sender(&self, request: Request<Streaming<Bytes>>) -> Result<Response<Empty>, Status> {
        self.only_batches()?;
        let mut stream = request.into_inner();
        while let Some(envelope) = stream.message().await? {
            self.record(vec![envelope], false)?;
        }
        Ok(Response::new(Empty))
    }

    async fn batch_sender(
        &self,
        request: Request<Streaming<Bytes>>,
    ) -> Result<Response<Empty>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.record_batch(&batch)?;
        }
        Ok(Response::new(Empty))
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Empty>, Status> {
        self.only_batches()?;
        self.record_batch(request.get_ref())?;
        Ok(Response::new(Empty))
    }
}

/// How a [`FakeAgent`] starts; from [`FakeAgent::builder`].
#[derive(Debug, Clone, Copy)]
pub struct FakeAgentBuilder {
    addr: SocketAddr,
    batch_sender_only: bool,
}

impl FakeAgentBuilder {
    /// Listens on `addr` instead of an ephemeral loopback port: to come back where a killed
    /// one was.
    #[must_use]
    pub fn on(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Refuses `Sender` and `Send` with `Unimplemented`, as a fake doppler does: an agent must
    /// forward over `BatchSender`.
    #[must_use]
    pub fn batch_sender_only(mut self) -> Self {
        self.batch_sender_only = true;
        self
    }

    /// Binds and starts serving; the port accepts connections once this returns.
    ///
    /// # Panics
    /// When the address cannot be bound or the runtime cannot be built.
    #[must_use]
    pub fn start(self) -> FakeAgent {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("build the fake agent's runtime");
        let listener = {
            let _entered = runtime.enter();
            bind(self.addr).expect("bind the fake agent")
        };
        let addr = listener
            .local_addr()
            .expect("the fake agent's bound address");
        let recorder = Recorder {
            batch_sender_only: self.batch_sender_only,
            ..Recorder::default()
        };
        let service = IngressServer::new(recorder.clone())
            .max_decoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES);
        runtime.spawn(async move {
            let served = tonic::transport::Server::builder()
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
            // Nobody awaits this task; say why envelopes stopped arriving.
            if let Err(e) = served {
                eprintln!("fake agent on {addr} stopped serving: {e}");
            }
        });
        FakeAgent {
            addr,
            recorder,
            runtime: Some(runtime),
        }
    }
}

/// Binds `addr`; a fixed port is retried for a while, because a killed fake's runtime closes
/// its listener on a thread of its own, a moment after [`FakeAgent::kill`] returns. The address
/// is reusable at once so that the killed one's connections in TIME_WAIT do not hold it.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let give_up = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(1024),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && std::time::Instant::now() < give_up =>
            {
                // Blocking is fine here: it is rare and brief, and the caller is starting a
                // fixture, not serving.
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A fake v2 Ingress agent on loopback, recording every envelope sent to it over `Sender`,
/// `BatchSender` or `Send`. Dropping it kills it.
#[derive(Debug)]
pub struct FakeAgent {
    addr: SocketAddr,
    recorder: Recorder,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeAgent {
    /// Starts one on an ephemeral loopback port.
    ///
    /// # Panics
    /// See [`FakeAgentBuilder::start`].
    #[must_use]
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Starts one on `addr`, typically where a killed one listened; it records afresh.
    ///
    /// # Panics
    /// See [`FakeAgentBuilder::start`].
    #[must_use]
    pub fn start_on(addr: SocketAddr) -> Self {
        Self::builder().on(addr).start()
    }

    /// Options: the address, and refusing everything but `BatchSender`.
    #[must_use]
    pub fn builder() -> FakeAgentBuilder {
        FakeAgentBuilder {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            batch_sender_only: false,
        }
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL, as a role's `telemetry.agent` (or an agent's `dopplers`) takes it.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes its listener and every connection at once, like a process dying: clients see
    /// resets, not a graceful end. What it recorded stays readable. Idempotent.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Not `drop`: dropping a runtime inside an async test would panic.
            runtime.shutdown_background();
        }
    }

    /// Every envelope received so far, decoded, in arrival order.
    #[must_use]
    pub fn envelopes(&self) -> Vec<v2::Envelope> {
        self.recorder.lock().envelopes.clone()
    }

    /// Every envelope received so far with its bytes and arrival time, in arrival order.
    #[must_use]
    pub fn received(&self) -> Vec<Received> {
        let ledger = self.recorder.lock();
        ledger
            .envelopes
            .iter()
            .zip(&ledger.arrivals)
            .map(|(envelope, (bytes, at))| Received {
                envelope: envelope.clone(),
                bytes: bytes.clone(),
                at: *at,
            })
            .collect()
    }

    /// How many envelopes have arrived.
    #[must_use]
    pub fn count(&self) -> usize {
        self.recorder.lock().envelopes.len()
    }

    /// How many `EnvelopeBatch` messages have arrived (`BatchSender` messages and `Send`
    /// calls); `Sender`'s one-envelope messages are not batches.
    #[must_use]
    pub fn batches(&self) -> usize {
        self.recorder.lock().batches
    }

    /// How many messages were refused because they did not decode.
    #[must_use]
    pub fn rejected(&self) -> usize {
        self.recorder.lock().rejected
    }

    /// The text (lossy UTF-8) of every log line tagged `source_type`, in arrival order.
    #[must_use]
    pub fn lines(&self, source_type: &str) -> Vec<String> {
        self.log_lines(|_| true, source_type)
    }

    /// The text (lossy UTF-8) of every log line from `source_id` tagged `source_type`, in
    /// arrival order.
    #[must_use]
    pub fn lines_from(&self, source_id: &str, source_type: &str) -> Vec<String> {
        self.log_lines(|e| e.source_id == source_id, source_type)
    }

    fn log_lines(&self, keep: impl Fn(&v2::Envelope) -> bool, source_type: &str) -> Vec<String> {
        self.recorder
            .lock()
            .envelopes
            .iter()
            .filter(|e| keep(e))
            .filter(|e| e.tags.get("source_type").map(String::as_str) == Some(source_type))
            .filter_map(|e| match &e.message {
                Some(v2::envelope::Message::Log(log)) => {
                    Some(String::from_utf8_lossy(&log.payload).into_owned())
                }
                _ => None,
            })
            .collect()
    }

    /// Waits until `pred` holds for the envelopes received so far; fails the test, naming
    /// `what` and how much arrived, if it still does not once `within` has passed.
    ///
    /// `pred` sees the envelopes under the fake's lock, without a copy, so it must not call
    /// back into this `FakeAgent`; for conditions that need to, use [`crate::wait_for`].
    ///
    /// # Panics
    /// When the deadline passes: that is the test failing.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&[v2::Envelope]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let (count, rejected) = {
                let ledger = self.recorder.lock();
                if pred(&ledger.envelopes) {
                    return;
                }
                (ledger.envelopes.len(), ledger.rejected)
            };
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({within:?}): the fake agent on {} has \
                 {count} envelope(s) and refused {rejected} message(s)",
                self.addr
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_envelope::raw::ingress::ingress_client::IngressClient;

    fn log(source: &str, text: &str) -> v2::Envelope {
        v2::Envelope {
            source_id: source.to_owned(),
            tags: [("source_type".to_owned(), "APP".to_owned())].into(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: Bytes::copy_from_slice(text.as_bytes()),
                r#type: v2::log::Type::Out as i32,
            })),
            ..v2::Envelope::default()
        }
    }

    fn batch(envelopes: &[v2::Envelope]) -> Bytes {
        v2::EnvelopeBatch {
            batch: envelopes.to_vec(),
        }
        .encode_to_vec()
        .into()
    }

    #[tokio::test]
    async fn records_all_three_rpcs_and_refuses_garbage_whole() {
        let agent = FakeAgent::start();
        let mut client = IngressClient::connect(agent.url()).await.unwrap();
        client
            .batch_sender(tokio_stream::iter([batch(&[log("a", "1"), log("a", "2")])]))
            .await
            .unwrap();
        client
            .sender(tokio_stream::iter([Bytes::from(
                log("b", "3").encode_to_vec(),
            )]))
            .await
            .unwrap();
        client.send(batch(&[log("c", "4")])).await.unwrap();
        let refused = client
            .send(Bytes::from_static(b"\x0a\x7f\x01"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);

        agent
            .wait_for(Duration::from_secs(5), "four envelopes", |e| e.len() == 4)
            .await;
        assert_eq!(agent.lines("APP"), ["1", "2", "3", "4"]);
        assert_eq!(agent.lines_from("a", "APP"), ["1", "2"]);
        assert_eq!((agent.batches(), agent.rejected()), (2, 1));
        let received = agent.received();
        assert_eq!(received[2].bytes, log("b", "3").encode_to_vec());
        assert!(received.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[tokio::test]
    async fn batch_sender_only_refuses_the_other_two_and_a_killed_one_comes_back() {
        let mut doppler = FakeAgent::builder().batch_sender_only().start();
        let mut client = IngressClient::connect(doppler.url()).await.unwrap();
        let status = client.send(batch(&[log("a", "1")])).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(doppler.count(), 0);

        let addr = doppler.addr();
        doppler.kill();
        let again = FakeAgent::start_on(addr);
        assert_eq!(again.addr(), addr);
        let mut client = IngressClient::connect(again.url()).await.unwrap();
        client.send(batch(&[log("a", "1")])).await.unwrap();
        assert_eq!(again.count(), 1);
    }
}
