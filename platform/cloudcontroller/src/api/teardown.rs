//! Deleting a space or an org with everything in it, as Cloud Foundry's `delete-space` and
//! `delete-org` do: apps (their instances stopped), routes, service bindings and service
//! instances, then the space, then (for an org) the org with its quotas and private domains.
//!
//! Flow: `DELETE /v3/spaces/{guid}` or `/v3/organizations/{guid}` → [`tear_down_space`] for
//! each space, in one transaction per request: user-provided instances and their bindings go
//! at once; every managed binding and then every managed instance gets the ordinary broker job
//! (`service_binding.delete`, `service_instance.delete`, driven by `services::jobs` like any
//! `unbind-service` or `delete-service`), never a direct broker call; apps and their routes go
//! (placement stops their instances, the router loses their routes); the space goes once no
//! service instance is left. A request that leaves managed instances behind answers 202 with
//! the jobs it started, and the same `DELETE` sent again carries on from there.
//!
//! Invariants: nothing is deleted unless all of it can be: an instance whose create or update
//! is still running, or whose plan is gone from the catalog (so no broker can be asked),
//! refuses the whole request with what to do, before any change; the decision who may delete
//! is the caller's ([`crate::tenancy::Grants`]), made by the handler before this runs.

use crate::sql::Connection;
use hydrant_api::services::Job;
use hydrant_api::tenancy::Deletion;
use hydrant_api::{Droplet, Space};
use serde_json::json;

use super::services::{plan_job, start_job};
use super::{ApiError, Caller};
use crate::services::store::{self, InstanceRow, JobSpec};
use crate::{Ctx, db};

/// What tearing down one space did, beyond the [`Deletion`] the caller sees.
#[derive(Debug, Default)]
pub(crate) struct Teardown {
    /// The answer so far.
    pub(crate) deletion: Deletion,
    /// Droplet files to delete once the transaction has committed.
    pub(crate) droplets: Vec<Droplet>,
    /// Apps were deleted: placement and the router must hear of it.
    pub(crate) apps_changed: bool,
}

impl Teardown {
    /// Adds `other` (another space of the same org) to this one.
    pub(crate) fn absorb(&mut self, other: Self) {
        let (d, o) = (&mut self.deletion, other.deletion);
        d.apps_deleted.extend(o.apps_deleted);
        d.routes_deleted += o.routes_deleted;
        d.services_deleted.extend(o.services_deleted);
        d.services_pending.extend(o.services_pending);
        d.jobs.extend(o.jobs);
        self.droplets.extend(other.droplets);
        self.apps_changed |= other.apps_changed;
    }
}

/// Refuses, before any change, what cannot be deleted: an instance with a create or update
/// under way, or a managed instance whose plan no broker serves any more.
pub(crate) fn check_space(c: &Connection, space: &Space) -> Result<(), ApiError> {
    for instance in store::instances(c, None, Some(&space.guid))? {
        if instance.busy() && instance.op.kind != "delete" {
            return Err(ApiError::unprocessable(format!(
                "service instance {:?} in space {:?} is being {}d; wait for it to finish \
                 (`hydrant service {0}`) and delete again",
                instance.name, space.name, instance.op.kind
            )));
        }
        if is_managed(&instance) && instance.plan.is_none() {
            return Err(ApiError::unprocessable(format!(
                "managed service instance {:?} in space {:?} has no plan in the catalog any \
                 more, so no broker can be asked to delete it; register its broker again \
                 (`hydrant update-service-broker`) and delete again",
                instance.name, space.name
            )));
        }
    }
    Ok(())
}

fn is_managed(instance: &InstanceRow) -> bool {
    instance.kind == hydrant_api::services::ServiceInstanceType::Managed
}

/// Why a teardown's jobs run, on the instance or binding for whoever looks.
const REASON: Option<&str> = Some("its space is being deleted");

/// One step of deleting `space` (already checked with [`check_space`]) inside the caller's
/// transaction: see the module doc. `done` in the answer once the space itself is gone.
pub(crate) fn tear_down_space(
    c: &Connection,
    ctx: &Ctx,
    caller: &Caller,
    space: &Space,
) -> Result<Teardown, ApiError> {
    let mut out = Teardown::default();
    let mut started: Vec<Job> = Vec::new();

    // Bindings first, so an app's deletion leaves none for the orphan sweep to find.
    for instance in store::instances(c, None, Some(&space.guid))? {
        let mut left = 0usize;
        for binding in store::bindings(c, Some(&instance.guid), None, None)? {
            left += 1;
            if binding.busy() {
                continue;
            }
            match &instance.plan {
                None => {
                    store::delete_binding(c, &binding.guid)?;
                    left -= 1;
                }
                Some(plan) => {
                    let spec = JobSpec {
                        binding_id: Some(binding.guid.clone()),
                        ..plan_job(ctx, plan, &instance.guid, &instance.space_guid, caller)
                    };
                    started.push(start_job(
                        c,
                        "service_binding.delete",
                        "delete",
                        spec,
                        REASON,
                    )?);
                }
            }
        }
        if left > 0 || instance.busy() {
            out.deletion.services_pending.push(instance.name.clone());
            continue;
        }
        match &instance.plan {
            None => {
                store::delete_instance(c, &instance.guid)?;
                out.deletion.services_deleted.push(instance.name.clone());
            }
            Some(plan) => {
                let spec = plan_job(ctx, plan, &instance.guid, &instance.space_guid, caller);
                started.push(start_job(
                    c,
                    "service_instance.delete",
                    "delete",
                    spec,
                    REASON,
                )?);
                out.deletion.services_pending.push(instance.name.clone());
            }
        }
    }

    // Apps, with the routes mapped to them (the foreign keys take routes, drains, SLOs and
    // policies along); placement stops their instances once it sees them gone.
    for app in db::list_apps(c, None)? {
        if app.space_guid != space.guid {
            continue;
        }
        out.deletion.routes_deleted += db::routes_of(c, &app.guid)?.len() as u64;
        out.droplets.extend(db::droplets_of(c, &app.guid)?);
        super::apps::record_event(
            c,
            "audit.app.delete-request",
            &caller.username,
            &app,
            json!({"recursive": true, "reason": "space deleted"}),
        )?;
        db::delete_app(c, &app.guid)?;
        out.deletion.apps_deleted.push(app.name.clone());
        out.apps_changed = true;
    }

    out.deletion.jobs = started;
    if out.deletion.services_pending.is_empty() {
        let claimed: u64 = c.query_row(
            "SELECT COUNT(*) FROM space_routes WHERE space_guid = ?1",
            [&space.guid],
            |r| r.get(0),
        )?;
        out.deletion.routes_deleted += claimed;
        crate::tenancy::delete_space(c, &space.guid)?;
        out.deletion.done = true;
    }
    Ok(out)
}

/// After the transaction: droplet files go, placement stops the deleted apps' instances, the
/// router hears the routes are gone and the job runner starts on the broker jobs.
pub(crate) async fn settle(ctx: &Ctx, teardown: &Teardown) {
    for droplet in &teardown.droplets {
        let _ = tokio::fs::remove_file(ctx.blobs.droplet_path(&droplet.guid)).await;
    }
    if teardown.apps_changed {
        ctx.routes_changed.notify_one();
        ctx.placement.wake();
    }
    if !teardown.deletion.jobs.is_empty() {
        ctx.services.wake.notify_one();
    }
}
