//! SQL for services: brokers and their stored catalogs, plan visibility, instances, bindings
//! (app bindings and service keys) and the durable job rows the runner works through.
//!
//! The tables come from the services step of `db::MIGRATIONS`. Invariant: every function here
//! runs inside the caller's connection or transaction, so an API change and the job it starts
//! are written together or not at all.

use crate::sql::{Connection, OptionalExtension as _, Row, Table, all, one, params, table};
use hydrant_api::services::{
    BindingType, Job, LastOperation, ServiceBinding, ServiceBroker, ServiceInstance,
    ServiceInstanceType, ServiceOffering, ServicePlan,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::catalog;

/// The migration step that creates the services tables (appended to `db::MIGRATIONS`).
pub(crate) const MIGRATION: &str = r"
CREATE TABLE service_brokers (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    username TEXT NOT NULL,
    password TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE service_offerings (
    guid TEXT PRIMARY KEY,
    broker_guid TEXT NOT NULL REFERENCES service_brokers(guid) ON DELETE CASCADE,
    broker_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    bindable INTEGER NOT NULL,
    tags TEXT NOT NULL,
    requires TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    UNIQUE (broker_guid, broker_id)
);
CREATE TABLE service_plans (
    guid TEXT PRIMARY KEY,
    offering_guid TEXT NOT NULL REFERENCES service_offerings(guid) ON DELETE CASCADE,
    broker_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    free INTEGER NOT NULL,
    bindable INTEGER NOT NULL,
    plan_updateable INTEGER NOT NULL,
    maximum_polling_duration INTEGER,
    schemas TEXT NOT NULL,
    maintenance_info TEXT NOT NULL,
    public INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    UNIQUE (offering_guid, broker_id)
);
CREATE TABLE service_instances (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    space_guid TEXT NOT NULL REFERENCES spaces(guid),
    type TEXT NOT NULL,
    plan_guid TEXT REFERENCES service_plans(guid),
    tags TEXT NOT NULL,
    credentials TEXT,
    syslog_drain_url TEXT,
    route_service_url TEXT,
    dashboard_url TEXT,
    op_type TEXT NOT NULL,
    op_state TEXT NOT NULL,
    op_description TEXT,
    op_updated_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (space_guid, name)
);
CREATE TABLE service_bindings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    guid TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    instance_guid TEXT NOT NULL REFERENCES service_instances(guid),
    app_guid TEXT REFERENCES apps(guid) ON DELETE SET NULL,
    name TEXT,
    credentials TEXT,
    syslog_drain_url TEXT,
    volume_mounts TEXT NOT NULL DEFAULT '[]',
    op_type TEXT NOT NULL,
    op_state TEXT NOT NULL,
    op_description TEXT,
    op_updated_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX service_bindings_app ON service_bindings(app_guid);
CREATE INDEX service_bindings_instance ON service_bindings(instance_guid);
CREATE TABLE service_jobs (
    guid TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    resource_guid TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    spec TEXT NOT NULL,
    broker_operation TEXT,
    description TEXT,
    polls INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL,
    deadline_ms INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX service_jobs_due ON service_jobs(state, next_at_ms);
";

fn json_col(text: Option<String>) -> Value {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn strings_col(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

/// The first column of every row of `sql` for one guid (names for a view).
fn names(c: &Connection, sql: &str, guid: &str) -> crate::sql::Result<Vec<String>> {
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map([guid], |r| r.get(0))?;
    rows.collect()
}

/// The `op_type, op_state, op_description, op_updated_at` columns from `first` on.
fn last_operation(r: &Row<'_>, first: usize) -> crate::sql::Result<LastOperation> {
    Ok(LastOperation {
        kind: r.get(first)?,
        state: r.get(first + 1)?,
        description: r.get(first + 2)?,
        updated_at: r.get(first + 3)?,
    })
}

/// The row an operation's progress is recorded on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpRow {
    /// A service instance's.
    Instance,
    /// A service binding's (an app binding or a key).
    Binding,
}

impl OpRow {
    /// The binding's row when the operation names a binding, else the instance's.
    pub(crate) fn of(binding: bool) -> Self {
        if binding {
            Self::Binding
        } else {
            Self::Instance
        }
    }

    const fn table(self) -> &'static str {
        match self {
            Self::Instance => "service_instances",
            Self::Binding => "service_bindings",
        }
    }
}

/// Records an operation's progress on the instance or binding row `guid`.
pub(crate) fn set_op(
    c: &Connection,
    row: OpRow,
    guid: &str,
    kind: &str,
    state: &str,
    description: Option<&str>,
) -> crate::sql::Result<()> {
    let table = row.table();
    c.execute(
        &format!(
            "UPDATE {table} SET op_type = ?2, op_state = ?3, op_description = ?4, \
             op_updated_at = ?5 WHERE guid = ?1"
        ),
        params![guid, kind, state, description, hydrant_auth::now_secs()],
    )
    .map(drop)
}

/// The `type` column of a binding.
fn binding_kind(kind: BindingType) -> &'static str {
    match kind {
        BindingType::App => "app",
        BindingType::Key => "key",
    }
}

// === brokers and catalogs ===

/// A broker row with its credentials (never sent to a client).
#[derive(Debug, Clone)]
pub(crate) struct BrokerRow {
    pub(crate) guid: String,
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl BrokerRow {
    pub(crate) fn addr(&self) -> super::osb::BrokerAddr {
        super::osb::BrokerAddr {
            url: self.url.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

table!(BrokerRow, "SELECT guid, name, url, username, password, created_at, updated_at \
     FROM service_brokers", {
    guid, name, url, username, password, created_at, updated_at
});

pub(crate) fn broker(c: &Connection, guid_or_name: &str) -> crate::sql::Result<Option<BrokerRow>> {
    one(
        c,
        "WHERE guid = ?1 OR name = ?1 ORDER BY guid = ?1 DESC LIMIT 1",
        [guid_or_name],
    )
}

pub(crate) fn brokers(c: &Connection) -> crate::sql::Result<Vec<BrokerRow>> {
    all(c, "ORDER BY name", [])
}

pub(crate) fn insert_broker(c: &Connection, b: &BrokerRow) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO service_brokers (guid, name, url, username, password, created_at, \
         updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            b.guid,
            b.name,
            b.url,
            b.username,
            b.password,
            b.created_at,
            b.updated_at
        ],
    )
    .map(drop)
}

pub(crate) fn update_broker(c: &Connection, b: &BrokerRow) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE service_brokers SET name = ?2, url = ?3, username = ?4, password = ?5, \
         updated_at = ?6 WHERE guid = ?1",
        params![b.guid, b.name, b.url, b.username, b.password, b.updated_at],
    )
    .map(drop)
}

pub(crate) fn delete_broker(c: &Connection, guid: &str) -> crate::sql::Result<()> {
    c.execute("DELETE FROM service_brokers WHERE guid = ?1", [guid])
        .map(drop)
}

/// Instances of any plan of the broker.
pub(crate) fn broker_instance_count(c: &Connection, broker_guid: &str) -> crate::sql::Result<i64> {
    c.query_row(
        "SELECT COUNT(*) FROM service_instances i JOIN service_plans p ON p.guid = i.plan_guid \
         JOIN service_offerings o ON o.guid = p.offering_guid WHERE o.broker_guid = ?1",
        [broker_guid],
        |r| r.get(0),
    )
}

/// The broker as a client sees it.
pub(crate) fn broker_view(c: &Connection, b: &BrokerRow) -> crate::sql::Result<ServiceBroker> {
    let offerings = names(
        c,
        "SELECT name FROM service_offerings WHERE broker_guid = ?1 AND active = 1 ORDER BY name",
        &b.guid,
    )?;
    Ok(ServiceBroker {
        guid: b.guid.clone(),
        name: b.name.clone(),
        url: b.url.clone(),
        username: b.username.clone(),
        offerings,
        created_at: b.created_at,
        updated_at: b.updated_at,
    })
}

/// Stores a validated catalog: offerings and plans are matched by their broker ids, so a
/// plan keeps its guid and its visibility across fetches; what vanished from the catalog is
/// deleted, or only deactivated while instances use it.
pub(crate) fn store_catalog(
    c: &Connection,
    broker_guid: &str,
    offerings: &[catalog::Offering],
) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE service_offerings SET active = 0 WHERE broker_guid = ?1",
        [broker_guid],
    )?;
    c.execute(
        "UPDATE service_plans SET active = 0 WHERE offering_guid IN \
         (SELECT guid FROM service_offerings WHERE broker_guid = ?1)",
        [broker_guid],
    )?;
    for o in offerings {
        let existing: Option<String> = c
            .query_row(
                "SELECT guid FROM service_offerings WHERE broker_guid = ?1 AND broker_id = ?2",
                [broker_guid, &o.id],
                |r| r.get(0),
            )
            .optional()?;
        let offering_guid = existing.unwrap_or_else(crate::password::new_guid);
        c.execute(
            "INSERT INTO service_offerings (guid, broker_guid, broker_id, name, description, \
             bindable, tags, requires, active) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1) \
             ON CONFLICT (guid) DO UPDATE SET name = ?4, description = ?5, bindable = ?6, \
             tags = ?7, requires = ?8, active = 1",
            params![
                offering_guid,
                broker_guid,
                o.id,
                o.name,
                o.description,
                o.bindable,
                serde_json::to_string(&o.tags).unwrap_or_default(),
                serde_json::to_string(&o.requires).unwrap_or_default(),
            ],
        )?;
        for p in &o.plans {
            let existing: Option<String> = c
                .query_row(
                    "SELECT guid FROM service_plans WHERE offering_guid = ?1 AND broker_id = ?2",
                    [&offering_guid, &p.id],
                    |r| r.get(0),
                )
                .optional()?;
            let plan_guid = existing.unwrap_or_else(crate::password::new_guid);
            c.execute(
                "INSERT INTO service_plans (guid, offering_guid, broker_id, name, description, \
                 free, bindable, plan_updateable, maximum_polling_duration, schemas, \
                 maintenance_info, public, active) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, 1) \
                 ON CONFLICT (guid) DO UPDATE SET name = ?4, description = ?5, free = ?6, \
                 bindable = ?7, plan_updateable = ?8, maximum_polling_duration = ?9, \
                 schemas = ?10, maintenance_info = ?11, active = 1",
                params![
                    plan_guid,
                    offering_guid,
                    p.id,
                    p.name,
                    p.description,
                    p.free,
                    p.bindable,
                    p.plan_updateable,
                    p.maximum_polling_duration,
                    p.schemas.to_string(),
                    p.maintenance_info.to_string(),
                ],
            )?;
        }
    }
    c.execute(
        "DELETE FROM service_plans WHERE active = 0 AND guid NOT IN \
         (SELECT plan_guid FROM service_instances WHERE plan_guid IS NOT NULL)",
        [],
    )?;
    c.execute(
        "DELETE FROM service_offerings WHERE broker_guid = ?1 AND active = 0 AND guid NOT IN \
         (SELECT offering_guid FROM service_plans)",
        [broker_guid],
    )?;
    Ok(())
}

