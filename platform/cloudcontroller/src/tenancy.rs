//! Tenancy: orgs, org roles, and who may see or do what in which space — Cloud Foundry's
//! model, decided in one place.
//!
//! Flow: every handler that touches an org, a space or an app loads the caller's [`Grants`]
//! (all their org and space roles, one query each) and asks it; the SQL for orgs and org roles
//! lives here too, beside the decisions that read it.
//!
//! The matrix (admins may do everything):
//! - an org is visible to its managers and auditors and to anyone with a role in one of its
//!   spaces; its managers create and delete spaces, give org and space roles, manage space
//!   quotas and private domains;
//! - a space is visible to anyone with a role in it and to its org's managers; they all read
//!   its apps, states and events; space managers give roles in it;
//! - only space developers change apps, and only they (not auditors, not managers) see
//!   environment variables, start commands, webhook URLs and drain credentials.
//!
//! Invariant: what a caller may not see answers exactly as what does not exist (404, the same
//! text), so names and existence never leak across tenants; 403 only when the caller can
//! already see the thing and lacks the role to change it.

use std::collections::{BTreeMap, BTreeSet};

use crate::sql::{Connection, all, one, params, table};
use hydrant_api::{App, Org, OrgRole, OrgRoleAssignment, Space, SpaceRole};

use crate::api::{ApiError, Caller};
use crate::db;

/// The org every pre-tenancy space moved into, and where apps go when no org is named.
pub(crate) const DEFAULT_ORG: &str = "default";

/// What the start command and environment read as for callers who may not see them.
pub(crate) const HIDDEN: &str = "[PRIVATE DATA HIDDEN]";

// === orgs ===

table!(Org, "SELECT guid, name, quota_guid, created_at FROM orgs", {
    guid, name, quota_guid, created_at
});

pub(crate) fn insert_org(c: &Connection, org: &Org) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO orgs (guid, name, quota_guid, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![org.guid, org.name, org.quota_guid, org.created_at],
    )
    .map(drop)
}

/// An org by guid or, failing that, by name.
pub(crate) fn find_org(c: &Connection, guid_or_name: &str) -> crate::sql::Result<Option<Org>> {
    one(
        c,
        "WHERE guid = ?1 OR name = ?1 ORDER BY guid = ?1 DESC LIMIT 1",
        [guid_or_name],
    )
}

pub(crate) fn list_orgs(c: &Connection) -> crate::sql::Result<Vec<Org>> {
    all(c, "ORDER BY name", [])
}

pub(crate) fn set_org_role(
    c: &Connection,
    org_guid: &str,
    user_guid: &str,
    role: OrgRole,
) -> crate::sql::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO org_roles (org_guid, user_guid, role) VALUES (?1, ?2, ?3)",
        params![org_guid, user_guid, role.as_str()],
    )
    .map(drop)
}

pub(crate) fn remove_org_role(
    c: &Connection,
    org_guid: &str,
    user_guid: &str,
    role: OrgRole,
) -> crate::sql::Result<usize> {
    c.execute(
        "DELETE FROM org_roles WHERE org_guid = ?1 AND user_guid = ?2 AND role = ?3",
        params![org_guid, user_guid, role.as_str()],
    )
}

/// Org role assignments, filtered by org and/or user.
pub(crate) fn org_roles(
    c: &Connection,
    org_guid: Option<&str>,
    user_guid: Option<&str>,
) -> crate::sql::Result<Vec<OrgRoleAssignment>> {
    let rows: Vec<(String, String, String, String)> = crate::sql::rows(
        c,
        "SELECT r.org_guid, o.name, u.username, r.role FROM org_roles r \
         JOIN orgs o ON o.guid = r.org_guid JOIN users u ON u.guid = r.user_guid \
         WHERE (?1 IS NULL OR r.org_guid = ?1) AND (?2 IS NULL OR r.user_guid = ?2) \
         ORDER BY o.name, u.username, r.role",
        params![org_guid, user_guid],
    )?;
    // A role this version does not know is left out rather than failing the list.
    let known = rows
        .into_iter()
        .filter_map(|(org_guid, org_name, username, role)| {
            OrgRole::parse(&role).map(|role| OrgRoleAssignment {
                org_guid,
                org_name,
                username,
                role,
            })
        });
    Ok(known.collect())
}

pub(crate) fn delete_space(c: &Connection, space_guid: &str) -> crate::sql::Result<()> {
    c.execute("DELETE FROM spaces WHERE guid = ?1", [space_guid])
        .map(drop)
}

/// Deletes an org that holds no spaces any more; its roles, quotas and private domains go
/// with it (their foreign keys cascade).
pub(crate) fn delete_org(c: &Connection, org_guid: &str) -> crate::sql::Result<()> {
    c.execute("DELETE FROM orgs WHERE guid = ?1", [org_guid])
        .map(drop)
}

