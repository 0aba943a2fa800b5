//! Each offering's life on its real server: provision → two bindings → each writes and reads
//! through its own credentials with the server's own client → unbinding the first revokes it on
//! the server while the second keeps working → deprovision leaves no database, user, vhost,
//! process or port behind. PostgreSQL's also crosses a broker restart (the shared node comes
//! back on the port its credentials name).

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::{
    Running, config, eventually, guid, mariadb, port_free, ports, process_alive, psql, rabbit,
    redis_cli, require, run, start, start_fresh,
};

fn s<'a>(c: &'a Value, key: &str) -> &'a str {
    c[key]
        .as_str()
        .unwrap_or_else(|| panic!("credentials lack {key}: {c}"))
}

/// Provision + bind, timed for the README's table: the first instance (its shared node
/// starts, first of all initialising its data directory) and a second one on the running node.
async fn provision_and_bind(b: &Running, offering: &str, id: &str, bid: &str) -> Value {
    let began = Instant::now();
    b.provision(id, offering, "small", json!({})).await;
    let provisioned = began.elapsed();
    let creds = b.bind(id, bid, offering, json!({})).await;
    let bound = began.elapsed() - provisioned;
    let (id2, bid2) = (guid(), guid());
    let again = Instant::now();
    b.provision(&id2, offering, "small", json!({})).await;
    let provisioned2 = again.elapsed();
    b.bind(&id2, &bid2, offering, json!({})).await;
    let bound2 = again.elapsed() - provisioned2;
    eprintln!(
        "{offering}: first provision {:.2} s, bind {:.3} s; next provision {:.2} s, bind {:.3} s",
        provisioned.as_secs_f64(),
        bound.as_secs_f64(),
        provisioned2.as_secs_f64(),
        bound2.as_secs_f64()
    );
    assert_eq!(b.deprovision(&id2, offering).await, 200);
    creds
}

