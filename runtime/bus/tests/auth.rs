//! The authenticated bus against a real `nats-server` (Debian's 2.9) running the config
//! [`hydrant_bus::nats_config`] writes, with certificates from `hydrant-tls`: a role connects
//! only with a certificate from the platform's CA whose identity maps to a user; an executor
//! cannot publish a start command (the server refuses it, the publisher counts the refusal, the
//! addressed cell never sees it); a cell can register routes, heartbeat and report crashes only
//! on its own subject, and what it says there about another cell's instances is dropped by the
//! consumer's placement check; the router reads placements but not start commands.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[allow(dead_code, reason = "shared with the other NATS tests")]
#[path = "support/nats_server.rs"]
mod nats_server;
#[allow(
    dead_code,
    reason = "shared with the health manager's forged-report tests"
)]
#[path = "support/secure_bus.rs"]
mod secure_bus;
#[allow(
    dead_code,
    unused_macros,
    reason = "the backends' shared checks run in the other bus tests"
)]
#[path = "support/suite.rs"]
mod suite;

use std::time::Duration;

use bytes::Bytes;
use hydrant_bus::messages::{
    self, ExecutorCrash, ExecutorHeartbeat, InstanceHeartbeat, InstancePlaced, InstanceState,
    RegistryMessage, StartInstance, executor_crash_subject, executor_heartbeat_subject,
    executor_placed_subject, executor_start_subject, router_register_subject,
};
use hydrant_bus::placement::{Placements, Refusal};
use hydrant_bus::{Bus, Config, Error, Subscription};
use hydrant_emitter::Registry;
use hydrant_tls::Identity;
use hydrant_tls::issue::{self, CertDir};
use secure_bus::SecureBus as Fixture;
use suite::{eventually, recv};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(10);

