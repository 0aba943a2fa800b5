//! The egress a start message carries is exactly the app's managed bindings' endpoints: with
//! Hydrant's own broker running a real Redis, a bound app's start message names that Redis's
//! host:port (and nothing from a user-provided instance, whose credentials anyone in the space
//! can write), and after an unbind and a restart it names nothing. The executor turns these
//! into the container's only open host ports (`platform/executor/tests/service_egress.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "common/support.rs"]
mod support;

use std::time::Duration;

use hydrant_api::Client;
use hydrant_api::services::{
    BindingType, CreateServiceBinding, CreateServiceBroker, CreateServiceInstance, Job,
    ServiceAccess, ServiceInstanceType,
};
use hydrant_bus::messages::{ServiceEgress, StartInstance};
use hydrant_cloudcontroller::{Config, ServicesConfig};
use hydrant_testkit::wait_for;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use support::{ADMIN_PASSWORD, FakeExecutor, push_and_stage};

const WAIT: Duration = Duration::from_secs(30);
const USER: &str = "broker-user";
const PASSWORD: &str = "broker-pass";

async fn finished(client: &Client, job: &Job) -> Job {
    let guid = job.guid.clone();
    wait_for(WAIT, "the job to finish", || {
        let client = client.clone();
        let guid = guid.clone();
        async move { client.job(&guid).await.unwrap().is_done() }
    })
    .await;
    client.job(&job.guid).await.unwrap()
}

