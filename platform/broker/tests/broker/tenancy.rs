//! A shared node's log lines reach a tenant only when they provably belong to its instance: a
//! failed login naming another tenant's database, user or vhost goes to the operator's stream
//! (the broker's own source id), never to the tenant it names, while a tenant's own session's
//! lines still reach it.

use std::time::Duration;

use hydrant_envelope::v2;
use hydrant_testkit::FakeAgent;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{guid, mariadb_as, reporting_config, require, start};

fn svc_lines(envs: &[v2::Envelope], source: &str) -> Vec<String> {
    envs.iter()
        .filter(|e| {
            e.source_id == source && e.tags.get("source_type").map(String::as_str) == Some("SVC")
        })
        .filter_map(|e| match &e.message {
            Some(v2::envelope::Message::Log(l)) => {
                Some(String::from_utf8_lossy(&l.payload).into_owned())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_failed_logins_naming_another_tenant_reach_only_the_operator() {
    require("mysql");
    let agent = FakeAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let b = start(reporting_config(dir.path(), &agent)).await;
    let (a, other) = (guid(), guid());
    b.provision(&a, "mysql", "small", json!({})).await;
    b.provision(&other, "mysql", "small", json!({})).await;
    let ca = b.bind(&a, &guid(), "mysql", json!({})).await;
    let cb = b.bind(&other, &guid(), "mysql", json!({})).await;
    let (a_user, a_pass) = (
        ca["username"].as_str().unwrap(),
        ca["password"].as_str().unwrap(),
    );
    let b_db = cb["name"].as_str().unwrap();

    // Tenant A's user knocks on B's database; a stranger logs in as B's database name.
    let (ok, _) = mariadb_as(&ca, a_user, a_pass, &[b_db, "-e", "SELECT 1"]).await;
    assert!(!ok);
    let (ok, _) = mariadb_as(&ca, b_db, "wrong", &["", "-e", "SELECT 1"]).await;
    assert!(!ok);
    // A's own session, ended abruptly: the server's line about it is A's.
    let port = ca["port"].as_u64().unwrap().to_string();
    let pass = format!("-p{a_pass}");
    let mut busy = tokio::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            ca["hostname"].as_str().unwrap(),
            "-P",
            &port,
            "-u",
            a_user,
            &pass,
            ca["name"].as_str().unwrap(),
            "-e",
            "SELECT SLEEP(2)",
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    busy.kill().await.unwrap();

    agent
        .wait_for(
            Duration::from_secs(30),
            "the failed logins in the operator's stream",
            |envs| {
                svc_lines(envs, "broker")
                    .iter()
                    .any(|l| l.contains("Access denied") && l.contains(b_db))
            },
        )
        .await;
    agent
        .wait_for(
            Duration::from_secs(30),
            "A's aborted connection in A's stream",
            |envs| {
                svc_lines(envs, &a)
                    .iter()
                    .any(|l| l.contains("Aborted connection"))
            },
        )
        .await;
    let envs = agent.envelopes();
    for tenant in [&a, &other] {
        for line in svc_lines(&envs, tenant) {
            assert!(
                !line.contains("Access denied"),
                "a failed login reached tenant {tenant}: {line}"
            );
        }
    }
    for line in svc_lines(&envs, &other) {
        assert!(!line.contains(a_user), "A's user reached B: {line}");
    }
    b.stop().await;
}

/// One AMQP 0-9-1 method frame on channel 0.
fn method(class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(args);
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

fn shortstr(s: &str) -> Vec<u8> {
    let mut out = vec![s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// Reads one frame: (class, method) and the method's arguments.
async fn read_frame(stream: &mut tokio::net::TcpStream) -> ((u16, u16), Vec<u8>) {
    let mut header = [0u8; 7];
    stream.read_exact(&mut header).await.unwrap();
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    stream.read_exact(&mut payload).await.unwrap();
    let id = (
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    );
    payload.truncate(size);
    (id, payload.split_off(4))
}

async fn read_method(stream: &mut tokio::net::TcpStream) -> (u16, u16) {
    read_frame(stream).await.0
}

/// Logs in over AMQP as `user` and opens `vhost`: whether the server opened it.
async fn amqp_open(host: &str, port: u16, user: &str, password: &str, vhost: &str) -> bool {
    let mut s = tokio::net::TcpStream::connect((host, port)).await.unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    assert_eq!(read_method(&mut s).await, (10, 10), "connection.start");
    let mut start_ok = 0u32.to_be_bytes().to_vec(); // client-properties: an empty table
    start_ok.extend(shortstr("PLAIN"));
    let response = format!("\0{user}\0{password}");
    start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
    start_ok.extend_from_slice(response.as_bytes());
    start_ok.extend(shortstr("en_US"));
    s.write_all(&method(10, 11, &start_ok)).await.unwrap();
    let (id, tune) = read_frame(&mut s).await;
    assert_eq!(id, (10, 30), "connection.tune");
    // tune-ok: the server's channel-max, frame-max and heartbeat, as proposed.
    s.write_all(&method(10, 31, &tune[..8])).await.unwrap();
    let mut open = shortstr(vhost);
    open.extend(shortstr(""));
    open.push(0);
    s.write_all(&method(10, 40, &open)).await.unwrap();
    let opened = read_method(&mut s).await == (10, 41);
    if opened {
        // connection.close, so the server logs a clean end.
        let mut close = 200u16.to_be_bytes().to_vec();
        close.extend(shortstr("bye"));
        close.extend_from_slice(&[0, 0, 0, 0]);
        s.write_all(&method(10, 50, &close)).await.unwrap();
        let _ = read_method(&mut s).await;
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_refused_vhost_naming_another_tenant_reaches_only_the_operator() {
    require("rabbitmq");
    let agent = FakeAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let b = start(reporting_config(dir.path(), &agent)).await;
    let (a, other) = (guid(), guid());
    b.provision(&a, "rabbitmq", "small", json!({})).await;
    b.provision(&other, "rabbitmq", "small", json!({})).await;
    let ca = b.bind(&a, &guid(), "rabbitmq", json!({})).await;
    let host = ca["hostname"].as_str().unwrap();
    let port = ca["protocols"]["amqp"]["port"].as_u64().unwrap() as u16;
    let (user, pass) = (
        ca["username"].as_str().unwrap(),
        ca["password"].as_str().unwrap(),
    );

    assert!(
        amqp_open(host, port, user, pass, &a).await,
        "A opens its own vhost"
    );
    assert!(
        !amqp_open(host, port, user, pass, &other).await,
        "A is refused B's vhost"
    );

    agent
        .wait_for(
            Duration::from_secs(30),
            "the refusal in the operator's stream",
            |envs| {
                svc_lines(envs, "broker")
                    .iter()
                    .any(|l| l.contains("refused for user") && l.contains(other.as_str()))
            },
        )
        .await;
    agent
        .wait_for(
            Duration::from_secs(30),
            "A's own login in A's stream",
            |envs| {
                svc_lines(envs, &a)
                    .iter()
                    .any(|l| l.contains("authenticated and granted access"))
            },
        )
        .await;
    let envs = agent.envelopes();
    for line in svc_lines(&envs, &other) {
        assert!(!line.contains(user), "A's user reached B: {line}");
        assert!(!line.contains("refused"), "a refusal reached B: {line}");
    }
    for line in svc_lines(&envs, &a) {
        assert!(
            !line.contains(other.as_str()),
            "B's vhost reached A: {line}"
        );
    }
    b.stop().await;
}
