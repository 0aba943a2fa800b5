//! Two agents stamping one app instance, end to end: real agents, a real doppler and a real
//! firehose edge on loopback, and this crate's client reading the app's stream.
//!
//! On several hosts the app's cell agent numbers the app's output and each router host's agent
//! numbers the router's Timers, which carry the app's `source_id` and instance index: two
//! independent numberings of one (`source_id`, `instance_id`). The client must key its
//! sequence check by the stamping agent's numbering (`hydrant_sequence_stream`) and so report
//! no loss, while a real hole in one numbering is still reported with its exact count, and
//! envelopes with no stamp (a stock Loggregator agent's) are never taken for loss.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::time::Duration;

use hydrant_envelope::v2;
use hydrant_firehose_client::{
    ClientConfig, ClientStats, FirehoseClient, Gap, StreamEvent, Subscription,
};
use hydrant_testkit::{scrape_metric, wait_for};
use tokio_util::sync::CancellationToken;

/// How long any one condition gets.
const WAIT: Duration = Duration::from_secs(20);
const APP: &str = "app-two-agents";

struct Role {
    addr: SocketAddr,
    admin: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Role {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Role {
    /// Waits until the role's gauge `metric` counts its one connection to the doppler.
    async fn wait_connected(&self, what: &str, metric: &str) {
        wait_for(WAIT, what, || async {
            scrape_metric(self.admin, metric, &[]).await == 1.0
        })
        .await;
    }
}

/// Role `R` run with `config` on 127.0.0.1:0 until the returned [`Role`] drops; `main` names
/// the listener whose address it keeps beside the admin one.
async fn spawn<R: hydrant_runtime::Role>(config: R::Config, main: &str) -> Role {
    let listeners = hydrant_runtime::bind_on::<R>(|_| "127.0.0.1:0".to_owned())
        .await
        .unwrap();
    let addr = listeners.local_addr(main).unwrap();
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

async fn start_doppler() -> Role {
    let config = hydrant_doppler::Config {
        instance_id: "d0".to_owned(),
        shutdown_grace_secs: 1,
        ..hydrant_doppler::Config::default()
    };
    spawn::<hydrant_doppler::Doppler>(config, "grpc").await
}

async fn start_edge(doppler: &Role) -> Role {
    let config = hydrant_firehose::Config {
        dopplers: vec![format!("http://{}", doppler.addr)],
        disable_auth: true,
        reconnect_min_ms: 10,
        reconnect_max_ms: 100,
        ..hydrant_firehose::Config::default()
    };
    let edge = spawn::<hydrant_firehose::TrafficController>(config, "http").await;
    edge.wait_connected(
        "the edge to read the doppler",
        "trafficcontroller_doppler_connections",
    )
    .await;
    edge
}

async fn start_agent(doppler: &Role) -> Role {
    let config = hydrant_agent::Config {
        dopplers: vec![format!("http://{}", doppler.addr)],
        ..hydrant_agent::Config::default()
    };
    let agent = spawn::<hydrant_agent::Agent>(config, "ingress").await;
    agent
        .wait_connected(
            "the agent's stream to the doppler",
            "agent_doppler_connections",
        )
        .await;
    agent
}

fn line(instance: &str, payload: String) -> v2::Envelope {
    v2::Envelope {
        timestamp: hydrant_envelope::now_nanos(),
        source_id: APP.to_owned(),
        instance_id: instance.to_owned(),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: payload.into_bytes().into(),
            r#type: 0,
        })),
        ..v2::Envelope::default()
    }
}

/// Sends `batch` through the v2 Ingress at `addr` (an agent's, or the doppler's for an
/// emitter that stands in for another agent).
async fn send(addr: SocketAddr, batch: Vec<v2::Envelope>) {
    let mut client = v2::ingress_client::IngressClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .send(v2::EnvelopeBatch { batch })
        .await
        .expect("the ingress takes the batch");
}

/// The app's envelopes of `instance` in `batch`.
fn count(batch: &hydrant_firehose_client::Batch, instance: &str) -> u64 {
    batch
        .iter()
        .filter(|v| v.source_id == APP && v.instance_id == instance)
        .count() as u64
}

/// The app's stream as the client delivers it: instance "0"'s lines and every gap.
struct Reader {
    client: FirehoseClient,
    lines: u64,
    gaps: Vec<Gap>,
}

