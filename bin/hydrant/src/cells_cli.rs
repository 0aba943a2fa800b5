//! `hydrant cells [--json]`, `hydrant drain-cell ID` and `hydrant debug kill-cell ID`: the
//! operator's view of the executor cells and the two ways to take one away.
//!
//! Flow: the CLI → the cloud controller's `/v3/cells` endpoints (admin) → its placement table
//! (cell presences, heartbeats, lost cells); drain and kill are published to the cell on the
//! bus by the controller's convergence loop, so the CLI returns at once and `hydrant cells`
//! shows the progress.
//!
//! Invariant: every string from the server is escaped before it reaches the terminal.

use std::process::ExitCode;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::apps::{Session, answered_without_table, print_table};
use crate::exit;

/// `hydrant cells`.
pub type CellsArgs = crate::apps::ListArgs;

/// `hydrant drain-cell`.
#[derive(Debug, clap::Args)]
pub struct DrainCellArgs {
    /// The cell (its executor id, as `hydrant cells` lists it).
    id: String,
}

/// `hydrant debug`.
#[derive(Debug, clap::Args)]
pub struct DebugArgs {
    #[command(subcommand)]
    command: DebugCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DebugCommand {
    /// Make a micro-cloud cell play a lost host: its heartbeats and presence stop and its
    /// instances are killed at once, with no graceful stop and no route unregistration.
    KillCell(DrainCellArgs),
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
struct Amounts {
    memory_mb: u64,
    disk_mb: u64,
    containers: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Evacuation {
    started_at: i64,
    deadline_at: i64,
    remaining: u32,
    reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Cell {
    id: String,
    zone: String,
    state: String,
    host: String,
    capacity: Amounts,
    used: Amounts,
    instances: usize,
    last_seen_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_since: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evacuation: Option<Evacuation>,
}

#[derive(Debug, Deserialize)]
struct Cells {
    resources: Vec<Cell>,
}

async fn call(session: &Session, method: Method, path: &str) -> anyhow::Result<Vec<u8>> {
    let url = format!("{}{path}", session.client.base_url().trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = session.client.token() {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| exit::CliError {
        code: exit::UNREACHABLE,
        message: format!("cannot reach the cloud controller at {url}: {e}"),
    })?;
    let status = response.status();
    let body = response.bytes().await?.to_vec();
    if status.is_success() {
        return Ok(body);
    }
    let detail = serde_json::from_slice::<hydrant_api::ApiErrors>(&body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map_or_else(
            || String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            |e| e.detail,
        );
    let message = match status.as_u16() {
        404 => format!("no such cell; `hydrant cells` lists them ({detail})"),
        403 => format!("only an administrator may manage cells ({detail})"),
        _ => format!("the cloud controller answered {status}: {detail}"),
    };
    let code = if status.as_u16() == 404 {
        exit::NOT_FOUND
    } else {
        1
    };
    Err(exit::CliError { code, message }.into())
}

fn percent(used: u64, total: u64) -> String {
    if total == 0 {
        return format!("{used}/?");
    }
    format!("{used}/{total} ({}%)", used.saturating_mul(100) / total)
}

fn evacuation_text(e: &Evacuation, now_ns: i64) -> String {
    if e.remaining == 0 {
        return "evacuated: every instance runs elsewhere; takes no new work".to_owned();
    }
    let left_secs = (e.deadline_at.saturating_sub(now_ns) / 1_000_000_000).max(0);
    format!(
        "{} left, deadline in {}m{:02}s",
        e.remaining,
        left_secs / 60,
        left_secs % 60
    )
}

/// Runs `hydrant cells`.
///
/// # Errors
/// An unreachable cloud controller, or a caller who is not an administrator.
pub async fn cells(args: CellsArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let body = call(&session, Method::GET, "/v3/cells").await?;
    let cells: Cells = serde_json::from_slice(&body)?;
    if answered_without_table(
        args.json,
        &cells.resources,
        cells
            .resources
            .is_empty()
            .then_some("No cells have advertised yet."),
    )? {
        return Ok(ExitCode::SUCCESS);
    }
    let now_ns = hydrant_auth::now_secs().saturating_mul(1_000_000_000);
    let rows: Vec<Vec<String>> = cells
        .resources
        .iter()
        .map(|c| {
            let note = match (&c.evacuation, c.state.as_str()) {
                (Some(e), _) => evacuation_text(e, now_ns),
                (None, "lost") => format!("silent for {}s", c.last_seen_ms / 1000),
                _ => String::new(),
            };
            vec![
                c.id.clone(),
                c.zone.clone(),
                c.state.clone(),
                percent(c.used.memory_mb, c.capacity.memory_mb),
                percent(c.used.disk_mb, c.capacity.disk_mb),
                percent(
                    u64::from(c.used.containers),
                    u64::from(c.capacity.containers),
                ),
                c.instances.to_string(),
                note,
            ]
        })
        .collect();
    print_table(
        &[
            "cell",
            "zone",
            "state",
            "memory MB",
            "disk MB",
            "containers",
            "instances",
            "",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant drain-cell ID`.
///
/// # Errors
/// An unknown cell, an unreachable cloud controller, or a caller who is not an administrator.
pub async fn drain_cell(args: DrainCellArgs) -> anyhow::Result<ExitCode> {
    let session = Session::load()?;
    let path = format!("/v3/cells/{}/actions/drain", encode(&args.id));
    call(&session, Method::POST, &path).await?;
    println!(
        "Draining cell {}: its instances keep serving until their replacements run elsewhere. \
         Watch with `hydrant cells`.",
        hydrant_firehose_client::render::escape_text(&args.id)
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `hydrant debug ...`.
///
/// # Errors
/// An unknown cell, an unreachable cloud controller, or a caller who is not an administrator.
pub async fn debug(args: DebugArgs) -> anyhow::Result<ExitCode> {
    let DebugCommand::KillCell(args) = args.command;
    let session = Session::load()?;
    let path = format!("/v3/cells/{}/actions/kill", encode(&args.id));
    call(&session, Method::POST, &path).await?;
    println!(
        "Killed cell {} (a micro-cloud cell goes silent and kills its instances; a cell \
         outside the micro cloud ignores this). Its presence lapses within 15 s.",
        hydrant_firehose_client::render::escape_text(&args.id)
    );
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a path segment (cell ids are tokens; anything else is escaped, not trusted).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_ids_are_encoded_and_progress_reads_plainly() {
        assert_eq!(encode("cell-1"), "cell-1");
        assert_eq!(encode("../x"), "%2E%2E%2Fx");
        let e = Evacuation {
            deadline_at: 125_000_000_000,
            remaining: 3,
            ..Evacuation::default()
        };
        assert_eq!(evacuation_text(&e, 0), "3 left, deadline in 2m05s");
        let done = Evacuation { remaining: 0, ..e };
        assert!(evacuation_text(&done, 0).starts_with("evacuated"));
        assert_eq!(percent(512, 1024), "512/1024 (50%)");
        assert_eq!(percent(5, 0), "5/?");
    }
}
