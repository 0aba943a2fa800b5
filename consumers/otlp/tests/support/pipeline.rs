//! The OTLP nozzle on the shared in-process pipeline (agent → doppler → firehose edge, from
//! `hydrant-nozzle-testkit`), with test-sized retry and breaker timings.

use hydrant_nozzle_core::{Backoff, BreakerConfig};
use hydrant_nozzle_otlp::{Config, Headers};
use hydrant_nozzle_testkit::Pipeline;

/// The OTLP nozzle running on a task.
pub type Nozzle = hydrant_nozzle_testkit::Nozzle<hydrant_nozzle_otlp::Error>;

/// A config for a nozzle on `pipeline` exporting to `endpoint`, with test-sized retry and
/// breaker timings.
pub fn nozzle_config(pipeline: &Pipeline, endpoint: &str) -> Config {
    Config {
        firehose: pipeline.firehose_client(),
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
    }
}

/// Starts the nozzle through `run`, as the binary does.
pub async fn start_nozzle(config: Config) -> Nozzle {
    Nozzle::start::<hydrant_nozzle_otlp::OtlpNozzle>(config).await
}