/// A plan with what the job runner and the API need of its offering and broker.
#[derive(Debug, Clone)]
pub(crate) struct PlanRow {
    pub(crate) guid: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) free: bool,
    pub(crate) bindable: bool,
    pub(crate) plan_updateable: bool,
    pub(crate) maximum_polling_duration: Option<u64>,
    pub(crate) schemas: Value,
    pub(crate) maintenance_info: Value,
    pub(crate) public: bool,
    pub(crate) active: bool,
    pub(crate) offering_guid: String,
    pub(crate) offering_id: String,
    pub(crate) offering_name: String,
    pub(crate) offering_description: String,
    pub(crate) offering_tags: Vec<String>,
    pub(crate) requires: Vec<String>,
    pub(crate) broker_guid: String,
    pub(crate) broker_name: String,
}

impl PlanRow {
    pub(crate) fn view(&self) -> ServicePlan {
        ServicePlan {
            guid: self.guid.clone(),
            broker_id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            free: self.free,
            public: self.public,
            bindable: self.bindable,
            plan_updateable: self.plan_updateable,
            maximum_polling_duration: self.maximum_polling_duration,
            schemas: self.schemas.clone(),
        }
    }

    /// The schema at `schemas.<resource>.<action>.parameters`, if the plan has one.
    pub(crate) fn schema(&self, resource: &str, action: &str) -> Option<&Value> {
        self.schemas
            .get(resource)?
            .get(action)?
            .get("parameters")
            .filter(|v| v.is_object())
    }
}

