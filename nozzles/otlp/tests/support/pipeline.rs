//! The real pipeline in-process, as `hydrant up` wires it (agent → doppler → firehose edge on
//! ephemeral loopback ports), an emitter into it, and the OTLP nozzle reading its firehose.

use std::net::SocketAddr;
use std::time::Duration;

use hydrant_emitter::{Emitter, EmitterConfig, Registry};
use hydrant_nozzle_core::{Backoff, BreakerConfig};
use hydrant_nozzle_otlp::{Config, Headers, Listeners};
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

pub async fn start_pipeline() -> Pipeline {
    let shutdown = CancellationToken::new();
    let key = hydrant_auth::SigningKey::from_bytes(&[9u8; 32]).unwrap();
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
    let token =
        key.issue(&hydrant_auth::Claims::new("otlp-test").with_scope(hydrant_auth::SCOPE_FIREHOSE));
    Pipeline {
        agent,
        firehose,
        token,
        shutdown,
    }
}

impl Pipeline {
    pub fn emitter(&self) -> Emitter {
        let registry = Registry::new("otlp-test-app", "0");
        Emitter::start(
            EmitterConfig {
                agent: self.agent.clone(),
                ..EmitterConfig::default()
            },
            &registry,
            self.shutdown.clone(),
        )
    }

    /// A config for a nozzle on this pipeline exporting to `endpoint`, with test-sized retry
    /// and breaker timings.
    pub fn config(&self, endpoint: &str) -> Config {
        let mut config = Config {
            endpoint: endpoint.to_owned(),
            headers: Headers(
                [("authorization".to_owned(), "Bearer s3cret-token".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            flush_interval_ms: 20,
            retry: Backoff {
                initial_ms: 10,
                max_ms: 50,
                jitter: 0.0,
                max_retries: 3,
            },
            breaker: BreakerConfig {
                failure_threshold: 3,
                open_ms: 50,
            },
            export_timeout_ms: 2_000,
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
    pub task: JoinHandle<Result<(), hydrant_nozzle_otlp::Error>>,
}

impl Nozzle {
    pub async fn start(config: Config) -> Self {
        config.validate().unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hydrant_nozzle_otlp::run(
            config,
            listeners,
            shutdown.clone(),
        ));
        Self {
            admin,
            shutdown,
            task,
        }
    }

    /// The nozzle's `/metrics` text.
    pub async fn scrape(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    }

    /// Stops the nozzle and checks it ends cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the nozzle stops")
            .unwrap()
            .unwrap();
    }

    /// Emits probe logs until the nozzle has read one: from then on the firehose path is
    /// open end to end, so nothing emitted next can fall into a subscription not yet made.
    pub async fn wait_until_flowing(&self, emitter: &Emitter) {
        hydrant_testkit::wait_for(
            Duration::from_secs(30),
            "the firehose to reach the nozzle",
            || async {
                emitter.log("probe", "0", "APP/PROC/WEB", b"probe", false);
                emitter.flush();
                metric(&self.scrape().await, "nozzle_envelopes_total", "") > 0
            },
        )
        .await;
    }
}

/// Sum of the samples of `name` whose labels contain `filter`.
pub fn metric(text: &str, name: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
