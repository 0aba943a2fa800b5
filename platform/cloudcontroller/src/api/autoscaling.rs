//! Autoscaling policy endpoints: set, read and remove an app's policy, list every policy for
//! the autoscaler, and record the autoscaler's decisions as audit events.
//!
//! Flow: `hydrant autoscale NAME --policy FILE` → `PUT /v3/apps/{guid}/autoscaling_policy` →
//! one row per app in `autoscaling_policies` → the autoscaler's `GET /v3/autoscaling_policies`
//! → its decision → `scale` (the usual `audit.app.scale`) and `POST .../autoscaling_events`
//! (`audit.app.autoscale`, with the rule and the value that triggered it).
//!
//! Invariant: only a policy that passes `ScalingPolicy::validate` is stored, so the autoscaler
//! never meets one it cannot evaluate; a rejected policy's answer names the field.

use std::sync::Arc;

use crate::sql::{Connection, OptionalExtension as _, params};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use hydrant_api::List;
use hydrant_api::policy::{AppPolicy, AutoscaleDecision, ScalingPolicy};
use serde_json::json;

use super::apps::{Access, app_for, record_event};
use super::{ApiError, Body, Caller};
use crate::Ctx;

pub(super) fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route(
            "/v3/apps/{guid}/autoscaling_policy",
            get(get_policy).put(set_policy).delete(delete_policy),
        )
        .route("/v3/apps/{guid}/autoscaling_events", post(record_decision))
        .route("/v3/autoscaling_policies", get(list_policies))
}

fn load(c: &Connection, app_guid: &str) -> Result<Option<ScalingPolicy>, ApiError> {
    let text: Option<String> = c
        .query_row(
            "SELECT policy FROM autoscaling_policies WHERE app_guid = ?1",
            params![app_guid],
            |row| row.get(0),
        )
        .optional()?;
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| ApiError::internal(format!("stored policy is unreadable: {e}")))
    })
    .transpose()
}

async fn set_policy(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(policy): Body<ScalingPolicy>,
) -> Result<Json<ScalingPolicy>, ApiError> {
    policy
        .validate()
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let text = serde_json::to_string(&policy)
        .map_err(|e| ApiError::internal(format!("cannot encode the policy: {e}")))?;
    let stored = policy.clone();
    let app = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let app = app_for(&tx, &caller, &guid, Access::Write)?;
            tx.execute(
                "INSERT INTO autoscaling_policies (app_guid, policy, updated_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT (app_guid) DO UPDATE SET \
                 policy = excluded.policy, updated_at = excluded.updated_at",
                params![app.guid, text, hydrant_auth::now_secs()],
            )?;
            record_event(
                &tx,
                "audit.app.autoscaling_policy.update",
                &caller.username,
                &app,
                json!({ "policy": stored }),
            )?;
            tx.commit()?;
            Ok(app)
        })
        .await?;
    ctx.logs.api(
        &app.guid,
        &format!(
            "Set autoscaling policy: {}..{} instances, {} rule(s)",
            policy.instance_min_count,
            policy.instance_max_count,
            policy.scaling_rules.len()
        ),
    );
    Ok(Json(policy))
}

async fn get_policy(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<Json<ScalingPolicy>, ApiError> {
    let policy = ctx
        .db
        .run(move |c| {
            let app = app_for(c, &caller, &guid, Access::Read)?;
            load(c, &app.guid)?.ok_or_else(|| ApiError::not_found("Autoscaling policy"))
        })
        .await?;
    Ok(Json(policy))
}

async fn delete_policy(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = ctx
        .db
        .run(move |c| {
            let tx = c.transaction()?;
            let app = app_for(&tx, &caller, &guid, Access::Write)?;
            let gone = tx.execute(
                "DELETE FROM autoscaling_policies WHERE app_guid = ?1",
                params![app.guid],
            )?;
            if gone == 0 {
                return Err(ApiError::not_found("Autoscaling policy"));
            }
            record_event(
                &tx,
                "audit.app.autoscaling_policy.delete",
                &caller.username,
                &app,
                json!({}),
            )?;
            tx.commit()?;
            Ok(app)
        })
        .await?;
    ctx.logs.api(&app.guid, "Removed autoscaling policy");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_policies(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
) -> Result<Json<List<AppPolicy>>, ApiError> {
    caller.require_admin()?;
    let policies = ctx
        .db
        .run(|c| {
            let rows: Vec<(String, String, String, i64)> = crate::sql::rows(
                c,
                "SELECT p.app_guid, a.name, p.policy, p.updated_at FROM autoscaling_policies p \
                 JOIN apps a ON a.guid = p.app_guid ORDER BY p.app_guid",
                [],
            )?;
            let mut out = Vec::new();
            for (app_guid, app_name, text, updated_at) in rows {
                // A row this version cannot read is skipped rather than failing everyone's.
                if let Ok(policy) = serde_json::from_str(&text) {
                    out.push(AppPolicy {
                        app_guid,
                        app_name,
                        policy,
                        updated_at,
                    });
                }
            }
            Ok(out)
        })
        .await?;
    Ok(Json(List::new(policies)))
}

async fn record_decision(
    State(ctx): State<Arc<Ctx>>,
    caller: Caller,
    Path(guid): Path<String>,
    Body(decision): Body<AutoscaleDecision>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    if decision.reason.len() > 1024 || decision.metric_type.len() > 100 {
        return Err(ApiError::unprocessable(
            "reason (1024 bytes) or metric_type (100 bytes) is too long",
        ));
    }
    ctx.db
        .run(move |c| {
            let app = app_for(c, &caller, &guid, Access::Write)?;
            let data = serde_json::to_value(&decision)
                .map_err(|e| ApiError::internal(format!("cannot encode the decision: {e}")))?;
            record_event(c, "audit.app.autoscale", &caller.username, &app, data)?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::CREATED)
}
