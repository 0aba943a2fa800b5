//! `hydrant bench bus`: route registrations through a real `nats-server`, as executors publish
//! them and routers read them, over the bus's own client and (by default) mutual TLS with the
//! permissions `hydrant certs nats-config` writes.
//!
//! Publishers stand for executors: each sends gorouter-shaped `RegistryMessage`s on its cell's
//! `router.register.<cell>`, as fast as the server confirms (batches of 256 then a flush, so the
//! bus's bounded publish queue never overflows) or at `--rate`. Subscribers stand for routers:
//! each receives every registration and parses its JSON, as the router does. The report gives
//! registrations/s published and delivered, the end-to-end latency, what the bus dropped and
//! why (read from its own counters), and the CPU the server and this process spent, per
//! thousand messages: the numbers the scale estimate in `docs/scale.md` rests on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hydrant_bus::messages::{RegistryMessage, router_register_subject};
use hydrant_bus::nats_config::{self, ServerTls};
use hydrant_bus::{Bus, Config, TlsFiles};
use hydrant_emitter::Registry;
use hydrant_tls::Identity;
use hydrant_tls::issue::{self, CertDir};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::bench::{cpu_seconds_of, tempfile_dir};

/// Messages a publisher sends before it waits for the server to confirm them.
const FLUSH_EVERY: usize = 256;
/// How long the subscribers may take to receive the tail after the publishers stop.
const DRAIN: Duration = Duration::from_secs(5);

/// Arguments of `hydrant bench bus`.
#[derive(Debug, clap::Args)]
pub struct BusArgs {
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Publishers (executors), each on its own connection and cell subject.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Subscribers (routers), each receiving every registration.
    #[arg(long, default_value_t = 2)]
    subscribers: usize,
    /// Target registrations/s across all publishers; 0 = as fast as the server confirms.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Run the bus without TLS (the platform runs it with mutual TLS).
    #[arg(long)]
    plaintext: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    tls: bool,
    publishers: usize,
    subscribers: usize,
    duration_secs: f64,
    target_rate: u64,
    published: u64,
    published_per_sec: f64,
    delivered: u64,
    delivered_per_sec: f64,
    /// Deliveries the subscribers missed: published × subscribers − delivered.
    missing: u64,
    /// What the bus counted as dropped, by reason, on both ends.
    dropped: u64,
    /// Subscriber connections the server cut off for reading too slowly (its `/varz`): what
    /// they missed is lost on the server, where no client can count it.
    server_slow_consumers: u64,
    /// Every non-zero `bus.*` counter of publishers and subscribers together.
    counters: std::collections::BTreeMap<String, u64>,
    latency_ms: Latency,
    server_cpu_seconds: f64,
    /// nats-server CPU per thousand deliveries (each publish fanned out to every subscriber).
    server_cpu_ms_per_1000_deliveries: f64,
    client_cpu_seconds: f64,
    client_cpu_ms_per_1000_deliveries: f64,
    message_bytes: usize,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// A `nats-server` child, killed on drop.
struct Server {
    child: Child,
    port: u16,
    /// The server's monitoring port (`/varz`).
    monitor_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(args: BusArgs) -> anyhow::Result<ExitCode> {
    if args.duration == 0 || args.publishers == 0 || args.subscribers == 0 {
        anyhow::bail!("--duration, --publishers and --subscribers must be at least 1");
    }
    let dir = tempfile_dir()?.join("bus");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let certs = (!args.plaintext)
        .then(|| {
            issue::ensure(
                &dir.join("certs"),
                &[Identity::Router, Identity::Executor, Identity::Nats],
                &["localhost".to_owned(), "127.0.0.1".to_owned()],
            )
        })
        .transpose()?;
    let server = start_server(&dir, certs.as_ref())?;
    let config = |identity: Identity| Config {
        tls: certs.as_ref().map(|c| TlsFiles {
            ca_file: c.ca_file(),
            cert_file: c.cert_file(identity),
            key_file: c.key_file(identity),
        }),
        ..Config::nats(&format!("nats://127.0.0.1:{}", server.port))
    };

    let registries: Vec<Registry> = (0..args.publishers + args.subscribers)
        .map(|i| Registry::new("bench", &i.to_string()))
        .collect();
    let (pub_registries, sub_registries) = registries.split_at(args.publishers);
    let histogram = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .context("latency histogram")?,
    ));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for registry in sub_registries {
        let bus = Bus::connect(&config(Identity::Router), registry).await?;
        let mut sub = bus.subscribe("router.register.*").await?;
        let (delivered, histogram) = (Arc::clone(&delivered), Arc::clone(&histogram));
        readers.push(tokio::spawn(async move {
            let _bus = bus;
            let mut local = hdrhistogram::Histogram::<u64>::new(3).ok();
            while let Some(message) = sub.next().await {
                let Ok(reg) = message.json::<RegistryMessage>() else {
                    continue;
                };
                delivered.fetch_add(1, Ordering::Relaxed);
                if let (Some(h), Some(sent)) = (local.as_mut(), sent_micros(&reg)) {
                    let _ = h.record(now_micros().saturating_sub(sent).max(1));
                }
                if delivered.load(Ordering::Relaxed) % 4096 == 0
                    && let Some(h) = local.as_mut()
                {
                    let _ = histogram.lock().await.add(&*h);
                    h.reset();
                }
            }
            if let Some(h) = local {
                let _ = histogram.lock().await.add(&h);
            }
        }));
    }

