//! `hydrant bench pipeline`: generators → agent → doppler → firehose edge → WebSocket consumer,
//! every hop a real socket on loopback, with 250-byte log envelopes.
//!
//! It reports throughput (envelopes/s), efficiency (envelopes per CPU-second of the whole
//! process: roles, generators and consumer together), latency from emit to consumer
//! (p50/p99/p99.9, hdrhistogram), and the ledger: emitted = delivered + Σ counted drops, read from
//! each role's own `/metrics`. Gap markers the doppler adds to the stream enter the ledger too
//! (injected, then delivered or counted as dropped). A non-zero `unaccounted` means the pipeline
//! lost (or invented) data silently.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use hydrant_envelope::wire::BatchBuilder;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::up::{MicroCloud, Ports};

/// `hydrant bench ...`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The log/metric pipeline end to end.
    Pipeline(PipelineArgs),
}

/// Arguments of `hydrant bench pipeline`.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// How long to generate load, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Target envelopes/s across all generators; 0 = as fast as the agent accepts.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Concurrent generator streams into the agent.
    #[arg(long, default_value_t = 2)]
    generators: usize,
    /// Distinct source ids the generators cycle through.
    #[arg(long, default_value_t = 16)]
    sources: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Size of every generated envelope on the wire, as the issue specifies.
const ENVELOPE_BYTES: usize = 250;
/// Envelopes per generator batch (Loggregator's clients batch 100).
const BATCH: usize = 100;

#[derive(Debug, Serialize)]
struct Report {
    duration_secs: f64,
    target_rate: u64,
    emitted: u64,
    delivered: u64,
    envelopes_per_sec: f64,
    cpu_seconds: f64,
    envelopes_per_cpu_sec: f64,
    latency_ms: Latency,
    drops: BTreeMap<String, u64>,
    dropped_total: u64,
    /// Envelopes the consumer was told it lost through in-band gap markers.
    gap_reported: u64,
    /// Gap marker envelopes the doppler added to the stream (part of the ledger).
    gap_markers_injected: u64,
    unaccounted: i64,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Pipeline(args) => pipeline(args).await,
    }
}

/// A template envelope whose timestamp is the first field with a fixed 9-byte varint, so a
/// generator stamps the emit time by overwriting bytes instead of re-encoding.
fn template(source: &str) -> BytesMut {
    let mut tags = BytesMut::new();
    put_len_field(&mut tags, 9, &map_entry("source_type", "APP/PROC/WEB"));
    let head_len = 1 + 9 + 2 + source.len() + 3 + tags.len() + 2 + 2;
    let payload_len = ENVELOPE_BYTES.saturating_sub(head_len + 2 + 2);
    let mut log = BytesMut::new();
    put_len_field(&mut log, 1, &vec![b'x'; payload_len]);
    let mut e = BytesMut::with_capacity(ENVELOPE_BYTES);
    e.put_u8(0x08); // field 1, varint
    put_varint9(&mut e, 0);
    put_len_field(&mut e, 2, source.as_bytes());
    put_len_field(&mut e, 8, b"0");
    e.put_slice(&tags);
    put_len_field(&mut e, 4, &log);
    e
}

fn map_entry(k: &str, v: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    put_len_field(&mut b, 1, k.as_bytes());
    put_len_field(&mut b, 2, v.as_bytes());
    b.to_vec()
}

fn put_len_field(b: &mut BytesMut, field: u8, data: &[u8]) {
    b.put_u8(field << 3 | 2);
    let mut len = data.len();
    while len >= 0x80 {
        b.put_u8((len as u8) | 0x80);
        len >>= 7;
    }
    b.put_u8(len as u8);
    b.put_slice(data);
}

/// A varint padded to exactly 9 bytes (valid protobuf: continuation bits on the padding).
fn put_varint9(b: &mut BytesMut, v: u64) {
    let mut v = v;
    for _ in 0..8 {
        b.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8 & 0x7f);
}

fn stamp(envelope: &mut [u8], nanos: u64) {
    let mut v = nanos;
    for byte in envelope.iter_mut().skip(1).take(8) {
        *byte = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
    }
    if let Some(last) = envelope.get_mut(9) {
        *last = v as u8 & 0x7f;
    }
}