impl Reader {
    async fn open(edge: &Role) -> Self {
        let config = ClientConfig {
            url: format!("http://{}", edge.addr),
            ..ClientConfig::default()
        };
        let subscription = Subscription::App {
            source_id: APP.to_owned(),
        };
        let client = FirehoseClient::connect(config, subscription).unwrap();
        Self {
            client,
            lines: 0,
            gaps: Vec::new(),
        }
    }

    /// Reads until `total` of instance "0"'s lines have arrived; panics after [`WAIT`].
    async fn until(&mut self, total: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.lines < total {
            let event = tokio::time::timeout_at(deadline, self.client.next())
                .await
                .unwrap_or_else(|_| panic!("{} of {total} lines after {WAIT:?}", self.lines))
                .expect("the stream stays open");
            match event {
                StreamEvent::Batch(b) => self.lines += count(&b, "0"),
                StreamEvent::Gap(g) => self.gaps.push(g),
                StreamEvent::Fatal(e) => panic!("stream ended: {e}"),
                _ => {}
            }
        }
    }

    fn stats(&self) -> ClientStats {
        self.client.stats()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_numbering_one_instance_report_no_loss_and_a_real_hole_is_counted_exactly() {
    let doppler = start_doppler().await;
    let edge = start_edge(&doppler).await;
    let (cell, router_host) = (start_agent(&doppler).await, start_agent(&doppler).await);
    let mut reader = Reader::open(&edge).await;
    // The stream is live once a probe sent after it opened comes back (a stock envelope, no
    // stamp: never a loss either; those sent before it was live are not expected).
    let live_by = tokio::time::Instant::now() + WAIT;
    let mut probes = 0;
    while probes == 0 {
        assert!(
            tokio::time::Instant::now() < live_by,
            "the app stream never went live"
        );
        send(doppler.addr, vec![line("probe", "probe".to_owned())]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, reader.client.next()).await {
            match event {
                StreamEvent::Batch(b) => probes += count(&b, "probe"),
                StreamEvent::Gap(g) => reader.gaps.push(g),
                _ => {}
            }
            if probes > 0 {
                break;
            }
        }
    }
    let mut total = 0;

    // The cell's agent carries the app's output fast, the router host's agent its Timers
    // slowly, both as instance "0": their numbers interleave at the doppler (each round lands
    // before the next is sent), so a check by (source_id, instance_id) alone would see the
    // cell's numbers jump past the router's every round.
    for round in 0..6u64 {
        let output = (0..40)
            .map(|i| line("0", format!("out {round}.{i}")))
            .collect();
        send(cell.addr, output).await;
        total += 40;
        reader.until(total).await;
        let timers = (0..4)
            .map(|i| line("0", format!("timer {round}.{i}")))
            .collect();
        send(router_host.addr, timers).await;
        total += 4;
        reader.until(total).await;
    }
    assert_eq!(reader.gaps, [], "two agents' numberings are not loss");
    let stats = reader.stats();
    assert_eq!((stats.sequence_gaps, stats.sequence_lost), (0, 0));

    // A third numbering of the same instance whose agent lost three envelopes on its lane
    // (numbers 4 to 6 never reached the doppler): exactly those three are reported.
    let lost_on_the_lane = (1..=10u64)
        .filter(|n| !(4..=6).contains(n))
        .map(|n| v2::Envelope {
            hydrant_sequence: n,
            hydrant_sequence_stream: 0x5eed,
            ..line("0", format!("third {n}"))
        })
        .collect();
    send(doppler.addr, lost_on_the_lane).await;
    total += 7;
    reader.until(total).await;
    // And the two agents go on without a hole.
    send(cell.addr, vec![line("0", "out last".to_owned())]).await;
    send(router_host.addr, vec![line("0", "timer last".to_owned())]).await;
    total += 2;
    reader.until(total).await;
    assert_eq!(
        reader.gaps,
        [Gap {
            source_id: APP.to_owned(),
            dropped: 3,
            hop: "upstream".to_owned(),
            reason: "sequence_gap".to_owned(),
            by_source: Default::default(),
        }]
    );
    let stats = reader.stats();
    assert_eq!((stats.sequence_gaps, stats.sequence_lost), (1, 3));
    assert!(stats.envelopes >= total, "{stats:?}");
}