fn refused(registry: &Registry) -> u64 {
    registry.counter_sum("bus.refused", &[("reason", "permissions_violation")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_certificate_cannot_publish_a_start_command_and_nothing_acts_on_it() {
    let fixture = Fixture::start();
    let (e1, _) = fixture.cell("e1").await;
    let (e2, e2_registry) = fixture.cell("e2").await;
    let (cloudcontroller, cc_registry) = fixture.connect(Identity::CloudController).await;
    let mut starts = e1.subscribe(&executor_start_subject("e1")).await.unwrap();

    // A forged start from another cell: the server refuses it and says so; e2 counts it.
    e2.publish(&executor_start_subject("e1"), Bytes::from_static(b"forged"))
        .unwrap();
    e2.flush().await.unwrap();
    eventually("e2 to count the refused publish", || {
        refused(&e2_registry) == 1
    })
    .await;

    // The cloud controller's start arrives, and it is the first thing e1 sees: the forged one
    // (published earlier) never reached it.
    cloudcontroller
        .publish(
            &executor_start_subject("e1"),
            Bytes::from_static(b"genuine"),
        )
        .unwrap();
    let first = recv(&mut starts).await;
    assert_eq!(first.payload, Bytes::from_static(b"genuine"));
    assert_eq!(refused(&cc_registry), 0);
    // An executor may not even listen to another cell's starts (they carry app environments).
    let _spy = e2.subscribe(&executor_start_subject("e1")).await.unwrap();
    eventually("e2 to count the refused subscription", || {
        refused(&e2_registry) == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_registers_routes_only_on_its_own_subject() {
    let fixture = Fixture::start();
    let (router, _) = fixture.connect(Identity::Router).await;
    let (e1, _) = fixture.cell("e1").await;
    let (e2, e2_registry) = fixture.cell("e2").await;
    let mut routes = router.subscribe("router.>").await.unwrap();

    let steal = RegistryMessage::new("10.0.0.66", 8080, vec!["shop.example.com".into()]);
    e2.publish_json(&router_register_subject("e1"), &steal)
        .unwrap();
    e2.publish_json(messages::ROUTER_REGISTER, &steal).unwrap();
    e2.flush().await.unwrap();
    eventually("both forged registrations refused", || {
        refused(&e2_registry) == 2
    })
    .await;
    let own = RegistryMessage::new("10.0.0.2", 8080, vec!["blog.example.com".into()]);
    e2.publish_json(&router_register_subject("e2"), &own)
        .unwrap();
    let genuine = RegistryMessage::new("10.0.0.1", 8080, vec!["shop.example.com".into()]);
    e1.publish_json(&router_register_subject("e1"), &genuine)
        .unwrap();
    let mut seen = [recv(&mut routes).await, recv(&mut routes).await];
    seen.sort_by(|a, b| a.subject.cmp(&b.subject));
    assert_eq!(seen[0].subject, "router.register.e1");
    assert_eq!(seen[0].json::<RegistryMessage>().unwrap(), genuine);
    assert_eq!(seen[1].subject, "router.register.e2");
    assert_eq!(seen[1].json::<RegistryMessage>().unwrap(), own);
    assert!(routes.try_next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_another_ca_or_an_identity_without_a_user_is_refused() {
    let fixture = Fixture::start();
    let registry = Registry::new("test", "0");
    let refused_with = |err: Error| match err {
        Error::Unreachable { reason, .. } => reason,
        other => panic!("expected a refused connection, got {other}"),
    };

    // Plaintext, no certificate: the server requires TLS with a client certificate.
    let plain = Bus::connect(&Config::nats(&fixture.server.url()), &registry).await;
    let reason = refused_with(plain.unwrap_err());
    assert!(!reason.is_empty());

    // A cloud controller certificate from another CA.
    let forged = fixture.config(
        &fixture.certs.ca_file(),
        &fixture.other_ca,
        Identity::CloudController,
    );
    refused_with(Bus::connect(&forged, &registry).await.unwrap_err());

    // A valid certificate whose identity has no bus user (a nozzle never uses the bus).
    let nozzle = fixture.config(&fixture.certs.ca_file(), &fixture.certs, Identity::Nozzle);
    let reason = refused_with(Bus::connect(&nozzle, &registry).await.unwrap_err());
    assert!(reason.contains("refused this identity"), "{reason}");

    // The right certificate connects.
    fixture.connect(Identity::CloudController).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_doppler_announces_dopplers_and_agents_and_edges_hear_it() {
    let fixture = Fixture::start();
    let (doppler, doppler_registry) = fixture.connect(Identity::Doppler).await;
    let (agent, agent_registry) = fixture.connect(Identity::Agent).await;
    let (edge, _) = fixture.connect(Identity::TrafficController).await;
    let (e1, e1_registry) = fixture.cell("e1").await;
    let mut heard_by_agent = agent.subscribe(messages::DOPPLER_ANNOUNCE).await.unwrap();
    let mut heard_by_edge = edge.subscribe(messages::DOPPLER_ANNOUNCE).await.unwrap();

    // A cell pretending to be a doppler (to pull the agents' envelopes to itself) is refused.
    e1.publish(messages::DOPPLER_ANNOUNCE, Bytes::from_static(b"forged"))
        .unwrap();
    e1.flush().await.unwrap();
    eventually("the forged announcement refused", || {
        refused(&e1_registry) == 1
    })
    .await;
    // The doppler may announce, and nothing else of the control plane.
    doppler
        .publish(messages::DOPPLER_ANNOUNCE, Bytes::from_static(b"genuine"))
        .unwrap();
    for heard in [&mut heard_by_agent, &mut heard_by_edge] {
        assert_eq!(recv(heard).await.payload, Bytes::from_static(b"genuine"));
    }
    doppler
        .publish(&router_register_subject("e1"), Bytes::from_static(b"{}"))
        .unwrap();
    doppler.flush().await.unwrap();
    eventually("the doppler's route registration refused", || {
        refused(&doppler_registry) == 1
    })
    .await;
    // An agent only listens.
    agent
        .publish(messages::DOPPLER_ANNOUNCE, Bytes::from_static(b"x"))
        .unwrap();
    agent.flush().await.unwrap();
    eventually("the agent's announcement refused", || {
        refused(&agent_registry) == 1
    })
    .await;
    assert!(heard_by_edge.try_next().is_none());
}

/// The CA rotates in three steps (`nats-server --signal reload` after each, as the README
/// says) while a router stays connected with its old leaf: its subscription never drops, a cell
/// holding a reissued leaf reaches it mid-rotation, and after `finish` a leaf from the old CA
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_without_dropping_a_connection() {
    let fixture = Fixture::start();
    let (router, router_registry) = fixture.connect(Identity::Router).await;
    let mut routes = router.subscribe("router.>").await.unwrap();
    let dir = fixture.certs.dir();
    let old_e1 = fixture.tmp.path().join("old-e1");
    std::fs::create_dir(&old_e1).unwrap();
    for file in ["ca.pem", "executor.pem", "executor.key"] {
        std::fs::copy(fixture.cells.join("e1").join(file), old_e1.join(file)).unwrap();
    }
    // What an operator does for a host whose leaf was issued with --out: a fresh leaf from
    // the current signing CA and a copy of the bundle.
    let refresh_cell = |cell: &str| secure_bus::issue_cell(&fixture.certs, &fixture.cells, cell);
    let register = |bus: &Bus, cell: &str, n: u16| {
        let message = RegistryMessage::new("10.0.0.1", n, vec!["shop.example.com".into()]);
        bus.publish_json(&router_register_subject(cell), &message)
            .unwrap();
    };

    issue::rotate_begin(dir, 10).unwrap();
    std::fs::copy(fixture.certs.ca_file(), fixture.cells.join("e1/ca.pem")).unwrap();
    fixture.server.reload();
    let (e1, _) = fixture.cell("e1").await;
    register(&e1, "e1", 1);
    assert_eq!(next_port(&mut routes).await, 1);

    issue::rotate_reissue(dir).unwrap();
    refresh_cell("e1");
    fixture.server.reload();
    let (e1_new, _) = fixture.cell("e1").await;
    register(&e1_new, "e1", 2);
    assert_eq!(next_port(&mut routes).await, 2);

    issue::rotate_finish(dir).unwrap();
    std::fs::copy(fixture.certs.ca_file(), fixture.cells.join("e1/ca.pem")).unwrap();
    fixture.server.reload();
    // A leaf from the old CA no longer gets in; the reissued one does.
    // (The reload is asynchronous: wait for it to take effect rather than assume it has.)
    let old = fixture.config(
        &fixture.certs.ca_file(),
        &CertDir::new(&old_e1),
        Identity::Executor,
    );
    let deadline = Instant::now() + DEADLINE;
    while Bus::connect(&old, &Registry::new("old", "0")).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "a leaf of the old CA still gets in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (e1_after, _) = fixture.cell("e1").await;
    register(&e1_after, "e1", 3);
    assert_eq!(next_port(&mut routes).await, 3);
    // The router's connection, made with a leaf of the old CA, never dropped.
    assert_eq!(router_registry.counter_sum("bus.reconnects", &[]), 0);
    assert!(router.status().is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_reads_placements_but_cannot_subscribe_to_start_commands() {
    let fixture = Fixture::start();
    let (router, router_registry) = fixture.connect(Identity::Router).await;
    let (cloudcontroller, _) = fixture.connect(Identity::CloudController).await;
    let mut placements = router
        .subscribe(&messages::every_cell(messages::EXECUTOR_PLACED))
        .await
        .unwrap();
    // Start commands carry environments and droplet tokens: the server refuses the
    // subscription, the router counts it, and nothing reaches it.
    let mut starts = router
        .subscribe(&messages::every_cell(messages::EXECUTOR_START))
        .await
        .unwrap();
    eventually("the router to count its refused subscription", || {
        refused(&router_registry) == 1
    })
    .await;
    let start = StartInstance {
        executor_id: "e1".into(),
        app: "a1".into(),
        instance: "i-1".into(),
        env: [("DB_PASSWORD".to_owned(), "secret".to_owned())].into(),
        ..StartInstance::default()
    };
    cloudcontroller
        .publish_json(
            &executor_placed_subject("e1"),
            &InstancePlaced::from(&start),
        )
        .unwrap();
    cloudcontroller
        .publish_json(&executor_start_subject("e1"), &start)
        .unwrap();
    let placed = recv(&mut placements).await;
    assert_eq!(placed.subject, "executor.placed.e1");
    assert!(!String::from_utf8_lossy(&placed.payload).contains("secret"));
    let mut learned = Placements::default();
    assert!(learned.learn(&placed));
    assert_eq!(learned.cell("i-1"), Some("e1"));
    // A round trip through the server after the start: had it been delivered, it would be here.
    router.flush().await.unwrap();
    cloudcontroller.flush().await.unwrap();
    assert!(
        starts.try_next().is_none(),
        "the router read a start command"
    );
    // And a cell may not forge a placement.
    let (e2, e2_registry) = fixture.cell("e2").await;
    e2.publish_json(
        &executor_placed_subject("e2"),
        &InstancePlaced::from(&start),
    )
    .unwrap();
    e2.flush().await.unwrap();
    eventually("e2 to count its refused placement", || {
        refused(&e2_registry) == 1
    })
    .await;
}

/// A heartbeat from `cell` claiming `instance` runs on it.
/// The port of the next route registration on `routes`.
async fn next_port(routes: &mut Subscription) -> u16 {
    recv(routes).await.json::<RegistryMessage>().unwrap().port
}

fn heartbeat(cell: &str, instance: &str) -> ExecutorHeartbeat {
    ExecutorHeartbeat {
        executor_id: cell.into(),
        instances: vec![InstanceHeartbeat {
            app: "a1".into(),
            instance: instance.into(),
            state: InstanceState::Running,
            ..InstanceHeartbeat::default()
        }],
        ..ExecutorHeartbeat::default()
    }
}

fn crash(cell: &str, instance: &str) -> ExecutorCrash {
    ExecutorCrash {
        executor_id: cell.into(),
        app: "a1".into(),
        instance: instance.into(),
        reason: "CRASHED".into(),
        ..ExecutorCrash::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_heartbeats_and_reports_crashes_only_for_itself() {
    let fixture = Fixture::start();
    let (healthmanager, hm_registry) = fixture.connect(Identity::HealthManager).await;
    let (e1, _) = fixture.cell("e1").await;
    let (e2, e2_registry) = fixture.cell("e2").await;
    let mut placed = healthmanager
        .subscribe(&messages::every_cell(messages::EXECUTOR_PLACED))
        .await
        .unwrap();
    let mut heartbeats = healthmanager
        .subscribe(&messages::every_cell(messages::EXECUTOR_HEARTBEAT))
        .await
        .unwrap();
    let mut crashes = healthmanager
        .subscribe(&messages::every_cell(messages::EXECUTOR_CRASH))
        .await
        .unwrap();
    let placement = InstancePlaced {
        executor_id: "e1".into(),
        app: "a1".into(),
        instance: "i-1".into(),
        index: 0,
    };
    healthmanager
        .publish_json(&executor_placed_subject("e1"), &placement)
        .unwrap();
    let mut placements = Placements::default();
    assert!(placements.learn(&recv(&mut placed).await));

    // On e1's subjects, or the old shared ones: the server refuses them.
    e2.publish_json(&executor_crash_subject("e1"), &crash("e1", "i-1"))
        .unwrap();
    e2.publish_json(&executor_heartbeat_subject("e1"), &heartbeat("e1", "i-1"))
        .unwrap();
    e2.publish_json(messages::EXECUTOR_CRASH, &crash("e1", "i-1"))
        .unwrap();
    e2.flush().await.unwrap();
    eventually("e2's three forged reports refused", || {
        refused(&e2_registry) == 3
    })
    .await;

    // On its own subjects, naming e1 or e1's instance: delivered, and dropped by the check.
    e2.publish_json(&executor_crash_subject("e2"), &crash("e1", "i-1"))
        .unwrap();
    e2.publish_json(&executor_crash_subject("e2"), &crash("e2", "i-1"))
        .unwrap();
    e2.publish_json(&executor_heartbeat_subject("e2"), &heartbeat("e2", "i-1"))
        .unwrap();
    // The genuine reports.
    e1.publish_json(&executor_heartbeat_subject("e1"), &heartbeat("e1", "i-1"))
        .unwrap();
    e1.publish_json(&executor_crash_subject("e1"), &crash("e1", "i-1"))
        .unwrap();

    let mut verdicts = Vec::new();
    for _ in 0..3 {
        let message = recv(&mut crashes).await;
        let report: ExecutorCrash = message.json().unwrap();
        verdicts.push((
            message.subject.clone(),
            report.executor_id.clone(),
            placements.vet_crash(&message.subject, &report),
        ));
    }
    verdicts.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    assert_eq!(
        verdicts,
        [
            ("executor.crash.e1".to_owned(), "e1".to_owned(), Ok(())),
            (
                "executor.crash.e2".to_owned(),
                "e1".to_owned(),
                Err(Refusal::WrongCell)
            ),
            (
                "executor.crash.e2".to_owned(),
                "e2".to_owned(),
                Err(Refusal::NotPlaced)
            ),
        ]
    );
    let mut kept = Vec::new();
    for _ in 0..2 {
        let message = recv(&mut heartbeats).await;
        let mut report: ExecutorHeartbeat = message.json().unwrap();
        let forged = placements
            .vet_heartbeat(&message.subject, &mut report)
            .unwrap();
        kept.push((report.executor_id, report.instances.len(), forged.len()));
    }
    kept.sort();
    assert_eq!(kept, [("e1".to_owned(), 1, 0), ("e2".to_owned(), 0, 1)]);
    assert_eq!(refused(&hm_registry), 0);
}
