//! A real pipeline in-process (agent → doppler → firehose edge, as `hydrant up` wires them)
//! and the syslog role on top of it, plus the readers tests use: `/metrics`, `/drains`, and
//! deadline-bound waits. Included with `#[path]` by the test files that run the role.
#![allow(dead_code, reason = "each test file uses a part")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hydrant_emitter::{Emitter, EmitterConfig, Registry};
use hydrant_nozzle_core::{Backoff, BreakerConfig};
use hydrant_nozzle_syslog::{Config, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Pipeline {
    pub agent: String,
    pub firehose: String,
    pub token: String,
    pub shutdown: CancellationToken,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn url(l: &TcpListener) -> String {
    format!("http://{}", l.local_addr().unwrap())
}

/// Agent, doppler and firehose edge on ephemeral ports, as `MicroCloud::start` wires them.
pub async fn start_pipeline() -> Pipeline {
    let shutdown = CancellationToken::new();
    let key = hydrant_auth::SigningKey::from_bytes(&[7u8; 32]).unwrap();
    let (agent_ingress, agent_admin) = (bind().await, bind().await);
    let (doppler_grpc, doppler_admin) = (bind().await, bind().await);
    let (firehose_http, firehose_admin) = (bind().await, bind().await);
    let (agent, doppler, firehose) = (url(&agent_ingress), url(&doppler_grpc), url(&firehose_http));
    tokio::spawn(hydrant_agent::run(
        hydrant_agent::Config {
            dopplers: vec![doppler.clone()],
            ..hydrant_agent::Config::default()
        },
        hydrant_agent::Listeners {
            ingress: agent_ingress,
            admin: agent_admin,
        },
        shutdown.clone(),
    ));
    tokio::spawn(hydrant_doppler::run(
        hydrant_doppler::Config::default(),
        hydrant_doppler::Listeners {
            grpc: doppler_grpc,
            admin: doppler_admin,
        },
        shutdown.clone(),
    ));
    tokio::spawn(hydrant_firehose::run(
        hydrant_firehose::Config {
            dopplers: vec![doppler],
            signing_key: Some(key.to_hex()),
            reconnect_min_ms: 10,
            reconnect_max_ms: 200,
            ..hydrant_firehose::Config::default()
        },
        hydrant_firehose::Listeners {
            http: firehose_http,
            admin: firehose_admin,
        },
        shutdown.clone(),
    ));
    let token = key
        .issue(&hydrant_auth::Claims::new("nozzle-test").with_scope(hydrant_auth::SCOPE_FIREHOSE));
    Pipeline {
        agent,
        firehose,
        token,
        shutdown,
    }
}

impl Pipeline {
    /// An emitter into the agent, as an app's executor would have.
    pub fn emitter(&self) -> Emitter {
        Emitter::start(
            EmitterConfig {
                agent: self.agent.clone(),
                ..EmitterConfig::default()
            },
            &Registry::new("test-app", "0"),
            self.shutdown.clone(),
        )
    }

    /// A nozzle config reading this pipeline's firehose, with short retries and breaker.
    pub fn config(&self, drains: Vec<String>) -> Config {
        let mut config = Config {
            drains,
            retry: Backoff {
                initial_ms: 10,
                max_ms: 50,
                jitter: 0.0,
                max_retries: 1,
            },
            breaker: BreakerConfig {
                failure_threshold: 2,
                open_ms: 100,
            },
            write_timeout_ms: 2_000,
            shutdown_drain_ms: 1_000,
            admin_listen: "127.0.0.1:0".to_owned(),
            ..Config::default()
        };
        config.firehose.url.clone_from(&self.firehose);
        config.firehose.token.clone_from(&self.token);
        config.firehose.reconnect.initial_ms = 20;
        config.firehose.reconnect.max_ms = 200;
        config
    }
}

pub struct Nozzle {
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), hydrant_nozzle_syslog::Error>>,
}

impl Nozzle {
    /// Stops the nozzle and expects a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the nozzle stops")
            .unwrap()
            .unwrap();
    }
}

pub async fn start_nozzle(pipeline: &Pipeline, drains: Vec<String>) -> Nozzle {
    start_nozzle_with(pipeline.config(drains)).await
}

pub async fn start_nozzle_with(config: Config) -> Nozzle {
    config.validate().unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    let admin = listeners.admin.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_nozzle_syslog::run(
        config,
        listeners,
        shutdown.clone(),
    ));
    Nozzle {
        admin,
        shutdown,
        task,
    }
}

async fn get(admin: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(text)
}

/// The nozzle's `/metrics` text.
pub async fn scrape(admin: SocketAddr) -> String {
    get(admin, "/metrics").await
}

/// The nozzle's `/drains` report, by key.
pub async fn drains(admin: SocketAddr) -> std::collections::HashMap<String, serde_json::Value> {
    let body = get(admin, "/drains").await;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    list.into_iter()
        .map(|d| (d["key"].as_str().unwrap().to_owned(), d))
        .collect()
}

/// Sum of the samples of `name` whose labels contain `filter`.
pub fn metric(text: &str, name: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Emits probe logs until the nozzle has read one: from then on the firehose path is open
/// end to end, so nothing the test emits next can fall into a subscription not yet made.
pub async fn wait_until_flowing(emitter: &Emitter, nozzle: &Nozzle) {
    eventually("the firehose to reach the nozzle", async || {
        emitter.log("probe", "0", "APP/PROC/WEB", b"probe", false);
        emitter.flush();
        metric(&scrape(nozzle.admin).await, "nozzle_envelopes_total", "") > 0
    })
    .await;
}
