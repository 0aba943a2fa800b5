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
//! | `cloudcontroller`, `healthmanager` | `executor.start.*`, `executor.stop.*`, `executor.placed.*`, `executor.greet`, `executor.evacuate.*`, `executor.kill.*`; the cloud controller also `router.assigned` | `executor.heartbeat.*`, `executor.crash.*`, `executor.placed.*`, `executor.presence.*`, replies; the health manager also `executor.start.*`, and publishes and subscribes `healthmanager.lease` |
//! | `router` | `router.start`, replies to `router.greet` | `router.>`, `executor.placed.*` (placements, without environments) |
//! | `<cell>.executor` (per cell) | `router.register.<cell>`, `router.unregister.<cell>`, `executor.heartbeat.<cell>`, `executor.crash.<cell>`, `executor.presence.<cell>`, replies to its starts and stops | `executor.start.<cell>`, `executor.stop.<cell>`, `executor.evacuate.<cell>`, `executor.kill.<cell>`, `executor.presence.*` (whether another cell can take its instances), `router.start`, `executor.greet` |
//! | `executor` (when no cells are listed: every executor shares it) | as a cell, for every cell (`*`) | as a cell, for every cell |
//! | `doppler` | `doppler.announce` | nothing |
//! | `agent`, `trafficcontroller` | nothing | `doppler.announce` (the dopplers to send to / read from) |
//!
//! Only dopplers may announce themselves, so nobody else can pull an agent's envelopes or an
//! edge's reads to an address of their choosing.
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
    DOPPLER_ANNOUNCE, EXECUTOR_CRASH, EXECUTOR_EVACUATE, EXECUTOR_GREET, EXECUTOR_HEARTBEAT,
    EXECUTOR_KILL, EXECUTOR_PLACED, EXECUTOR_PRESENCE, EXECUTOR_START, EXECUTOR_STOP,
    HEALTHMANAGER_LEASE, ROUTER_ASSIGNED, ROUTER_START, every_cell,
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
    let presence_all = every_cell(EXECUTOR_PRESENCE);
    let evacuate_all = every_cell(EXECUTOR_EVACUATE);
    let kill_all = every_cell(EXECUTOR_KILL);
    // The health manager also reads start commands (it copies them to restart instances while
    // the cloud controller is down); the cloud controller makes them and needs no copy.
    // ... and takes part in its copies' lease (`healthmanager.lease`), so only one acts.
    let placer = |name: &str, reads_starts: bool| User {
        name: name.to_owned(),
        publish: subjects(&[
            &start_all,
            &stop_all,
            &placed_all,
            &evacuate_all,
            &kill_all,
            EXECUTOR_GREET,
            BOOKKEEPING,
        ])
        .into_iter()
        .chain(reads_starts.then(|| HEALTHMANAGER_LEASE.to_owned()))
        // Only the cloud controller says which app may serve which route.
        .chain((name == "cloudcontroller").then(|| ROUTER_ASSIGNED.to_owned()))
        .collect(),
        subscribe: subjects(&[
            &heartbeats_all,
            &crashes_all,
            &placed_all,
            &presence_all,
            INBOX,
            BOOKKEEPING,
        ])
        .into_iter()
        .chain(reads_starts.then(|| start_all.clone()))
        .chain(reads_starts.then(|| HEALTHMANAGER_LEASE.to_owned()))
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
            format!("{EXECUTOR_PRESENCE}.{cell}"),
            BOOKKEEPING.to_owned(),
        ],
        subscribe: vec![
            format!("{EXECUTOR_START}.{cell}"),
            format!("{EXECUTOR_STOP}.{cell}"),
            format!("{EXECUTOR_EVACUATE}.{cell}"),
            format!("{EXECUTOR_KILL}.{cell}"),
            presence_all.clone(),
            ROUTER_START.to_owned(),
            EXECUTOR_GREET.to_owned(),
            BOOKKEEPING.to_owned(),
        ],
        allow_responses: true,
    };
    // The pipeline's dopplers say where they are; agents and edges follow.
    users.push(User {
        name: "doppler".to_owned(),
        publish: subjects(&[DOPPLER_ANNOUNCE, BOOKKEEPING]),
        subscribe: subjects(&[BOOKKEEPING]),
        allow_responses: false,
    });
    for follower in ["agent", "trafficcontroller"] {
        users.push(User {
            name: follower.to_owned(),
            publish: subjects(&[BOOKKEEPING]),
            subscribe: subjects(&[DOPPLER_ANNOUNCE, BOOKKEEPING]),
            allow_responses: false,
        });
    }
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

