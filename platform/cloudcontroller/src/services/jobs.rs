//! The job runner: every broker operation (provision, update, deprovision, bind, unbind) and
//! every orphan mitigation is a row in `service_jobs` that this loop drives to an end.
//!
//! A job moves through phases — `call` (the PUT, PATCH or DELETE), `poll` (`last_operation`,
//! next asked after the broker's `Retry-After`, or `services.poll_interval_secs`, until the
//! plan's `maximum_polling_duration` or the platform's `max_polling_minutes` runs out) and, for
//! asynchronous bindings, `fetch` (the credentials) — and each step's outcome is written with
//! the instance or binding it concerns in one transaction before the next step starts. The
//! answers the spec's orphan-mitigation table names (a 5xx, a timeout or a malformed 201/202
//! on a create, a failed `last_operation` of a create, a 5xx on a delete) write an
//! `*.orphan_mitigation` job that sends the DELETE until the broker says the resource is gone,
//! backing off from `orphan_retry_secs` to `max_poll_interval_secs`, for at most
//! `orphan_give_up_hours`.
//!
//! Invariants: a stopped controller resumes every unfinished job at its next start (PUT and
//! DELETE are idempotent in OSBAPI, so repeating a step that was cut off is safe); never
//! orphan-mitigate on a 4xx (`ConcurrencyError` included) or on an update; the queue of work in
//! flight is bounded by `services.job_workers`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sql::Connection;
use reqwest::Method;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::osb::{self, Answer, Failure, enc};
use super::store::{self, JobRow, JobSpec};
use super::vcap;
use crate::Ctx;
use crate::api::ApiError;

/// Finished jobs are kept this long (a week) for `GET /v3/jobs/{guid}`, then forgotten.
const KEEP_FINISHED_SECS: i64 = 7 * 86_400;

/// How often finished jobs are pruned.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// When the first `last_operation` is asked after a 202 that named no `Retry-After`.
const FIRST_POLL: Duration = Duration::from_secs(1);

