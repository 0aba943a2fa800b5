//! The cells as operators see them: `GET /v3/cells` (what `hydrant cells` and the console
//! show), `POST /v3/cells/{id}/actions/drain` (`hydrant drain-cell`) and
//! `POST /v3/cells/{id}/actions/kill` (`hydrant debug kill-cell`), all admin-only.
//!
//! Flow: the placement table (presences, heartbeats, lost cells) → [`Placement::cells`] → JSON.
//! Drain and kill write a row in the shared `cell_requests` table and wake the convergence
//! loop; whichever controller holds the placement lease reads the rows at its next pass
//! ([`carry_out`]) and publishes the request on the bus (`executor.evacuate.<id>`,
//! `executor.kill.<id>`) — so a request works whichever controller behind the API name took
//! it, survives the holder's death until the cell acts on it, and the API never waits on a
//! cell. A drain's row stays until the cell's presence says it is evacuating (or
//! [`REQUEST_TTL`] passes); a kill's goes once published.
//!
//! Invariant: a cell is listed in exactly one state: `healthy` or `evacuating` while its
//! presence is fresh, `lost` for an hour after it lapsed (unless it came back).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use hydrant_bus::messages::{CellCapacity, CellState, EvacuationProgress};
use serde::Serialize;
use tokio::time::Instant;

use super::{Placement, live};
use crate::Ctx;
use crate::api::{ApiError, Caller};
use crate::sql::{Connection, params};

/// `cell_requests.action` of `hydrant drain-cell`.
const DRAIN: &str = "drain";
/// `cell_requests.action` of `hydrant debug kill-cell`.
const KILL: &str = "kill";
/// How long a request waits for its cell to act (a drain) or to be known by the lease's
/// holder (a kill) before it is dropped: the evacuation deadline's default.
const REQUEST_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Records that cell `cell_id` was asked to `action` at `now_ms` (a repeat refreshes it).
fn request(c: &Connection, cell_id: &str, action: &str, now_ms: i64) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO cell_requests (cell_id, action, requested_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (cell_id, action) DO UPDATE SET requested_ms = excluded.requested_ms",
        params![cell_id, action, now_ms],
    )
    .map(drop)
}

/// The requests not yet carried out, oldest first: `(cell, action)`.
fn pending(c: &Connection, now_ms: i64) -> crate::sql::Result<Vec<(String, String)>> {
    let ttl = i64::try_from(REQUEST_TTL.as_millis()).unwrap_or(i64::MAX);
    c.execute(
        "DELETE FROM cell_requests WHERE requested_ms < ?1",
        [now_ms.saturating_sub(ttl)],
    )?;
    let mut stmt =
        c.prepare("SELECT cell_id, action FROM cell_requests ORDER BY requested_ms, cell_id")?;
    let rows = stmt.query_map([], |r| r.columns())?;
    rows.collect()
}

fn done(c: &Connection, cell_id: &str, action: &str) -> crate::sql::Result<()> {
    c.execute(
        "DELETE FROM cell_requests WHERE cell_id = ?1 AND action = ?2",
        [cell_id, action],
    )
    .map(drop)
}