/// The next start message for `app` after the first `seen` ones.
async fn next_start(executor: &FakeExecutor, app: &str, seen: usize) -> StartInstance {
    let state = executor.state.clone();
    let app = app.to_owned();
    let mine = move || {
        state
            .lock()
            .unwrap()
            .starts
            .iter()
            .filter(|s| s.app == app)
            .nth(seen)
            .cloned()
    };
    wait_for(WAIT, "a start message", || {
        let found = mine().is_some();
        async move { found }
    })
    .await;
    mine().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_message_opens_only_the_bound_services_endpoint_until_unbound() {
    if let Err(why) = hydrant_broker::backend::detect("redis") {
        panic!("this test needs redis-server (Debian package redis-server): {why}");
    }
    let broker_dir = tempfile::tempdir().unwrap();
    let first = 47_000 + u16::try_from(std::process::id() % 40).unwrap() * 24;
    let broker_config = hydrant_broker::Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        username: USER.into(),
        password: Some(PASSWORD.into()),
        data_dir: broker_dir.path().to_path_buf(),
        ports: hydrant_broker::PortRange {
            first,
            last: first + 23,
        },
        offerings: vec!["redis".into()],
        ..hydrant_broker::Config::default()
    };
    let listeners = hydrant_runtime::bind::<hydrant_broker::Broker>(&broker_config)
        .await
        .unwrap();
    let broker_url = format!("http://{}", listeners.local_addr("api").unwrap());
    let broker_stop = CancellationToken::new();
    let broker_task = tokio::spawn(hydrant_runtime::run::<hydrant_broker::Broker>(
        broker_config,
        listeners,
        broker_stop.clone(),
    ));

    let dir = tempfile::tempdir().unwrap();
    let bus = "svc-egress";
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        data_dir: dir.path().display().to_string(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        password_hash_iterations: 1000,
        converge_interval_ms: 200,
        executor_request_timeout_ms: 1000,
        bus: hydrant_bus::Config::inprocess(bus),
        services: ServicesConfig {
            allow_private_brokers: true,
            poll_interval_secs: 1,
            max_poll_interval_secs: 2,
            ..ServicesConfig::default()
        },
        ..Config::default()
    };
    let cc_listeners = hydrant_runtime::bind::<hydrant_cloudcontroller::CloudController>(&config)
        .await
        .unwrap();
    config.external_url = format!("http://{}", cc_listeners.local_addr("api").unwrap());
    let url = config.external_url.clone();
    let cc_stop = CancellationToken::new();
    let cc_task = tokio::spawn(hydrant_runtime::run::<
        hydrant_cloudcontroller::CloudController,
    >(config, cc_listeners, cc_stop.clone()));
    let anonymous = Client::new(&url, None);
    wait_for(WAIT, "the API to answer", || {
        let anonymous = anonymous.clone();
        async move { anonymous.info().await.is_ok() }
    })
    .await;
    let token = anonymous.login("admin", ADMIN_PASSWORD).await.unwrap();
    let admin = anonymous.with_token(token.access_token);
    let executor = FakeExecutor::start(bus, "cell-1", 4096, 10, false).await;

    admin
        .create_service_broker(&CreateServiceBroker {
            name: "hydrant".into(),
            url: broker_url,
            username: USER.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    admin
        .set_service_access(&ServiceAccess {
            offering: "redis".into(),
            plan: None,
            broker: None,
            enable: true,
        })
        .await
        .unwrap();
    let cache = admin
        .create_service_instance(&CreateServiceInstance {
            name: "cache".into(),
            offering: Some("redis".into()),
            plan: Some("small".into()),
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap();
    let job = finished(&admin, cache.job.as_ref().unwrap()).await;
    assert_eq!(job.state, "COMPLETE", "{job:?}");
    // A space developer's own "service" naming a host port: it must open nothing.
    let typed = admin
        .create_service_instance(&CreateServiceInstance {
            name: "typed".into(),
            kind: ServiceInstanceType::UserProvided,
            credentials: Some(json!({"host": "127.0.0.1", "port": 14831,
                                     "uri": "http://127.0.0.1:9022/"})),
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap();
    let (app, _) = push_and_stage(
        &admin,
        "counter",
        &[("index.html", b"<h1>hi</h1>", 0o644)],
        None,
    )
    .await;
    let mut bindings = Vec::new();
    for instance in [&cache.instance.guid, &typed.instance.guid] {
        let bound = admin
            .create_service_binding(&CreateServiceBinding {
                kind: BindingType::App,
                service_instance: instance.clone(),
                app: Some(app.guid.clone()),
                ..CreateServiceBinding::default()
            })
            .await
            .unwrap();
        if let Some(job) = &bound.job {
            assert_eq!(finished(&admin, job).await.state, "COMPLETE");
        }
        bindings.push(bound.binding.guid);
    }

    admin.start_app(&app.guid).await.unwrap();
    let start = next_start(&executor, &app.guid, 0).await;
    let vcap: Value = serde_json::from_str(&start.env["VCAP_SERVICES"]).unwrap();
    let credentials = &vcap["redis"][0]["credentials"];
    let host = credentials["host"].as_str().unwrap().to_owned();
    let port = credentials["port"].as_u64().unwrap();
    assert!(vcap["user-provided"][0].is_object(), "{vcap}");
    assert_eq!(
        start.egress,
        vec![ServiceEgress {
            service: "cache".into(),
            host,
            port: u32::try_from(port).unwrap(),
        }],
        "the redis binding's endpoint, once (host/port and uri agree), and nothing typed in"
    );

    // Unbind, restart: the next start message opens nothing.
    let unbound = admin.delete_service_binding(&bindings[0]).await.unwrap();
    if let Some(job) = &unbound.job {
        assert_eq!(finished(&admin, job).await.state, "COMPLETE");
    }
    let seen = executor
        .state
        .lock()
        .unwrap()
        .starts
        .iter()
        .filter(|s| s.app == app.guid)
        .count();
    admin.restart_app(&app.guid).await.unwrap();
    let start = next_start(&executor, &app.guid, seen).await;
    assert!(start.egress.is_empty(), "{:?}", start.egress);

    let deleted = admin
        .delete_service_instance(&cache.instance.guid)
        .await
        .unwrap();
    assert_eq!(
        finished(&admin, &deleted.job.unwrap()).await.state,
        "COMPLETE"
    );
    cc_stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), cc_task)
        .await
        .expect("the cloud controller stops")
        .unwrap()
        .unwrap();
    broker_stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), broker_task)
        .await
        .expect("the broker stops")
        .unwrap()
        .unwrap();
}
