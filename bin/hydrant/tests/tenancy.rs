//! Tenancy end to end through the real `hydrant` binary: the admin of a micro cloud makes an
//! org, a space and users; a developer and an auditor each log in from their own
//! `HYDRANT_HOME`, side by side, and get exactly what their roles allow.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/cli.rs"]
mod cli;

use cli::{Up, json, ok, text};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

impl Up {
    fn start() -> Self {
        Self::launch(
            tempfile::tempdir().unwrap(),
            &[],
            Stdio::null(),
            Stdio::inherit(),
        )
    }

    fn api(&self) -> String {
        self.endpoint("api")
    }
}

/// `hydrant ARGS` with `HYDRANT_HOME=home`.
fn cli(home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HYDRANT_HOME", home)
        .env_remove("HYDRANT_PASSWORD")
        .output()
        .unwrap()
}

/// `hydrant ARGS` with `stdin` piped in.
fn cli_stdin(home: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("HYDRANT_HOME", home)
        .env_remove("HYDRANT_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn two_users_in_two_homes_get_what_their_roles_allow() {
    let up = Up::start();
    let api = up.api();
    let admin = up.home.path();
    for (user, password) in [
        ("alice", "alice-password"),
        ("bob", "bob-password"),
        ("carol", "carol-password"),
    ] {
        ok(&cli(admin, &["create-user", user, password]));
    }
    ok(&cli(admin, &["create-org", "acme"]));
    ok(&cli(admin, &["create-space", "dev", "-o", "acme"]));
    ok(&cli(
        admin,
        &["set-space-role", "alice", "acme", "dev", "SpaceDeveloper"],
    ));
    ok(&cli(
        admin,
        &["set-space-role", "bob", "acme", "dev", "SpaceAuditor"],
    ));
    let orgs = json(&cli(admin, &["orgs", "--json"]));
    let names: Vec<&str> = orgs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"acme") && names.contains(&"default"),
        "{names:?}"
    );

    // Alice logs in from her own home and lands in her only org and space, as `cf login` does.
    let alice_home = tempfile::tempdir().unwrap();
    let alice = alice_home.path();
    let login = ok(&cli(
        alice,
        &["login", "-a", &api, "-u", "alice", "-p", "alice-password"],
    ));
    assert!(login.contains("Targeted space dev"), "{login}");
    let target = json(&cli(alice, &["target", "--json"]));
    assert_eq!(target["user"], "alice");
    assert_eq!(target["org"], "acme");
    assert_eq!(target["space"], "dev");

    let app_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        app_dir.path().join("Procfile"),
        "web: exec \"$HYDRANT_BIN\" demo-app\n",
    )
    .unwrap();
    let app_path = app_dir.path().to_str().unwrap();
    ok(&cli(alice, &["push", "shop", "-p", app_path, "--no-start"]));
    ok(&cli(alice, &["set-env", "shop", "GREETING", "hello"]));
    let env = json(&cli(alice, &["env", "shop", "--json"]));
    assert_eq!(env["GREETING"], "hello");

    // Quotas: an org quota and a space quota of one app; a second push names the quota.
    ok(&cli(
        admin,
        &[
            "create-quota",
            "small",
            "-m",
            "2G",
            "-i",
            "10",
            "-r",
            "10",
            "-s",
            "5",
        ],
    ));
    ok(&cli(admin, &["set-quota", "acme", "small"]));
    ok(&cli(
        admin,
        &["create-space-quota", "one-app", "-o", "acme", "-a", "1"],
    ));
    ok(&cli(
        admin,
        &["set-space-quota", "dev", "one-app", "-o", "acme"],
    ));
    let quotas = json(&cli(alice, &["quotas", "--json"]));
    let names: Vec<&str> = quotas
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"small") && names.contains(&"one-app"),
        "{names:?}"
    );
    let over = cli(alice, &["push", "second", "-p", app_path, "--no-start"]);
    assert!(!over.status.success());
    assert!(
        text(&over).contains("space quota \"one-app\" exceeded: apps limit 1, 1 in use"),
        "{}",
        text(&over)
    );

    // Bob logs in from a second home, the password piped to the prompt; Alice stays Alice.
    let bob_home = tempfile::tempdir().unwrap();
    let bob = bob_home.path();
    ok(&cli_stdin(
        bob,
        &["login", "-a", &api, "-u", "bob"],
        "bob-password\n",
    ));
    assert_eq!(json(&cli(alice, &["target", "--json"]))["user"], "alice");
    let apps = json(&cli(bob, &["apps", "--json"]));
    let shop = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "shop")
        .expect("the auditor sees the app");
    assert_eq!(
        shop["env"],
        serde_json::json!({}),
        "an auditor never sees env"
    );
    let denied = cli(bob, &["env", "shop"]);
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("SpaceDeveloper"),
        "{}",
        text(&denied)
    );
    assert!(!text(&denied).contains("hello"));
    assert!(!cli(bob, &["set-env", "shop", "X", "y"]).status.success());
    assert!(
        !cli(bob, &["create-space", "mine", "-o", "acme"])
            .status
            .success()
    );

    // Carol has no role: nothing exists for her, with the not-found exit code.
    let carol_home = tempfile::tempdir().unwrap();
    let carol = carol_home.path();
    ok(&cli(
        carol,
        &["login", "-a", &api, "-u", "carol", "-p", "carol-password"],
    ));
    assert_eq!(
        json(&cli(carol, &["orgs", "--json"])),
        serde_json::json!([])
    );
    let hidden = cli(carol, &["app", "shop"]);
    assert_eq!(hidden.status.code(), Some(4), "{}", text(&hidden));
    assert!(!cli(carol, &["target", "-o", "acme"]).status.success());

    // Mallory, a developer in another org, can take neither Alice's host nor a path under it.
    ok(&cli(admin, &["create-user", "mallory", "mallory-password"]));
    ok(&cli(admin, &["create-org", "evil"]));
    ok(&cli(admin, &["create-space", "lair", "-o", "evil"]));
    ok(&cli(
        admin,
        &[
            "set-space-role",
            "mallory",
            "evil",
            "lair",
            "SpaceDeveloper",
        ],
    ));
    let mallory_home = tempfile::tempdir().unwrap();
    let mallory = mallory_home.path();
    ok(&cli(
        mallory,
        &[
            "login",
            "-a",
            &api,
            "-u",
            "mallory",
            "-p",
            "mallory-password",
        ],
    ));
    for args in [
        &[
            "create-route",
            "lair",
            "apps.localhost",
            "--hostname",
            "shop",
        ][..],
        &[
            "create-route",
            "lair",
            "apps.localhost",
            "--hostname",
            "shop",
            "--path",
            "/login",
        ][..],
    ] {
        let refused = cli(mallory, args);
        assert!(!refused.status.success(), "{args:?}: {}", text(&refused));
        assert!(text(&refused).contains("is taken"), "{}", text(&refused));
        assert!(!text(&refused).contains("acme"), "{}", text(&refused));
    }
    ok(&cli(
        mallory,
        &[
            "create-route",
            "lair",
            "apps.localhost",
            "--hostname",
            "lair",
        ],
    ));
    let routes = ok(&cli(alice, &["routes"]));
    assert!(routes.contains("shop.apps.localhost"), "{routes}");
    assert!(!routes.contains("lair.apps.localhost"), "{routes}");

    // The admin still works in the default space with no target, as right after `hydrant up`.
    let all = json(&cli(admin, &["apps", "--json"]));
    assert!(all.as_array().unwrap().iter().any(|a| a["name"] == "shop"));

    // delete-space and delete-org, as cf has them: only an admin or an org manager, a prompt
    // unless -f, and everything inside goes with the space.
    let refused = cli(alice, &["delete-space", "dev", "-o", "acme", "-f"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("may see this space but not change it"),
        "{}",
        text(&refused)
    );
    let refused = cli(mallory, &["delete-org", "evil", "-f"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let kept = cli_stdin(admin, &["delete-space", "dev", "-o", "acme"], "n\n");
    assert!(ok(&kept).contains("Delete cancelled"), "{}", text(&kept));
    assert!(
        json(&cli(alice, &["apps", "--json"]))
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "shop")
    );
    let gone = cli_stdin(admin, &["delete-space", "dev", "-o", "acme"], "y\n");
    let said = ok(&gone);
    assert!(
        said.contains("deleted app shop") && said.contains("OK"),
        "{said}"
    );
    let spaces = json(&cli(admin, &["spaces", "-o", "acme", "--json"]));
    assert!(
        !spaces
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "dev"),
        "{spaces}"
    );
    let all = json(&cli(admin, &["apps", "--json"]));
    assert!(
        !all.as_array().unwrap().iter().any(|a| a["name"] == "shop"),
        "{all}"
    );
    ok(&cli(admin, &["delete-org", "evil", "-f"]));
    let orgs = json(&cli(admin, &["orgs", "--json"]));
    assert!(
        !orgs.as_array().unwrap().iter().any(|o| o["name"] == "evil"),
        "{orgs}"
    );
    // Mallory's route went with her org: the host is free for another space again.
    ok(&cli(
        admin,
        &[
            "create-route",
            "default",
            "apps.localhost",
            "--hostname",
            "lair",
        ],
    ));
    let again = cli(admin, &["delete-org", "evil", "-f"]);
    assert!(ok(&again).contains("does not exist"), "{}", text(&again));
}