/// How one `nats-server` joins a cluster of them (`cluster { … }`), so the bus survives the
/// loss of a node: clients list every node's client URL and fail over; the servers forward
/// each message to the nodes with interest.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// The cluster's name; every node must use the same one.
    pub name: &'a str,
    /// Where this node accepts routes from the other nodes (`HOST:PORT`).
    pub listen: &'a str,
    /// The other nodes' route listeners (`HOST:PORT`); this node's own may be listed too and
    /// is left out, so every node can be given the same list.
    pub routes: &'a [String],
    /// The shared route secret ([`ensure_cluster_secret`]). Routes are not subject to any
    /// user's permissions, so a certificate from the platform's CA alone (which every
    /// executor holds) must not be enough to join: a route also needs this secret.
    pub secret: &'a str,
}

/// A complete `nats-server` config: listen on `listen` (`HOST:PORT`), TLS required with
/// client certificates verified and mapped to users, and [`users`]' permissions.
pub fn server_config(listen: &str, tls: ServerTls<'_>, cells: &[String]) -> Result<String, Error> {
    clustered_config(listen, tls, cells, None)
}

/// [`server_config`] for one node of a cluster: the same client side, plus a `cluster` block
/// whose routes use mutual TLS with the same certificates and the cluster's secret.
pub fn clustered_config(
    listen: &str,
    tls: ServerTls<'_>,
    cells: &[String],
    cluster: Option<&Cluster<'_>>,
) -> Result<String, Error> {
    check_host_port("nats listen address", listen, "127.0.0.1:4222")?;
    if let Some(cluster) = cluster {
        check_cluster(cluster)?;
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
    if let Some(cluster) = cluster {
        let own = cluster.listen.trim();
        let routes: Vec<String> = cluster
            .routes
            .iter()
            .map(|r| r.trim())
            .filter(|r| *r != own)
            .map(|r| format!("nats-route://{ROUTE_USER}:{}@{r}", cluster.secret))
            .collect();
        let _ = writeln!(
            out,
            "\n# Routes between the nodes: mutual TLS with the platform's CA and the cluster's\n\
             # secret (routes bypass user permissions, so a CA certificate alone is not enough).\n\
             cluster {{\n  name: {}\n  listen: {}\n  \
             authorization {{ user: {}, password: {}, timeout: 5 }}\n  \
             tls {{\n    cert_file: {}\n    key_file: {}\n    ca_file: {}\n    verify: true\n    timeout: 5\n  }}\n  \
             routes: {}\n}}",
            q(cluster.name),
            q(own),
            q(ROUTE_USER),
            q(cluster.secret),
            path(tls.cert_file),
            path(tls.key_file),
            path(tls.ca_file),
            list(&routes),
        );
    }
    Ok(out)
}

/// The user name routes authenticate as (with the cluster secret as its password).
const ROUTE_USER: &str = "route";

/// Bytes of randomness in a cluster secret (hex-encoded in its file).
const SECRET_BYTES: usize = 32;

/// Reads the cluster's route secret from `path`, or makes one (32 random bytes, hex) and writes
/// it there with mode 0600 when the file does not exist. Every node of a cluster needs the same
/// file: copy it with the certificates.
pub fn ensure_cluster_secret(path: &Path) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim().to_owned();
            if secret.len() < 2 * 16 || !secret.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::Config(format!(
                    "{}: not a cluster secret (at least 32 hex digits); delete it to make a new \
                     one, then copy the new file to every NATS node",
                    path.display()
                )));
            }
            Ok(secret)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; SECRET_BYTES];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(
                |_| {
                    Error::Config(
                        "no randomness from the operating system for the cluster secret".to_owned(),
                    )
                },
            )?;
            let secret = hex::encode(bytes);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let written = options.open(path).and_then(|mut file| {
                std::io::Write::write_all(&mut file, format!("{secret}\n").as_bytes())
            });
            written.map_err(|err| {
                Error::Config(format!(
                    "writing the cluster secret {}: {err}",
                    path.display()
                ))
            })?;
            Ok(secret)
        }
        Err(err) => Err(Error::Config(format!(
            "reading the cluster secret {}: {err}",
            path.display()
        ))),
    }
}

