//! The egress a start message carries is exactly the app's managed bindings' endpoints: with
//! Hydrant's own broker running a real Redis, a bound app's start message names that Redis's
//! host:port (and nothing from a user-provided instance, whose credentials anyone in the space
//! can write), and after an unbind and a restart it names nothing. The executor turns these
//! into the container's only open host ports (`platform/executor/tests/service_egress.rs`).

use hydrant_api::services::{CreateServiceInstance, ServiceInstanceType};
use hydrant_bus::messages::ServiceEgress;
use serde_json::json;

use crate::services_support::{
    RedisRig, bind_app, complete, complete_if, create_complete, next_start, real_broker_services,
    restart_and_next_start, static_app, vcap_of,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_message_opens_only_the_bound_services_endpoint_until_unbound() {
    let RedisRig {
        broker,
        cc,
        executor,
        dir: _dir,
        ..
    } = RedisRig::start(47_000, "svc-egress", real_broker_services()).await;
    let admin = &cc.admin;
    let cache = create_complete(admin, "redis", "small", "cache").await;
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
    let app = static_app(admin, "counter").await;
    let mut bindings = Vec::new();
    for instance in [&cache.instance.guid, &typed.instance.guid] {
        let bound = bind_app(admin, instance, &app.guid, None).await.unwrap();
        complete_if(admin, bound.job.as_ref()).await;
        bindings.push(bound.binding.guid);
    }

    admin.start_app(&app.guid).await.unwrap();
    let start = next_start(&executor, &app.guid, 0).await;
    let vcap = vcap_of(&start);
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
    complete_if(admin, unbound.job.as_ref()).await;
    let start = restart_and_next_start(admin, &executor, &app.guid).await;
    assert!(start.egress.is_empty(), "{:?}", start.egress);

    let deleted = admin
        .delete_service_instance(&cache.instance.guid)
        .await
        .unwrap();
    complete(admin, &deleted.job.unwrap()).await;
    cc.stop().await;
    broker.stop().await;
}