/// What a step decided.
#[derive(Debug)]
enum Next {
    /// Finished; the broker's answer body (dashboard URL, credentials) when it had one.
    Done(Option<Value>),
    /// Finished badly; `orphan` when the spec says the platform must clean up after it.
    Failed { reason: String, orphan: bool },
    /// Ask `last_operation` after `after`.
    Poll {
        after: Duration,
        operation: Option<String>,
        body: Option<Value>,
        description: Option<String>,
    },
    /// Fetch the binding's credentials next.
    Fetch,
    /// Try the same step again after `after` (a transient failure).
    Retry { after: Duration, reason: String },
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A new job row, due now.
pub(crate) fn new_job(operation: &str, resource_guid: &str, spec: JobSpec) -> JobRow {
    let now = hydrant_auth::now_secs();
    JobRow {
        guid: crate::password::new_guid(),
        operation: operation.to_owned(),
        resource_guid: resource_guid.to_owned(),
        state: "PROCESSING".to_owned(),
        phase: "call".to_owned(),
        spec,
        broker_operation: None,
        description: Some("waiting for a job worker".to_owned()),
        polls: 0,
        attempts: 0,
        next_at_ms: now_ms(),
        deadline_ms: None,
        created_at: now,
        updated_at: now,
    }
}

/// Runs jobs until `shutdown`: wakes on [`super::Services::wake`], at the next due job, or
/// every second.
pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let workers = ctx.config.services.job_workers;
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut pruned_at = std::time::Instant::now();
    loop {
        while tasks.try_join_next().is_some() {}
        if pruned_at.elapsed() > PRUNE_EVERY {
            pruned_at = std::time::Instant::now();
            let before = hydrant_auth::now_secs() - KEEP_FINISHED_SECS;
            if let Err(e) = ctx.db.run(move |c| Ok(store::prune_jobs(c, before)?)).await {
                tracing::warn!(error = %e.detail(), "services: cannot prune finished jobs");
            }
        }
        if let Err(e) = sweep_deleted_apps(&ctx).await {
            tracing::warn!(error = %e.detail(), "services: cannot sweep bindings of deleted apps");
        }
        let due = ctx
            .db
            .run(move |c| Ok(store::due_jobs(c, now_ms(), 64)?))
            .await;
        match due {
            Ok(due) => {
                for job in due {
                    if tasks.len() >= workers {
                        break;
                    }
                    let fresh = hydrant_runtime::lock(&running).insert(job.guid.clone());
                    if !fresh {
                        continue;
                    }
                    let ctx = ctx.clone();
                    let running = running.clone();
                    tasks.spawn(async move {
                        let guid = job.guid.clone();
                        step(&ctx, job).await;
                        hydrant_runtime::lock(&running).remove(&guid);
                        ctx.services.wake.notify_one();
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e.detail(), "services: cannot read due jobs"),
        }
        let next = ctx
            .db
            .run(|c| Ok(store::next_due_ms(c)?))
            .await
            .ok()
            .flatten();
        let wait = next.map_or(Duration::from_secs(1), |at| {
            Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0))
                .clamp(Duration::from_millis(20), Duration::from_secs(1))
        });
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = ctx.services.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    // Work cut off here is repeated at the next start: its step was never recorded.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// App bindings left behind by a deleted app are unbound at the broker.
async fn sweep_deleted_apps(ctx: &Arc<Ctx>) -> Result<(), ApiError> {
    let started = ctx
        .db
        .run(|c| {
            let tx = c.transaction()?;
            let mut started = 0;
            for b in store::orphaned_app_bindings(&tx)? {
                let Some(instance) = store::instance(&tx, &b.instance_guid)? else {
                    continue;
                };
                match &instance.plan {
                    Some(plan) => {
                        let spec = JobSpec {
                            broker_guid: plan.broker_guid.clone(),
                            service_id: plan.offering_id.clone(),
                            plan_id: plan.id.clone(),
                            instance_id: instance.guid.clone(),
                            binding_id: Some(b.guid.clone()),
                            space_guid: Some(instance.space_guid.clone()),
                            ..JobSpec::default()
                        };
                        // Another controller's sweep may have taken this binding since it
                        // was read: only the one whose update lands writes the job.
                        if store::start_binding_delete(&tx, &b.guid, "its app was deleted")? {
                            store::insert_job(
                                &tx,
                                &new_job("service_binding.delete", &b.guid, spec),
                            )?;
                            started += 1;
                        }
                    }
                    None => store::delete_binding(&tx, &b.guid)?,
                }
            }
            tx.commit()?;
            Ok(started)
        })
        .await?;
    if started > 0 {
        ctx.services.wake.notify_one();
    }
    Ok(())
}

/// How long a claim on a job step lasts: a step makes at most two broker calls, each cut off
/// at `broker_timeout_secs`; a controller that dies mid-step leaves the job to the others
/// after this.
fn claim_hold(config: &super::ServicesConfig) -> i64 {
    ms(Duration::from_secs(
        config
            .broker_timeout_secs
            .saturating_mul(2)
            .saturating_add(30),
    ))
}

/// One step of one job, its outcome written before it returns.
async fn step(ctx: &Arc<Ctx>, job: JobRow) {
    // The runner's list of due jobs may predate the previous step of this one, which finished
    // (and left `running`) since: act only on the row as it is now, and only if it is due.
    // Claimed, not just read: another controller on the same database may be about to run
    // the same step, and the claim lets exactly one of them.
    let guid = job.guid.clone();
    let node = ctx.node.clone();
    let hold = claim_hold(&ctx.config.services);
    let fresh = ctx
        .db
        .run(move |c| Ok(store::claim_job(c, &guid, &node, now_ms(), hold)?))
        .await;
    let job = match fresh {
        Ok(Some(j)) => j,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(job = %job.guid, error = %e.detail(), "services: cannot read a job");
            return;
        }
    };
    let broker_guid = job.spec.broker_guid.clone();
    let broker = ctx
        .db
        .run(move |c| Ok(store::broker(c, &broker_guid)?))
        .await;
    let next = match broker {
        Ok(Some(broker)) => decide(ctx, &job, &broker.addr()).await,
        Ok(None) => Next::Failed {
            reason: "the service broker was deleted".to_owned(),
            orphan: false,
        },
        Err(e) => Next::Retry {
            after: Duration::from_secs(1),
            reason: e.detail().to_owned(),
        },
    };
    let operation = job.operation.clone();
    let node = ctx.node.clone();
    let applied = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let guid = job.guid.clone();
            let outcome = apply(&tx, job, next)?;
            store::release_job(&tx, &guid, &node)?;
            tx.commit()?;
            Ok(outcome)
        })
        .await;
    match applied {
        Ok(Outcome::Completed) => ctx.services.metrics.jobs_completed.inc(),
        Ok(Outcome::Failed) => ctx.services.metrics.jobs_failed.inc(),
        Ok(Outcome::Orphaned) => {
            ctx.services.metrics.jobs_failed.inc();
            ctx.services.metrics.orphans_queued.inc();
        }
        Ok(Outcome::Mitigated) => ctx.services.metrics.orphans_mitigated.inc(),
        Ok(Outcome::Abandoned) => ctx.services.metrics.orphans_abandoned.inc(),
        Ok(Outcome::Continues) => {}
        Err(e) => {
            tracing::warn!(operation, error = %e.detail(), "services: cannot record a job step");
        }
    }
}