impl Table for PlanRow {
    const SELECT: &'static str = "SELECT p.guid, p.broker_id, p.name, p.description, p.free, \
         p.bindable, p.plan_updateable, p.maximum_polling_duration, p.schemas, \
         p.maintenance_info, p.public, p.active, o.guid, o.broker_id, o.name, o.description, \
         o.tags, o.requires, b.guid, b.name \
         FROM service_plans p JOIN service_offerings o ON o.guid = p.offering_guid \
         JOIN service_brokers b ON b.guid = o.broker_guid";

    fn from_row(r: &Row<'_>) -> crate::sql::Result<Self> {
        let (
            guid,
            id,
            name,
            description,
            free,
            bindable,
            plan_updateable,
            maximum_polling_duration,
            schemas,
            maintenance_info,
            public,
            active,
            offering_guid,
            offering_id,
            offering_name,
            offering_description,
            tags,
            requires,
            broker_guid,
            broker_name,
        ) = r.columns()?;
        Ok(PlanRow {
            guid,
            id,
            name,
            description,
            free,
            bindable,
            plan_updateable,
            maximum_polling_duration,
            schemas: json_col(schemas),
            maintenance_info: json_col(maintenance_info),
            public,
            active,
            offering_guid,
            offering_id,
            offering_name,
            offering_description,
            offering_tags: strings_col(tags),
            requires: strings_col(requires),
            broker_guid,
            broker_name,
        })
    }
}

