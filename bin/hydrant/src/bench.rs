//! `hydrant bench pipeline`: generators → agent → doppler → firehose edge → WebSocket consumer,
//! every hop a real socket on loopback, with 250-byte log envelopes.
//!
//! It reports throughput (envelopes/s), efficiency (envelopes per CPU-second of the whole
//! process: roles, generators and consumer together), latency from emit to consumer
//! (p50/p99/p99.9, hdrhistogram), and the ledger: emitted = delivered + Σ counted drops, read from
//! each role's own `/metrics`. Gap markers the doppler adds to the stream enter the ledger too
//! (injected, then delivered or counted as dropped). A non-zero `unaccounted` means the pipeline
//! lost (or invented) data silently.
//!
//! `hydrant bench syslog`: pre-built 250-byte log envelopes → the syslog nozzle's encoder →
//! its destination queue → `run_sender`/`TcpSender` → a real rsyslogd (imtcp, octet-counted),
//! against the same rsyslogd fed pre-encoded frames in big writes (its ceiling). Delivered
//! means written by rsyslog, counted in its output file.

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

use crate::up::MicroCloud;

/// `hydrant bench ...`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The log/metric pipeline end to end.
    Pipeline(PipelineArgs),
    /// The syslog nozzle's encoder and TCP sender into a real rsyslogd.
    Syslog(SyslogArgs),
    /// Route registrations from executors to routers through a real nats-server.
    Bus(crate::bench_bus::BusArgs),
    /// Container start latency and memory per container, N containers running at once (root).
    Containers(crate::bench_containers::ContainersArgs),
}

/// Arguments of `hydrant bench syslog`.
#[derive(Debug, clap::Args)]
pub struct SyslogArgs {
    /// How long each of the two runs (nozzle, raw ceiling) sends, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
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
    /// Run every hop (generators → agent → doppler → firehose edge) over mutual TLS, as
    /// `hydrant up` does; the generators present the `executor` certificate.
    #[arg(long)]
    tls: bool,
    /// Run twice, plaintext then mutual TLS, each in a fresh process, and report what TLS
    /// costs.
    #[arg(long, conflicts_with = "tls")]
    compare_tls: bool,
    /// Turn the dopplers' replay ring off (`replay_ring_bytes = 0`): the edge then subscribes
    /// like any v2 client and consumers get no cursor. For measuring what resumable
    /// subscriptions cost.
    #[arg(long)]
    no_replay: bool,
    /// Read the bench's firehose subscription from the doppler as a shard group, as an edge
    /// that shares subscriptions with other edges does (`shard_across_edges`; the micro cloud's
    /// one edge leaves it off). For measuring what several edges behind one name cost.
    #[arg(long)]
    shard_groups: bool,
    /// Turn fair drops between sources off at the agent, the doppler and the edge.
    #[arg(long)]
    no_fair: bool,
    /// Run twice, fair drops off then on, each in a fresh process, and report what fairness
    /// costs.
    #[arg(long, conflicts_with_all = ["compare_tls", "no_fair"])]
    compare_fair: bool,
}

/// Size of every generated envelope on the wire, as the issue specifies.
const ENVELOPE_BYTES: usize = 250;
/// Envelopes per generator batch (Loggregator's clients batch 100).
const BATCH: usize = 100;

#[derive(Debug, Serialize, serde::Deserialize)]
struct Report {
    /// Every hop ran mutual TLS.
    tls: bool,
    /// Fair drops between sources were on at the agent and the doppler.
    fair_share: bool,
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

#[derive(Debug, Serialize, serde::Deserialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Pipeline(args) => pipeline(args).await,
        BenchCommand::Syslog(args) => syslog(args).await,
        BenchCommand::Bus(args) => crate::bench_bus::run(args).await,
        BenchCommand::Containers(args) => crate::bench_containers::run(args).await,
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
    tls: Option<hydrant_tls::Connector>,
    sources: Vec<String>,
    rate: u64,
    stop: CancellationToken,
    emitted: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let channel = hydrant_tls::grpc::connect(
        &hydrant_envelope::raw::tuned_endpoint(&agent)?,
        tls.as_ref(),
    )
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
    cpu_seconds_of("self")
}