    let message_bytes = serde_json::to_vec(&registration(0, u64::MAX))?.len();
    let published = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let per_publisher = args.rate / args.publishers as u64;
    let (server_cpu0, client_cpu0, start) = (
        cpu_seconds_of(&server.child.id().to_string()),
        cpu_seconds_of("self"),
        Instant::now(),
    );
    let mut writers = Vec::new();
    for (i, registry) in pub_registries.iter().enumerate() {
        let bus = Bus::connect(&config(Identity::Executor), registry).await?;
        let published = Arc::clone(&published);
        writers.push(tokio::spawn(async move {
            let subject = router_register_subject(&format!("cell-{i}"));
            publish(&bus, &subject, deadline, per_publisher, &published).await;
            let _ = bus.flush().await;
        }));
    }
    for writer in writers {
        writer.await?;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let published = published.load(Ordering::Relaxed);
    let expected = published * args.subscribers as u64;
    let drain_deadline = Instant::now() + DRAIN;
    // Until everything arrived, or nothing more arrives for a while (a slow consumer cut off).
    let (mut last, mut last_change) = (0, Instant::now());
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > Duration::from_millis(500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = last_change
        .max(start + Duration::from_secs_f64(publish_secs))
        .duration_since(start)
        .as_secs_f64();
    let slow_consumers = server_varz(server.monitor_port, "slow_consumers").await;
    let server_cpu = cpu_seconds_of(&server.child.id().to_string()) - server_cpu0;
    let client_cpu = cpu_seconds_of("self") - client_cpu0;
    for reader in &readers {
        reader.abort();
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let delivered = delivered.load(Ordering::Relaxed);
    let dropped: u64 = registries
        .iter()
        .map(|r| r.counter_sum("bus.dropped", &[]))
        .sum();
    let mut counters = std::collections::BTreeMap::new();
    for registry in &registries {
        for (name, tags, value) in registry.counters() {
            if !name.starts_with("bus.") || value == 0 {
                continue;
            }
            let reason = tags
                .iter()
                .find(|(k, _)| k == "reason")
                .map(|(_, v)| format!("{{{v}}}"))
                .unwrap_or_default();
            *counters.entry(format!("{name}{reason}")).or_insert(0) += value;
        }
    }
    let h = histogram.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let per_1000 = |cpu: f64| 1e6 * cpu / delivered.max(1) as f64;
    let report = Report {
        tls: certs.is_some(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        duration_secs: publish_secs,
        target_rate: args.rate,
        published,
        published_per_sec: published as f64 / publish_secs,
        delivered,
        delivered_per_sec: delivered as f64 / elapsed,
        missing: expected.saturating_sub(delivered),
        dropped,
        server_slow_consumers: slow_consumers,
        counters,
        latency_ms: Latency {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        },
        server_cpu_seconds: server_cpu,
        server_cpu_ms_per_1000_deliveries: per_1000(server_cpu),
        client_cpu_seconds: client_cpu,
        client_cpu_ms_per_1000_deliveries: per_1000(client_cpu),
        message_bytes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    // Every missing delivery must be a counted drop or lie with a consumer the server cut off
    // (which the server counts); anything else is a silent loss.
    Ok(
        if report.missing <= report.dropped || report.server_slow_consumers > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        },
    )
}

/// Publishes until `deadline`: in confirmed batches when `per_sec` is 0, else paced in 10 ms
/// ticks.
async fn publish(bus: &Bus, subject: &str, deadline: Instant, per_sec: u64, count: &AtomicU64) {
    let mut n = 0u64;
    if per_sec == 0 {
        while Instant::now() < deadline {
            for _ in 0..FLUSH_EVERY {
                n += 1;
                let _ = bus.publish_json(subject, &registration(n, now_micros()));
            }
            count.fetch_add(FLUSH_EVERY as u64, Ordering::Relaxed);
            if bus.flush().await.is_err() {
                return;
            }
        }
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut owed = 0.0f64;
    while Instant::now() < deadline {
        tick.tick().await;
        owed += per_sec as f64 / 100.0;
        while owed >= 1.0 {
            owed -= 1.0;
            n += 1;
            let _ = bus.publish_json(subject, &registration(n, now_micros()));
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A registration like an executor's, whose first URI carries the send time for the latency.
fn registration(n: u64, sent_micros: u64) -> RegistryMessage {
    let mut message = RegistryMessage::new(
        "10.0.16.4",
        61_000 + (n % 1000) as u16,
        vec![format!("t{sent_micros}.apps.example.com")],
    );
    message.app = Some("5f0e9c2a-4b7d-4a59-9c61-0d2f3f6c1b8e".to_owned());
    message.private_instance_id = Some(format!("9d1b7c4e-2a3f-4e5d-8c6b-{n:012}"));
    message
}

fn sent_micros(reg: &RegistryMessage) -> Option<u64> {
    reg.uris
        .first()?
        .strip_prefix('t')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn start_server(dir: &Path, certs: Option<&CertDir>) -> anyhow::Result<Server> {
    let free = || -> std::io::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port, monitor_port) = (free()?, free()?);
    let listen = format!("127.0.0.1:{port}");
    let text = match certs {
        Some(c) => nats_config::server_config(
            &listen,
            ServerTls {
                ca_file: &c.ca_file(),
                cert_file: &c.cert_file(Identity::Nats),
                key_file: &c.key_file(Identity::Nats),
            },
            &[],
        )?,
        None => format!("listen: \"{listen}\"\n"),
    };
    let text = format!("{text}\nhttp: \"127.0.0.1:{monitor_port}\"\n");
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, text)?;
    let binary = nats_binary().context(
        "nats-server not found: install it (`apt-get install nats-server`) or set NATS_SERVER",
    )?;
    let child = Command::new(&binary)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let server = Server {
        child,
        port,
        monitor_port,
    };
    let ready = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > ready {
            anyhow::bail!("nats-server did not listen on {listen} within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// A counter from the server's `/varz` (0 when it cannot be read).
async fn server_varz(port: u16, field: &str) -> u64 {
    let url = format!("http://127.0.0.1:{port}/varz");
    let Ok(response) = reqwest::get(&url).await else {
        return 0;
    };
    let Ok(varz) = response.json::<serde_json::Value>().await else {
        return 0;
    };
    varz.get(field)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// `$NATS_SERVER`, else `nats-server` on `PATH` or in Debian's `/usr/sbin`.
fn nats_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

fn print_report(r: &Report) {
    println!(
        "bus ({}): {} publishers → nats-server → {} subscribers, {:.1} s, {}-byte registrations",
        if r.tls { "mutual TLS" } else { "plaintext" },
        r.publishers,
        r.subscribers,
        r.duration_secs,
        r.message_bytes,
    );
    println!(
        "  published {} ({:.0}/s), delivered {} ({:.0}/s), missing {}, counted drops {}, \
         subscribers the server cut off as slow {}",
        r.published,
        r.published_per_sec,
        r.delivered,
        r.delivered_per_sec,
        r.missing,
        r.dropped,
        r.server_slow_consumers
    );
    let counters: Vec<String> = r.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  bus counters: {}", counters.join(", "));
    println!(
        "  latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.p999, r.latency_ms.max
    );
    println!(
        "  CPU: nats-server {:.2} s ({:.3} ms per 1000 deliveries), hydrant clients {:.2} s ({:.3} ms per 1000)",
        r.server_cpu_seconds,
        r.server_cpu_ms_per_1000_deliveries,
        r.client_cpu_seconds,
        r.client_cpu_ms_per_1000_deliveries,
    );
}
