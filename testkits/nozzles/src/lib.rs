//! Test support shared by the nozzles' end-to-end tests: the real pipeline in-process (agent →
//! doppler → firehose edge on ephemeral loopback ports, wired as `hydrant up` wires them), a
//! handle on a nozzle running on top of it, readers for the nozzle's admin pages, and
//! [`refusal`], the error a nozzle stops with when its config must be refused.
//!
//! A dev-dependency only; no role links it. Invariant: nothing here sleeps and hopes. Every
//! wait has a deadline and names what it waited for, every fixture binds `127.0.0.1:0`, and
//! dropping a [`Pipeline`] stops every role it started.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a fixture that cannot start, or a nozzle that will not stop, must fail \
              the test that asked for it"
)]

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hydrant_emitter::{Emitter, EmitterConfig, Registry};
use hydrant_firehose_client::ClientConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a fixture waits for the pipeline to carry a probe through to a nozzle, and for a
/// nozzle to stop. Generous: two-core machines build other crates while tests run.
const WITHIN: Duration = Duration::from_secs(40);

/// Runs role `R` with `config` on loopback listeners, as `hydrant run` would, and returns the
/// error it stops with: for a config the role must refuse before it reads anything. Fails the
/// test when the listeners cannot be bound or the role runs.
pub async fn refusal<R: hydrant_runtime::Role>(config: R::Config) -> String {
    let listeners = hydrant_runtime::bind::<R>(&config)
        .await
        .expect("the role's listeners bind on loopback");
    match hydrant_runtime::run::<R>(config, listeners, CancellationToken::new()).await {
        Ok(()) => panic!("{} ran with a config it must refuse", R::NAME),
        Err(e) => e.to_string(),
    }
}

/// Agent, doppler and firehose edge, running until this is dropped.
#[derive(Debug)]
pub struct Pipeline {
    /// The agent's v2 Ingress, `http://127.0.0.1:PORT`: where emitters send.
    pub agent: String,
    /// The firehose edge, `http://127.0.0.1:PORT`: what nozzles read.
    pub firehose: String,
    /// A token with the `firehose` scope, signed by the edge's key.
    pub token: String,
    /// Cancelled on drop; stops the three roles and every emitter made by [`Pipeline::emitter`].
    pub shutdown: CancellationToken,
    /// The roles' tasks and registries.
    _cloud: hydrant_microcloud::MicroCloud,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Pipeline {
    /// Starts agent, doppler and firehose edge on ephemeral ports through the micro cloud's
    /// own wiring (`hydrant_microcloud`, the one copy `hydrant up` uses), with short edge
    /// reconnect delays so a test does not wait on the edge's first attempt. The roles run
    /// until the pipeline is dropped.
    pub async fn start() -> Self {
        let shutdown = CancellationToken::new();
        let cloud = hydrant_microcloud::MicroCloud::start(
            hydrant_microcloud::Options::pipeline(),
            shutdown.clone(),
        )
        .await
        .expect("the pipeline starts on ephemeral loopback ports");
        let token = cloud.key.issue(
            &hydrant_auth::Claims::new("nozzle-test")
                .for_audience(hydrant_auth::AUD_LOGS)
                .with_scope(hydrant_auth::SCOPE_FIREHOSE),
        );
        Self {
            agent: cloud.agent_url.clone(),
            firehose: cloud.firehose_url.clone(),
            token,
            shutdown,
            _cloud: cloud,
        }
    }

    /// An emitter into the agent, as an app's executor would have.
    #[must_use]
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

    /// A nozzle's `[firehose]` section reading this pipeline: its URL and token, and reconnect
    /// delays short enough for a test (20 ms doubling to 200 ms).
    #[must_use]
    pub fn firehose_client(&self) -> ClientConfig {
        let mut client = ClientConfig::default();
        client.url.clone_from(&self.firehose);
        client.token.clone_from(&self.token);
        client.reconnect.initial_ms = 20;
        client.reconnect.max_ms = 200;
        client
    }
}

/// What [`Nozzle::wait_until_flowing`] emits until the nozzle has read one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A log line from source `probe` (for nozzles that forward logs).
    Log,
    /// A counter increment `probe` from source `probe` (for nozzles that aggregate metrics and
    /// would count a log as something they cannot send).
    Counter,
}

/// A nozzle's `run` on a task, and how to reach and stop it.
#[derive(Debug)]
pub struct Nozzle<E> {
    /// The nozzle's admin server (`/healthz`, `/metrics`, its own pages).
    pub admin: SocketAddr,
    /// Stops the nozzle.
    pub shutdown: CancellationToken,
    /// The task running `run`.
    pub task: JoinHandle<Result<(), E>>,
}

impl<E: Debug + Send + 'static> Nozzle<E> {
    /// Spawns `run` with a fresh shutdown token; `admin` is where its admin listener is bound.
    pub fn spawn<F>(admin: SocketAddr, run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self {
            admin,
            shutdown,
            task,
        }
    }

    /// Checks `config`, binds role `R`'s listeners where it names them (tests name
    /// `127.0.0.1:0`) and runs the role as `hydrant run` does.
    pub async fn start<R: hydrant_runtime::Role<Error = E>>(config: R::Config) -> Self {
        use hydrant_runtime::Validate as _;
        config.validate().expect("the test's config is valid");
        let listeners = hydrant_runtime::bind::<R>(&config)
            .await
            .expect("the role's listeners bind on loopback");
        let admin = listeners
            .local_addr("admin")
            .expect("a nozzle serves an admin listener");
        Self::spawn(admin, |shutdown| {
            hydrant_runtime::run::<R>(config, listeners, shutdown)
        })
    }

    /// Emits probes until the nozzle has read one: from then on the firehose path is open end
    /// to end, so nothing the test emits next can fall into a subscription not yet made.
    pub async fn wait_until_flowing(&self, emitter: &Emitter, probe: Probe) {
        hydrant_testkit::wait_for(WITHIN, "the firehose to reach the nozzle", || async {
            match probe {
                Probe::Log => emitter.log("probe", "0", "APP/PROC/WEB", b"probe", false),
                Probe::Counter => emitter.counter("probe", "0", "probe", 1, &[]),
            }
            emitter.flush();
            metric(&scrape(self.admin).await, "nozzle_envelopes_total", "") > 0
        })
        .await;
    }

    /// Stops the nozzle and fails the test unless `run` returns `Ok` in time.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(WITHIN, self.task)
            .await
            .expect("the nozzle stops");
        if let Err(e) = ended.expect("the nozzle's task does not panic") {
            panic!("the nozzle ended with an error: {e:?}");
        }
    }
}

/// The body of `GET path` on a nozzle's admin server.
pub async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let (_, body) = hydrant_testkit::admin_get(admin, path, None)
        .await
        .expect("GET on the admin server");
    body
}

/// The nozzle's `/metrics` text.
pub async fn scrape(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await
}

/// Sum of the samples of `name` whose labels contain `filter` (`""` for every sample).
#[must_use]
pub fn metric(text: &str, name: &str, filter: &str) -> u64 {
    metric_matching(text, name, &[filter])
}

/// Sum of the samples of `name` whose labels contain every one of `filters`.
#[must_use]
pub fn metric_matching(text: &str, name: &str, filters: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
