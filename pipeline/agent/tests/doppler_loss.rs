//! A doppler that dies with two apps' lines waiting for it: what the agent can no longer
//! deliver is counted under each app (`agent.dropped_by_source`), exactly, and told in-band to
//! the doppler still up, one `hydrant.gap` marker per app, so an app's owner learns that *their*
//! lines were lost and how many. Per app, `sent = delivered + agent.dropped_by_source`.
//!
//! The lines are made to wait deterministically: the doppler sits behind a proxy that first
//! stops moving bytes (so a filler app's flood fills every buffer on the way and the lane's
//! queue holds the rest), then the two apps send, then the proxy and the doppler die. Nothing of
//! the two apps was in flight, so every line of theirs is either delivered or counted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::time::Duration;

mod support;

use hydrant_agent::Config;
use hydrant_envelope::gap::Gap;
use hydrant_envelope::v2;
use hydrant_envelope::v2::ingress_client::IngressClient;
use hydrant_envelope::wire::EnvelopeView;
use hydrant_runtime::Listeners;
use hydrant_testkit::{FakeAgent, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use support::log;

const WAIT: Duration = Duration::from_secs(20);
/// Lines of the two apps that wait for the doomed doppler.
const LINES_A: usize = 30;
const LINES_B: usize = 50;
/// The filler flood: far more than the HTTP/2 windows and socket buffers on the way hold.
const FILLER_MESSAGES: usize = 120;
const FILLER_PER_MESSAGE: usize = 50;
const FILLER_PAYLOAD: usize = 4096;

/// A TCP proxy in front of a doppler that can freeze (stop moving bytes, sockets kept open)
/// and die (every socket closed, no more accepted).
struct Proxy {
    addr: SocketAddr,
    frozen: CancellationToken,
    dead: CancellationToken,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, dead) = (CancellationToken::new(), CancellationToken::new());
        let (f, d) = (frozen.clone(), dead.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    () = d.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, f.clone(), d.clone()));
                tokio::spawn(pump(sr, cw, f.clone(), d.clone()));
            }
        });
        Self { addr, frozen, dead }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: CancellationToken,
    dead: CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => n,
            () = frozen.cancelled() => {
                // Silent until the proxy dies, then both sockets close.
                dead.cancelled().await;
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

/// Lines of `source` a fake doppler received (gap markers aside).
fn lines_of(doppler: &FakeAgent, source: &str) -> usize {
    doppler
        .received()
        .iter()
        .filter(|r| r.envelope.source_id == source)
        .filter(|r| matches!(r.envelope.message, Some(v2::envelope::Message::Log(_))))
        .count()
}

/// The gap markers a fake doppler received.
fn markers(doppler: &FakeAgent) -> Vec<Gap> {
    doppler
        .received()
        .iter()
        .filter_map(|r| Gap::from_view(&EnvelopeView::parse(&r.bytes).ok()?))
        .collect()
}

async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> u64 {
    hydrant_testkit::scrape_metric(admin, name, labels).await as u64
}

/// `agent.dropped_by_source{source}`.
async fn dropped_by(admin: SocketAddr, source: &str) -> u64 {
    metric(
        admin,
        "agent_dropped_by_source_total",
        &[("source", source)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doppler_killed_with_two_apps_lines_waiting_counts_them_by_app_and_tells_the_survivor() {
    let mut doomed = FakeAgent::builder().batch_sender_only().start();
    let survivor = FakeAgent::builder().batch_sender_only().start();
    let proxy = Proxy::start(doomed.addr()).await;

    let ingress = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ingress_addr, admin_addr) = (ingress.local_addr().unwrap(), admin.local_addr().unwrap());
    let config = Config {
        dopplers: vec![format!("http://{}", proxy.addr), survivor.url()],
        batch_max_envelopes: 10,
        egress_queue_max_batches: 4096,
        // The freeze must not be noticed by a ping before the two apps have sent: only the
        // proxy's death ends the stream.
        keepalive_interval_ms: 60_000,
        keepalive_timeout_ms: 60_000,
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_runtime::run::<hydrant_agent::Agent>(
        config,
        Listeners::from_bound(vec![("ingress", ingress), ("admin", admin)]),
        shutdown.clone(),
    ));
    wait_for(WAIT, "both doppler streams", || async {
        metric(admin_addr, "agent_doppler_connections", &[]).await == 2
    })
    .await;
    let mut client = IngressClient::connect(format!("http://{ingress_addr}"))
        .await
        .unwrap();

    // Which apps live on the doomed doppler: one line from each candidate.
    let candidates: Vec<String> = (0..40).map(|i| format!("app-{i}")).collect();
    let batch = v2::EnvelopeBatch {
        batch: candidates
            .iter()
            .map(|s| log(s, "hello".to_owned()))
            .collect(),
    };
    client.send(batch).await.unwrap();
    wait_for(WAIT, "every first line delivered", || async {
        doomed.count() + survivor.count() == candidates.len()
    })
    .await;
    let homed: Vec<&String> = candidates
        .iter()
        .filter(|s| lines_of(&doomed, s) == 1)
        .collect();
    assert!(
        homed.len() >= 3,
        "rendezvous hashing spreads 40 apps: {homed:?}"
    );
    let (a, b, filler) = (homed[0].as_str(), homed[1].as_str(), homed[2].as_str());

    // Freeze, and flood from the filler until the lane's queue holds far more than any buffer.
    proxy.frozen.cancel();
    let queue_labels = [("queue", "egress")];
    let depth_before = metric(admin_addr, "agent_queue_depth", &queue_labels).await;
    for _ in 0..FILLER_MESSAGES {
        let batch = v2::EnvelopeBatch {
            batch: (0..FILLER_PER_MESSAGE)
                .map(|_| log(filler, "f".repeat(FILLER_PAYLOAD)))
                .collect(),
        };
        client.send(batch).await.unwrap();
    }
    wait_for(
        WAIT,
        "the filler held in the doomed lane's queue",
        || async {
            metric(admin_addr, "agent_queue_depth", &queue_labels).await >= depth_before + 2_000
        },
    )
    .await;

    // The two apps' lines join the queue behind the filler.
    let depth = metric(admin_addr, "agent_queue_depth", &queue_labels).await;
    let batch = v2::EnvelopeBatch {
        batch: (0..LINES_A)
            .map(|i| log(a, format!("a {i}")))
            .chain((0..LINES_B).map(|i| log(b, format!("b {i}"))))
            .collect(),
    };
    client.send(batch).await.unwrap();
    let want = depth + (LINES_A + LINES_B) as u64;
    wait_for(WAIT, "the two apps' lines queued", || async {
        metric(admin_addr, "agent_queue_depth", &queue_labels).await >= want
    })
    .await;

    // The doppler dies.
    proxy.dead.cancel();
    doomed.kill();
    wait_for(WAIT, "the doomed doppler marked down", || async {
        metric(admin_addr, "agent_doppler_connections", &[]).await == 1
    })
    .await;
    wait_for(WAIT, "both apps' losses counted", || async {
        dropped_by(admin_addr, a).await == LINES_A as u64
            && dropped_by(admin_addr, b).await == LINES_B as u64
    })
    .await;
    wait_for(
        WAIT,
        "a gap marker for each app at the survivor",
        || async {
            let told = markers(&survivor);
            [a, b]
                .iter()
                .all(|s| told.iter().any(|g| g.source_id == *s))
        },
    )
    .await;

    let told = markers(&survivor);
    for (app, lines) in [(a, LINES_A), (b, LINES_B)] {
        let gap = told.iter().find(|g| g.source_id == app).unwrap();
        assert_eq!(
            (gap.dropped, gap.hop.as_str(), gap.reason.as_str()),
            (lines as u64, "agent", "doppler_unavailable"),
            "{app}'s marker: {gap:?}"
        );
        assert_eq!(gap.by_source.get(app), Some(lines as u64), "{gap:?}");
        // Sent: the first line and the waiting ones. Delivered: what either doppler got.
        let delivered = (lines_of(&doomed, app) + lines_of(&survivor, app)) as u64;
        let dropped = dropped_by(admin_addr, app).await;
        assert_eq!(
            1 + lines as u64,
            delivered + dropped,
            "{app}'s ledger: sent {} = delivered {delivered} + dropped {dropped}",
            1 + lines
        );
    }
    assert!(
        metric(admin_addr, "agent_gap_markers_total", &[]).await >= 1,
        "the markers are counted"
    );

    // The apps carry on through the survivor.
    let batch = v2::EnvelopeBatch {
        batch: vec![log(a, "after".to_owned())],
    };
    client.send(batch).await.unwrap();
    wait_for(WAIT, "a's next line at the survivor", || async {
        lines_of(&survivor, a) == 1
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap();
}
