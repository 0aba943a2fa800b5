//! The blob lifecycle: who may upload and match blobs, and collection of old packages and
//! droplets.
//!
//! Flow: `PUT /v3/blobs/{sha256}` needs the SpaceDeveloper role somewhere and records who
//! uploaded the content ([`record_upload`]); resource matching and package creation consider a
//! content present for a caller only if [`known_to`] says the caller's own uploads or their
//! spaces' packages hold it, so nobody can ask "does this file exist?" about another tenant's
//! code or build a package from it. Packages count against the storage quota (`quotas`); once
//! a build stages, [`collect`] keeps the newest [`KEEP`] packages and droplets of the app (as
//! Cloud Foundry does) and the caller deletes the dropped droplets' files.
//!
//! Invariant: the app's current droplet is never collected.

use std::collections::HashSet;

use hydrant_api::Resource;
use rusqlite::{Connection, params};

use crate::api::Caller;
use crate::tenancy::Grants;

/// Packages and droplets kept per app.
pub(crate) const KEEP: usize = 5;

/// Records that `user_guid` uploaded the content `sha256`.
pub(crate) fn record_upload(
    c: &Connection,
    sha256: &str,
    user_guid: &str,
    now: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO blob_uploads (sha256, user_guid, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (sha256, user_guid) DO UPDATE SET created_at = ?3",
        params![sha256, user_guid, now],
    )
    .map(drop)
}

/// Whether the caller develops in at least one space (and so may upload).
pub(crate) fn may_upload(c: &Connection, caller: &Caller) -> rusqlite::Result<bool> {
    if caller.admin {
        return Ok(true);
    }
    c.query_row(
        "SELECT COUNT(*) FROM space_roles WHERE user_guid = ?1 AND role = 'developer'",
        [&caller.user_guid],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The contents the caller may treat as present: their own uploads and the files of packages
/// in spaces where they develop. `None` for an admin, who may use any.
pub(crate) fn known_to(
    c: &Connection,
    caller: &Caller,
) -> rusqlite::Result<Option<HashSet<String>>> {
    if caller.admin {
        return Ok(None);
    }
    let grants = Grants::load(c, caller)?;
    let mut known = HashSet::new();
    let mut stmt = c.prepare("SELECT sha256 FROM blob_uploads WHERE user_guid = ?1")?;
    for sha in stmt.query_map([&caller.user_guid], |r| r.get::<_, String>(0))? {
        known.insert(sha?);
    }
    let mut stmt = c.prepare(
        "SELECT p.resources, a.space_guid, s.org_guid FROM packages p \
         JOIN apps a ON a.guid = p.app_guid JOIN spaces s ON s.guid = a.space_guid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (resources, space, org) = row?;
        if grants.space(&space, &org).develop {
            let list: Vec<Resource> = serde_json::from_str(&resources).unwrap_or_default();
            known.extend(list.into_iter().map(|r| r.sha256));
        }
    }
    Ok(Some(known))
}

/// Drops all but the newest [`KEEP`] packages and droplets of `app_guid` (never the current
/// droplet); returns the dropped droplets' guids, whose files the caller deletes.
pub(crate) fn collect(c: &Connection, app_guid: &str) -> rusqlite::Result<Vec<String>> {
    let keep = i64::try_from(KEEP).unwrap_or(i64::MAX);
    c.execute(
        "DELETE FROM packages WHERE app_guid = ?1 AND guid NOT IN (SELECT guid FROM packages \
         WHERE app_guid = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2)",
        params![app_guid, keep],
    )?;
    let doomed: Vec<String> = {
        let mut stmt = c.prepare(
            "SELECT d.guid FROM droplets d JOIN apps a ON a.guid = d.app_guid \
             WHERE d.app_guid = ?1 AND d.guid IS NOT a.current_droplet_guid \
             AND d.guid NOT IN (SELECT guid FROM droplets WHERE app_guid = ?1 \
             ORDER BY created_at DESC, rowid DESC LIMIT ?2)",
        )?;
        stmt.query_map(params![app_guid, keep], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    for guid in &doomed {
        c.execute("DELETE FROM droplets WHERE guid = ?1", [guid])?;
    }
    Ok(doomed)
}
