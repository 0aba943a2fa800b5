//! Storage quotas hold while tenants write: a MariaDB or PostgreSQL database filled past its
//! plan's storage loses its bindings' writes (the server itself refuses them), says so in the
//! instance's `SVC` stream and gauges, and gets them back once data is deleted with `DELETE`
//! (the pass compacts the revoked database: `OPTIMIZE TABLE`, `VACUUM FULL`; also across a
//! broker restart, which must not forget a revocation nor keep a stale one). A RabbitMQ
//! vhost's queues hold at most their plan's share of memory.

use std::time::Duration;

use hydrant_envelope::v2;
use hydrant_testkit::FakeAgent;
use serde_json::{Value, json};

use crate::{
    Running, eventually, guid, mariadb, psql, rabbit, reporting_config, require, start, start_fresh,
};

/// Runs the on-demand quota pass; instance `id`'s entry.
async fn checked(b: &Running, id: &str) -> Value {
    let all = b.check_quotas().await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|c| c["instance"] == id)
        .unwrap_or_else(|| panic!("{id} was not checked: {all}"))
        .clone()
}

async fn saw_svc_line(agent: &FakeAgent, id: &str, text: &str) {
    let id = id.to_owned();
    agent
        .wait_for(Duration::from_secs(20), text, |envs| {
            envs.iter().any(|e| {
                e.source_id == id
                    && e.tags.get("source_type").map(String::as_str) == Some("SVC")
                    && matches!(&e.message, Some(v2::envelope::Message::Log(l))
                        if String::from_utf8_lossy(&l.payload).contains(text))
            })
        })
        .await;
}

async fn saw_exceeded_gauge(agent: &FakeAgent, id: &str, value: f64) {
    let id = id.to_owned();
    agent
        .wait_for(
            Duration::from_secs(20),
            "service.storage_quota_exceeded",
            |envs| {
                envs.iter().rev().any(|e| {
                    e.source_id == id
                        && matches!(&e.message, Some(v2::envelope::Message::Gauge(g))
                            if g.metrics.get("service.storage_quota_exceeded").map(|m| m.value) == Some(value))
                })
            },
        )
        .await;
}

