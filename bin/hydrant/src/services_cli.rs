//! The service commands, in the cf CLI's shape: brokers and plan access (admin), the
//! marketplace, service instances (managed and user-provided), app bindings and service keys.
//!
//! Flow: the CLI → the cloud controller's `/v3/service_*` endpoints → jobs that call the
//! broker. Work that needs the broker is a job: without `--wait` a command says so and names
//! the job; with `--wait` (and always before `bind-service --restart`) it follows the job and
//! prints each change of its state as a line, so no wait is ever silent.
//!
//! Invariant: strings from the server (names, broker messages, credentials) are escaped before
//! they reach the terminal, and credentials are printed only by `service-key`, which exists to
//! show them.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hydrant_api::services::{
    BindingFilter, BindingType, CreateServiceBinding, CreateServiceBroker, CreateServiceInstance,
    Job, ServiceAccess, ServiceBinding, ServiceInstance, ServiceInstanceType, UpdateServiceBroker,
    UpdateServiceInstance,
};
use hydrant_api::{InstanceState, RestartInstance};
use hydrant_firehose_client::render::escape_text;
use serde_json::Value;

use crate::apps::{Session, answered_without_table, print_table};
use crate::exit;

/// How often a followed job is asked again.
const POLL: Duration = Duration::from_millis(500);

/// Longest a command follows a job or a restart.
const FOLLOW_LIMIT: Duration = Duration::from_secs(2 * 3600);

/// `hydrant create-service-broker` / `update-service-broker`.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// The broker's name.
    name: String,
    /// Its basic auth user.
    username: String,
    /// Its basic auth password.
    password: String,
    /// Its base URL (http://HOST:PORT, or https:// with a certificate the controller trusts).
    url: String,
}

/// `hydrant delete-service-broker`.
#[derive(Debug, clap::Args)]
pub struct DeleteBrokerArgs {
    /// The broker's name.
    name: String,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
}

/// A list command's only flag.
pub type JsonArgs = crate::apps::ListArgs;

/// `hydrant marketplace`.
#[derive(Debug, clap::Args)]
pub struct MarketplaceArgs {
    /// Only this offering.
    #[arg(short = 'e', long = "offering")]
    offering: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `hydrant enable-service-access` / `disable-service-access`.
#[derive(Debug, clap::Args)]
pub struct AccessArgs {
    /// The offering.
    offering: String,
    /// Only this plan.
    #[arg(short, long)]
    plan: Option<String>,
    /// The broker, when two serve the same offering name.
    #[arg(short, long)]
    broker: Option<String>,
}

/// `hydrant create-service`.
#[derive(Debug, clap::Args)]
pub struct CreateServiceArgs {
    /// The offering (`hydrant marketplace` lists them).
    offering: String,
    /// The plan.
    plan: String,
    /// The new instance's name.
    name: String,
    /// Parameters for the broker: inline JSON or a JSON file.
    #[arg(short = 'c')]
    parameters: Option<String>,
    /// Tags, comma-separated.
    #[arg(short = 't')]
    tags: Option<String>,
    /// The broker, when two serve the same offering name.
    #[arg(short = 'b', long)]
    broker: Option<String>,
    /// Follow the broker's work until it is done.
    #[arg(short = 'w', long)]
    wait: bool,
}

/// `hydrant service`.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// The instance.
    name: String,
    /// Print only its guid.
    #[arg(long)]
    guid: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `hydrant update-service`.
#[derive(Debug, clap::Args)]
pub struct UpdateServiceArgs {
    /// The instance.
    name: String,
    /// The new plan.
    #[arg(short = 'p')]
    plan: Option<String>,
    /// Parameters for the broker: inline JSON or a JSON file.
    #[arg(short = 'c')]
    parameters: Option<String>,
    /// New tags, comma-separated.
    #[arg(short = 't')]
    tags: Option<String>,
    /// Follow the broker's work until it is done.
    #[arg(short = 'w', long)]
    wait: bool,
}

/// `hydrant delete-service`.
#[derive(Debug, clap::Args)]
pub struct DeleteServiceArgs {
    /// The instance.
    name: String,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
    /// Follow the broker's work until it is done.
    #[arg(short = 'w', long)]
    wait: bool,
}

/// `hydrant bind-service`.
#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// The app.
    app: String,
    /// The service instance.
    name: String,
    /// Parameters for the broker: inline JSON or a JSON file.
    #[arg(short = 'c')]
    parameters: Option<String>,
    /// The binding's name (`VCAP_SERVICES` shows it as `name`).
    #[arg(long)]
    binding_name: Option<String>,
    /// Restart the app's instances one at a time once the binding is ready, so the new
    /// `VCAP_SERVICES` takes effect without downtime.
    #[arg(long)]
    restart: bool,
    /// Follow the broker's work until it is done.
    #[arg(short = 'w', long)]
    wait: bool,
}

