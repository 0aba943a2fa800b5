//! The `nats-server` configuration that makes the bus authenticated: TLS with client
//! certificates required, each certificate mapped to a user by its identity, and each user
//! allowed only the subjects its role uses (`hydrant certs nats-config` writes it).
//!
//! Flow: `hydrant certs` issues the leaves; this module turns the role table below into a
//! config for Debian's `nats-server` 2.9 (`tls { verify_and_map: true }` maps a certificate's
//! DNS SANs, in order, to the first user of that name); each role's `[bus.tls]` presents its
//! leaf. The invariant: a publish or subscription not in a role's row is refused by the server
//! (the client counts it as `bus.refused{reason=permissions_violation}`), so it never reaches a
//! subscriber and nothing acts on it; a certificate that maps to no user, or that another CA
//! signed, or no certificate at all, never gets a connection.
//!
//! # Who may do what
//! | user | publishes | subscribes |
//! |---|---|---|
//! | `cloudcontroller`, `healthmanager` | `executor.start.*`, `executor.stop.*`, `executor.placed.*`, `executor.greet` | `executor.heartbeat.*`, `executor.crash.*`, `executor.placed.*`, replies; the health manager also `executor.start.*` |
//! | `router` | `router.start`, replies to `router.greet` | `router.>`, `executor.placed.*` (placements, without environments) |
//! | `<cell>.executor` (per cell) | `router.register.<cell>`, `router.unregister.<cell>`, `executor.heartbeat.<cell>`, `executor.crash.<cell>`, replies to its starts and stops | `executor.start.<cell>`, `executor.stop.<cell>`, `router.start`, `executor.greet` |
//! | `executor` (when no cells are listed: every executor shares it) | as a cell, for every cell (`*`) | as a cell, for every cell |
//!
//! Only the cloud controller and the health manager may publish start and stop commands and
//! placements; only executors may publish heartbeats, crashes and route registrations, and with
//! per-cell users each only on its own cell's subject, which is how a consumer knows which cell
//! sent a report (see [`crate::placement`]: a report for another cell's instance is dropped).
//! Start commands carry app environments and droplet tokens: only the addressed cell and the
//! health manager (which copies them to restart instances while the cloud controller is down)
//! read them; the router learns placements from the slim `executor.placed.*`. The plain
//! gorouter subjects `router.register`/`router.unregister` are published by nobody on this bus,
//! so a stock gorouter on it sees no routes: it needs a bridge that re-publishes the per-cell
//! subjects after the same placement check.

use std::fmt::Write as _;
use std::path::Path;

use crate::Error;
use crate::messages::{
    EXECUTOR_CRASH, EXECUTOR_GREET, EXECUTOR_HEARTBEAT, EXECUTOR_PLACED, EXECUTOR_START,
    EXECUTOR_STOP, ROUTER_START, every_cell,
};

/// Subjects the bus client uses for its own bookkeeping (subscription confirmations), which
/// every user needs.
const BOOKKEEPING: &str = "_HYDRANT.confirm.>";
/// Where request replies arrive (async-nats's inboxes).
const INBOX: &str = "_INBOX.>";

/// The NATS user name a cell's executor certificate maps to: the DNS SAN `<cell>.executor`,
/// which `hydrant certs issue executor --cell <cell>` adds.
#[must_use]
pub fn cell_user(cell: &str) -> String {
    format!("{cell}.executor")
}

/// One user's permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name: the identity (or `<cell>.executor`) a certificate's DNS SAN carries.
    pub name: String,
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may answer requests it received (reply subjects only, once each).
    pub allow_responses: bool,
}

