//! The broker's durable state in SQLite (`<data_dir>/broker.db`): instances, bindings (with
//! the credentials the broker made, so a restarted node is given its users again and a
//! repeated bind answers the same credentials), and shared nodes' ports and admin secrets, so
//! a restarted broker brings every node back on the ports its credentials name.
//!
//! Invariant: a row is written before the resource it describes is made and removed only after
//! the resource is gone, so a crash in between leaves a row the next delete cleans up, never
//! a resource nobody knows about.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};

use crate::Error;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Being provisioned (asynchronously).
    Creating,
    /// Usable.
    Ready,
    /// Provisioning failed; `description` says why. Deprovision cleans it up.
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "creating" => Self::Creating,
            "ready" => Self::Ready,
            _ => Self::Failed,
        }
    }
}

/// A service instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The platform's instance id.
    pub id: String,
    /// The offering's name.
    pub offering: String,
    /// The plan's id.
    pub plan_id: String,
    /// The provision parameters (a JSON object).
    pub parameters: serde_json::Value,
    /// Where it is in its life.
    pub state: State,
    /// Why it failed, or what it is doing.
    pub description: String,
    /// Its own node's port (Redis), or 0.
    pub port: u16,
    /// Its own node's admin secret (Redis), or empty.
    pub secret: String,
}

/// A binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The platform's binding id.
    pub id: String,
    /// Its instance.
    pub instance_id: String,
    /// The plan id it was bound under.
    pub plan_id: String,
    /// The bind parameters (a JSON object).
    pub parameters: serde_json::Value,
    /// The user the broker made on the node.
    pub username: String,
    /// Its password.
    pub password: String,
}

/// A shared node (MariaDB, PostgreSQL, RabbitMQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedNode {
    /// The offering.
    pub offering: String,
    /// Its ports, in the backend's order.
    pub ports: Vec<u16>,
    /// Its admin secret.
    pub secret: String,
}

/// The SQLite store.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Bumped by every write of an instance or binding: readers that cache names (the log
    /// routers) know when to read again.
    generation: AtomicU64,
}