fn check_host_port(what: &str, value: &str, example: &str) -> Result<(), Error> {
    let ok = !value.trim().is_empty()
        && !value.chars().any(char::is_whitespace)
        && value
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {value:?}: use HOST:PORT, e.g. {example}"
        )))
    }
}

fn check_cluster(cluster: &Cluster<'_>) -> Result<(), Error> {
    let name_ok = !cluster.name.is_empty()
        && cluster
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(Error::Config(format!(
            "nats cluster name {:?}: use letters, digits, '-' or '_', e.g. hydrant",
            cluster.name
        )));
    }
    check_host_port(
        "nats cluster listen address",
        cluster.listen,
        "127.0.0.1:6222",
    )?;
    for route in cluster.routes {
        check_host_port("nats cluster route", route, "10.0.0.2:6222")?;
    }
    if cluster.secret.len() < 32 || !cluster.secret.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Config(
            "nats cluster secret: at least 32 hex digits (see ensure_cluster_secret)".to_owned(),
        ));
    }
    Ok(())
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
    fn only_health_managers_take_part_in_their_lease() {
        let users = users(&["e1".into()]).unwrap();
        assert!(may_publish(&users, "healthmanager", HEALTHMANAGER_LEASE));
        for other in ["cloudcontroller", "router", "e1.executor"] {
            assert!(!may_publish(&users, other, HEALTHMANAGER_LEASE), "{other}");
        }
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
        assert!(may_publish(&users, "cloudcontroller", ROUTER_ASSIGNED));
        for other in ["healthmanager", "router", "e1.executor"] {
            assert!(!may_publish(&users, other, ROUTER_ASSIGNED), "{other}");
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
        assert!(!users.iter().any(|u| u.name == "executor"));
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
    fn only_dopplers_announce_dopplers_and_agents_and_edges_follow() {
        let users = users(&["e1".into()]).unwrap();
        assert!(may_publish(&users, "doppler", DOPPLER_ANNOUNCE));
        for other in [
            "agent",
            "trafficcontroller",
            "cloudcontroller",
            "healthmanager",
            "router",
            "e1.executor",
        ] {
            assert!(!may_publish(&users, other, DOPPLER_ANNOUNCE), "{other}");
        }
        let may_read = |user: &str| {
            users
                .iter()
                .find(|u| u.name == user)
                .is_some_and(|u| u.subscribe.iter().any(|p| matches(p, DOPPLER_ANNOUNCE)))
        };
        assert!(may_read("agent") && may_read("trafficcontroller"));
        // The followers publish nothing of the control plane.
        for follower in ["agent", "trafficcontroller"] {
            for subject in [
                "router.register.e1",
                "executor.start.e1",
                "executor.heartbeat.e1",
            ] {
                assert!(
                    !may_publish(&users, follower, subject),
                    "{follower} {subject}"
                );
            }
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