pub(crate) fn plan(c: &Connection, guid: &str) -> crate::sql::Result<Option<PlanRow>> {
    one(c, "WHERE p.guid = ?1", [guid])
}

/// Every active plan, optionally of one offering name and broker.
pub(crate) fn plans(
    c: &Connection,
    offering: Option<&str>,
    broker: Option<&str>,
) -> crate::sql::Result<Vec<PlanRow>> {
    all(
        c,
        "WHERE p.active = 1 AND o.active = 1 AND (?1 IS NULL OR o.name = ?1) \
         AND (?2 IS NULL OR b.name = ?2 OR b.guid = ?2) ORDER BY o.name, b.name, p.rowid",
        params![offering, broker],
    )
}

pub(crate) fn set_plan_public(c: &Connection, guid: &str, public: bool) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE service_plans SET public = ?2 WHERE guid = ?1",
        params![guid, public],
    )
    .map(drop)
}

/// The marketplace: offerings with the plans `admin` (everything) or a user (public plans)
/// may see; offerings with no visible plan are left out.
pub(crate) fn marketplace(c: &Connection, admin: bool) -> crate::sql::Result<Vec<ServiceOffering>> {
    let mut out: Vec<ServiceOffering> = Vec::new();
    for p in plans(c, None, None)? {
        if !p.active || !(admin || p.public) {
            continue;
        }
        let view = p.view();
        match out.iter_mut().find(|o| o.guid == p.offering_guid) {
            Some(o) => o.plans.push(view),
            None => out.push(ServiceOffering {
                guid: p.offering_guid.clone(),
                broker_id: p.offering_id.clone(),
                name: p.offering_name.clone(),
                description: p.offering_description.clone(),
                broker_name: p.broker_name.clone(),
                bindable: p.bindable,
                tags: p.offering_tags.clone(),
                requires: p.requires.clone(),
                plans: vec![view],
            }),
        }
    }
    Ok(out)
}

// === instances ===

/// An instance row, with its plan when managed.
#[derive(Debug, Clone)]
pub(crate) struct InstanceRow {
    pub(crate) guid: String,
    pub(crate) name: String,
    pub(crate) space_guid: String,
    pub(crate) space_name: String,
    pub(crate) kind: ServiceInstanceType,
    pub(crate) plan: Option<PlanRow>,
    pub(crate) tags: Vec<String>,
    pub(crate) credentials: Value,
    pub(crate) syslog_drain_url: Option<String>,
    pub(crate) route_service_url: Option<String>,
    pub(crate) dashboard_url: Option<String>,
    pub(crate) op: LastOperation,
    pub(crate) created_at: i64,
}

impl InstanceRow {
    /// Whether an operation on it is still running (another must wait).
    pub(crate) fn busy(&self) -> bool {
        self.op.state == "in progress"
    }
}

impl Table for (InstanceRow, Option<String>) {
    const SELECT: &'static str = "SELECT i.guid, i.name, i.space_guid, s.name, i.type, \
         i.plan_guid, i.tags, i.credentials, i.syslog_drain_url, i.route_service_url, \
         i.dashboard_url, i.op_type, i.op_state, i.op_description, i.op_updated_at, i.created_at \
         FROM service_instances i JOIN spaces s ON s.guid = i.space_guid";

    fn from_row(r: &Row<'_>) -> crate::sql::Result<Self> {
        let (guid, name, space_guid, space_name) = r.columns()?;
        let kind: String = r.get(4)?;
        Ok((
            InstanceRow {
                guid,
                name,
                space_guid,
                space_name,
                kind: if kind == "user-provided" {
                    ServiceInstanceType::UserProvided
                } else {
                    ServiceInstanceType::Managed
                },
                plan: None,
                tags: strings_col(r.get(6)?),
                credentials: json_col(r.get(7)?),
                syslog_drain_url: r.get(8)?,
                route_service_url: r.get(9)?,
                dashboard_url: r.get(10)?,
                op: last_operation(r, 11)?,
                created_at: r.get(15)?,
            },
            r.get(5)?,
        ))
    }
}