fn instance_path(spec: &JobSpec) -> String {
    format!("/v2/service_instances/{}", enc(&spec.instance_id))
}

fn binding_path(spec: &JobSpec) -> String {
    format!(
        "{}/service_bindings/{}",
        instance_path(spec),
        enc(spec.binding_id.as_deref().unwrap_or_default())
    )
}

fn ids_query(spec: &JobSpec) -> String {
    format!(
        "service_id={}&plan_id={}",
        enc(&spec.service_id),
        enc(&spec.plan_id)
    )
}

/// Which broker call the job's current phase makes, and what it decides.
async fn decide(ctx: &Arc<Ctx>, job: &JobRow, broker: &osb::BrokerAddr) -> Next {
    let config = &ctx.config.services;
    let spec = &job.spec;
    let binding = job.operation.starts_with("service_binding");
    let orphan = job.operation.ends_with("orphan_mitigation");
    let base = if binding {
        binding_path(spec)
    } else {
        instance_path(spec)
    };
    if orphan
        && ms(Duration::from_secs(config.orphan_give_up_hours * 3600))
            < now_ms() - job.created_at * 1000
    {
        return Next::Failed {
            reason: format!(
                "the broker did not confirm the delete within {} hours; giving up \
                 (services.orphan_give_up_hours)",
                config.orphan_give_up_hours
            ),
            orphan: false,
        };
    }
    let osb = &ctx.services.osb;
    match job.phase.as_str() {
        "poll" => {
            if job.deadline_ms.is_some_and(|d| now_ms() > d) && !orphan {
                let limit = if spec.max_poll_secs < 120 {
                    format!("{} s", spec.max_poll_secs)
                } else {
                    format!("{} min", spec.max_poll_secs.div_ceil(60))
                };
                return Next::Failed {
                    reason: format!(
                        "the broker did not finish within {limit}, the longest the platform \
                         polls this plan (its maximum_polling_duration, or the platform's \
                         services.max_polling_minutes)"
                    ),
                    orphan: job.operation.ends_with(".create"),
                };
            }
            let mut query = ids_query(spec);
            if let Some(op) = &job.broker_operation {
                query.push_str(&format!("&operation={}", enc(op)));
            }
            ctx.services.metrics.polls.inc();
            let answer = osb
                .send(
                    broker,
                    Method::GET,
                    &format!("{base}/last_operation?{query}"),
                    None,
                    None,
                )
                .await;
            poll_outcome(config, job, answer)
        }
        "fetch" => {
            let answer = osb.send(broker, Method::GET, &base, None, None).await;
            match answer {
                Ok(a) if a.status == 200 && a.object().is_some() => Next::Done(a.body),
                Ok(a) => Next::Failed {
                    reason: format!(
                        "the broker did not hand out the binding's credentials ({})",
                        a.error_text()
                    ),
                    orphan: true,
                },
                Err(f) => Next::Failed {
                    reason: f.to_string(),
                    orphan: true,
                },
            }
        }
        _ => {
            let create = job.operation.ends_with(".create");
            let (method, path) = if job.operation.ends_with(".update") {
                (Method::PATCH, format!("{base}?accepts_incomplete=true"))
            } else if create {
                (Method::PUT, format!("{base}?accepts_incomplete=true"))
            } else {
                (
                    Method::DELETE,
                    format!("{base}?{}&accepts_incomplete=true", ids_query(spec)),
                )
            };
            let user = if orphan { None } else { spec.user.as_deref() };
            let answer = osb
                .send(broker, method.clone(), &path, spec.body.as_ref(), user)
                .await;
            if orphan {
                return orphan_outcome(config, job, answer);
            }
            call_outcome(config, &method, binding, answer)
        }
    }
}