/// `hydrant unbind-service`.
#[derive(Debug, clap::Args)]
pub struct UnbindArgs {
    /// The app.
    app: String,
    /// The service instance.
    name: String,
    /// Restart the app's instances one at a time once the binding is gone.
    #[arg(long)]
    restart: bool,
    /// Follow the broker's work until it is done.
    #[arg(short = 'w', long)]
    wait: bool,
}

/// `hydrant create-user-provided-service` / `update-user-provided-service`.
#[derive(Debug, clap::Args)]
pub struct UpsiArgs {
    /// The instance.
    name: String,
    /// Credentials: inline JSON or a JSON file.
    #[arg(short = 'p')]
    credentials: Option<String>,
    /// A syslog drain URL every bound app's logs go to ("" removes it on update).
    #[arg(short = 'l')]
    syslog_drain_url: Option<String>,
    /// A route service URL (https://).
    #[arg(short = 'r')]
    route_service_url: Option<String>,
    /// Tags, comma-separated.
    #[arg(short = 't')]
    tags: Option<String>,
}

/// `hydrant create-service-key`.
#[derive(Debug, clap::Args)]
pub struct CreateKeyArgs {
    /// The service instance.
    name: String,
    /// The key's name.
    key: String,
    /// Parameters for the broker: inline JSON or a JSON file.
    #[arg(short = 'c')]
    parameters: Option<String>,
    /// Follow the broker's work until it is done.
    #[arg(short = 'w', long)]
    wait: bool,
}

/// `hydrant service-key` / `delete-service-key`.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The service instance.
    name: String,
    /// The key's name.
    key: String,
    /// `service-key`: print the whole JSON answer. `delete-service-key`: ignored.
    #[arg(long)]
    json: bool,
    /// `delete-service-key`: do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
}

/// `hydrant service-keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// The service instance.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Inline JSON, or the path of a JSON file.
fn json_arg(flag: &str, text: &str) -> anyhow::Result<Value> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(value);
    }
    let path = std::path::Path::new(text);
    if path.is_file() {
        let bytes = std::fs::read(path)?;
        return serde_json::from_slice(&bytes).map_err(|e| {
            exit::usage(format!(
                "{flag}: {} is not a JSON file: {e}",
                path.display()
            ))
        });
    }
    Err(exit::usage(format!(
        "{flag}: {} is neither JSON nor a file; write e.g. {flag} '{{\"key\": \"value\"}}'",
        escape_text(text)
    )))
}

/// An optional JSON flag: inline JSON or a file, when given.
fn json_opt(flag: &str, text: Option<&str>) -> anyhow::Result<Option<Value>> {
    text.map(|t| json_arg(flag, t)).transpose()
}

fn tags_arg(text: Option<&str>) -> Option<Vec<String>> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

