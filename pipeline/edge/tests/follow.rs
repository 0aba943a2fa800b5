//! Dopplers joining and leaving under a running edge: real dopplers announce themselves on an
//! in-process bus (the one the agent's follow test uses) and an edge with `dopplers = []`
//! follows them. A doppler started later is read at once: its envelopes reach a firehose and an
//! app stream opened before it existed, and a resuming consumer whose cursor predates it is
//! replayed what it carried. A doppler that stops is dropped once its announcement lapses, the
//! streams keep going, recent reads stop asking it, and the ledger balances: every envelope
//! emitted into a doppler is delivered to each consumer or counted as dropped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt as _;
use hydrant_doppler::Doppler;
use hydrant_envelope::v2;
use hydrant_firehose::TrafficController;
use hydrant_testkit::{scrape_metric, wait_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<TcpStream>;

/// How long a condition gets (announcements every 200 ms, TTLs of 1 s).
const WAIT: Duration = Duration::from_secs(20);

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The sum of every series of `name` whose labels include all of `labels`.
async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> u64 {
    scrape_metric(admin, name, labels).await as u64
}

struct Role {
    addr: SocketAddr,
    admin: SocketAddr,
    shutdown: CancellationToken,
}

/// Runs role `R` with `config` on loopback ports; `serves` names the listener the test uses.
async fn start<R: hydrant_runtime::Role>(config: R::Config, serves: &str) -> Role {
    let listeners = hydrant_runtime::bind_on::<R>(|_| "127.0.0.1:0".to_owned())
        .await
        .unwrap();
    let addr = listeners.local_addr(serves).unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(hydrant_runtime::run::<R>(
        config,
        listeners,
        shutdown.clone(),
    ));
    Role {
        addr,
        admin,
        shutdown,
    }
}

/// A real doppler with its replay ring, announcing itself every 200 ms (TTL 1 s) on `bus`.
async fn start_doppler(id: &str, bus: &hydrant_bus::Config) -> Role {
    let config = hydrant_doppler::Config {
        instance_id: id.to_owned(),
        shutdown_grace_secs: 1,
        bus: Some(bus.clone()),
        announce_interval_ms: 200,
        ..hydrant_doppler::Config::default()
    };
    start::<Doppler>(config, "grpc").await
}

/// An edge with no configured dopplers, following `bus`.
async fn start_edge(bus: &hydrant_bus::Config) -> Role {
    start_edge_with(bus, |_| {}).await
}

async fn start_edge_with(
    bus: &hydrant_bus::Config,
    tune: impl FnOnce(&mut hydrant_firehose::Config),
) -> Role {
    let mut config = hydrant_firehose::Config {
        dopplers: vec![],
        bus: Some(bus.clone()),
        disable_auth: true,
        reconnect_min_ms: 10,
        reconnect_max_ms: 100,
        read_timeout_secs: 2.0,
        ..hydrant_firehose::Config::default()
    };
    tune(&mut config);
    start::<TrafficController>(config, "http").await
}

/// `n` log lines of `source` through the doppler's v2 Ingress, as an agent sends them.
async fn emit(doppler: &Role, source: &str, tag: &str, n: usize) -> u64 {
    let mut client = v2::ingress_client::IngressClient::connect(format!("http://{}", doppler.addr))
        .await
        .unwrap();
    let batch = (0..n)
        .map(|i| v2::Envelope {
            timestamp: 1_000 + i as i64,
            source_id: source.to_owned(),
            instance_id: tag.to_owned(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: format!("line {i}").into_bytes().into(),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        })
        .collect();
    client
        .send(v2::EnvelopeBatch { batch })
        .await
        .expect("the doppler takes the batch");
    n as u64
}

async fn ws(edge: &Role, path: &str) -> Ws {
    let stream = TcpStream::connect(edge.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{}{path}", edge.addr), stream)
        .await
        .unwrap();
    ws
}

/// What a JSON-framed stream has delivered: the test's lines (`"<tag> <timestamp>"`, the tag
/// in `instance_id`), and its cursor.
#[derive(Default)]
struct Seen {
    lines: Vec<String>,
    cursor: Option<String>,
}

impl Seen {
    fn count(&self, tag: &str) -> usize {
        self.lines
            .iter()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .count()
    }
}

/// Reads frames until `done` holds for what was seen; panics after 10 s.
async fn read_until(ws: &mut Ws, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("stream stalled with {} lines", seen.lines.len()));
        match msg {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                for e in frame["batch"].as_array().into_iter().flatten() {
                    if e["source_id"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("app-"))
                    {
                        let (tag, ts) = (&e["instance_id"], &e["timestamp"]);
                        seen.lines.push(format!(
                            "{} {}",
                            tag.as_str().unwrap(),
                            ts.as_str().unwrap()
                        ));
                    }
                }
                if let Some(c) = frame["cursor"].as_str() {
                    seen.cursor = Some(c.to_owned());
                }
            }
            Some(Ok(Message::Close(c))) => panic!("stream closed: {c:?}"),
            Some(Ok(_)) => {}
            other => panic!("stream broke: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doppler_that_joins_reaches_open_streams_and_one_that_leaves_is_dropped_with_the_ledger_balanced()
 {
    let bus = hydrant_bus::Config::inprocess(&format!("edge-follow-{}", std::process::id()));
    let a = start_doppler("doppler-a", &bus).await;
    let edge = start_edge(&bus).await;
    let dopplers = || metric(edge.admin, "trafficcontroller_dopplers", &[]);
    let connections = || metric(edge.admin, "trafficcontroller_doppler_connections", &[]);
    wait_for(WAIT, "the edge reads doppler A", || async {
        dopplers().await == 1 && connections().await == 1
    })
    .await;

    let mut firehose = ws(&edge, "/firehose/follow-test?format=json").await;
    let mut app = ws(&edge, "/apps/app-b/stream?format=json").await;
    wait_for(WAIT, "both streams are open", || async {
        metric(edge.admin, "trafficcontroller_firehoses", &[]).await == 1
            && metric(edge.admin, "trafficcontroller_app_streams", &[]).await == 1
    })
    .await;
    let (mut on_firehose, mut on_app) = (Seen::default(), Seen::default());
    let mut emitted = emit(&a, "app-b", "a1", 100).await;
    read_until(&mut firehose, &mut on_firehose, |s| s.count("a1") == 100).await;
    read_until(&mut app, &mut on_app, |s| s.count("a1") == 100).await;
    // A consumer that goes away now, with its cursor, and comes back after B joined.
    let mut resumer = ws(&edge, "/firehose/resumer?format=json").await;
    let mut resumed = Seen::default();
    emitted += emit(&a, "app-b", "a2", 10).await;
    read_until(&mut resumer, &mut resumed, |s| s.count("a2") == 10).await;
    let cursor = resumed.cursor.clone().expect("frames carry a cursor");
    drop(resumer);

    // B joins: read at once, without a restart, by the streams already open.
    let b = start_doppler("doppler-b", &bus).await;
    let joined = Instant::now();
    wait_for(WAIT, "the edge reads doppler B", || async {
        dopplers().await == 2 && connections().await == 2
    })
    .await;
    let took = joined.elapsed();
    emitted += emit(&b, "app-b", "b1", 100).await;
    read_until(&mut firehose, &mut on_firehose, |s| s.count("b1") == 100).await;
    read_until(&mut app, &mut on_app, |s| s.count("b1") == 100).await;
    assert_eq!(
        metric(
            edge.admin,
            "trafficcontroller_doppler_changes_total",
            &[("change", "joined")]
        )
        .await,
        2
    );
    // Recent logs ask every current doppler: A's lines and B's.
    let recent = get(edge.addr, "/api/v1/read/app-b?limit=1000").await;
    let body = recent
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(
        json["envelopes"]["batch"].as_array().map(Vec::len),
        Some(210),
        "a recent read merges both dopplers' log caches: {body:.300}"
    );

    // The resumer's cursor predates B: B is replayed from the start of its window.
    let mut back = ws(
        &edge,
        &format!("/firehose/resumer?format=json&cursor={cursor}"),
    )
    .await;
    let mut replayed = Seen::default();
    read_until(&mut back, &mut replayed, |s| s.count("b1") == 100).await;
    assert_eq!(replayed.count("a2"), 0, "nothing it had is sent again");
    drop(back);

    // A stops: its stream breaks, its announcement lapses, its slot is freed.
    a.shutdown.cancel();
    let stopped = Instant::now();
    wait_for(WAIT, "A's announcement lapses", || async {
        metric(
            edge.admin,
            "trafficcontroller_doppler_changes_total",
            &[("change", "lapsed")],
        )
        .await
            == 1
    })
    .await;
    let lapse = stopped.elapsed();
    assert_eq!(dopplers().await, 1, "the gauge drops");
    wait_for(WAIT, "only B is connected", || async {
        connections().await == 1
    })
    .await;
    emitted += emit(&b, "app-b", "b2", 100).await;
    read_until(&mut firehose, &mut on_firehose, |s| s.count("b2") == 100).await;
    read_until(&mut app, &mut on_app, |s| s.count("b2") == 100).await;
    let read_errors = metric(
        edge.admin,
        "trafficcontroller_upstream_errors_total",
        &[("call", "read")],
    )
    .await;
    let recent = get(edge.addr, "/api/v1/read/app-b?limit=1000").await;
    assert!(recent.starts_with("HTTP/1.1 200"), "{recent}");
    assert_eq!(
        metric(
            edge.admin,
            "trafficcontroller_upstream_errors_total",
            &[("call", "read")]
        )
        .await,
        read_errors,
        "a recent read no longer asks the doppler that left"
    );

    // The ledger, per consumer: every line emitted reached it or was counted as dropped.
    let dropped_edge = metric(edge.admin, "trafficcontroller_dropped_total", &[]).await;
    let dropped_b = metric(b.admin, "doppler_dropped_total", &[]).await;
    for (name, seen) in [("firehose", &on_firehose), ("app stream", &on_app)] {
        let delivered = seen.lines.len() as u64;
        assert_eq!(
            emitted,
            delivered + dropped_edge + dropped_b,
            "{name}: emitted = delivered + counted drops"
        );
        let mut unique = seen.lines.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.lines.len(), "{name}: nothing twice");
    }
    eprintln!(
        "doppler B read {took:?} after it started; A's lapse noticed {lapse:?} after it \
         stopped; {emitted} emitted, {} delivered on the firehose, {} on the app stream, \
         {dropped_edge} dropped at the edge, {dropped_b} at B",
        on_firehose.lines.len(),
        on_app.lines.len(),
    );
    edge.shutdown.cancel();
    b.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doppler_beyond_max_dopplers_is_refused_and_an_unreachable_one_is_dropped_after_its_grace()
 {
    let bus = hydrant_bus::Config::inprocess(&format!("edge-follow-max-{}", std::process::id()));
    let edge = start_edge_with(&bus, |c| {
        c.max_dopplers = 1;
        c.doppler_grace_secs = 2.0;
    })
    .await;
    let announcer = hydrant_bus::Bus::connect(&bus, &hydrant_emitter::Registry::new("t", "0"))
        .await
        .unwrap();
    // An address nothing listens on any more.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let announce = |id: &str, port: u16| hydrant_bus::messages::DopplerAnnounce {
        id: id.to_owned(),
        ingress: format!("http://127.0.0.1:{port}"),
        egress: format!("http://127.0.0.1:{port}"),
        ttl_secs: 60,
    };
    let dopplers = || metric(edge.admin, "trafficcontroller_dopplers", &[]);
    let admin = edge.admin;
    let change = move |c: &'static str| async move {
        metric(
            admin,
            "trafficcontroller_doppler_changes_total",
            &[("change", c)],
        )
        .await
    };
    // The bus subscription is made as the edge starts: announce until it is heard.
    wait_for(WAIT, "the unreachable doppler is followed", || async {
        announcer
            .publish_json(
                hydrant_bus::messages::DOPPLER_ANNOUNCE,
                &announce("ghost", closed.port()),
            )
            .unwrap();
        dopplers().await == 1
    })
    .await;
    let followed = Instant::now();
    announcer
        .publish_json(
            hydrant_bus::messages::DOPPLER_ANNOUNCE,
            &announce("second", closed.port() ^ 1),
        )
        .unwrap();
    wait_for(WAIT, "the second doppler is refused", || async {
        metric(
            edge.admin,
            "trafficcontroller_doppler_announcements_total",
            &[("result", "over_max_dopplers")],
        )
        .await
            >= 1
    })
    .await;
    assert_eq!(dopplers().await, 1, "still only the first");
    assert_eq!(change("joined").await, 1);
    wait_for(WAIT, "the unreachable doppler is dropped", || async {
        change("unreachable").await == 1
    })
    .await;
    let dropped = followed.elapsed();
    assert_eq!(dopplers().await, 0, "its slot is freed");
    assert!(
        dropped >= Duration::from_millis(1500),
        "dropped after {dropped:?}, before its 2 s grace"
    );
    // Its slot is free again: the refused doppler gets it on its next announcement.
    announcer
        .publish_json(
            hydrant_bus::messages::DOPPLER_ANNOUNCE,
            &announce("second", closed.port() ^ 1),
        )
        .unwrap();
    wait_for(WAIT, "the second doppler takes the freed slot", || async {
        change("joined").await == 2
    })
    .await;
    edge.shutdown.cancel();
}