/// The users of an authenticated bus: the control-plane roles, and one executor user per cell
/// in `cells` (or one shared `executor` user when `cells` is empty).
pub fn users(cells: &[String]) -> Result<Vec<User>, Error> {
    for cell in cells {
        check_cell(cell)?;
    }
    let subjects = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let start_all = every_cell(EXECUTOR_START);
    let stop_all = every_cell(EXECUTOR_STOP);
    let placed_all = every_cell(EXECUTOR_PLACED);
    let heartbeats_all = every_cell(EXECUTOR_HEARTBEAT);
    let crashes_all = every_cell(EXECUTOR_CRASH);
    // The health manager also reads start commands (it copies them to restart instances while
    // the cloud controller is down); the cloud controller makes them and needs no copy.
    let placer = |name: &str, reads_starts: bool| User {
        name: name.to_owned(),
        publish: subjects(&[
            &start_all,
            &stop_all,
            &placed_all,
            EXECUTOR_GREET,
            BOOKKEEPING,
        ]),
        subscribe: subjects(&[
            &heartbeats_all,
            &crashes_all,
            &placed_all,
            INBOX,
            BOOKKEEPING,
        ])
        .into_iter()
        .chain(reads_starts.then(|| start_all.clone()))
        .collect(),
        allow_responses: false,
    };
    let mut users = vec![
        placer("cloudcontroller", false),
        placer("healthmanager", true),
        User {
            name: "router".to_owned(),
            publish: subjects(&[ROUTER_START, BOOKKEEPING]),
            subscribe: subjects(&["router.>", &placed_all, BOOKKEEPING]),
            allow_responses: true,
        },
    ];
    let executor = |name: String, cell: &str| User {
        name,
        publish: vec![
            format!("router.register.{cell}"),
            format!("router.unregister.{cell}"),
            format!("{EXECUTOR_HEARTBEAT}.{cell}"),
            format!("{EXECUTOR_CRASH}.{cell}"),
            BOOKKEEPING.to_owned(),
        ],
        subscribe: vec![
            format!("{EXECUTOR_START}.{cell}"),
            format!("{EXECUTOR_STOP}.{cell}"),
            ROUTER_START.to_owned(),
            EXECUTOR_GREET.to_owned(),
            BOOKKEEPING.to_owned(),
        ],
        allow_responses: true,
    };
    if cells.is_empty() {
        users.push(executor("executor".to_owned(), "*"));
    } else {
        users.extend(cells.iter().map(|cell| executor(cell_user(cell), cell)));
    }
    Ok(users)
}

/// The TLS files of the NATS server itself (its `nats` leaf and the trust bundle).
#[derive(Debug, Clone, Copy)]
pub struct ServerTls<'a> {
    /// The trust bundle: client certificates must chain to one of these CAs.
    pub ca_file: &'a Path,
    /// The server's certificate (identity `nats`, with the host names clients dial as SANs).
    pub cert_file: &'a Path,
    /// Its key.
    pub key_file: &'a Path,
}

/// A complete `nats-server` config: listen on `listen` (`HOST:PORT`), TLS required with
/// client certificates verified and mapped to users, and [`users`]' permissions.
pub fn server_config(listen: &str, tls: ServerTls<'_>, cells: &[String]) -> Result<String, Error> {
    if listen.trim().is_empty() || listen.chars().any(char::is_whitespace) {
        return Err(Error::Config(format!(
            "nats listen address {listen:?}: use HOST:PORT, e.g. 127.0.0.1:4222"
        )));
    }
    let users = users(cells)?;
    let mut out = String::new();
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let path = |p: &Path| q(&p.to_string_lossy());
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let _ = writeln!(
        out,
        "# Hydrant's authenticated bus: TLS with client certificates, one user per identity,\n\
         # subject permissions per role. Written by `hydrant certs nats-config`; regenerate it\n\
         # rather than editing (e.g. after adding a cell).\n\
         listen: {}\n\
         \n\
         tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  \
         # Require a client certificate from the CA and use its identity (DNS SAN) as the user.\n  \
         verify_and_map: true\n  timeout: 5\n}}\n",
        q(listen),
        path(tls.cert_file),
        path(tls.key_file),
        path(tls.ca_file),
    );
    let _ = writeln!(out, "authorization {{\n  timeout: 5\n  users = [");
    for user in &users {
        let responses = if user.allow_responses {
            ", allow_responses: true"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "    {{ user: {}, permissions: {{ publish: {{ allow: {} }}, subscribe: {{ allow: {} }}{responses} }} }}",
            q(&user.name),
            list(&user.publish),
            list(&user.subscribe),
        );
    }
    let _ = writeln!(out, "  ]\n}}");
    Ok(out)
}

