//! `VCAP_SERVICES` and `DATABASE_URL` for an app, in Cloud Foundry's exact shape, built when
//! the placement loop writes an instance's start message — so a bind or unbind reaches the app
//! at its next start or restart, with no restage.
//!
//! Shape (CC's `SystemEnvPresenter`): keys are offering labels (`user-provided` for
//! user-provided instances); each value lists one entry per bound instance — the newest
//! binding when an app has several to one instance — with the keys `label`, `provider`,
//! `plan`, `name` (binding name, else instance name), `tags` (offering's then instance's),
//! `instance_guid`, `instance_name`, `binding_guid`, `binding_name`, `credentials`,
//! `syslog_drain_url`, `volume_mounts` (twelve; user-provided entries have no `provider` or
//! `plan`). `DATABASE_URL` is the first `credentials.uri` whose scheme names a database, as
//! the buildpack launcher does.
//!
//! Invariants: a binding whose broker has not returned credentials yet is not in the
//! environment; the app's environment with `VCAP_SERVICES` stays within [`MAX_ENV_BYTES`]
//! (a bind that would break that is refused by the job runner).

use std::collections::BTreeMap;

use crate::sql::Connection;
use hydrant_api::services::{BindingType, ServiceInstanceType};
use hydrant_bus::messages::ServiceEgress;
use serde_json::{Map, Value, json};

use super::store;

/// Cloud Foundry's cap on an app's environment, `VCAP_SERVICES` included: 130 KB.
pub(crate) const MAX_ENV_BYTES: usize = 130 * 1024;

/// URI schemes `DATABASE_URL` is taken from.
const DATABASE_SCHEMES: [&str; 5] = ["mysql", "mysql2", "postgres", "postgresql", "mariadb"];

/// `VCAP_SERVICES` for `app_guid` as a JSON object.
pub(crate) fn vcap_services(c: &Connection, app_guid: &str) -> crate::sql::Result<Value> {
    let bindings = store::bindings(c, None, Some(app_guid), Some(BindingType::App))?;
    // Newest binding per instance: walk newest first and keep the first seen.
    let mut seen = std::collections::HashSet::new();
    let mut chosen = Vec::new();
    for b in bindings.into_iter().rev() {
        let usable = b.op.kind != "create" || b.op.state == "succeeded";
        if usable && b.credentials.is_some() && seen.insert(b.instance_guid.clone()) {
            chosen.push(b);
        }
    }
    chosen.reverse();
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for b in chosen {
        let Some(instance) = store::instance(c, &b.instance_guid)? else {
            continue;
        };
        let name = b.name.clone().unwrap_or_else(|| instance.name.clone());
        let entry = match (&instance.kind, &instance.plan) {
            (ServiceInstanceType::UserProvided, _) | (_, None) => {
                let credentials = if instance.credentials.is_null() {
                    json!({})
                } else {
                    instance.credentials.clone()
                };
                json!({
                    "label": "user-provided",
                    "name": name,
                    "tags": instance.tags,
                    "instance_guid": instance.guid,
                    "instance_name": instance.name,
                    "binding_guid": b.guid,
                    "binding_name": b.name,
                    "credentials": credentials,
                    "syslog_drain_url": instance.syslog_drain_url,
                    "volume_mounts": [],
                })
            }
            (ServiceInstanceType::Managed, Some(plan)) => {
                let mut tags = plan.offering_tags.clone();
                tags.extend(instance.tags.iter().cloned());
                json!({
                    "label": plan.offering_name,
                    "provider": Value::Null,
                    "plan": plan.name,
                    "name": name,
                    "tags": tags,
                    "instance_guid": instance.guid,
                    "instance_name": instance.name,
                    "binding_guid": b.guid,
                    "binding_name": b.name,
                    "credentials": b.credentials.clone().unwrap_or_else(|| json!({})),
                    "syslog_drain_url": b.syslog_drain_url,
                    "volume_mounts": b.volume_mounts,
                })
            }
        };
        let label = entry
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or("user-provided")
            .to_owned();
        out.entry(label).or_default().push(entry);
    }
    let map: Map<String, Value> = out.into_iter().map(|(k, v)| (k, Value::Array(v))).collect();
    Ok(Value::Object(map))
}