fn confirm(force: bool, question: &str) -> anyhow::Result<bool> {
    if force {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(exit::usage(format!(
            "{question} needs confirmation: pass -f to go ahead without asking"
        )));
    }
    eprint!("{question}? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// [`confirm`] for a delete; says so when the answer is no.
fn confirm_delete(force: bool, question: &str) -> anyhow::Result<bool> {
    let yes = confirm(force, question)?;
    if !yes {
        eprintln!("Not deleted.");
    }
    Ok(yes)
}

/// Prints `items` as JSON (`json`), as `empty` when there are none, or as a table of `row`s
/// under `headers`.
fn print_list<T: serde::Serialize>(
    json: bool,
    items: &[T],
    empty: &str,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else if items.is_empty() {
        println!("{empty}");
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        print_table(headers, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls `current` with `next` every [`POLL`] until `done`, printing a line whenever the key
/// of `show` (key, text) changes; `too_long` after [`FOLLOW_LIMIT`].
async fn poll_until<T>(
    mut current: T,
    show: impl Fn(&T) -> (String, String),
    done: impl Fn(&T) -> bool,
    too_long: impl Fn(&T) -> anyhow::Error,
    mut next: impl AsyncFnMut(&T) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut shown = String::new();
    loop {
        let (key, text) = show(&current);
        if key != shown {
            eprintln!("  [{:>3}s] {text}", started.elapsed().as_secs());
            shown = key;
        }
        if done(&current) {
            return Ok(current);
        }
        if started.elapsed() > FOLLOW_LIMIT {
            return Err(too_long(&current));
        }
        tokio::time::sleep(POLL).await;
        current = next(&current).await?;
    }
}

/// The instance called `name` in the targeted space (or the one the caller can see).
async fn instance(session: &Session, name: &str) -> anyhow::Result<ServiceInstance> {
    let space = session.space_guid();
    let mut found = session
        .client
        .list_service_instances(Some(name), space.as_deref())
        .await?;
    match found.len() {
        0 => Err(exit::not_found(format!(
            "service instance {} not found: `hydrant services` lists them",
            escape_text(name)
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(exit::usage(format!(
            "there are service instances called {} in several spaces; target one with \
             `hydrant target -o ORG -s SPACE`",
            escape_text(name)
        ))),
    }
}

async fn broker_guid(session: &Session, name: &str) -> anyhow::Result<String> {
    session
        .client
        .list_service_brokers()
        .await?
        .into_iter()
        .find(|b| b.name == name)
        .map(|b| b.guid)
        .ok_or_else(|| {
            exit::not_found(format!(
                "service broker {} not found: `hydrant service-brokers` lists them",
                escape_text(name)
            ))
        })
}

/// Follows `job` to its end, a line per change; an error if it failed.
async fn follow(session: &Session, job: &Job) -> anyhow::Result<Job> {
    let job = poll_until(
        job.clone(),
        |job| {
            let line = format!("{} {}", job.state, job.description.as_deref().unwrap_or(""));
            let text = escape_text(line.trim());
            (line, text)
        },
        Job::is_done,
        |job| {
            exit::timeout(format!(
                "job {} is still {}; check it later with `hydrant services`",
                job.guid, job.state
            ))
        },
        async |job| Ok(session.client.job(&job.guid).await?),
    )
    .await?;
    if job.state == "FAILED" {
        anyhow::bail!(
            "{} failed: {}",
            job.operation,
            escape_text(job.description.as_deref().unwrap_or("no reason given"))
        );
    }
    Ok(job)
}

/// Either follows the job (`wait`) or says it is running and how to check.
async fn report_job(
    session: &Session,
    job: Option<&Job>,
    wait: bool,
    what: &str,
    check: &str,
) -> anyhow::Result<()> {
    match job {
        None => eprintln!("OK"),
        Some(job) if wait => {
            eprintln!("Job {} ({}):", job.guid, job.operation);
            follow(session, job).await?;
            eprintln!("OK");
        }
        Some(job) => eprintln!(
            "{what} in progress (job {}, {}). Use `{check}` to check its status, or pass \
             --wait to follow it.",
            job.guid, job.state
        ),
    }
    Ok(())
}

// === brokers and access ===

/// Runs `hydrant create-service-broker`.
///
/// # Errors
/// A refused catalog (the server lists what is wrong), or an unreachable broker.
pub async fn create_broker(args: BrokerArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    eprintln!(
        "Creating service broker {} and fetching its catalog...",
        escape_text(&args.name)
    );
    let broker = session
        .client
        .create_service_broker(&CreateServiceBroker {
            name: args.name,
            url: args.url,
            username: args.username,
            password: args.password,
        })
        .await?;
    eprintln!(
        "OK: offerings {}. Their plans are not visible until `hydrant enable-service-access \
         OFFERING`.",
        escape_text(&broker.offerings.join(", "))
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant update-service-broker`.
///
/// # Errors
/// An unknown broker or a refused catalog.
pub async fn update_broker(args: BrokerArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let guid = broker_guid(&session, &args.name).await?;
    let broker = session
        .client
        .update_service_broker(
            &guid,
            &UpdateServiceBroker {
                name: None,
                url: Some(args.url),
                username: Some(args.username),
                password: Some(args.password),
            },
        )
        .await?;
    eprintln!(
        "OK: {} now offers {}.",
        escape_text(&broker.name),
        escape_text(&broker.offerings.join(", "))
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant delete-service-broker`.
///
/// # Errors
/// An unknown broker, or one whose instances still exist.
pub async fn delete_broker(args: DeleteBrokerArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let guid = broker_guid(&session, &args.name).await?;
    let question = format!(
        "Really delete the service broker {}",
        escape_text(&args.name)
    );
    if !confirm_delete(args.force, &question)? {
        return Ok(ExitCode::SUCCESS);
    }
    session.client.delete_service_broker(&guid).await?;
    eprintln!("OK");
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant service-brokers`.
///
/// # Errors
/// Not an admin, or an unreachable cloud controller.
pub async fn brokers(args: JsonArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let brokers = session.client.list_service_brokers().await?;
    print_list(
        args.json,
        &brokers,
        "No service brokers. Register one with `hydrant create-service-broker`.",
        &["name", "url", "offerings"],
        |b| vec![b.name.clone(), b.url.clone(), b.offerings.join(", ")],
    )
}

/// Runs `hydrant enable-service-access` (`enable`) or `disable-service-access`.
///
/// # Errors
/// Not an admin, or an unknown offering or plan.
pub async fn access(args: AccessArgs, enable: bool) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let plans = session
        .client
        .set_service_access(&ServiceAccess {
            offering: args.offering.clone(),
            plan: args.plan,
            broker: args.broker,
            enable,
        })
        .await?;
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    eprintln!(
        "{} access to {} plan(s) {} for all users.",
        if enable { "Enabled" } else { "Disabled" },
        escape_text(&args.offering),
        escape_text(&names.join(", "))
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant marketplace`.
///
/// # Errors
/// An unreachable cloud controller.
pub async fn marketplace(args: MarketplaceArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let mut offerings = session.client.list_service_offerings().await?;
    if let Some(only) = &args.offering {
        offerings.retain(|o| &o.name == only);
    }
    let done = print_list(
        args.json,
        &offerings,
        "No service offerings available to you.",
        &["offering", "plans", "description", "broker"],
        |o| {
            let plans: Vec<String> = o
                .plans
                .iter()
                .map(|p| {
                    let mut name = p.name.clone();
                    if !p.free {
                        name.push('*');
                    }
                    if !p.public {
                        name.push_str(" (not public)");
                    }
                    name
                })
                .collect();
            vec![
                o.name.clone(),
                plans.join(", "),
                o.description.clone(),
                o.broker_name.clone(),
            ]
        },
    )?;
    if !args.json && offerings.iter().flat_map(|o| &o.plans).any(|p| !p.free) {
        println!("\n* these plans may cost money");
    }
    Ok(done)
}

// === instances ===

/// Runs `hydrant create-service`.
///
/// # Errors
/// An unknown offering or plan, parameters the plan's schema refuses, or (with `--wait`) a
/// failed create.
pub async fn create_service(args: CreateServiceArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let parameters = json_opt("-c", args.parameters.as_deref())?;
    eprintln!(
        "Creating service instance {} ({} {})...",
        escape_text(&args.name),
        escape_text(&args.offering),
        escape_text(&args.plan)
    );
    let answer = session
        .client
        .create_service_instance(&CreateServiceInstance {
            name: args.name.clone(),
            space: session.space_guid(),
            kind: ServiceInstanceType::Managed,
            offering: Some(args.offering),
            plan: Some(args.plan),
            broker: args.broker,
            parameters,
            tags: tags_arg(args.tags.as_deref()).unwrap_or_default(),
            ..CreateServiceInstance::default()
        })
        .await?;
    let check = format!("hydrant service {}", escape_text(&args.name));
    report_job(&session, answer.job.as_ref(), args.wait, "Create", &check).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant create-user-provided-service` (`create`) or `update-user-provided-service`.
///
/// # Errors
/// Credentials that are not JSON, a refused drain URL, or an unknown instance (update).
pub async fn upsi(args: UpsiArgs, create: bool) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let credentials = json_opt("-p", args.credentials.as_deref())?;
    if create {
        session
            .client
            .create_service_instance(&CreateServiceInstance {
                name: args.name.clone(),
                space: session.space_guid(),
                kind: ServiceInstanceType::UserProvided,
                credentials,
                syslog_drain_url: args.syslog_drain_url,
                route_service_url: args.route_service_url,
                tags: tags_arg(args.tags.as_deref()).unwrap_or_default(),
                ..CreateServiceInstance::default()
            })
            .await?;
        eprintln!("Created user-provided service {}.", escape_text(&args.name));
    } else {
        let instance = instance(&session, &args.name).await?;
        session
            .client
            .update_service_instance(
                &instance.guid,
                &UpdateServiceInstance {
                    credentials,
                    syslog_drain_url: args.syslog_drain_url,
                    tags: tags_arg(args.tags.as_deref()),
                    ..UpdateServiceInstance::default()
                },
            )
            .await?;
        eprintln!(
            "Updated user-provided service {}. Bound apps see new credentials after `hydrant \
             restart APP`.",
            escape_text(&args.name)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn instance_row(i: &ServiceInstance) -> Vec<String> {
    vec![
        i.name.clone(),
        i.offering
            .clone()
            .unwrap_or_else(|| "user-provided".to_owned()),
        i.plan.clone().unwrap_or_default(),
        i.bound_apps.join(", "),
        format!("{} {}", i.last_operation.kind, i.last_operation.state),
        i.broker.clone().unwrap_or_default(),
    ]
}

/// Runs `hydrant services`.
///
/// # Errors
/// An unreachable cloud controller.
pub async fn services(args: JsonArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let space = session.space_guid();
    let instances = session
        .client
        .list_service_instances(None, space.as_deref())
        .await?;
    print_list(
        args.json,
        &instances,
        "No service instances. `hydrant marketplace` shows what you can create.",
        &[
            "name",
            "offering",
            "plan",
            "bound apps",
            "last operation",
            "broker",
        ],
        instance_row,
    )
}

/// Runs `hydrant service`.
///
/// # Errors
/// An unknown instance.
pub async fn service(args: ServiceArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let i = instance(&session, &args.name).await?;
    if args.guid {
        println!("{}", i.guid);
        return Ok(ExitCode::SUCCESS);
    }
    if answered_without_table(args.json, &i, None)? {
        return Ok(ExitCode::SUCCESS);
    }
    let line = |k: &str, v: &str| println!("{k:<16}{}", escape_text(v));
    line("name:", &i.name);
    line("guid:", &i.guid);
    line("type:", i.kind.as_str());
    line("space:", &i.space_name);
    if let Some(o) = &i.offering {
        line("offering:", o);
    }
    if let Some(p) = &i.plan {
        line("plan:", p);
    }
    if let Some(b) = &i.broker {
        line("broker:", b);
    }
    line("tags:", &i.tags.join(", "));
    if let Some(d) = &i.dashboard_url {
        line("dashboard:", d);
    }
    if let Some(d) = &i.syslog_drain_url {
        line("syslog drain:", d);
    }
    line("bound apps:", &i.bound_apps.join(", "));
    line(
        "last operation:",
        &format!("{} {}", i.last_operation.kind, i.last_operation.state),
    );
    if let Some(d) = &i.last_operation.description {
        line("message:", d);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant update-service`.
///
/// # Errors
/// An unknown instance or plan, a plan that cannot change, or (with `--wait`) a failed update.
pub async fn update_service(args: UpdateServiceArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let i = instance(&session, &args.name).await?;
    let parameters = json_opt("-c", args.parameters.as_deref())?;
    let answer = session
        .client
        .update_service_instance(
            &i.guid,
            &UpdateServiceInstance {
                plan: args.plan,
                parameters,
                tags: tags_arg(args.tags.as_deref()),
                ..UpdateServiceInstance::default()
            },
        )
        .await?;
    let check = format!("hydrant service {}", escape_text(&args.name));
    report_job(&session, answer.job.as_ref(), args.wait, "Update", &check).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant delete-service`.
///
/// # Errors
/// An unknown instance, one with bindings, or (with `--wait`) a failed delete.
pub async fn delete_service(args: DeleteServiceArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let i = instance(&session, &args.name).await?;
    let question = format!(
        "Really delete the service instance {}",
        escape_text(&i.name)
    );
    if !confirm_delete(args.force, &question)? {
        return Ok(ExitCode::SUCCESS);
    }
    let answer = session.client.delete_service_instance(&i.guid).await?;
    report_job(
        &session,
        answer.job.as_ref(),
        args.wait,
        "Delete",
        "hydrant services",
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

// === bindings ===

/// Waits for an instance's create or update to finish, showing its progress.
async fn ready(session: &Session, i: ServiceInstance) -> anyhow::Result<ServiceInstance> {
    if i.last_operation.state != "in progress" {
        return Ok(i);
    }
    eprintln!(
        "Waiting for {}'s {} to finish:",
        escape_text(&i.name),
        i.last_operation.kind
    );
    poll_until(
        i,
        |i| {
            let line = i.last_operation.description.clone().unwrap_or_default();
            let text = format!("{} {}", i.last_operation.state, escape_text(&line));
            (line, text)
        },
        |i| i.last_operation.state != "in progress",
        |i| {
            exit::timeout(format!(
                "{} is still being created; bind it later",
                escape_text(&i.name)
            ))
        },
        async |i| Ok(session.client.service_instance(&i.guid).await?),
    )
    .await
}

/// Restarts every instance of the app one at a time, each waiting for its replacement to run.
async fn rolling_restart(session: &Session, app: &hydrant_api::App) -> anyhow::Result<()> {
    let name = escape_text(&app.name);
    if app.state != hydrant_api::AppState::Started {
        eprintln!("{name} is stopped; the new environment applies when it starts.");
        return Ok(());
    }
    for index in 0..app.instances {
        let stats = session.client.app_stats(&app.guid).await?;
        let old = stats
            .instances
            .iter()
            .find(|i| i.index == index)
            .and_then(|i| i.instance_guid.clone());
        eprintln!("Restarting instance {index} of {name}...");
        session
            .client
            .restart_instance(
                &app.guid,
                index,
                &RestartInstance {
                    reason: Some("rolling restart: service bindings changed".to_owned()),
                    crash_count: None,
                    instance: old.clone(),
                },
            )
            .await?;
        let started = Instant::now();
        loop {
            let stats = session.client.app_stats(&app.guid).await?;
            let replaced = stats.instances.iter().any(|i| {
                i.index == index
                    && i.state == InstanceState::Running
                    && i.instance_guid.is_some()
                    && i.instance_guid != old
            });
            if replaced {
                break;
            }
            if started.elapsed() > Duration::from_secs(180) {
                return Err(exit::timeout(format!(
                    "instance {index} of {name} is not running again after 180 s; see `hydrant \
                     app {name}`"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    eprintln!("All {} instance(s) of {name} restarted.", app.instances);
    Ok(())
}

/// Runs `hydrant bind-service`.
///
/// # Errors
/// An unknown app or instance, a refused binding, or a failed bind or restart.
pub async fn bind(args: BindArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.app).await?;
    let i = ready(&session, instance(&session, &args.name).await?).await?;
    let parameters = json_opt("-c", args.parameters.as_deref())?;
    eprintln!(
        "Binding service instance {} to app {}...",
        escape_text(&i.name),
        escape_text(&app.name)
    );
    let answer = session
        .client
        .create_service_binding(&CreateServiceBinding {
            kind: BindingType::App,
            service_instance: i.guid.clone(),
            app: Some(app.guid.clone()),
            name: args.binding_name,
            parameters,
        })
        .await?;
    let wait = args.wait || args.restart;
    report_job(
        &session,
        answer.job.as_ref(),
        wait,
        "Binding",
        &format!("hydrant service {}", escape_text(&i.name)),
    )
    .await?;
    if args.restart {
        rolling_restart(&session, &app).await?;
    } else if answer.job.is_none() || wait {
        eprintln!(
            "TIP: Use `hydrant restart {}` (no restage needed), or bind with --restart, for the \
             binding to take effect.",
            escape_text(&app.name)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The instance's bindings of one kind (app bindings or service keys).
async fn bindings_of(
    session: &Session,
    instance: &ServiceInstance,
    kind: BindingType,
) -> anyhow::Result<Vec<ServiceBinding>> {
    Ok(session
        .client
        .list_service_bindings(&BindingFilter {
            service_instance: Some(&instance.guid),
            kind: Some(kind),
            ..BindingFilter::default()
        })
        .await?)
}

async fn binding_of(
    session: &Session,
    instance: &ServiceInstance,
    kind: BindingType,
    matches: impl Fn(&ServiceBinding) -> bool,
) -> anyhow::Result<Option<ServiceBinding>> {
    let bindings = bindings_of(session, instance, kind).await?;
    Ok(bindings.into_iter().find(|b| matches(b)))
}

/// Runs `hydrant unbind-service`.
///
/// # Errors
/// An unknown app or instance, or a failed unbind.
pub async fn unbind(args: UnbindArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.app).await?;
    let i = instance(&session, &args.name).await?;
    let Some(binding) = binding_of(&session, &i, BindingType::App, |b| {
        b.app_guid.as_deref() == Some(&app.guid)
    })
    .await?
    else {
        eprintln!(
            "Binding between {} and {} did not exist.",
            escape_text(&i.name),
            escape_text(&app.name)
        );
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!(
        "Unbinding app {} from service {}...",
        escape_text(&app.name),
        escape_text(&i.name)
    );
    let answer = session.client.delete_service_binding(&binding.guid).await?;
    let wait = args.wait || args.restart;
    report_job(
        &session,
        answer.job.as_ref(),
        wait,
        "Unbinding",
        &format!("hydrant service {}", escape_text(&i.name)),
    )
    .await?;
    if args.restart {
        rolling_restart(&session, &app).await?;
    }
    Ok(ExitCode::SUCCESS)
}

// === service keys ===

/// Runs `hydrant create-service-key`.
///
/// # Errors
/// An unknown instance, a refused key, or (with `--wait`) a failed create.
pub async fn create_key(args: CreateKeyArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let i = ready(&session, instance(&session, &args.name).await?).await?;
    let parameters = json_opt("-c", args.parameters.as_deref())?;
    eprintln!(
        "Creating service key {} for service instance {}...",
        escape_text(&args.key),
        escape_text(&i.name)
    );
    let answer = session
        .client
        .create_service_binding(&CreateServiceBinding {
            kind: BindingType::Key,
            service_instance: i.guid.clone(),
            app: None,
            name: Some(args.key.clone()),
            parameters,
        })
        .await?;
    let check = format!(
        "hydrant service-key {} {}",
        escape_text(&i.name),
        escape_text(&args.key)
    );
    report_job(&session, answer.job.as_ref(), args.wait, "Create", &check).await?;
    Ok(ExitCode::SUCCESS)
}

async fn key(session: &Session, name: &str, key: &str) -> anyhow::Result<ServiceBinding> {
    let i = instance(session, name).await?;
    binding_of(session, &i, BindingType::Key, |b| {
        b.name.as_deref() == Some(key)
    })
    .await?
    .ok_or_else(|| {
        exit::not_found(format!(
            "no service key {} for {}: `hydrant service-keys {}` lists them",
            escape_text(key),
            escape_text(name),
            escape_text(name)
        ))
    })
}

/// Runs `hydrant service-key`: the key's credentials.
///
/// # Errors
/// An unknown instance or key, or one whose credentials have not arrived yet.
pub async fn service_key(args: KeyArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let binding = key(&session, &args.name, &args.key).await?;
    let details = session
        .client
        .service_binding_details(&binding.guid)
        .await?;
    let text = if args.json {
        serde_json::to_string_pretty(&details)?
    } else {
        serde_json::to_string_pretty(&details.credentials)?
    };
    println!("{}", json_for_terminal(&text));
    Ok(ExitCode::SUCCESS)
}

/// JSON text with the C1 control characters (which some terminals obey, and which JSON does
/// not escape by itself) written as `\u` escapes: still the same JSON, safe to print.
fn json_for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if ('\u{80}'..='\u{9f}').contains(&c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `hydrant service-keys`.
///
/// # Errors
/// An unknown instance.
pub async fn service_keys(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let i = instance(&session, &args.name).await?;
    let keys = bindings_of(&session, &i, BindingType::Key).await?;
    print_list(
        args.json,
        &keys,
        &format!("No service keys for {}.", escape_text(&i.name)),
        &["name", "last operation"],
        |k| {
            vec![
                k.name.clone().unwrap_or_default(),
                format!("{} {}", k.last_operation.kind, k.last_operation.state),
            ]
        },
    )
}

/// Runs `hydrant delete-service-key`.
///
/// # Errors
/// An unknown instance or key, or a failed delete.
pub async fn delete_key(args: KeyArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let binding = key(&session, &args.name, &args.key).await?;
    let question = format!(
        "Really delete the service key {} of {}",
        escape_text(&args.key),
        escape_text(&args.name)
    );
    if !confirm_delete(args.force, &question)? {
        return Ok(ExitCode::SUCCESS);
    }
    let answer = session.client.delete_service_binding(&binding.guid).await?;
    report_job(
        &session,
        answer.job.as_ref(),
        true,
        "Delete",
        "hydrant services",
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

// === logs ===

/// `hydrant logs NAME` for a service instance: its firehose config (a token that reads only
/// its source) and its guid, or `None` when no instance the caller sees has that name.
pub async fn instance_stream(
    session: &Session,
    name: &str,
) -> anyhow::Result<Option<(hydrant_firehose_client::ClientConfig, String)>> {
    let space = session.space_guid();
    let found = session
        .client
        .list_service_instances(Some(name), space.as_deref())
        .await?;
    let [instance] = found.as_slice() else {
        return Ok(None);
    };
    let token = session
        .client
        .service_instance_log_token(&instance.guid)
        .await?;
    let config = hydrant_firehose_client::ClientConfig {
        url: session.config.firehose.clone(),
        token_source: instance_token_source(token.token.clone(), instance.guid.clone()),
        token: token.token,
        ..hydrant_firehose_client::ClientConfig::default()
    };
    Ok(Some((config, instance.guid.clone())))
}

/// Renews a service instance's log token for a long `hydrant logs INSTANCE`: hands out
/// `initial` until the firehose closes the stream for an expired token, then renews the saved
/// login (`session::renew_session`) and mints a fresh token for the instance with it, as an
/// app's stream does with its own log token. `None` without a saved refresh token: the stream
/// then ends with a message naming the expiry.
fn instance_token_source(
    initial: String,
    guid: String,
) -> Option<hydrant_firehose_client::TokenSource> {
    use hydrant_firehose_client::{TokenError, TokenSource};
    use std::sync::{Arc, Mutex, PoisonError};

    let saved = crate::cli_config::load().ok()?;
    saved.api.as_ref()?;
    saved.refresh_token.as_ref()?;
    let current = Arc::new(Mutex::new(initial));
    Some(TokenSource::new(move |stale| {
        let (current, guid) = (Arc::clone(&current), guid.clone());
        async move {
            if !stale {
                return Ok(current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone());
            }
            let session = crate::session::renew_session().await?;
            let api = session.api.clone().unwrap_or_default();
            let client = hydrant_api::Client::new(&api, Some(session.token.clone()));
            let token = match client.service_instance_log_token(&guid).await {
                Ok(t) => t.token,
                // Deleted, or no longer visible to this user: nothing will ever renew it.
                Err(hydrant_api::Error::Api {
                    status: 403 | 404, ..
                }) => {
                    return Err(TokenError::Refused(
                        "the service instance is gone, or you may no longer read it".to_owned(),
                    ));
                }
                Err(e) => return Err(TokenError::Unavailable(e.to_string())),
            };
            *current.lock().unwrap_or_else(PoisonError::into_inner) = token.clone();
            Ok(token)
        }
    }))
}

// === the micro cloud's broker ===

/// `endpoints.json`'s `service_broker`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerEndpoint {
    /// The broker's base URL.
    pub url: String,
    /// Its basic-auth user.
    pub username: String,
    /// Its basic-auth password.
    pub password: String,
}

impl From<&hydrant_microcloud::ServiceBroker> for BrokerEndpoint {
    fn from(b: &hydrant_microcloud::ServiceBroker) -> Self {
        Self {
            url: b.url.clone(),
            username: b.username.clone(),
            password: b.password.clone(),
        }
    }
}

/// The name `hydrant up` registers its own broker under.
pub const MICRO_BROKER: &str = "hydrant";

/// Registers the micro cloud's broker with its cloud controller (or updates the registration
/// with this start's URL and password) and makes every plan public. A failure is a warning:
/// the rest of the micro cloud works without services.
pub async fn register_micro_broker(
    api: &str,
    token: &str,
    broker: &hydrant_microcloud::ServiceBroker,
) {
    let client = hydrant_api::Client::new(api, Some(token.to_owned()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match try_register(&client, broker).await {
            Ok(offerings) => {
                tracing::info!(offerings = ?offerings, "registered the micro cloud's service broker");
                return;
            }
            Err(e) if Instant::now() < deadline && !matches!(e.status(), Some(400..=499)) => {
                tracing::debug!(error = %e, "the service broker is not ready yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                eprintln!(
                    "WARNING: the micro cloud's service broker could not be registered ({e}); \
                     `hydrant marketplace` stays empty"
                );
                return;
            }
        }
    }
}

async fn try_register(
    client: &hydrant_api::Client,
    broker: &hydrant_microcloud::ServiceBroker,
) -> Result<Vec<String>, hydrant_api::Error> {
    let existing = client
        .list_service_brokers()
        .await?
        .into_iter()
        .find(|b| b.name == MICRO_BROKER);
    let registered = match existing {
        Some(b) => {
            client
                .update_service_broker(
                    &b.guid,
                    &UpdateServiceBroker {
                        name: None,
                        url: Some(broker.url.clone()),
                        username: Some(broker.username.clone()),
                        password: Some(broker.password.clone()),
                    },
                )
                .await?
        }
        None => {
            client
                .create_service_broker(&CreateServiceBroker {
                    name: MICRO_BROKER.to_owned(),
                    url: broker.url.clone(),
                    username: broker.username.clone(),
                    password: broker.password.clone(),
                })
                .await?
        }
    };
    for offering in &registered.offerings {
        client
            .set_service_access(&ServiceAccess {
                offering: offering.clone(),
                plan: None,
                broker: Some(MICRO_BROKER.to_owned()),
                enable: true,
            })
            .await?;
    }
    Ok(registered.offerings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_credentials_stay_json_without_terminal_controls() {
        let text = serde_json::to_string(&serde_json::json!({"p": "a\u{9b}2Jb\u{1b}"})).unwrap();
        let shown = json_for_terminal(&text);
        assert!(
            !shown.contains('\u{9b}') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        let back: Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back["p"], "a\u{9b}2Jb\u{1b}");
    }

    #[test]
    fn parameters_are_inline_json_or_a_file() {
        assert_eq!(json_arg("-c", r#"{"a": 1}"#).unwrap()["a"], 1);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, r#"{"b": true}"#).unwrap();
        assert_eq!(json_arg("-c", file.to_str().unwrap()).unwrap()["b"], true);
        let e = json_arg("-c", "{nope").unwrap_err().to_string();
        assert!(e.contains("neither JSON nor a file"), "{e}");
        assert_eq!(
            tags_arg(Some("a, b,,c")).unwrap(),
            vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]
        );
    }
}
