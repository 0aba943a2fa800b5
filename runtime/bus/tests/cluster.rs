//! The bus on a cluster of three real `nats-server`s (Debian's 2.9) running the config
//! [`hydrant_bus::nats_config::clustered_config`] writes: routes between the nodes use mutual TLS
//! and the cluster's secret. A role connected to one node keeps receiving what a role on another
//! node publishes when either node is SIGKILLed (the client fails over to a node it learned from
//! the cluster and re-subscribes), and a node holding the platform's certificates but not the
//! cluster's secret never joins.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[allow(dead_code, reason = "shared with the other NATS tests")]
#[path = "support/nats_server.rs"]
mod nats_server;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hydrant_bus::messages::{RegistryMessage, router_register_subject};
use hydrant_bus::nats_config::{self, Cluster, ServerTls};
use hydrant_bus::{Bus, Config, Subscription, TlsFiles};
use hydrant_emitter::Registry;
use hydrant_tls::Identity;
use hydrant_tls::issue::{self, CertDir};
use nats_server::{NatsServer, free_port};
use tokio::time::Instant;

/// How long a failover may take: the killed node's sockets close at once, so the client
/// notices without waiting for a ping; its reconnect back-off is well under this.
const FAILOVER: Duration = Duration::from_secs(10);

struct Node {
    server: NatsServer,
}

fn start_node(
    dir: &Path,
    certs: &CertDir,
    route_port: u16,
    routes: &[String],
    secret: &str,
) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let listen = format!("127.0.0.1:{route_port}");
    let server = NatsServer::start_with_config(dir, |port| {
        nats_config::clustered_config(
            &format!("127.0.0.1:{port}"),
            ServerTls {
                ca_file: &certs.ca_file(),
                cert_file: &certs.cert_file(Identity::Nats),
                key_file: &certs.key_file(Identity::Nats),
            },
            &[],
            Some(&Cluster {
                name: "hydrant",
                listen: &listen,
                routes,
                secret,
            }),
        )
        .unwrap()
    });
    Node { server }
}

async fn connect(certs: &CertDir, identity: Identity, urls: &[String]) -> Bus {
    let config = Config {
        tls: Some(TlsFiles {
            ca_file: certs.ca_file(),
            cert_file: certs.cert_file(identity),
            key_file: certs.key_file(identity),
        }),
        ..Config::nats(&urls.join(","))
    };
    Bus::connect(&config, &Registry::new(identity.name(), "0"))
        .await
        .unwrap()
}

/// Publishes a numbered registration every 20 ms, as an executor re-announces its routes, and
/// counts what it handed to the bus.
fn registrations(bus: Bus) -> Arc<AtomicU64> {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        loop {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            let message = RegistryMessage::new("10.0.0.2", 8080, vec![format!("r{n}.example.com")]);
            let _ = bus.publish_json(&router_register_subject("e1"), &message);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    sent
}

/// The sequence number of the next registration that arrives within `within`.
async fn next_seq(sub: &mut Subscription, within: Duration) -> Option<u64> {
    let message = tokio::time::timeout(within, sub.next()).await.ok()??;
    let reg: RegistryMessage = message.json().ok()?;
    reg.uris
        .first()?
        .strip_prefix('r')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Waits until a registration numbered after `after` arrives; returns how long that took.
async fn resumes_after(sub: &mut Subscription, after: u64, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let left = FAILOVER.saturating_sub(start.elapsed());
        match next_seq(sub, left).await {
            Some(n) if n > after => return start.elapsed(),
            Some(_) => {}
            None => panic!("{what}: no registration arrived within {FAILOVER:?}"),
        }
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    certs: CertDir,
    secret: String,
    route_ports: Vec<u16>,
    nodes: Vec<Node>,
}

impl Fixture {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certs = issue::ensure(
            &tmp.path().join("certs"),
            &[Identity::Router, Identity::Executor, Identity::Nats],
            &names,
        )
        .unwrap();
        let secret =
            nats_config::ensure_cluster_secret(&tmp.path().join("certs/cluster.secret")).unwrap();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let nodes = (0..3)
            .map(|i| {
                start_node(
                    &tmp.path().join(format!("n{i}")),
                    &certs,
                    route_ports[i],
                    &routes,
                    &secret,
                )
            })
            .collect();
        Self {
            tmp,
            certs,
            secret,
            route_ports,
            nodes,
        }
    }

    fn url(&self, node: usize) -> String {
        self.nodes[node].server.url()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_keep_flowing_when_a_node_of_the_cluster_dies() {
    let mut fixture = Fixture::start();
    // Each role is given one node: it must learn the others from the cluster to fail over.
    let router = connect(&fixture.certs, Identity::Router, &[fixture.url(1)]).await;
    let executor = connect(&fixture.certs, Identity::Executor, &[fixture.url(0)]).await;
    let mut routes = router.subscribe("router.register.*").await.unwrap();
    let sent = registrations(executor.clone());

    // Routes between the nodes form within the deadline: node 0 → node 1.
    resumes_after(&mut routes, 0, "across the cluster").await;

    // The router's node dies: the router reconnects elsewhere and re-subscribes.
    let before = sent.load(Ordering::Relaxed);
    fixture.nodes[1].server.kill();
    let took = resumes_after(&mut routes, before, "after the router's node died").await;
    println!("router failover: registrations resumed {took:?} after its node was killed");

    // The node comes back; then the executor's node dies: its publishes resume through
    // another node.
    fixture.nodes[1].server.restart();
    let before = sent.load(Ordering::Relaxed);
    fixture.nodes[0].server.kill();
    let took = resumes_after(&mut routes, before, "after the executor's node died").await;
    println!("executor failover: registrations resumed {took:?} after its node was killed");
    drop(executor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_secret_never_joins() {
    let fixture = Fixture::start();
    let intruder_dir = fixture.tmp.path().join("intruder");
    let wrong = "0".repeat(64);
    assert_ne!(wrong, fixture.secret);
    let routes: Vec<String> = fixture
        .route_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    // Same CA, same `nats` certificate, a route to every node: only the secret differs.
    let intruder = start_node(&intruder_dir, &fixture.certs, free_port(), &routes, &wrong);

    let member = connect(&fixture.certs, Identity::Router, &[fixture.url(2)]).await;
    let spy = connect(&fixture.certs, Identity::Router, &[intruder.server.url()]).await;
    let mut genuine = member.subscribe("router.register.*").await.unwrap();
    let mut stolen = spy.subscribe("router.register.*").await.unwrap();
    let executor = connect(&fixture.certs, Identity::Executor, &[fixture.url(0)]).await;
    let _sent = registrations(executor);

    // A member of the cluster receives 25 registrations (half a second of them)...
    for _ in 0..25 {
        assert!(
            next_seq(&mut genuine, FAILOVER).await.is_some(),
            "a member of the cluster stopped receiving"
        );
    }
    // ...while the node that lacks the secret received none of them.
    assert!(
        stolen.try_next().is_none(),
        "a node without the cluster secret received cluster traffic"
    );
}