/// CPU time (user + system) process `pid` (or `self`) has used so far, as [`cpu_seconds`].
pub(crate) fn cpu_seconds_of(pid: &str) -> f64 {
    const USER_HZ: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
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
    let modes = if args.compare_tls {
        vec![(false, !args.no_fair), (true, !args.no_fair)]
    } else if args.compare_fair {
        vec![(args.tls, false), (args.tls, true)]
    } else {
        vec![(args.tls, !args.no_fair)]
    };
    let mut reports = Vec::with_capacity(modes.len());
    let compare = modes.len() > 1;
    for (tls, fair) in modes {
        reports.push(if compare {
            pipeline_child(&args, tls, fair).await?
        } else {
            pipeline_run(&args, tls, fair).await?
        });
    }
    if args.compare_fair {
        return compare_fair(&args, &reports);
    }
    // Throughput with TLS against without, from the same process and build.
    let cost = match reports.as_slice() {
        [plain, tls] if plain.envelopes_per_sec > 0.0 => {
            Some(100.0 * (1.0 - tls.envelopes_per_sec / plain.envelopes_per_sec))
        }
        _ => None,
    };
    if args.json {
        let json = match (&reports[..], cost) {
            ([plain, tls], Some(cost)) => serde_json::json!({
                "plaintext": plain,
                "tls": tls,
                "tls_throughput_cost_percent": cost,
            }),
            _ => serde_json::to_value(&reports[0])?,
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for r in &reports {
            print_report(r);
        }
        if let Some(cost) = cost {
            println!("mutual TLS costs {cost:.1} % of plaintext throughput");
        }
    }
    Ok(if reports.iter().all(|r| r.unaccounted == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `--compare-fair`: both reports, and fairness on against off from the same process and build.
fn compare_fair(args: &PipelineArgs, reports: &[Report]) -> anyhow::Result<ExitCode> {
    let change = |f: fn(&Report) -> f64| match reports {
        [off, on] if f(off) > 0.0 => Some(100.0 * (f(on) / f(off) - 1.0)),
        _ => None,
    };
    let throughput = change(|r| r.envelopes_per_sec);
    let efficiency = change(|r| r.envelopes_per_cpu_sec);
    if args.json {
        let json = match reports {
            [off, on] => serde_json::json!({
                "fair_off": off,
                "fair_on": on,
                "fair_throughput_change_percent": throughput,
                "fair_efficiency_change_percent": efficiency,
            }),
            _ => serde_json::to_value(reports)?,
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for r in reports {
            print_report(r);
        }
        if let (Some(t), Some(e)) = (throughput, efficiency) {
            println!(
                "fair drops on against off: throughput {t:+.1} %, envelopes per CPU-second {e:+.1} %"
            );
        }
    }
    Ok(if reports.iter().all(|r| r.unaccounted == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// One mode of a comparison, run by a fresh `hydrant bench pipeline` process. In one process the
/// second run found the first one's memory (the replay ring's 256 MiB, the log cache) already
/// faulted in and freed for reuse, and the first paid for it alone: plaintext-then-TLS runs
/// measured TLS's cost anywhere between −46 % and +75 % on one machine in one hour.
async fn pipeline_child(args: &PipelineArgs, tls: bool, fair: bool) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find this program to run a comparison")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["bench", "pipeline", "--json"])
        .args(["--duration", &args.duration.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--generators", &args.generators.to_string()])
        .args(["--sources", &args.sources.to_string()]);
    for (on, flag) in [
        (tls, "--tls"),
        (args.no_replay, "--no-replay"),
        (args.shard_groups, "--shard-groups"),
        (!fair, "--no-fair"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("cannot start a bench process")?;
    // Exit code 3 is a finished run whose ledger did not balance: its report still counts.
    if !matches!(out.status.code(), Some(0 | 3)) {
        anyhow::bail!("the bench process for one mode failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("the bench process printed no report")
}

/// One micro cloud, loaded for `args.duration`, drained, and measured.
async fn pipeline_run(args: &PipelineArgs, tls: bool, fair: bool) -> anyhow::Result<Report> {
    let shutdown = CancellationToken::new();
    let data_dir = tempfile_dir()?;
    let options = crate::up::Options {
        data_dir: Some(data_dir.clone()),
        edge_reconnect_ms: None,
        tls,
        replay_ring: !args.no_replay,
        shard_across_edges: args.shard_groups,
        fair_share: fair,
        ..crate::up::Options::pipeline()
    };
    let cloud = MicroCloud::start(options, shutdown.clone()).await?;
    // Under TLS the generators stand in for the executor and present its certificate.
    let generator_tls = cloud
        .certs
        .as_deref()
        .map(|dir| {
            let files = hydrant_tls::TlsFiles::in_dir(dir, hydrant_tls::Identity::Executor);
            let material = hydrant_tls::Material::load(&files)?;
            hydrant_tls::ClientTls::new(material, hydrant_tls::Identity::Agent)
                .map(hydrant_tls::Connector::new)
        })
        .transpose()?;

    let consumer =
        crate::bench_consumer::Consumer::start(&cloud.firehose_url, &cloud.token, "bench").await?;
    consumer.wait_connected(Duration::from_secs(10)).await?;

    let stop = CancellationToken::new();
    let emitted = Arc::new(AtomicU64::new(0));
    let per_gen_rate = args.rate / args.generators as u64;
    // Read before any generator starts: a batch delivered before this read would be missing
    // from `delivered` and show as unaccounted.
    let delivered0 = consumer.delivered();
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
            generator_tls.clone(),
            sources,
            per_gen_rate,
            stop.clone(),
            emitted.clone(),
        )));
    }
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let t0_ns = hydrant_envelope::now_nanos();
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
    let emitted = emitted.load(Ordering::Relaxed);
    // The agent and the doppler add gap markers and fair-share notices to the stream; later
    // hops may drop them and count it, so the ledger adds what was injected and removes the
    // markers that arrived (notices arrive as log lines and count as delivered). A notice made
    // by a sweep just before these reads is in flight for a moment, so read again until the
    // ledger holds still (at most 3 s). Injected first: what arrives later is never missed.
    let read = || {
        let injected = cloud.counter("doppler.gap_markers")
            + cloud.counter("agent.gap_markers")
            + cloud.counter("agent.fair_notices")
            + cloud.counter("doppler.fair_notices");
        let delivered = consumer.delivered() - delivered0;
        let markers = consumer.doppler_markers();
        let drops = cloud.drops();
        let dropped_total: u64 = drops.values().sum();
        let unaccounted =
            (emitted + injected) as i64 - delivered as i64 - markers as i64 - dropped_total as i64;
        (injected, delivered, drops, dropped_total, unaccounted)
    };
    let mut sample = read();
    let settle = Instant::now() + Duration::from_secs(3);
    while sample.4 != 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sample = read();
    }
    let (injected, delivered, drops, dropped_total, unaccounted) = sample;
    let hist = consumer.latency();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let report = Report {
        tls,
        fair_share: fair,
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
        unaccounted,
    };
    shutdown.cancel();
    cloud.stopped().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(report)
}

pub(crate) fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hydrant-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn print_report(r: &Report) {
    println!(
        "hydrant bench pipeline: generators → agent → doppler → firehose → WebSocket consumer{}",
        match (r.tls, r.fair_share) {
            (true, true) => " (mutual TLS on every hop)",
            (false, true) => " (plaintext)",
            (true, false) => " (mutual TLS on every hop, fair drops off)",
            (false, false) => " (plaintext, fair drops off)",
        }
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

/// One run of `hydrant bench syslog`.
#[derive(Debug, Serialize)]
struct SyslogRun {
    sent: u64,
    delivered: u64,
    dropped: u64,
    /// Delivered messages over the time from the first send to rsyslog's last write.
    messages_per_sec: f64,
    /// CPU time of this process while it sent (rsyslogd's own is not included).
    cpu_seconds: f64,
    envelopes_per_cpu_sec: f64,
}

#[derive(Debug, Serialize)]
struct SyslogReport {
    duration_secs: u64,
    envelope_bytes: usize,
    nozzle: SyslogRun,
    rsyslog_ceiling: SyslogRun,
}

/// Distinct envelopes the syslog bench cycles through.
const SYSLOG_ENVELOPES: usize = 1_000;

/// Log envelopes of ~250 bytes on the wire with the tags Cloud Foundry apps carry.
fn syslog_envelopes() -> Vec<Bytes> {
    use hydrant_envelope::v2;
    let base = hydrant_envelope::now_nanos();
    (0..SYSLOG_ENVELOPES)
        .map(|i| {
            let mut e = v2::Envelope {
                timestamp: base + i as i64 * 1_001_000,
                source_id: "6f1c8e6a-2b9d-4c47-9a43-0d7c5b1e2f30".to_owned(),
                instance_id: (i % 4).to_string(),
                tags: [
                    ("source_type", "APP/PROC/WEB"),
                    ("organization_name", "demo"),
                    ("space_name", "dev"),
                    ("app_name", "web"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
                ..v2::Envelope::default()
            };
            let head = hydrant_envelope::wire::encode(&e).len();
            let payload = format!("{i:06} GET /index.html 200 ");
            let pad = ENVELOPE_BYTES.saturating_sub(head + payload.len() + 6);
            e.message = Some(v2::envelope::Message::Log(v2::Log {
                payload: format!("{payload}{}", "x".repeat(pad)).into_bytes().into(),
                r#type: 0,
            }));
            hydrant_envelope::wire::encode(&e)
        })
        .collect()
}

/// Polls rsyslog's output until it holds `want` lines or stops growing for 5 s; returns the
/// count and when it last grew.
async fn wait_for_lines(
    rsyslogd: &hydrant_nozzle_syslog::rsyslogd::Rsyslogd,
    want: u64,
) -> anyhow::Result<(u64, Instant)> {
    let mut last = rsyslogd.lines()?;
    let mut grew = Instant::now();
    while last < want && grew.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = rsyslogd.lines()?;
        if now != last {
            last = now;
            grew = Instant::now();
        }
    }
    Ok((last, grew))
}

fn syslog_run(sent: u64, delivered: u64, dropped: u64, secs: f64, cpu: f64) -> SyslogRun {
    SyslogRun {
        sent,
        delivered,
        dropped,
        messages_per_sec: delivered as f64 / secs.max(0.001),
        cpu_seconds: cpu,
        envelopes_per_cpu_sec: if cpu > 0.0 {
            delivered as f64 / cpu
        } else {
            0.0
        },
    }
}

/// The nozzle's own path, as its reader loop drives it: encode each envelope once, push the
/// frames to the drain's queue, and let `run_sender` write batches over one connection. The
/// producer waits while the queue is half full, so nothing is evicted and the rate is what
/// the sender and rsyslog sustain.
async fn syslog_nozzle(
    rsyslogd: &hydrant_nozzle_syslog::rsyslogd::Rsyslogd,
    envelopes: &[Bytes],
    duration: Duration,
) -> anyhow::Result<SyslogRun> {
    use hydrant_nozzle_core::{CircuitBreaker, DestinationQueue, NozzleMetrics, QueueLimits};
    use hydrant_nozzle_syslog::{EncoderOptions, TcpSender, encode, run_sender};

    let views = envelopes
        .iter()
        .map(|b| hydrant_envelope::wire::EnvelopeView::parse(b))
        .collect::<Result<Vec<_>, _>>()
        .context("a bench envelope does not parse")?;
    let url = format!("syslog://127.0.0.1:{}", rsyslogd.port);
    let registry = hydrant_emitter::Registry::new(hydrant_nozzle_syslog::ROLE, "bench");
    let metrics = NozzleMetrics::new(&registry, &url);
    let limits = QueueLimits::default();
    let high_water = limits.max_items / 2;
    let queue = Arc::new(DestinationQueue::new(limits, metrics.clone()));
    let sender = TcpSender::new(
        format!("127.0.0.1:{}", rsyslogd.port),
        &url,
        Duration::from_secs(10),
    );
    let task = tokio::spawn(run_sender(
        Arc::clone(&queue),
        sender,
        hydrant_nozzle_core::Backoff::default(),
        CircuitBreaker::new(hydrant_nozzle_core::BreakerConfig::default()),
        metrics.clone(),
        CancellationToken::new(),
    ));
    let options = EncoderOptions::default();
    let before = rsyslogd.lines()?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut buf = Vec::with_capacity(4096);
    let mut sent = 0u64;
    'produce: while t0.elapsed() < duration {
        while queue.depth().0 >= high_water {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if t0.elapsed() >= duration {
                break 'produce;
            }
        }
        for view in views.iter().take(BATCH * 10) {
            buf.clear();
            sent += encode(view, &options, &mut buf) as u64;
            let frames = Bytes::copy_from_slice(&buf);
            metrics.received(1);
            queue.push(frames.clone(), frames.len());
        }
        tokio::task::yield_now().await;
    }
    queue.close();
    task.await.context("the syslog sender panicked")?;
    let cpu = cpu_seconds() - cpu0;
    let (lines, last) = wait_for_lines(rsyslogd, before + sent).await?;
    Ok(syslog_run(
        sent,
        lines - before,
        metrics.dropped_total(),
        (last - t0).as_secs_f64(),
        cpu,
    ))
}

/// rsyslog's ceiling: the same frames pre-encoded into one buffer and written in 256 KiB
/// chunks over one blocking connection, with no encoding, queueing or batching on our side.
async fn syslog_ceiling(
    rsyslogd: &hydrant_nozzle_syslog::rsyslogd::Rsyslogd,
    envelopes: &[Bytes],
    duration: Duration,
) -> anyhow::Result<SyslogRun> {
    use std::io::Write as _;

    let options = hydrant_nozzle_syslog::EncoderOptions::default();
    let mut frames = Vec::with_capacity(envelopes.len() * 400);
    let mut per_pass = 0u64;
    for bytes in envelopes {
        let view = hydrant_envelope::wire::EnvelopeView::parse(bytes)
            .context("a bench envelope does not parse")?;
        per_pass += hydrant_nozzle_syslog::encode(&view, &options, &mut frames) as u64;
    }
    let addr = ("127.0.0.1", rsyslogd.port);
    let before = rsyslogd.lines()?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let sent = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut tcp = std::net::TcpStream::connect(addr)?;
        let mut sent = 0;
        while t0.elapsed() < duration {
            for chunk in frames.chunks(256 * 1024) {
                tcp.write_all(chunk)?;
            }
            sent += per_pass;
        }
        tcp.flush()?;
        Ok(sent)
    })
    .await
    .context("the raw sender panicked")?
    .context("the raw sender failed")?;
    let cpu = cpu_seconds() - cpu0;
    let (lines, last) = wait_for_lines(rsyslogd, before + sent).await?;
    Ok(syslog_run(
        sent,
        lines - before,
        0,
        (last - t0).as_secs_f64(),
        cpu,
    ))
}

async fn syslog(args: SyslogArgs) -> anyhow::Result<ExitCode> {
    use hydrant_nozzle_syslog::rsyslogd::{COUNT_TEMPLATE, Rsyslogd};

    if args.duration == 0 {
        anyhow::bail!("--duration must be at least 1");
    }
    let rsyslogd = tokio::task::spawn_blocking(|| Rsyslogd::start(COUNT_TEMPLATE))
        .await
        .context("starting rsyslogd panicked")?
        .context("cannot start rsyslogd")?;
    let envelopes = syslog_envelopes();
    let duration = Duration::from_secs(args.duration);
    let nozzle = syslog_nozzle(&rsyslogd, &envelopes, duration).await?;
    let ceiling = syslog_ceiling(&rsyslogd, &envelopes, duration).await?;
    let report = SyslogReport {
        duration_secs: args.duration,
        envelope_bytes: envelopes.first().map_or(0, Bytes::len),
        nozzle,
        rsyslog_ceiling: ceiling,
    };
    let complete = [&report.nozzle, &report.rsyslog_ceiling]
        .iter()
        .all(|r| r.delivered == r.sent && r.dropped == 0);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "hydrant bench syslog: encoder → queue → TCP sender → rsyslogd (imtcp, octet-counted)"
        );
        println!(
            "  envelopes           {} bytes on the wire, {} s per run",
            report.envelope_bytes, report.duration_secs
        );
        for (name, r) in [
            ("nozzle", &report.nozzle),
            ("rsyslog ceiling", &report.rsyslog_ceiling),
        ] {
            println!(
                "  {name:<19} {:.0} messages/s ({} sent, {} written, {} dropped; {:.0} per CPU-second of hydrant)",
                r.messages_per_sec, r.sent, r.delivered, r.dropped, r.envelopes_per_cpu_sec
            );
        }
    }
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
