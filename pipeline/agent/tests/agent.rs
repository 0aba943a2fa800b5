//! The agent over real loopback sockets: stock v2 clients in front, fake dopplers (raw Ingress
//! servers that record what they get) behind, and the agent's own `/metrics` as the ledger.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hydrant_agent::Config;
use hydrant_envelope::gap::Gap;
use hydrant_envelope::raw::ingress::ingress_client::IngressClient as RawClient;
use hydrant_envelope::v2;
use hydrant_envelope::v2::ingress_client::IngressClient as TypedClient;
use hydrant_envelope::wire::{self, EnvelopeView};
use hydrant_runtime::Listeners;
use hydrant_testkit::{FakeAgent, wait_for};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

// === fake doppler ===

/// One envelope as a doppler received it, with the routing fields as the agent's own parser
/// reads them.
#[derive(Debug, Clone)]
struct Got {
    source_id: String,
    instance_id: String,
    sequence: u64,
    envelope: v2::Envelope,
    at: Instant,
}

/// A fake doppler: a fake Ingress that takes only BatchSender, as the agent must forward, on a
/// runtime of its own so that `kill` closes every socket at once, as when the process dies.
fn doppler() -> FakeAgent {
    FakeAgent::builder().batch_sender_only().start()
}

/// A fake doppler back on the address of one that was killed.
fn doppler_on(addr: SocketAddr) -> FakeAgent {
    FakeAgent::builder().on(addr).batch_sender_only().start()
}

/// Everything `doppler` received, in arrival order.
fn got(doppler: &FakeAgent) -> Vec<Got> {
    doppler
        .received()
        .into_iter()
        .map(|r| {
            let view =
                EnvelopeView::parse(&r.bytes).expect("the agent forwards only valid envelopes");
            Got {
                source_id: view.source_id.to_owned(),
                instance_id: view.instance_id.to_owned(),
                sequence: view.sequence,
                envelope: r.envelope,
                at: r.at,
            }
        })
        .collect()
}

/// A TCP proxy in front of a doppler that can freeze: it stops moving bytes but keeps every
/// socket open, like a host that was paused (no RST, no FIN: only keepalive can tell).
struct FreezableProxy {
    addr: SocketAddr,
    frozen: CancellationToken,
}

impl FreezableProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = CancellationToken::new();
        let f = frozen.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(Self::pump(cr, sw, f.clone()));
                    tokio::spawn(Self::pump(sr, cw, f));
                });
            }
        });
        Self { addr, frozen }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: CancellationToken,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                n = from.read(&mut buf) => n,
                () = frozen.cancelled() => {
                    // Hold both sockets open and silent for the rest of the test.
                    std::future::pending::<()>().await;
                    return;
                }
            };
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// === the agent under test ===

struct Agent {
    url: String,
    admin: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), hydrant_agent::Error>>,
}

impl Agent {
    async fn start(dopplers: &[&FakeAgent], tweak: impl FnOnce(&mut Config)) -> Self {
        let urls: Vec<String> = dopplers.iter().map(|d| d.url()).collect();
        Self::start_urls(&urls, tweak).await
    }