fn retry_after(config: &super::ServicesConfig, a: Option<Duration>) -> Duration {
    a.unwrap_or(Duration::from_secs(config.poll_interval_secs))
        .min(Duration::from_secs(config.max_poll_interval_secs))
        .max(Duration::from_millis(100))
}

fn operation_of(a: &Answer) -> Option<String> {
    a.object()?
        .get("operation")?
        .as_str()
        .filter(|op| op.len() <= osb::MAX_OPERATION_LEN)
        .map(str::to_owned)
}

/// The first answer to a PUT, PATCH or DELETE, read by the spec's table.
fn call_outcome(
    config: &super::ServicesConfig,
    method: &Method,
    binding: bool,
    answer: Result<Answer, Failure>,
) -> Next {
    let create = *method == Method::PUT;
    let update = *method == Method::PATCH;
    let a = match answer {
        Ok(a) => a,
        Err(f) => {
            return Next::Failed {
                orphan: create && f.uncertain(),
                reason: f.to_string(),
            };
        }
    };
    let well_formed = a.object().is_some()
        && (!binding
            || !create
            || a.object()
                .and_then(|o| o.get("credentials"))
                .is_none_or(Value::is_object));
    match a.status {
        200 if *method == Method::DELETE => Next::Done(None),
        201 if *method == Method::DELETE => Next::Failed {
            reason: "the broker answered 201 to a delete, which OSBAPI does not allow".to_owned(),
            orphan: true,
        },
        200 | 201 if well_formed => Next::Done(a.body),
        // The first poll comes soon unless the broker says otherwise: most operations of a
        // local broker finish in about a second.
        202 if well_formed => Next::Poll {
            after: retry_after(config, a.retry_after.or(Some(FIRST_POLL))),
            operation: operation_of(&a),
            description: Some("the broker accepted the request and works on it".to_owned()),
            body: a.body,
        },
        410 if *method == Method::DELETE => Next::Done(None),
        200 => Next::Failed {
            reason: "the broker answered 200 with a body that is not a JSON object".to_owned(),
            orphan: false,
        },
        201 | 202 => Next::Failed {
            reason: format!(
                "the broker answered {} with a body that is not what OSBAPI requires",
                a.status
            ),
            orphan: create,
        },
        203..=299 => Next::Failed {
            reason: format!(
                "the broker answered {}, which OSBAPI does not allow here",
                a.status
            ),
            orphan: !update,
        },
        409 => Next::Failed {
            reason: format!(
                "the broker already has a resource with this id and different attributes (409: \
                 {})",
                a.error_text()
            ),
            orphan: false,
        },
        422 => Next::Failed {
            reason: format!("the broker refused: {}", a.error_text()),
            orphan: false,
        },
        400..=499 => Next::Failed {
            reason: format!("the broker refused ({}): {}", a.status, a.error_text()),
            orphan: false,
        },
        _ => Next::Failed {
            reason: format!("the broker failed ({}): {}", a.status, a.error_text()),
            orphan: !update,
        },
    }
}