fn with_plan(
    c: &Connection,
    (mut row, plan_guid): (InstanceRow, Option<String>),
) -> crate::sql::Result<InstanceRow> {
    if let Some(guid) = plan_guid {
        row.plan = plan(c, &guid)?;
    }
    Ok(row)
}

pub(crate) fn instance(c: &Connection, guid: &str) -> crate::sql::Result<Option<InstanceRow>> {
    let found = one(c, "WHERE i.guid = ?1", [guid])?;
    found.map(|f| with_plan(c, f)).transpose()
}

/// Instances, optionally by name and space.
pub(crate) fn instances(
    c: &Connection,
    name: Option<&str>,
    space_guid: Option<&str>,
) -> crate::sql::Result<Vec<InstanceRow>> {
    let rows = all(
        c,
        "WHERE (?1 IS NULL OR i.name = ?1) AND (?2 IS NULL OR i.space_guid = ?2) \
         ORDER BY s.name, i.name",
        params![name, space_guid],
    )?;
    rows.into_iter().map(|f| with_plan(c, f)).collect()
}

pub(crate) fn insert_instance(
    c: &Connection,
    i: &InstanceRow,
    plan_guid: Option<&str>,
) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO service_instances (guid, name, space_guid, type, plan_guid, tags, \
         credentials, syslog_drain_url, route_service_url, dashboard_url, op_type, op_state, \
         op_description, op_updated_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            i.guid,
            i.name,
            i.space_guid,
            i.kind.as_str(),
            plan_guid,
            serde_json::to_string(&i.tags).unwrap_or_default(),
            (!i.credentials.is_null()).then(|| i.credentials.to_string()),
            i.syslog_drain_url,
            i.route_service_url,
            i.dashboard_url,
            i.op.kind,
            i.op.state,
            i.op.description,
            i.op.updated_at,
            i.created_at,
        ],
    )
    .map(drop)
}

pub(crate) fn set_instance_fields(
    c: &Connection,
    guid: &str,
    plan_guid: Option<&str>,
    tags: &[String],
    credentials: &Value,
    syslog_drain_url: Option<&str>,
) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE service_instances SET plan_guid = COALESCE(?2, plan_guid), tags = ?3, \
         credentials = ?4, syslog_drain_url = ?5 WHERE guid = ?1",
        params![
            guid,
            plan_guid,
            serde_json::to_string(tags).unwrap_or_default(),
            (!credentials.is_null()).then(|| credentials.to_string()),
            syslog_drain_url,
        ],
    )
    .map(drop)
}

pub(crate) fn set_dashboard_url(c: &Connection, guid: &str, url: &str) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE service_instances SET dashboard_url = ?2 WHERE guid = ?1",
        params![guid, url],
    )
    .map(drop)
}

/// Deletes an instance row; its jobs stay readable until they are pruned.
pub(crate) fn delete_instance(c: &Connection, guid: &str) -> crate::sql::Result<()> {
    c.execute("DELETE FROM service_instances WHERE guid = ?1", [guid])
        .map(drop)
}

/// The instance as a client sees it (credentials and the drain's password left out).
pub(crate) fn instance_view(
    c: &Connection,
    i: &InstanceRow,
) -> crate::sql::Result<ServiceInstance> {
    let bound_apps = names(
        c,
        "SELECT DISTINCT a.name FROM service_bindings b JOIN apps a ON a.guid = b.app_guid \
         WHERE b.instance_guid = ?1 AND b.type = 'app' ORDER BY a.name",
        &i.guid,
    )?;
    Ok(ServiceInstance {
        guid: i.guid.clone(),
        name: i.name.clone(),
        kind: i.kind,
        space_guid: i.space_guid.clone(),
        space_name: i.space_name.clone(),
        offering: i.plan.as_ref().map(|p| p.offering_name.clone()),
        plan: i.plan.as_ref().map(|p| p.name.clone()),
        broker: i.plan.as_ref().map(|p| p.broker_name.clone()),
        tags: i.tags.clone(),
        dashboard_url: i.dashboard_url.clone(),
        syslog_drain_url: i.syslog_drain_url.as_deref().map(hydrant_api::mask_url),
        last_operation: i.op.clone(),
        bound_apps,
        created_at: i.created_at,
    })
}

// === bindings ===