impl Store {
    /// Opens (creating) the store at `path`.
    ///
    /// # Errors
    /// [`Error::Store`] when the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let store = |source| Error::Store {
            path: path.to_path_buf(),
            source,
        };
        // Created 0600 before SQLite opens it (its journal files take the same mode): it
        // holds every binding's password.
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .and_then(|_| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                })
                .map_err(|e| Error::io("cannot create", path, e))?;
        }
        let conn = Connection::open(path).map_err(store)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS instances (
                id TEXT PRIMARY KEY, offering TEXT NOT NULL, plan_id TEXT NOT NULL,
                parameters TEXT NOT NULL, state TEXT NOT NULL, description TEXT NOT NULL,
                port INTEGER NOT NULL, secret TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS bindings (
                id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, plan_id TEXT NOT NULL,
                parameters TEXT NOT NULL, username TEXT NOT NULL, password TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nodes (
                offering TEXT PRIMARY KEY, ports TEXT NOT NULL, secret TEXT NOT NULL);",
        )
        .map_err(store)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            generation: AtomicU64::new(1),
        })
    }

    /// Changes with every write of an instance or binding.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        let conn = hydrant_runtime::lock(&self.conn);
        f(&conn).map_err(|source| Error::Store {
            path: self.path.clone(),
            source,
        })
    }

    /// The instance `id`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn instance(&self, id: &str) -> Result<Option<Instance>, Error> {
        self.with(|c| {
            c.query_row(
                "SELECT id, offering, plan_id, parameters, state, description, port, secret
                 FROM instances WHERE id = ?1",
                [id],
                instance_row,
            )
            .optional()
        })
    }

    /// Every instance.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn instances(&self) -> Result<Vec<Instance>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, offering, plan_id, parameters, state, description, port, secret
                 FROM instances ORDER BY id",
            )?;
            let rows = stmt.query_map([], instance_row)?;
            rows.collect()
        })
    }

    /// Writes `instance` (insert or replace).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn put_instance(&self, i: &Instance) -> Result<(), Error> {
        let done = self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO instances
                 (id, offering, plan_id, parameters, state, description, port, secret)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    i.id,
                    i.offering,
                    i.plan_id,
                    i.parameters.to_string(),
                    i.state.as_str(),
                    i.description,
                    i.port,
                    i.secret
                ],
            )
            .map(drop)
        });
        self.changed();
        done
    }

    /// Removes instance `id` and its bindings.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn delete_instance(&self, id: &str) -> Result<(), Error> {
        let done = self.with(|c| {
            c.execute("DELETE FROM bindings WHERE instance_id = ?1", [id])?;
            c.execute("DELETE FROM instances WHERE id = ?1", [id])
                .map(drop)
        });
        self.changed();
        done
    }

    /// The binding `id`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn binding(&self, id: &str) -> Result<Option<Binding>, Error> {
        self.with(|c| {
            c.query_row(
                "SELECT id, instance_id, plan_id, parameters, username, password
                 FROM bindings WHERE id = ?1",
                [id],
                binding_row,
            )
            .optional()
        })
    }

    /// Every binding of instance `id`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn bindings_of(&self, instance_id: &str) -> Result<Vec<Binding>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, instance_id, plan_id, parameters, username, password
                 FROM bindings WHERE instance_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([instance_id], binding_row)?;
            rows.collect()
        })
    }

    /// Every binding of every instance.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn bindings(&self) -> Result<Vec<Binding>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, instance_id, plan_id, parameters, username, password
                 FROM bindings ORDER BY id",
            )?;
            let rows = stmt.query_map([], binding_row)?;
            rows.collect()
        })
    }

    /// Writes `binding`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn put_binding(&self, b: &Binding) -> Result<(), Error> {
        let done = self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO bindings
                 (id, instance_id, plan_id, parameters, username, password)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    b.id,
                    b.instance_id,
                    b.plan_id,
                    b.parameters.to_string(),
                    b.username,
                    b.password
                ],
            )
            .map(drop)
        });
        self.changed();
        done
    }

    /// Removes binding `id`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn delete_binding(&self, id: &str) -> Result<(), Error> {
        let done = self.with(|c| {
            c.execute("DELETE FROM bindings WHERE id = ?1", [id])
                .map(drop)
        });
        self.changed();
        done
    }

    /// The shared node of `offering`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn node(&self, offering: &str) -> Result<Option<SharedNode>, Error> {
        self.with(|c| {
            c.query_row(
                "SELECT offering, ports, secret FROM nodes WHERE offering = ?1",
                [offering],
                |r| {
                    let ports: String = r.get(1)?;
                    Ok(SharedNode {
                        offering: r.get(0)?,
                        ports: serde_json::from_str(&ports).unwrap_or_default(),
                        secret: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Writes a shared node.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn put_node(&self, n: &SharedNode) -> Result<(), Error> {
        let ports = serde_json::to_string(&n.ports).unwrap_or_else(|_| "[]".to_owned());
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO nodes (offering, ports, secret) VALUES (?1, ?2, ?3)",
                params![n.offering, ports, n.secret],
            )
            .map(drop)
        })
    }

    /// Every port an instance or a shared node holds.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn ports_in_use(&self) -> Result<Vec<u16>, Error> {
        let mut ports: Vec<u16> = self.with(|c| {
            let mut stmt = c.prepare("SELECT port FROM instances WHERE port > 0")?;
            let rows = stmt.query_map([], |r| r.get::<_, u16>(0))?;
            rows.collect()
        })?;
        let nodes: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare("SELECT ports FROM nodes")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })?;
        for n in nodes {
            ports.extend(serde_json::from_str::<Vec<u16>>(&n).unwrap_or_default());
        }
        Ok(ports)
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({}))
}

fn instance_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Instance> {
    let parameters: String = r.get(3)?;
    let state: String = r.get(4)?;
    Ok(Instance {
        id: r.get(0)?,
        offering: r.get(1)?,
        plan_id: r.get(2)?,
        parameters: json(&parameters),
        state: State::parse(&state),
        description: r.get(5)?,
        port: r.get(6)?,
        secret: r.get(7)?,
    })
}

fn binding_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Binding> {
    let parameters: String = r.get(3)?;
    Ok(Binding {
        id: r.get(0)?,
        instance_id: r.get(1)?,
        plan_id: r.get(2)?,
        parameters: json(&parameters),
        username: r.get(4)?,
        password: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_bindings_and_nodes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.db");
        {
            let s = Store::open(&path).unwrap();
            s.put_instance(&Instance {
                id: "i1".to_owned(),
                offering: "redis".to_owned(),
                plan_id: "p".to_owned(),
                parameters: serde_json::json!({"a": 1}),
                state: State::Ready,
                description: String::new(),
                port: 42001,
                secret: "s".to_owned(),
            })
            .unwrap();
            s.put_binding(&Binding {
                id: "b1".to_owned(),
                instance_id: "i1".to_owned(),
                plan_id: "p".to_owned(),
                parameters: serde_json::json!({}),
                username: "u".to_owned(),
                password: "pw".to_owned(),
            })
            .unwrap();
            s.put_node(&SharedNode {
                offering: "postgresql".to_owned(),
                ports: vec![42002],
                secret: "x".to_owned(),
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the state holds passwords");
        assert_eq!(s.instance("i1").unwrap().unwrap().port, 42001);
        assert_eq!(s.bindings_of("i1").unwrap().len(), 1);
        let mut ports = s.ports_in_use().unwrap();
        ports.sort_unstable();
        assert_eq!(ports, [42001, 42002]);
        s.delete_instance("i1").unwrap();
        assert!(s.binding("b1").unwrap().is_none());
    }
}