/// A `last_operation` answer.
fn poll_outcome(
    config: &super::ServicesConfig,
    job: &JobRow,
    answer: Result<Answer, Failure>,
) -> Next {
    let deleting = job.operation.ends_with(".delete");
    let creating = job.operation.ends_with(".create");
    let binding = job.operation.starts_with("service_binding");
    let later = |a: Option<Duration>, reason: String| Next::Retry {
        after: retry_after(config, a),
        reason,
    };
    let a = match answer {
        Ok(a) => a,
        Err(f) => return later(None, format!("{f}; polling again")),
    };
    let state = a
        .object()
        .and_then(|o| o.get("state"))
        .and_then(Value::as_str);
    let description = a
        .object()
        .and_then(|o| o.get("description"))
        .and_then(Value::as_str)
        .map(|d| d.chars().take(500).collect::<String>());
    match (a.status, state) {
        (410, _) if deleting => Next::Done(None),
        (410, _) => Next::Failed {
            reason: "the broker says the resource is gone (410)".to_owned(),
            orphan: false,
        },
        (200, Some("succeeded")) if binding && creating => Next::Fetch,
        (200, Some("succeeded")) => Next::Done(None),
        (200, Some("failed")) => Next::Failed {
            reason: format!(
                "the broker says the operation failed{}",
                description.map(|d| format!(": {d}")).unwrap_or_default()
            ),
            orphan: creating,
        },
        (200, Some("in progress")) => Next::Poll {
            after: retry_after(config, a.retry_after),
            operation: job.broker_operation.clone(),
            body: None,
            description,
        },
        (status, _) => later(
            a.retry_after,
            format!(
                "last_operation answered {status} ({}); polling again",
                a.error_text()
            ),
        ),
    }
}

/// The answer to an orphan-mitigation DELETE (or its `last_operation`).
fn orphan_outcome(
    config: &super::ServicesConfig,
    job: &JobRow,
    answer: Result<Answer, Failure>,
) -> Next {
    let backoff = Duration::from_secs(
        config
            .orphan_retry_secs
            .saturating_mul(1 << job.attempts.min(16))
            .min(config.max_poll_interval_secs),
    );
    match answer {
        Ok(a) if a.status == 200 || a.status == 410 => Next::Done(None),
        Ok(a) if a.status == 202 => Next::Poll {
            after: retry_after(config, a.retry_after),
            operation: operation_of(&a),
            body: None,
            description: Some("the broker is deleting the orphan".to_owned()),
        },
        Ok(a) => Next::Retry {
            after: backoff,
            reason: format!(
                "the broker answered {} ({}); retrying the delete",
                a.status,
                a.error_text()
            ),
        },
        Err(f) => Next::Retry {
            after: backoff,
            reason: format!("{f}; retrying the delete"),
        },
    }
}

/// What a recorded step amounted to, for the counters.
enum Outcome {
    Continues,
    Completed,
    Failed,
    Orphaned,
    Mitigated,
    Abandoned,
}

