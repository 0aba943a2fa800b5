//! SLO endpoints: `PUT`/`GET /v3/apps/{guid}/slos` for developers and `GET /v3/slos` for the
//! SLO alerter, which polls it for every app's objectives.
//!
//! A set is validated whole ([`SloSet::validate`]) and replaces the previous one in the same
//! transaction as its audit event (`audit.app.slos.update`), so the stored set is always one
//! that passed validation and every change is on record. Webhook URLs may hold credentials:
//! they are stored (the alerter needs them) but never copied into audit events or log lines.

use std::sync::Arc;

use crate::sql::{Connection, OptionalExtension as _};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use hydrant_api::List;
use hydrant_api::slo::{AppSlos, Slo, SloSet};
use serde_json::json;

use super::apps::{Access, app_for, record_event};
use super::{ApiError, Body, Caller};
use crate::Ctx;

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v3/apps/{guid}/slos", get(get_slos).put(put_slos))
        .route("/v3/slos", get(list_slos))
}

/// The stored set of one app, if any: (spec JSON, updated_at).
fn stored(c: &Connection, app_guid: &str) -> crate::sql::Result<Option<(Vec<Slo>, u64)>> {
    let row: Option<(String, i64)> = c
        .query_row(
            "SELECT spec, updated_at FROM slos WHERE app_guid = ?1",
            [app_guid],
            |r| r.columns(),
        )
        .optional()?;
    Ok(row.map(|(spec, at)| (decode(&spec), u64::try_from(at).unwrap_or(0))))
}

/// Only validated sets are written, so a row that does not decode is a bug or a hand edit;
/// treating it as "no SLOs" keeps every other app's listing working.
fn decode(spec: &str) -> Vec<Slo> {
    match serde_json::from_str::<SloSet>(spec) {
        Ok(set) => set.slos,
        Err(e) => {
            tracing::warn!(error = %e, "a stored SLO set does not decode; ignoring it");
            Vec::new()
        }
    }
}

async fn get_slos(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<AppSlos>, ApiError> {
    super::json(&ctx, move |c| {
        let app = app_for(c, &caller, &guid, Access::Read)?;
        let (mut slos, updated_at) = stored(c, &app.guid)?.unwrap_or_default();
        // A webhook URL often carries a secret in its path or query: developers only.
        if app_for(c, &caller, &guid, Access::Secrets).is_err() {
            for slo in &mut slos {
                if slo.webhook_url.is_some() {
                    slo.webhook_url = Some(crate::tenancy::HIDDEN.to_owned());
                }
            }
        }
        Ok(AppSlos {
            app_guid: app.guid,
            app_name: app.name,
            slos,
            updated_at,
        })
    })
    .await
}

async fn put_slos(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(set): Body<SloSet>,
) -> Result<Json<AppSlos>, ApiError> {
    set.validate()
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let spec = serde_json::to_string(&set)
        .map_err(|e| ApiError::internal(format!("cannot encode the SLO set: {e}")))?;
    let now = hydrant_auth::now_secs();
    let summary: Vec<serde_json::Value> = set
        .slos
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "sli": s.sli.kind(),
                "objective": s.objective,
                "period_days": s.period_days,
                "webhook": s.webhook_url.is_some(),
            })
        })
        .collect();
    let answer = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let app = app_for(&tx, &caller, &guid, Access::Write)?;
            if set.slos.is_empty() {
                tx.execute("DELETE FROM slos WHERE app_guid = ?1", [&app.guid])?;
            } else {
                tx.execute(
                    "INSERT INTO slos (app_guid, spec, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(app_guid) DO UPDATE SET spec = ?2, updated_at = ?3",
                    crate::sql::params![app.guid, spec, now],
                )?;
            }
            record_event(
                &tx,
                "audit.app.slos.update",
                &caller.username,
                &app,
                json!({ "slos": summary }),
            )?;
            tx.commit()?;
            Ok(AppSlos {
                app_guid: app.guid,
                app_name: app.name,
                slos: set.slos,
                updated_at: u64::try_from(now).unwrap_or(0),
            })
        })
        .await?;
    let names: Vec<&str> = answer.slos.iter().map(|s| s.name.as_str()).collect();
    ctx.logs.api(
        &answer.app_guid,
        &format!(
            "Updated SLOs of app with guid {} ({})",
            answer.app_guid,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ),
    );
    Ok(Json(answer))
}

async fn list_slos(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<AppSlos>>, ApiError> {
    caller.require_admin()?;
    let all = ctx
        .db
        .run(move |c| {
            let rows: Vec<(String, String, String, i64)> = crate::sql::rows(
                c,
                "SELECT s.app_guid, a.name, s.spec, s.updated_at
                 FROM slos s JOIN apps a ON a.guid = s.app_guid ORDER BY s.app_guid",
                [],
            )?;
            let mut all = Vec::new();
            for (app_guid, app_name, spec, at) in rows {
                all.push(AppSlos {
                    app_guid,
                    app_name,
                    slos: decode(&spec),
                    updated_at: u64::try_from(at).unwrap_or(0),
                });
            }
            Ok(all)
        })
        .await?;
    Ok(Json(List::new(all)))
}