async fn generator(
    agent: String,
    sources: Vec<String>,
    rate: u64,
    stop: CancellationToken,
    emitted: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let channel = hydrant_envelope::raw::tuned_endpoint(&agent)?
        .connect()
        .await?;
    let mut client = hydrant_envelope::raw::ingress::ingress_client::IngressClient::new(channel)
        .max_encoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let call = tokio::spawn(async move {
        client
            .batch_sender(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let mut templates: Vec<BytesMut> = sources.iter().map(|s| template(s)).collect();
    let mut builder = BatchBuilder::with_capacity(BATCH * (ENVELOPE_BYTES + 3));
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut next_source = 0usize;
    while !stop.is_cancelled() {
        if rate > 0 {
            // Pace in 1 ms steps: send what is owed, then sleep.
            let owed = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent + BATCH as u64 > owed {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        let now = hydrant_envelope::now_nanos() as u64;
        let t = &mut templates[next_source % sources.len()];
        next_source += 1;
        stamp(t, now);
        for _ in 0..BATCH {
            builder.push(t);
        }
        if tx.send(builder.take()).await.is_err() {
            break;
        }
        sent += BATCH as u64;
        emitted.fetch_add(BATCH as u64, Ordering::Relaxed);
    }
    drop(tx);
    call.await
        .context("generator task failed")?
        .context("the agent ended the generator's stream")?;
    Ok(())
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`.
///
/// Fields 14 and 15 count clock ticks of `USER_HZ`, which Linux fixes at 100 for every
/// userspace ABI, so no `sysconf` call is needed. Off Linux the bench reports 0 CPU seconds and
/// the per-CPU-second figure is omitted.
fn cpu_seconds() -> f64 {
    const USER_HZ: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) may contain spaces; everything after its closing ')' is
    // space-separated, starting at field 3.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let ticks = |f: Option<&str>| f.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let utime = ticks(fields.next());
    let stime = ticks(fields.next());
    (utime + stime) as f64 / USER_HZ
}

async fn pipeline(args: PipelineArgs) -> anyhow::Result<ExitCode> {
    if args.generators == 0 || args.sources == 0 || args.duration == 0 {
        anyhow::bail!("--generators, --sources and --duration must be at least 1");
    }
    let shutdown = CancellationToken::new();
    let data_dir = tempfile_dir()?;
    let options = crate::up::Options {
        self_telemetry: false,
        platform: false,
        app_log_rate_limit: 0,
    };
    let cloud = MicroCloud::start(&data_dir, Ports::Ephemeral, options, shutdown.clone()).await?;

    let consumer =
        crate::bench_consumer::Consumer::start(&cloud.firehose_url, &cloud.token, "bench").await?;
    consumer.wait_connected(Duration::from_secs(10)).await?;

    let stop = CancellationToken::new();
    let emitted = Arc::new(AtomicU64::new(0));
    let per_gen_rate = args.rate / args.generators as u64;
    let mut gens = Vec::new();
    for g in 0..args.generators {
        let sources: Vec<String> = (0..args.sources)
            .filter(|s| s % args.generators == g)
            .map(|s| format!("bench-{s:04}"))
            .collect();
        let sources = if sources.is_empty() {
            vec![format!("bench-g{g}")]
        } else {
            sources
        };
        gens.push(tokio::spawn(generator(
            cloud.agent_url.clone(),
            sources,
            per_gen_rate,
            stop.clone(),
            emitted.clone(),
        )));
    }
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let t0_ns = hydrant_envelope::now_nanos();
    let delivered0 = consumer.delivered();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.cancel();
    for g in gens {
        g.await.context("generator panicked")??;
    }
    let gen_elapsed = t0.elapsed();
    // Let the pipeline drain: stop when nothing has arrived for a second.
    let mut last = consumer.delivered();
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = consumer.delivered();
        if now == last || Instant::now() > drain_deadline {
            break;
        }
        last = now;
    }
    let cpu = cpu_seconds() - cpu0;
    let elapsed = t0.elapsed();
    let delivered = consumer.delivered() - delivered0;
    let emitted = emitted.load(Ordering::Relaxed);

    let drops = cloud.scrape_drops().await?;
    // The doppler adds gap markers to the stream; later hops may drop them and count it, so
    // the ledger adds what was injected and removes the markers that arrived.
    let injected = cloud.scrape_counter("doppler_gap_markers_total").await?;
    let dropped_total: u64 = drops.values().sum();
    let hist = consumer.latency();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let report = Report {
        duration_secs: gen_elapsed.as_secs_f64(),
        target_rate: args.rate,
        emitted,
        delivered,
        // From the first emit to the last delivery: the drain wait after it is not work.
        envelopes_per_sec: delivered as f64
            / ((consumer.last_delivery_ns() - t0_ns) as f64 / 1e9)
                .min(elapsed.as_secs_f64())
                .max(0.001),
        gap_reported: consumer.gap_reported(),
        cpu_seconds: cpu,
        envelopes_per_cpu_sec: if cpu > 0.0 {
            delivered as f64 / cpu
        } else {
            0.0
        },
        latency_ms: Latency {
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: hist.max() as f64 / 1000.0,
        },
        drops,
        dropped_total,
        gap_markers_injected: injected,
        unaccounted: (emitted + injected) as i64
            - delivered as i64
            - consumer.doppler_markers() as i64
            - dropped_total as i64,
    };
    shutdown.cancel();
    cloud.stopped().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.unaccounted == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hydrant-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn print_report(r: &Report) {
    println!(
        "hydrant bench pipeline: generators → agent → doppler → firehose → WebSocket consumer"
    );
    println!(
        "  duration            {:.1} s (target rate: {})",
        r.duration_secs,
        if r.target_rate == 0 {
            "max".to_owned()
        } else {
            format!("{}/s", r.target_rate)
        }
    );
    println!(
        "  throughput          {:.0} envelopes/s",
        r.envelopes_per_sec
    );
    println!(
        "  efficiency          {:.0} envelopes per CPU-second ({:.1} CPU-s)",
        r.envelopes_per_cpu_sec, r.cpu_seconds
    );
    println!(
        "  latency (emit→consumer)  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.p999, r.latency_ms.max
    );
    println!("  ledger");
    println!("    emitted           {}", r.emitted);
    println!("    delivered         {}", r.delivered);
    for (k, v) in &r.drops {
        println!("    dropped {k:<24} {v}");
    }
    println!("    unaccounted       {}", r.unaccounted);
    println!(
        "  in-band gap markers told the consumer of {} lost envelopes",
        r.gap_reported
    );
}