/// Writes a step's outcome: the job row and the instance or binding it concerns.
fn apply(c: &Connection, mut job: JobRow, next: Next) -> Result<Outcome, ApiError> {
    let now = now_ms();
    let orphan_job = job.operation.ends_with("orphan_mitigation");
    let binding = job.operation.starts_with("service_binding");
    let kind = job
        .operation
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let resource = job.resource_guid.clone();
    let set_op = |state: &str, description: Option<&str>| -> crate::sql::Result<()> {
        if orphan_job {
            return Ok(());
        }
        let row = store::OpRow::of(binding);
        store::set_op(c, row, &resource, &kind, state, description)
    };
    let outcome = match next {
        Next::Retry { after, reason } => {
            job.attempts += 1;
            if job.phase == "poll" {
                job.polls += 1;
            }
            job.next_at_ms = now + ms(after);
            job.description = Some(reason);
            Outcome::Continues
        }
        Next::Poll {
            after,
            operation,
            body,
            description,
        } => {
            if job.phase != "poll" {
                job.phase = "poll".to_owned();
                job.deadline_ms = Some(now + ms(Duration::from_secs(job.spec.max_poll_secs)));
                job.broker_operation = operation;
            } else {
                job.polls += 1;
            }
            job.state = "POLLING".to_owned();
            job.next_at_ms = now + ms(after);
            job.description = description
                .or_else(|| Some(format!("waiting for the broker (poll {})", job.polls)));
            if !binding && !orphan_job {
                record_dashboard(c, &resource, body.as_ref())?;
            }
            set_op("in progress", job.description.as_deref())?;
            Outcome::Continues
        }
        Next::Fetch => {
            job.phase = "fetch".to_owned();
            job.state = "PROCESSING".to_owned();
            job.next_at_ms = now;
            job.description = Some("fetching the binding's credentials".to_owned());
            Outcome::Continues
        }
        Next::Done(body) => done(c, &mut job, body.as_ref())?,
        Next::Failed { reason, orphan } => {
            job.state = "FAILED".to_owned();
            job.description = Some(reason.clone());
            if orphan_job {
                tracing::warn!(
                    resource = %resource,
                    reason = %reason,
                    "services: orphan mitigation abandoned"
                );
                Outcome::Abandoned
            } else {
                if binding && kind == "create" {
                    store::delete_binding(c, &resource)?;
                } else {
                    if orphan {
                        let shown = format!(
                            "{reason}; the platform asks the broker to delete what it made"
                        );
                        set_op("failed", Some(&shown))?;
                    } else {
                        set_op("failed", Some(&reason))?;
                    }
                }
                if orphan && !store::orphan_pending(c, &resource)? {
                    let operation = if binding {
                        "service_binding.orphan_mitigation"
                    } else {
                        "service_instance.orphan_mitigation"
                    };
                    let spec = JobSpec {
                        body: None,
                        user: None,
                        ..job.spec.clone()
                    };
                    let mut orphan_job = new_job(operation, &resource, spec);
                    orphan_job.description = Some(format!("mitigating: {reason}"));
                    store::insert_job(c, &orphan_job)?;
                    tracing::info!(resource = %resource, reason = %reason,
                        "services: orphan mitigation queued");
                    Outcome::Orphaned
                } else {
                    Outcome::Failed
                }
            }
        }
    };
    store::update_job(c, &job)?;
    Ok(outcome)
}

fn record_dashboard(
    c: &Connection,
    instance: &str,
    body: Option<&Value>,
) -> crate::sql::Result<()> {
    if let Some(url) = body
        .and_then(|b| b.get("dashboard_url"))
        .and_then(Value::as_str)
        .filter(|u| u.len() <= 2048)
    {
        store::set_dashboard_url(c, instance, url)?;
    }
    Ok(())
}