/// A cell id must be one subject token and one DNS label: letters, digits and `-`.
fn check_cell(cell: &str) -> Result<(), Error> {
    let ok = !cell.is_empty()
        && cell.len() <= 63
        && cell.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "cell {cell:?}: a cell (executor id) must be 1-63 letters, digits or '-', \
             e.g. cell-1"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::matches;

    fn may_publish(users: &[User], user: &str, subject: &str) -> bool {
        users
            .iter()
            .find(|u| u.name == user)
            .is_some_and(|u| u.publish.iter().any(|p| matches(p, subject)))
    }

    #[test]
    fn only_placers_start_and_stop_and_only_executors_register_routes() {
        let users = users(&["e1".into(), "e2".into()]).unwrap();
        for subject in ["executor.start.e1", "executor.stop.e2"] {
            assert!(may_publish(&users, "cloudcontroller", subject));
            assert!(may_publish(&users, "healthmanager", subject));
            for other in ["router", "e1.executor", "e2.executor"] {
                assert!(!may_publish(&users, other, subject), "{other} {subject}");
            }
        }
        assert!(may_publish(&users, "e1.executor", "router.register.e1"));
        assert!(!may_publish(&users, "e1.executor", "router.register.e2"));
        assert!(!may_publish(&users, "e1.executor", "router.register"));
        for kind in ["heartbeat", "crash"] {
            assert!(may_publish(
                &users,
                "e2.executor",
                &format!("executor.{kind}.e2")
            ));
            assert!(!may_publish(
                &users,
                "e2.executor",
                &format!("executor.{kind}.e1")
            ));
            assert!(!may_publish(
                &users,
                "e2.executor",
                &format!("executor.{kind}")
            ));
        }
        for role in ["cloudcontroller", "healthmanager", "router"] {
            assert!(!may_publish(&users, role, "router.register.e1"), "{role}");
            assert!(
                !may_publish(&users, role, "executor.heartbeat.e1"),
                "{role}"
            );
            assert!(!may_publish(&users, role, "executor.crash.e1"), "{role}");
        }
        // Placements come only from those who place.
        for user in ["cloudcontroller", "healthmanager"] {
            assert!(may_publish(&users, user, "executor.placed.e1"), "{user}");
        }
        for user in ["router", "e1.executor", "e2.executor"] {
            assert!(!may_publish(&users, user, "executor.placed.e1"), "{user}");
        }
        assert!(
            !users
                .iter()
                .any(|u| u.name == "agent" || u.name == "executor")
        );
        // Start commands carry app environments: only the health manager and their cell read them.
        let readers: Vec<&str> = users
            .iter()
            .filter(|u| u.subscribe.iter().any(|p| matches(p, "executor.start.e1")))
            .map(|u| u.name.as_str())
            .collect();
        assert_eq!(readers, ["healthmanager", "e1.executor"]);
        let may_read = |user: &str, subject: &str| {
            users
                .iter()
                .find(|u| u.name == user)
                .is_some_and(|u| u.subscribe.iter().any(|p| matches(p, subject)))
        };
        assert!(may_read("router", "executor.placed.e1"));
        for user in ["cloudcontroller", "healthmanager"] {
            assert!(may_read(user, "executor.heartbeat.e2"), "{user}");
            assert!(may_read(user, "executor.crash.e2"), "{user}");
        }
    }

    #[test]
    fn without_cells_one_executor_user_serves_every_cell() {
        let users = users(&[]).unwrap();
        assert!(may_publish(&users, "executor", "router.register.any"));
        assert!(!may_publish(&users, "executor", "executor.start.any"));
        assert!(may_publish(&users, "executor", "executor.heartbeat.any"));
    }

    #[test]
    fn the_config_requires_mapped_client_certificates_and_quotes_paths() {
        let tls = ServerTls {
            ca_file: Path::new("/x/ca.pem"),
            cert_file: Path::new("/x/nats \"a\".pem"),
            key_file: Path::new("/x/nats.key"),
        };
        let config = server_config("127.0.0.1:4222", tls, &["e1".into()]).unwrap();
        assert!(config.contains("verify_and_map: true"), "{config}");
        assert!(
            config.contains(r#"cert_file: "/x/nats \"a\".pem""#),
            "{config}"
        );
        assert!(config.contains(r#"user: "e1.executor""#), "{config}");
        assert!(server_config("127.0.0.1:4222", tls, &["e.1".into()]).is_err());
        assert!(server_config("", tls, &[]).is_err());
    }
}
