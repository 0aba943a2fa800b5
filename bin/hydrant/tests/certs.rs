//! `hydrant certs` as an operator runs it (the real binary): `init` makes a private directory
//! with a CA and every identity's leaf; `show --json` reports each with its days left; rotation
//! runs in three steps, each refused out of order with the step that comes next, and ends with
//! only the new CA trusted and every leaf signed by it; `issue --out` makes a cell's leaf for
//! another host; `nats-config` writes the bus's server config.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn hydrant(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hydrant"))
        .args(args)
        .env("HYDRANT_HOME", home)
        .env_remove("HYDRANT_LOG")
        .output()
        .unwrap()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = hydrant(home, args);
    assert!(
        out.status.success(),
        "hydrant {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(home: &Path, args: &[&str], next: &str) {
    let out = hydrant(home, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "hydrant {args:?} should have failed");
    assert!(
        stderr.contains(next),
        "hydrant {args:?}: {stderr} should name {next}"
    );
}

fn show(home: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(home, &["certs", "show", "--json"])).unwrap()
}

/// (file, identity, issuer) of every certificate `show` lists.
fn listing(shown: &serde_json::Value) -> Vec<(String, String, String)> {
    shown["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["file"].as_str().unwrap().to_owned(),
                c["identity"].as_str().unwrap().to_owned(),
                c["issuer"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn init_show_and_a_three_step_rotation() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("data").join("certs");
    ok(home.path(), &["certs", "init", "--days", "90"]);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", entry.file_name());
    }
    refused(home.path(), &["certs", "init"], "rotate begin");

    let shown = show(home.path());
    assert_eq!(shown["rotation"], "idle");
    let certs = listing(&shown);
    let ca = certs.iter().find(|c| c.0 == "ca.pem").unwrap().1.clone();
    for id in [
        "agent",
        "doppler",
        "trafficcontroller",
        "cloudcontroller",
        "executor",
        "router",
        "healthmanager",
        "autoscaler",
        "slo",
        "nozzle",
        "nats",
    ] {
        let file = format!("{id}.pem");
        assert!(
            certs.contains(&(file.clone(), id.to_owned(), ca.clone())),
            "{file} missing from {certs:?}"
        );
        assert!(dir.join(format!("{id}.key")).is_file());
    }
    let agent = shown["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == "agent.pem")
        .unwrap();
    let days = agent["days_left"].as_i64().unwrap();
    assert!((89..=90).contains(&days), "{days}");
    assert_eq!(
        agent["names"],
        serde_json::json!(["agent", "localhost", "127.0.0.1"])
    );
    let table = ok(home.path(), &["certs", "show"]);
    assert!(
        table.contains("DAYS LEFT") && table.contains("doppler"),
        "{table}"
    );

    // Out of order: each refusal names the step that comes next.
    refused(home.path(), &["certs", "rotate", "reissue"], "rotate begin");
    refused(home.path(), &["certs", "rotate", "finish"], "rotate begin");
    ok(home.path(), &["certs", "rotate", "begin"]);
    let begun = show(home.path());
    assert_eq!(begun["rotation"], "begun");
    let bundle: Vec<_> = listing(&begun)
        .into_iter()
        .filter(|c| c.0 == "ca.pem")
        .collect();
    assert_eq!(bundle.len(), 2, "both CAs trusted: {bundle:?}");
    assert_eq!(bundle[0].1, ca);
    let new_ca = bundle[1].1.clone();
    refused(home.path(), &["certs", "rotate", "begin"], "rotate reissue");
    refused(
        home.path(),
        &["certs", "rotate", "finish"],
        "rotate reissue",
    );

    ok(home.path(), &["certs", "rotate", "reissue"]);
    let reissued = show(home.path());
    assert_eq!(reissued["rotation"], "reissued");
    for (file, identity, issuer) in listing(&reissued) {
        if file != "ca.pem" && file != "ca-previous.pem" {
            assert_eq!(issuer, new_ca, "{file} ({identity}) not reissued");
        }
    }
    refused(
        home.path(),
        &["certs", "rotate", "reissue"],
        "rotate finish",
    );

    ok(home.path(), &["certs", "rotate", "finish"]);
    let finished = show(home.path());
    assert_eq!(finished["rotation"], "idle");
    let bundle: Vec<_> = listing(&finished)
        .into_iter()
        .filter(|c| c.0 == "ca.pem")
        .collect();
    assert_eq!(bundle.len(), 1);
    assert_eq!(bundle[0].1, new_ca);
}

#[test]
fn a_cell_leaf_for_another_host_and_the_nats_config() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("ca");
    let dir_arg = dir.to_str().unwrap();
    ok(home.path(), &["certs", "init", "--dir", dir_arg]);
    let out = home.path().join("cell-1");
    ok(
        home.path(),
        &[
            "certs",
            "issue",
            "executor",
            "--cell",
            "cell-1",
            "--name",
            "cell-1.example.com",
            "--dir",
            dir_arg,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let shown: serde_json::Value = serde_json::from_str(&ok(
        home.path(),
        &["certs", "show", "--json", "--dir", out.to_str().unwrap()],
    ))
    .unwrap();
    let leaf = shown["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == "executor.pem")
        .unwrap();
    assert_eq!(
        leaf["names"],
        serde_json::json!(["executor", "cell-1.example.com", "cell-1.executor"])
    );
    assert!(out.join("ca.pem").is_file());
    refused(
        home.path(),
        &["certs", "issue", "router", "--cell", "x", "--dir", dir_arg],
        "executor",
    );
    refused(
        home.path(),
        &["certs", "issue", "root", "--dir", dir_arg],
        "not a role identity",
    );

    ok(
        home.path(),
        &[
            "certs",
            "nats-config",
            "--dir",
            dir_arg,
            "--cell",
            "cell-1",
            "--listen",
            "127.0.0.1:4333",
        ],
    );
    let config = std::fs::read_to_string(dir.join("nats.conf")).unwrap();
    assert!(config.contains("verify_and_map: true"), "{config}");
    assert!(config.contains("\"127.0.0.1:4333\""), "{config}");
    assert!(config.contains("\"cell-1.executor\""), "{config}");
    assert!(
        config.contains(&dir.join("nats.pem").display().to_string()),
        "{config}"
    );
    assert!(!config.contains("cluster {"), "{config}");

    // One node of a three-node cluster; the second node's config shares the same secret.
    let node = |out: &str, listen: &str| {
        let out = home.path().join(out);
        let mut args = vec![
            "certs",
            "nats-config",
            "--dir",
            dir_arg,
            "--cluster-listen",
            listen,
            "--out",
            out.to_str().unwrap(),
        ];
        for route in ["10.0.0.1:6222", "10.0.0.2:6222", "10.0.0.3:6222"] {
            args.extend(["--route", route]);
        }
        ok(home.path(), &args);
        std::fs::read_to_string(out).unwrap()
    };
    let a = node("a.conf", "10.0.0.1:6222");
    let b = node("b.conf", "10.0.0.2:6222");
    let secret_file = dir.join("nats-cluster.secret");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let secret = secret.trim();
    assert_eq!(secret.len(), 64, "{secret}");
    for (config, own, others) in [
        (&a, "10.0.0.1:6222", ["10.0.0.2:6222", "10.0.0.3:6222"]),
        (&b, "10.0.0.2:6222", ["10.0.0.1:6222", "10.0.0.3:6222"]),
    ] {
        assert!(config.contains("cluster {"), "{config}");
        assert!(config.contains(&format!("listen: \"{own}\"")), "{config}");
        assert!(
            !config.contains(&format!("@{own}")),
            "a route to itself: {config}"
        );
        for other in others {
            assert!(
                config.contains(&format!("nats-route://route:{secret}@{other}")),
                "{config}"
            );
        }
    }
    for file in [&secret_file, &home.path().join("a.conf")] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    refused(
        home.path(),
        &[
            "certs",
            "nats-config",
            "--dir",
            dir_arg,
            "--route",
            "10.0.0.1:6222",
        ],
        "--cluster-listen",
    );
}
