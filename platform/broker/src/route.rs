//! Which tenant a shared node's log line belongs to. MariaDB, PostgreSQL and RabbitMQ serve
//! every tenant from one process, so their lines are sorted here: a line goes to an instance's
//! `SVC` stream only when it provably belongs to that instance, and every other line goes to
//! the operator's stream (the broker's own source id).
//!
//! Flow: a node's output line → [`owner`] with the names the store holds (instance ids,
//! database names, owner roles, binding users and ids) → one instance, or none.
//!
//! Invariant (a tenant never reads another tenant's names or a stranger's words): a line is
//! routed to instance I only when
//! - it is not an authentication or access failure: such a line carries what an unauthenticated
//!   client typed (a user, a database, a vhost), which proves nothing about whose it is;
//! - every name in it that belongs to any instance belongs to I, and at least one does;
//! - it holds no name shaped like one of ours (`cf_…`, `o_…`, `b_…`, a MariaDB binding user,
//!   a GUID) that the store does not know (a deleted instance's, or one a client made up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::database_name;
use crate::node::Router;
use crate::store::Store;

/// Phrases (lower case) of lines about a failed login or a refused access: never a tenant's.
const FAILURES: &[&str] = &[
    "access denied",
    "authentication failed",
    "invalid credentials",
    "login refused",
    "access_refused",
    "refused for user",
    "not allowed",
    "not_allowed",
    "no pg_hba.conf entry",
    "permission denied for database",
    // PostgreSQL's FATAL lines are a connection's start (failed or ended): the database
    // and user they name are what the client asked for.
    "fatal:",
];

/// Every name of `offering`'s instances and bindings, each mapped to its instance id.
fn names(store: &Store, offering: &str) -> HashMap<String, String> {
    let mut names = HashMap::new();
    let Ok(instances) = store.instances() else {
        return names;
    };
    let bindings = store.bindings().unwrap_or_default();
    for i in instances.iter().filter(|i| i.offering == offering) {
        let underscored = i.id.replace('-', "_");
        for name in [
            i.id.clone(),
            database_name(&i.id),
            format!("o_{underscored}"),
        ] {
            names.insert(name, i.id.clone());
        }
        for b in bindings.iter().filter(|b| b.instance_id == i.id) {
            names.insert(b.username.clone(), i.id.clone());
            names.insert(b.id.clone(), i.id.clone());
        }
    }
    names
}

