//! Quotas: what an org (all its spaces together) and a space may use — memory and instances
//! of started apps, apps, routes, service instances and blob storage — stored, summed and
//! checked before any change that would grow the use.
//!
//! Flow: a handler that is about to create, start, scale, map or upload computes the growth
//! ([`Growth`]) and calls [`check`] inside the same transaction as the change; the space's
//! quota and its org's quota are both checked, and the answer names the quota, its limit, the
//! use now and what the request needed.
//!
//! Invariant: only growth is checked, so lowering a quota below the use in place never stops
//! anyone from scaling down, stopping or deleting to get back under it.

use crate::sql::{Connection, OptionalExtension as _, Row, Table, all, one, params};
use hydrant_api::{Quota, QuotaScope};

use crate::api::ApiError;

const QUOTA_COLUMNS: &str = "guid, name, scope, org_guid, total_memory_mb, total_instances, \
     total_apps, total_routes, total_service_instances, total_blob_mb, created_at";

fn limit(row: &Row<'_>, i: usize) -> crate::sql::Result<Option<u64>> {
    Ok(row
        .get::<_, Option<i64>>(i)?
        .map(|v| u64::try_from(v).unwrap_or(0)))
}

impl Table for Quota {
    const SELECT: &'static str = "SELECT guid, name, scope, org_guid, total_memory_mb, \
         total_instances, total_apps, total_routes, total_service_instances, total_blob_mb, \
         created_at FROM quotas";

    fn from_row(row: &Row<'_>) -> crate::sql::Result<Self> {
        let (guid, name, scope, org_guid): (_, _, String, _) = row.columns()?;
        Ok(Quota {
            guid,
            name,
            scope: if scope == "space" {
                QuotaScope::Space
            } else {
                QuotaScope::Org
            },
            org_guid,
            total_memory_mb: limit(row, 4)?,
            total_instances: limit(row, 5)?,
            total_apps: limit(row, 6)?,
            total_routes: limit(row, 7)?,
            total_service_instances: limit(row, 8)?,
            total_blob_mb: limit(row, 9)?,
            created_at: row.get(10)?,
        })
    }
}

fn sql_limit(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

pub(crate) fn insert(c: &Connection, q: &Quota) -> crate::sql::Result<()> {
    c.execute(
        &format!(
            "INSERT INTO quotas ({QUOTA_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            q.guid,
            q.name,
            match q.scope {
                QuotaScope::Org => "org",
                QuotaScope::Space => "space",
            },
            q.org_guid,
            sql_limit(q.total_memory_mb),
            sql_limit(q.total_instances),
            sql_limit(q.total_apps),
            sql_limit(q.total_routes),
            sql_limit(q.total_service_instances),
            sql_limit(q.total_blob_mb),
            q.created_at
        ],
    )
    .map(drop)
}

pub(crate) fn get(c: &Connection, guid: &str) -> crate::sql::Result<Option<Quota>> {
    one(c, "WHERE guid = ?1", [guid])
}

pub(crate) fn list(c: &Connection) -> crate::sql::Result<Vec<Quota>> {
    all(c, "ORDER BY scope, org_guid, name", [])
}

/// An org quota by guid or name, or a space quota of `org_guid` by guid or name.
pub(crate) fn find(
    c: &Connection,
    scope: QuotaScope,
    org_guid: Option<&str>,
    guid_or_name: &str,
) -> crate::sql::Result<Option<Quota>> {
    Ok(list(c)?.into_iter().find(|q| {
        q.scope == scope
            && (scope == QuotaScope::Org || q.org_guid.as_deref() == org_guid)
            && (q.guid == guid_or_name || q.name == guid_or_name)
    }))
}

pub(crate) fn set_org_quota(c: &Connection, org_guid: &str, quota: &str) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE orgs SET quota_guid = ?2 WHERE guid = ?1",
        params![org_guid, quota],
    )
    .map(drop)
}

pub(crate) fn set_space_quota(
    c: &Connection,
    space_guid: &str,
    quota: &str,
) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE spaces SET quota_guid = ?2 WHERE guid = ?1",
        params![space_guid, quota],
    )
    .map(drop)
}

// === use and checks ===

/// How much a change adds (or, negative, frees) in one space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Growth {
    pub(crate) memory_mb: i64,
    pub(crate) instances: i64,
    pub(crate) apps: i64,
    pub(crate) routes: i64,
    pub(crate) service_instances: i64,
    pub(crate) blob_bytes: i64,
}

impl Growth {
    /// Memory and instances a started app of `instances` × `memory_mb` holds.
    pub(crate) fn running(instances: u32, memory_mb: u64) -> Self {
        let instances = i64::from(instances);
        Self {
            memory_mb: instances.saturating_mul(i64::try_from(memory_mb).unwrap_or(i64::MAX)),
            instances,
            ..Self::default()
        }
    }

    /// `self - other`, field by field.
    pub(crate) fn minus(self, other: Self) -> Self {
        Self {
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            instances: self.instances.saturating_sub(other.instances),
            apps: self.apps.saturating_sub(other.apps),
            routes: self.routes.saturating_sub(other.routes),
            service_instances: self
                .service_instances
                .saturating_sub(other.service_instances),
            blob_bytes: self.blob_bytes.saturating_sub(other.blob_bytes),
        }
    }
}