// === grants: who may do what ===

/// What one caller may do in one space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SpaceAccess {
    /// The space exists for this caller (its name, its roles).
    pub(crate) see: bool,
    /// Its apps, states, routes and events.
    pub(crate) read_apps: bool,
    /// Changing its apps; seeing their environment, start commands and credentials.
    pub(crate) develop: bool,
    /// Giving roles in it.
    pub(crate) manage: bool,
}

/// Every role one caller holds, loaded once per request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grants {
    admin: bool,
    orgs: BTreeMap<String, BTreeSet<OrgRole>>,
    spaces: BTreeMap<String, BTreeSet<SpaceRole>>,
    /// Orgs in which the caller holds a space role (they see the org's name).
    space_orgs: BTreeSet<String>,
}

impl Grants {
    pub(crate) fn load(c: &Connection, caller: &Caller) -> crate::sql::Result<Self> {
        let mut grants = Self {
            admin: caller.admin,
            ..Self::default()
        };
        if caller.admin {
            return Ok(grants);
        }
        let rows: Vec<(String, String)> = crate::sql::rows(
            c,
            "SELECT org_guid, role FROM org_roles WHERE user_guid = ?1",
            [&caller.user_guid],
        )?;
        for (org, role) in rows {
            if let Some(role) = OrgRole::parse(&role) {
                grants.orgs.entry(org).or_default().insert(role);
            }
        }
        let rows: Vec<(String, String, String)> = crate::sql::rows(
            c,
            "SELECT r.space_guid, s.org_guid, r.role FROM space_roles r \
             JOIN spaces s ON s.guid = r.space_guid WHERE r.user_guid = ?1",
            [&caller.user_guid],
        )?;
        for (space, org, role) in rows {
            if let Some(role) = SpaceRole::parse(&role) {
                grants.spaces.entry(space).or_default().insert(role);
                grants.space_orgs.insert(org);
            }
        }
        Ok(grants)
    }

    pub(crate) fn sees_org(&self, org_guid: &str) -> bool {
        self.admin || self.orgs.contains_key(org_guid) || self.space_orgs.contains(org_guid)
    }

    pub(crate) fn manages_org(&self, org_guid: &str) -> bool {
        self.admin
            || self
                .orgs
                .get(org_guid)
                .is_some_and(|r| r.contains(&OrgRole::Manager))
    }

    /// What the caller may do in the space `space_guid` of org `org_guid`.
    pub(crate) fn space(&self, space_guid: &str, org_guid: &str) -> SpaceAccess {
        if self.admin {
            return SpaceAccess {
                see: true,
                read_apps: true,
                develop: true,
                manage: true,
            };
        }
        let roles = self.spaces.get(space_guid);
        let has = |role| roles.is_some_and(|r| r.contains(&role));
        let org_manager = self.manages_org(org_guid);
        let member = roles.is_some_and(|r| !r.is_empty());
        SpaceAccess {
            see: member || org_manager,
            read_apps: member || org_manager,
            develop: has(SpaceRole::Developer),
            manage: has(SpaceRole::Manager) || org_manager,
        }
    }

    pub(crate) fn space_of(&self, space: &Space) -> SpaceAccess {
        self.space(&space.guid, &space.org_guid)
    }
}

/// Every space guid with its org guid, for filtering lists of apps and events.
pub(crate) fn space_orgs(c: &Connection) -> crate::sql::Result<BTreeMap<String, String>> {
    let mut stmt = c.prepare("SELECT guid, org_guid FROM spaces")?;
    let rows = stmt.query_map([], |r| r.columns())?;
    rows.collect()
}

/// The org `guid_or_name` if the caller may see it; otherwise the same 404 as for none.
pub(crate) fn visible_org(
    c: &Connection,
    grants: &Grants,
    guid_or_name: &str,
) -> Result<Org, ApiError> {
    find_org(c, guid_or_name)?
        .filter(|o| grants.sees_org(&o.guid))
        .ok_or_else(|| ApiError::not_found("Organization"))
}

