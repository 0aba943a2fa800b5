//! The broker's own resilience: a service node killed with SIGKILL is started again with its
//! bindings' users, and a restarted broker brings its nodes back on the ports its credentials
//! name, so every binding keeps working. A broker whose data directory sits inside a private
//! one (the micro cloud's is 0700) still runs its nodes as their unprivileged user.

use serde_json::json;

use crate::{
    config, eventually, guid, ports, process_alive, redis_ping, require, run, start, start_fresh,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_redis_node_is_restarted_with_its_bindings() {
    require("redis");
    let (_dir, b) = start_fresh().await;
    let (id, creds) = b.provision_bound("redis").await;
    assert!(redis_ping(&creds).await);
    let pid = b.nodes().await[0].1;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(30, "a new Redis process", || async {
        let now = b.nodes().await[0].1;
        now != 0 && now != pid
    })
    .await;
    eventually(30, "the binding to work again", || redis_ping(&creds)).await;
    let metrics = b.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("node_restarts") && l.contains("redis") && l.ends_with(" 1")),
        "{metrics}"
    );
    assert_eq!(b.deprovision(&id, "redis").await, 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_serves_the_same_credentials() {
    require("redis");
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let b = start(config(dir.path(), ports)).await;
    let (id, bid) = (guid(), guid());
    b.provision(&id, "redis", "small", json!({})).await;
    let creds = b.bind(&id, &bid, "redis", json!({})).await;
    let pid = b.nodes().await[0].1;
    b.stop().await;
    assert!(!process_alive(pid), "the broker stops its nodes");
    assert!(!redis_ping(&creds).await);

    let b = start(config(dir.path(), ports)).await;
    eventually(30, "the binding to work after the restart", || {
        redis_ping(&creds)
    })
    .await;
    let (status, fetched) = b
        .get(&format!(
            "/v2/service_instances/{id}/service_bindings/{bid}"
        ))
        .await;
    assert_eq!((status, &fetched["credentials"]), (200, &creds));
    assert_eq!(b.deprovision(&id, "redis").await, 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_inside_a_private_directory_still_runs_its_nodes() {
    require("redis");
    use std::os::unix::fs::PermissionsExt as _;
    let top = tempfile::tempdir().unwrap();
    let private = top.path().join("microcloud");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = private.join("broker");
    let b = start(config(&data, ports())).await;
    let (id, creds) = b.provision_bound("redis").await;
    assert!(redis_ping(&creds).await);
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the private directory stays private");
    let data = std::fs::canonicalize(&data).unwrap();
    let root = hydrant_broker::backend::nodes_root(
        &data,
        hydrant_broker::node::service_user("nobody").unwrap(),
    );
    assert!(
        root.join(format!("redis-{id}")).is_dir(),
        "{}",
        root.display()
    );
    assert_eq!(b.deprovision(&id, "redis").await, 200);
    assert!(!root.join(format!("redis-{id}")).exists());
    b.stop().await;
    if root.starts_with("/var/lib/hydrant/broker-nodes") {
        let _ = std::fs::remove_dir(&root);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_postgresql_node_comes_back_despite_its_busy_backends() {
    require("postgresql");
    let (dir, b) = start_fresh().await;
    let (id, creds) = b.provision_bound("postgresql").await;
    let uri = creds["uri"].as_str().unwrap().to_owned();
    let ok = |uri: String| async move {
        run("psql", &[&uri, "-X", "-tAc", "SELECT 1"], &[])
            .await
            .1
            .trim()
            == "1"
    };
    assert!(ok(uri.clone()).await);
    // A session busy for a minute when the postmaster dies: the node still comes back at
    // once (its process group goes with the postmaster; PostgreSQL's backends also leave on
    // their own when they see it gone).
    let mut busy = tokio::process::Command::new("psql")
        .args([uri.as_str(), "-X", "-c", "SELECT pg_sleep(60)"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let node = b
        .nodes()
        .await
        .into_iter()
        .find(|n| n.0 == "postgresql")
        .unwrap();
    let socket = dir.path().join("nodes/postgresql").display().to_string();
    let admin = format!(
        "postgresql:///postgres?host={socket}&port={}&user=hydrant",
        node.2[0]
    );
    eventually(10, "the busy backend", || async {
        let (_, out) = run(
            "psql",
            &[
                &admin,
                "-X",
                "-tAc",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'",
            ],
            &[],
        )
        .await;
        out.trim() == "1"
    })
    .await;
    let pid = node.1;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(30, "PostgreSQL to serve the binding again", || {
        ok(uri.clone())
    })
    .await;
    let _ = busy.kill().await;
    assert_eq!(b.deprovision(&id, "postgresql").await, 200);
    b.stop().await;
}
