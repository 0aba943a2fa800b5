//! Starting a doppler on 127.0.0.1:0 and talking to it the way stock clients do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hydrant_doppler::{Config, Error};
use hydrant_envelope::logcache_v1;
use hydrant_envelope::v2::{self, egress_client::EgressClient, ingress_client::IngressClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// How long any condition in these tests may take before it counts as a failure.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Doppler {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), Error>>,
}

pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".to_owned(),
        admin_listen: "127.0.0.1:0".to_owned(),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Doppler {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(hydrant_runtime::run::<hydrant_doppler::Doppler>(
        config,
        hydrant_runtime::Listeners::from_bound(vec![("grpc", grpc), ("admin", admin)]),
        shutdown.clone(),
    ));
    Doppler {
        grpc: grpc_addr,
        admin: admin_addr,
        shutdown,
        handle,
    }
}

impl Doppler {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .tcp_nodelay(true)
    }

    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.unwrap()
    }

    pub async fn ingress(&self) -> IngressClient<Channel> {
        IngressClient::new(self.channel().await)
    }

    pub async fn egress(&self) -> EgressClient<Channel> {
        EgressClient::new(self.channel().await).max_decoding_message_size(10 * 1024 * 1024)
    }

    pub async fn logcache(&self) -> logcache_v1::egress_client::EgressClient<Channel> {
        logcache_v1::egress_client::EgressClient::new(self.channel().await)
            .max_decoding_message_size(10 * 1024 * 1024)
    }

    /// Opens a `BatchSender` stream with the typed client.
    pub async fn sender(&self) -> Sender {
        let mut client = self.ingress().await;
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            client
                .batch_sender(ReceiverStream::new(rx))
                .await
                .map(|_| ())
        });
        Sender { tx, task }
    }

    /// Subscribes with the typed `BatchedReceiver`.
    pub async fn subscribe(&self, shard_id: &str, selectors: Vec<v2::Selector>) -> Subscriber {
        let stream = self
            .egress()
            .await
            .batched_receiver(v2::EgressBatchRequest {
                shard_id: shard_id.to_owned(),
                selectors,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        Subscriber::from_stream(stream)
    }

    /// `GET /metrics` on the admin port.
    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await
    }

    /// The value of one Prometheus series, e.g. `doppler_dropped_total{...reason="malformed"}`,
    /// matched by metric name and the given label fragments; 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split('{').next() == Some(name))
            .filter(|l| labels.iter().all(|frag| l.contains(frag)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls a metric until `pred` holds.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[&str],
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let v = self.metric(name, labels).await;
            if pred(v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}{labels:?} stuck at {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cancels and checks `run` returns `Ok` promptly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("run returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

pub struct Sender {
    tx: mpsc::Sender<v2::EnvelopeBatch>,
    task: JoinHandle<Result<(), tonic::Status>>,
}

impl Sender {
    pub async fn send(&self, batch: Vec<v2::Envelope>) {
        self.tx.send(v2::EnvelopeBatch { batch }).await.unwrap();
    }

    pub async fn close(self) {
        drop(self.tx);
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

pub struct Subscriber {
    pub stream: tonic::Streaming<v2::EnvelopeBatch>,
    pending: std::collections::VecDeque<v2::Envelope>,
}

impl Subscriber {
    /// Wraps a stream opened by hand (custom channel settings).
    pub fn from_stream(stream: tonic::Streaming<v2::EnvelopeBatch>) -> Self {
        Self {
            stream,
            pending: Default::default(),
        }
    }

    /// The next envelope, failing the test past the deadline.
    pub async fn next(&mut self) -> v2::Envelope {
        self.next_within(DEADLINE)
            .await
            .expect("an envelope before the deadline")
    }

    /// The next envelope, or `None` when nothing arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<v2::Envelope> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let batch = tokio::time::timeout(wait, self.stream.next())
                .await
                .ok()??;
            self.pending.extend(batch.unwrap().batch);
        }
    }

    /// Asserts that nothing more arrives within `ms` milliseconds.
    pub async fn assert_quiet(&mut self, ms: u64) {
        let more = self.next_within(Duration::from_millis(ms)).await;
        assert!(more.is_none(), "nothing more was meant to arrive: {more:?}");
    }

    /// The next `n` envelopes.
    pub async fn take(&mut self, n: usize) -> Vec<v2::Envelope> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }
}

pub fn selector(source: &str, message: v2::selector::Message) -> v2::Selector {
    v2::Selector {
        source_id: source.to_owned(),
        message: Some(message),
    }
}

pub fn logs_of(source: &str) -> v2::Selector {
    selector(source, v2::selector::Message::Log(v2::LogSelector {}))
}

pub fn envelope(source: &str, timestamp: i64, message: v2::envelope::Message) -> v2::Envelope {
    v2::Envelope {
        timestamp,
        source_id: source.to_owned(),
        instance_id: "0".to_owned(),
        tags: HashMap::from([("deployment".to_owned(), "test".to_owned())]),
        message: Some(message),
        ..Default::default()
    }
}

pub fn log(source: &str, timestamp: i64, line: &str) -> v2::Envelope {
    envelope(
        source,
        timestamp,
        v2::envelope::Message::Log(v2::Log {
            payload: Bytes::from(line.to_owned()),
            r#type: 0,
        }),
    )
}

pub fn counter(source: &str, name: &str) -> v2::Envelope {
    envelope(
        source,
        1,
        v2::envelope::Message::Counter(v2::Counter {
            name: name.to_owned(),
            delta: 1,
            total: 1,
        }),
    )
}

pub fn gauge(source: &str, names: &[&str]) -> v2::Envelope {
    envelope(
        source,
        1,
        v2::envelope::Message::Gauge(v2::Gauge {
            metrics: names
                .iter()
                .map(|n| {
                    (
                        (*n).to_owned(),
                        v2::GaugeValue {
                            unit: "bytes".to_owned(),
                            value: 1.0,
                        },
                    )
                })
                .collect(),
        }),
    )
}

/// The text of a log envelope, for assertions.
pub fn line(e: &v2::Envelope) -> String {
    match &e.message {
        Some(v2::envelope::Message::Log(l)) => String::from_utf8_lossy(&l.payload).into_owned(),
        other => format!("{other:?}"),
    }
}