/// A binding row.
#[derive(Debug, Clone)]
pub(crate) struct BindingRow {
    pub(crate) guid: String,
    pub(crate) kind: BindingType,
    pub(crate) instance_guid: String,
    pub(crate) instance_name: String,
    pub(crate) app_guid: Option<String>,
    pub(crate) app_name: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) credentials: Option<Value>,
    pub(crate) syslog_drain_url: Option<String>,
    pub(crate) volume_mounts: Value,
    pub(crate) op: LastOperation,
    pub(crate) created_at: i64,
}

impl BindingRow {
    pub(crate) fn view(&self) -> ServiceBinding {
        ServiceBinding {
            guid: self.guid.clone(),
            kind: self.kind,
            name: self.name.clone(),
            service_instance_guid: self.instance_guid.clone(),
            service_instance_name: self.instance_name.clone(),
            app_guid: self.app_guid.clone(),
            app_name: self.app_name.clone(),
            last_operation: self.op.clone(),
            created_at: self.created_at,
        }
    }

    pub(crate) fn busy(&self) -> bool {
        self.op.state == "in progress"
    }
}

impl Table for BindingRow {
    const SELECT: &'static str = "SELECT b.guid, b.type, b.instance_guid, i.name, b.app_guid, \
         a.name, b.name, b.credentials, b.syslog_drain_url, b.volume_mounts, b.op_type, \
         b.op_state, b.op_description, b.op_updated_at, b.created_at \
         FROM service_bindings b JOIN service_instances i ON i.guid = b.instance_guid \
         LEFT JOIN apps a ON a.guid = b.app_guid";

    fn from_row(r: &Row<'_>) -> crate::sql::Result<Self> {
        let kind: String = r.get(1)?;
        let credentials: Option<String> = r.get(7)?;
        let mounts: String = r.get(9)?;
        let (guid, _, instance_guid, instance_name, app_guid, app_name, name): (
            _,
            String,
            _,
            _,
            _,
            _,
            _,
        ) = r.columns()?;
        Ok(BindingRow {
            guid,
            kind: if kind == "key" {
                BindingType::Key
            } else {
                BindingType::App
            },
            instance_guid,
            instance_name,
            app_guid,
            app_name,
            name,
            credentials: credentials.and_then(|t| serde_json::from_str(&t).ok()),
            syslog_drain_url: r.get(8)?,
            volume_mounts: serde_json::from_str(&mounts).unwrap_or(Value::Array(Vec::new())),
            op: last_operation(r, 10)?,
            created_at: r.get(14)?,
        })
    }
}

pub(crate) fn binding(c: &Connection, guid: &str) -> crate::sql::Result<Option<BindingRow>> {
    one(c, "WHERE b.guid = ?1", [guid])
}

/// Bindings, filtered; newest last.
pub(crate) fn bindings(
    c: &Connection,
    instance_guid: Option<&str>,
    app_guid: Option<&str>,
    kind: Option<BindingType>,
) -> crate::sql::Result<Vec<BindingRow>> {
    all(
        c,
        "WHERE (?1 IS NULL OR b.instance_guid = ?1) \
         AND (?2 IS NULL OR b.app_guid = ?2) AND (?3 IS NULL OR b.type = ?3) ORDER BY b.seq",
        params![instance_guid, app_guid, kind.map(binding_kind)],
    )
}

pub(crate) fn insert_binding(c: &Connection, b: &BindingRow) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO service_bindings (guid, type, instance_guid, app_guid, name, credentials, \
         syslog_drain_url, volume_mounts, op_type, op_state, op_description, op_updated_at, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            b.guid,
            binding_kind(b.kind),
            b.instance_guid,
            b.app_guid,
            b.name,
            b.credentials.as_ref().map(Value::to_string),
            b.syslog_drain_url,
            b.volume_mounts.to_string(),
            b.op.kind,
            b.op.state,
            b.op.description,
            b.op.updated_at,
            b.created_at,
        ],
    )
    .map(drop)
}

/// Stores what the broker returned for a binding and marks its create succeeded.
pub(crate) fn set_binding_credentials(
    c: &Connection,
    guid: &str,
    credentials: &Value,
    syslog_drain_url: Option<&str>,
    volume_mounts: &Value,
) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE service_bindings SET credentials = ?2, syslog_drain_url = ?3, \
         volume_mounts = ?4, op_type = 'create', op_state = 'succeeded', op_description = NULL, \
         op_updated_at = ?5 WHERE guid = ?1",
        params![
            guid,
            credentials.to_string(),
            syslog_drain_url,
            volume_mounts.to_string(),
            hydrant_auth::now_secs()
        ],
    )
    .map(drop)
}