async fn redis_use(c: &Value, key: &str) -> Result<(), String> {
    let out = redis_cli(c, &["SET", key, "v1"]).await;
    if out.trim() != "OK" {
        return Err(out);
    }
    let out = redis_cli(c, &["GET", key]).await;
    if out.trim() == "v1" { Ok(()) } else { Err(out) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_create_bind_use_unbind_delete() {
    require("redis");
    let (dir, b) = start_fresh().await;
    let (id, b1, b2) = (guid(), guid(), guid());
    let c1 = provision_and_bind(&b, "redis", &id, &b1).await;
    let c2 = b.bind(&id, &b2, "redis", json!({})).await;
    assert_ne!(
        c1["password"], c2["password"],
        "credentials are per binding"
    );
    assert!(s(&c1, "uri").starts_with("redis://"));
    redis_use(&c1, "k1").await.unwrap();
    redis_use(&c2, "k2").await.unwrap();

    let nodes = b.nodes().await;
    let (_, pid, node_ports) = nodes
        .iter()
        .find(|n| n.0.starts_with("redis-"))
        .unwrap()
        .clone();
    assert!(process_alive(pid));

    assert_eq!(b.unbind(&id, &b1, "redis").await, 200);
    let err = redis_use(&c1, "k1").await.unwrap_err();
    assert!(err.contains("WRONGPASS") || err.contains("NOAUTH"), "{err}");
    redis_use(&c2, "k2").await.unwrap();

    assert_eq!(b.deprovision(&id, "redis").await, 200);
    eventually(20, "the Redis process to exit", || async {
        !process_alive(pid)
    })
    .await;
    assert!(port_free(node_ports[0]), "its port is free again");
    assert!(
        !dir.path()
            .join("nodes")
            .join(format!("redis-{id}"))
            .exists()
    );
    assert!(b.nodes().await.is_empty());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_create_bind_use_unbind_delete() {
    require("postgresql");
    let dir = tempfile::tempdir().unwrap();
    let b_ports = ports();
    let b = start(config(dir.path(), b_ports)).await;
    let (id, b1, b2, ro) = (guid(), guid(), guid(), guid());
    let c1 = provision_and_bind(&b, "postgresql", &id, &b1).await;
    let c2 = b.bind(&id, &b2, "postgresql", json!({})).await;
    let c3 = b
        .bind(&id, &ro, "postgresql", json!({"read-only": true}))
        .await;
    for key in [
        "hostname", "port", "name", "username", "password", "uri", "jdbcUrl",
    ] {
        assert!(!c1[key].is_null(), "credentials lack {key}: {c1}");
    }

    let (ok, out) = psql(
        s(&c1, "uri"),
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('one')",
    )
    .await;
    assert!(ok, "{out}");
    // The second binding shares the instance's tables.
    let (ok, out) = psql(
        s(&c2, "uri"),
        "INSERT INTO t VALUES ('two'); SELECT count(*) FROM t",
    )
    .await;
    assert!(ok && out.trim() == "2", "{out}");
    let (ok, out) = psql(s(&c3, "uri"), "SELECT count(*) FROM t").await;
    assert!(ok && out.trim() == "2", "read-only binding reads: {out}");
    let (ok, out) = psql(s(&c3, "uri"), "INSERT INTO t VALUES ('three')").await;
    assert!(
        !ok && out.contains("permission denied"),
        "read-only binding cannot write: {out}"
    );

    // Another instance's binding cannot reach this database.
    let other = guid();
    b.provision(&other, "postgresql", "small", json!({})).await;
    let co = b.bind(&other, &guid(), "postgresql", json!({})).await;
    let foreign = s(&co, "uri").replace(s(&co, "name"), s(&c1, "name"));
    let (ok, out) = psql(&foreign, "SELECT 1").await;
    assert!(!ok && out.contains("permission denied"), "{out}");
    assert_eq!(b.deprovision(&other, "postgresql").await, 200);

    assert_eq!(b.unbind(&id, &b1, "postgresql").await, 200);
    let (ok, out) = psql(s(&c1, "uri"), "SELECT 1").await;
    assert!(!ok && out.contains("authentication failed"), "{out}");
    let (ok, out) = psql(s(&c2, "uri"), "SELECT count(*) FROM t").await;
    assert!(
        ok && out.trim() == "2",
        "the table binding 1 made stays: {out}"
    );

    // A restarted broker starts the shared node again on the same port: credentials hold.
    b.stop().await;
    let (ok, _) = psql(s(&c2, "uri"), "SELECT 1").await;
    assert!(!ok, "the node stops with the broker");
    let b = start(config(dir.path(), b_ports)).await;
    let uri = s(&c2, "uri").to_owned();
    eventually(30, "the binding to work after the broker's restart", || {
        let uri = uri.clone();
        async move { psql(&uri, "SELECT count(*) FROM t").await.1.trim() == "2" }
    })
    .await;

    let node = b
        .nodes()
        .await
        .into_iter()
        .find(|n| n.0 == "postgresql")
        .unwrap();
    assert_eq!(b.deprovision(&id, "postgresql").await, 200);
    let socket = dir.path().join("nodes/postgresql").display().to_string();
    let admin = format!(
        "postgresql:///postgres?host={socket}&port={}&user=hydrant",
        node.2[0]
    );
    let (ok, out) = psql(
        &admin,
        "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE 'cf\\_%') + \
         (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'b\\_%' OR rolname LIKE 'o\\_%')",
    )
    .await;
    assert!(
        ok && out.trim() == "0",
        "no database or role is left: {out}"
    );
    b.stop().await;
    assert!(!process_alive(node.1), "the node stops with the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_create_bind_use_unbind_delete() {
    require("mysql");
    let (dir, b) = start_fresh().await;
    let (id, b1, b2, ro) = (guid(), guid(), guid(), guid());
    let c1 = provision_and_bind(&b, "mysql", &id, &b1).await;
    let c2 = b.bind(&id, &b2, "mysql", json!({})).await;
    let c3 = b
        .bind(
            &id,
            &ro,
            "mysql",
            json!({"read-only": true, "max_user_connections": 2}),
        )
        .await;
    for key in [
        "hostname", "port", "name", "username", "password", "uri", "jdbcUrl",
    ] {
        assert!(!c1[key].is_null(), "credentials lack {key}: {c1}");
    }
    assert!(s(&c1, "uri").ends_with("?reconnect=true"));
    assert!(s(&c1, "jdbcUrl").starts_with("jdbc:mysql://"));

    let (ok, out) = mariadb(&c1, "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('one')").await;
    assert!(ok, "{out}");
    let (ok, out) = mariadb(&c2, "INSERT INTO t VALUES ('two'); SELECT COUNT(*) FROM t").await;
    assert!(ok && out.trim() == "2", "{out}");
    let (ok, out) = mariadb(&c3, "SELECT COUNT(*) FROM t").await;
    assert!(ok && out.trim() == "2", "{out}");
    let (ok, out) = mariadb(&c3, "INSERT INTO t VALUES ('three')").await;
    assert!(
        !ok && out.contains("denied"),
        "read-only binding cannot write: {out}"
    );

    // Resizes both ways while the data fits; the users keep working.
    for plan in ["medium", "small"] {
        let (status, body) = b.update_plan(&id, "mysql", plan).await;
        assert_eq!(status, 200, "{plan}: {body}");
    }
    let (ok, out) = mariadb(&c2, "SELECT COUNT(*) FROM t").await;
    assert!(ok && out.trim() == "2", "{out}");

    assert_eq!(b.unbind(&id, &b1, "mysql").await, 200);
    let (ok, out) = mariadb(&c1, "SELECT 1").await;
    assert!(!ok && out.contains("Access denied"), "{out}");
    let (ok, out) = mariadb(&c2, "SELECT COUNT(*) FROM t").await;
    assert!(ok && out.trim() == "2", "{out}");

    assert_eq!(b.deprovision(&id, "mysql").await, 200);
    let sock = dir
        .path()
        .join("nodes/mysql/mysqld.sock")
        .display()
        .to_string();
    let (ok, out) = run(
        "mariadb",
        &[
            "--no-defaults", "-S", &sock, "-u", "root", "-N", "-B", "-e",
            "SELECT (SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE 'cf\\_%') + \
             (SELECT COUNT(*) FROM mysql.user WHERE user <> '' AND host = '%')",
        ],
        &[],
    )
    .await;
    assert!(
        ok && out.trim() == "0",
        "no database or user is left: {out}"
    );
    b.stop().await;
}

async fn rabbit_use(client: &reqwest::Client, c: &Value, queue: &str) -> Result<(), String> {
    use reqwest::Method;
    let vhost = s(c, "vhost");
    let (st, body) = rabbit(
        client,
        c,
        Method::PUT,
        &format!("queues/{vhost}/{queue}"),
        Some(json!({"durable": false})),
    )
    .await;
    if !(200..300).contains(&st) {
        return Err(format!("declare: {st} {body}"));
    }
    let publish = json!({"properties": {}, "routing_key": queue, "payload": "hello", "payload_encoding": "string"});
    let (st, body) = rabbit(
        client,
        c,
        Method::POST,
        &format!("exchanges/{vhost}/amq.default/publish"),
        Some(publish),
    )
    .await;
    if st != 200 || body["routed"] != true {
        return Err(format!("publish: {st} {body}"));
    }
    let get = json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"});
    let (st, body) = rabbit(
        client,
        c,
        Method::POST,
        &format!("queues/{vhost}/{queue}/get"),
        Some(get),
    )
    .await;
    if st == 200 && body[0]["payload"] == "hello" {
        Ok(())
    } else {
        Err(format!("get: {st} {body}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_create_bind_use_unbind_delete() {
    require("rabbitmq");
    let (dir, b) = start_fresh().await;
    let (id, b1, b2) = (guid(), guid(), guid());
    let c1 = provision_and_bind(&b, "rabbitmq", &id, &b1).await;
    let c2 = b.bind(&id, &b2, "rabbitmq", json!({})).await;
    for key in [
        "uri",
        "uris",
        "hostname",
        "hostnames",
        "vhost",
        "username",
        "password",
        "http_api_uri",
        "http_api_uris",
    ] {
        assert!(!c1[key].is_null(), "credentials lack {key}: {c1}");
    }
    assert!(s(&c1, "uri").starts_with("amqp://"));
    assert!(c1["protocols"]["amqp"]["port"].as_u64().is_some());
    assert_eq!(c1["protocols"]["management"]["path"], "/api/");
    // The consumer window a binding recommends: well inside one queue's bound.
    assert_eq!(c1["prefetch_count"], 128, "{c1}");
    assert_eq!(c1["protocols"]["amqp"]["prefetch_count"], 128, "{c1}");

    let client = reqwest::Client::new();
    rabbit_use(&client, &c1, "q1").await.unwrap();
    rabbit_use(&client, &c2, "q2").await.unwrap();

    for plan in ["medium", "small"] {
        let (status, body) = b.update_plan(&id, "rabbitmq", plan).await;
        assert_eq!(status, 200, "{plan}: {body}");
    }

    assert_eq!(b.unbind(&id, &b1, "rabbitmq").await, 200);
    let (st, _) = rabbit(&client, &c1, reqwest::Method::GET, "whoami", None).await;
    assert_eq!(st, 401, "an unbound user is gone");
    rabbit_use(&client, &c2, "q3").await.unwrap();

    // SIGKILL the node's start script: its Erlang VM goes with its process group, and the
    // node starts again on the same ports with the vhost and users it had.
    let killed = b
        .nodes()
        .await
        .into_iter()
        .find(|n| n.0 == "rabbitmq")
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed.1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(60, "the RabbitMQ node to serve again", || async {
        let now = b
            .nodes()
            .await
            .iter()
            .find(|n| n.0 == "rabbitmq")
            .map_or(0, |n| n.1);
        now != 0 && now != killed.1 && rabbit_use(&client, &c2, "q4").await.is_ok()
    })
    .await;

    let node = b
        .nodes()
        .await
        .into_iter()
        .find(|n| n.0 == "rabbitmq")
        .unwrap();
    assert_eq!(b.deprovision(&id, "rabbitmq").await, 200);
    let (st, _) = rabbit(&client, &c2, reqwest::Method::GET, "whoami", None).await;
    assert_eq!(st, 401, "deprovision removed every binding's user");
    let ctl = vhosts(dir.path(), &node.2).await;
    assert!(!ctl.contains(&id), "the vhost is gone: {ctl}");
    b.stop().await;
    assert!(!process_alive(node.1), "the node stops with the broker");
    for p in &node.2 {
        eventually(30, "the node's ports to close", || async { port_free(*p) }).await;
    }
}

async fn vhosts(dir: &Path, ports: &[u16]) -> String {
    let node_dir = dir.join("nodes/rabbitmq").display().to_string();
    let nodename = format!("hydrant{}@localhost", ports[0]);
    let epmd = ports[3].to_string();
    let (ok, out) = run(
        "/usr/lib/rabbitmq/bin/rabbitmqctl",
        &["-q", "list_vhosts"],
        &[
            ("HOME", &node_dir),
            ("RABBITMQ_NODENAME", &nodename),
            ("ERL_EPMD_PORT", &epmd),
        ],
    )
    .await;
    assert!(ok, "{out}");
    out
}