/// The space the caller names: by guid; by name within `org`; by a name only one visible
/// space carries; or, with neither, the default org's default space. Invisible is 404.
pub(crate) fn visible_space(
    c: &Connection,
    grants: &Grants,
    org: Option<&str>,
    space: Option<&str>,
) -> Result<Space, ApiError> {
    let not_found = || ApiError::not_found("Space");
    let found = match (org, space) {
        (Some(org), Some(space)) => {
            let org = visible_org(c, grants, org)?;
            db::find_space_in(c, &org.guid, space)?
        }
        (None, Some(space)) => {
            let mut candidates: Vec<Space> = db::spaces_named(c, space)?
                .into_iter()
                .filter(|s| grants.space_of(s).see)
                .collect();
            if candidates.len() > 1 && candidates[0].guid != space {
                return Err(ApiError::unprocessable(format!(
                    "several of your spaces are called {space:?}; name the org too \
                     (hydrant target -o ORG -s SPACE) or use the space's guid"
                )));
            }
            if candidates.is_empty() {
                None
            } else {
                Some(candidates.swap_remove(0))
            }
        }
        (org, None) => {
            let org = match org {
                Some(org) => visible_org(c, grants, org)?,
                None => find_org(c, DEFAULT_ORG)?.ok_or_else(not_found)?,
            };
            db::find_space_in(c, &org.guid, crate::DEFAULT_SPACE)?
        }
    };
    found
        .filter(|s| grants.space_of(s).see)
        .ok_or_else(not_found)
}

/// Blanks what only the space's developers may read: environment variables and the start
/// command (both commonly hold credentials).
pub(crate) fn redact(app: &mut App) {
    app.env.clear();
    if app.command.is_some() {
        app.command = Some(HIDDEN.to_owned());
    }
}

/// First-start tenancy: the default org (the migration creates it; this covers a database
/// someone emptied by hand) and the default space in it.
pub(crate) fn bootstrap(c: &Connection, now: i64) -> crate::sql::Result<()> {
    let org = match find_org(c, DEFAULT_ORG)? {
        Some(org) => org,
        None => {
            let org = Org {
                guid: crate::password::new_guid(),
                name: DEFAULT_ORG.to_owned(),
                quota_guid: None,
                created_at: now,
            };
            insert_org(c, &org)?;
            org
        }
    };
    if db::find_space_in(c, &org.guid, crate::DEFAULT_SPACE)?.is_none() {
        db::insert_space(
            c,
            &Space {
                guid: crate::password::new_guid(),
                name: crate::DEFAULT_SPACE.to_owned(),
                org_guid: org.guid.clone(),
                org_name: org.name,
                quota_guid: None,
                created_at: now,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory from before tenancy (schema steps 1 to 4, a space, a role and an
    /// app) opens with its space in the `default` org, keeping its guid, role and app, and
    /// the space's name becomes free in other orgs.
    #[test]
    fn pre_tenancy_data_migrates_into_the_default_org() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cc.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for step in &db::MIGRATIONS[..4] {
                conn.execute_batch(step).unwrap();
            }
            conn.pragma_update(None, "user_version", 4).unwrap();
            conn.execute_batch(
                "INSERT INTO users VALUES ('u1', 'dev', 'x', 0, 1);
                 INSERT INTO spaces VALUES ('s1', 'team', 1);
                 INSERT INTO space_roles VALUES ('s1', 'u1', 'developer');
                 INSERT INTO apps (guid, name, space_guid, state, instances, memory_mb, \
                    disk_mb, env, health_check_type, created_at, updated_at) \
                    VALUES ('a1', 'shop', 's1', 'STOPPED', 1, 256, 1024, '{}', 'port', 1, 1);",
            )
            .unwrap();
        }
        let db = db::Db::open_sqlite(&path).unwrap();
        db.blocking(|c| {
            let space = db::space_by_guid(c, "s1").unwrap().unwrap();
            assert_eq!(space.org_name, DEFAULT_ORG);
            assert_eq!(db::get_app(c, "a1").unwrap().unwrap().space_name, "team");
            assert_eq!(db::roles(c, None, Some("u1")).unwrap().len(), 1);
            let other = Org {
                guid: "o2".into(),
                name: "other".into(),
                quota_guid: None,
                created_at: 1,
            };
            insert_org(c, &other).unwrap();
            db::insert_space(
                c,
                &Space {
                    guid: "s2".into(),
                    name: "team".into(),
                    org_guid: "o2".into(),
                    org_name: "other".into(),
                    quota_guid: None,
                    created_at: 1,
                },
            )
            .unwrap();
            // Foreign keys hold again after migrating.
            let orphan = c.execute(
                "INSERT INTO space_roles VALUES ('nope', 'u1', 'developer')",
                [],
            );
            assert!(orphan.is_err());
        });
    }

    #[test]
    fn org_managers_read_but_do_not_develop() {
        let mut grants = Grants::default();
        grants
            .orgs
            .entry("o1".into())
            .or_default()
            .insert(OrgRole::Manager);
        let access = grants.space("s1", "o1");
        assert!(access.see && access.read_apps && access.manage && !access.develop);
        assert_eq!(grants.space("s2", "o2"), SpaceAccess::default());
        grants
            .spaces
            .entry("s2".into())
            .or_default()
            .insert(SpaceRole::Auditor);
        let access = grants.space("s2", "o2");
        assert!(access.read_apps && !access.develop && !access.manage);
    }
}
