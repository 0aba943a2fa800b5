//! Tenancy end to end through the real `hydrant` binary: the admin of a micro cloud makes an
//! org, a space and users; a developer and an auditor each log in from their own
//! `HYDRANT_HOME`, side by side, and get exactly what their roles allow.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

/// A running `hydrant up`, stopped with SIGTERM when dropped.
struct Up {
    child: Child,
    home: tempfile::TempDir,
}

impl Up {
    fn start() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "hydrant up runs apps in real containers and needs root: run this test as root, as CI does"
        );
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(BIN)
            .args(["up", "--ephemeral-ports", "--data-dir"])
            .arg(home.path().join("data"))
            .env("HYDRANT_HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let up = Self { child, home };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(up.home.path().join("data/endpoints.json").exists()
            && up.home.path().join("config.json").exists())
        {
            assert!(
                Instant::now() < deadline,
                "hydrant up did not come up in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    }

    fn api(&self) -> String {
        let endpoints: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.home.path().join("data/endpoints.json")).unwrap(),
        )
        .unwrap();
        endpoints["api"].as_str().unwrap().to_owned()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = i32::try_from(self.child.id()).unwrap();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
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

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "command failed: {}", text(out));
    text(out)
}

fn json(out: &Output) -> serde_json::Value {
    ok(out);
    serde_json::from_slice(&out.stdout).unwrap()
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
}