/// Deletes a binding and the syslog drain row it fed, if any.
pub(crate) fn delete_binding(c: &Connection, guid: &str) -> crate::sql::Result<()> {
    c.execute("DELETE FROM drains WHERE guid = ?1", [guid])?;
    c.execute("DELETE FROM service_bindings WHERE guid = ?1", [guid])
        .map(drop)
}

/// Feeds a binding's syslog drain URL into the syslog drain path: a `drains` row under the
/// binding's guid, which the syslog nozzle reads like any drain bound with `hydrant drain`.
pub(crate) fn set_binding_drain(
    c: &Connection,
    binding_guid: &str,
    app_guid: &str,
    url: Option<&str>,
) -> crate::sql::Result<()> {
    c.execute("DELETE FROM drains WHERE guid = ?1", [binding_guid])?;
    if let Some(url) = url.filter(|u| !u.is_empty()) {
        c.execute(
            "INSERT INTO drains (guid, app_guid, url, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![binding_guid, app_guid, url, hydrant_auth::now_secs()],
        )?;
    }
    Ok(())
}

/// App bindings whose app was deleted (its guid set NULL by the foreign key) and that no job
/// is unbinding yet: the runner unbinds them at the broker.
pub(crate) fn orphaned_app_bindings(c: &Connection) -> crate::sql::Result<Vec<BindingRow>> {
    all(
        c,
        "WHERE b.type = 'app' AND b.app_guid IS NULL \
         AND b.op_state != 'in progress' ORDER BY b.seq LIMIT 16",
        [],
    )
}

// === jobs ===

/// What a job needs to talk to the broker, written when it is created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct JobSpec {
    pub(crate) broker_guid: String,
    pub(crate) service_id: String,
    /// The plan id the broker knows the resource by now (the pre-update plan on updates).
    pub(crate) plan_id: String,
    /// Update: the plan row to move the instance to once the broker agrees.
    pub(crate) new_plan_guid: Option<String>,
    pub(crate) instance_id: String,
    pub(crate) binding_id: Option<String>,
    /// App binding: the app, for the environment size check.
    pub(crate) app_guid: Option<String>,
    /// The originating user's guid (none for work without a user behind it).
    pub(crate) user: Option<String>,
    /// The PUT or PATCH body.
    pub(crate) body: Option<Value>,
    /// Longest this operation is polled, seconds.
    pub(crate) max_poll_secs: u64,
    /// Update: new tags to store once the broker agrees.
    pub(crate) tags: Option<Vec<String>>,
    /// The space of the resource, which decides who may read the job.
    pub(crate) space_guid: Option<String>,
}