/// Marks every pending request in the placement table (the caller holds the placement lease
/// and publishes them in this pass), and deletes the ones done: a kill now, a drain once the
/// cell's presence says it is evacuating.
pub(crate) async fn carry_out(ctx: &Arc<Ctx>) {
    let requests = match ctx
        .db
        .run(|c| Ok(pending(c, crate::lease::now_ms())?))
        .await
    {
        Ok(requests) => requests,
        Err(e) => {
            tracing::warn!(?e, "cannot read the cell requests");
            return;
        }
    };
    let mut finished = Vec::new();
    for (cell, action) in requests {
        let marked = match action.as_str() {
            KILL => ctx.placement.kill(&cell),
            _ if ctx.placement.cell_evacuating(&cell) == Some(true) => true,
            _ => {
                ctx.placement.drain(&cell);
                false
            }
        };
        if marked {
            finished.push((cell, action));
        }
    }
    if finished.is_empty() {
        return;
    }
    let done_now = ctx
        .db
        .run(move |c| {
            for (cell, action) in &finished {
                done(c, cell, action)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = done_now {
        tracing::warn!(?e, "cannot clear carried-out cell requests");
    }
}

/// Takes `action` on cell `id` for whichever controller holds the placement lease.
async fn ask(ctx: &Arc<Ctx>, id: String, action: &'static str) -> Result<(), ApiError> {
    if ctx.placement.cell_evacuating(&id).is_none() {
        return Err(ApiError::not_found("cell"));
    }
    ctx.db
        .run(move |c| Ok(request(c, &id, action, crate::lease::now_ms())?))
        .await?;
    ctx.placement.wake();
    Ok(())
}

/// Memory, disk and containers in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CellUse {
    pub(crate) memory_mb: u64,
    pub(crate) disk_mb: u64,
    pub(crate) containers: u32,
}

/// One cell in `GET /v3/cells`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CellInfo {
    pub(crate) id: String,
    pub(crate) zone: String,
    /// `healthy`, `evacuating` or `lost`.
    pub(crate) state: CellState,
    pub(crate) host: String,
    pub(crate) capacity: CellCapacity,
    pub(crate) used: CellUse,
    /// Live instances (starting, running, crashed) it reports.
    pub(crate) instances: usize,
    /// Milliseconds since it was last heard from.
    pub(crate) last_seen_ms: u64,
    /// When it was declared lost, UNIX nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lost_since: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) evacuation: Option<EvacuationProgress>,
}

/// `GET /v3/cells`'s body.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Cells {
    pub(crate) resources: Vec<CellInfo>,
}

impl Placement {
    /// Every known cell, then every lost one, by id.
    pub(crate) fn cells(&self) -> Vec<CellInfo> {
        let now = Instant::now();
        let table = self.lock();
        let mut out: Vec<CellInfo> = table
            .executors
            .iter()
            .map(|(id, e)| {
                let hb = &e.heartbeat;
                let (capacity, used_disk) = match &e.presence {
                    Some(p) => (
                        p.capacity,
                        p.capacity.disk_mb.saturating_sub(p.available_disk),
                    ),
                    None => (
                        CellCapacity {
                            memory_mb: hb.capacity.memory_mb,
                            disk_mb: 0,
                            containers: hb.capacity.instances,
                        },
                        0,
                    ),
                };
                let evacuating = table.evacuating(id);
                CellInfo {
                    id: id.clone(),
                    zone: e.zone().to_owned(),
                    state: if evacuating {
                        CellState::Evacuating
                    } else {
                        CellState::Healthy
                    },
                    host: hb.host.clone(),
                    capacity,
                    used: CellUse {
                        memory_mb: hb.used.memory_mb,
                        disk_mb: used_disk,
                        containers: hb.used.instances,
                    },
                    instances: hb.instances.iter().filter(|i| live(i.state)).count(),
                    last_seen_ms: millis(now.duration_since(e.seen)),
                    lost_since: None,
                    evacuation: e.presence.as_ref().and_then(|p| p.evacuation.clone()),
                }
            })
            .collect();
        out.extend(table.lost.iter().map(|(id, l)| {
            CellInfo {
                id: id.clone(),
                zone: l.zone.clone(),
                state: CellState::Lost,
                host: l
                    .presence
                    .as_ref()
                    .map(|p| p.host.clone())
                    .unwrap_or_default(),
                capacity: l.presence.as_ref().map(|p| p.capacity).unwrap_or_default(),
                used: CellUse::default(),
                instances: l.instances,
                last_seen_ms: millis(now.duration_since(l.at)),
                lost_since: Some(l.since),
                evacuation: None,
            }
        }));
        out
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v3/cells", get(list_cells))
        .route("/v3/cells/{id}/actions/drain", post(drain_cell))
        .route("/v3/cells/{id}/actions/kill", post(kill_cell))
}

async fn list_cells(State(ctx): State<Arc<Ctx>>, caller: Caller) -> Result<Json<Cells>, ApiError> {
    caller.require_admin()?;
    Ok(Json(Cells {
        resources: ctx.placement.cells(),
    }))
}

async fn drain_cell(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    ask(&ctx, id.clone(), DRAIN).await?;
    tracing::warn!(cell = %id.escape_debug(), by = %caller.username, "cloud controller: draining a cell");
    Ok(StatusCode::ACCEPTED)
}

async fn kill_cell(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    ask(&ctx, id.clone(), KILL).await?;
    tracing::warn!(cell = %id.escape_debug(), by = %caller.username, "cloud controller: killing a cell (debug)");
    Ok(StatusCode::ACCEPTED)
}