fn agent_config(dir: &std::path::Path, agent: &FakeAgent) -> hydrant_broker::Config {
    let mut c = reporting_config(dir, agent);
    // The passes in this test are the on-demand ones.
    c.quota_interval_secs = 3600;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_database_over_its_quota_refuses_writes_until_data_is_deleted() {
    require("mysql");
    let agent = FakeAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let b = start(agent_config(dir.path(), &agent)).await;
    let (id, c) = b.provision_bound("mysql").await;
    let (ok, out) = mariadb(
        &c,
        "CREATE TABLE small (v TEXT); INSERT INTO small VALUES ('a')",
    )
    .await;
    assert!(ok, "{out}");
    let under = checked(&b, &id).await;
    assert_eq!(under["exceeded"], false, "{under}");

    // About 340 MiB: 2^17 rows of 2,500 bytes (six to a 16 KiB page) past the small plan's 256.
    let (ok, out) = mariadb(
        &c,
        "CREATE TABLE big (v VARCHAR(3000)); INSERT INTO big VALUES (REPEAT('x', 2500));",
    )
    .await;
    assert!(ok, "{out}");
    for _ in 0..17 {
        let (ok, out) = mariadb(&c, "INSERT INTO big SELECT v FROM big").await;
        assert!(ok, "{out}");
    }
    let over = checked(&b, &id).await;
    assert_eq!(over["exceeded"], true, "{over}");
    assert!(over["used_bytes"].as_u64().unwrap() > over["quota_bytes"].as_u64().unwrap());

    let (ok, out) = mariadb(&c, "INSERT INTO small VALUES ('b')").await;
    assert!(
        !ok && out.contains("INSERT command denied"),
        "over its quota the server refuses the write: {out}"
    );
    let (ok, out) = mariadb(&c, "CREATE TABLE more (v TEXT)").await;
    assert!(!ok && out.contains("CREATE command denied"), "{out}");
    let (ok, out) = mariadb(&c, "SELECT COUNT(*) FROM small").await;
    assert!(ok && out.trim() == "1", "reads still work: {out}");
    saw_svc_line(&agent, &id, "storage quota exceeded").await;
    saw_exceeded_gauge(&agent, &id, 1.0).await;
    // A binding made while over is held to the same.
    let late = b.bind(&id, &guid(), "mysql", json!({})).await;
    let (ok, out) = mariadb(&late, "INSERT INTO small VALUES ('c')").await;
    assert!(!ok && out.contains("INSERT command denied"), "{out}");

    // `DELETE` leaves the table's file as large as it was (InnoDB keeps the pages for reuse):
    // the pass compacts a revoked database before it measures it again.
    let (ok, out) = mariadb(&c, "DELETE FROM big").await;
    assert!(ok, "deleting data is allowed: {out}");
    let back = checked(&b, &id).await;
    eprintln!(
        "mysql: {} bytes on disk over the quota, {} after DELETE and the pass",
        over["used_bytes"], back["used_bytes"]
    );
    assert_eq!(back["exceeded"], false, "{back}");
    for binding in [&c, &late] {
        let (ok, out) = mariadb(binding, "INSERT INTO small VALUES ('d')").await;
        assert!(ok, "writes work again: {out}");
    }
    saw_svc_line(&agent, &id, "storage back under quota").await;
    saw_exceeded_gauge(&agent, &id, 0.0).await;
    assert_eq!(b.deprovision(&id, "mysql").await, 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_database_over_its_quota_refuses_writes_until_data_is_deleted() {
    require("postgresql");
    let agent = FakeAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(dir.path(), &agent);
    let b = start(cfg.clone()).await;
    let (id, c) = b.provision_bound("postgresql").await;
    let ro = b
        .bind(&id, &guid(), "postgresql", json!({"read-only": true}))
        .await;
    let uri = c["uri"].as_str().unwrap();
    let (ok, out) = psql(
        uri,
        "CREATE TABLE small (v text); INSERT INTO small VALUES ('a')",
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(checked(&b, &id).await["exceeded"], false);

    // About 350 MiB: 300,000 rows of 1,000 bytes (seven to an 8 KiB page, too short to be
    // compressed) past the small plan's 256.
    let (ok, out) = psql(
        uri,
        "CREATE TABLE big (v text); \
         INSERT INTO big SELECT repeat('x', 1000) FROM generate_series(1, 300000)",
    )
    .await;
    assert!(ok, "{out}");
    let over = checked(&b, &id).await;
    assert_eq!(over["exceeded"], true, "{over}");

    let (ok, out) = psql(uri, "INSERT INTO small VALUES ('b')").await;
    assert!(
        !ok && out.contains("permission denied for table small"),
        "over its quota the server refuses the write: {out}"
    );
    let (ok, out) = psql(uri, "CREATE TABLE more (v text)").await;
    assert!(
        !ok && out.contains("permission denied for schema public"),
        "{out}"
    );
    let (ok, out) = psql(uri, "SELECT count(*) FROM small").await;
    assert!(ok && out.trim() == "1", "reads still work: {out}");
    let (ok, out) = psql(ro["uri"].as_str().unwrap(), "SELECT count(*) FROM small").await;
    assert!(
        ok && out.trim() == "1",
        "the read-only binding is untouched: {out}"
    );
    saw_svc_line(&agent, &id, "storage quota exceeded").await;
    saw_exceeded_gauge(&agent, &id, 1.0).await;

    // A restarted broker knows nothing of the standing until it measures: the revocation is
    // the server's and holds meanwhile, and the first pass after data is deleted lifts it.
    b.stop().await;
    let b = start(cfg).await;
    eventually(60, "the node to serve again after the restart", || async {
        psql(uri, "SELECT 1").await.0
    })
    .await;
    let (ok, out) = psql(uri, "INSERT INTO small VALUES ('b')").await;
    assert!(
        !ok && out.contains("permission denied"),
        "still refused across the restart: {out}"
    );

    // `DELETE` leaves dead rows holding their pages: a pass that knows the writes are revoked
    // (the first after the restart learns it) compacts the database before measuring again.
    let (ok, out) = psql(uri, "DELETE FROM big").await;
    assert!(ok, "deleting data is allowed: {out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let back = loop {
        let now = checked(&b, &id).await;
        if now["exceeded"] == false {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still over its quota after DELETE: {now}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "postgresql: {} bytes over the quota, {} after DELETE and the passes",
        over["used_bytes"], back["used_bytes"]
    );
    let (ok, out) = psql(
        uri,
        "INSERT INTO small VALUES ('c'); CREATE TABLE more (v text)",
    )
    .await;
    assert!(ok, "writes work again: {out}");
    let (ok, out) = psql(ro["uri"].as_str().unwrap(), "SELECT count(*) FROM small").await;
    assert!(ok && out.trim() == "2", "{out}");
    saw_exceeded_gauge(&agent, &id, 0.0).await;
    assert_eq!(b.deprovision(&id, "postgresql").await, 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_queue_holds_at_most_its_plans_share_of_memory() {
    use reqwest::Method;
    require("rabbitmq");
    let (_dir, b) = start_fresh().await;
    let (id, c) = b.provision_bound("rabbitmq").await;
    let (st, body) = rabbit(
        &b.client,
        &c,
        Method::PUT,
        &format!("queues/{id}/q"),
        Some(json!({"durable": false})),
    )
    .await;
    assert!((200..300).contains(&st), "{st} {body}");
    // The small plan: 128 MiB over 64 queues, 2 MiB each. Three messages of 1,000,000 bytes:
    // the third does not fit, and is refused to its publisher.
    for n in 1..=3 {
        let payload = format!("{n}{}", "x".repeat(999_999));
        let (st, body) = rabbit(
            &b.client,
            &c,
            Method::POST,
            &format!("exchanges/{id}/amq.default/publish"),
            Some(
                json!({"properties": {}, "routing_key": "q", "payload": payload, "payload_encoding": "string"}),
            ),
        )
        .await;
        if n < 3 {
            assert_eq!(st, 200, "{body}");
        } else {
            assert!(
                st == 400 && body.to_string().contains("queue limits"),
                "the message past the queue's 2 MiB is refused: {st} {body}"
            );
        }
    }
    // The refusal is that queue's alone, not the node's memory alarm: another tenant on the
    // same node still publishes.
    let other = guid();
    b.provision(&other, "rabbitmq", "small", json!({})).await;
    let o = b.bind(&other, &guid(), "rabbitmq", json!({})).await;
    let (st, body) = rabbit(
        &b.client,
        &o,
        Method::PUT,
        &format!("queues/{other}/q"),
        Some(json!({"durable": false})),
    )
    .await;
    assert!((200..300).contains(&st), "{st} {body}");
    let (st, body) = rabbit(
        &b.client,
        &o,
        Method::POST,
        &format!("exchanges/{other}/amq.default/publish"),
        Some(
            json!({"properties": {}, "routing_key": "q", "payload": "x".repeat(999_999), "payload_encoding": "string"}),
        ),
    )
    .await;
    assert!(
        st == 200 && body["routed"] == true,
        "a full queue of one vhost holds no other back: {st} {body}"
    );
    assert_eq!(b.deprovision(&other, "rabbitmq").await, 200);
    let (st, got) = rabbit(
        &b.client,
        &c,
        Method::POST,
        &format!("queues/{id}/q/get"),
        Some(json!({"count": 10, "ackmode": "ack_requeue_false", "encoding": "auto"})),
    )
    .await;
    assert_eq!(st, 200, "{got}");
    let firsts: Vec<String> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap()[..1].to_owned())
        .collect();
    assert_eq!(
        firsts,
        ["1", "2"],
        "the queue holds 2 MiB of bodies at most, and refuses (not drops) past it"
    );
    // The vhost's users can lift neither policy.
    for kind in ["policies", "operator-policies"] {
        let (st, _) = rabbit(
            &b.client,
            &c,
            Method::DELETE,
            &format!("{kind}/{id}/hydrant-plan"),
            None,
        )
        .await;
        assert!(matches!(st, 401 | 403), "{kind}: {st}");
    }
    // Nor open more queues than the plan's 64.
    for n in 1..64 {
        let (st, body) = rabbit(
            &b.client,
            &c,
            Method::PUT,
            &format!("queues/{id}/q{n}"),
            Some(json!({"durable": false})),
        )
        .await;
        assert!((200..300).contains(&st), "queue {n}: {st} {body}");
    }
    let (st, body) = rabbit(
        &b.client,
        &c,
        Method::PUT,
        &format!("queues/{id}/one-too-many"),
        Some(json!({"durable": false})),
    )
    .await;
    assert!(
        !(200..300).contains(&st),
        "the 65th queue is refused: {st} {body}"
    );
    assert_eq!(b.deprovision(&id, "rabbitmq").await, 200);
    b.stop().await;
}
