//! `hydrant drain NAME URL`, `hydrant drain NAME --status`, `hydrant drains [NAME]` and
//! `hydrant undrain NAME URL`: bind, inspect and unbind an app's syslog drains.
//!
//! Flow: the CLI → the cloud controller's drain endpoints (which validate the URL and refuse
//! internal addresses) → the platform's syslog nozzle picks bindings up within its poll interval
//! and reports each drain's sent / dropped / lag / last error, which `--status` prints.
//!
//! Invariant: a drain URL typed here is shown back only masked, and every string from the server
//! is escaped before it reaches the terminal.

use std::process::ExitCode;

use hydrant_api::Drain;
use hydrant_firehose_client::render::escape_text;
use hydrant_nozzle_core::mask_url;
use serde::Serialize;

use crate::apps::{Session, print_table};
use crate::exit;

/// `hydrant drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The app.
    name: String,
    /// The drain: syslog://HOST:PORT, syslog-tls://HOST:PORT or https://HOST/PATH, with
    /// Cloud Foundry's options (`?drain-data=logs|metrics|traces|all`, `disable-metadata=true`).
    #[arg(required_unless_present = "status")]
    url: Option<String>,
    /// Show each drain's health instead: messages sent and lost, queue, lag, last error.
    #[arg(long, conflicts_with = "url")]
    status: bool,
    /// Print JSON (with `--status`).
    #[arg(long, requires = "status")]
    json: bool,
}

/// `hydrant drains`.
#[derive(Debug, clap::Args)]
pub struct DrainsArgs {
    /// Only this app's drains (default: every app you can see).
    name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `hydrant undrain`.
#[derive(Debug, clap::Args)]
pub struct UndrainArgs {
    /// The app.
    name: String,
    /// The drain URL as it was bound (the masked form `hydrant drains` prints also works).
    url: String,
}

/// Runs `hydrant drain`.
///
/// # Errors
/// An unknown app, a refused URL (the server says why), or an unreachable cloud controller.
pub async fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    if args.status {
        let drains = session.client.app_drains(&app.guid).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&drains)?);
        } else if drains.is_empty() {
            println!("{} has no drains.", escape_text(&app.name));
        } else {
            print_status(&drains, hydrant_auth::now_secs());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(url) = args.url else {
        return Err(exit::usage("give a drain URL, or --status"));
    };
    let drain = session.client.create_drain(&app.guid, &url).await?;
    println!(
        "Draining {}'s logs to {}.\nThe platform picks the drain up within seconds; \
         see `hydrant drain {} --status`.",
        escape_text(&app.name),
        escape_text(&drain.url),
        escape_text(&app.name)
    );
    Ok(ExitCode::SUCCESS)
}

fn print_status(drains: &[Drain], now: i64) {
    let mut rows = Vec::new();
    for d in drains {
        let row = match &d.status {
            None => vec![
                escape_text(&d.url),
                "pending".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "not yet reported by the syslog nozzle".to_owned(),
            ],
            Some(s) => vec![
                escape_text(&d.url),
                s.state.as_str().to_owned(),
                s.sent.to_string(),
                s.dropped.to_string(),
                s.queue_depth.to_string(),
                s.lag_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
                match &s.last_error {
                    Some(e) => escape_text(e),
                    None => format!("reported {}s ago", (now - s.reported_at).max(0)),
                },
            ],
        };
        rows.push(row);
    }
    print_table(
        &[
            "drain",
            "state",
            "sent",
            "dropped",
            "queued",
            "lag",
            "last error",
        ],
        &rows,
    );
}

#[derive(Debug, Serialize)]
struct Row<'a> {
    app: &'a str,
    #[serde(flatten)]
    drain: &'a Drain,
}

/// Runs `hydrant drains`.
///
/// # Errors
/// An unknown app or an unreachable cloud controller.
pub async fn drains(args: DrainsArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let apps = match &args.name {
        Some(name) => vec![session.app(name).await?],
        None => session.client.list_apps().await?,
    };
    let mut all = Vec::new();
    for app in &apps {
        for drain in session.client.app_drains(&app.guid).await? {
            all.push((app.name.clone(), drain));
        }
    }
    if args.json {
        let rows: Vec<Row<'_>> = all.iter().map(|(app, drain)| Row { app, drain }).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if all.is_empty() {
        println!("No drains. Bind one with `hydrant drain NAME syslog://HOST:PORT`.");
    } else {
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|(app, d)| {
                vec![
                    escape_text(app),
                    escape_text(&d.url),
                    d.status
                        .as_ref()
                        .map_or("pending", |s| s.state.as_str())
                        .to_owned(),
                ]
            })
            .collect();
        print_table(&["app", "drain", "state"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant undrain`.
///
/// # Errors
/// An unknown app or drain, or an unreachable cloud controller.
pub async fn undrain(args: UndrainArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let app = session.app(&args.name).await?;
    let wanted = mask_url(args.url.trim());
    let drains = session.client.app_drains(&app.guid).await?;
    let Some(drain) = drains.iter().find(|d| d.url == wanted) else {
        return Err(exit::not_found(format!(
            "{} has no drain {}; see `hydrant drains {}`",
            escape_text(&app.name),
            escape_text(&wanted),
            escape_text(&app.name)
        )));
    };
    session.client.delete_drain(&app.guid, &drain.guid).await?;
    println!(
        "Stopped draining {}'s logs to {}.",
        escape_text(&app.name),
        escape_text(&drain.url)
    );
    Ok(ExitCode::SUCCESS)
}