/// A job row.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub(crate) guid: String,
    pub(crate) operation: String,
    pub(crate) resource_guid: String,
    pub(crate) state: String,
    pub(crate) phase: String,
    pub(crate) spec: JobSpec,
    pub(crate) broker_operation: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) polls: u32,
    pub(crate) attempts: u32,
    pub(crate) next_at_ms: i64,
    pub(crate) deadline_ms: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl JobRow {
    pub(crate) fn view(&self) -> Job {
        Job {
            guid: self.guid.clone(),
            operation: self.operation.clone(),
            state: self.state.clone(),
            resource_guid: self.resource_guid.clone(),
            description: self.description.clone(),
            polls: self.polls,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

impl Table for JobRow {
    const SELECT: &'static str = "SELECT guid, operation, resource_guid, state, phase, spec, \
         broker_operation, description, polls, attempts, next_at_ms, deadline_ms, created_at, \
         updated_at FROM service_jobs";

    fn from_row(r: &Row<'_>) -> crate::sql::Result<Self> {
        let (
            guid,
            operation,
            resource_guid,
            state,
            phase,
            spec,
            broker_operation,
            description,
            polls,
            attempts,
            next_at_ms,
            deadline_ms,
            created_at,
            updated_at,
        ) = r.columns()?;
        let spec: String = spec;
        Ok(JobRow {
            guid,
            operation,
            resource_guid,
            state,
            phase,
            spec: serde_json::from_str(&spec).unwrap_or_default(),
            broker_operation,
            description,
            polls,
            attempts,
            next_at_ms,
            deadline_ms,
            created_at,
            updated_at,
        })
    }
}

pub(crate) fn job(c: &Connection, guid: &str) -> crate::sql::Result<Option<JobRow>> {
    one(c, "WHERE guid = ?1", [guid])
}

/// Claims job `guid` for controller `node` until `now_ms + hold_ms` and returns it, if it is
/// unfinished, due, and claimed by no one (or by a claim that expired: its controller died
/// mid-step). One atomic update decides, so of two controllers sharing the database exactly
/// one runs each step.
pub(crate) fn claim_job(
    c: &Connection,
    guid: &str,
    node: &str,
    now_ms: i64,
    hold_ms: i64,
) -> crate::sql::Result<Option<JobRow>> {
    let claimed = c.execute(
        "UPDATE service_jobs SET claimed_by = ?2, claimed_until_ms = ?3 \
         WHERE guid = ?1 AND state IN ('PROCESSING', 'POLLING') AND next_at_ms <= ?4 \
         AND (claimed_until_ms IS NULL OR claimed_until_ms < ?4)",
        params![guid, node, now_ms.saturating_add(hold_ms), now_ms],
    )?;
    if claimed == 0 {
        return Ok(None);
    }
    job(c, guid)
}

/// Ends `node`'s claim on job `guid` (its step's outcome is written).
pub(crate) fn release_job(c: &Connection, guid: &str, node: &str) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE service_jobs SET claimed_by = NULL, claimed_until_ms = NULL \
         WHERE guid = ?1 AND claimed_by = ?2",
        [guid, node],
    )
    .map(drop)
}

/// Marks app binding `guid` as being deleted unless a delete is already in progress; whether
/// this call did (so the caller, alone, writes the unbind job).
pub(crate) fn start_binding_delete(
    c: &Connection,
    guid: &str,
    description: &str,
) -> crate::sql::Result<bool> {
    let changed = c.execute(
        "UPDATE service_bindings SET op_type = 'delete', op_state = 'in progress', \
         op_description = ?2, op_updated_at = ?3 WHERE guid = ?1 AND op_state != 'in progress'",
        params![guid, description, hydrant_auth::now_secs()],
    )?;
    Ok(changed == 1)
}

/// Unfinished jobs due at `now_ms`, soonest first.
pub(crate) fn due_jobs(
    c: &Connection,
    now_ms: i64,
    limit: usize,
) -> crate::sql::Result<Vec<JobRow>> {
    all(
        c,
        "WHERE state IN ('PROCESSING', 'POLLING') AND next_at_ms <= ?1 \
         ORDER BY next_at_ms LIMIT ?2",
        params![now_ms, limit as i64],
    )
}

/// When the next unfinished job is due, if any.
pub(crate) fn next_due_ms(c: &Connection) -> crate::sql::Result<Option<i64>> {
    c.query_row(
        "SELECT MIN(next_at_ms) FROM service_jobs WHERE state IN ('PROCESSING', 'POLLING')",
        [],
        |r| r.get(0),
    )
}

pub(crate) fn insert_job(c: &Connection, j: &JobRow) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO service_jobs (guid, operation, resource_guid, state, phase, spec, \
         broker_operation, description, polls, attempts, next_at_ms, deadline_ms, created_at, \
         updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            j.guid,
            j.operation,
            j.resource_guid,
            j.state,
            j.phase,
            serde_json::to_string(&j.spec).unwrap_or_default(),
            j.broker_operation,
            j.description,
            j.polls,
            j.attempts,
            j.next_at_ms,
            j.deadline_ms,
            j.created_at,
            j.updated_at,
        ],
    )
    .map(drop)
}

pub(crate) fn update_job(c: &Connection, j: &JobRow) -> crate::sql::Result<()> {
    c.execute(
        "UPDATE service_jobs SET state = ?2, phase = ?3, broker_operation = ?4, \
         description = ?5, polls = ?6, attempts = ?7, next_at_ms = ?8, deadline_ms = ?9, \
         updated_at = ?10 WHERE guid = ?1",
        params![
            j.guid,
            j.state,
            j.phase,
            j.broker_operation,
            j.description,
            j.polls,
            j.attempts,
            j.next_at_ms,
            j.deadline_ms,
            hydrant_auth::now_secs(),
        ],
    )
    .map(drop)
}

/// Forgets finished jobs last changed before `before` (UNIX seconds): their outcome is on the
/// instance or binding by then, and the table stays bounded.
pub(crate) fn prune_jobs(c: &Connection, before: i64) -> crate::sql::Result<usize> {
    c.execute(
        "DELETE FROM service_jobs WHERE state IN ('COMPLETE', 'FAILED') AND updated_at < ?1",
        [before],
    )
}

/// Whether an unfinished orphan-mitigation job exists for `resource_guid`.
pub(crate) fn orphan_pending(c: &Connection, resource_guid: &str) -> crate::sql::Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM service_jobs WHERE resource_guid = ?1 \
         AND operation LIKE '%orphan_mitigation' AND state IN ('PROCESSING', 'POLLING'))",
        [resource_guid],
        |r| r.get(0),
    )
}