    async fn start_urls(dopplers: &[String], tweak: impl FnOnce(&mut Config)) -> Self {
        let ingress = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", ingress.local_addr().unwrap());
        let admin_addr = admin.local_addr().unwrap();
        let mut config = Config {
            dopplers: dopplers.to_vec(),
            ..Config::default()
        };
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hydrant_runtime::run::<hydrant_agent::Agent>(
            config,
            Listeners::from_bound(vec![("ingress", ingress), ("admin", admin)]),
            shutdown.clone(),
        ));
        let agent = Self {
            url,
            admin: admin_addr,
            shutdown,
            task,
        };
        // Ready once every doppler has a stream, so tests measure routing, not start-up.
        let want = dopplers.len() as f64;
        agent
            .wait_metric("doppler streams", "agent_doppler_connections", &[], |v| {
                v == want
            })
            .await;
        agent
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the agent stops within its drain deadline")
            .unwrap()
            .unwrap();
    }

    /// The body of `GET path` on the agent's admin listener, which must answer 200.
    async fn get(&self, path: &str) -> String {
        let from = std::net::Ipv4Addr::LOCALHOST.into();
        let (status, body) = hydrant_testkit::fetch(self.admin, from, "agent", path)
            .await
            .unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The sum of every series of `name` whose labels include `labels`.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        hydrant_testkit::prometheus_value(&self.get("/metrics").await, name, labels)
    }

    async fn wait_metric(
        &self,
        what: &str,
        name: &str,
        labels: &[(&str, &str)],
        cond: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name, labels).await;
            if cond(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {name} = {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn ledger(&self) -> Ledger {
        Ledger {
            ingress: self.metric("agent_ingress_total", &[]).await,
            notices: self.metric("agent_rate_limited_total", &[]).await
                + self.metric("agent_fair_notices_total", &[]).await,
            egress: self.metric("agent_egress_total", &[]).await,
            dropped: self.metric("agent_dropped_total", &[]).await,
        }
    }

    /// Waits until everything that entered has left or been counted.
    async fn settled(&self) -> Ledger {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = self.ledger().await;
            if l.ingress + l.notices == l.egress + l.dropped {
                return l;
            }
            assert!(Instant::now() < deadline, "ledger never balanced: {l:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn typed(&self) -> TypedClient<tonic::transport::Channel> {
        TypedClient::connect(self.url.clone()).await.unwrap()
    }

    async fn raw(&self) -> RawClient<tonic::transport::Channel> {
        RawClient::connect(self.url.clone())
            .await
            .unwrap()
            .max_decoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES)
    }
}

#[derive(Debug, Clone, Copy)]
struct Ledger {
    ingress: f64,
    notices: f64,
    egress: f64,
    dropped: f64,
}

/// A stream yielding `items` with `gap` between them, so streams overlap in time.
fn paced<T: Send + 'static>(
    items: Vec<T>,
    gap: Duration,
) -> tokio_stream::wrappers::ReceiverStream<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for item in items {
            if tx.send(item).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn log(source: &str, instance: &str, source_type: &str, payload: &str) -> v2::Envelope {
    v2::Envelope {
        timestamp: hydrant_envelope::now_nanos(),
        source_id: source.to_owned(),
        instance_id: instance.to_owned(),
        tags: HashMap::from([("source_type".to_owned(), source_type.to_owned())]),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            r#type: v2::log::Type::Out as i32,
        })),
        ..v2::Envelope::default()
    }
}

fn payload(e: &v2::Envelope) -> String {
    match &e.message {
        Some(v2::envelope::Message::Log(l)) => String::from_utf8(l.payload.to_vec()).unwrap(),
        _ => String::new(),
    }
}

/// Checks that each (source, instance) received consecutive sequence numbers from 1.
fn assert_contiguous(got: &[Got]) {
    let mut by: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for g in got {
        by.entry((g.source_id.clone(), g.instance_id.clone()))
            .or_default()
            .push(g.sequence);
    }
    for (key, seqs) in by {
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, want, "sequence of {key:?}");
    }
}

// === tests ===

