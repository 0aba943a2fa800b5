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
//! Invariant: the data plane outlives the control plane. Until the first snapshot arrives (a
//! router started while the controller is down) every registration is accepted as before; once
//! one has arrived, the last snapshot stays in force however long the controller is away.

use std::collections::{HashMap, HashSet};

use hydrant_bus::messages::{RegistryMessage, RouteAssignments};

use crate::table::strip_port;

/// The assignment table.
#[derive(Debug, Default)]
pub(crate) struct Assigned {
    /// App guid → its routes, normalised; `None` until the first snapshot.
    apps: Option<HashMap<String, HashSet<String>>>,
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
    /// Replaces the table with `snapshot`.
    pub(crate) fn learn(&mut self, snapshot: RouteAssignments) {
        self.apps = Some(
            snapshot
                .apps
                .into_iter()
                .map(|(app, uris)| (app, uris.iter().map(|u| normalise(u)).collect()))
                .collect(),
        );
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
}
