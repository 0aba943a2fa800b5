//! The environment an instance starts with: Cloud Foundry's variables (`PORT`, `CF_INSTANCE_*`,
//! `VCAP_APPLICATION`, `VCAP_SERVICES`, `MEMORY_LIMIT`, ...), Hydrant's own (`HYDRANT_*`) and
//! the user's.
//!
//! Invariant: the user's environment wins over everything except the variables that tell the
//! app who and where it is (`PORT`, `INSTANCE_*`, `CF_INSTANCE_*`, `VCAP_APP_*`): an app must
//! never be told a port it was not given.

use std::collections::BTreeMap;
use std::path::Path;

use hydrant_bus::messages::StartInstance;
use serde_json::{Value, json};

/// File descriptors an instance is told it may use (Cloud Foundry's default `fds` limit).
const FDS_LIMIT: u64 = 16_384;

/// Where an instance lives and listens.
#[derive(Debug, Clone)]
pub(crate) struct Placement<'a> {
    /// The port the app listens on (`PORT`).
    pub(crate) port: u16,
    /// The app's own address (`CF_INSTANCE_INTERNAL_IP`): a container's bridge address.
    pub(crate) host: &'a str,
    /// Where routers and other hosts reach it (`CF_INSTANCE_IP`, `CF_INSTANCE_PORT`): the
    /// cell's address and the published host port when its port is mapped, else `host:port`.
    pub(crate) external: (&'a str, u16),
    pub(crate) home: &'a Path,
    pub(crate) tmp: &'a Path,
    pub(crate) started_at_nanos: i64,
}

/// `VCAP_APPLICATION` (and `HYDRANT_APPLICATION`): CF's JSON shape, DEA-era instance fields
/// included.
pub(crate) fn vcap_application(start: &StartInstance, placement: &Placement<'_>) -> Value {
    let tag = |key: &str| start.tags.get(key).cloned().unwrap_or_default();
    let started_secs = placement.started_at_nanos / 1_000_000_000;
    json!({
        "application_id": start.app,
        "application_name": start.app_name,
        "application_uris": start.uris,
        "application_version": start.droplet_sha256,
        "cf_api": tag("cf_api"),
        "host": "0.0.0.0",
        "instance_id": start.instance,
        "instance_index": start.index,
        "limits": {"fds": FDS_LIMIT, "mem": start.memory_mb, "disk": start.disk_mb},
        "name": start.app_name,
        "organization_id": tag("organization_id"),
        "organization_name": tag("organization_name"),
        "port": placement.port,
        "process_id": start.app,
        "process_type": start.tags.get("process_type").map_or("web", String::as_str),
        "space_id": tag("space_id"),
        "space_name": tag("space_name"),
        "started_at_timestamp": started_secs,
        "state_timestamp": started_secs,
        "uris": start.uris,
        "version": start.droplet_sha256,
    })
}

/// The complete environment of an instance's process.
pub(crate) fn build(
    start: &StartInstance,
    placement: &Placement<'_>,
    path: &str,
    hydrant_bin: &str,
) -> BTreeMap<String, String> {
    let app_json = vcap_application(start, placement).to_string();
    let (external_host, external_port) = placement.external;
    let addr = format!("{external_host}:{external_port}");
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("PATH", path.to_owned());
    set("LANG", "en_US.UTF-8".to_owned());
    set("HOME", placement.home.to_string_lossy().into_owned());
    set("TMPDIR", placement.tmp.to_string_lossy().into_owned());
    set("MEMORY_LIMIT", format!("{}m", start.memory_mb));
    set("VCAP_APPLICATION", app_json.clone());
    set("HYDRANT_APPLICATION", app_json);
    set("VCAP_SERVICES", "{}".to_owned());
    set("HYDRANT_BIN", hydrant_bin.to_owned());
    for (key, value) in &start.env {
        set(key, value.clone());
    }
    // Set last so the user's env cannot override them.
    let port = placement.port.to_string();
    let ports = json!([{"external": external_port, "internal": placement.port}]).to_string();
    for (key, value) in [
        ("PORT", port.clone()),
        ("VCAP_APP_PORT", port),
        ("VCAP_APP_HOST", "0.0.0.0".to_owned()),
        ("INSTANCE_INDEX", start.index.to_string()),
        ("INSTANCE_GUID", start.instance.clone()),
        ("CF_INSTANCE_INDEX", start.index.to_string()),
        ("CF_INSTANCE_GUID", start.instance.clone()),
        ("CF_INSTANCE_IP", external_host.to_owned()),
        ("CF_INSTANCE_INTERNAL_IP", placement.host.to_owned()),
        ("CF_INSTANCE_PORT", external_port.to_string()),
        ("CF_INSTANCE_ADDR", addr),
        ("CF_INSTANCE_PORTS", ports),
    ] {
        set(key, value);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_env_wins_except_for_identity() {
        let start = StartInstance {
            app: "app-1".into(),
            app_name: "shop".into(),
            instance: "inst-1".into(),
            index: 2,
            memory_mb: 128,
            disk_mb: 512,
            uris: vec!["shop.local".into()],
            env: BTreeMap::from([
                ("PORT".into(), "1".into()),
                ("INSTANCE_INDEX".into(), "9".into()),
                ("MEMORY_LIMIT".into(), "1g".into()),
                ("GREETING".into(), "hi".into()),
            ]),
            ..StartInstance::default()
        };
        let placement = Placement {
            port: 61005,
            host: "10.0.0.5",
            external: ("10.0.0.5", 61005),
            home: Path::new("/i/app"),
            tmp: Path::new("/i/tmp"),
            started_at_nanos: 1_700_000_000_000_000_000,
        };
        let env = build(&start, &placement, "/usr/bin:/bin", "/opt/hydrant");
        assert_eq!(env["PORT"], "61005");
        assert_eq!(env["INSTANCE_INDEX"], "2");
        assert_eq!(env["MEMORY_LIMIT"], "1g");
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["CF_INSTANCE_ADDR"], "10.0.0.5:61005");
        assert_eq!(env["HYDRANT_BIN"], "/opt/hydrant");
        let vcap: Value = serde_json::from_str(&env["VCAP_APPLICATION"]).unwrap();
        assert_eq!(vcap["application_name"], "shop");
        assert_eq!(vcap["limits"]["mem"], 128);
        assert_eq!(vcap["uris"][0], "shop.local");
        assert_eq!(vcap["instance_index"], 2);
        assert_eq!(env["VCAP_APPLICATION"], env["HYDRANT_APPLICATION"]);
    }

    #[test]
    fn a_mapped_instance_is_told_its_published_address_as_diego_does() {
        let placement = Placement {
            port: 8080,
            host: "10.255.0.7",
            external: ("192.0.2.10", 61017),
            home: Path::new("/home/vcap/app"),
            tmp: Path::new("/home/vcap/tmp"),
            started_at_nanos: 0,
        };
        let env = build(&StartInstance::default(), &placement, "/bin", "");
        assert_eq!(env["PORT"], "8080");
        assert_eq!(env["CF_INSTANCE_IP"], "192.0.2.10");
        assert_eq!(env["CF_INSTANCE_PORT"], "61017");
        assert_eq!(env["CF_INSTANCE_ADDR"], "192.0.2.10:61017");
        assert_eq!(env["CF_INSTANCE_INTERNAL_IP"], "10.255.0.7");
        let ports: Value = serde_json::from_str(&env["CF_INSTANCE_PORTS"]).unwrap();
        assert_eq!(ports, json!([{"external": 61017, "internal": 8080}]));
    }
}