/// Volume mounts as apps may see them: `container_dir`, `mode` and `device_type` only.
fn censor_mounts(body: Option<&Value>) -> Value {
    let mounts = body
        .and_then(|b| b.get("volume_mounts"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Value::Array(
        mounts
            .iter()
            .map(|m| {
                let mut out = serde_json::Map::new();
                for key in ["container_dir", "mode", "device_type"] {
                    if let Some(v) = m.get(key) {
                        out.insert(key.to_owned(), v.clone());
                    }
                }
                Value::Object(out)
            })
            .collect(),
    )
}

fn done(c: &Connection, job: &mut JobRow, body: Option<&Value>) -> Result<Outcome, ApiError> {
    let resource = job.resource_guid.clone();
    job.state = "COMPLETE".to_owned();
    job.description = None;
    match job.operation.as_str() {
        "service_instance.create" => {
            record_dashboard(c, &resource, body)?;
            store::set_op(
                c,
                store::OpRow::Instance,
                &resource,
                "create",
                "succeeded",
                None,
            )?;
        }
        "service_instance.update" => {
            if let Some(instance) = store::instance(c, &resource)? {
                let tags = job.spec.tags.clone().unwrap_or(instance.tags);
                store::set_instance_fields(
                    c,
                    &resource,
                    job.spec.new_plan_guid.as_deref(),
                    &tags,
                    &instance.credentials,
                    instance.syslog_drain_url.as_deref(),
                )?;
                record_dashboard(c, &resource, body)?;
                store::set_op(
                    c,
                    store::OpRow::Instance,
                    &resource,
                    "update",
                    "succeeded",
                    None,
                )?;
            }
        }
        "service_instance.delete" => store::delete_instance(c, &resource)?,
        "service_binding.create" => {
            let credentials = body
                .and_then(|b| b.get("credentials"))
                .cloned()
                .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
            let drain = body
                .and_then(|b| b.get("syslog_drain_url"))
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty());
            store::set_binding_credentials(
                c,
                &resource,
                &credentials,
                drain,
                &censor_mounts(body),
            )?;
            if let Some(app) = &job.spec.app_guid {
                if let Some(problem) = vcap::size_problem(c, app)? {
                    // Too big for the app's environment: undo the binding at the broker.
                    store::delete_binding(c, &resource)?;
                    job.state = "FAILED".to_owned();
                    job.description = Some(problem.clone());
                    let spec = JobSpec {
                        body: None,
                        user: None,
                        ..job.spec.clone()
                    };
                    let mut orphan = new_job("service_binding.orphan_mitigation", &resource, spec);
                    orphan.description = Some(format!("mitigating: {problem}"));
                    store::insert_job(c, &orphan)?;
                    return Ok(Outcome::Orphaned);
                }
                store::set_binding_drain(c, &resource, app, drain)?;
            }
        }
        "service_binding.delete" => store::delete_binding(c, &resource)?,
        "service_instance.orphan_mitigation" => {
            if let Some(i) = store::instance(c, &resource)?
                && i.op.kind == "delete"
                && store::bindings(c, Some(&resource), None, None)?.is_empty()
            {
                store::delete_instance(c, &resource)?;
            }
            return Ok(Outcome::Mitigated);
        }
        "service_binding.orphan_mitigation" => {
            if let Some(b) = store::binding(c, &resource)?
                && b.op.kind == "delete"
            {
                store::delete_binding(c, &resource)?;
            }
            return Ok(Outcome::Mitigated);
        }
        _ => {}
    }
    Ok(Outcome::Completed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "test code")]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::services::ServicesConfig;

    fn answer(status: u16, body: Option<Value>) -> Result<Answer, Failure> {
        Ok(Answer {
            status,
            body,
            retry_after: None,
        })
    }

    /// `(failed, orphan)` of a first answer; `None` when it did not fail.
    fn verdict(method: &Method, binding: bool, a: Result<Answer, Failure>) -> Option<bool> {
        match call_outcome(&ServicesConfig::default(), method, binding, a) {
            Next::Failed { orphan, .. } => Some(orphan),
            _ => None,
        }
    }

    #[test]
    fn first_answers_follow_the_orphan_mitigation_table() {
        let put = Method::PUT;
        let obj = || Some(json!({}));
        // 200/201/202 well formed: success, nothing to mitigate.
        for status in [200, 201, 202] {
            assert_eq!(
                verdict(&put, false, answer(status, obj())),
                None,
                "{status}"
            );
        }
        // 200 malformed: failed, no mitigation; 201/202 malformed: mitigate.
        assert_eq!(verdict(&put, false, answer(200, None)), Some(false));
        assert_eq!(verdict(&put, false, answer(201, None)), Some(true));
        assert_eq!(
            verdict(&put, false, answer(202, Some(json!([])))),
            Some(true)
        );
        // A binding whose credentials are not an object is malformed.
        let bad = Some(json!({"credentials": "secret"}));
        assert_eq!(verdict(&put, true, answer(201, bad)), Some(true));
        // Other 2xx and 5xx on a create: mitigate; 4xx (408, 409, 422 included): never.
        assert_eq!(verdict(&put, false, answer(204, obj())), Some(true));
        assert_eq!(verdict(&put, false, answer(500, obj())), Some(true));
        for status in [400, 408, 409, 422] {
            assert_eq!(
                verdict(&put, false, answer(status, obj())),
                Some(false),
                "{status}"
            );
        }
        // A timeout on a create: mitigate; no connection at all: the broker saw nothing.
        let timeout = Err(Failure::Timeout("t".into()));
        assert_eq!(verdict(&put, false, timeout.clone()), Some(true));
        assert_eq!(
            verdict(&put, false, Err(Failure::Connect("c".into()))),
            Some(false)
        );
        // Deletes: 200 and 410 are success; 5xx mitigates (the delete is retried); a timeout
        // does not.
        let delete = Method::DELETE;
        assert_eq!(verdict(&delete, false, answer(200, obj())), None);
        assert_eq!(verdict(&delete, true, answer(410, obj())), None);
        assert_eq!(verdict(&delete, false, answer(503, obj())), Some(true));
        assert_eq!(verdict(&delete, false, answer(201, obj())), Some(true));
        assert_eq!(verdict(&delete, false, timeout.clone()), Some(false));
        // Updates: never mitigated, whatever the answer.
        let patch = Method::PATCH;
        for a in [answer(500, obj()), answer(204, obj()), timeout] {
            assert_eq!(verdict(&patch, false, a), Some(false));
        }
    }

    fn job(operation: &str) -> JobRow {
        let mut job = new_job(operation, "r", JobSpec::default());
        job.phase = "poll".to_owned();
        job
    }

    #[test]
    fn last_operation_answers_decide_the_next_step() {
        let config = ServicesConfig::default();
        let state = |s: &str| answer(200, Some(json!({"state": s})));
        let create = job("service_instance.create");
        assert!(matches!(
            poll_outcome(&config, &create, state("succeeded")),
            Next::Done(None)
        ));
        assert!(matches!(
            poll_outcome(&config, &create, state("failed")),
            Next::Failed { orphan: true, .. }
        ));
        assert!(matches!(
            poll_outcome(&config, &job("service_instance.update"), state("failed")),
            Next::Failed { orphan: false, .. }
        ));
        // An asynchronous bind that succeeded still has its credentials to fetch.
        assert!(matches!(
            poll_outcome(&config, &job("service_binding.create"), state("succeeded")),
            Next::Fetch
        ));
        // 410 while deleting is done; a broker error is asked again, not a failure.
        assert!(matches!(
            poll_outcome(&config, &job("service_instance.delete"), answer(410, None)),
            Next::Done(None)
        ));
        assert!(matches!(
            poll_outcome(&config, &create, answer(503, None)),
            Next::Retry { .. }
        ));
        // Retry-After is honoured up to max_poll_interval_secs.
        let mut slow = state("in progress").unwrap();
        slow.retry_after = Some(Duration::from_secs(86_400));
        match poll_outcome(&config, &create, Ok(slow)) {
            Next::Poll { after, .. } => {
                assert_eq!(after, Duration::from_secs(config.max_poll_interval_secs));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn orphan_deletes_back_off_until_the_broker_confirms() {
        let config = ServicesConfig::default();
        let mut orphan = new_job(
            "service_instance.orphan_mitigation",
            "r",
            JobSpec::default(),
        );
        let afters: Vec<Duration> = (0..12)
            .map(|attempts| {
                orphan.attempts = attempts;
                match orphan_outcome(&config, &orphan, answer(500, None)) {
                    Next::Retry { after, .. } => after,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(afters[0], Duration::from_secs(5));
        assert_eq!(afters[1], Duration::from_secs(10));
        assert_eq!(
            afters[11],
            Duration::from_secs(config.max_poll_interval_secs)
        );
        assert!(matches!(
            orphan_outcome(&config, &orphan, answer(410, None)),
            Next::Done(None)
        ));
    }
}
