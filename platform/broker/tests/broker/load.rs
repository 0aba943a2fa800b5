//! Service nodes that start side by side on a busy machine: several brokers on one host with
//! one port pool (as micro clouds in a parallel test run are) each starting its RabbitMQ node
//! at once while every core is taken, and every node comes up on ports of its own and serves
//! its vhost without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Running, config, ports, require, start};

/// Keeps every core busy until dropped: the machine a full test run makes.
struct Busy {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn new() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = (0..cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) + 1);
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rabbitmq_nodes_start_at_once_on_a_busy_machine() {
    require("rabbitmq");
    // One pool for all three, as micro clouds side by side have (each its own bind address,
    // but RabbitMQ's distribution and epmd all on loopback): each broker finds the same ports
    // free while the others' nodes are still starting, unless it claims them host-wide.
    let pool = ports();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut brokers = Vec::new();
    for d in &dirs {
        brokers.push(start(config(d.path(), pool)).await);
    }
    let busy = Busy::new();
    let began = Instant::now();
    let done = {
        let (a, b, c) = tokio::join!(
            provision(&brokers[0], began),
            provision(&brokers[1], began),
            provision(&brokers[2], began)
        );
        [a, b, c]
    };
    drop(busy);
    for (i, (_, _, took)) in done.iter().enumerate() {
        eprintln!(
            "rabbitmq node {i}: ready and bound after {:.1} s",
            took.as_secs_f64()
        );
    }
    let client = reqwest::Client::new();
    let mut taken: Vec<Vec<u16>> = Vec::new();
    for (b, (id, creds, _)) in brokers.iter().zip(&done) {
        let nodes = b.nodes().await;
        let node = nodes.iter().find(|n| n.0 == "rabbitmq").unwrap();
        let api = format!(
            "http://{}:{}/api/whoami",
            creds["hostname"].as_str().unwrap(),
            creds["protocols"]["management"]["port"].as_u64().unwrap()
        );
        let resp = client
            .get(api)
            .basic_auth(
                creds["username"].as_str().unwrap(),
                Some(creds["password"].as_str().unwrap()),
            )
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            200,
            "node {node:?} serves its binding"
        );
        let restarts = b.metrics().await;
        let restarted = restarts
            .lines()
            .filter(|l| l.starts_with("broker_node_restarts") && l.contains("rabbitmq"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        assert_eq!(restarted, 0.0, "node {node:?} exited while starting");
        for other in &taken {
            assert!(
                node.2.iter().all(|p| !other.contains(p)),
                "two brokers gave their nodes the same port: {node:?} and {other:?}"
            );
        }
        taken.push(node.2.clone());
        assert_eq!(b.deprovision(id, "rabbitmq").await, 200);
    }
    for b in brokers {
        b.stop().await;
    }
}

/// Provisions and binds a RabbitMQ instance: its id, credentials and when it was done.
async fn provision(b: &Running, began: Instant) -> (String, serde_json::Value, Duration) {
    let (id, creds) = b.provision_bound("rabbitmq").await;
    (id, creds, began.elapsed())
}
