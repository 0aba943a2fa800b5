//! Every service instance as a source in the pipeline: every `metrics_interval_secs` (10 s by
//! default) one gauge envelope per ready instance, source id = the instance guid, with its
//! connections, memory, storage against the plan (and, MariaDB and PostgreSQL, whether its
//! writes are revoked for being over it), operations per second and (RabbitMQ) queue depth, plus `service.up` — 0 while its node does not answer, so a killed node shows as a gap
//! and a dip, not as silence.
//!
//! Invariant: the loop asks each node one cheap admin query per interval, one instance at a
//! time, and its memory is one previous sample per live instance (dropped when the instance
//! goes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydrant_emitter::{Emitter, Registry};
use tokio_util::sync::CancellationToken;

use crate::backend::{self, Ctx};
use crate::catalog;
use crate::store::State;

/// Runs until `shutdown`.
pub async fn run(
    ctx: Arc<Ctx>,
    emitter: Option<Emitter>,
    registry: Registry,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(ctx.config.metrics_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failures = registry.counter(
        "broker.metrics_failures",
        "Instance gauge reads that failed (the node did not answer)",
        &[],
    );
    let mut previous: HashMap<String, (Instant, f64)> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let instances = match ctx.store.instances() {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("cannot list instances for metrics: {e}");
                continue;
            }
        };
        let mut counts: HashMap<&str, f64> = HashMap::new();
        previous.retain(|id, _| instances.iter().any(|i| &i.id == id));
        for i in instances.iter().filter(|i| i.state == State::Ready) {
            let Some(o) = catalog::offering(&i.offering) else {
                continue;
            };
            *counts.entry(o.name).or_default() += 1.0;
            let Some(plan) = o.plan(&i.plan_id) else {
                continue;
            };
            let tags = [("offering", o.name), ("plan", plan.name)];
            let usage = match backend::usage(&ctx, o, i).await {
                Ok(u) => u,
                Err(e) => {
                    failures.inc();
                    tracing::debug!(instance = %i.id, "no metrics this round: {e}");
                    if let Some(emitter) = &emitter {
                        emitter.gauge(&i.id, "0", &[("service.up", 0.0, "bool")], &tags);
                    }
                    continue;
                }
            };
            let now = Instant::now();
            let mut metrics: Vec<(&str, f64, &str)> = vec![
                ("service.up", 1.0, "bool"),
                ("service.connections", usage.connections, "count"),
            ];
            if let Some(total) = usage.ops_total {
                if let Some((at, before)) = previous.get(&i.id) {
                    let secs = now.duration_since(*at).as_secs_f64();
                    if secs > 0.0 && total >= *before {
                        metrics.push(("service.ops_per_second", (total - before) / secs, "ops/s"));
                    }
                }
                previous.insert(i.id.clone(), (now, total));
            }
            if let Some(m) = usage.memory_bytes {
                metrics.push(("service.memory_bytes", m, "bytes"));
                metrics.push((
                    "service.memory_quota_bytes",
                    (plan.memory_mb * 1024 * 1024) as f64,
                    "bytes",
                ));
            }
            if let Some(s) = usage.storage_bytes {
                metrics.push(("service.storage_bytes", s, "bytes"));
                let quota = if plan.storage_mb > 0 {
                    plan.storage_mb
                } else {
                    plan.memory_mb
                };
                metrics.push((
                    "service.storage_quota_bytes",
                    (quota * 1024 * 1024) as f64,
                    "bytes",
                ));
            }
            if let Some(over) = ctx.quotas.exceeded(&i.id) {
                metrics.push((
                    "service.storage_quota_exceeded",
                    f64::from(u8::from(over)),
                    "bool",
                ));
            }
            if let Some(d) = usage.queue_depth {
                metrics.push(("service.queue_depth", d, "messages"));
            }
            if let Some(q) = usage.queues {
                metrics.push(("service.queues", q, "count"));
            }
            if let Some(emitter) = &emitter {
                emitter.gauge(&i.id, "0", &metrics, &tags);
            }
        }
        for o in catalog::OFFERINGS {
            registry
                .gauge(
                    "broker.instances",
                    "Service instances, by offering",
                    "count",
                    &[("offering", o.name)],
                )
                .set(counts.get(o.name).copied().unwrap_or(0.0));
        }
    }
}
