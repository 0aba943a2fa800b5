//! One OTLP nozzle end to end: app logs emitted at a fixed rate into the real in-process
//! pipeline (agent → doppler → firehose edge), the nozzle reading the firehose and exporting
//! to a local OTLP/gRPC receiver that decodes every request and counts its records. Prints
//! the offered rate, the rate the receiver took records at, and every counted loss.
//!
//! Everything (pipeline, nozzle, receiver, emitter) shares the machine's cores, so the
//! number is a floor for the nozzle alone. Run with
//! `cargo bench -p hydrant-nozzle-otlp --bench pipeline` (`OTLP_BENCH_RATE`, `OTLP_BENCH_SECS`
//! override the 100,000/s for 5 s).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "bench code"
)]

#[path = "../tests/support/pipeline.rs"]
#[allow(dead_code, reason = "shared with the tests")]
mod pipeline;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hydrant_nozzle_core::QueueLimits;
use hydrant_nozzle_testkit::{Pipeline, Probe, metric, scrape};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use pipeline::{nozzle_config, start_nozzle};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, Default)]
struct Counting(Arc<AtomicU64>);

#[tonic::async_trait]
impl LogsService for Counting {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let n: usize = request
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rate = env_or("OTLP_BENCH_RATE", 100_000);
    let secs = env_or("OTLP_BENCH_SECS", 5);
    let counting = Counting::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        hydrant_envelope::raw::tuned_server()
            .add_service(LogsServiceServer::new(counting.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let pipeline = Pipeline::start().await;
    let mut config = nozzle_config(&pipeline, &format!("http://{addr}"));
    config.export_metrics = false;
    config.queue = QueueLimits {
        max_items: 200_000,
        max_bytes: 256 * 1024 * 1024,
        batch_items: 2_000,
        batch_bytes: 1024 * 1024,
    };
    let nozzle = start_nozzle(config).await;
    let emitter = pipeline.emitter();
    nozzle.wait_until_flowing(&emitter, Probe::Log).await;
    let before = counting.0.load(Ordering::Relaxed);

    let payload = format!("GET /index.html 200 {}", "x".repeat(160));
    let tags = [
        ("source_type", "APP/PROC/WEB"),
        ("organization_name", "demo"),
        ("space_name", "dev"),
        ("app_name", "web"),
    ];
    let total = rate * secs;
    let tick = Duration::from_millis(1);
    let per_tick = (rate / 1_000).max(1);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = tokio::time::Instant::now();
    while sent < total {
        for _ in 0..per_tick.min(total - sent) {
            emitter.log_with_tags("bench-app", "0", payload.as_bytes(), false, &tags);
            sent += 1;
        }
        next += tick;
        tokio::time::sleep_until(next).await;
    }
    emitter.flush();
    let offered = start.elapsed();

    // Done once every record the nozzle received is sent or dropped and the receiver's count
    // has stood still for a second; the rate runs to the last record's arrival.
    let mut last = 0;
    let mut last_change = Instant::now();
    let finished = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = scrape(nozzle.admin).await;
        let received = metric(&text, "nozzle_received_total", "");
        let done =
            metric(&text, "nozzle_sent_total", "") + metric(&text, "nozzle_dropped_total", "");
        let got = counting.0.load(Ordering::Relaxed);
        if got != last {
            last = got;
            last_change = Instant::now();
        }
        let still = last_change.elapsed() > Duration::from_secs(1);
        if (still && received == done) || start.elapsed() > Duration::from_secs(secs * 10 + 30) {
            break (last_change - start, text);
        }
    };
    let (elapsed, text) = finished;
    let delivered = counting.0.load(Ordering::Relaxed) - before;
    println!(
        "offered {total} logs at {:.0}/s over {:.2} s; the receiver took {delivered} in {:.2} s = {:.0} records/s",
        total as f64 / offered.as_secs_f64(),
        offered.as_secs_f64(),
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "nozzle: envelopes {} received {} sent {} dropped {} (queue_full {}) retries {}; firehose lost {}",
        metric(&text, "nozzle_envelopes_total", ""),
        metric(&text, "nozzle_received_total", ""),
        metric(&text, "nozzle_sent_total", ""),
        metric(&text, "nozzle_dropped_total", ""),
        metric(&text, "nozzle_dropped_total", "reason=\"queue_full\""),
        metric(&text, "nozzle_retries_total", ""),
        metric(&text, "nozzle_firehose_lost_total", ""),
    );
    nozzle.stop().await;
}
