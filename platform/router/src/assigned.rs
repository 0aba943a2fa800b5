//! Which routes the cloud controller assigned to which app, so the router refuses a
//! registration for a route its app was never given — a cell that lies, or a forged message,
//! cannot pull another tenant's traffic to itself.
//!
//! Flow: the cloud controller publishes a full [`RouteAssignments`] snapshot on
//! `router.assigned` at every route change and every few seconds → [`Assigned::learn`] replaces
//! the table → each `router.register` (per-cell or plain) is checked with [`Assigned::permits`]
//! before it reaches the route table; a refusal is counted as
//! `router.dropped{reason=not_assigned}`. Unregistrations are never checked: removing is always
//! safe.
//!
//! The snapshot also names the platform's own endpoints (`api.<system domain>` → every live
//! cloud controller): [`Assigned::learn`] turns them into registrations to add (re-sent with
//! each snapshot, so they never go stale while a controller lives) and to remove (a controller
//! the last snapshot no longer names: it died or stopped).
//!
//! Invariant: the data plane outlives the control plane. Until the first snapshot arrives (a
//! router started while the controller is down) every registration is accepted as before; once
//! one has arrived, the last snapshot stays in force however long the controller is away.

use std::collections::{BTreeSet, HashMap, HashSet};

use hydrant_bus::messages::{RegistryMessage, RouteAssignments};

use crate::table::strip_port;

/// The assignment table.
#[derive(Debug, Default)]
pub(crate) struct Assigned {
    /// App guid → its routes, normalised; `None` until the first snapshot.
    apps: Option<HashMap<String, HashSet<String>>>,
    /// The endpoints the last snapshot named: `(route, host:port)`.
    endpoints: BTreeSet<(String, String)>,
}

/// What a snapshot changes among the platform's own endpoints.
#[derive(Debug, Default)]
pub(crate) struct EndpointChanges {
    /// Every endpoint the snapshot names (registered afresh).
    pub(crate) register: Vec<RegistryMessage>,
    /// Endpoints the previous snapshot named and this one does not.
    pub(crate) unregister: Vec<RegistryMessage>,
}

/// A registration for one endpoint; `None` when `backend` is not `host:port`.
fn endpoint(route: &str, backend: &str) -> Option<RegistryMessage> {
    let addr: std::net::SocketAddr = backend.parse().ok()?;
    Some(RegistryMessage::new(
        &addr.ip().to_string(),
        addr.port(),
        vec![route.to_owned()],
    ))
}

/// `host[/path]` lower-cased, without a port or a trailing `/`, as the route table keys it.
fn normalise(uri: &str) -> String {
    let (host, path) = match uri.find('/') {
        Some(at) => uri.split_at(at),
        None => (uri, ""),
    };
    let host = strip_port(host.as_bytes())
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or(host);
    format!(
        "{}{}",
        host.to_ascii_lowercase(),
        path.trim_end_matches('/').to_ascii_lowercase()
    )
}

impl Assigned {
    /// Replaces the table with `snapshot`; what to do with the endpoints it names.
    pub(crate) fn learn(&mut self, snapshot: RouteAssignments) -> EndpointChanges {
        let named: BTreeSet<(String, String)> = snapshot
            .endpoints
            .iter()
            .flat_map(|(route, backends)| backends.iter().map(|b| (route.clone(), b.clone())))
            .collect();
        let changes = EndpointChanges {
            register: named.iter().filter_map(|(r, b)| endpoint(r, b)).collect(),
            unregister: self
                .endpoints
                .difference(&named)
                .filter_map(|(r, b)| endpoint(r, b))
                .collect(),
        };
        self.endpoints = named;
        self.apps = Some(
            snapshot
                .apps
                .into_iter()
                .map(|(app, uris)| (app, uris.iter().map(|u| normalise(u)).collect()))
                .collect(),
        );
        changes
    }

    /// Whether `registration` asks only for routes assigned to the app it names.
    pub(crate) fn permits(&self, registration: &RegistryMessage) -> bool {
        let Some(apps) = &self.apps else {
            return true;
        };
        let Some(routes) = registration.app.as_deref().and_then(|a| apps.get(a)) else {
            return false;
        };
        registration
            .uris
            .iter()
            .all(|uri| routes.contains(&normalise(uri)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn registration(app: Option<&str>, uris: &[&str]) -> RegistryMessage {
        let mut r = RegistryMessage::new(
            "127.0.0.1",
            8080,
            uris.iter().map(|u| (*u).to_owned()).collect(),
        );
        r.app = app.map(str::to_owned);
        r
    }

    #[test]
    fn only_assigned_routes_of_the_named_app_pass_once_a_snapshot_is_known() {
        let mut assigned = Assigned::default();
        // No snapshot yet: the router keeps serving as before.
        assert!(assigned.permits(&registration(None, &["anything.example"])));
        assigned.learn(RouteAssignments {
            apps: BTreeMap::from([
                (
                    "victim".to_owned(),
                    vec![
                        "shop.apps.localhost".to_owned(),
                        "shop.apps.localhost/api".to_owned(),
                    ],
                ),
                (
                    "attacker".to_owned(),
                    vec!["trap.apps.localhost".to_owned()],
                ),
            ]),
            endpoints: BTreeMap::new(),
        });
        assert!(assigned.permits(&registration(
            Some("victim"),
            &["SHOP.apps.localhost:80", "shop.apps.localhost/api/"]
        )));
        assert!(!assigned.permits(&registration(Some("attacker"), &["shop.apps.localhost"])));
        assert!(!assigned.permits(&registration(
            Some("attacker"),
            &["trap.apps.localhost", "shop.apps.localhost/login"]
        )));
        assert!(!assigned.permits(&registration(None, &["shop.apps.localhost"])));
        assert!(!assigned.permits(&registration(Some("unknown"), &["shop.apps.localhost"])));
    }

    #[test]
    fn controllers_named_are_registered_and_one_no_longer_named_is_removed() {
        let mut assigned = Assigned::default();
        let snapshot = |backends: &[&str]| RouteAssignments {
            apps: BTreeMap::new(),
            endpoints: BTreeMap::from([(
                "api.apps.localhost".to_owned(),
                backends.iter().map(|b| (*b).to_owned()).collect(),
            )]),
        };
        let both = assigned.learn(snapshot(&["10.0.0.1:9022", "10.0.0.2:9022", "junk"]));
        let hosts = |m: &[RegistryMessage]| {
            m.iter()
                .map(|r| format!("{}:{} {:?}", r.host, r.port, r.uris))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            hosts(&both.register),
            [
                "10.0.0.1:9022 [\"api.apps.localhost\"]",
                "10.0.0.2:9022 [\"api.apps.localhost\"]"
            ]
        );
        assert!(both.unregister.is_empty());
        // The first controller died: its row lapsed, the next snapshot names only the other.
        let one = assigned.learn(snapshot(&["10.0.0.2:9022"]));
        assert_eq!(
            hosts(&one.register),
            ["10.0.0.2:9022 [\"api.apps.localhost\"]"]
        );
        assert_eq!(
            hosts(&one.unregister),
            ["10.0.0.1:9022 [\"api.apps.localhost\"]"]
        );
        // The endpoints need no assignment of their own.
        assert!(!assigned.permits(&registration(None, &["api.apps.localhost"])));
    }
}