/// Where the app's managed bindings point, for the egress rules its containers get: per entry,
/// `credentials.host` (or `hostname`) with `port`, and the host and port of `uri`, deduplicated.
/// User-provided entries open nothing: their credentials are whatever a space developer typed,
/// and a rule from them could open any host port (the platform's own included) to the app.
pub(crate) fn egress(vcap: &Value) -> Vec<ServiceEgress> {
    let mut out = std::collections::BTreeSet::new();
    let entries = vcap
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter(|entry| entry.get("plan").is_some());
    for entry in entries {
        let Some(credentials) = entry.get("credentials") else {
            continue;
        };
        let service = entry
            .get("instance_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let host = ["host", "hostname"]
            .iter()
            .find_map(|k| credentials.get(*k).and_then(Value::as_str));
        let port = credentials.get("port").and_then(|p| match p {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        });
        let from_uri = credentials
            .get("uri")
            .and_then(Value::as_str)
            .and_then(uri_endpoint);
        let fields = host.zip(port).map(|(h, p)| (h.to_owned(), p));
        for (host, port) in fields.into_iter().chain(from_uri) {
            out.insert(ServiceEgress {
                service: service.to_owned(),
                host,
                // Out of range stays out of range, for the executor to refuse and say so.
                port: u32::try_from(port).unwrap_or(u32::MAX),
            });
        }
    }
    out.into_iter().collect()
}

/// The host and port of `scheme://[user[:pass]@]host:port[/...]` (an IPv6 host in brackets).
fn uri_endpoint(uri: &str) -> Option<(String, u64)> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// The first database URI among the entries' `credentials.uri`.
pub(crate) fn database_url(vcap: &Value) -> Option<String> {
    vcap.as_object()?.values().find_map(|entries| {
        entries.as_array()?.iter().find_map(|entry| {
            let uri = entry.get("credentials")?.get("uri")?.as_str()?;
            let scheme = uri.split_once("://")?.0;
            DATABASE_SCHEMES.contains(&scheme).then(|| uri.to_owned())
        })
    })
}

/// The variables services add to an app's instances: `VCAP_SERVICES`, and `DATABASE_URL`
/// when a bound instance has a database URI.
pub(crate) fn services_env(
    c: &Connection,
    app_guid: &str,
) -> crate::sql::Result<BTreeMap<String, String>> {
    Ok(env_of(&vcap_services(c, app_guid)?))
}

/// [`services_env`] from a `VCAP_SERVICES` already built.
pub(crate) fn env_of(vcap: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(url) = database_url(vcap) {
        env.insert("DATABASE_URL".to_owned(), url);
    }
    env.insert("VCAP_SERVICES".to_owned(), vcap.to_string());
    env
}

/// Adds `services` to an instance's environment: `VCAP_SERVICES` always wins (the platform
/// owns it), `DATABASE_URL` only when the app did not set its own.
pub(crate) fn apply(env: &mut BTreeMap<String, String>, services: &BTreeMap<String, String>) {
    for (key, value) in services {
        if key == "DATABASE_URL" && env.contains_key(key) {
            continue;
        }
        env.insert(key.clone(), value.clone());
    }
}

/// Why the app's environment would be too large with its current bindings, if it would.
pub(crate) fn size_problem(c: &Connection, app_guid: &str) -> crate::sql::Result<Option<String>> {
    let services = services_env(c, app_guid)?;
    let app_env: String = c
        .query_row("SELECT env FROM apps WHERE guid = ?1", [app_guid], |r| {
            r.get(0)
        })
        .unwrap_or_default();
    let size = services
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>()
        + app_env.len();
    Ok((size > MAX_ENV_BYTES).then(|| {
        format!(
            "with this binding the app's environment would be {size} bytes, over the \
             {MAX_ENV_BYTES}-byte (130 KB) limit on VCAP_SERVICES and the app's variables; \
             unbind another service or shrink the app's environment"
        )
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    #[test]
    fn database_url_is_the_first_database_uri() {
        let vcap = json!({
            "a-redis": [{"credentials": {"uri": "redis://:p@h:6379"}}],
            "b-mysql": [{"credentials": {"uri": "mysql://u:p@h:3306/db?reconnect=true"}}],
            "c-pg": [{"credentials": {"uri": "postgres://u:p@h/db"}}]
        });
        assert_eq!(
            database_url(&vcap).unwrap(),
            "mysql://u:p@h:3306/db?reconnect=true"
        );
        assert_eq!(database_url(&json!({})), None);
    }

    #[test]
    fn egress_is_each_managed_bindings_host_and_port_and_never_a_user_provided_one() {
        let vcap = json!({
            "redis": [{"plan": "small", "instance_name": "cache",
                "credentials": {"host": "10.254.0.1", "port": 42001,
                                "uri": "redis://u:p@10.254.0.1:42001"}}],
            "mysql": [{"plan": "small", "instance_name": "db",
                "credentials": {"hostname": "10.254.0.1", "port": "42002",
                                "uri": "mysql://u:p@10.254.0.1:42003/d?reconnect=true"}}],
            "odd": [{"plan": "x", "instance_name": "odd", "credentials": {"port": 99999999999u64,
                "host": "h"}}],
            "user-provided": [{"label": "user-provided", "instance_name": "mine",
                "credentials": {"host": "127.0.0.1", "port": 22}}]
        });
        let got: Vec<_> = egress(&vcap)
            .into_iter()
            .map(|e| (e.service, e.host, e.port))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cache".into(), "10.254.0.1".into(), 42001),
                ("db".into(), "10.254.0.1".into(), 42002),
                ("db".into(), "10.254.0.1".into(), 42003),
                ("odd".into(), "h".into(), u32::MAX),
            ]
        );
        assert!(egress(&json!({})).is_empty());
        assert_eq!(
            uri_endpoint("amqp://u:p@[::1]:5672/vh"),
            Some(("::1".into(), 5672))
        );
        assert_eq!(uri_endpoint("postgres://u:p@h/db"), None);
    }

    #[test]
    fn the_apps_database_url_wins_but_vcap_services_does_not() {
        let mut env = BTreeMap::from([
            ("DATABASE_URL".to_owned(), "mine".to_owned()),
            ("VCAP_SERVICES".to_owned(), "{}".to_owned()),
        ]);
        let services = BTreeMap::from([
            ("DATABASE_URL".to_owned(), "theirs".to_owned()),
            ("VCAP_SERVICES".to_owned(), "{\"x\":[]}".to_owned()),
        ]);
        apply(&mut env, &services);
        assert_eq!(env["DATABASE_URL"], "mine");
        assert_eq!(env["VCAP_SERVICES"], "{\"x\":[]}");
    }
}