/// What the spaces matched by `filter` (`s.guid = ?1` or `s.org_guid = ?1`) use now.
fn usage(c: &Connection, filter: &str, key: &str) -> crate::sql::Result<Growth> {
    let one = |sql: &str| -> crate::sql::Result<i64> {
        c.query_row(sql, [key], |r| r.get::<_, Option<i64>>(0))
            .map(Option::unwrap_or_default)
    };
    let apps_in =
        format!("SELECT a.guid FROM apps a JOIN spaces s ON s.guid = a.space_guid WHERE {filter}");
    let service_instances = if table_exists(c, "service_instances")? {
        one(&format!(
            "SELECT COUNT(*) FROM service_instances i JOIN spaces s ON s.guid = i.space_guid \
             WHERE {filter}"
        ))?
    } else {
        0
    };
    Ok(Growth {
        memory_mb: one(&format!(
            "SELECT CAST(SUM(a.instances * a.memory_mb) AS INTEGER) FROM apps a JOIN spaces s \
             ON s.guid = a.space_guid WHERE {filter} AND a.state = 'STARTED'"
        ))?,
        instances: one(&format!(
            "SELECT CAST(SUM(a.instances) AS INTEGER) FROM apps a JOIN spaces s \
             ON s.guid = a.space_guid \
             WHERE {filter} AND a.state = 'STARTED'"
        ))?,
        apps: one(&format!(
            "SELECT COUNT(*) FROM apps a JOIN spaces s ON s.guid = a.space_guid WHERE {filter}"
        ))?,
        routes: one(&format!(
            "SELECT COUNT(*) FROM space_routes r JOIN spaces s ON s.guid = r.space_guid \
             WHERE {filter}"
        ))?,
        service_instances,
        blob_bytes: one(&format!(
            "SELECT CAST((SELECT COALESCE(SUM(size), 0) FROM packages \
             WHERE app_guid IN ({apps_in})) + (SELECT COALESCE(SUM(size), 0) FROM droplets \
             WHERE app_guid IN ({apps_in})) AS INTEGER)"
        ))?,
    })
}

fn table_exists(c: &Connection, name: &str) -> crate::sql::Result<bool> {
    let sql = match c.backend() {
        crate::sql::Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1"
        }
        crate::sql::Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables WHERE CAST(table_name AS TEXT) = ?1"
        }
    };
    c.query_row(sql, [name], |r| r.get::<_, i64>(0))
        .map(|n| n > 0)
}

/// Refuses `growth` in space `space_guid` if it would take the space's quota or its org's
/// quota past a limit; the error names the quota, the limit, the use now and the need.
pub(crate) fn check(c: &Connection, space_guid: &str, growth: &Growth) -> Result<(), ApiError> {
    let row: Option<(String, Option<String>, Option<String>)> = c
        .query_row(
            "SELECT s.org_guid, s.quota_guid, o.quota_guid FROM spaces s \
             JOIN orgs o ON o.guid = s.org_guid WHERE s.guid = ?1",
            [space_guid],
            |r| r.columns(),
        )
        .optional()?;
    let Some((org_guid, space_quota, org_quota)) = row else {
        return Ok(());
    };
    let scopes = [
        (space_quota, "space", "s.guid = ?1", space_guid),
        (org_quota, "org", "s.org_guid = ?1", org_guid.as_str()),
    ];
    for (quota_guid, kind, filter, key) in scopes {
        let Some(quota) = quota_guid.map(|g| get(c, &g)).transpose()?.flatten() else {
            continue;
        };
        let used = usage(c, filter, key)?;
        let mb = |bytes: i64| bytes.saturating_add((1 << 20) - 1) / (1 << 20);
        let limits = [
            (
                "total memory",
                quota.total_memory_mb,
                used.memory_mb,
                growth.memory_mb,
                " MB",
            ),
            (
                "instances",
                quota.total_instances,
                used.instances,
                growth.instances,
                "",
            ),
            ("apps", quota.total_apps, used.apps, growth.apps, ""),
            ("routes", quota.total_routes, used.routes, growth.routes, ""),
            (
                "service instances",
                quota.total_service_instances,
                used.service_instances,
                growth.service_instances,
                "",
            ),
            (
                "blob storage",
                quota.total_blob_mb,
                mb(used.blob_bytes),
                mb(growth.blob_bytes),
                " MB",
            ),
        ];
        for (what, limit, used, more, unit) in limits {
            let Some(limit) = limit else { continue };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            if more > 0 && used.saturating_add(more) > limit {
                return Err(ApiError::quota_exceeded(
                    what,
                    format!(
                        "{kind} quota {:?} exceeded: {what} limit {limit}{unit}, {used}{unit} in \
                         use, this needs {more}{unit} more; free some up or ask for a larger quota",
                        quota.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// For the services engineer: refuses one more service instance in `space_guid` when the
/// space's or its org's quota holds no room for it. Call it in the transaction that creates
/// the instance, before the insert.
#[allow(dead_code, reason = "called by the service instance endpoints")]
pub(crate) fn check_service_instance_quota(
    c: &Connection,
    space_guid: &str,
) -> Result<(), ApiError> {
    check(
        c,
        space_guid,
        &Growth {
            service_instances: 1,
            ..Growth::default()
        },
    )
}