/// The listening TCP sockets of process `pid` (from `/proc`), as `IP:port` strings.
fn listening_sockets(pid: u32) -> Vec<std::net::SocketAddr> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut out = Vec::new();
    for (table, v6) in [("tcp", false), ("tcp6", true)] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address st ... inode (10th column); 0A is LISTEN.
            if cols.len() < 10 || cols[3] != "0A" || !inodes.contains(cols[9]) {
                continue;
            }
            let (ip, port) = cols[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port, 16).unwrap();
            let bytes: Vec<u8> = (0..ip.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&ip[i..i + 2], 16).unwrap())
                .collect();
            // The kernel prints each 32-bit word in host (little-endian) order.
            let words: Vec<u8> = bytes
                .chunks(4)
                .flat_map(|w| w.iter().rev().copied())
                .collect();
            let ip: std::net::IpAddr = if v6 {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(words).unwrap()).into()
            } else {
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(words).unwrap()).into()
            };
            out.push(std::net::SocketAddr::new(ip, port));
        }
    }
    out
}

/// Every file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&path)),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

/// What `hydrant up` leaves on disk and where it listens: the administrator's generated
/// password only in its one 0600 file (never in the database, logs, endpoints or CLI
/// config), and every socket the process listens on, admin ports included, on loopback.
#[test]
fn hydrant_up_keeps_its_password_in_one_private_file_and_listens_on_loopback_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let up = Up::start();
    let data = up.home.path().join("data");
    let password_file = data.join("cloudcontroller/admin-password");
    let mode = std::fs::metadata(&password_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the admin password file is the owner's alone");
    let password = std::fs::read_to_string(&password_file).unwrap();
    let password = password.trim();
    assert!(password.len() >= 16, "a generated password");
    // It is the password: a login from a fresh home works with it.
    let fresh = tempfile::tempdir().unwrap();
    ok(&cli(
        fresh.path(),
        &["login", "-a", &up.api(), "-u", "admin", "-p", password],
    ));
    let mut copies = Vec::new();
    for file in files_under(up.home.path()) {
        if file == password_file {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        if bytes
            .windows(password.len())
            .any(|w| w == password.as_bytes())
        {
            copies.push(file);
        }
    }
    assert!(
        copies.is_empty(),
        "the plaintext password is also in {copies:?}"
    );
    let data_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(data_mode, 0o700);

    let endpoints: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let listening = listening_sockets(up.child.id());
    assert!(!listening.is_empty(), "the process listens");
    let open: Vec<_> = listening.iter().filter(|a| !a.ip().is_loopback()).collect();
    assert!(open.is_empty(), "listening beyond loopback: {open:?}");
    let admin = endpoints["admin"].as_object().unwrap();
    assert!(admin.len() >= 8, "every role's admin port: {admin:?}");
    for (role, url) in admin {
        let addr: std::net::SocketAddr = url
            .as_str()
            .unwrap()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        assert!(
            listening.contains(&addr),
            "{role}'s admin port {addr} is one the process listens on: {listening:?}"
        );
        assert!(addr.ip().is_loopback(), "{role}: {addr}");
    }
}

/// `hydrant run ROLE` with a config that leaves the addresses out: each role's admin listener
/// (`/healthz`, `/metrics` and status pages) binds to loopback, read from the bound socket.
#[tokio::test]
async fn every_roles_default_admin_listener_is_on_loopback() {
    async fn admin_bound<R: hydrant_runtime::Role>(config: &R::Config) -> std::net::SocketAddr {
        // The default port may be taken on a shared host; the default host is what matters.
        let listeners = hydrant_runtime::bind_on::<R>(|spec| {
            let address = (spec.address)(config);
            let address = if address.contains(':') {
                address
            } else {
                spec.default
            };
            let host = address.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            format!("{host}:0")
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", R::NAME));
        listeners
            .addrs()
            .into_iter()
            .find(|(name, _)| *name == hydrant_runtime::ADMIN)
            .unwrap_or_else(|| panic!("{} has an admin listener", R::NAME))
            .1
    }
    macro_rules! roles {
        ($($role:ty => $config:ty),* $(,)?) => {{
            let mut bound = Vec::new();
            $(bound.push((<$role as hydrant_runtime::Role>::NAME,
                admin_bound::<$role>(&<$config>::default()).await));)*
            bound
        }};
    }
    let bound = roles![
        hydrant_agent::Agent => hydrant_agent::Config,
        hydrant_doppler::Doppler => hydrant_doppler::Config,
        hydrant_firehose::TrafficController => hydrant_firehose::Config,
        hydrant_router::Router => hydrant_router::Config,
        hydrant_cloudcontroller::CloudController => hydrant_cloudcontroller::Config,
        hydrant_executor::Executor => hydrant_executor::Config,
        hydrant_healthmanager::HealthManager => hydrant_healthmanager::Config,
        hydrant_slo::Slo => hydrant_slo::Config,
        hydrant_autoscaler::AutoscalerRole => hydrant_autoscaler::Config,
        hydrant_nozzle_syslog::SyslogNozzle => hydrant_nozzle_syslog::Config,
        hydrant_nozzle_otlp::OtlpNozzle => hydrant_nozzle_otlp::Config,
        hydrant_nozzle_datadog::DatadogNozzle => hydrant_nozzle_datadog::Config,
        hydrant_broker::Broker => hydrant_broker::Config,
    ];
    assert_eq!(bound.len(), 13, "every role `hydrant run` starts");
    let open: Vec<_> = bound
        .iter()
        .filter(|(_, a)| !a.ip().is_loopback())
        .collect();
    assert!(
        open.is_empty(),
        "admin listeners beyond loopback by default: {open:?}"
    );
}