#[tokio::test]
async fn a_stock_v2_client_reaches_the_doppler_with_sequence_numbers() {
    let doppler = doppler();
    let agent = Agent::start(&[&doppler], |_| {}).await;
    let mut client = agent.typed().await;

    // BatchSender: three batches of 100 from two instances.
    let mut sent = Vec::new();
    let batches: Vec<v2::EnvelopeBatch> = (0..3)
        .map(|b| v2::EnvelopeBatch {
            batch: (0..100)
                .map(|i| {
                    let e = log(
                        "app-a",
                        &format!("{}", i % 2),
                        "APP/PROC/WEB",
                        &format!("b{b} {i}"),
                    );
                    sent.push(e.clone());
                    e
                })
                .collect(),
        })
        .collect();
    client
        .batch_sender(tokio_stream::iter(batches))
        .await
        .unwrap();
    // Sender: one envelope per message. Send: one unary batch.
    let singles: Vec<v2::Envelope> = (0..10)
        .map(|i| log("app-b", "0", "APP/PROC/WEB", &format!("single {i}")))
        .collect();
    sent.extend(singles.clone());
    client.sender(tokio_stream::iter(singles)).await.unwrap();
    let unary = log("app-c", "0", "RTR", "unary");
    sent.push(unary.clone());
    client
        .send(v2::EnvelopeBatch { batch: vec![unary] })
        .await
        .unwrap();

    doppler
        .wait_for(Duration::from_secs(5), "every envelope", |e| e.len() == 311)
        .await;
    let got = got(&doppler);
    // Apart from the sequence stamp (fields 100 and 101, which a stock decoder skips as
    // unknown), the doppler gets exactly what was sent, in order; every stamp names this one
    // agent's numbering.
    let streams: std::collections::BTreeSet<u64> = got
        .iter()
        .map(|g| g.envelope.hydrant_sequence_stream)
        .collect();
    assert_eq!(streams.len(), 1, "one agent, one numbering: {streams:?}");
    assert!(!streams.contains(&0), "the agent stamps its numbering");
    let received: Vec<v2::Envelope> = got
        .iter()
        .map(|g| {
            assert_eq!(g.envelope.hydrant_sequence, g.sequence);
            v2::Envelope {
                hydrant_sequence: 0,
                hydrant_sequence_stream: 0,
                ..g.envelope.clone()
            }
        })
        .collect();
    assert!(
        received == sent,
        "the doppler got something other than what was sent"
    );
    assert_contiguous(&got);
    assert_eq!(
        got.iter()
            .filter(|g| g.source_id == "app-a" && g.instance_id == "1")
            .map(|g| g.sequence)
            .max(),
        Some(150)
    );

    let l = agent.settled().await;
    assert_eq!((l.ingress, l.egress, l.dropped), (311.0, 311.0, 0.0));
    assert!(agent.get("/healthz").await.ends_with("ok\n"));
    let text = agent.get("/metrics").await;
    for name in [
        "agent_ingress_total",
        "agent_egress_total",
        "agent_dropped_total",
        "agent_origin_mappings_total",
        "agent_rate_limited_total",
        "agent_doppler_connections",
        "agent_queue_depth",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn the_hydrant_emitter_and_the_agents_own_telemetry_flow_through() {
    let doppler = doppler();
    let ingress = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", ingress.local_addr().unwrap());
    let config = Config {
        dopplers: vec![doppler.url()],
        telemetry: hydrant_emitter::TelemetryConfig {
            agent: Some(url.clone()),
            interval_secs: 1,
            ..hydrant_emitter::TelemetryConfig::default()
        },
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_runtime::run::<hydrant_agent::Agent>(
        config,
        Listeners::from_bound(vec![("ingress", ingress), ("admin", admin)]),
        shutdown.clone(),
    ));

    let registry = hydrant_emitter::Registry::new("test-role", "0");
    let emitter = hydrant_emitter::Emitter::start(
        hydrant_emitter::EmitterConfig {
            agent: url,
            ..hydrant_emitter::EmitterConfig::default()
        },
        &registry,
        shutdown.clone(),
    );
    for i in 0..1000 {
        emitter.log("app", "0", "APP/PROC/WEB", format!("{i}").as_bytes(), false);
    }
    wait_for(
        Duration::from_secs(10),
        "the emitter's lines and the agent's metrics",
        || async {
            let got = got(&doppler);
            got.iter().filter(|g| g.source_id == "app").count() == 1000
                && got.iter().any(|g| {
                    g.source_id == "agent"
                        && matches!(&g.envelope.message,
                        Some(v2::envelope::Message::Counter(c)) if c.name == "agent.ingress")
                })
        },
    )
    .await;
    let lines: Vec<String> = got(&doppler)
        .iter()
        .filter(|g| g.source_id == "app")
        .map(|g| payload(&g.envelope))
        .collect();
    let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(lines, want);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn garbage_is_rejected_and_counted_while_a_parallel_stream_is_unaffected() {
    let doppler = doppler();
    let agent = Agent::start(&[&doppler], |_| {}).await;

    // A well-behaved stream running the whole time.
    let good = {
        let mut client = agent.typed().await;
        tokio::spawn(async move {
            let batches = (0..50).map(|b| v2::EnvelopeBatch {
                batch: (0..20)
                    .map(|i| log("good", "0", "APP", &format!("{b}/{i}")))
                    .collect(),
            });
            client
                .batch_sender(paced(batches.collect(), Duration::from_millis(2)))
                .await
        })
    };

    let valid = wire::encode(&log("mixed", "0", "APP", "fine"));
    let mut bad_utf8 = v2::Envelope {
        source_id: "placeholder".to_owned(),
        ..log("x", "0", "APP", "y")
    }
    .encode_to_vec();
    let at = bad_utf8
        .windows(11)
        .position(|w| w == b"placeholder")
        .unwrap();
    bad_utf8[at] = 0xff;
    let oversize = wire::encode(&log(
        "big",
        "0",
        "APP",
        &"x".repeat(hydrant_envelope::MAX_ENVELOPE_BYTES),
    ));
    let messages: Vec<Bytes> = vec![
        Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"), // varint overflow
        Bytes::from_static(b"\x0a\x7f\x01"), // envelope length past the end
        Bytes::from_static(b"\x0b"),         // group wire type
        // A valid batch framing around envelopes that are not: wrong wire type for source_id,
        // truncated field, invalid UTF-8 source_id, and one good one that must get through.
        wire::batch_of([
            b"\x10\x05".as_slice(),
            b"\x12\x05ab".as_slice(),
            bad_utf8.as_slice(),
            valid.as_ref(),
            oversize.as_ref(),
        ]),
    ];
    let mut raw = agent.raw().await;
    let status = raw
        .batch_sender(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("7 envelope(s) rejected"),
        "{status:?}"
    );

    // The legacy Sender: one garbage envelope, one good one; Send: a garbage batch.
    let status = raw
        .sender(tokio_stream::iter(vec![
            Bytes::from_static(b"\x12\x80"),
            valid.clone(),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw
        .send(Bytes::from_static(b"\x0a\x05\x12"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not an EnvelopeBatch"),
        "{status:?}"
    );

    // A gRPC message over the 10 MiB limit ends that stream with OutOfRange, and is counted.
    let huge = Bytes::from(vec![0u8; hydrant_envelope::MAX_MESSAGE_BYTES + 1]);
    let status = raw
        .batch_sender(tokio_stream::iter(vec![huge]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);

    good.await
        .unwrap()
        .expect("the good stream is never disturbed");
    doppler
        .wait_for(
            Duration::from_secs(5),
            "the good and valid envelopes",
            |e| e.len() == 1002,
        )
        .await;
    let got = got(&doppler);
    assert_eq!(got.iter().filter(|g| g.source_id == "good").count(), 1000);
    assert_eq!(got.iter().filter(|g| g.source_id == "mixed").count(), 2);
    assert_contiguous(&got);

    assert_eq!(
        agent
            .metric("agent_dropped_total", &[("reason", "malformed")])
            .await,
        // 3 unreadable messages + 3 bad envelopes in the batch + 1 on Sender + 1 on Send.
        8.0
    );
    assert_eq!(
        agent
            .metric("agent_dropped_total", &[("reason", "too_large")])
            .await,
        2.0
    );
    let l = agent.settled().await;
    assert_eq!(l.egress, 1002.0);
    assert_eq!(l.ingress, 1002.0 + 10.0);
    agent.stop().await;
}

#[tokio::test]
async fn an_app_over_its_log_rate_limit_gets_one_notice_per_second() {
    let doppler = doppler();
    let agent = Agent::start(&[&doppler], |c| c.app_log_rate_limit_bytes_per_sec = 100).await;
    let mut client = agent.typed().await;
    let burst = |round: u32| v2::EnvelopeBatch {
        batch: (0..50)
            .map(|i| log("noisy", "0", "APP/PROC/WEB", &format!("r{round} {i:04}")))
            .chain((0..5).map(|i| log("noisy", "0", "RTR", &format!("router {round} {i}"))))
            .chain((0..5).map(|i| log("quiet", "0", "APP/PROC/WEB", &format!("q{round}{i}"))))
            .collect(),
    };
    let start = Instant::now();
    client.send(burst(0)).await.unwrap();
    // Lines are 7 bytes; the 100-byte burst lets 14 through.
    doppler
        .wait_for(Duration::from_secs(5), "the first burst", |e| {
            e.len() == 14 + 1 + 5 + 5
        })
        .await;
    // Still inside the silent second that followed the notice.
    assert!(
        start.elapsed() < Duration::from_millis(800),
        "the machine is too slow for this test"
    );
    client.send(burst(1)).await.unwrap();
    tokio::time::sleep_until(start + Duration::from_millis(1100)).await;
    client.send(burst(2)).await.unwrap();
    wait_for(Duration::from_secs(5), "the third burst", || async {
        got(&doppler)
            .iter()
            .filter(|g| payload(&g.envelope).starts_with("router 2"))
            .count()
            == 5
    })
    .await;

    let got = got(&doppler);
    let notices: Vec<&Got> = got
        .iter()
        .filter(|g| payload(&g.envelope).contains("exceeded log rate limit"))
        .collect();
    assert_eq!(notices.len(), 2, "one notice per overage second");
    for n in &notices {
        assert_eq!(n.source_id, "noisy");
        assert_eq!(n.instance_id, "0");
        assert_eq!(
            payload(&n.envelope),
            "app instance exceeded log rate limit (100 bytes/sec)"
        );
        assert_eq!(n.envelope.tags["source_type"], "APP/PROC/WEB");
        assert!(matches!(
            &n.envelope.message,
            Some(v2::envelope::Message::Log(l)) if l.r#type == v2::log::Type::Err as i32
        ));
    }
    assert!(notices[1].at.duration_since(notices[0].at) >= Duration::from_secs(1));
    // Router lines of the same source and the quiet app are never limited.
    let count = |prefix: &str, source: &str| {
        got.iter()
            .filter(|g| g.source_id == source && payload(&g.envelope).starts_with(prefix))
            .count()
    };
    assert_eq!(count("router", "noisy"), 15);
    assert_eq!(count("q", "quiet"), 15);
    assert_eq!(count("r0 ", "noisy"), 14);
    assert_eq!(
        count("r1 ", "noisy"),
        0,
        "all lines dropped during the silent second"
    );
    assert_contiguous(&got);

    let l = agent.settled().await;
    assert_eq!(l.notices, 2.0);
    assert_eq!(
        agent
            .metric("agent_dropped_total", &[("reason", "rate_limited")])
            .await,
        l.ingress + l.notices - l.egress
    );
    agent.stop().await;
}

#[tokio::test]
async fn each_source_lands_on_one_doppler() {
    let d0 = doppler();
    let d1 = doppler();
    let agent = Agent::start(&[&d0, &d1], |_| {}).await;
    let mut client = agent.typed().await;
    let batches: Vec<v2::EnvelopeBatch> = (0..20)
        .map(|round| v2::EnvelopeBatch {
            batch: (0..40)
                .map(|s| log(&format!("app-{s}"), "0", "APP", &format!("{round}")))
                .collect(),
        })
        .collect();
    client
        .batch_sender(tokio_stream::iter(batches))
        .await
        .unwrap();
    wait_for(Duration::from_secs(5), "all envelopes", || async {
        d0.count() + d1.count() == 800
    })
    .await;
    let on =
        |d: &FakeAgent| -> HashSet<String> { got(d).into_iter().map(|g| g.source_id).collect() };
    let (s0, s1) = (on(&d0), on(&d1));
    assert!(s0.is_disjoint(&s1), "a source was split across dopplers");
    assert_eq!(s0.len() + s1.len(), 40);
    assert!(
        !s0.is_empty() && !s1.is_empty(),
        "both dopplers get sources"
    );
    for d in [&d0, &d1] {
        assert_contiguous(&got(d));
    }
    agent.stop().await;
}

#[tokio::test]
async fn a_dead_doppler_s_sources_fail_over_within_two_seconds_and_return() {
    let mut d0 = doppler();
    let d1 = doppler();
    let d0_addr = d0.addr();
    let agent = Agent::start(&[&d0, &d1], |c| c.reconnect_max_backoff_ms = 500).await;

    // 40 sources, 20 envelopes each every 5 ms, through the typed client, until told to stop.
    let stop = CancellationToken::new();
    let producer = {
        let mut client = agent.typed().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let sending = tokio::spawn(async move {
                client
                    .batch_sender(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            });
            let mut round = 0u64;
            while !stop.is_cancelled() {
                let batch = v2::EnvelopeBatch {
                    batch: (0..40)
                        .map(|s| log(&format!("app-{s}"), "0", "APP", &format!("{round}")))
                        .collect(),
                };
                if tx.send(batch).await.is_err() {
                    break;
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            drop(tx);
            sending.await.unwrap().unwrap();
            round * 40
        })
    };

    wait_for(
        Duration::from_secs(5),
        "traffic on both dopplers",
        || async { d0.count() > 400 && d1.count() > 400 },
    )
    .await;
    let d0_sources: HashSet<String> = got(&d0).into_iter().map(|g| g.source_id).collect();
    let killed = Instant::now();
    d0.kill();
    wait_for(Duration::from_secs(2), "d0's sources on d1", || async {
        got(&d1)
            .iter()
            .any(|g| d0_sources.contains(&g.source_id) && g.at > killed)
    })
    .await;
    let failover = killed.elapsed();
    assert!(
        failover < Duration::from_secs(2),
        "failover took {failover:?}"
    );
    agent
        .wait_metric("d0 marked down", "agent_doppler_connections", &[], |v| {
            v == 1.0
        })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The doppler comes back: its sources return to it.
    let d0b = doppler_on(d0_addr);
    d0b.wait_for(Duration::from_secs(5), "d0's sources back on d0", |e| {
        e.len() > 100
    })
    .await;
    let back: HashSet<String> = got(&d0b).into_iter().map(|g| g.source_id).collect();
    assert!(
        back.is_subset(&d0_sources),
        "only d0's own sources go back to it"
    );

    stop.cancel();
    let produced = producer.await.unwrap() as f64;
    let l = agent.settled().await;
    assert_eq!(l.ingress, produced);
    assert_eq!(
        l.ingress,
        l.egress + l.dropped,
        "the agent's ledger balances"
    );
    // Stopping ends the doppler streams cleanly, so whatever was handed to them has been read.
    agent.stop().await;

    // Every loss is visible: counted by the agent after sequencing, or a sequence gap.
    let mut all = got(&d0);
    all.extend(got(&d1));
    all.extend(got(&d0b));
    // The markers telling d0's sources what it lost are not data: they carry no sequence.
    let told: u64 = all
        .iter()
        .filter_map(|g| Gap::from_view(&EnvelopeView::parse(&g.envelope.encode_to_vec()).ok()?))
        .map(|gap| gap.dropped)
        .sum();
    all.retain(|g| g.sequence != 0);
    let mut seen: HashMap<String, HashSet<u64>> = HashMap::new();
    for g in &all {
        assert!(
            seen.entry(g.source_id.clone())
                .or_default()
                .insert(g.sequence),
            "duplicate delivery of {} #{}",
            g.source_id,
            g.sequence
        );
    }
    let sequenced: u64 = seen
        .values()
        .map(|s| s.iter().max().copied().unwrap_or(0))
        .sum();
    let delivered = all.len() as f64;
    assert!(delivered <= l.egress);
    let counted_after_sequencing = l.dropped;
    assert_eq!(
        sequenced as f64,
        l.egress + counted_after_sequencing,
        "the highest sequence per source accounts for every envelope"
    );
    assert!(
        told <= counted_after_sequencing as u64,
        "the markers tell at most what was counted: {told}"
    );
    let lost_in_flight = l.egress - delivered;
    eprintln!(
        "failover after {failover:?}: {produced} produced, {lost_in_flight} lost in flight, \
         {counted_after_sequencing} counted as dropped"
    );
    assert!(
        lost_in_flight + counted_after_sequencing <= 0.05 * produced,
        "lost {lost_in_flight} in flight and {counted_after_sequencing} counted of {produced}"
    );
}

#[tokio::test]
async fn with_no_doppler_up_emitters_are_never_blocked_and_drops_are_counted() {
    let mut d0 = doppler();
    let addr = d0.addr();
    let agent = Agent::start(&[&d0], |c| {
        c.egress_queue_max_batches = 4;
        c.batch_max_envelopes = 10;
    })
    .await;
    d0.kill();
    agent
        .wait_metric("d0 down", "agent_doppler_connections", &[], |v| v == 0.0)
        .await;
    let mut client = agent.typed().await;
    let start = Instant::now();
    for b in 0..20 {
        client
            .send(v2::EnvelopeBatch {
                batch: (0..100)
                    .map(|i| log("app", "0", "APP", &format!("{b}/{i}")))
                    .collect(),
            })
            .await
            .unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "ingress waited for a doppler"
    );
    let full = agent
        .wait_metric(
            "queue overflow",
            "agent_dropped_total",
            &[("reason", "egress_queue_full")],
            |v| v > 0.0,
        )
        .await;
    assert!(
        full >= 2000.0 - 40.0 - 10.0,
        "only the queue and one batch are kept: {full}"
    );
    // The doppler returns and gets the newest data that was kept.
    let d0b = doppler_on(addr);
    d0b.wait_for(Duration::from_secs(5), "the kept batches", |e| {
        e.len() >= 40
    })
    .await;
    let l = agent.settled().await;
    assert_eq!(l.ingress, 2000.0);
    let last = got(&d0b).last().map(|g| payload(&g.envelope));
    assert_eq!(last.as_deref(), Some("19/99"));
    agent.stop().await;
}

#[tokio::test]
async fn a_frozen_doppler_is_detected_by_keepalive_and_its_sources_move() {
    let d0 = doppler();
    let d1 = doppler();
    let proxy = FreezableProxy::start(d0.addr()).await;
    let agent = Agent::start_urls(&[proxy.url(), d1.url()], |_| {}).await;
    let mut client = agent.typed().await;
    let round = |r: u32| v2::EnvelopeBatch {
        batch: (0..40)
            .map(|s| log(&format!("app-{s}"), "0", "APP", &format!("{r}")))
            .collect(),
    };
    client.send(round(0)).await.unwrap();
    wait_for(Duration::from_secs(5), "both dopplers in use", || async {
        d0.count() + d1.count() == 40
    })
    .await;
    let d0_sources: HashSet<String> = got(&d0).into_iter().map(|g| g.source_id).collect();
    assert!(!d0_sources.is_empty());

    let frozen_at = Instant::now();
    proxy.frozen.cancel();
    // Keep sending; nothing may block while the doppler hangs.
    let mut r = 1;
    loop {
        client.send(round(r)).await.unwrap();
        r += 1;
        let moved = got(&d1).iter().any(|g| d0_sources.contains(&g.source_id));
        if moved {
            break;
        }
        assert!(
            frozen_at.elapsed() < Duration::from_secs(4),
            "the frozen doppler was never given up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let detected = frozen_at.elapsed();
    assert!(detected < Duration::from_secs(3), "took {detected:?}");
    eprintln!("frozen doppler given up after {detected:?}");
    let l = agent.settled().await;
    assert_eq!(l.ingress, l.egress + l.dropped);
    agent.stop().await;
}