/// Whether `token` is shaped like a name the broker makes (so an unknown one is some
/// instance's we cannot place, never harmless text).
fn shaped_like_ours(token: &str) -> bool {
    let prefixed = ["cf_", "o_", "b_"]
        .iter()
        .any(|p| token.strip_prefix(p).is_some_and(|rest| rest.len() >= 8));
    let mariadb_user = token.len() == 16
        && token.starts_with('u')
        && token[1..].bytes().all(|b| b.is_ascii_hexdigit());
    let guid = token.len() == 36
        && token.bytes().enumerate().all(|(n, b)| {
            if [8, 13, 18, 23].contains(&n) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    prefixed || mariadb_user || guid
}

/// The instance `line` provably belongs to, given `names` (name → instance id); `None` sends
/// it to the operator.
#[must_use]
pub fn owner(line: &str, names: &HashMap<String, String>) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    if FAILURES.iter().any(|f| lower.contains(f)) {
        return None;
    }
    let mut found: Option<&String> = None;
    let tokens = line
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .filter(|t| !t.is_empty());
    for token in tokens {
        match names.get(token) {
            Some(id) => match found {
                Some(seen) if seen != id => return None,
                _ => found = Some(id),
            },
            None if shaped_like_ours(token) => return None,
            None => {}
        }
    }
    found.cloned()
}

/// A node's router over the store's names of `offering`, read again whenever the store
/// changed since the last line.
#[must_use]
pub fn router(store: Arc<Store>, offering: &'static str) -> Router {
    let cache: Mutex<(u64, Arc<HashMap<String, String>>)> = Mutex::new((0, Arc::default()));
    Arc::new(move |line: &str| {
        let generation = store.generation();
        let current = {
            let mut cache = hydrant_runtime::lock(&cache);
            if cache.0 != generation {
                *cache = (generation, Arc::new(names(&store, offering)));
            }
            Arc::clone(&cache.1)
        };
        owner(line, &current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6b0c1a5e-5b7e-4a53-9d3c-b7c1a6a2f0c1";
    const B: &str = "0f3e9d2c-1a2b-4c5d-8e9f-a0b1c2d3e4f5";

    fn two_tenants() -> HashMap<String, String> {
        let mut names = HashMap::new();
        for (id, user, binding) in [
            (
                A,
                "u0123456789abcde",
                "11111111-2222-4333-8444-555555555555",
            ),
            (
                B,
                "ufedcba987654321",
                "99999999-8888-4777-8666-555555555555",
            ),
        ] {
            for name in [
                id.to_owned(),
                database_name(id),
                format!("o_{}", id.replace('-', "_")),
                user.to_owned(),
                binding.to_owned(),
            ] {
                names.insert(name, id.to_owned());
            }
        }
        names
    }

    #[test]
    fn a_line_of_one_tenant_goes_to_it() {
        let names = two_tenants();
        let a_db = database_name(A);
        assert_eq!(
            owner(
                &format!("Aborted connection 7 to db: '{a_db}' user: 'u0123456789abcde' host: '10.0.0.2' (Got timeout reading communication packets)"),
                &names
            )
            .as_deref(),
            Some(A)
        );
        assert_eq!(
            owner(
                &format!("connection <0.9.0> (10.0.0.2:4000 -> 10.0.0.1:5672): user '99999999-8888-4777-8666-555555555555' authenticated and granted access to vhost '{B}'"),
                &names
            )
            .as_deref(),
            Some(B)
        );
        assert_eq!(
            owner(
                &format!("{} ERROR:  relation \"t\" does not exist", database_name(B)),
                &names
            )
            .as_deref(),
            Some(B)
        );
    }

    #[test]
    fn failed_logins_naming_another_tenant_go_to_the_operator() {
        let names = two_tenants();
        let b_db = database_name(B);
        for line in [
            // A's user knocks on B's database.
            format!(
                "[Warning] Access denied for user 'u0123456789abcde'@'10.0.0.2' to database '{b_db}'"
            ),
            // A client types B's database name as its user.
            format!("[Warning] Access denied for user '{b_db}'@'10.0.0.2' (using password: YES)"),
            // A's binding user tries B's vhost.
            format!(
                "Error on AMQP connection <0.1.0>: access to vhost '{B}' refused for user '11111111-2222-4333-8444-555555555555'"
            ),
            // A client claims B's binding user with a wrong password.
            "HTTP access denied: user '99999999-8888-4777-8666-555555555555' - invalid credentials"
                .to_owned(),
            format!("{b_db} FATAL:  password authentication failed for user \"b_x\""),
        ] {
            assert_eq!(owner(&line, &names), None, "{line}");
        }
    }

    #[test]
    fn lines_naming_several_tenants_or_an_unknown_one_go_to_the_operator() {
        let names = two_tenants();
        let (a_db, b_db) = (database_name(A), database_name(B));
        assert_eq!(
            owner(&format!("{a_db} ERROR: table \"{b_db}\" missing"), &names),
            None
        );
        assert_eq!(
            owner(&format!("queue 'q' in vhost '{A}' named after {B}"), &names),
            None
        );
        assert_eq!(
            owner(
                &format!("{a_db} LOG: cf_00000000_dead_beef_0000_000000000000 is gone"),
                &names
            ),
            None,
            "an unknown instance's database name"
        );
        assert_eq!(owner("InnoDB: Buffer pool(s) load completed", &names), None);
        assert_eq!(
            owner("Server startup complete; 4 plugins started", &names),
            None
        );
    }
}
